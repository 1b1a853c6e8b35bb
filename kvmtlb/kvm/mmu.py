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

Roots (tdp_mmu.c:kvm_tdp_mmu_alloc_root, kvm_tdp_mmu_put_root, kvm_tdp_mmu_invalidate_roots,
kvm_tdp_mmu_zap_invalidated_roots @ v6.18; mmu.c:mmu_alloc_direct_roots, kvm_mmu_free_roots,
kvm_zap_obsolete_pages @ v5.x): the VM has a few EPT/NPT root pages (`KvmConfig.tdp_roots`, one
per fast zap the scenario makes, plus one), each a hierarchy mapping every guest frame. vCPUs of
one MMU role share the valid root; `kvm_mmu_zap_all_fast` makes it obsolete, and every vCPU
drops it before its next entry; an obsolete root is freed once it is zapped and no vCPU holds
it, and the next root allocated takes the lowest free page: a freed root's page comes back as a
new root, under the same EP4TA. Upper levels are static (the model's leaves are all that a zap
clears; paging-structure-cache entries for the upper levels stay valid, as they do when KVM
reuses the root page's freshly zeroed upper tables). Every vCPU has the same role: roles (SMM,
guest mode) are not modelled, so at most one root is valid at a time.
"""

from __future__ import annotations

from kvmtlb.hw.paging import (
    E_ALL,
    E_W,
    ept_rights,
    format_ept_rights,
    make_ept,
    make_npt,
    pte_addr,
)
from kvmtlb.hw.vmx import Vmwrite, make_eptp
from kvmtlb.hw.walk import _npt_rights
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.requests import KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, kvm_check_request
from kvmtlb.kvm.state import (
    ROOT_FREE,
    ROOT_INVALID,
    ROOT_STATE_NAMES,
    ROOT_VALID,
    ROOT_ZAPPED,
    HostTask,
    Vcpu,
)


class Mmu:
    """arch/x86/kvm/mmu: the TDP fault path and the SPTE changes the host's operations make."""

    # -- SPTEs ----------------------------------------------------------------------------------
    def tdp_root_hpas(self, k: Step) -> tuple[int, ...]:
        """The HPAs of the VM's EPT/NPT root pages (one, unless the scenario zaps all roots)."""
        return k.config.tdp_roots or (k.config.tdp_root,)

    def spte_slot(self, k: Step, gpa: int, root: int = 0) -> int:
        return k.config.layout.slot(self.tdp_root_hpas(k)[root], gpa)

    def live_tdp_roots(self, k: Step) -> list[int]:
        """The root pages in use (not free): what a zap of a frame must reach."""
        states = k.kvm.root_state or (ROOT_VALID,)
        return [r for r, st in enumerate(states) if st != ROOT_FREE]

    def valid_tdp_roots(self, k: Step) -> list[int]:
        """The root pages vCPUs may take (at most one: every vCPU has the same role)."""
        states = k.kvm.root_state or (ROOT_VALID,)
        return [r for r, st in enumerate(states) if st == ROOT_VALID]

    def make_spte(self, k: Step, gpa: int, hpa: int, rights: int) -> int:
        """mmu/spte.c:make_spte @ v6.18 (mmu.c:set_spte @ v5.7/v5.8), for a 4 KiB leaf: an EPT or
        NPT entry. A writable SPTE in a slot with dirty logging on marks the page dirty at once
        (mark_page_dirty_in_slot; kvm_vcpu_mark_page_dirty in v5.x): writes through it will not
        fault, so they must be logged now."""
        if rights & E_W and self.kvm_slot_dirty_track_enabled(k, gpa):
            self.mark_page_dirty_in_slot(k, gpa)
        return make_ept(hpa, rights) if k.config.vmx else make_npt(hpa, rights)

    def kvm_slot_log_dirty_on(self, k: Step, gpa: int) -> None:
        """kvm_main.c:kvm_prepare_memory_region @ v6.18 with KVM_MEM_LOG_DIRTY_PAGES newly set:
        the frame's memslot logs dirty pages from now on, with a clean dirty bitmap
        (kvm_alloc_dirty_bitmap)."""
        i = k.config.gpa_index(gpa)
        k.kvm.log_dirty |= 1 << i
        k.kvm.set_dirty(i, False)

    def kvm_slot_dirty_track_enabled(self, k: Step, gpa: int) -> bool:
        """kvm_host.h:kvm_slot_dirty_track_enabled @ v6.18: the frame's memslot logs dirty pages."""
        return bool(k.kvm.log_dirty >> k.config.gpa_index(gpa) & 1)

    def mark_page_dirty_in_slot(self, k: Step, gpa: int) -> None:
        """kvm_main.c:mark_page_dirty_in_slot @ v6.18: set the frame's bit in the dirty bitmap."""
        k.kvm.set_dirty(k.config.gpa_index(gpa), True)

    def spte(self, k: Step, gpa: int, root: int = 0) -> tuple[int, int]:
        """The frame's SPTE in root page `root` as (host page or -1, rights)."""
        value = k.machine.memory.values[self.spte_slot(k, gpa, root)]
        rights = ept_rights(value) if k.config.vmx else _npt_rights(value)
        if not rights:
            return (-1, 0)
        return (pte_addr(value), rights)

    def set_spte(self, k: Step, gpa: int, hpa: int, rights: int, why: str, root: int = 0) -> None:
        value = self.make_spte(k, gpa, hpa, rights) if hpa >= 0 else 0
        where = f"root {root}: " if len(self.tdp_root_hpas(k)) > 1 else ""
        what = f"SPTE[{gpa:#x}] = " + (f"{hpa:#x} ({rights_text(rights)})" if hpa >= 0 else "0")
        k.write_slot(self.spte_slot(k, gpa, root), value, f"{why}: {where}{what}")

    # -- roots --------------------------------------------------------------------------------
    def mmu_alloc_direct_roots(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:mmu_alloc_direct_roots -> tdp_mmu.c:kvm_tdp_mmu_alloc_root @ v6.18
        (kvm_mmu_get_page for the root @ v5.x): take a reference to the valid root of the vCPU's
        role if there is one, else allocate a root on a free page (the lowest: a page freed by
        an earlier root comes back), empty."""
        if not k.kvm.root_state:  # one static root (the cost model's machine)
            vcpu.tdp_root = 0
            return
        valid = self.valid_tdp_roots(k)
        vm = k.config.vcpu_vm(vcpu.id)
        if k.kvm.root_vm:  # two VMs: only a root of the vCPU's own struct kvm (kvm/vm.py)
            valid = [r for r in valid if k.kvm.root_vm[r] == vm]
        if valid:
            r = valid[0]
            k.kvm.set_root(r, ROOT_VALID, k.kvm.root_refs[r] + 1)
            k.note(f"kvm_tdp_mmu_alloc_root: the valid root {r}", self.root_desc(k, r))
        else:
            free = [i for i, st in enumerate(k.kvm.root_state) if st == ROOT_FREE]
            if not free:
                raise AssertionError("no free root page: the layout has too few (system.py)")
            r = free[0]
            k.kvm.set_root(r, ROOT_VALID, 1)
            if k.kvm.root_vm:
                k.kvm.set_root_vm(r, vm)
            k.note(f"kvm_tdp_mmu_alloc_root: a new root on page {r}", self.root_desc(k, r))
        vcpu.tdp_root = r

    def root_desc(self, k: Step, r: int) -> str:
        return (
            f"root {r} (HPA {self.tdp_root_hpas(k)[r]:#x}): "
            f"{ROOT_STATE_NAMES[k.kvm.root_state[r]]}, held by {k.kvm.root_refs[r]} vCPU(s)"
        )

    def kvm_mmu_put_root(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_free_roots -> mmu_free_root_page -> kvm_tdp_mmu_put_root @ v6.18 (the
        root_count of v5.x): drop the vCPU's reference. A valid root stays (the MMU keeps it for
        the next vCPU of its role); an obsolete root that was zapped is freed with its last
        reference, without a TLB flush (the next kvm_mmu_load flushes)."""
        r = vcpu.tdp_root
        vcpu.tdp_root = -1
        if r < 0 or not k.kvm.root_state:
            return
        refs = k.kvm.root_refs[r] - 1
        state = k.kvm.root_state[r]
        if state == ROOT_ZAPPED and refs == 0:
            state = ROOT_FREE
        k.kvm.set_root(r, state, refs)
        k.note(f"kvm_tdp_mmu_put_root({r})", self.root_desc(k, r))

    def kvm_mmu_root_obsolete(self, k: Step, vcpu: Vcpu) -> bool:
        """mmu.c:is_obsolete_root @ v6.18 (is_obsolete_sp @ v5.x): the vCPU's root was
        invalidated by a fast zap."""
        r = vcpu.tdp_root
        return bool(k.kvm.root_state) and r >= 0 and k.kvm.root_state[r] != ROOT_VALID

    def kvm_mmu_free_obsolete_roots(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_free_obsolete_roots @ v6.18 (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS): an
        obsolete current root is freed; kvm_mmu_reload loads a new one before the entry."""
        if k.config.tdp and self.kvm_mmu_root_obsolete(k, vcpu):
            vcpu.root_valid = False
            self.kvm_mmu_put_root(k, vcpu)

    def kvm_tdp_mmu_invalidate_roots(self, k: Step) -> None:
        """tdp_mmu.c:kvm_tdp_mmu_invalidate_roots @ v6.18 (the mmu_valid_gen toggle of
        kvm_mmu_zap_all_fast @ v5.x): every valid root becomes obsolete; no vCPU may take a
        reference to it from now on, and faults on it retry."""
        for r, st in enumerate(k.kvm.root_state):
            if st != ROOT_VALID:
                continue
            k.kvm.set_root(r, ROOT_INVALID, k.kvm.root_refs[r])
            k.note(f"root {r} invalidated", self.root_desc(k, r))

    def zap_invalidated_roots(self, k: Step) -> bool:
        """tdp_mmu.c:kvm_tdp_mmu_zap_invalidated_roots @ v6.18 (kvm_zap_obsolete_pages @ v5.x):
        zap every leaf of each obsolete root, then put the MMU's reference (a root no vCPU holds
        is freed). No TLB flush here (v6.18 relies on the flush of kvm_mmu_load and of a vCPU
        migration). Returns whether a present SPTE was zapped."""
        zapped = False
        for r, st in enumerate(k.kvm.root_state):
            if st != ROOT_INVALID:
                continue
            for gpa in k.config.gpas:
                if self.spte(k, gpa, r)[0] >= 0:
                    zapped = True
                    self.set_spte(k, gpa, -1, 0, "tdp_mmu_zap_root", r)
            refs = k.kvm.root_refs[r]
            k.kvm.set_root(r, ROOT_ZAPPED if refs else ROOT_FREE, refs)
            k.note(f"root {r} zapped", self.root_desc(k, r))
        return zapped

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

    def kvm_mmu_load_pgd(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.h:kvm_mmu_load_pgd @ v6.18 with TDP: vmx_load_mmu_pgd writes the root's EPTP into
        the VMCS (VMWRITE EPT_POINTER), svm_load_mmu_pgd the root into the VMCB's nCR3, for the
        next VM entry. Neither invalidates anything: the caller flushes. Without TDP, the shadow
        root (kvm/shadow.py)."""
        if not k.config.tdp:
            super().kvm_mmu_load_pgd(k, vcpu)  # type: ignore[misc]
            return
        hpa = self.tdp_root_hpas(k)[vcpu.tdp_root]
        if k.config.vmx:
            assert vcpu.vmcs is not None
            eptp = make_eptp(hpa, ad=k.config.pml)  # construct_eptp (kvm/vmx.py)
            if vcpu.vmcs.eptp != eptp:
                k.hw(vcpu.cpu, Vmwrite("eptp", eptp), "vmx_load_mmu_pgd: EPT_POINTER")
        else:
            assert vcpu.vmcb is not None
            if vcpu.vmcb.ncr3 != hpa:
                vcpu.vmcb = vcpu.vmcb._replace(ncr3=hpa)
                k.note(f"svm_load_mmu_pgd: vmcb->control.nested_cr3 = {hpa:#x}")

    def kvm_service_root_requests(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_enter_guest @ v6.18: KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, before the MMU and
        TLB-flush requests."""
        if kvm_check_request(vcpu, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS):
            self.kvm_mmu_free_obsolete_roots(k, vcpu)

    # -- kvm_mmu_zap_all_fast, as host-task steps ---------------------------------------------
    def kvm_mmu_zap_all_fast(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_mmu_zap_all_fast @ v6.18 (reached from a memslot deletion or move with the
        default KVM_X86_QUIRK_SLOT_ZAP_ALL, a write of the nx_huge_pages parameter, an MMIO
        generation wrap), under mmu_lock: every root becomes obsolete, and every vCPU is asked to
        drop it (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, a KVM_REQUEST_WAIT request: the kicks are
        waited for); then the obsolete roots are zapped, with no TLB flush."""
        self.kvm_tdp_mmu_invalidate_roots(k)
        task.frame = (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, 0, 0)
        task.call("kvm_make_all_cpus_request", "kvm_tdp_mmu_zap_invalidated_roots")

    def kvm_tdp_mmu_zap_invalidated_roots(self, k: Step, task: HostTask) -> None:
        """tdp_mmu.c:kvm_tdp_mmu_zap_invalidated_roots @ v6.18: zap the obsolete roots and put
        the MMU's reference to each. KVM flushes no TLB here: it relies on the flush of
        kvm_mmu_load when a vCPU loads its next root, and on the one of a migration."""
        self.zap_invalidated_roots(k)
        task.return_()

    # -- KVM_CLEAR_DIRTY_LOG, a host-task step --------------------------------------------------
    def kvm_clear_dirty_log_protect(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_clear_dirty_log_protect @ v6.18 (and v5.x) for one frame: if the memslot
        logs dirty pages and the frame's dirty bit was set (the bits really cleared, by an
        atomic fetch-and-not), clear it and write-protect the frame again
        (kvm_arch_mmu_enable_log_dirty_pt_masked; without PML, kvm_tdp_mmu_clear_dirty_pt_masked
        removes write permission), then kvm_flush_remote_tlbs_memslot; a clean frame is left
        alone, with no flush."""
        i = k.config.gpa_index(task.gpa)
        if not k.kvm.log_dirty >> i & 1:
            k.note(f"KVM_CLEAR_DIRTY_LOG({task.gpa:#x})", "the memslot does not log dirty pages")
            task.return_()
            return
        if not k.kvm.dirty[i]:
            k.note(f"KVM_CLEAR_DIRTY_LOG({task.gpa:#x}): the dirty bit is clear", "no flush")
            task.return_()
            return
        k.kvm.set_dirty(i, False)
        k.note(f"KVM_CLEAR_DIRTY_LOG({task.gpa:#x}): dirty bit cleared")
        self.kvm_arch_mmu_enable_log_dirty_pt_masked(k, task.gpa)
        self.kvm_flush_remote_tlbs_memslot(k, task)

    def kvm_arch_mmu_enable_log_dirty_pt_masked(self, k: Step, gpa: int) -> None:
        """x86.c:kvm_arch_mmu_enable_log_dirty_pt_masked @ v6.18 for one frame, without PML
        (kvm/pml.py): write-protect its SPTEs (kvm_tdp_mmu_clear_dirty_pt_masked clears W of an
        SPTE whose A/D flags may not be used; the rmap's kvm_mmu_write_protect_pt_masked)."""
        for r in self.live_tdp_roots(k) if k.config.tdp else []:
            hpa, rights = self.spte(k, gpa, r)
            if hpa >= 0:
                self.set_spte(k, gpa, hpa, rights & ~E_W, "clear_dirty_pt_masked", r)
        if not k.config.tdp:
            self.rmap_write_protect(k, gpa)  # type: ignore[attr-defined]

    def kvm_flush_remote_tlbs_memslot(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_flush_remote_tlbs_memslot @ v6.18 (kvm_arch_flush_remote_tlbs_memslot
        @ v5.x): kvm_flush_remote_tlbs (a range flush only on Hyper-V)."""
        task.goto("kvm_flush_remote_tlbs")

    # -- page aging (the MMU notifier's clear_young), a host-task step --------------------------
    def kvm_mmu_notifier_clear_young(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_mmu_notifier_clear_young @ v6.18 (and v5.x) -> mmu.c:kvm_age_gfn: age
        the frame's SPTEs, and flush no TLB (clear_young, unlike clear_flush_young, leaves that
        to the next real flush: reclaim only needs an approximation). With A/D bits (NPT, EPT
        with enable_ept_ad_bits) the Accessed bit is cleared, which the model does not track;
        without them (EPT without A/D bits) the SPTE is marked for access tracking
        (mark_spte_for_access_track: its RWX bits cleared, so the hardware sees it not present;
        the next fault restores it), while a TLB may keep its old, writable translation."""
        if not k.config.tdp:
            k.note(f"kvm_age_gfn({task.gpa:#x})", "the Accessed bit is not modelled")
            task.return_()
            return
        if k.config.ept_ad:
            k.note(f"kvm_age_gfn({task.gpa:#x}): clear the Accessed bit", "no TLB flush")
            task.return_()
            return
        for r in self.live_tdp_roots(k):
            if self.spte(k, task.gpa, r)[0] >= 0:
                self.set_spte(k, task.gpa, -1, 0, "mark_spte_for_access_track", r)
        k.note(f"kvm_age_gfn({task.gpa:#x}): access tracking", "no TLB flush (clear_young)")
        task.return_()

    # -- kvm_zap_gfn_range, yielding mmu_lock halfway, as host-task steps ----------------------
    def kvm_zap_gfn_range(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_zap_gfn_range @ v6.18 (kvm_tdp_mmu_zap_leafs -> tdp_mmu_zap_leafs with
        can_yield; its callers: MTRR and CR0.CD changes with non-coherent DMA, the APIC-access
        page on an APICv inhibit) over two frames (`task.gpa`, then `task.hpa`, the op's two
        GPAs): take mmu_lock for write and zap the first frame's SPTE in every root; a flush is
        pending if one was present (`frame`). Then mmu_lock is yielded
        (tdp_mmu_iter_cond_resched). v5.7/v5.8's kvm_zap_gfn_range (slot_handle_level_range
        with lock_flush_tlb) walks the rmaps the same way."""
        k.kvm.mmu_lock = True
        k.note("write_lock(&kvm->mmu_lock)", "kvm_zap_gfn_range")
        task.frame = (int(self.kvm_unmap_gfn_range(k, task.gpa)),)
        task.goto("kvm_zap_gfn_range:yield")

    def kvm_zap_gfn_range_yield(self, k: Step, task: HostTask) -> None:
        """tdp_mmu.c:tdp_mmu_iter_cond_resched @ v6.18 (mmu.c:slot_handle_level_range @ v5.x):
        before dropping mmu_lock, flush remote TLBs if a flush is pending (a835429cda91 made a
        flush pending from an earlier root count too), so that no one who takes the lock
        meanwhile sees a zapped SPTE whose translation a TLB may still hold."""
        (flush,) = task.frame
        task.frame = ()
        if flush:
            k.note("tdp_mmu_iter_cond_resched: a flush is pending, flush before yielding")
            task.call("kvm_flush_remote_tlbs", "kvm_zap_gfn_range:unlock")
        else:
            task.goto("kvm_zap_gfn_range:unlock")

    def kvm_zap_gfn_range_unlock(self, k: Step, task: HostTask) -> None:
        """tdp_mmu.c:tdp_mmu_iter_cond_resched @ v6.18: cond_resched_rwlock_write drops
        mmu_lock; other threads may take it now. `frame` keeps a flush still pending."""
        k.kvm.mmu_lock = False
        k.note("cond_resched_rwlock_write: mmu_lock yielded")
        task.goto("kvm_zap_gfn_range:relock")

    def kvm_zap_gfn_range_relock(self, k: Step, task: HostTask) -> None:
        """tdp_mmu.c:tdp_mmu_zap_leafs @ v6.18, after the yield: mmu_lock again, and the second
        frame's SPTE zapped; then the flush (kvm_flush_remote_tlbs_range) if one is pending."""
        pending = bool(task.frame and task.frame[0])
        task.frame = ()
        k.kvm.mmu_lock = True
        k.note("write_lock(&kvm->mmu_lock)", "tdp_mmu_zap_leafs resumes")
        if self.kvm_unmap_gfn_range(k, task.hpa) or pending:
            task.call("kvm_flush_remote_tlbs", "kvm_zap_gfn_range:done")
        else:
            task.goto("kvm_zap_gfn_range:done")

    def kvm_zap_gfn_range_done(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_zap_gfn_range @ v6.18: write_unlock(&kvm->mmu_lock) after the last flush."""
        k.kvm.mmu_lock = False
        k.note("write_unlock(&kvm->mmu_lock)")
        task.return_()

    # -- the fault path ---------------------------------------------------------------------------
    def kvm_mmu_page_fault(self, k: Step, vcpu: Vcpu, gpa: int, write: bool) -> None:
        """mmu.c:kvm_mmu_page_fault / kvm_tdp_page_fault @ v6.18, up to kvm_faultin_pfn."""
        hpa, rights = self.spte(k, gpa, max(vcpu.tdp_root, 0))
        if hpa >= 0 and (rights & E_W or not write):
            k.note(f"kvm_tdp_page_fault({gpa:#x}): spurious, SPTE already allows it")
            return
        if self.fast_page_fault(k, vcpu, gpa, write, hpa, rights):
            return
        if self.kvm_handle_noslot_fault(k, vcpu, gpa):  # type: ignore[attr-defined]
            return
        if self.kvm_faultin_memslot_invalid(k, gpa):  # type: ignore[attr-defined]
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
        self.set_spte(
            k, gpa, hpa, rights | E_W, "fast_page_fault: mark dirty, restore W", vcpu.tdp_root
        )
        return True

    def kvm_tdp_page_fault_map(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_tdp_page_fault @ v6.18 under mmu_lock: is_page_fault_stale (an obsolete
        root, or mmu_invalidate_retry_gfn) makes the vCPU retry; else the SPTE is installed in
        the vCPU's root."""
        gpa, _write, mmu_seq, pfn = vcpu.frame
        vcpu.frame = ()
        vcpu.pc = "vcpu_enter_guest"
        if self.kvm_mmu_root_obsolete(k, vcpu):
            k.note(f"kvm_tdp_page_fault({gpa:#x}): is_obsolete_root, retry")
            return
        if self.mmu_invalidate_retry_gfn(k, mmu_seq):  # type: ignore[attr-defined]
            k.note(f"kvm_tdp_page_fault({gpa:#x}): mmu_invalidate_retry_gfn, retry")
            return
        root = max(vcpu.tdp_root, 0)
        if self.spte(k, gpa, root)[0] >= 0:
            k.note(f"kvm_tdp_page_fault({gpa:#x}): another vCPU mapped it")
            return
        self.set_spte(k, gpa, pfn, self.host_rights(k, gpa), "kvm_tdp_mmu_map", root)

    # -- the host's changes ----------------------------------------------------------------------
    def kvm_unmap_gfn_range(self, k: Step, gpa: int) -> bool:
        """mmu.c:kvm_unmap_gfn_range @ v6.18: zap the frame's SPTE in every root, obsolete ones
        too (kvm_tdp_mmu_unmap_gfn_range; the rmap of v5.x reaches every shadow page); returns
        whether one was present, i.e. whether the caller must flush remote TLBs (flush_on_ret
        flushes only then, as v5.x's kvm_mmu_notifier_invalidate_range_start does). With shadow
        paging, every SPTE the rmap has for the frame (kvm_zap_rmap), and always a flush."""
        if not k.config.tdp:
            self.kvm_zap_rmap(k, gpa)  # type: ignore[attr-defined]
            return True
        zapped = False
        for r in self.live_tdp_roots(k):
            if self.spte(k, gpa, r)[0] >= 0:
                zapped = True
                self.set_spte(k, gpa, -1, 0, "kvm_unmap_gfn_range", r)
        if not zapped:
            k.note(f"kvm_unmap_gfn_range({gpa:#x}): no SPTE present", "nothing to flush")
        return zapped

    def kvm_tdp_mmu_write_protect(self, k: Step, gpa: int) -> bool:
        """tdp_mmu.c:kvm_tdp_mmu_clear_dirty_slot / write-protect for dirty logging @ v6.18: dirty
        logging is on for the frame's memslot from now on; clear the frame's dirty bit and its
        SPTEs' write permission. Returns whether the caller must flush remote TLBs
        (kvm_flush_remote_tlbs_memslot): always, since b64d740ea7dd (x86.c:kvm_mmu_slot_apply_flags
        @ v6.18 flushes unconditionally after enabling dirty logging), because write permission
        may be cached even for an SPTE that is no longer writable."""
        self.kvm_slot_log_dirty_on(k, gpa)
        if not k.config.tdp:
            self.rmap_write_protect(k, gpa)  # type: ignore[attr-defined]
            return True
        for r in self.live_tdp_roots(k):
            hpa, rights = self.spte(k, gpa, r)
            if hpa >= 0:
                self.set_spte(k, gpa, hpa, rights & ~E_W, "write-protect for dirty logging", r)
        return True

    # -- host-task steps (KvmPolicy.HOST_STEPS) ------------------------------------------------
    def kvm_mmu_slot_remove_write_access(self, k: Step, task: HostTask) -> None:
        """x86.c:kvm_mmu_slot_apply_flags -> mmu.c:kvm_mmu_slot_remove_write_access, then
        kvm_flush_remote_tlbs_memslot @ v6.18 (dirty logging switched on, or the dirty log
        cleared): write-protect the frame, and flush if write permission may be cached. With PML,
        the dirty flags are cleared instead (kvm/pml.py)."""
        if k.config.pml:
            self.kvm_mmu_slot_apply_flags_pml(k, task)  # type: ignore[attr-defined]
            return
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
        for r in self.valid_tdp_roots(k):
            self.set_spte(k, gpa, hpa, self.host_rights(k, gpa), "map the migrated page", r)


def rights_text(r: int) -> str:
    """An SPTE's rights for a trace line: "rw-", or "none" when it grants nothing."""
    return format_ept_rights(r) if r else "none"


__all__ = ["E_ALL", "Mmu", "rights_text"]
