"""The MAY-set model against concrete TLBs (kvmtlb.hw.concrete), by property tests.

- Soundness: a concrete TLB that fills and evicts at random, walking one path at a time under the
  same creation rules and applying the same invalidations, never holds an entry outside the
  MAY-set and never produces an access outcome the model does not list.
- Completeness (small bounds): the concrete run that caches every path at every step holds exactly
  the MAY-set, and the outcomes of all its paths are exactly the model's outcomes. So every
  translation the MAY-set allows is produced by some concrete run.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmtlb.hw.concrete import ConcreteTlb, PathWalker
from kvmtlb.hw.cpu import CR4_PCIDE, CR4_PGE, VMX_NONROOT
from kvmtlb.hw.errors import ModelError
from kvmtlb.hw.machine import Machine
from kvmtlb.hw.mappings import Entry
from kvmtlb.hw.paging import E_R, E_W, E_X, make_ept, make_pte
from kvmtlb.hw.testbed import IntelSpec, build_intel
from kvmtlb.hw.vmx import Invept, Invvpid, VmEntry, VmExitEvent, Vmwrite
from kvmtlb.hw.x86 import Invlpg, Invpcid, MovToCr3, MovToCr4

GVAS = (0x1000, 0x2000)
GPAS = (0x10000, 0x11000, 0x12000)
PTE_VALUES = [
    make_pte(g, writable=w, glob=gl) for g in GPAS for w in (True, False) for gl in (False, True)
]
EPT_VALUES = {
    g: [
        make_ept(0x80000 + 0x1000 * i + 0x10000 * n, r)
        for n in range(2)
        for r in (E_R | E_W | E_X, E_R | E_X)
    ]
    for i, g in enumerate(GPAS)
}

SPEC = IntelSpec(
    guest={0x1000: PTE_VALUES[0], 0x2000: PTE_VALUES[4]},
    ept={g: EPT_VALUES[g][0] for g in GPAS},
    guest_values={v: PTE_VALUES for v in GVAS},
    ept_values=EPT_VALUES,
    vpids=(1, 2),
    pcids=(0, 1),
    cpus=2,
)
TB = build_intel(SPEC)


def guest_event(m: Machine, i: int, k: int, a: int, b: int) -> Any:
    regs = m.cpus[i].regs
    gva = GVAS[a % len(GVAS)]
    if k == 0:
        return Invlpg(gva)
    if k == 1:
        return Invpcid(a % 4, b % 2, gva)
    if k == 2:
        noflush = (1 << 63) if (b % 3 == 2 and regs.cr4 & CR4_PCIDE) else 0
        pcid = (b % 2) if regs.cr4 & CR4_PCIDE else 0
        return MovToCr3(TB.guest_root | pcid | noflush)
    if k == 3:
        return MovToCr4(regs.cr4 ^ CR4_PGE)
    return MovToCr4(regs.cr4 ^ CR4_PCIDE)


def host_event(i: int, k: int, a: int, b: int) -> Any:
    if k == 0:
        return Invvpid(a % 4, 0 if a % 4 == 2 else 1 + b % 2, GVAS[b % len(GVAS)])
    if k == 1:
        return Invept(1 + b % 2, TB.eptp())
    return Vmwrite("vpid", 1 + b % 2)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["pte", "ept", "event", "transition", "access"]),
        st.integers(0, 1),  # processor
        st.integers(0, 5),
        st.integers(0, 7),
        st.integers(0, 7),
    ),
    max_size=10,
)


def apply(m: Machine, op: tuple[str, int, int, int, int]) -> tuple[Machine, Any, Any]:
    """Apply one op; returns the new machine, the processor it ran on (or None) and the
    invalidation it applied there (or None)."""
    kind, i, k, a, b = op
    cpu = m.cpus[i]
    if kind == "pte":
        return (
            m.write(TB.pte_slot(GVAS[k % 2]), PTE_VALUES[(a * 8 + b) % len(PTE_VALUES)]),
            None,
            None,
        )
    if kind == "ept":
        gpa = GPAS[k % 3]
        return m.write(TB.ept_slot(gpa), EPT_VALUES[gpa][(a + b) % 4]), None, None
    if kind == "transition":
        ev: Any = VmExitEvent() if cpu.mode == VMX_NONROOT else VmEntry(not cpu.vmcs.launched)
    elif kind == "event":
        ev = guest_event(m, i, k, a, b) if cpu.mode == VMX_NONROOT else host_event(i, k, a, b)
    else:
        if cpu.mode != VMX_NONROOT:
            return m, None, None
        succ = m.access(i, GVAS[k % 2], ("read", "write", "exec")[a % 3])
        outcome, nxt = succ[b % len(succ)]
        if nxt is m:
            return m, None, None
        eff = m.config.arch.fault_effect(cpu, outcome, m.config.readings)
        return nxt, i, eff.invalidation
    st_ = m.step(i, ev)
    return st_.machine, i, st_.invalidation


def named(m: Machine, i: int) -> tuple[Any, tuple[int, ...], tuple[int, ...]]:
    ctx = m.config.context(m.cpus[i]).ctx
    gpas = m.memory.layout.named.get(ctx.s2_root, ()) if ctx.s2_root >= 0 else ()
    return ctx, m.universe.addresses(ctx), gpas


def closure(m: Machine, i: int, held: set[Entry]) -> set[Entry]:
    """Cache every entry of every path of every named address until nothing new appears."""
    ctx, gvas, gpas = named(m, i)
    while True:
        w = PathWalker(ctx, m.memory, list(held))
        new: set[Entry] = set()
        for v in gvas:
            for p in w.paths(v):
                new.update(p.built)
        for g in gpas:
            for p2 in w.gpa_paths(g):
                new.update(p2.built)
        if new <= held:
            return held
        held = held | new


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_maximal_concrete_run_equals_the_may_set(ops: list[tuple[str, int, int, int, int]]) -> None:
    m = TB.machine
    concrete = [closure(m, i, set()) for i in range(2)]
    for op in ops:
        m, i, inv = apply(m, op)
        for j in range(2):
            held = concrete[j]
            if j == i and inv is not None:
                held = {e for e in held if not inv.removes(e, list(held))}
            concrete[j] = closure(m, j, held)
            assert concrete[j] == set(m.held(j)), f"after {op} on cpu {j}"
        for j in range(2):
            if m.cpus[j].mode != VMX_NONROOT:
                continue
            ctx = m.config.context(m.cpus[j]).ctx
            w = PathWalker(ctx, m.memory, list(concrete[j]))
            for gva in GVAS:
                for access in ("read", "write"):
                    mine = {
                        m.config.arch.classify(m.cpus[j], gva, access, p.result)
                        for p in w.paths(gva)
                    }
                    assert mine == set(m.outcomes(j, gva, access)), (op, gva, access)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(0, 2**32))
def test_random_concrete_tlb_stays_inside_the_may_set(
    ops: list[tuple[str, int, int, int, int]], seed: int
) -> None:
    rng = random.Random(seed)
    m = TB.machine
    tlbs = [ConcreteTlb() for _ in range(2)]
    for op in [*ops, ("access", 0, 0, 0, 0), ("access", 1, 1, 1, 0)]:
        try:
            m, i, inv = apply(m, op)
        except ModelError:
            raise
        if i is not None and inv is not None:
            tlbs[i].invalidate(inv)
        for j in range(2):
            tlb = tlbs[j]
            ctx, gvas, _ = named(m, j)
            # Speculative fills and accesses: walk one random path, cache a random subset.
            for gva in gvas:
                paths = list(PathWalker(ctx, m.memory, tlb.held()).paths(gva))
                p = rng.choice(paths)
                if m.cpus[j].mode == VMX_NONROOT:
                    access = rng.choice(("read", "write", "exec"))
                    outcome = m.config.arch.classify(m.cpus[j], gva, access, p.result)
                    assert outcome in m.outcomes(j, gva, access)
                for e in p.built:
                    if rng.random() < 0.7:
                        tlb.insert(e)
            for e in tlb.held():
                if rng.random() < 0.1:
                    tlb.evict(e)
            may = set(m.held(j))
            extra = [e.describe() for e in tlb.held() if e not in may]
            assert not extra, f"concrete entries outside the MAY-set after {op}: {extra}"
