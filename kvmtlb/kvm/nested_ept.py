"""Nested EPT: KVM on an EPT L0 running an L2 whose vmcs12 enables EPT (L1's EPT12).

Ports the nested-EPT half of arch/x86/kvm/vmx/nested.c and the shadow EPT MMU of mmu/mmu.c and
paging_tmpl.h (PTTYPE_EPT) @ v6.18 (`NestedEpt`), with v5.7's differences (`NestedEpt57`); v5.8
behaves as v6.18 for everything here (read at v5.8.18):

- nested VM-Enter (prepare_vmcs02 -> nested_ept_init_mmu_context): vcpu->arch.mmu becomes
  guest_mmu, whose roots are shadow EPT02 tables built from EPT12 (kvm_init_shadow_ept_mmu ->
  kvm_mmu_new_pgd of vmcs12's EPTP); GUEST_CR3 is L2's CR3 (nested_vmx_load_cr3 with nested EPT
  does not touch the MMU); the EPTP of vmcs02 is EPT02's root (vmx_load_mmu_pgd);
- nested VM-Exit (load_vmcs12_host_state -> nested_ept_uninit_mmu_context): root_mmu again,
  nested_vmx_load_cr3(HOST_CR3) -> kvm_mmu_new_pgd on root_mmu, EPTP01;
- EPT02 faults (kvm_mmu_page_fault on guest_mmu -> FNAME(page_fault) of the EPT walker): walk
  EPT12; a missing or denying entry is reflected to L1 as an EPT violation
  (nested_ept_inject_page_fault); else the SPTE maps the L2 GPA to the host page of the L1 GPA
  (gfn_to_pfn), with EPT12's rights cut by the memslot's;
- L1's stores to EPT12: the EPT12 table is write-tracked while its shadow page is synced, so a
  store exits and KVM unsyncs the page (mmu_try_to_unsync_pages); the SPTEs of an unsync page
  may be stale until a sync (kvm_mmu_sync_roots from kvm_mmu_load or KVM_REQ_MMU_SYNC ->
  mmu_sync_children -> FNAME(sync_spte), and the flush of kvm_mmu_remote_flush_or_zap);
- INVEPT from L1 (handle_invept): single-context frees the guest_mmu roots whose EPTP matches
  (nested_ept_root_matches), all-context every guest_mmu root (kvm_mmu_free_roots); the next
  nested VM-Enter loads a root again (kvm_mmu_load: sync, then flush_tlb_current on EPTP02);
- the host's zap of an L1 GPA reaches the EPT02 SPTEs that map it (the rmap:
  kvm_unmap_gfn_range -> kvm_handle_gfn_range over the shadow MMU's rmaps besides the TDP MMU),
  and kvm_flush_remote_tlbs's INVEPT all-context (vmx_flush_tlb_all) flushes EPTP02 too.

Several EPT12 tables ([ept12.NAME]) give vmcs12 EPTPs of its own: L1 changes vmcs12's EPTP
(`vmresume ept=NAME`) or makes another vmcs12 current (`vmptrld`). guest_mmu then caches the
EPT02 root of each EPTP it ran L2 on (mmu->prev_roots: kvm_mmu_new_pgd's fast switch finds them
again, with no sync and no flush after v5.7), handle_invept's single-context frees only the roots
of the operand's EPTP (nested_ept_root_matches, ce8fe7b77bd8 "KVM: nVMX: Free only the affected
contexts when emulating INVEPT", v5.8), and handle_vmptrld's nested_release_vmcs12 frees every
guest_mmu root (v5.7, v5.8, v6.18 alike).

Abstracted: at most three EPT12 tables, so the root cache (the current root and three
prev_roots) never evicts one; EPT02's upper levels and its pages' existence are static (KVM
built them before the run: EPT12 is write-tracked from the start); an L1 store to EPT12 that
exits is the EPT01 violation of a write-protected table, which the model takes as a trap (L1's
tables are not in EPT01); the EPT02 fault is one atomic step (it retries while an invalidation
runs, but has no race window between kvm_faultin_pfn and the install, unlike the EPT01 fault);
the EPT violation KVM reflects to L1 ends L2's access (L1's handling of it is not modelled);
the host's dirty logging, remaps and fast zaps do not reach EPT02 (the scenario checks forbid
them); free_nested (VMXOFF) frees guest_mmu's roots, which the model leaves to the next
VMLAUNCH (its VMPTRLD of a fresh vmcs12 frees them: nested_release_vmcs12).
"""

from __future__ import annotations

from kvmtlb.hw.paging import E_W, ept_rights, make_ept, pte_addr
from kvmtlb.hw.vmx import Vmwrite, make_eptp
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.mmu import rights_text
from kvmtlb.kvm.requests import (
    KVM_REQ_LOAD_MMU_PGD,
    KVM_REQ_MMU_SYNC,
    KVM_REQ_TLB_FLUSH,
    kvm_make_request,
    request_names,
)
from kvmtlb.kvm.state import Vcpu

INVEPT_TYPE_NAMES = {1: "single-context", 2: "all-context"}


class NestedEpt:
    """The nested-EPT parts of vmx/nested.c and mmu/mmu.c @ v6.18 (and v5.8)."""

    # -- EPT12 and EPT02 entries --------------------------------------------------------------
    def ept12_entry(self, k: Step, l2gpa: int, t: int = 0) -> int:
        """L1's leaf for `l2gpa` in EPT12 table `t` (KVM reads it from L1's memory)."""
        cfg = k.config
        return int(k.machine.memory.values[cfg.layout.slot(self.ept12_hpa(k, t), l2gpa)])

    def ept12_hpa(self, k: Step, t: int) -> int:
        return (k.config.ept12_roots or (k.config.ept12_root,))[t]

    def ept02_hpa(self, k: Step, t: int) -> int:
        return (k.config.ept02_roots or (k.config.ept02_root,))[t]

    def ept02_slot(self, k: Step, l2gpa: int, t: int = 0) -> int:
        return k.config.layout.slot(self.ept02_hpa(k, t), l2gpa)

    def ept02_spte(self, k: Step, l2gpa: int, t: int = 0) -> int:
        return int(k.machine.memory.values[self.ept02_slot(k, l2gpa, t)])

    def set_ept02_spte(self, k: Step, l2gpa: int, value: int, why: str, t: int = 0) -> None:
        shown = f"{pte_addr(value):#x} ({rights_text(ept_rights(value))})" if value else "0"
        name = f"EPT02{_table(k, t)}"
        k.write_slot(self.ept02_slot(k, l2gpa, t), value, f"{why}: {name}[{l2gpa:#x}] = {shown}")

    def ept02_sp_unsync(self, k: Step, l2gpa: int, t: int = 0) -> bool:
        """Whether the last-level page of EPT02 root `t` shadowing `l2gpa`'s EPT12 table is
        unsync (L1's stores to that table do not exit)."""
        return bool(k.kvm.ept02_unsync >> k.config.ept02_region(l2gpa, t) & 1)

    def nested_ept_active(self, k: Step, vcpu: Vcpu) -> bool:
        """vcpu->arch.mmu is guest_mmu: L2 runs (or is being entered) with nested EPT."""
        return k.config.nested_ept and vcpu.guest_mode

    # -- switching MMUs (nested.c) ------------------------------------------------------------
    def nested_ept_init_mmu_context(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_ept_init_mmu_context @ v6.18: vcpu->arch.mmu = &guest_mmu, then
        kvm_init_shadow_ept_mmu with vmcs12's EPTP."""
        vcpu.root_valid, vcpu.parked_root_valid = vcpu.parked_root_valid, vcpu.root_valid
        k.note(
            "nested_ept_init_mmu_context: vcpu->arch.mmu = &guest_mmu",
            f"EPT02 root {'valid' if vcpu.root_valid else 'invalid'}",
        )
        self.kvm_init_shadow_ept_mmu(k, vcpu)

    def kvm_init_shadow_ept_mmu(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_init_shadow_ept_mmu -> kvm_mmu_new_pgd(vmcs12 EPTP) @ v6.18 (v5.8:
        __kvm_mmu_new_pgd(.., skip_tlb_flush = true, skip_mmu_sync = true)): a fast switch to
        the guest_mmu root of that EPTP (KVM_REQ_LOAD_MMU_PGD) with no sync and no flush; with
        no usable root, kvm_mmu_reload loads one before the entry."""
        if self.guest_mmu_fast_switch(k, vcpu):
            kvm_make_request(vcpu, KVM_REQ_LOAD_MMU_PGD)
            k.note(
                f"kvm_mmu_new_pgd(EPTP12{_table(k, vcpu.eptp12)}): the EPT02 root is usable",
                "no sync, no flush",
            )
        else:
            k.note(
                f"kvm_mmu_new_pgd(EPTP12{_table(k, vcpu.eptp12)}): no usable EPT02 root",
                "kvm_mmu_load will load one",
            )

    def guest_mmu_fast_switch(self, k: Step, vcpu: Vcpu) -> bool:
        """mmu.c:fast_pgd_switch on guest_mmu @ v6.18 (cached_root_find_and_keep_current /
        cached_root_find_without_current; v5.8's cached_root_available, v5.7's fast_cr3_switch
        alike with at most four EPTPs): the current root if it is of vmcs12's EPTP, else a
        cached root of that EPTP, swapped with the current one (which stays cached); with
        neither, the current root (if valid) is cached and the MMU has no root. Returns
        whether a usable root is current."""
        want = vcpu.eptp12
        if vcpu.root_valid and vcpu.ept02_cur == want:
            return True
        if vcpu.root_valid:
            vcpu.ept02_prev |= 1 << vcpu.ept02_cur
        hit = bool(vcpu.ept02_prev >> want & 1)
        vcpu.ept02_prev &= ~(1 << want)
        vcpu.ept02_cur = want
        vcpu.root_valid = hit
        if hit:
            k.note(f"fast_pgd_switch: the cached EPT02 root{_table(k, want)} becomes current")
        return hit

    def nested_ept_uninit_mmu_context(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_ept_uninit_mmu_context @ v6.18: vcpu->arch.mmu = &root_mmu (the
        guest_mmu root stays as it is, for the next nested VM-Enter), then the PGD switch of
        nested_vmx_load_cr3(HOST_CR3)."""
        vcpu.root_valid, vcpu.parked_root_valid = vcpu.parked_root_valid, vcpu.root_valid
        k.note("nested_ept_uninit_mmu_context: vcpu->arch.mmu = &root_mmu")
        self.nested_ept_l1_new_pgd(k, vcpu)

    def nested_ept_l1_new_pgd(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_vmx_load_cr3(HOST_CR3) -> kvm_mmu_new_pgd @ v6.18 on root_mmu (v5.8:
        skip_tlb_flush, and skip_mmu_sync with EPT): the direct EPT01 root is usable whatever
        the CR3 (KVM_REQ_LOAD_MMU_PGD), no sync and no flush."""
        if vcpu.root_valid:
            kvm_make_request(vcpu, KVM_REQ_LOAD_MMU_PGD)
            k.note("kvm_mmu_new_pgd(HOST_CR3): the EPT01 root is usable", "no sync, no flush")

    def nested_ept_set_guest_cr3(self, k: Step, vcpu: Vcpu, cr3: int, why: str) -> None:
        """vmx.c:vmx_load_mmu_pgd @ v6.18 with EPT: GUEST_CR3 = vcpu->arch.cr3 (L2's CR3 from
        vmcs12 on VM-Enter, HOST_CR3 on VM-Exit)."""
        assert vcpu.vmcs is not None
        if vcpu.vmcs.guest.cr3 != cr3:
            guest = vcpu.vmcs.guest._replace(cr3=cr3)
            k.hw(vcpu.cpu, Vmwrite("guest", guest), f"{why}: GUEST_CR3")

    # -- hooks of the L1 MMU that see guest_mmu ---------------------------------------------------
    def construct_eptp(self, k: Step, vcpu: Vcpu) -> int:
        """vmx.c:construct_eptp @ v6.18 for mmu->root.hpa: EPT02's root while guest_mmu is the
        current MMU."""
        if self.nested_ept_active(k, vcpu):
            return make_eptp(self.ept02_hpa(k, vcpu.ept02_cur))
        eptp: int = super().construct_eptp(k, vcpu)  # type: ignore[misc]
        return eptp

    def kvm_mmu_load_pgd(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.h:kvm_mmu_load_pgd -> vmx_load_mmu_pgd @ v6.18: vmcs02's EPT_POINTER is EPT02."""
        if not self.nested_ept_active(k, vcpu):
            super().kvm_mmu_load_pgd(k, vcpu)  # type: ignore[misc]
            return
        assert vcpu.vmcs is not None
        eptp = make_eptp(self.ept02_hpa(k, vcpu.ept02_cur))
        if vcpu.vmcs.eptp != eptp:
            k.hw(vcpu.cpu, Vmwrite("eptp", eptp), "vmx_load_mmu_pgd: EPT_POINTER = EPTP02")

    def kvm_mmu_load(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_load @ v6.18 on guest_mmu: mmu_alloc_shadow_roots (the EPT02 root of
        vmcs12's EPTP: KVM's hash finds the shadow page again, with its unsync children),
        kvm_mmu_sync_roots, kvm_mmu_load_pgd, then flush_tlb_current (INVEPT of EPTP02)."""
        if not self.nested_ept_active(k, vcpu):
            super().kvm_mmu_load(k, vcpu)  # type: ignore[misc]
            return
        vcpu.root_valid = True
        vcpu.ept02_cur = vcpu.eptp12
        k.note(
            "kvm_mmu_load: mmu_alloc_shadow_roots",
            f"the EPT02 root of EPTP12{_table(k, vcpu.eptp12)}",
        )
        self.kvm_mmu_sync_roots(k, vcpu)
        self.kvm_mmu_load_pgd(k, vcpu)
        self.kvm_mmu_load_flush(k, vcpu)  # type: ignore[attr-defined]

    def kvm_mmu_sync_roots(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_sync_roots @ v6.18 on guest_mmu: mmu_sync_children of the EPT02 root:
        each unsync page is synced (FNAME(sync_spte) of the EPT walker per SPTE), and a change
        is flushed (kvm_mmu_sync_flush: kvm_mmu_remote_flush_or_zap @ v6.18, a local request
        in v5.x)."""
        if not self.nested_ept_active(k, vcpu):
            super().kvm_mmu_sync_roots(k, vcpu)  # type: ignore[misc]
            return
        if not vcpu.root_valid or not k.kvm.ept02_unsync:
            return
        t = vcpu.ept02_cur
        regions = sorted({g >> 21 for g in k.config.l2_gpas})
        flush = False
        for n, region in enumerate(regions):
            bit = t * len(regions) + n
            if not k.kvm.ept02_unsync >> bit & 1:
                continue
            k.kvm.ept02_unsync &= ~(1 << bit)
            k.note(
                f"mmu_sync_children: sync the EPT02{_table(k, t)} page {n}",
                "EPT12 write-protected again",
            )
            for l2gpa in k.config.l2_gpas:
                if l2gpa >> 21 == region:
                    flush |= self.ept_sync_spte(k, l2gpa, t)
        if flush:
            self.kvm_mmu_sync_flush(k, vcpu)  # type: ignore[attr-defined]

    def ept_sync_spte(self, k: Step, l2gpa: int, t: int = 0) -> bool:
        """paging_tmpl.h:FNAME(sync_spte) @ v6.18 for EPT (ept_sync_spte): drop the SPTE if the
        EPT12 entry is gone or names another L1 GPA, else take its rights. Returns whether the
        SPTE changed."""
        spte = self.ept02_spte(k, l2gpa, t)
        if not ept_rights(spte):
            return False
        e12 = self.ept12_entry(k, l2gpa, t)
        hpa = pte_addr(spte)
        l1gpa = k.config.frame_of_page(hpa)
        if not ept_rights(e12) or pte_addr(e12) != l1gpa:
            self.set_ept02_spte(k, l2gpa, 0, "ept_sync_spte: EPT12 entry changed, drop", t)
            return True
        rights = ept_rights(e12) & self.host_rights(k, l1gpa)  # type: ignore[attr-defined]
        new = make_ept(hpa, rights)
        if new == spte:
            return False
        self.set_ept02_spte(k, l2gpa, new, "ept_sync_spte: new access rights", t)
        return True

    # -- L1's stores to EPT12 ----------------------------------------------------------------------
    def ept12_write_fault(self, k: Step, vcpu: Vcpu, l2gpa: int, t: int = 0) -> None:
        """mmu.c:kvm_tdp_page_fault on EPT01 for L1's write to its write-tracked EPT12 table ->
        make_spte -> mmu_try_to_unsync_pages @ v6.18: the last-level EPT02 page shadowing it
        goes unsync, and the EPT01 SPTE becomes writable; L1 retries the store."""
        bit = k.config.ept02_region(l2gpa, t)
        k.kvm.ept02_unsync |= 1 << bit
        k.note(
            f"mmu_try_to_unsync_pages: EPT02{_table(k, t)} page {bit} (EPT12 of {l2gpa:#x}) unsync",
            "L1's stores to that EPT12 table no longer exit",
        )

    # -- EPT02 faults ------------------------------------------------------------------------------
    def kvm_mmu_page_fault(self, k: Step, vcpu: Vcpu, gpa: int, write: bool) -> None:
        """mmu.c:kvm_mmu_page_fault -> paging_tmpl.h:FNAME(page_fault) of the EPT walker @ v6.18
        while L2 runs: walk EPT12 for the L2 GPA; a missing or denying entry goes to L1 as an
        EPT violation (nested_ept_inject_page_fault, a nested VM exit); else map the L2 GPA to
        the host page of the L1 GPA (kvm_faultin_pfn, FNAME(fetch))."""
        if not self.nested_ept_active(k, vcpu):
            super().kvm_mmu_page_fault(k, vcpu, gpa, write)  # type: ignore[misc]
            return
        t = vcpu.ept02_cur
        e12 = self.ept12_entry(k, gpa, t) if gpa in k.config.l2_gpas else 0
        r12 = ept_rights(e12)
        if not r12 or (write and not r12 & E_W):
            vcpu.pf_injected = gpa
            k.note(
                f"FNAME(walk_addr) of EPT12 for {gpa:#x}: {'denied' if r12 else 'not present'}",
                "nested_ept_inject_page_fault: an EPT violation for L1, which ends L2's access",
            )
            return
        l1gpa = pte_addr(e12)
        spte = self.ept02_spte(k, gpa, t)
        if ept_rights(spte) and (not write or ept_rights(spte) & E_W):
            k.note(f"FNAME(page_fault)({gpa:#x}): spurious, the EPT02 SPTE allows it")
            return
        if self.mmu_invalidate_retry_gfn(k, k.kvm.mmu_invalidate_seq):  # type: ignore[attr-defined]
            # the fault is one step here: an invalidation in progress makes it retry, as
            # is_page_fault_stale does for a pfn looked up while the zap runs
            k.note(f"FNAME(page_fault)({gpa:#x}): mmu_invalidate_retry_gfn, retry")
            return
        hpa = self.gfn_to_pfn(k, l1gpa)  # type: ignore[attr-defined]
        rights = r12 & self.host_rights(k, l1gpa)  # type: ignore[attr-defined]
        value = self.make_spte(k, l1gpa, hpa, rights)  # type: ignore[attr-defined]
        self.set_ept02_spte(k, gpa, value, f"FNAME(fetch) (EPT12: L1 GPA {l1gpa:#x})", t)

    # -- the host's zap ----------------------------------------------------------------------------
    def kvm_unmap_gfn_range(self, k: Step, gpa: int) -> bool:
        """mmu.c:kvm_unmap_gfn_range @ v6.18: besides the TDP MMU's SPTE, the shadow MMU's rmap
        of the L1 GPA reaches every EPT02 SPTE mapping it (kvm_zap_rmap)."""
        zapped: bool = super().kvm_unmap_gfn_range(k, gpa)  # type: ignore[misc]
        if not k.config.nested_ept:
            return zapped
        for t in range(len(k.config.ept02_roots or (k.config.ept02_root,))):
            for l2gpa in k.config.l2_gpas:
                spte = self.ept02_spte(k, l2gpa, t)
                if ept_rights(spte) and k.config.frame_of_page(pte_addr(spte)) == gpa:
                    self.set_ept02_spte(k, l2gpa, 0, f"kvm_zap_rmap({gpa:#x})", t)
                    zapped = True
        return zapped

    # -- INVEPT ------------------------------------------------------------------------------------
    def handle_invept(self, k: Step, vcpu: Vcpu, kind: int, eptp: int = 0) -> None:
        """nested.c:handle_invept @ v6.18 (v5.8.18 alike): single-context frees the guest_mmu
        roots, current or cached, whose EPTP matches the operand's (nested_ept_root_matches),
        all-context every guest_mmu root (kvm_mmu_free_roots); nothing is flushed here: the
        next nested VM-Enter loads a root, which syncs and flushes its EPTP02. `eptp`: the
        operand's EPT12 table."""
        if kind == 1:
            k.note(f"handle_invept({INVEPT_TYPE_NAMES[kind]})", f"EPTP12{_table(k, eptp)}")
            self.kvm_mmu_free_guest_mmu_roots(k, vcpu, 1 << eptp)
        else:
            k.note(f"handle_invept({INVEPT_TYPE_NAMES[kind]})")
            self.kvm_mmu_free_guest_mmu_roots(k, vcpu, -1)

    def kvm_mmu_free_guest_mmu_roots(self, k: Step, vcpu: Vcpu, eptps: int) -> None:
        """mmu.c:kvm_mmu_free_roots(guest_mmu, ...) @ v6.18 while L1 runs, for the roots of the
        EPT12 tables in bitmask `eptps` (-1: every root, KVM_MMU_ROOTS_ALL): they are no longer
        guest_mmu's (the shadow pages stay in KVM's hash, unsync ones included)."""
        freed = []
        if vcpu.parked_root_valid and eptps >> vcpu.ept02_cur & 1:
            vcpu.parked_root_valid = False
            freed.append(f"the current EPT02 root{_table(k, vcpu.ept02_cur)}")
        if vcpu.ept02_prev & eptps:
            names = [_table(k, t) for t in range(8) if (vcpu.ept02_prev & eptps) >> t & 1]
            vcpu.ept02_prev &= ~eptps
            freed.append("the cached EPT02 root" + ",".join(names))
        k.note(f"kvm_mmu_free_roots(guest_mmu): {' and '.join(freed) or 'no EPT02 root to free'}")

    def nested_release_guest_mmu(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:handle_vmptrld -> nested_release_vmcs12 @ v6.18 (v5.8, v5.7 alike): every
        guest_mmu root is freed (KVM_MMU_ROOTS_ALL)."""
        if k.config.nested_ept:
            self.kvm_mmu_free_guest_mmu_roots(k, vcpu, -1)


class NestedEpt57(NestedEpt):
    """nested.c and mmu.c @ v5.7 (read at v5.7.14): every nested transition syncs and flushes
    the current MMU's root, and INVEPT is not emulated beyond its checks."""

    def kvm_init_shadow_ept_mmu(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_init_shadow_ept_mmu -> __kvm_mmu_new_cr3(vcpu, new_eptp, role, false) @
        v5.7: fast_cr3_switch to the usable EPT02 root requests KVM_REQ_LOAD_MMU_PGD,
        KVM_REQ_MMU_SYNC and KVM_REQ_TLB_FLUSH (vmx_flush_tlb: INVEPT of the current root,
        EPTP02); without one the root is freed and kvm_mmu_load syncs and flushes."""
        if self.guest_mmu_fast_switch(k, vcpu):
            kvm_make_request(vcpu, KVM_REQ_LOAD_MMU_PGD | KVM_REQ_MMU_SYNC | KVM_REQ_TLB_FLUSH)
            k.note(
                "__kvm_mmu_new_cr3(EPTP12, skip_tlb_flush = false): fast_cr3_switch",
                request_names(KVM_REQ_LOAD_MMU_PGD | KVM_REQ_MMU_SYNC | KVM_REQ_TLB_FLUSH),
            )
        else:
            k.note("__kvm_mmu_new_cr3(EPTP12): no usable EPT02 root", "kvm_mmu_load will load one")

    def nested_ept_l1_new_pgd(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_vmx_load_cr3(HOST_CR3) -> kvm_mmu_new_cr3(vcpu, cr3, false) @ v5.7 on
        root_mmu: fast_cr3_switch finds the EPT01 root (L1's CR3 is unchanged across the L2 run
        in the model) and requests KVM_REQ_LOAD_MMU_PGD, KVM_REQ_MMU_SYNC, KVM_REQ_TLB_FLUSH."""
        if vcpu.root_valid:
            kvm_make_request(vcpu, KVM_REQ_LOAD_MMU_PGD | KVM_REQ_MMU_SYNC | KVM_REQ_TLB_FLUSH)
            k.note(
                "kvm_mmu_new_cr3(HOST_CR3, false): fast_cr3_switch",
                request_names(KVM_REQ_LOAD_MMU_PGD | KVM_REQ_MMU_SYNC | KVM_REQ_TLB_FLUSH),
            )

    def handle_invept(self, k: Step, vcpu: Vcpu, kind: int, eptp: int = 0) -> None:
        """nested.c:handle_invept @ v5.7: after the checks, both types do nothing (a TODO says
        the shadow EPT roots are synced at the next emulated VM-entry instead, which
        kvm_init_shadow_ept_mmu does in v5.7: see above). Historical bug #3's pre-image."""
        k.note(f"handle_invept({INVEPT_TYPE_NAMES[kind]})", "nothing: synced at the next VM-entry")


def _table(k: Step, t: int) -> str:
    """An EPT12 table's index in a note, with several tables only."""
    return f" #{t}" if len(k.config.ept12_roots) > 1 else ""


__all__ = ["NestedEpt", "NestedEpt57"]
