"""Where a native operation acts, and whether the hypervisor intercepts it, per vendor.

Native TLB operations (INVLPG, INVPCID, MOV to CR3/CR4/CR0, #PF) behave the same with or without
virtualization, but are scoped to the current tag: on Intel they remove linear and combined
mappings of the current VPID only (combined ones for every EP4TA; intel.native.scope, SDM
§28.3.3.1); on AMD they affect only the current ASID (amd.guest-ops.asid, APM §15.16.1). In a
guest, each may instead be intercepted: a VM exit / #VMEXIT that flushes nothing, the hypervisor
must emulate it (intel.vmx.conditional-exit, amd.intercept.no-flush).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from kvmtlb.hw.cpu import CR4_SMXE, VMX_NONROOT, Cpu
from kvmtlb.hw.effect import Effect
from kvmtlb.hw.invalidation import (
    ASID_GUEST_PSC,
    ASID_GUEST_TLB,
    L_AND_C_PSC,
    L_AND_C_TLB,
    Select,
)
from kvmtlb.hw.outcomes import UD, Fault
from kvmtlb.hw.vmcb import SVM_GUEST, SvmCpu, svm_vmexit
from kvmtlb.hw.vmexit import vm_exit


class Scope(NamedTuple):
    """The entries a native operation on this processor may act on."""

    tlb: tuple[type, ...]  # translation kinds
    psc: tuple[type, ...]  # paging-structure-cache kinds
    tag: str  # "vpid" or "asid"
    value: int
    rule: str  # the rule that scopes it

    def _select(self, kinds: tuple[type, ...], kw: dict[str, Any]) -> Select:
        kw[self.tag] = self.value
        return Select(kinds, **kw)

    def translations(self, **kw: Any) -> Select:
        return self._select(self.tlb, kw)

    def pscs(self, **kw: Any) -> Select:
        return self._select(self.psc, kw)

    def everything(self, **kw: Any) -> Select:
        return self._select(self.tlb + self.psc, kw)


def intel_scope(vpid: int) -> Scope:
    return Scope(L_AND_C_TLB, L_AND_C_PSC, "vpid", vpid, "intel.native.scope")


def amd_scope(asid: int) -> Scope:
    return Scope(ASID_GUEST_TLB, ASID_GUEST_PSC, "asid", asid, "amd.guest-ops.asid")


def native_scope(cpu: Any) -> Scope:
    if isinstance(cpu, SvmCpu):
        return amd_scope(cpu.asid)
    return intel_scope(cpu.vpid)


def vendor(cpu: Any) -> str:
    return "amd" if isinstance(cpu, SvmCpu) else "intel"


def intercept(cpu: Any, what: str, value: int = 0) -> Effect | None:
    """The VM exit (or fault) a guest operation `what` causes instead of executing, or None."""
    if isinstance(cpu, SvmCpu):
        v = cpu.vmcb
        if cpu.mode != SVM_GUEST or v is None:
            return None
        hit = {
            "invlpg": v.intercept_invlpg,
            "invpcid": v.intercept_invpcid,
            "mov_cr3": v.intercept_cr3_write,
            "mov_cr4": v.intercept_cr4_write,
            "mov_cr0": v.intercept_cr0_write,
            "task_switch": v.intercept_task_switch,
            "init": True,
        }.get(what, False)
        if what == "getsec":
            return Effect(cpu, Fault(UD, "GETSEC on AMD"))
        return svm_vmexit(cpu, _EXIT_NAMES.get(what, what)) if hit else None
    vm = cpu.vmcs
    if not isinstance(cpu, Cpu) or cpu.mode != VMX_NONROOT or vm is None:
        return None
    if what == "invpcid" and not vm.enable_invpcid:
        return Effect(cpu, Fault(UD, "'enable INVPCID' is 0"))
    if what == "getsec" and not cpu.regs.cr4 & CR4_SMXE:
        return Effect(cpu, Fault(UD, "GETSEC with CR4.SMXE = 0"))
    exits = {
        "invlpg": vm.invlpg_exiting,
        "invpcid": vm.invlpg_exiting,
        "mov_cr3": vm.cr3_load_exiting,
        "mov_cr4": bool((value ^ vm.cr4_read_shadow) & vm.cr4_guest_host_mask),
        "mov_cr0": bool((value ^ vm.cr0_read_shadow) & vm.cr0_guest_host_mask),
        "task_switch": True,
        "init": True,
        "getsec": True,
    }.get(what, False)
    return vm_exit(cpu, _EXIT_NAMES.get(what, what)) if exits else None


def loaded_cr(cpu: Any, which: str, value: int) -> int:
    """The value a guest's MOV to CR0/CR4 that did not exit actually loads: on Intel, bits the
    guest/host mask gives the host keep their value (SDM §25.3); AMD intercepts whole writes."""
    if isinstance(cpu, Cpu) and cpu.mode == VMX_NONROOT and cpu.vmcs is not None:
        mask = cpu.vmcs.cr4_guest_host_mask if which == "cr4" else cpu.vmcs.cr0_guest_host_mask
        old: int = cpu.regs.cr4 if which == "cr4" else cpu.regs.cr0
        return (old & mask) | (value & ~mask)
    return value


_EXIT_NAMES = {
    "invlpg": "INVLPG",
    "invpcid": "INVPCID",
    "mov_cr3": "MOV to CR3",
    "mov_cr4": "MOV to CR4",
    "mov_cr0": "MOV to CR0",
    "task_switch": "task switch",
    "init": "INIT signal",
    "getsec": "GETSEC",
}
