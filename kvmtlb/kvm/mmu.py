"""KVM's TDP MMU, as far as the flush machinery needs it: faults, zaps, write protection.

Ports arch/x86/kvm/mmu/mmu.c and tdp_mmu.c @ v6.18 (one 4 KiB SPTE per guest frame: the EPT or
NPT leaf of the frame in the hardware model):

- kvm_mmu_page_fault: fast_page_fault first (a write to a frame write-protected for dirty logging:
  mark it dirty and restore write permission in place, with no flush: the stale read-only entry
  can only cause another fault), a spurious fault returns, else the slow path in two steps around
  its race window: kvm_faultin_pfn snapshots mmu_invalidate_seq and looks up the host page;
  `kvm_tdp_page_fault_map` re-checks the sequence (mmu_invalidate_retry_gfn) before installing.
- kvm_unmap_gfn_range (zap), kvm_tdp_mmu_write_protect (dirty logging), and the SPTE install of a
  migrated page: stores into the leaf; the caller flushes.

Host pages: `Kvm.backing` is what hva_to_pfn returns for each guest frame; a frame whose page the
host MM took away gets a fresh page (never reused within a run).
"""

from __future__ import annotations

from kvmtlb.hw.paging import E_ALL, E_W, ept_rights, make_ept, make_npt, pte_addr
from kvmtlb.hw.walk import _npt_rights
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.state import HostTask, Vcpu


class Mmu:
    """arch/x86/kvm/mmu: the TDP fault path and the SPTE changes the host's operations make."""

    # -- SPTEs ----------------------------------------------------------------------------------
    def spte_slot(self, k: Step, gpa: int) -> int:
        return k.config.layout.slot(k.config.tdp_root, gpa)

    def make_spte(self, k: Step, gpa: int, hpa: int, rights: int) -> int:
        """mmu/spte.c:make_spte @ v6.18 (mmu.c:set_spte @ v5.7/v5.8), for a 4 KiB leaf: an EPT or
        NPT entry. A writable SPTE in a slot with dirty logging on marks the page dirty at once
        (mark_page_dirty_in_slot; kvm_vcpu_mark_page_dirty in v5.x): writes through it will not
        fault, so they must be logged now."""
        if rights & E_W and self.kvm_slot_dirty_track_enabled(k, gpa):
            self.mark_page_dirty_in_slot(k, gpa)
        return make_ept(hpa, rights) if k.config.vmx else make_npt(hpa, rights)

    def kvm_slot_dirty_track_enabled(self, k: Step, gpa: int) -> bool:
        """kvm_host.h:kvm_slot_dirty_track_enabled @ v6.18: the frame's memslot logs dirty pages."""
        return bool(k.kvm.log_dirty >> k.config.gpa_index(gpa) & 1)

    def mark_page_dirty_in_slot(self, k: Step, gpa: int) -> None:
        """kvm_main.c:mark_page_dirty_in_slot @ v6.18: set the frame's bit in the dirty bitmap."""
        k.kvm.set_dirty(k.config.gpa_index(gpa), True)

    def spte(self, k: Step, gpa: int) -> tuple[int, int]:
        """The frame's SPTE as (host page or -1, rights)."""
        value = k.machine.memory.values[self.spte_slot(k, gpa)]
        rights = ept_rights(value) if k.config.vmx else _npt_rights(value)
        if not rights:
            return (-1, 0)
        return (pte_addr(value), rights)

    def set_spte(self, k: Step, gpa: int, hpa: int, rights: int, why: str) -> None:
        value = self.make_spte(k, gpa, hpa, rights) if hpa >= 0 else 0
        what = f"SPTE[{gpa:#x}] = " + (f"{hpa:#x} ({_rights(rights)})" if hpa >= 0 else "0")
        k.write_slot(self.spte_slot(k, gpa), value, f"{why}: {what}")

    def host_rights(self, k: Step, gpa: int) -> int:
        """What the memslot allows (the rights of the frame's mapping at start)."""
        return k.config.rights[k.config.gpa_index(gpa)]

    # -- host pages -----------------------------------------------------------------------------
    def gfn_to_pfn(self, k: Step, gpa: int) -> int:
        """kvm_main.c:__gfn_to_pfn / hva_to_pfn @ v6.18: the host page backing the frame; the host
        MM faults in a fresh page if it took the old one away."""
        i = k.config.gpa_index(gpa)
        hpa = k.kvm.backing[i]
        if hpa < 0:
            n = k.kvm.bump_fresh(i)
            hpa = k.config.fresh_page(gpa, n)
            k.kvm.set_backing(i, hpa)
            k.note(f"hva_to_pfn({gpa:#x}): fresh host page {hpa:#x}")
        return hpa

    # -- the fault path ---------------------------------------------------------------------------
    def kvm_mmu_page_fault(self, k: Step, vcpu: Vcpu, gpa: int, write: bool) -> None:
        """mmu.c:kvm_mmu_page_fault / kvm_tdp_page_fault @ v6.18, up to kvm_faultin_pfn."""
        hpa, rights = self.spte(k, gpa)
        if hpa >= 0 and (rights & E_W or not write):
            k.note(f"kvm_tdp_page_fault({gpa:#x}): spurious, SPTE already allows it")
            return
        if self.fast_page_fault(k, vcpu, gpa, write, hpa, rights):
            return
        mmu_seq = k.kvm.mmu_invalidate_seq
        pfn = self.gfn_to_pfn(k, gpa)
        k.note(f"kvm_faultin_pfn({gpa:#x}) = {pfn:#x}", f"mmu_seq = {mmu_seq}")
        vcpu.frame = (gpa, int(write), mmu_seq, pfn)
        vcpu.pc = "kvm_tdp_page_fault:map"

    def fast_page_fault(
        self, k: Step, vcpu: Vcpu, gpa: int, write: bool, hpa: int, rights: int
    ) -> bool:
        """mmu.c:fast_page_fault @ v6.18: a write to a present SPTE that is write-protected only
        for dirty logging is fixed in place: mark_page_dirty_in_slot, then restore write
        permission; no TLB flush (a stale read-only entry only causes another fault)."""
        if not (write and hpa >= 0 and self.host_rights(k, gpa) & E_W):
            return False
        self.mark_page_dirty_in_slot(k, gpa)
        self.set_spte(k, gpa, hpa, rights | E_W, "fast_page_fault: mark dirty, restore W")
        return True

    def kvm_tdp_page_fault_map(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_tdp_page_fault @ v6.18 under mmu_lock: is_page_fault_stale
        (mmu_invalidate_retry_gfn) makes the vCPU retry; else the SPTE is installed."""
        gpa, _write, mmu_seq, pfn = vcpu.frame
        vcpu.frame = ()
        vcpu.pc = "vcpu_enter_guest"
        if self.mmu_invalidate_retry_gfn(k, mmu_seq):  # type: ignore[attr-defined]
            k.note(f"kvm_tdp_page_fault({gpa:#x}): mmu_invalidate_retry_gfn, retry")
            return
        if self.spte(k, gpa)[0] >= 0:
            k.note(f"kvm_tdp_page_fault({gpa:#x}): another vCPU mapped it")
            return
        self.set_spte(k, gpa, pfn, self.host_rights(k, gpa), "kvm_tdp_mmu_map")

    # -- the host's changes ----------------------------------------------------------------------
    def kvm_unmap_gfn_range(self, k: Step, gpa: int) -> None:
        """mmu.c:kvm_unmap_gfn_range @ v6.18: zap the SPTE (the caller flushes remote TLBs); with
        shadow paging, every SPTE the rmap has for the frame (kvm_zap_rmap)."""
        if not k.config.tdp:
            self.kvm_zap_rmap(k, gpa)  # type: ignore[attr-defined]
            return
        self.set_spte(k, gpa, -1, 0, "kvm_unmap_gfn_range")

    def kvm_tdp_mmu_write_protect(self, k: Step, gpa: int) -> bool:
        """tdp_mmu.c:kvm_tdp_mmu_clear_dirty_slot / write-protect for dirty logging @ v6.18: dirty
        logging is on for the frame's memslot from now on; clear the frame's dirty bit and its
        SPTE's write permission. Returns whether the caller must flush remote TLBs
        (kvm_flush_remote_tlbs_memslot), which it must whenever write permission may be
        cached."""
        k.kvm.log_dirty |= 1 << k.config.gpa_index(gpa)
        k.kvm.set_dirty(k.config.gpa_index(gpa), False)
        if not k.config.tdp:
            self.rmap_write_protect(k, gpa)  # type: ignore[attr-defined]
            return True
        hpa, rights = self.spte(k, gpa)
        if hpa >= 0:
            self.set_spte(k, gpa, hpa, rights & ~E_W, "write-protect for dirty logging")
        return True

    # -- host-task steps (KvmPolicy.HOST_STEPS) ------------------------------------------------
    def kvm_mmu_slot_remove_write_access(self, k: Step, task: HostTask) -> None:
        """x86.c:kvm_mmu_slot_apply_flags -> mmu.c:kvm_mmu_slot_remove_write_access, then
        kvm_flush_remote_tlbs_memslot @ v6.18 (dirty logging switched on, or the dirty log
        cleared): write-protect the frame, and flush if write permission may be cached."""
        if self.kvm_tdp_mmu_write_protect(k, task.gpa):
            task.goto("kvm_flush_remote_tlbs")
        else:
            k.note("no remote TLB flush after write protection")
            task.return_()

    def kvm_set_spte_gfn(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_set_spte_gfn @ v5.7/v5.8 (the change_pte notifier): the SPTE of the migrated
        page. (v6.18 dropped change_pte: the next fault maps the new page, to the same effect.)"""
        self.kvm_tdp_mmu_map_page(k, task.gpa, task.hpa)
        task.return_()

    def kvm_tdp_mmu_map_page(self, k: Step, gpa: int, hpa: int) -> None:
        """The SPTE of a migrated page: the new host page, with the memslot's rights. With shadow
        paging (mmu.c:kvm_set_pte_rmapp @ v5.x) the frame's SPTEs are dropped: the next fault
        maps the new page with the guest PTE's rights."""
        if not k.config.tdp:
            self.kvm_zap_rmap(k, gpa)  # type: ignore[attr-defined]
            return
        self.set_spte(k, gpa, hpa, self.host_rights(k, gpa), "map the migrated page")


def _rights(r: int) -> str:
    return "".join(c if r & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4))) or "none"


__all__ = ["E_ALL", "Mmu"]
