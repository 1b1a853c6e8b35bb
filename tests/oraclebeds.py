"""Machines for the oracle property tests: one layout, built once, driven twice.

The same layout is loaded into the MAY-set model (`kvmtlb.hw`) and into the independent reference
(`kvmtlb.oracle`); each op of a generated sequence is given to both, each in its own vocabulary,
and `Pair` compares them after every op. Nothing but data (slot positions, values, named
addresses, the static backing of guest tables) crosses from one side to the other.

The Intel layout has: two EPT hierarchies (two EP4TAs over one guest-physical space), a guest
hierarchy whose level-2 entry for the first 2 MiB may point at its table, at a spare table (a
non-leaf rewrite) or at nothing, and whose second 2 MiB may be a table or a 2 MiB page; EPT leaves
that may be remapped, made read-only, write-only (a misconfiguration) or not present; an EPT 2 MiB
page; an EPT level-2 entry that may be rewired to a spare EPT table; a linear hierarchy for
VMX root operation and for a guest with EPT off. PCIDs 0 and 1, VPIDs 1 and 2. The AMD layout is
the same with nested tables, ASIDs 1 and 2 and a linear hierarchy for NPT off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmtlb.hw.addr import level_shift
from kvmtlb.hw.concrete import PathWalker
from kvmtlb.hw.cpu import (
    CR0_DEFAULT,
    CR0_PG,
    CR0_WP,
    CR4_DEFAULT,
    CR4_PCIDE,
    CR4_PGE,
    CR4_PKE,
    CR4_SMAP,
    CR4_SMEP,
    VMX_NONROOT,
    VMX_ROOT,
    Capabilities,
    Cpu,
    Regs,
    Vmcs,
)
from kvmtlb.hw.dirty import tracks_dirty, write_results
from kvmtlb.hw.layout import Format, LayoutBuilder
from kvmtlb.hw.machine import Machine, MachineConfig
from kvmtlb.hw.outcomes import (
    Access,
    EptMisconfig,
    EptViolation,
    NestedPageFault,
    PageFault,
)
from kvmtlb.hw.paging import (
    E_ALL,
    E_R,
    E_W,
    E_X,
    EPT_D,
    make_ept,
    make_npt,
    make_pte,
    make_table_pte,
)
from kvmtlb.hw.svm import AmdArch, FlushAllAsids, Invlpga, SvmExitEvent, Vmrun
from kvmtlb.hw.tags import AmdTags, IntelEptTags, IntelLinearTags
from kvmtlb.hw.universe import Universe
from kvmtlb.hw.vmcb import SVM_GUEST, SVM_HOST, SvmCapabilities, SvmCpu, Vmcb
from kvmtlb.hw.vmx import (
    CAP_ALL,
    Invept,
    Invvpid,
    VmEntry,
    VmExitEvent,
    VmfuncEptpSwitch,
    Vmwrite,
    make_eptp,
)
from kvmtlb.hw.walk import WalkContext
from kvmtlb.hw.x86 import Invlpg, Invpcid, MovToCr0, MovToCr3, MovToCr4
from kvmtlb.oracle import machine as om
from kvmtlb.oracle import processor as op
from kvmtlb.oracle.walk import Entry

GVAS = (0x1000, 0x2000, 0x20_0000, 0x20_1000)
GPAS = (0x10000, 0x11000, 0x12000)
LARGE_GPA = 0x40_0000  # a 2 MiB stage-2 page
PCIDS = (0, 1)
CR4_TOGGLES = (CR4_PGE, CR4_PCIDE, CR4_SMEP, CR4_SMAP, CR4_PKE)


def _ptes() -> list[int]:
    out = [0]
    for gpa in (*GPAS[:2], LARGE_GPA, LARGE_GPA + 0x1000):
        for w, u, g in ((True, False, False), (False, False, True), (True, True, False)):
            out.append(make_pte(gpa, writable=w, user=u, glob=g))
    return out


@dataclass
class Bed:
    vendor: str
    hw: Machine
    oracle: om.Machine
    guest_root: int
    s2_roots: tuple[int, ...]
    linear_root: int
    slots: dict[str, int]  # op name -> slot number
    values: dict[str, tuple[int, ...]]
    hw_ctl: list[Any] = field(default_factory=list)  # AMD: the VMCB each CPU enters with


def _leaf(ept: bool, hpa: int, r: int) -> int:
    return make_ept(hpa, r) if ept else make_npt(hpa, r)


def build(vendor: str) -> Bed:
    ept = vendor == "intel"
    b = LayoutBuilder()
    s2 = tuple(b.ept_root() if ept else b.npt_root() for _ in range(2))
    groot = b.guest_root(s2)
    lroot = b.linear_root()
    ptes = _ptes()
    # guest: 0x1000, 0x2000 under one table (level-2 entry rewritable to a spare table)
    b.map(groot, 0x1000, ptes[1])
    b.map(groot, 0x2000, ptes[5])
    for g in (0x1000, 0x2000):
        b.allow(groot, g, ptes)
    orig = b.table_pointer(groot, 0x1000, 2)
    spare = b.new_table(groot, 1)
    b.set_entry(spare, 1, [make_pte(GPAS[2]), make_pte(GPAS[1], writable=False, glob=True)])
    b.allow(groot, 0x1000, [orig, make_table_pte(spare), 0], level=2)
    # second 2 MiB: a table with two PTEs, or a 2 MiB page mapping LARGE_GPA
    b.map(groot, 0x20_0000, make_pte(GPAS[0]))
    b.map(groot, 0x20_1000, make_pte(LARGE_GPA + 0x1000, glob=True))
    tptr = b.table_pointer(groot, 0x20_0000, 2)
    b.allow(
        groot,
        0x20_0000,
        [
            tptr,
            make_pte(LARGE_GPA, large=True, glob=True),
            make_pte(LARGE_GPA, large=True, writable=False),
        ],
        level=2,
    )
    # stage 2
    for n, r2 in enumerate(s2):
        for i, gpa in enumerate(GPAS):
            hpa = 0x80000 + 0x1000 * i
            b.map(r2, gpa, _leaf(ept, hpa + 0x10000 * n, E_ALL))
            vals = [
                _leaf(ept, hpa + 0x10000 * k, rr) for k in range(2) for rr in (E_ALL, E_R | E_X)
            ]
            vals.append(0)
            if ept:
                vals.append(make_ept(hpa, E_W))  # write without read: a misconfiguration
                # the leaf with its dirty flag set (by the processor under EPT A/D, or by KVM)
                vals += [make_ept(hpa + 0x10000 * k, E_ALL) | EPT_D for k in range(2)]
            b.allow(r2, gpa, vals)
        b.map(
            r2,
            LARGE_GPA,
            make_ept(0x80_0000, E_ALL, large=True) if ept else make_npt(0x80_0000, 7, large=True),
            level=2,
        )
        if ept:  # the 2 MiB leaf with its dirty flag set by a write (hw/dirty.py)
            b.allow(r2, LARGE_GPA, [make_ept(0x80_0000, E_ALL, large=True) | EPT_D], level=2)
        b.name(r2, LARGE_GPA, create=False)
        b.name(r2, LARGE_GPA + 0x1000, create=False)
        if n == 0:
            optr = b.table_pointer(r2, GPAS[0], 2)
            sp = b.new_table(r2, 1)
            dirty = [make_ept(0x9_0000, E_ALL) | EPT_D] if ept else []
            b.set_entry(sp, 0x10, [_leaf(ept, 0x9_0000, E_ALL), *dirty])
            b.set_entry(sp, 0x11, [_leaf(ept, 0x9_1000, E_R | E_X)])
            b.set_entry(sp, 0x12, [0])
            sptr = make_ept(sp, E_ALL, leaf=False) if ept else make_table_pte(sp)
            b.allow(r2, GPAS[0], [optr, sptr], level=2)
    b.map(lroot, 0x1000, make_pte(0x7_0000))
    b.allow(lroot, 0x1000, [make_pte(0x7_1000, glob=True), 0])
    b.map(lroot, 0x2000, make_pte(0x7_2000, writable=False, glob=True))
    layout = b.build()
    slots = {
        "pte0": layout.slot(groot, 0x1000),
        "pte1": layout.slot(groot, 0x2000),
        "pte2": layout.slot(groot, 0x20_0000),
        "pte3": layout.slot(groot, 0x20_1000),
        "pde0": layout.slot(groot, 0x1000, 2),
        "pde1": layout.slot(groot, 0x20_0000, 2),
        "lin": layout.slot(lroot, 0x1000),
    }
    for n in range(2):
        for i, gpa in enumerate(GPAS):
            slots[f"s2_{n}_{i}"] = layout.slot(s2[n], gpa)
    slots["s2pde"] = layout.slot(s2[0], GPAS[0], 2)
    values = {k: layout.domains[v] for k, v in slots.items()}
    contexts: list[WalkContext] = []
    fmt = Format.EPT if ept else Format.NPT
    ids = (0, 1, 2)
    for r2 in s2:
        for t in ids:
            for p in PCIDS:
                for pge in (True, False):
                    for pg in (True, False):
                        tags: Any = IntelEptTags(t, p, r2) if ept else AmdTags(t, p, True)
                        contexts.append(WalkContext(tags, groot, r2, fmt, pg, pge))
    for t in ids:
        for p in PCIDS:
            for pge in (True, False):
                tags = IntelLinearTags(t, p) if ept else AmdTags(t, p, False)
                contexts.append(WalkContext(tags, lroot, -1, fmt, True, pge))
    universe = Universe(layout, contexts)
    host = Regs(CR0_DEFAULT, lroot, CR4_DEFAULT)
    guest = Regs(CR0_DEFAULT, groot, CR4_DEFAULT)
    mem = om.Memory(
        {(s.table, s.index): d[0] for s, d in zip(layout.slots, layout.domains, strict=True)},
        dict(layout.named),
        dict(layout.table_backing),
    )
    oh = op.Regs(host.cr0, host.cr3, host.cr4)
    og = op.Regs(guest.cr0, guest.cr3, guest.cr4)
    if ept:
        config = MachineConfig(universe, Capabilities(CAP_ALL))
        vmcs = [
            Vmcs(
                ident=0x1000 * (n + 1),
                vpid=n + 1,
                enable_vpid=True,
                enable_ept=True,
                eptp=make_eptp(s2[0]),
                unrestricted_guest=True,
                guest=guest,
                host=host,
            )
            for n in range(2)
        ]
        hwm = Machine.boot(config, layout.initial_memory(), [Cpu(VMX_ROOT, host, v) for v in vmcs])
        procs = [
            op.Proc("intel", False, oh, og, vpid=n + 1, eptp=make_eptp(s2[0])) for n in range(2)
        ]
        ctl: list[Any] = []
    else:
        config = MachineConfig(universe, SvmCapabilities(flush_by_asid=True), arch=AmdArch())
        hwm = Machine.boot(
            config, layout.initial_memory(), [SvmCpu(SVM_HOST, host, None, host) for _ in range(2)]
        )
        ctl = [Vmcb(ident=0x1000 * (n + 1), asid=n + 1, ncr3=s2[0], guest=guest) for n in range(2)]
        procs = [op.Proc("amd", False, oh, og, asid=n + 1, ncr3=s2[0]) for n in range(2)]
    return Bed(vendor, hwm, om.Machine(mem, procs), groot, s2, lroot, slots, values, ctl)


# -- the two vocabularies ------------------------------------------------------------------------
def to_oracle(e: Any) -> Entry:
    """A model entry as the oracle writes it (data only: field names, no predicate)."""
    n = type(e).__name__
    if n.endswith("Psc"):
        kind = {
            "LinearPsc": "linear-psc",
            "CombinedPsc": "combined-psc",
            "GuestPhysicalPsc": "gphys-psc",
            "AsidPsc": "asid-psc",
            "NestedPsc": "nested-psc",
        }[n]
        shift = level_shift(e.level)
        tags = {k: getattr(e, k) for k in ("vpid", "pcid", "ep4ta", "asid") if hasattr(e, k)}
        return Entry(
            kind,
            level=e.level,
            base=e.region << shift,
            size=1 << shift,
            target=e.table,
            rights=e.rights,
            **tags,
        )
    kind = {
        "LinearTranslation": "linear",
        "CombinedTranslation": "combined",
        "GuestPhysicalTranslation": "gphys",
        "AsidTranslation": "asid",
        "NestedTranslation": "nested",
    }[n]
    tags = {k: getattr(e, k) for k in ("vpid", "pcid", "ep4ta", "asid") if hasattr(e, k)}
    extra = {k: getattr(e, k) for k in ("span", "erights", "glob", "gpa") if hasattr(e, k)}
    return Entry(kind, base=e.page, size=e.size, target=e.frame, rights=e.rights, **tags, **extra)


def outcome_word(o: Any) -> str:
    n = type(o).__name__
    if n == "Fault":
        return {"#GP": "gp", "#UD": "ud"}[o.vector]
    return {
        "Done": "done",
        "VmExit": "vmexit",
        "VmSucceed": "vmsucceed",
        "VmFailValid": "vmfail",
        "VmFailInvalid": "vmfail",
        "VmEntryFailed": "entry-failed",
    }[n]


def access_tuple(o: Any) -> tuple[object, ...]:
    if isinstance(o, Access):
        return ("access", o.gva, o.gpa, o.frame, o.rights, o.erights)
    if isinstance(o, PageFault):
        return ("pf", o.gva, o.reason)
    if isinstance(o, EptViolation):
        return ("eptv", o.gpa, o.gva)
    if isinstance(o, EptMisconfig):
        return ("misconfig", o.gpa)
    assert isinstance(o, NestedPageFault)
    return ("npf", o.gpa, o.gva)


def in_guest(cpu: Any) -> bool:
    return bool(cpu.mode == (SVM_GUEST if isinstance(cpu, SvmCpu) else VMX_NONROOT))


Op = tuple[str, int, int, int, int]


class Pair:
    """The model and the oracle, driven by the same ops."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.hw = bed.hw
        self.oracle = bed.oracle
        self.ctl = list(bed.hw_ctl)

    def held(self, j: int) -> frozenset[Entry]:
        return frozenset(to_oracle(e) for e in self.hw.held(j))

    def write(self, name: str, k: int) -> None:
        slot = self.bed.slots[name]
        value = self.bed.values[name][k % len(self.bed.values[name])]
        s = self.hw.memory.layout.slots[slot]
        self.hw = self.hw.write(slot, value)
        self.oracle = self.oracle.write(s.table, s.index, value)

    def step(self, i: int, hw_event: Any, oracle_event: tuple[object, ...]) -> Any:
        st = self.hw.step(i, hw_event)
        self.hw = st.machine
        self.oracle, word, rm = self.oracle.step(i, oracle_event)
        assert outcome_word(st.outcome) == word, (hw_event.describe(), st.outcome, word)
        return rm

    def apply(self, o: Op) -> tuple[int, Any] | None:
        """Apply one op to both; returns (processor, the oracle's removal) for an event."""
        was_guest = in_guest(self.hw.cpus[o[1]])
        done = self._apply(o)
        cpu = self.hw.cpus[o[1]]
        if was_guest and not in_guest(cpu) and isinstance(cpu, SvmCpu):
            # #VMEXIT saved the guest's state in the VMCB (an access's #NPF exits too): the next
            # VMRUN loads it, as the oracle's does.
            self.ctl[o[1]] = self.ctl[o[1]]._replace(guest=cpu.vmcb.guest)
        return done

    def _apply(self, o: Op) -> tuple[int, Any] | None:
        kind, i, k, a, b = o
        cpu = self.hw.cpus[i]
        if kind == "pte":
            self.write(("pte0", "pte1", "pte2", "pte3", "pde0", "pde1", "lin")[k % 7], a * 8 + b)
            return None
        if kind == "s2":
            name = "s2pde" if k == 5 else f"s2_{(k // 3) % 2}_{k % 3}"
            self.write(name, a * 8 + b)
            return None
        if kind == "transition":
            return i, self._transition(i, cpu, a, b)
        if kind == "event":
            if in_guest(cpu):
                return i, self._guest_event(i, cpu, k, a, b)
            return i, self._host_event(i, cpu, k, a, b)
        if not in_guest(cpu):
            return None
        gva = GVAS[k % len(GVAS)]
        access = ("read", "write", "exec")[a % 3]
        succ = self.hw.access(i, gva, access)
        mine = {access_tuple(x) for x, _ in succ}
        theirs = self.oracle.outcomes(i, gva, access)
        assert mine == theirs, (o, sorted(mine, key=repr), sorted(theirs, key=repr))
        ordered = sorted(succ, key=lambda s: repr(access_tuple(s[0])))
        # b = 7 takes the last outcome: a fault when there is one (faults sort after accesses).
        outcome, nxt = ordered[-1] if b == 7 else ordered[b % len(succ)]
        if nxt is self.hw:
            return None
        self.hw = nxt
        if isinstance(outcome, Access):  # a write that set an EPT dirty flag (hw/dirty.py)
            self.oracle = self.oracle.take_write(i, access_tuple(outcome))
            return None
        self.oracle, rm = self.oracle.take(i, access_tuple(outcome))
        return i, rm

    def _transition(self, i: int, cpu: Any, a: int, b: int) -> Any:
        if in_guest(cpu):
            if not isinstance(cpu, SvmCpu):
                return self.step(i, VmExitEvent(), ("vmexit",))
            return self.step(i, SvmExitEvent(), ("vmexit",))
        if isinstance(cpu, SvmCpu):
            tc = (0, 0, 1, 3, 7, 3)[b % 6]
            asid = 1 + a % 2
            vmcb = self.ctl[i]._replace(asid=asid, tlb_control=tc)
            if b % 6 == 5:  # a reserved value without FlushByAsid semantics
                vmcb = vmcb._replace(tlb_control=5)
                return self.step(i, Vmrun(vmcb), ("vmrun", asid, 5))
            return self.step(i, Vmrun(vmcb), ("vmrun", asid, tc))
        return self.step(i, VmEntry(not cpu.vmcs.launched), ("vmentry",))

    def _guest_event(self, i: int, cpu: Any, k: int, a: int, b: int) -> Any:
        regs = cpu.regs
        gva = GVAS[a % len(GVAS)]
        if k == 0:
            return self.step(i, Invlpg(gva), ("invlpg", gva))
        if k == 1:
            t, p, gva = a % 4, b % 2, GVAS[(b // 2) % len(GVAS)]
            return self.step(i, Invpcid(t, p, gva), ("invpcid", t, p, gva))
        if k == 2:
            pcide = regs.cr4 & CR4_PCIDE
            noflush = (1 << 63) if (b % 3 == 2 and pcide) else 0
            value = (regs.cr3 & ~0xFFF) | ((b % 2) if pcide else 0) | noflush
            return self.step(i, MovToCr3(value), ("mov_cr3", value))
        if k in (3, 4):
            value = regs.cr4 ^ CR4_TOGGLES[(a + b) % len(CR4_TOGGLES)]
            return self.step(i, MovToCr4(value), ("mov_cr4", value))
        if k == 6 and not isinstance(cpu, SvmCpu):
            return self.step(i, VmfuncEptpSwitch(b % 2), ("vmfunc", b % 2))
        value = regs.cr0 ^ (CR0_WP if b % 2 else CR0_PG)  # WP: applied at the access check
        return self.step(i, MovToCr0(value), ("mov_cr0", value))

    def _host_event(self, i: int, cpu: Any, k: int, a: int, b: int) -> Any:
        bed = self.bed
        if isinstance(cpu, SvmCpu):
            if k in (0, 1):
                gva, asid = GVAS[b % len(GVAS)], a % 3
                return self.step(i, Invlpga(gva, asid), ("invlpga", gva, asid))
            if k == 2:
                return self.step(i, FlushAllAsids(), ("flush_all_asids",))
            # the VMCB the next VMRUN uses: nCR3, nested paging off (shadow-like), PG = 0
            v = self.ctl[i]
            g = v.guest
            mode = (a + b) % 4
            if mode == 0:
                v = v._replace(
                    np_enable=True,
                    ncr3=bed.s2_roots[b % 2],
                    guest=g._replace(cr0=CR0_DEFAULT, cr3=bed.guest_root),
                )
            elif mode == 1:
                v = v._replace(
                    np_enable=False, guest=g._replace(cr0=CR0_DEFAULT, cr3=bed.linear_root)
                )
            elif mode == 2:
                v = v._replace(
                    np_enable=True,
                    guest=Regs(CR0_DEFAULT & ~CR0_PG, bed.guest_root, CR4_DEFAULT, cs_l=False),
                )
            else:
                v = v._replace(guest=g._replace(cr4=CR4_DEFAULT))
            self.ctl[i] = v
            p = self.oracle.procs[i]
            og = op.Regs(v.guest.cr0, v.guest.cr3, v.guest.cr4, v.guest.cs_l)
            self.oracle.procs = (
                *self.oracle.procs[:i],
                p._replace(np=v.np_enable, ncr3=v.ncr3, guest=og),
                *self.oracle.procs[i + 1 :],
            )
            return None
        if k == 0:
            t = a % 4
            desc = 0 if t == 2 else 1 + b % 2
            gva = GVAS[b % len(GVAS)]
            return self.step(i, Invvpid(t, desc, gva), ("invvpid", t, desc, gva))
        if k == 1:
            t = 1 + b % 2
            eptp = make_eptp(bed.s2_roots[a % 2])
            return self.step(i, Invept(t, eptp), ("invept", t, eptp))
        if k == 2:
            vpid = 1 + b % 2
            return self.step(i, Vmwrite("vpid", vpid), ("vmwrite", "vpid", vpid))
        if k == 3:
            on = bool(b % 2)
            return self.step(i, Vmwrite("enable_vpid", on), ("vmwrite", "enable_vpid", on))
        if k == 4 and a % 3 == 2:
            on = bool(b % 2)
            return self.step(i, Vmwrite("enable_pml", on), ("vmwrite", "enable_pml", on))
        if k == 4:  # with EPT A/D flags or without
            eptp = make_eptp(bed.s2_roots[b % 2], ad=a % 3 == 1)
            return self.step(i, Vmwrite("eptp", eptp), ("vmwrite", "eptp", eptp))
        if k == 6:  # the EPTP list of VMFUNC leaf 0
            lst = tuple(make_eptp(r) for r in bed.s2_roots)
            return self.step(i, Vmwrite("eptp_list", lst), ("vmwrite", "eptp_list", lst))
        mode = (a + b) % 3
        if mode == 0:  # EPT on, paging on
            g = Regs(CR0_DEFAULT, bed.guest_root, CR4_DEFAULT)
            ctl = {"enable_ept": True, "unrestricted_guest": True}
        elif mode == 1:  # EPT on, unrestricted guest with CR0.PG = 0 (outside 64-bit mode)
            g = Regs(CR0_DEFAULT & ~CR0_PG, bed.guest_root, CR4_DEFAULT, cs_l=False)
            ctl = {"enable_ept": True, "unrestricted_guest": True}
        else:  # EPT off: the guest runs on the linear (shadow) hierarchy
            g = Regs(CR0_DEFAULT, bed.linear_root, CR4_DEFAULT)
            ctl = {"enable_ept": False, "unrestricted_guest": False}
        rm = None
        names = {"unrestricted_guest": "unrestricted"}
        for f, val in (*ctl.items(), ("guest", g)):
            ov: object = op.Regs(g.cr0, g.cr3, g.cr4, g.cs_l) if f == "guest" else val
            rm = self.step(i, Vmwrite(f, val), ("vmwrite", names.get(f, f), ov)) or rm
        return rm

    def check(self, where: object, concrete: bool = False) -> None:
        """The model's MAY-sets equal the oracle's maximal run, and so do the outcomes. With
        `concrete`, hw/concrete.py's path walker is checked on the same states too (it
        enumerates paths one by one, so it is kept to the short directed sequences)."""
        for j in range(len(self.hw.cpus)):
            vmcs = getattr(self.hw.cpus[j], "vmcs", None)
            if vmcs is not None:  # the page-modification log (hw/dirty.py)
                assert vmcs.pml == self.oracle.procs[j].pml, (where, j)
            mine, theirs = self.held(j), self.oracle.procs[j].held
            assert mine == theirs, (
                f"after {where} on cpu {j}: model only "
                f"{sorted(map(str, mine - theirs))[:4]}, oracle only "
                f"{sorted(map(str, theirs - mine))[:4]}"
            )
            # hw/concrete.py's single-path walker (the cost model's kind of walk) over the same
            # rich states: its paths from the MAY-set build nothing new, and give its outcomes.
            ctx = self.hw.config.context(self.hw.cpus[j]).ctx
            pw = PathWalker(ctx, self.hw.memory, self.hw.held(j))
            may = set(self.hw.held(j))
            for a in self.hw.universe.addresses(ctx) if concrete else ():
                for path in pw.paths(a):
                    assert set(path.built) <= may, (where, j, a)
            if not in_guest(self.hw.cpus[j]):
                continue
            for gva in GVAS:
                for access in ("read", "write", "exec"):
                    got = {access_tuple(x) for x in self.hw.outcomes(j, gva, access)}
                    assert got == self.oracle.outcomes(j, gva, access), (where, j, gva, access)
                    if not concrete:
                        continue
                    arch = self.hw.config.arch
                    results = tuple(p.result for p in pw.paths(gva))
                    if access == "write" and tracks_dirty(self.hw.cpus[j]):
                        results = write_results(results, self.hw.reference(j, gva))
                    paths = {
                        access_tuple(arch.classify(self.hw.cpus[j], gva, access, r))
                        for r in results
                    }
                    assert paths == got, (where, j, gva, access)


__all__ = ["Bed", "Pair", "build", "to_oracle"]
