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

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmtlb.hw.concrete import ConcreteTlb, PathWalker
from kvmtlb.hw.cpu import CR4_PCIDE, CR4_PGE, VMX_NONROOT
from kvmtlb.hw.machine import Machine
from kvmtlb.hw.mappings import Entry
from kvmtlb.hw.paging import E_R, E_W, E_X, make_ept, make_npt, make_pte
from kvmtlb.hw.svm import FlushAllAsids, Invlpga, SvmExitEvent, Vmrun
from kvmtlb.hw.testbed import AmdSpec, IntelSpec, build_amd, build_intel
from kvmtlb.hw.vmcb import SVM_GUEST, SvmCapabilities, SvmCpu
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
NPT_VALUES = {
    g: [
        make_npt(0x80000 + 0x1000 * i + 0x10000 * n, r)
        for n in range(2)
        for r in (E_R | E_W | E_X, E_R | E_X)
    ]
    for i, g in enumerate(GPAS)
}

INTEL = build_intel(
    IntelSpec(
        guest={0x1000: PTE_VALUES[0], 0x2000: PTE_VALUES[4]},
        ept={g: EPT_VALUES[g][0] for g in GPAS},
        guest_values={v: PTE_VALUES for v in GVAS},
        ept_values=EPT_VALUES,
        vpids=(1, 2),
        pcids=(0, 1),
        cpus=2,
    )
)
AMD = build_amd(
    AmdSpec(
        guest={0x1000: PTE_VALUES[0], 0x2000: PTE_VALUES[4]},
        npt={g: NPT_VALUES[g][0] for g in GPAS},
        guest_values={v: PTE_VALUES for v in GVAS},
        npt_values=NPT_VALUES,
        asids=(1, 2),
        pcids=(0, 1),
        cpus=2,
        caps=SvmCapabilities(flush_by_asid=True),
    )
)
BEDS = {"intel": INTEL, "amd": AMD}


def guest_event(tb: Any, m: Machine, i: int, k: int, a: int, b: int) -> Any:
    regs = m.cpus[i].regs
    gva = GVAS[a % len(GVAS)]
    if k == 0:
        return Invlpg(gva)
    if k == 1:
        return Invpcid(a % 4, b % 2, gva)
    if k == 2:
        noflush = (1 << 63) if (b % 3 == 2 and regs.cr4 & CR4_PCIDE) else 0
        pcid = (b % 2) if regs.cr4 & CR4_PCIDE else 0
        return MovToCr3(tb.guest_root | pcid | noflush)
    if k == 3:
        return MovToCr4(regs.cr4 ^ CR4_PGE)
    return MovToCr4(regs.cr4 ^ CR4_PCIDE)


def host_event(tb: Any, m: Machine, i: int, k: int, a: int, b: int) -> Any:
    if isinstance(m.cpus[i], SvmCpu):
        if k == 0:
            return Invlpga(GVAS[b % len(GVAS)], 1 + a % 2)
        if k == 1:
            return FlushAllAsids()
        return None
    if k == 0:
        return Invvpid(a % 4, 0 if a % 4 == 2 else 1 + b % 2, GVAS[b % len(GVAS)])
    if k == 1:
        return Invept(1 + b % 2, tb.eptp())
    return Vmwrite("vpid", 1 + b % 2)


def enter(tb: Any, m: Machine, i: int, a: int, b: int) -> Any:
    cpu = m.cpus[i]
    if isinstance(cpu, SvmCpu):
        vmcb = cpu.vmcb or tb.vmcb[i]
        return Vmrun(vmcb._replace(asid=1 + a % 2, tlb_control=(0, 0, 1, 3, 7)[b % 5]))
    return VmEntry(not cpu.vmcs.launched)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["pte", "s2", "event", "transition", "access"]),
        st.integers(0, 1),  # processor
        st.integers(0, 5),
        st.integers(0, 7),
        st.integers(0, 7),
    ),
    max_size=10,
)


def in_guest(cpu: Any) -> bool:
    return bool(cpu.mode == (SVM_GUEST if isinstance(cpu, SvmCpu) else VMX_NONROOT))


def apply(tb: Any, m: Machine, op: tuple[str, int, int, int, int]) -> tuple[Machine, Any, Any]:
    """Apply one op; returns the new machine, the processor it ran on (or None) and the
    invalidation it applied there (or None)."""
    kind, i, k, a, b = op
    cpu = m.cpus[i]
    if kind == "pte":
        value = PTE_VALUES[(a * 8 + b) % len(PTE_VALUES)]
        return m.write(tb.pte_slot(GVAS[k % 2]), value), None, None
    if kind == "s2":
        gpa = GPAS[k % 3]
        if tb is AMD:
            return m.write(tb.npt_slot(gpa), NPT_VALUES[gpa][(a + b) % 4]), None, None
        return m.write(tb.ept_slot(gpa), EPT_VALUES[gpa][(a + b) % 4]), None, None
    if kind == "transition":
        if in_guest(cpu):
            ev: Any = SvmExitEvent() if isinstance(cpu, SvmCpu) else VmExitEvent()
        else:
            ev = enter(tb, m, i, a, b)
    elif kind == "event":
        ev = guest_event(tb, m, i, k, a, b) if in_guest(cpu) else host_event(tb, m, i, k, a, b)
        if ev is None:
            return m, None, None
    else:
        if not in_guest(cpu):
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


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_maximal_concrete_run_equals_the_may_set(
    vendor: str, ops: list[tuple[str, int, int, int, int]]
) -> None:
    tb = BEDS[vendor]
    m = tb.machine
    concrete = [closure(m, i, set()) for i in range(2)]
    for op in ops:
        m, i, inv = apply(tb, m, op)
        for j in range(2):
            held = concrete[j]
            if j == i and inv is not None:
                held = {e for e in held if not inv.removes(e, list(held))}
            concrete[j] = closure(m, j, held)
            assert concrete[j] == set(m.held(j)), f"after {op} on cpu {j}"
        for j in range(2):
            if not in_guest(m.cpus[j]):
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


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 2**32))
def test_random_concrete_tlb_stays_inside_the_may_set(
    vendor: str, ops: list[tuple[str, int, int, int, int]], seed: int
) -> None:
    rng = random.Random(seed)
    tb = BEDS[vendor]
    m = tb.machine
    tlbs = [ConcreteTlb() for _ in range(2)]
    for op in [*ops, ("access", 0, 0, 0, 0), ("access", 1, 1, 1, 0)]:
        m, i, inv = apply(tb, m, op)
        if i is not None and inv is not None:
            tlbs[i].invalidate(inv)
        for j in range(2):
            tlb = tlbs[j]
            ctx, gvas, _ = named(m, j)
            # Speculative fills and accesses: walk one random path, cache a random subset.
            for gva in gvas:
                paths = list(PathWalker(ctx, m.memory, tlb.held()).paths(gva))
                p = rng.choice(paths)
                if in_guest(m.cpus[j]):
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
