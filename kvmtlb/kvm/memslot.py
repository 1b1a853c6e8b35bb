"""Memslot changes: the deletion of a guest frame's memslot (kvm_set_memslot with KVM_MR_DELETE)
and its move to another GPA (KVM_MR_MOVE), as host-task steps.

Ports kvm_main.c:kvm_set_memslot, kvm_invalidate_memslot, kvm_delete_memslot, kvm_move_memslot and
x86.c:kvm_arch_flush_shadow_memslot @ v6.18 (the same flow in kvm-5.7 and kvm-5.8, where
kvm_arch_flush_shadow_memslot reaches kvm_mmu_zap_all_fast through the page-track notifier
kvm_mmu_invalidate_zap_pages_in_memslot; v6.18 calls it directly while the default quirk
KVM_X86_QUIRK_SLOT_ZAP_ALL is enabled):

1. `kvm_set_memslot`: kvm_invalidate_memslot marks the slot KVM_MEMSLOT_INVALID: a fault on the
   frame from now on retries (kvm_faultin_pfn: RET_PF_RETRY) instead of mapping the slot's
   page;
2. `kvm_set_memslot:swap`: kvm_swap_active_memslots publishes the invalid slot and waits for
   SRCU readers (synchronize_srcu_expedited): a fault that looked up the old slot, between
   kvm_faultin_pfn and its map, finishes first; then kvm_arch_flush_shadow_memslot, which is
   kvm_mmu_zap_all_fast (every root obsolete, every vCPU drops it, no TLB flush on v6.18);
3. `kvm_set_memslot:delete`: kvm_delete_memslot removes the slot; the ioctl returns.
   For a move (`task.hpa` is the destination GPA), `kvm_set_memslot:move` instead:
   kvm_move_memslot activates the slot at its new GPA, backed by the same host page, in place of
   the invalid one; the old GPA has no memslot from then on; kvm_commit_memory_region ->
   kvm_arch_commit_memory_region flushes nothing for a move (kvm_mmu_slot_apply_flags acts on
   dirty logging only). The ioctl returns. (v5.7/v5.8: __kvm_set_memory_region ->
   kvm_set_memslot does the same: the INVALID flag, install_new_memslots,
   kvm_arch_flush_shadow_memslot, update_memslots with the new base_gfn, install_new_memslots.)

After a delete, the host thread frees the memory (from then on no guest access may reach the old
page: host-isolation) and creates the slot again on new memory (KVM_MR_CREATE, which flushes
nothing: it maps nothing). The frame's faults retry until then, in the model: a deleted slot's
fault really exits to userspace (KVM_EXIT_MMIO), which here waits for the new slot as well.
A fault on a GPA with no memslot at all (a move's destination before it, its source after) is
MMIO (`kvm_handle_noslot_fault`): it installs nothing and the access completes in userspace.
"""

from __future__ import annotations

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.state import HostTask, Vcpu


class Memslots:
    """kvm_main.c / x86.c: memslot deletion and move, as far as they change what the TLBs may
    hold."""

    def kvm_set_memslot(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_set_memslot @ v6.18, KVM_MR_DELETE: kvm_invalidate_memslot marks the
        slot invalid (faults on it retry from now on); the swap comes next."""
        self.kvm_invalidate_memslot(k, task.gpa)
        task.goto("kvm_set_memslot:swap")

    def kvm_invalidate_memslot(self, k: Step, gpa: int) -> None:
        """kvm_main.c:kvm_invalidate_memslot @ v6.18: the invalid copy of the slot
        (KVM_MEMSLOT_INVALID) that kvm_swap_active_memslots installs."""
        k.kvm.slot_invalid |= 1 << k.config.gpa_index(gpa)
        k.note(f"kvm_invalidate_memslot({gpa:#x})", "KVM_MEMSLOT_INVALID: faults on it retry")

    def kvm_set_memslot_swap(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_swap_active_memslots @ v6.18 (enabled once no fault that read the old
        slot is in flight: synchronize_srcu), then x86.c:kvm_arch_flush_shadow_memslot."""
        k.note("kvm_swap_active_memslots", "synchronize_srcu: no fault holds the old slot")
        then = "kvm_set_memslot:move" if task.hpa >= 0 else "kvm_set_memslot:delete"
        task.call("kvm_arch_flush_shadow_memslot", then)

    def kvm_arch_flush_shadow_memslot(self, k: Step, task: HostTask) -> None:
        """x86.c:kvm_arch_flush_shadow_memslot @ v6.18 with KVM_X86_QUIRK_SLOT_ZAP_ALL (the
        default), and v5.x through kvm_page_track_flush_slot: kvm_mmu_zap_all_fast."""
        task.goto("kvm_mmu_zap_all_fast")

    def kvm_set_memslot_delete(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_delete_memslot @ v6.18: the slot is gone (it stays invalid in the
        model until userspace creates it again); the ioctl returns."""
        k.note(f"kvm_delete_memslot({task.gpa:#x})")
        task.return_()

    def kvm_set_memslot_move(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_move_memslot @ v6.18 (v5.x: update_memslots with the new base_gfn,
        then install_new_memslots): the slot, moved to `task.hpa` (the destination GPA) with the
        same userspace address, hence the same host page, replaces the invalid one; the old GPA
        has no memslot from now on (a fault there is MMIO). Then kvm_commit_memory_region: for
        a move, x86.c:kvm_arch_commit_memory_region only applies dirty-logging flags
        (kvm_mmu_slot_apply_flags), and flushes nothing. The ioctl returns."""
        src, dst = k.config.gpa_index(task.gpa), k.config.gpa_index(task.hpa)
        page = k.kvm.backing[src]
        k.kvm.set_backing(dst, page)
        k.kvm.set_backing(src, -1)
        k.kvm.slot_invalid &= ~(1 << src)
        k.kvm.slot_absent = k.kvm.slot_absent & ~(1 << dst) | 1 << src
        k.note(
            f"kvm_move_memslot({task.gpa:#x} -> {task.hpa:#x})",
            f"host page {page:#x} now at GPA {task.hpa:#x}; {task.gpa:#x} has no memslot",
        )
        task.return_()

    def kvm_create_memslot(self, k: Step, gpa: int) -> None:
        """kvm_main.c:kvm_set_memslot @ v6.18, KVM_MR_CREATE: a new slot for the frame on new
        memory; nothing is mapped, so nothing is flushed (kvm_arch_commit_memory_region)."""
        k.kvm.slot_invalid &= ~(1 << k.config.gpa_index(gpa))
        k.note(f"kvm_set_memslot({gpa:#x}, KVM_MR_CREATE)", "on new memory")

    def kvm_faultin_memslot_invalid(self, k: Step, gpa: int) -> bool:
        """mmu.c:kvm_faultin_pfn @ v6.18: a fault on a slot being deleted (KVM_MEMSLOT_INVALID)
        returns RET_PF_RETRY."""
        if not k.kvm.slot_invalid >> k.config.gpa_index(gpa) & 1:
            return False
        k.note(f"kvm_faultin_pfn({gpa:#x}): memslot invalid, RET_PF_RETRY")
        return True

    def kvm_handle_noslot_fault(self, k: Step, vcpu: Vcpu, gpa: int) -> bool:
        """mmu.c:kvm_faultin_pfn -> kvm_handle_noslot_fault @ v6.18 (v5.x: __gfn_to_pfn_memslot
        gives KVM_PFN_NOSLOT, handle_abnormal_pfn): no memslot covers the GPA, so the access is
        MMIO: KVM emulates it (RET_PF_EMULATE) and exits to userspace (KVM_EXIT_MMIO), which
        completes it; no host page is mapped. (The MMIO SPTE KVM may cache is not a translation
        a TLB holds: it is not modelled.) Returns whether the GPA has no memslot."""
        if not k.kvm.slot_absent >> k.config.gpa_index(gpa) & 1:
            return False
        vcpu.mmio_exit = gpa
        k.note(f"kvm_faultin_pfn({gpa:#x}): no memslot", "MMIO: KVM_EXIT_MMIO to userspace")
        return True


__all__ = ["Memslots"]
