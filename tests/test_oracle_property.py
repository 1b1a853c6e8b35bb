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

from kvmtlb.hw.paging import E_D, EPT_D
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


# Directed sequences: each leaves an entry that a rule must remove (or must keep) and that the
# fill cannot rebuild (it is stale, or tagged with a context not current), then runs the event.
# Compared with the oracle like the generated ones; no expected outcome is written here.
P1 = PRELUDES["intel"][1]
P2 = PRELUDES["intel"][2]
USER = ("pte", 0, 0, 0, 3)  # GVA 0x1000 maps a user page
# EPTP with A/D flags (event 4, a = 1) and 'enable PML' (event 4, a = 2, b = 1), then enter and
# write 0x1000 (GPA 0x10000, whose leaf starts clean).
PML_AD = [("event", 0, 4, 1, 0), ("event", 0, 4, 2, 1)]
PML_ON = [*PML_AD, T0, ("access", 0, 0, 1, 0)]
DIRECTED: list[tuple[str, str, list[tuple[str, int, int, int, int]]]] = [
    ("intel", "invlpg-pcid1-global", [*P1, ("event", 0, 0, 1, 0)]),
    ("amd", "invlpg-pcid1-global", [*PRELUDES["amd"][1], ("event", 0, 0, 1, 0)]),
    ("intel", "invlpg-stale-psc", [T0, ("pte", 0, 4, 0, 1), ("event", 0, 0, 2, 0)]),
    ("amd", "invlpg-stale-psc", [T0, ("pte", 0, 4, 0, 1), ("event", 0, 0, 2, 0)]),
    (
        "intel",
        "invlpg-split-page",
        [T0, ("pte", 0, 5, 0, 1), ("pte", 0, 5, 0, 0), ("event", 0, 0, 2, 0)],
    ),
    ("intel", "pf-stale-translation", [T0, ("pte", 0, 0, 0, 1), ("access", 0, 0, 0, 7)]),
    ("intel", "pf-stale-psc", [T0, ("pte", 0, 4, 0, 2), ("access", 0, 0, 0, 7)]),
    ("intel", "invpcid0-stale-global", [T0, ("pte", 0, 1, 0, 1), ("event", 0, 1, 0, 2)]),
    ("intel", "invpcid1-other-pcid", [*P1, ("pte", 0, 0, 0, 1), ("event", 0, 1, 1, 1)]),
    ("intel", "invpcid2-pcid1-global", [*P1, ("event", 0, 1, 2, 0)]),
    ("intel", "invpcid3-pcid1-global", [*P1, ("event", 0, 1, 3, 0)]),
    ("intel", "mov-cr3-stale-global", [T0, ("pte", 0, 1, 0, 1), ("event", 0, 2, 0, 0)]),
    ("intel", "mov-cr3-noflush", [*P1, ("pte", 0, 0, 0, 1), ("event", 0, 2, 0, 2)]),
    ("intel", "mov-cr4-pge", [*P1, ("event", 0, 3, 0, 0)]),
    ("intel", "mov-cr4-smep", [T0, ("pte", 0, 0, 0, 1), ("event", 0, 3, 2, 0)]),
    (
        "intel",
        "mov-cr0-pg",
        [
            ("event", 0, 5, 1, 0),
            T0,
            ("event", 0, 5, 0, 0),
            ("pte", 0, 0, 0, 1),
            ("event", 0, 5, 0, 0),
        ],
    ),
    ("intel", "vmentry-novpid", [("event", 0, 3, 0, 0), ("pte", 0, 6, 0, 1), T0]),
    ("intel", "vmexit-novpid", [("event", 0, 3, 0, 0), T0, ("pte", 0, 6, 0, 1), T0]),
    ("intel", "invept-single-other", [*P2, T0, ("event", 0, 1, 1, 0)]),
    ("intel", "invept-single-own", [*P2, T0, ("event", 0, 1, 0, 0)]),
    ("intel", "invept-all", [T0, T0, ("event", 0, 1, 0, 1)]),
    ("intel", "invvpid-single", [T0, T0, ("event", 0, 0, 1, 0)]),
    ("intel", "invvpid-addr", [T0, T0, ("event", 0, 0, 0, 0)]),
    ("intel", "invvpid-all", [T0, T0, ("pte", 0, 6, 0, 1), ("event", 0, 0, 2, 0)]),
    ("intel", "invvpid-3", [T0, T0, ("event", 0, 0, 3, 0)]),
    ("intel", "ept-violation", [T0, ("s2", 0, 0, 0, 1), ("access", 0, 0, 1, 7)]),
    (
        "intel",
        "smep-exec",
        [T0, ("pte", 0, 0, 0, 3), ("event", 0, 3, 2, 0), ("access", 0, 0, 2, 0)],
    ),
    ("intel", "write-read-only", [T0, ("pte", 0, 0, 0, 2), ("access", 0, 0, 1, 0)]),
    ("intel", "two-ep4tas", [*P2, ("access", 0, 0, 0, 0)]),
    (
        "intel",
        "stale-psc-walk",
        [T0, ("pte", 0, 4, 0, 1), ("pte", 0, 0, 0, 2), ("access", 0, 0, 0, 0)],
    ),
    (
        "amd",
        "stale-psc-walk",
        [T0, ("pte", 0, 4, 0, 1), ("pte", 0, 0, 0, 2), ("access", 0, 0, 0, 0)],
    ),
    (
        "intel",
        "vmfunc-novpid",
        [
            ("event", 0, 6, 0, 0),
            ("event", 0, 3, 0, 0),
            T0,
            ("pte", 0, 0, 0, 1),
            ("event", 0, 6, 0, 1),
        ],
    ),
    ("intel", "pf-stale-psc-globals", [*P1, ("pte", 0, 4, 0, 2), ("access", 0, 0, 0, 7)]),
    ("amd", "tlb-control-1", [T0, T0, ("pte", 0, 6, 0, 1), ("transition", 0, 0, 0, 2)]),
    ("amd", "tlb-control-3", [T0, T0, ("s2", 0, 0, 0, 2), ("transition", 0, 0, 0, 3)]),
    ("amd", "tlb-control-7", [T0, ("pte", 0, 1, 0, 1), T0, ("transition", 0, 0, 0, 4)]),
    ("amd", "tlb-control-7-nested", [T0, T0, ("s2", 0, 0, 0, 2), ("transition", 0, 0, 0, 4)]),
    ("amd", "invlpga", [T0, T0, ("transition", 0, 0, 1, 0), T0, ("event", 0, 0, 1, 0)]),
    ("amd", "flush-all-asids", [T0, T0, ("event", 0, 2, 0, 0)]),
    # INVLPGA of 0x2000 (a global page) in ASID 1 from the host: the global entry stays
    # (the default reading of an unconfirmed point; Readings.invlpga_removes_globals).
    ("amd", "invlpga-keeps-global", [T0, T0, ("event", 0, 0, 1, 1)]),
    ("amd", "smep-exec", [T0, ("pte", 0, 0, 0, 3), ("event", 0, 3, 2, 0), ("access", 0, 0, 2, 0)]),
    # SMAP (toggle 3) denies the supervisor read of a user page; PKE (toggle 4) with PKRU = 0
    # denies nothing.
    ("intel", "smap-read", [T0, USER, ("event", 0, 3, 3, 0), ("access", 0, 0, 0, 0)]),
    ("amd", "smap-read", [T0, USER, ("event", 0, 3, 3, 0), ("access", 0, 0, 0, 0)]),
    ("intel", "pke-write", [T0, USER, ("event", 0, 3, 4, 0), ("access", 0, 0, 1, 0)]),
    # Universe (AMD: nested PSC entries are tagged by ASID only): under nCR3 1, with a nested
    # PSC entry of nCR3 0's hierarchy held, the host rewires nCR3 0's level-2 entry; the walks
    # through the held entry read it, so a memoized fill keyed on nCR3 1's slots misses them.
    ("amd", "ncr3-switch-held-nested-psc", [T0, T0, ("event", 0, 5, 3, 1), T0, ("s2", 0, 5, 0, 1)]),
    # EPT A/D flags and PML (hw/dirty.py): a write through the clean leaf sets its dirty flag
    # and logs; KVM-style cleaning without INVEPT leaves a translation held dirty; the next
    # writes may go through it (nothing set) or walk and set the flag again.
    ("intel", "ept-dirty-write-logs", PML_ON),
    ("intel", "ept-dirty-clean-stale", [*PML_ON, ("s2", 0, 0, 0, 0), ("access", 0, 0, 1, 0)]),
    ("intel", "ept-dirty-clean-walk", [*PML_ON, ("s2", 0, 0, 0, 0), ("access", 0, 0, 1, 1)]),
    (
        "intel",
        "ept-dirty-clean-invept",
        [*PML_ON, ("s2", 0, 0, 0, 0), T0, ("event", 0, 1, 0, 0), T0, ("access", 0, 0, 1, 0)],
    ),
    # a write through the 2 MiB EPT page sets the flag of its level-2 leaf
    ("intel", "ept-dirty-large-leaf", [*PML_AD, T0, ("access", 0, 3, 1, 0)]),
    # the EPT level-2 entry rewired to a spare table: the write sets the flag of the leaf the
    # walk of memory finds there, not of the table the layout started with
    ("intel", "ept-dirty-rewired-table", [*PML_AD, ("s2", 0, 5, 0, 1), T0, ("access", 0, 0, 1, 0)]),
    # the leaf remapped clean under a translation held clean: a write walks to the new frame
    (
        "intel",
        "ept-dirty-stale-clean-remap",
        [*PML_AD, T0, ("s2", 0, 0, 0, 2), ("access", 0, 0, 1, 0)],
    ),
    # A guest PSC entry made with nested paging on, used after VMRUN with it off (same ASID and
    # PCID): the walk through it makes entries no walk from a root makes.
    ("amd", "npt-psc-used-with-npt-off", [T0, T0, ("event", 0, 5, 1, 0), T0]),
    # The guest clears CR4.PGE, a #NPF exits, VMRUN resumes it: the VMCB holds the state the
    # #VMEXIT saved (PGE = 0), so the refill makes no global entries.
    (
        "amd",
        "npf-exit-then-vmrun",
        [T0, ("event", 0, 3, 0, 0), ("s2", 0, 0, 0, 4), ("access", 0, 0, 0, 7), T0],
    ),
]


def test_the_pml_sequences_set_the_flag_and_log() -> None:
    """The directed PML sequences reach what they are about: the flag set and the GPA logged,
    and after a cleaning without INVEPT a write through the translation held dirty."""
    pair = Pair(bed("intel"))
    for o in PML_ON:
        pair.apply(o)
    assert pair.hw.cpus[0].vmcs.pml == (0x10000,)
    assert pair.hw.memory.values[pair.bed.slots["s2_0_0"]] & EPT_D
    pair.apply(("s2", 0, 0, 0, 0))
    dirty = [o for o in pair.hw.outcomes(0, 0x1000, "write") if o.erights & E_D]
    clean = [o for o in pair.hw.outcomes(0, 0x1000, "write") if not o.erights & E_D]
    assert dirty and clean


@pytest.mark.parametrize(
    ("vendor", "ops"), [(v, o) for v, _, o in DIRECTED], ids=[f"{v}-{n}" for v, n, _ in DIRECTED]
)
def test_directed_sequences_against_the_oracle(
    vendor: str, ops: list[tuple[str, int, int, int, int]]
) -> None:
    pair = Pair(bed(vendor))
    for o in ops:
        pair.apply(o)
        pair.check(o, concrete=True)
