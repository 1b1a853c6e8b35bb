"""L1's VMX instructions and L2's exit to L1, on the vCPU's processor and on the native reference.

On the processor KVM drives, every VMX instruction of L1 (which runs in VMX non-root operation)
causes a VM exit to KVM, which emulates it (kvm/nested_vmx.py); L2's VMCALL exits to KVM too,
which reflects it to L1 as a nested VM exit. On the native reference (model/nested_native.py) L1
is the hypervisor: the same instructions run on a processor in VMX root operation, with a vmcs12
of L1's, and L2 runs in VMX non-root operation under it. Guest-transparency compares the two.
"""

from __future__ import annotations

from typing import Any

from kvmtlb.guest.l1_ops import (
    EptMapOp,
    InveptOp,
    InvlpgaOp,
    InvvpidOp,
    L1Op,
    NptMapOp,
    VmcallOp,
    VmlaunchOp,
    VmptrldOp,
    VmresumeOp,
    VmrunOp,
    VmxoffOp,
    VmxonOp,
)
from kvmtlb.hw.cpu import Regs, Vmcs
from kvmtlb.hw.paging import E_R, E_W, E_X, make_ept, make_npt
from kvmtlb.hw.svm import Invlpga, SvmExitEvent, Vmrun
from kvmtlb.hw.vmcb import Vmcb
from kvmtlb.hw.vmx import (
    Invept,
    Invvpid,
    VmEntry,
    VmExitEvent,
    Vmptrld,
    Vmwrite,
    Vmxoff,
    Vmxon,
    make_eptp,
)
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.nested_npt import NESTED_NPT12_WRITE
from kvmtlb.kvm.nested_vmx import (
    NESTED_EPT12_WRITE,
    NESTED_INVEPT,
    NESTED_INVLPGA,
    NESTED_INVVPID,
    NESTED_VMCALL,
    NESTED_VMLAUNCH,
    NESTED_VMPTRLD,
    NESTED_VMRESUME,
    NESTED_VMRUN,
    NESTED_VMXOFF,
    NESTED_VMXON,
)
from kvmtlb.kvm.policy import KvmPolicy
from kvmtlb.kvm.x86 import EXIT_NESTED

VMCS12_IDENT = 0x7000  # the address of L1's vmcs12 (any value: one vmcs12 per vCPU)


def _native(k: Step, v: int, *events: Any) -> None:
    for event in events:
        k.native = k.native.step(v, event).machine


def l1_step(k: Step, pol: KvmPolicy, v: int, op: L1Op) -> bool:
    """Run L1's (or L2's exit) instruction `op` of vCPU `v`: on the vCPU's processor it exits to
    KVM, whose handler runs next; on the native reference it runs as the SDM says. Returns
    False when the op must be retried (a store to EPT12 that KVM write-protects exited)."""
    vcpu = k.vcpus[v]
    cfg = k.config
    frame: tuple[int, int, int, int]
    if isinstance(op, EptMapOp):
        return _ept12_store(k, pol, v, op)
    if isinstance(op, NptMapOp):
        return _npt12_store(k, pol, v, op)
    if isinstance(op, VmxonOp):
        event: Any = Vmxon()
        frame = (NESTED_VMXON, 0, 0, 0)
        _native(k, v, Vmxon())
    elif isinstance(op, VmxoffOp):
        event = Vmxoff()
        frame = (NESTED_VMXOFF, 0, 0, 0)
        _native(k, v, Vmxoff())
    elif isinstance(op, VmlaunchOp):
        root = cfg.root_names.index(op.root)
        event = VmEntry(launch=True)
        frame = (NESTED_VMLAUNCH, root, op.vpid, op.ept)
        ncpu = k.native.cpus[v]
        vmcs12 = Vmcs(
            ident=VMCS12_IDENT,
            vpid=op.vpid,
            enable_vpid=op.vpid != 0,
            enable_ept=cfg.nested_ept,
            eptp=_eptp12(k, op.ept),
            guest=Regs(ncpu.regs.cr0, cfg.roots[root], ncpu.regs.cr4),
        )
        _native(k, v, Vmptrld(vmcs12), VmEntry(launch=True))
    elif isinstance(op, VmptrldOp):
        # the vmcs12 L1 launched on that table, as L1 left it in its memory (launched)
        root = cfg.root_names.index(op.root)
        ncpu = k.native.cpus[v]
        vmcs12 = Vmcs(
            ident=VMCS12_IDENT,
            vpid=op.vpid,
            enable_vpid=op.vpid != 0,
            enable_ept=cfg.nested_ept,
            eptp=_eptp12(k, op.ept),
            guest=Regs(ncpu.regs.cr0, cfg.roots[root], ncpu.regs.cr4),
            launched=True,
        )
        event = Vmptrld(vmcs12)
        frame = (NESTED_VMPTRLD, root, op.vpid, op.ept)
        _native(k, v, event)
    elif isinstance(op, VmresumeOp):
        event = VmEntry(launch=False)
        frame = (NESTED_VMRESUME, -1, op.vpid, op.ept)
        if op.vpid >= 0:
            _native(k, v, Vmwrite("vpid", op.vpid), Vmwrite("enable_vpid", op.vpid != 0))
        if op.ept >= 0:
            _native(k, v, Vmwrite("eptp", _eptp12(k, op.ept)))
        _native(k, v, VmEntry(launch=False))
    elif isinstance(op, InvvpidOp):
        event = Invvpid(op.type, op.vpid, op.gva)
        frame = (NESTED_INVVPID, op.type, op.vpid, op.gva)
        _native(k, v, event)
    elif isinstance(op, InveptOp):
        event = Invept(op.type, _eptp12(k, op.ept) if op.type == 1 else 0)
        frame = (NESTED_INVEPT, op.type, max(op.ept, 0), 0)
        _native(k, v, event)
    elif isinstance(op, VmcallOp) and cfg.vmx:
        event = VmExitEvent("VMCALL")
        frame = (NESTED_VMCALL, 0, 0, 0)
        _native(k, v, VmExitEvent("VMCALL"))
    elif isinstance(op, VmcallOp):
        event = SvmExitEvent("VMMCALL")
        frame = (NESTED_VMCALL, 0, 0, 0)
        _native(k, v, SvmExitEvent("VMMCALL"))
    elif isinstance(op, VmrunOp):
        root = cfg.root_names.index(op.root)
        ncpu = k.native.cpus[v]
        vmcb12 = Vmcb(
            ident=VMCS12_IDENT,
            asid=op.asid,
            tlb_control=op.tlb_control,
            np_enable=cfg.nested_npt,
            ncr3=cfg.npt12_root if cfg.nested_npt else 0,
            guest=Regs(ncpu.regs.cr0, cfg.roots[root], ncpu.regs.cr4),
        )
        event = Vmrun(vmcb12)
        frame = (NESTED_VMRUN, root, op.asid, op.tlb_control)
        _native(k, v, event)
    elif isinstance(op, InvlpgaOp):
        event = Invlpga(op.gva, op.asid)
        frame = (NESTED_INVLPGA, op.gva, op.asid, 0)
        _native(k, v, event)
    else:
        raise AssertionError(f"unknown L1 op {op!r}")
    k.hw(vcpu.cpu, event, "L2" if isinstance(op, VmcallOp) else "L1")
    pol.vcpu_exit(k, vcpu, EXIT_NESTED, frame)
    return True


def _ept12_store(k: Step, pol: KvmPolicy, v: int, op: EptMapOp) -> bool:
    """L1's store to its EPT12 leaf of `op.l2gpa`. While KVM's shadow EPT02 page of that EPT12
    table is synced, KVM write-protects the table (in EPT01): the store exits (an EPT violation)
    and KVM unsyncs the page (mmu_try_to_unsync_pages), then L1 retries it. An unsync page's
    table is writable: the store lands, and EPT02 keeps its old SPTE until a sync."""
    cfg = k.config
    vcpu = k.vcpus[v]
    if not pol.ept02_sp_unsync(k, op.l2gpa, op.ept):
        k.hw(vcpu.cpu, VmExitEvent("EPT violation"), "L1's store to a write-protected EPT12")
        pol.vcpu_exit(k, vcpu, EXIT_NESTED, (NESTED_EPT12_WRITE, op.l2gpa, op.ept, 0))
        return False
    value = make_ept(op.l1gpa, _ept_rights(op.rights)) if op.l1gpa >= 0 else 0
    slot = cfg.layout.slot((cfg.ept12_roots or (cfg.ept12_root,))[op.ept], op.l2gpa)
    what = f"{op.l1gpa:#x} {op.rights}" if op.l1gpa >= 0 else "not present"
    k.write_slot(slot, value, f"L1: EPT12[{op.l2gpa:#x}] = {what}")
    return True


def _npt12_store(k: Step, pol: KvmPolicy, v: int, op: NptMapOp) -> bool:
    """L1's store to its NPT12 leaf of `op.l2gpa`, as _ept12_store for EPT12: while KVM's
    shadow NPT02 page of that NPT12 table is synced, the table is write-protected in NPT01, the
    store exits (a #NPF) and KVM unsyncs the page; L1 retries it, and it lands."""
    cfg = k.config
    vcpu = k.vcpus[v]
    if pol.npt12_store_exits(k, vcpu, op.l2gpa):
        pol.vcpu_exit(k, vcpu, EXIT_NESTED, (NESTED_NPT12_WRITE, op.l2gpa, 0, 0))
        return False
    value = make_npt(op.l1gpa, _ept_rights(op.rights)) if op.l1gpa >= 0 else 0
    slot = cfg.layout.slot(cfg.npt12_root, op.l2gpa)
    what = f"{op.l1gpa:#x} {op.rights}" if op.l1gpa >= 0 else "not present"
    k.write_slot(slot, value, f"L1: NPT12[{op.l2gpa:#x}] = {what}")
    return True


def _eptp12(k: Step, table: int) -> int:
    """vmcs12's EPTP for EPT12 table `table` (0 without nested EPT: EPT off in vmcs12)."""
    cfg = k.config
    if not cfg.nested_ept:
        return 0
    return make_eptp((cfg.ept12_roots or (cfg.ept12_root,))[max(table, 0)])


def _ept_rights(text: str) -> int:
    return sum(bit for c, bit in (("r", E_R), ("w", E_W), ("x", E_X)) if c in text)


__all__ = ["l1_step"]
