"""Bug-zoo variants of dirty logging with PML (kvm/pml.py, hw/dirty.py).

Neither is a historical bug: each leaves out one step of v6.18's kvm_mmu_slot_apply_flags that
the model says PML logging depends on, so that the checker shows why the step is there.
"""

from __future__ import annotations

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import register
from kvmtlb.kvm.requests import KVM_REQ_UPDATE_CPU_DIRTY_LOGGING
from kvmtlb.kvm.state import Vcpu
from kvmtlb.kvm.versions import Kvm618


@register
class PmlLeafClearDirtyNoFlush(Kvm618):
    name = "bug-pml-clear-dirty-no-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "switching dirty logging on with PML cleans the SPTEs' dirty flags but skips "
        "kvm_flush_remote_tlbs_memslot: a translation cached dirty lets the next write go "
        "through without setting the flag, so PML never logs it"
    )

    def leaf_clear_dirty_flushes(self, k: Step, cleared: bool) -> bool:
        return False


@register
class PmlNotEnabled(Kvm618):
    name = "bug-pml-not-enabled"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "KVM_REQ_UPDATE_CPU_DIRTY_LOGGING is serviced without turning PML on "
        "(vmx_update_cpu_dirty_logging left out): the vCPU's writes set the cleaned dirty "
        "flags again with nothing logged"
    )

    def kvm_service_dirty_logging_request(self, k: Step, vcpu: Vcpu) -> None:
        vcpu.requests &= ~KVM_REQ_UPDATE_CPU_DIRTY_LOGGING
        k.note("KVM_REQ_UPDATE_CPU_DIRTY_LOGGING", "vmx_update_cpu_dirty_logging left out")


__all__ = ["PmlLeafClearDirtyNoFlush", "PmlNotEnabled"]
