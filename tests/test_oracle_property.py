"""The MAY-set model (kvmtlb.hw) against the independent reference (kvmtlb.oracle).

Comparison, in both directions, after every op of a generated sequence:

- the model's MAY-set of each processor equals the set the oracle's maximal run holds (every
  entry the model may hold is one the reference can hold, and vice versa), and every access
  outcome the model lists is one the oracle lists, and vice versa;
- single concrete runs of the oracle (one random path per fill, random partial caching, a
  capacity of a few entries per kind with LRU evictions) stay inside both.

The generator (tests/oraclebeds.py) writes leaf and non-leaf guest entries (rewiring a level-2
entry to a spare table, making it not present, turning a table into a 2 MiB page), stage-2
leaves (remaps, read-only, not present, write-only misconfigurations) and a stage-2 level-2
entry, and runs INVLPG, INVPCID, MOV to CR3 (PCIDs, no-flush), MOV to CR4 (PGE, PCIDE, SMEP,
SMAP, PKE), MOV to CR0 (PG), VM entry/exit, INVEPT, INVVPID, VMWRITEs of VPID, 'enable VPID',
EPTP, EPT off, CR0.PG = 0 guests; AMD: VMRUN with every TLB_CONTROL, #VMEXIT, INVLPGA, the
all-ASID flushes, nCR3 changes, NPT off, CR0.PG = 0; and accesses whose outcomes (translations,
#PF, EPT violations and misconfigurations, #NPF) are taken with their effects.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oraclebeds import Bed, Pair, build

from kvmtlb.oracle.machine import ConcreteTlb

BEDS: dict[str, Bed] = {}


def bed(vendor: str) -> Bed:
    if vendor not in BEDS:
        BEDS[vendor] = build(vendor)
    return BEDS[vendor]


T0 = ("transition", 0, 0, 0, 0)
# Preludes that leave entries of several tags behind (entries of a tag not current are not
# refilled, so an invalidation that misses them shows): two PCIDs, two EP4TAs / nCR3s, two
# VPIDs / ASIDs.
PRELUDES = {
    "intel": [
        [T0],
        [T0, ("event", 0, 3, 1, 0), ("event", 0, 2, 0, 1), ("event", 0, 2, 0, 0)],
        [T0, T0, ("event", 0, 4, 0, 1), T0, T0, ("event", 0, 4, 0, 0), T0],
        [T0, T0, ("event", 0, 2, 0, 1), T0, T0, ("event", 0, 2, 0, 0), T0],
    ],
    "amd": [
        [T0],
        [T0, ("event", 0, 3, 1, 0), ("event", 0, 2, 0, 1), ("event", 0, 2, 0, 0)],
        [T0, T0, ("event", 0, 5, 3, 1), T0, T0, ("event", 0, 5, 2, 0), T0],
        [("transition", 0, 0, 1, 0), T0, T0],
    ],
}

OPS = st.lists(
    st.tuples(
        st.sampled_from(["pte", "s2", "event", "event", "transition", "access", "access"]),
        st.integers(0, 1),
        st.integers(0, 7),
        st.integers(0, 7),
        st.integers(0, 7),
    ),
    max_size=16,
)


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, prelude=st.integers(0, 3))
def test_model_equals_the_oracles_maximal_run(
    vendor: str, ops: list[tuple[str, int, int, int, int]], prelude: int
) -> None:
    pair = Pair(bed(vendor))
    pair.check("boot")
    for o in [*PRELUDES[vendor][prelude], *ops]:
        pair.apply(o)
        pair.check(o)


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 2**32), prelude=st.integers(0, 3))
def test_single_runs_with_evictions_stay_inside_both(
    vendor: str, ops: list[tuple[str, int, int, int, int]], seed: int, prelude: int
) -> None:
    rng = random.Random(seed)
    pair = Pair(bed(vendor))
    tlbs = [ConcreteTlb(capacity=3) for _ in range(2)]
    for o in [*PRELUDES[vendor][prelude], ("transition", 1, 0, 0, 0), *ops]:
        done = pair.apply(o)
        if done is not None:
            tlbs[done[0]].invalidate(done[1])
        for j in range(2):
            p = pair.oracle.procs[j]
            tlbs[j].fill(p, pair.oracle.mem, rng)
            held = tlbs[j].held()
            assert held <= p.held, f"outside the oracle's maximal run after {o}"
            assert held <= pair.held(j), f"outside the model's MAY-set after {o}"
