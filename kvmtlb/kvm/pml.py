"""Dirty logging by EPT dirty flags and page-modification logging (PML), on VMX with EPT A/D.

With `pml = true` (a scenario knob; kvm_intel's enable_pml, which needs EPT and
enable_ept_ad_bits) KVM logs dirty pages the way it does on such a processor, instead of by write
protection (kvm/mmu.py). The hardware side is hw/dirty.py: a write whose translation was cached
with the EPT leaf's dirty flag clear sets the flag and logs the GPA in the VMCS's PML log; a
write through a translation cached dirty does neither.

- SPTEs: a writable 4 KiB SPTE is made dirty (spte.c:make_spte @ v6.18 sets shadow_dirty_mask
  with PT_WRITABLE_MASK; mmu.c:set_spte @ v5.7/v5.8 the same), and its page is marked dirty at
  once when the memslot logs (kvm/mmu.py:make_spte). The EPTP enables A/D flags
  (vmx.c:construct_eptp with enable_ept_ad_bits).
- Switching dirty logging on (the host op `wrprotect`): v6.18's kvm_mmu_slot_apply_flags first
  asks every vCPU to turn PML on (kvm_mmu_update_cpu_dirty_logging:
  KVM_REQ_UPDATE_CPU_DIRTY_LOGGING, a request with KVM_REQUEST_WAIT, when the first memslot starts
  logging; vmx_update_cpu_dirty_logging sets 'enable PML'), then clears the dirty flags of the
  slot's 4 KiB SPTEs (kvm_mmu_slot_leaf_clear_dirty -> kvm_tdp_mmu_clear_dirty_slot) and flushes
  (kvm_flush_remote_tlbs_memslot, unconditionally since b64d740ea7dd). v5.7 and v5.8 have PML on
  in every VMCS from its creation (vmx_compute_secondary_exec_control keeps
  SECONDARY_EXEC_ENABLE_PML with enable_pml), and vmx_slot_enable_log_dirty ->
  kvm_mmu_slot_leaf_clear_dirty flushes only if it cleared a dirty flag (mmu_spte_update reports
  a dirty flag going from 1 to 0 as needing a flush).
- KVM_CLEAR_DIRTY_LOG (`clear_dirty_log`): kvm_arch_mmu_enable_log_dirty_pt_masked clears the dirty
  flags of the frames whose bits were cleared (kvm_tdp_mmu_clear_dirty_pt_masked @ v6.18,
  kvm_mmu_clear_dirty_pt_masked @ v5.x), and kvm_clear_dirty_log_protect flushes.
- Every VM exit flushes the vCPU's PML log into the dirty bitmap (vmx_flush_pml_buffer, from
  __vmx_handle_exit @ v6.18 when not in guest mode, vmx_handle_exit @ v5.x): each logged GPA is
  marked dirty (kvm_vcpu_mark_page_dirty), and the PML index is reset.

The checker's dirty-logging property counts a GPA in a PML log as logged (model/properties.py):
it reaches the bitmap at the vCPU's next exit. kvm_arch_sync_dirty_log's kicks, which only make
the bitmap fresher before userspace reads it, are not modelled. Scenarios with PML have no
2 MiB region (kvm_mmu_slot_remove_write_access for 2 MiB leaves is not modelled here) and no
nested guest (PML is never enabled while L2 runs).
"""

from __future__ import annotations

from kvmtlb.hw.paging import E_W, EPT_D
from kvmtlb.hw.vmx import Vmwrite
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.requests import KVM_REQ_UPDATE_CPU_DIRTY_LOGGING, kvm_check_request
from kvmtlb.kvm.state import HostTask, Vcpu


class Pml:
    """v6.18's dirty logging with PML (see the module docstring)."""

    def make_spte(self, k: Step, gpa: int, hpa: int, rights: int) -> int:
        """spte.c:make_spte @ v6.18: with A/D flags a writable SPTE is made dirty."""
        value: int = super().make_spte(k, gpa, hpa, rights)  # type: ignore[misc]
        if k.config.pml and rights & E_W:
            value |= EPT_D
        return value

    def vmx_pml_at_create(self, k: Step) -> bool:
        """vmx.c:vmx_secondary_exec_control @ v6.18: 'enable PML' in a new vCPU's VMCS only while
        a memslot logs dirty pages (nr_memslots_dirty_logging)."""
        return k.config.pml and k.kvm.log_dirty != 0

    # -- KVM_REQ_UPDATE_CPU_DIRTY_LOGGING -------------------------------------------------------
    def kvm_service_dirty_logging_request(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_enter_guest @ v6.18: KVM_REQ_UPDATE_CPU_DIRTY_LOGGING ->
        vmx_update_cpu_dirty_logging: 'enable PML' on while a memslot logs dirty pages, else off.
        (vcpu_enter_guest checks it after KVM_REQ_STEAL_UPDATE; the model checks it just before,
        with no effect on translations: both come before the VM entry.)"""
        if kvm_check_request(vcpu, KVM_REQ_UPDATE_CPU_DIRTY_LOGGING):
            on = k.kvm.log_dirty != 0
            k.hw(vcpu.cpu, Vmwrite("enable_pml", on), "vmx_update_cpu_dirty_logging")

    # -- VM exits -----------------------------------------------------------------------------
    def vmx_flush_pml_buffer(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.c:vmx_flush_pml_buffer @ v6.18 (and v5.x), on every VM exit: mark each logged GPA
        dirty (kvm_vcpu_mark_page_dirty: in the bitmap if its memslot logs), then reset the PML
        index. Nothing to do with an empty log."""
        v = k.machine.cpus[vcpu.cpu].vmcs
        if not k.config.pml or v is None or not v.pml:
            return
        for gpa in v.pml:
            if gpa in k.config.gpas:
                self.mark_page_dirty_in_slot(k, gpa)  # type: ignore[attr-defined]
        k.hw(vcpu.cpu, Vmwrite("pml", ()), "vmx_flush_pml_buffer: reset the PML index")

    # -- switching dirty logging on --------------------------------------------------------------
    def kvm_mmu_slot_apply_flags_pml(self, k: Step, task: HostTask) -> None:
        """x86.c:kvm_mmu_slot_apply_flags @ v6.18 with PML (kvm->arch.cpu_dirty_log_size): the
        memslot logs from now on (nr_memslots_dirty_logging counts it, the bitmap starts clean);
        for the first such memslot kvm_mmu_update_cpu_dirty_logging asks every vCPU to turn PML
        on and waits; then the dirty flags are cleared."""
        first = k.kvm.log_dirty == 0
        self.kvm_slot_log_dirty_on(k, task.gpa)  # type: ignore[attr-defined]
        k.note(f"KVM_MEM_LOG_DIRTY_PAGES on for {task.gpa:#x}", "dirty bitmap clean")
        if self.kvm_mmu_update_cpu_dirty_logging(k, first):
            task.frame = (KVM_REQ_UPDATE_CPU_DIRTY_LOGGING, 0, 0)
            task.call("kvm_make_all_cpus_request", "kvm_mmu_slot_leaf_clear_dirty")
        else:
            task.goto("kvm_mmu_slot_leaf_clear_dirty")

    def kvm_mmu_update_cpu_dirty_logging(self, k: Step, first: bool) -> bool:
        """x86.c:kvm_mmu_update_cpu_dirty_logging @ v6.18: whether to ask every vCPU to turn PML
        on (kvm_make_all_cpus_request): when the first memslot starts logging."""
        return first

    def kvm_mmu_slot_leaf_clear_dirty(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_mmu_slot_leaf_clear_dirty -> tdp_mmu.c:kvm_tdp_mmu_clear_dirty_slot @ v6.18:
        clear the dirty flag of the frame's SPTEs; then kvm_flush_remote_tlbs_memslot."""
        cleared = self.clear_dirty_sptes(k, task.gpa, "kvm_tdp_mmu_clear_dirty_slot")
        if self.leaf_clear_dirty_flushes(k, cleared):
            task.goto("kvm_flush_remote_tlbs")
        else:
            k.note(
                "dirty flags cleared" if cleared else "no dirty flag cleared", "no remote TLB flush"
            )
            task.return_()

    def leaf_clear_dirty_flushes(self, k: Step, cleared: bool) -> bool:
        """x86.c:kvm_mmu_slot_apply_flags @ v6.18: kvm_flush_remote_tlbs_memslot always."""
        return True

    def clear_dirty_sptes(self, k: Step, gpa: int, why: str) -> bool:
        """Clear the dirty flag of `gpa`'s SPTE in every live root (the write permission stays);
        returns whether one was set."""
        cleared = False
        for r in self.live_tdp_roots(k):  # type: ignore[attr-defined]
            hpa, _ = self.spte(k, gpa, r)  # type: ignore[attr-defined]
            slot = self.spte_slot(k, gpa, r)  # type: ignore[attr-defined]
            value = k.machine.memory.values[slot]
            if hpa >= 0 and value & EPT_D:
                cleared = True
                k.write_slot(slot, value & ~EPT_D, f"{why}: SPTE[{gpa:#x}] dirty flag cleared")
        return cleared

    def kvm_arch_mmu_enable_log_dirty_pt_masked(self, k: Step, gpa: int) -> None:
        """x86.c:kvm_arch_mmu_enable_log_dirty_pt_masked @ v6.18 for one frame: with PML
        (kvm_tdp_mmu_clear_dirty_pt_masked) clear its SPTEs' dirty flags; else write-protect
        them (kvm/mmu.py)."""
        if not k.config.pml:
            super().kvm_arch_mmu_enable_log_dirty_pt_masked(k, gpa)  # type: ignore[misc]
            return
        self.clear_dirty_sptes(k, gpa, "kvm_tdp_mmu_clear_dirty_pt_masked")


class Pml58:
    """v5.7 / v5.8: PML is on in every VMCS from its creation, and enabling dirty logging flushes
    only if kvm_mmu_slot_leaf_clear_dirty cleared a dirty flag."""

    def vmx_pml_at_create(self, k: Step) -> bool:
        """vmx.c:vmx_compute_secondary_exec_control @ v5.7/v5.8: SECONDARY_EXEC_ENABLE_PML stays
        set whenever enable_pml."""
        return k.config.pml

    def kvm_mmu_update_cpu_dirty_logging(self, k: Step, first: bool) -> bool:
        """x86.c:kvm_mmu_slot_apply_flags -> vmx.c:vmx_slot_enable_log_dirty @ v5.7/v5.8: no
        request, PML is always on."""
        return False

    def leaf_clear_dirty_flushes(self, k: Step, cleared: bool) -> bool:
        """mmu.c:kvm_mmu_slot_leaf_clear_dirty @ v5.7/v5.8: kvm_arch_flush_remote_tlbs_memslot
        only if a dirty flag was cleared (a translation cached dirty needs its leaf dirty)."""
        return cleared


__all__ = ["Pml", "Pml58"]
