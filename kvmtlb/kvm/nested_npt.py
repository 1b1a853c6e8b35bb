"""Nested NPT: KVM on an NPT L0 running an L2 whose vmcb12 enables nested paging (L1's NPT12).

Ports the nested-NPT half of arch/x86/kvm/svm/nested.c and the shadow NPT MMU of mmu/mmu.c and
paging_tmpl.h (PTTYPE 64, guest_mmu) @ v6.18 (`NestedNpt`), and svm/nested.c @ v5.8 / v5.7
(`NestedNpt58`, read at the stored copies of enter_svm_guest_mode and nested_svm_vmexit before
the v5.10 rework):

- nested VMRUN (nested_vmcb02_prepare_control -> nested_svm_init_mmu_context): vcpu->arch.mmu
  becomes guest_mmu, whose roots are shadow NPT02 tables built from NPT12
  (kvm_init_shadow_npt_mmu -> kvm_mmu_new_pgd of vmcb12's nCR3); L2's CR3 is vmcb12's
  (nested_svm_load_cr3 with nested NPT does not touch the MMU); vmcb02's nCR3 is NPT02's root
  (svm_load_mmu_pgd); L2 runs on the vCPU's ASID, as L1 does (kvm/nested_svm.py), and
  nested_svm_transition_tlb_flush asks for an MMU sync and a flush of that ASID on every
  VMRUN and #VMEXIT, whatever vmcb12's TLB_CONTROL says;
- #VMEXIT (nested_svm_vmexit -> nested_svm_uninit_mmu_context): root_mmu again (NPT01), the
  guest_mmu root kept for the next VMRUN;
- NPT02 faults (kvm_mmu_page_fault on guest_mmu -> FNAME(page_fault) of the 64-bit walker
  over NPT12): a missing or denying NPT12 entry is reflected to L1 as a #NPF
  (nested_svm_inject_npf_exit, a nested #VMEXIT); else the SPTE maps the L2 GPA to the host
  page of the L1 GPA, with NPT12's rights cut by the memslot's;
- L1's stores to NPT12: the NPT12 table is write-tracked while its shadow page is synced, so a
  store exits (a #NPF on NPT01) and KVM unsyncs the page (mmu_try_to_unsync_pages); an unsync
  page's SPTEs may be stale until a sync (KVM_REQ_MMU_SYNC -> kvm_mmu_sync_roots);
- the host's zap of an L1 GPA reaches the NPT02 SPTEs that map it (the shadow MMU's rmap:
  kvm_unmap_gfn_range), and kvm_flush_remote_tlbs flushes the vCPU's ASID, L2's too.

vmcb12's TLB_CONTROL is honoured by no version: KVM copies it into its vmcb12 cache and flushes
the shared ASID on every VMRUN anyway (v6.18 accepts every encoding: the consistency check of
174a921b6975, v5.16, which refused FLUSH_ASID, was reverted in January 2024). The same holds for
L1's flush duty after editing NPT12: whether L1 flushes or not, the nested VMRUN syncs NPT02 and
flushes, so the model's verdicts do not depend on TLB_CONTROL.

v5.8 and v5.7 (`NestedNpt58`): enter_svm_guest_mode calls nested_svm_init_mmu_context, then
kvm_mmu_reset_context (every root of both MMUs unloaded: the next entry loads the NPT02 root,
which syncs it, and flushes) and svm_flush_tlb; nested_svm_vmexit calls
nested_svm_uninit_mmu_context, kvm_mmu_reset_context and kvm_mmu_load.

Abstracted as for nested EPT (kvm/nested_ept.py): one NPT12 (vmcb12's nCR3 never changes), so
guest_mmu has one root and no cached ones; NPT02's upper levels are static; the NPT02 fault is
one atomic step; the #NPF KVM reflects to L1 ends L2's access; the host's dirty logging, remaps
and fast zaps do not reach NPT02 (the scenario checks forbid them). The Kvm.ept02_unsync bits
serve NPT02 (a scenario has one nested TDP table: [ept12] or [npt12]).
"""

from __future__ import annotations

from kvmtlb.hw.paging import E_W, make_npt, pte_addr
from kvmtlb.hw.svm import SvmExitEvent
from kvmtlb.hw.walk import _npt_rights
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.mmu import rights_text
from kvmtlb.kvm.requests import KVM_REQ_LOAD_MMU_PGD, kvm_make_request
from kvmtlb.kvm.state import Vcpu

# L1's store to a write-tracked NPT12 (frame (L2 GPA)): an EXIT_NESTED operation of its own
# (kvm/nested_vmx.py numbers the others)
NESTED_NPT12_WRITE = 20


class NestedNpt:
    """The nested-NPT parts of svm/nested.c and mmu.c @ v6.18."""

    # -- NPT12 and NPT02 entries --------------------------------------------------------------
    def npt12_entry(self, k: Step, l2gpa: int) -> int:
        """L1's NPT12 leaf for `l2gpa` (KVM reads it from L1's memory)."""
        cfg = k.config
        return int(k.machine.memory.values[cfg.layout.slot(cfg.npt12_root, l2gpa)])

    def npt02_slot(self, k: Step, l2gpa: int) -> int:
        return k.config.layout.slot(k.config.npt02_root, l2gpa)

    def npt02_spte(self, k: Step, l2gpa: int) -> int:
        return int(k.machine.memory.values[self.npt02_slot(k, l2gpa)])

    def set_npt02_spte(self, k: Step, l2gpa: int, value: int, why: str) -> None:
        shown = f"{pte_addr(value):#x} ({rights_text(_npt_rights(value))})" if value else "0"
        k.write_slot(self.npt02_slot(k, l2gpa), value, f"{why}: NPT02[{l2gpa:#x}] = {shown}")

    def npt02_sp_unsync(self, k: Step, l2gpa: int) -> bool:
        """Whether the last-level NPT02 page shadowing `l2gpa`'s NPT12 table is unsync (L1's
        stores to that table do not exit)."""
        return bool(k.kvm.ept02_unsync >> k.config.ept02_region(l2gpa) & 1)

    def nested_npt_active(self, k: Step, vcpu: Vcpu) -> bool:
        """vcpu->arch.mmu is guest_mmu: L2 runs (or is being entered) with nested NPT."""
        return k.config.nested_npt and vcpu.guest_mode

    # -- switching MMUs (svm/nested.c) ----------------------------------------------------------
    def nested_svm_init_mmu_context(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_svm_init_mmu_context @ v6.18: vcpu->arch.mmu = &guest_mmu, then
        kvm_init_shadow_npt_mmu with vmcb12's nCR3."""
        vcpu.root_valid, vcpu.parked_root_valid = vcpu.parked_root_valid, vcpu.root_valid
        k.note(
            "nested_svm_init_mmu_context: vcpu->arch.mmu = &guest_mmu",
            f"NPT02 root {'valid' if vcpu.root_valid else 'invalid'}",
        )
        self.kvm_init_shadow_npt_mmu(k, vcpu)

    def kvm_init_shadow_npt_mmu(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_init_shadow_npt_mmu -> kvm_mmu_new_pgd(nested_cr3) @ v6.18: a fast switch to
        the guest_mmu root of that nCR3 (KVM_REQ_LOAD_MMU_PGD), no sync and no flush of its own
        (the transition flush asked for both); with no usable root, kvm_mmu_reload loads one."""
        if vcpu.root_valid:
            kvm_make_request(vcpu, KVM_REQ_LOAD_MMU_PGD)
            k.note("kvm_mmu_new_pgd(nCR3 of vmcb12): the NPT02 root is usable")
        else:
            k.note("kvm_mmu_new_pgd(nCR3 of vmcb12): no usable NPT02 root", "kvm_mmu_load")

    def nested_svm_uninit_mmu_context(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_svm_uninit_mmu_context @ v6.18: vcpu->arch.mmu = &root_mmu (the
        guest_mmu root stays, for the next VMRUN); then nested_svm_load_cr3(L1's CR3) ->
        kvm_mmu_new_pgd on root_mmu, whose direct NPT01 root is usable whatever the CR3."""
        vcpu.root_valid, vcpu.parked_root_valid = vcpu.parked_root_valid, vcpu.root_valid
        k.note("nested_svm_uninit_mmu_context: vcpu->arch.mmu = &root_mmu")
        if vcpu.root_valid:
            kvm_make_request(vcpu, KVM_REQ_LOAD_MMU_PGD)

    def nested_npt_set_guest_cr3(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """nested.c:nested_svm_load_cr3 with NPT in L0 (and svm_load_mmu_pgd): the VMCB's
        guest CR3 is the guest's own, L2's from vmcb12 on VMRUN, L1's on #VMEXIT; no MMU
        switch (nested NPT) or a direct root's (NPT01)."""
        vcpu.cr3 = cr3
        self.svm_set_guest_cr3(k, vcpu, cr3)  # type: ignore[attr-defined]

    # -- hooks of the L1 MMU that see guest_mmu ---------------------------------------------------
    def kvm_mmu_load_pgd(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.h:kvm_mmu_load_pgd -> svm_load_mmu_pgd @ v6.18: vmcb02's nCR3 is NPT02's root."""
        if not self.nested_npt_active(k, vcpu):
            super().kvm_mmu_load_pgd(k, vcpu)  # type: ignore[misc]
            return
        assert vcpu.vmcb is not None
        hpa = k.config.npt02_root
        if vcpu.vmcb.ncr3 != hpa:
            vcpu.vmcb = vcpu.vmcb._replace(ncr3=hpa)
            k.note(f"svm_load_mmu_pgd: vmcb->control.nested_cr3 = NPT02 {hpa:#x}")

    def kvm_mmu_load(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_load @ v6.18 on guest_mmu: mmu_alloc_shadow_roots (the NPT02 root of
        vmcb12's nCR3: KVM's hash finds the shadow page again, with its unsync children),
        kvm_mmu_sync_roots, kvm_mmu_load_pgd, then flush_tlb_current (the vCPU's ASID)."""
        if not self.nested_npt_active(k, vcpu):
            super().kvm_mmu_load(k, vcpu)  # type: ignore[misc]
            return
        vcpu.root_valid = True
        k.note("kvm_mmu_load: mmu_alloc_shadow_roots", "the NPT02 root of vmcb12's nCR3")
        self.kvm_mmu_sync_roots(k, vcpu)
        self.kvm_mmu_load_pgd(k, vcpu)
        self.kvm_mmu_load_flush(k, vcpu)  # type: ignore[attr-defined]

    def kvm_mmu_sync_roots(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_sync_roots @ v6.18 on guest_mmu: mmu_sync_children of the NPT02 root:
        each unsync page is synced (FNAME(sync_spte) per SPTE), and a change is flushed
        (kvm_mmu_sync_flush)."""
        if not self.nested_npt_active(k, vcpu):
            super().kvm_mmu_sync_roots(k, vcpu)  # type: ignore[misc]
            return
        if not vcpu.root_valid or not k.kvm.ept02_unsync:
            return
        regions = sorted({g >> 21 for g in k.config.l2_gpas})
        flush = False
        for bit, region in enumerate(regions):
            if not k.kvm.ept02_unsync >> bit & 1:
                continue
            k.kvm.ept02_unsync &= ~(1 << bit)
            k.note(f"mmu_sync_children: sync the NPT02 page {bit}", "NPT12 write-protected again")
            for l2gpa in k.config.l2_gpas:
                if l2gpa >> 21 == region:
                    flush |= self.npt_sync_spte(k, l2gpa)
        if flush:
            self.kvm_mmu_sync_flush(k, vcpu)  # type: ignore[attr-defined]

    def npt_sync_spte(self, k: Step, l2gpa: int) -> bool:
        """paging_tmpl.h:FNAME(sync_spte) @ v6.18 (64-bit walker over NPT12): drop the SPTE if
        the NPT12 entry is gone or names another L1 GPA, else take its rights. Returns whether
        the SPTE changed."""
        spte = self.npt02_spte(k, l2gpa)
        if not _npt_rights(spte):
            return False
        e12 = self.npt12_entry(k, l2gpa)
        hpa = pte_addr(spte)
        l1gpa = k.config.frame_of_page(hpa)
        if not _npt_rights(e12) or pte_addr(e12) != l1gpa:
            self.set_npt02_spte(k, l2gpa, 0, "FNAME(sync_spte): NPT12 entry changed, drop")
            return True
        rights = _npt_rights(e12) & self.host_rights(k, l1gpa)  # type: ignore[attr-defined]
        new = make_npt(hpa, rights)
        if new == spte:
            return False
        self.set_npt02_spte(k, l2gpa, new, "FNAME(sync_spte): new access rights")
        return True

    # -- L1's stores to NPT12 ----------------------------------------------------------------------
    def npt12_write_fault(self, k: Step, vcpu: Vcpu, l2gpa: int) -> None:
        """mmu.c:kvm_tdp_page_fault on NPT01 for L1's write to its write-tracked NPT12 table ->
        make_spte -> mmu_try_to_unsync_pages @ v6.18: the last-level NPT02 page shadowing it
        goes unsync, and the NPT01 SPTE becomes writable; L1 retries the store."""
        bit = k.config.ept02_region(l2gpa)
        k.kvm.ept02_unsync |= 1 << bit
        k.note(
            f"mmu_try_to_unsync_pages: NPT02 page {bit} (NPT12 of {l2gpa:#x}) unsync",
            "L1's stores to that NPT12 table no longer exit",
        )

    def handle_nested_exit(self, k: Step, vcpu: Vcpu, code: int, a: int, b: int, c: int) -> None:
        """svm.c:npf_interception for L1's store to NPT12 (NESTED_NPT12_WRITE); the other nested
        exits as kvm/nested_vmx.py dispatches them."""
        if code != NESTED_NPT12_WRITE:
            super().handle_nested_exit(k, vcpu, code, a, b, c)  # type: ignore[misc]
            return
        k.note(f"vcpu{vcpu.id}: #NPF exit handler (L1's store to NPT12)")
        self.npt12_write_fault(k, vcpu, a)

    # -- NPT02 faults ------------------------------------------------------------------------------
    def kvm_mmu_page_fault(self, k: Step, vcpu: Vcpu, gpa: int, write: bool) -> None:
        """mmu.c:kvm_mmu_page_fault -> paging_tmpl.h:FNAME(page_fault) @ v6.18 while L2 runs
        with nested NPT: walk NPT12 for the L2 GPA; a missing or denying entry goes to L1 as a
        #NPF (nested_svm_inject_npf_exit, a nested #VMEXIT); else map the L2 GPA to the host
        page of the L1 GPA (kvm_faultin_pfn, FNAME(fetch))."""
        if not self.nested_npt_active(k, vcpu):
            super().kvm_mmu_page_fault(k, vcpu, gpa, write)  # type: ignore[misc]
            return
        e12 = self.npt12_entry(k, gpa) if gpa in k.config.l2_gpas else 0
        r12 = _npt_rights(e12)
        if not r12 or (write and not r12 & E_W):
            vcpu.pf_injected = gpa
            k.note(
                f"FNAME(walk_addr) of NPT12 for {gpa:#x}: {'denied' if r12 else 'not present'}",
                "nested_svm_inject_npf_exit: a #NPF for L1, which ends L2's access",
            )
            return
        l1gpa = pte_addr(e12)
        spte = self.npt02_spte(k, gpa)
        rights = _npt_rights(spte)
        if rights and (not write or rights & E_W):
            k.note(f"FNAME(page_fault)({gpa:#x}): spurious, the NPT02 SPTE allows it")
            return
        if self.mmu_invalidate_retry_gfn(k, k.kvm.mmu_invalidate_seq):  # type: ignore[attr-defined]
            k.note(f"FNAME(page_fault)({gpa:#x}): mmu_invalidate_retry_gfn, retry")
            return
        hpa = self.gfn_to_pfn(k, l1gpa)  # type: ignore[attr-defined]
        cut = r12 & self.host_rights(k, l1gpa)  # type: ignore[attr-defined]
        value = self.make_spte(k, l1gpa, hpa, cut)  # type: ignore[attr-defined]
        self.set_npt02_spte(k, gpa, value, f"FNAME(fetch) (NPT12: L1 GPA {l1gpa:#x})")

    # -- the host's zap ----------------------------------------------------------------------------
    def kvm_unmap_gfn_range(self, k: Step, gpa: int) -> bool:
        """mmu.c:kvm_unmap_gfn_range @ v6.18: besides the TDP MMU's SPTE, the shadow MMU's rmap
        of the L1 GPA reaches every NPT02 SPTE mapping it (kvm_zap_rmap)."""
        zapped: bool = super().kvm_unmap_gfn_range(k, gpa)  # type: ignore[misc]
        if not k.config.nested_npt:
            return zapped
        return self.npt02_zap_rmap(k, gpa) or zapped

    def npt02_zap_rmap(self, k: Step, gpa: int) -> bool:
        """mmu.c:kvm_handle_gfn_range -> kvm_zap_rmap @ v6.18 over the shadow MMU's rmap of L1
        GPA `gpa`: every NPT02 SPTE that maps its host page. Returns whether one was present."""
        zapped = False
        for l2gpa in k.config.l2_gpas:
            spte = self.npt02_spte(k, l2gpa)
            if _npt_rights(spte) and k.config.frame_of_page(pte_addr(spte)) == gpa:
                self.set_npt02_spte(k, l2gpa, 0, f"kvm_zap_rmap({gpa:#x})")
                zapped = True
        return zapped

    # -- L1's store, as the vCPU thread runs it ----------------------------------------------------
    def npt12_store_exits(self, k: Step, vcpu: Vcpu, l2gpa: int) -> bool:
        """Whether L1's store to its NPT12 leaf of `l2gpa` exits (the table is write-protected
        in NPT01 while its NPT02 page is synced): the #VMEXIT on the vCPU's processor."""
        if self.npt02_sp_unsync(k, l2gpa):
            return False
        k.hw(vcpu.cpu, SvmExitEvent("#NPF"), "L1's store to a write-protected NPT12")
        return True


class NestedNpt58(NestedNpt):
    """svm/nested.c @ v5.8 (v5.7 alike): every nested transition resets the MMU context."""

    def kvm_init_shadow_npt_mmu(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_svm_init_mmu_context @ v5.8: kvm_init_shadow_mmu sets up guest_mmu
        (get_guest_pgd = nested_svm_get_tdp_cr3); enter_svm_guest_mode's kvm_mmu_reset_context
        then unloads every root of both MMUs (kvm_mmu_unload), so the next entry's
        kvm_mmu_load takes the NPT02 root, syncs it and flushes the ASID."""
        vcpu.root_valid = vcpu.parked_root_valid = False
        k.note(
            "kvm_mmu_reset_context -> kvm_mmu_unload",
            "root_mmu's and guest_mmu's roots freed: kvm_mmu_load loads, syncs and flushes",
        )

    def nested_svm_uninit_mmu_context(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_svm_vmexit @ v5.8: nested_svm_uninit_mmu_context (root_mmu again),
        kvm_mmu_reset_context (every root freed), kvm_mmu_load (the NPT01 root, and a flush of
        the ASID; here at the next entry: kvm_mmu_reload)."""
        vcpu.root_valid = vcpu.parked_root_valid = False
        k.note(
            "nested_svm_uninit_mmu_context; kvm_mmu_reset_context -> kvm_mmu_unload",
            "kvm_mmu_load: the NPT01 root, flushed",
        )


__all__ = ["NESTED_NPT12_WRITE", "NestedNpt", "NestedNpt58"]
