"""KVM as a guest of Hyper-V: the enlightened remote TLB flush and range flush.

With `hv_range_flush` the model's KVM runs as an L1 hypervisor on Hyper-V, which offers the
enlightened guest-mapping flush (kvmtlb.hw.hyperv: the L0 carries the hypercall out on every
processor). KVM then fills in the flush_remote_tlbs / flush_remote_tlbs_range hooks:

- kvm_flush_remote_tlbs (kvm_main.c @ v6.18 -> kvm_arch_flush_remote_tlbs -> kvm_onhyperv.c:
  hv_flush_remote_tlbs -> __hv_flush_remote_tlbs_range(kvm, NULL); vmx.c:hv_remote_flush_tlb
  @ v5.7/v5.8) issues HvFlushGuestPhysicalAddressSpace for each EPT/NPT root in use and returns:
  no KVM_REQ_TLB_FLUSH, no kicks (the fallback to the requests is taken only when the hypercall
  fails, which the model's L0 never does);
- kvm_flush_remote_tlbs_range (kvm_main.c @ v6.18 -> kvm_arch_flush_remote_tlbs_range ->
  hv_flush_remote_tlbs_range; mmu.c:kvm_flush_remote_tlbs_with_range @ v5.x ->
  vmx.c:hv_remote_flush_tlb_with_range) issues HvFlushGuestPhysicalAddressList for the GFN range
  it is given, and nothing else. Without Hyper-V it is kvm_flush_remote_tlbs;
- kvm_flush_remote_tlbs_memslot: the memslot's range (the frame, or its whole 2 MiB region).

Which versions have the hooks: v6.18 on VMX and SVM (svm_onhyperv.h:svm_hv_hardware_setup with
HV_X64_NESTED_ENLIGHTENED_TLB); v5.7 / v5.8 on VMX only (vmx.c:hardware_setup with
HV_X64_NESTED_GUEST_MAPPING_FLUSH; SVM gained them in v5.15). Without them the knob changes
nothing.
"""

from __future__ import annotations

from kvmtlb.hw.hyperv import HvFlushGuestPhysicalAddressList, HvFlushGuestPhysicalAddressSpace
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.state import HostTask, Vcpu

HUGE = 1 << 21


class HypervFlush:
    """KVM's Hyper-V remote-flush hooks @ v6.18 (both vendors)."""

    def hv_flush_available(self, k: Step) -> bool:
        """kvm_x86_ops.flush_remote_tlbs_range is set (kvm_available_flush_remote_tlbs_range
        @ v6.18): KVM runs on Hyper-V with the enlightened flush, with EPT/NPT."""
        return k.config.hv_range_flush and k.config.tdp

    def hv_roots(self, k: Step) -> list[int]:
        """The EPT/NPT roots the vCPUs use (__hv_flush_remote_tlbs_range walks every vCPU's
        root_tdp and flushes each distinct one)."""
        hpas = self.tdp_root_hpas(k)  # type: ignore[attr-defined]
        roots = [hpas[r] for r in self.live_tdp_roots(k)]  # type: ignore[attr-defined]
        return roots if k.config.vmx else roots[:1]  # AMD entries carry no nCR3 tag

    def hv_flush_space(self, k: Step, why: str) -> None:
        for root in self.hv_roots(k):
            for p in range(k.config.npcpus):
                k.hw(p, HvFlushGuestPhysicalAddressSpace(k.config.vmx, root), why)

    def hv_flush_list(self, k: Step, start: int, npages: int, why: str) -> None:
        """hyperv_flush_guest_mapping_range for GPAs [start, start + npages pages)."""
        for root in self.hv_roots(k):
            for p in range(k.config.npcpus):
                k.hw(p, HvFlushGuestPhysicalAddressList(k.config.vmx, root, start, npages), why)

    # -- the hooks ------------------------------------------------------------------------------
    def kvm_flush_remote_tlbs(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_flush_remote_tlbs @ v6.18: kvm_arch_flush_remote_tlbs first; on
        Hyper-V, hv_flush_remote_tlbs flushes every root's guest-physical address space and
        KVM makes no request at all."""
        if self.hv_flush_available(k) and not task.frame:
            self.hv_flush_space(k, "kvm_flush_remote_tlbs: hv_flush_remote_tlbs")
            k.note("kvm_flush_remote_tlbs returns", "the hypercall flushed every processor")
            task.return_()
            return
        super().kvm_flush_remote_tlbs(k, task)  # type: ignore[misc]

    def kvm_flush_remote_tlbs_range_host(
        self, k: Step, task: HostTask, start: int, npages: int, why: str
    ) -> None:
        """kvm_main.c:kvm_flush_remote_tlbs_range @ v6.18 from a host task: the range hook, or
        kvm_flush_remote_tlbs (which the caller's next step runs)."""
        if self.hv_flush_available(k):
            self.hv_flush_list(k, start, npages, why)
            task.return_()
        else:
            task.goto("kvm_flush_remote_tlbs")

    def kvm_flush_remote_tlbs_range_vcpu(
        self, k: Step, vcpu: Vcpu, start: int, npages: int, why: str
    ) -> None:
        """kvm_main.c:kvm_flush_remote_tlbs_range @ v6.18 from a vCPU's fault path: the range
        hook, or kvm_flush_remote_tlbs (every vCPU leaves guest mode before this one goes on)."""
        if self.hv_flush_available(k):
            self.hv_flush_list(k, start, npages, why)
        else:
            self.kvm_mmu_remote_flush(k, vcpu, why)  # type: ignore[attr-defined]

    def memslot_range(self, k: Step, gpa: int) -> tuple[int, int]:
        """The memslot of frame `gpa` as (first GPA, pages): its 2 MiB region, or the frame
        (the model gives every other frame a memslot of its own)."""
        n = k.config.huge_region(gpa) if k.config.huge else -1
        return (k.config.huge[n][0], 512) if n >= 0 else (gpa, 1)

    def kvm_flush_remote_tlbs_memslot(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_flush_remote_tlbs_memslot @ v6.18 (mmu.c:
        kvm_arch_flush_remote_tlbs_memslot @ v5.8, the same range flush inline in
        kvm_mmu_slot_remove_write_access @ v5.7): kvm_flush_remote_tlbs_range over the slot."""
        start, npages = self.memslot_range(k, task.gpa)
        self.kvm_flush_remote_tlbs_range_host(k, task, start, npages, "the memslot's range")

    def kvm_mmu_slot_remove_write_access(self, k: Step, task: HostTask) -> None:
        """x86.c:kvm_mmu_slot_apply_flags @ v6.18: write protection, then
        kvm_flush_remote_tlbs_memslot (a range flush on Hyper-V)."""
        if not self.hv_flush_available(k):
            super().kvm_mmu_slot_remove_write_access(k, task)  # type: ignore[misc]
            return
        if self.kvm_tdp_mmu_write_protect(k, task.gpa):  # type: ignore[attr-defined]
            self.kvm_flush_remote_tlbs_memslot(k, task)
        else:
            k.note("no remote TLB flush after write protection")
            task.return_()


class HypervFlush58:
    """v5.7 / v5.8: only VMX fills in tlb_remote_flush(_with_range) on Hyper-V."""

    def hv_flush_available(self, k: Step) -> bool:
        """mmu.c:kvm_available_flush_tlb_with_range @ v5.7/v5.8: kvm_x86_ops.
        tlb_remote_flush_with_range, which vmx.c:hardware_setup sets on Hyper-V with
        HV_X64_NESTED_GUEST_MAPPING_FLUSH and EPT (svm.c has no such hook before v5.15)."""
        return k.config.hv_range_flush and k.config.tdp and k.config.vmx


__all__ = ["HypervFlush", "HypervFlush58"]
