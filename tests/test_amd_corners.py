"""The AMD corner cases of x86-tlb-architecture.md §6 (16-19) and the ASID rules, on machines."""

from __future__ import annotations

from typing import Any

from kvmtlb.hw.cpu import CR0_DEFAULT, CR4_DEFAULT, CR4_PCIDE, Regs
from kvmtlb.hw.machine import Machine
from kvmtlb.hw.mappings import AsidTranslation
from kvmtlb.hw.outcomes import Access
from kvmtlb.hw.paging import E_R, E_X, make_npt, make_pte
from kvmtlb.hw.svm import FlushAllAsids, SvmExitEvent, Vmrun
from kvmtlb.hw.testbed import AmdSpec, AmdTestbed, build_amd
from kvmtlb.hw.vmcb import SvmCapabilities, Vmcb
from kvmtlb.hw.x86 import Invlpg, MovToCr3, MovToCr4

GVA, GPA, GPA2 = 0x1000, 0x10000, 0x11000
OLD, NEW, OTHER = 0x80000, 0x82000, 0x84000


def frames(m: Machine, i: int, gva: int = GVA, access: str = "read") -> set[int]:
    return {o.frame for o in m.outcomes(i, gva, access) if isinstance(o, Access)}


def kinds(m: Machine, i: int, gva: int = GVA, access: str = "read") -> set[str]:
    return {type(o).__name__ for o in m.outcomes(i, gva, access)}


def run(m: Machine, i: int, vmcb: Vmcb) -> Machine:
    st = m.step(i, Vmrun(vmcb))
    assert type(st.outcome).__name__ == "Done", st.outcome
    return st.machine


def leave(m: Machine, i: int = 0) -> Machine:
    return m.step(i, SvmExitEvent()).machine


def last_vmcb(m: Machine, i: int = 0) -> Any:
    return m.cpus[i].vmcb


def bed(**kw: Any) -> AmdTestbed:
    spec = AmdSpec(
        guest={GVA: make_pte(GPA)},
        npt={GPA: make_npt(OLD), GPA2: make_npt(NEW)},
        npt_values={GPA: [make_npt(NEW), make_npt(OTHER)]},
        guest_values={GVA: [make_pte(GPA2)]},
    )
    for k, v in kw.items():
        setattr(spec, k, v)
    return build_amd(spec)


def test_6_16_same_asid_new_ncr3_reuses_stale_translations() -> None:
    tb = bed(npt_roots=2, asids=(1, 2))
    m = run(tb.machine, 0, tb.vmcb[0])  # ASID 1 on nCR3 N1
    assert frames(m, 0) == {OLD}
    m = leave(m).write(tb.npt_slot(GPA, 1), make_npt(OTHER))  # N2 maps GPA elsewhere
    same_asid = last_vmcb(m)._replace(ncr3=tb.npt_roots[1])
    assert frames(run(m, 0, same_asid), 0) == {OLD, OTHER}  # N1's entries are still usable
    assert frames(run(m, 0, same_asid._replace(tlb_control=3)), 0) == {OTHER}
    assert frames(run(m, 0, same_asid._replace(asid=2)), 0) == {OTHER}


def test_6_17_tlb_control_1_flushes_the_host_and_every_guest() -> None:
    tb = bed(
        linear={GVA: make_pte(0x90000)}, linear_values={GVA: [make_pte(0x91000)]}, asids=(1, 2)
    )
    m = tb.machine
    host = Regs(CR0_DEFAULT, tb.linear_root, CR4_DEFAULT)
    assert frames(m, 0) == {0x90000}  # the host's own entry (ASID 0)
    m = run(m, 0, tb.vmcb[0]._replace(asid=2))
    m = leave(m.write(tb.pte_slot(GVA), make_pte(GPA2)))  # ASID 2's entry goes stale
    m = m.write(tb.linear_slot(GVA), make_pte(0x91000))  # and the host's
    assert frames(m, 0) == {0x90000, 0x91000}
    only_asid_1 = leave(run(m, 0, tb.vmcb[0]._replace(tlb_control=3)))
    assert frames(only_asid_1, 0) == {0x90000, 0x91000}
    everything = leave(run(m, 0, tb.vmcb[0]._replace(tlb_control=1)))
    assert frames(everything, 0) == {0x91000}
    assert frames(run(everything, 0, tb.vmcb[0]._replace(asid=2)), 0) == {NEW}
    assert m.cpus[0].host == host


def test_6_18_no_npt_only_flush_guest_operations_keep_nested_entries() -> None:
    tb = bed()
    m = run(tb.machine, 0, tb.vmcb[0])
    m = m.write(tb.npt_slot(GPA), make_npt(NEW))
    for op in (Invlpg(GVA), MovToCr3(tb.guest_root), MovToCr4(CR4_DEFAULT ^ 0x80)):
        assert frames(m.step(0, op).machine, 0) == {OLD, NEW}, op.describe()
    assert frames(run(leave(m), 0, last_vmcb(m)._replace(tlb_control=3)), 0) == {NEW}


def test_6_19_asids_are_per_processor() -> None:
    """amd.asid.per-cpu: a flush of ASID 1 on one processor leaves another's ASID 1 alone."""
    tb = bed(cpus=2)
    m = run(tb.machine, 1, tb.vmcb[0])  # ASID 1 on pCPU 1
    m = leave(m, 1)
    m = m.write(tb.npt_slot(GPA), make_npt(NEW))
    m = leave(run(m, 0, tb.vmcb[0]._replace(tlb_control=3)))  # flushes ASID 1 on pCPU 0 only
    assert frames(run(m, 1, tb.vmcb[0]), 1) == {OLD, NEW}


def test_tlb_control_persists_until_cleared() -> None:
    tb = bed()
    m = leave(run(tb.machine, 0, tb.vmcb[0]._replace(tlb_control=3)))
    assert last_vmcb(m).tlb_control == 3  # VMRUN never clears it
    m = m.write(tb.npt_slot(GPA), make_npt(NEW))
    assert frames(run(m, 0, last_vmcb(m)), 0) == {NEW}  # so the next VMRUN flushes again


def test_tlb_control_3_without_flushbyasid_guarantees_no_flush() -> None:
    tb = bed(caps=SvmCapabilities(flush_by_asid=False))
    m = leave(run(tb.machine, 0, tb.vmcb[0]))
    m = m.write(tb.npt_slot(GPA), make_npt(NEW))
    st = m.step(0, Vmrun(last_vmcb(m)._replace(tlb_control=3)))
    assert "amd.tlb-control.unsupported" in st.invalidation.rules
    assert frames(st.machine, 0) == {OLD, NEW}
    assert frames(run(m, 0, last_vmcb(m)._replace(tlb_control=1)), 0) == {NEW}


def test_global_pages_are_global_only_inside_their_asid() -> None:
    tb = bed(
        guest={GVA: make_pte(GPA, glob=True)},
        guest_values={GVA: [make_pte(GPA2, glob=True)]},
        asids=(1, 2),
        pcids=(1, 2),
    )
    guest = Regs(CR0_DEFAULT, tb.guest_root | 1, CR4_DEFAULT | CR4_PCIDE)
    m = run(tb.machine, 0, tb.vmcb[0]._replace(guest=guest))
    m = m.write(tb.pte_slot(GVA), make_pte(GPA2, glob=True))
    m = m.step(0, MovToCr3(tb.guest_root | 2)).machine  # the global entry survives, PCID 2
    assert frames(m, 0) == {OLD, NEW}
    v = last_vmcb(leave(m))
    assert frames(run(leave(m), 0, v._replace(asid=2)), 0) == {NEW}  # amd.global.asid


def test_vmcb_paging_changes_flush_nothing() -> None:
    """amd.vmcb-paging-change: changing the guest's CR3 through the VMCB is not a MOV to CR3."""
    tb = bed()
    m = run(tb.machine, 0, tb.vmcb[0])
    m = leave(m.write(tb.pte_slot(GVA), make_pte(GPA2)))
    v = last_vmcb(m)
    reloaded = v._replace(guest=v.guest._replace(cr3=tb.guest_root))
    assert frames(run(m, 0, reloaded), 0) == {OLD, NEW}


def test_nested_rights_and_sizes() -> None:
    """amd.npt.rights, amd.npt.size: both layers must allow an access; the smaller page wins."""
    ro_npt = bed(npt={GPA: make_npt(OLD, E_R | E_X), GPA2: make_npt(NEW)})
    m = run(ro_npt.machine, 0, ro_npt.vmcb[0])
    assert kinds(m, 0, GVA, "write") == {"NestedPageFault"}
    ro_guest = bed(guest={GVA: make_pte(GPA, writable=False)})
    m = run(ro_guest.machine, 0, ro_guest.vmcb[0])
    assert kinds(m, 0, GVA, "write") == {"PageFault"}
    assert kinds(m, 0, GVA, "read") == {"Access"}
    assert all(e.size == 0x1000 for e in m.held(0) if isinstance(e, AsidTranslation))


def test_flush_all_asids_on_msr_write() -> None:
    tb = bed()
    m = run(tb.machine, 0, tb.vmcb[0]).write(tb.npt_slot(GPA), make_npt(NEW))
    m = leave(m).step(0, FlushAllAsids("WRMSR to an MTRR")).machine
    assert frames(run(m, 0, last_vmcb(m)), 0) == {NEW}


def test_host_mode_is_asid_0_and_nested_faults_invalidate_nothing() -> None:
    tb = bed(npt={GPA: make_npt(OLD, E_R | E_X), GPA2: make_npt(NEW)})
    assert tb.machine.cpus[0].asid == 0
    m = run(tb.machine, 0, tb.vmcb[0])
    assert m.cpus[0].asid == 1
    for outcome, succ in m.access(0, GVA, "write"):
        assert type(outcome).__name__ == "NestedPageFault"
        assert succ.cpus[0].asid == 0  # the #NPF exited to the host
        assert succ.cpus[0].may == leave(m).cpus[0].may  # ... and invalidated nothing
