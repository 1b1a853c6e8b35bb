"""VM exit: the transition from VMX non-root to root operation (SDM ch. 27, new ch. 28).

Models: saving the guest's control registers into the VMCS guest-state area and loading the host's
from the host-state area (§27.3, §27.5), which applies no MOV-to-CR invalidation
(intel.vmtransition.cr-load, §4.11.1); and the one TLB effect of the transition, which depends on
the control of the VMCS being exited: with 'enable VPID' = 0 it removes the linear and combined
mappings of VPID 0000H, for every PCID and EP4TA, never guest-physical ones (intel.vmexit.no-vpid,
§27.5.5); with 'enable VPID' = 1 it removes nothing (intel.vmtransition.vpid).
"""

from __future__ import annotations

from kvmtlb.hw.cpu import VMX_NONROOT, VMX_ROOT, Cpu
from kvmtlb.hw.effect import Effect
from kvmtlb.hw.errors import ModelError
from kvmtlb.hw.invalidation import L_AND_C, Invalidation, Select
from kvmtlb.hw.outcomes import VmExit
from kvmtlb.hw.rules import check_ids


def transition_invalidation(enable_vpid: bool, rule: str) -> Invalidation:
    """What a VM entry or exit removes, given the 'enable VPID' control of the VMCS."""
    if enable_vpid:
        return Invalidation(check_ids(("intel.vmtransition.vpid",)), ())
    return Invalidation(check_ids((rule,)), (Select(L_AND_C, vpid=0),))


def vm_exit(cpu: Cpu, reason: str) -> Effect:
    if cpu.mode != VMX_NONROOT or cpu.vmcs is None:
        raise ModelError(f"VM exit ({reason}) outside VMX non-root operation")
    v = cpu.vmcs
    saved = v._replace(guest=cpu.regs)
    new = cpu._replace(mode=VMX_ROOT, regs=v.host, vmcs=saved)
    return Effect(
        new, VmExit(reason), transition_invalidation(v.enable_vpid, "intel.vmexit.no-vpid")
    )
