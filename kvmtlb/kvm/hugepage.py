"""2 MiB EPT/NPT mappings: huge SPTEs, their split and collapse, and the range flushes they owe.

A scenario's 2 MiB region ([host] "HPA RIGHTS 2m") is one memslot backed by one transparent huge
page of the host. Its EPT/NPT PDE (in the model's one root) holds the huge leaf, or points at the
region's 4 KiB table (the region is split), or is not present (zapped); the table's entries of
the region's frames that the scenario names are the 4 KiB SPTEs. Ports, per version:

- the fault (mmu.c:kvm_mmu_max_mapping_level / host_pfn_mapping_level @ v6.18, mapping_level /
  transparent_hugepage_adjust @ v5.x): a frame maps at 2 MiB while the host still backs the whole
  region with its huge page and the memslot does not log dirty pages, else at 4 KiB;
- enabling dirty logging (`wrprotect` of a frame of the region: x86.c:kvm_mmu_slot_apply_flags):
  v6.18 splits the huge SPTE first when eager_page_split is on (tdp_mmu.c:
  kvm_tdp_mmu_try_split_huge_pages, mmu.c:kvm_shadow_mmu_try_split_huge_pages: the split maps
  the same memory, so neither flushes), then write-protects; v5.x write-protects the huge SPTE;
- a write fault on a write-protected huge SPTE under dirty logging: the fault maps 4 KiB. The TDP
  MMU splits the huge SPTE in place (tdp_mmu.c:kvm_tdp_mmu_map -> tdp_mmu_split_huge_page, no
  flush); the rmap MMU (v5.x, and v6.18 with tdp_mmu=N) drops it (mmu.c:drop_large_spte) and
  flushes the range of the dropped SPTE, then links an empty table (historical bug #15's
  "SP base GFN": v5.x flushed from the page directory's own base GFN);
- disabling dirty logging (`collapse`): v6.18's TDP MMU puts the huge SPTE back in place
  (tdp_mmu.c:recover_huge_pages_range, since the v6.13 in-place recovery) and flushes the
  memslot; the rmap MMU zaps each 4 KiB SPTE the huge page could replace
  (mmu.c:kvm_mmu_zap_collapsible_spte) and, with a range flush available, flushes each zapped
  SPTE's range at once (bug #15's "wrong start GFN": v5.x named the page table's base GFN),
  else the whole memslot at the end;
- a zap of a frame (the MMU notifier: `zap`): the whole huge SPTE goes (or the frame's 4 KiB
  SPTE), and the host's THP is split, so the region maps at 4 KiB from then on.

A fault that replaces the region's table by the huge SPTE (mmu.c:mmu_set_spte @ v5.x and with
tdp_mmu=N, tdp_mmu.c:tdp_mmu_map_handle_target_level @ v6.18) flushes the huge page's range
(kvm_flush_remote_tlbs_gfn): the table's 4 KiB translations may be cached.

NX huge pages (the iTLB multihit mitigation, nx_huge_pages=on): a region declared
"HPA RIGHTS 2m nx" starts split by an earlier exec fault, its 4 KiB table a shadow page on
kvm->arch.possible_nx_huge_pages (`Kvm.nx_huge`). A fault does not map such a region 2 MiB while
that table is linked (mmu.c:disallowed_hugepage_adjust; v5.x: while any table is linked there, the
mitigation being on). `recover_nx` is one run of the recovery worker
(mmu.c:kvm_recover_nx_huge_pages @ v6.18, kvm_recover_nx_lpages @ v5.x, with
nx_huge_pages_recovery_ratio = 1: every page on the list): for each table, take it off the list
and zap it (tdp_mmu.c:kvm_tdp_mmu_zap_possible_nx_huge_page under mmu_lock for read with the TDP
MMU, kvm_mmu_prepare_zap_page under mmu_lock for write otherwise), and between two tables flush
whatever is pending before yielding mmu_lock (kvm_mmu_remote_flush_or_zap, then
cond_resched_rwlock_*). v6.18 leaves a table alone whose memslot logs dirty pages
(kvm_mmu_sp_dirty_logging_enabled). The next fault maps the region 2 MiB. Historical bug #13's
048f49809c52 and 33a3164161fc (v5.12; v5.10 and v5.11 shipped them, neither v5.7/v5.8, which
predate the TDP MMU, nor v6.18) are the variants of kvm/hugepage_bugs.py.

Abstracts away: 1 GiB pages; the exec fault that splits a region for NX (a scenario declares the
region split, and has no exec op); several roots (a scenario with a region has one EPT/
NPT root: no fast zap); the host THP's own split and collapse beyond "a zap splits it"; frames
of a region that the scenario never names (nothing can reach them). The vCPU-side flushes wait
for their kicks at once (kvm_main.kvm_mmu_remote_flush), as the shadow MMU's do.
"""

from __future__ import annotations

from kvmtlb.hw.paging import E_W, EPT_PS, PS, ept_rights, make_ept, make_npt, pte_addr
from kvmtlb.hw.walk import _npt_rights
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.mmu import Mmu, rights_text
from kvmtlb.kvm.state import HostTask, Vcpu

HUGE = 1 << 21
PAGES_PER_HPAGE = {1: 1, 2: 512}  # KVM_PAGES_PER_HPAGE(level)
GIB = 1 << 30

NONE, TABLE, LEAF = "none", "table", "huge"


class HugePages:
    """arch/x86/kvm/mmu (mmu.c, tdp_mmu.c) for the SPTEs of 2 MiB regions, at v6.18; the v5.x
    differences are `HugePages58`."""

    # -- per-version switches -------------------------------------------------------------------
    def rmap_tdp(self, k: Step) -> bool:
        """Whether the rmap-based MMU (mmu.c's direct shadow pages) manages EPT/NPT: with the
        tdp_mmu module parameter off (mmu.c:tdp_mmu_enabled @ v6.18)."""
        return not k.config.tdp_mmu

    def eager_page_split(self, k: Step) -> bool:
        """x86.c:kvm_mmu_slot_apply_flags @ v6.18: READ_ONCE(eager_page_split)."""
        return k.config.eager_split

    def drop_large_spte_flush_range(self, k: Step, base: int) -> tuple[int, int]:
        """mmu.c:drop_large_spte -> kvm_flush_remote_tlbs_sptep @ v6.18: the GFN range of the
        dropped huge SPTE itself (kvm_mmu_page_get_gfn of its index, KVM_PAGES_PER_HPAGE of its
        level): (first GPA, pages)."""
        return base, PAGES_PER_HPAGE[2]

    def zap_collapsible_flush_range(self, k: Step, gpa: int) -> tuple[int, int]:
        """mmu.c:kvm_mmu_zap_collapsible_spte -> kvm_flush_remote_tlbs_sptep @ v6.18: the zapped
        4 KiB SPTE's own GFN, one page."""
        return gpa, PAGES_PER_HPAGE[1]

    # -- the region's PDE and its 4 KiB SPTEs ---------------------------------------------------
    def huge_pde_slot(self, k: Step, n: int) -> int:
        return k.config.layout.slot(self.tdp_root_hpas(k)[0], k.config.huge[n][0], 2)  # type: ignore[attr-defined]

    def huge_pde(self, k: Step, n: int) -> tuple[str, int, int]:
        """The region's PDE: (NONE | TABLE | LEAF, host page, rights)."""
        value = k.machine.memory.values[self.huge_pde_slot(k, n)]
        rights = ept_rights(value) if k.config.vmx else _npt_rights(value)
        if not rights:
            return (NONE, -1, 0)
        if value & (EPT_PS if k.config.vmx else PS):
            return (LEAF, pte_addr(value) & ~(HUGE - 1), rights)
        return (TABLE, -1, rights)

    def set_huge_pde(self, k: Step, n: int, kind: str, rights: int, why: str) -> None:
        """Store the region's PDE: the huge leaf with `rights`, the pointer to its table, or 0.
        The table's entries are cleared when the table is unlinked (handle_removed_pt: a table
        KVM links again is a fresh, empty one)."""
        base, hpa, _ = k.config.huge[n]
        slot = self.huge_pde_slot(k, n)
        old = self.huge_pde(k, n)[0]
        if kind == LEAF:
            value = (
                make_ept(hpa, rights, large=True)
                if k.config.vmx
                else make_npt(hpa, rights, large=True)
            )
            what = f"huge SPTE[{base:#x}] = {hpa:#x} 2 MiB ({rights_text(rights)})"
        elif kind == TABLE:
            value = next(
                v
                for v in k.config.layout.domains[slot]
                if v and not v & (EPT_PS if k.config.vmx else PS)
            )
            what = f"SPTE[{base:#x}] (level 2) = the region's 4 KiB table"
        else:
            value = 0
            what = f"SPTE[{base:#x}] (level 2) = 0"
        k.write_slot(slot, value, f"{why}: {what}")
        if old == TABLE and kind != TABLE:
            for gpa in self.region_frames(k, n):
                if _table_spte(self, k, gpa)[0] >= 0:
                    self.set_spte(k, gpa, -1, 0, "handle_removed_pt")  # type: ignore[attr-defined]

    def region_frames(self, k: Step, n: int) -> list[int]:
        base = k.config.huge[n][0]
        return [g for g in k.config.gpas if base <= g < base + HUGE]

    def disallowed_hugepage_adjust(self, k: Step, n: int) -> bool:
        """mmu.c:disallowed_hugepage_adjust @ v6.18: a fault that may map region `n` 2 MiB maps
        4 KiB instead while the region's table is linked and is a possible NX huge page."""
        return self.huge_pde(k, n)[0] == TABLE and bool(k.kvm.nx_huge >> n & 1)

    def spte(self, k: Step, gpa: int, root: int = 0) -> tuple[int, int]:
        """The frame's translation in the EPT/NPT: through the region's huge SPTE, through its
        4 KiB SPTE in the region's table, or none."""
        n = k.config.huge_region(gpa) if k.config.huge else -1
        if n < 0:
            return super().spte(k, gpa, root)  # type: ignore[misc, no-any-return]
        kind, hpa, rights = self.huge_pde(k, n)
        if kind == LEAF:
            return (hpa + gpa - k.config.huge[n][0], rights)
        if kind == NONE:
            return (-1, 0)
        return super().spte(k, gpa, root)  # type: ignore[misc, no-any-return]

    def thp_intact(self, k: Step, n: int) -> bool:
        """mmu.c:host_pfn_mapping_level @ v6.18 (transparent_hugepage_adjust @ v5.x): the host
        still maps the region with its huge page (no frame of it was zapped or migrated)."""
        base, hpa, _ = k.config.huge[n]
        return all(
            k.kvm.backing[k.config.gpa_index(g)] == hpa + g - base for g in self.region_frames(k, n)
        )

    def max_mapping_level(self, k: Step, n: int) -> int:
        """mmu.c:kvm_mmu_max_mapping_level @ v6.18 (mapping_level @ v5.x): 2 MiB while the host
        page is huge and the memslot does not log dirty pages (dirty logging tracks 4 KiB)."""
        logging = any(self.kvm_slot_dirty_track_enabled(k, g) for g in self.region_frames(k, n))  # type: ignore[attr-defined]
        return 2 if self.thp_intact(k, n) and not logging else 1

    # -- the MMU notifier's zap -------------------------------------------------------------------
    def kvm_unmap_gfn_range(self, k: Step, gpa: int) -> bool:
        """mmu.c:kvm_unmap_gfn_range @ v6.18 (kvm_unmap_rmapp over every level @ v5.x) for a
        frame of a region: a huge SPTE covering it is zapped whole; else its 4 KiB SPTE. While
        the host still maps the region with its huge page, taking one 4 KiB page away first
        splits it (mm/huge_memory.c:__split_huge_pmd), whose MMU-notifier invalidation covers
        the whole 2 MiB: every SPTE of the region goes (the two invalidations are one here; the
        second would find nothing left)."""
        n = k.config.huge_region(gpa) if k.config.huge else -1
        if n < 0:
            return super().kvm_unmap_gfn_range(k, gpa)  # type: ignore[misc, no-any-return]
        kind = self.huge_pde(k, n)[0]
        if kind == TABLE and self.thp_intact(k, n):
            zapped = False
            for g in self.region_frames(k, n):
                if _table_spte(self, k, g)[0] >= 0:
                    self.set_spte(k, g, -1, 0, "kvm_unmap_gfn_range: the THP split's range")  # type: ignore[attr-defined]
                    zapped = True
            if not zapped:
                k.note("kvm_unmap_gfn_range: no SPTE of the region present", "nothing to flush")
            return zapped
        if kind == LEAF:
            self.set_huge_pde(k, n, NONE, 0, "kvm_unmap_gfn_range: the huge SPTE")
            return True
        if kind == NONE:
            k.note(f"kvm_unmap_gfn_range({gpa:#x}): no SPTE present", "nothing to flush")
            return False
        if _table_spte(self, k, gpa)[0] < 0:
            k.note(f"kvm_unmap_gfn_range({gpa:#x}): no SPTE present", "nothing to flush")
            return False
        self.set_spte(k, gpa, -1, 0, "kvm_unmap_gfn_range")  # type: ignore[attr-defined]
        return True

    # -- dirty logging on -------------------------------------------------------------------------
    def kvm_tdp_mmu_write_protect(self, k: Step, gpa: int) -> bool:
        """x86.c:kvm_mmu_slot_apply_flags @ v6.18 for a region's memslot: dirty logging on for
        every frame of it; eager page splitting first (kvm_mmu_slot_try_split_huge_pages: the
        4 KiB SPTEs map what the huge one did, with its rights; no flush), then
        kvm_mmu_slot_remove_write_access on whichever SPTEs map the region. The caller flushes
        the memslot."""
        n = k.config.huge_region(gpa) if k.config.huge else -1
        if n < 0:
            return super().kvm_tdp_mmu_write_protect(k, gpa)  # type: ignore[misc, no-any-return]
        kind, _, rights = self.huge_pde(k, n)
        if kind == LEAF and self.eager_page_split(k):
            self.split_huge_spte(k, n, "eager page split (kvm_mmu_try_split_huge_pages)")
            kind = TABLE
        for g in self.region_frames(k, n):
            self.kvm_slot_log_dirty_on(k, g)  # type: ignore[attr-defined]
        if kind == LEAF:
            self.set_huge_pde(k, n, LEAF, rights & ~E_W, "write-protect the huge SPTE")
        elif kind == TABLE:
            for g in self.region_frames(k, n):
                h, r = _table_spte(self, k, g)
                if h >= 0:
                    self.set_spte(k, g, h, r & ~E_W, "write-protect for dirty logging")  # type: ignore[attr-defined]
        return True

    def split_huge_spte(self, k: Step, n: int, why: str) -> None:
        """tdp_mmu.c:tdp_mmu_split_huge_page @ v6.18 (mmu.c:shadow_mmu_split_huge_page with
        tdp_mmu=N): a table whose 4 KiB SPTEs map the huge page's pieces with its rights
        (make_huge_page_split_spte), linked in its place. The translations are the same, so
        no flush (stale huge entries still map the same pages)."""
        base, hpa, _ = k.config.huge[n]
        _, _, rights = self.huge_pde(k, n)
        for g in self.region_frames(k, n):
            self.set_spte(k, g, hpa + g - base, rights, why)  # type: ignore[attr-defined]
        self.set_huge_pde(k, n, TABLE, 0, why)

    # -- faults -----------------------------------------------------------------------------------
    def fast_page_fault(
        self, k: Step, vcpu: Vcpu, gpa: int, write: bool, hpa: int, rights: int
    ) -> bool:
        """mmu.c:fast_page_fault @ v6.18 for a frame under a huge SPTE: write permission is not
        restored in place on a huge SPTE while the memslot logs dirty pages (only one 4 KiB
        page would be marked dirty); the slow path maps the frame at 4 KiB. v5.x never fixes
        a huge SPTE here (its slow path then maps the same huge page writable)."""
        n = k.config.huge_region(gpa) if k.config.huge else -1
        if n >= 0 and self.huge_pde(k, n)[0] == LEAF:
            if not write or self.max_mapping_level(k, n) < 2:
                return False
            if not self.host_rights(k, gpa) & E_W:  # type: ignore[attr-defined]
                return False
            self.set_huge_pde(k, n, LEAF, rights | E_W, "fast_page_fault: restore W")
            return True
        return super().fast_page_fault(k, vcpu, gpa, write, hpa, rights)  # type: ignore[misc, no-any-return]

    def kvm_tdp_page_fault_map(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_tdp_page_fault @ v6.18 under mmu_lock, for a frame of a region: after the
        retry checks, map at the level kvm_mmu_max_mapping_level allows (huge_page_map)."""
        gpa = vcpu.frame[0] if vcpu.frame else -1
        n = k.config.huge_region(gpa) if k.config.huge and gpa >= 0 else -1
        if n < 0:
            super().kvm_tdp_page_fault_map(k, vcpu)  # type: ignore[misc]
            return
        _gpa, write, mmu_seq, pfn = vcpu.frame
        vcpu.frame = ()
        vcpu.pc = "vcpu_enter_guest"
        if self.mmu_invalidate_retry_gfn(k, mmu_seq):  # type: ignore[attr-defined]
            k.note(f"kvm_tdp_page_fault({gpa:#x}): mmu_invalidate_retry_gfn, retry")
            return
        hpa, rights = self.spte(k, gpa)
        if hpa >= 0 and (rights & E_W or not write):
            k.note(f"kvm_tdp_page_fault({gpa:#x}): another vCPU mapped it")
            return
        self.huge_page_map(k, vcpu, n, gpa, pfn, bool(write))

    def huge_page_map(self, k: Step, vcpu: Vcpu, n: int, gpa: int, pfn: int, write: bool) -> None:
        """tdp_mmu.c:kvm_tdp_mmu_map @ v6.18 (mmu.c:direct_map with tdp_mmu=N, __direct_map
        @ v5.x) for a frame of region `n`."""
        base, hpa, _ = k.config.huge[n]
        kind = self.huge_pde(k, n)[0]
        memslot = self.host_rights(k, gpa)  # type: ignore[attr-defined]
        level = self.max_mapping_level(k, n)
        if level == 2 and self.disallowed_hugepage_adjust(k, n):
            k.note(f"disallowed_hugepage_adjust({gpa:#x})", "an NX-split table is linked: 4 KiB")
            level = 1
        if level == 2:
            if kind == TABLE:
                # the table's 4 KiB translations may be cached: flush the huge page's range
                # (kvm_flush_remote_tlbs_gfn(kvm, gfn, level), gfn rounded to the level)
                self.set_huge_pde(k, n, LEAF, memslot, "map a 2 MiB SPTE over the table")
                self.kvm_flush_remote_tlbs_range_vcpu(  # type: ignore[attr-defined]
                    k, vcpu, base, PAGES_PER_HPAGE[2], "a table replaced by a huge SPTE"
                )
            else:
                self.set_huge_pde(k, n, LEAF, memslot, f"kvm_tdp_page_fault({gpa:#x}): 2 MiB")
            if write and self.kvm_slot_dirty_track_enabled(k, gpa):  # type: ignore[attr-defined]
                self.mark_page_dirty_in_slot(k, gpa)  # type: ignore[attr-defined]
            return
        if kind == LEAF:
            if self.rmap_tdp(k):
                # drop_large_spte(kvm, sptep, flush = true), then link a new, empty table
                self.set_huge_pde(k, n, NONE, 0, "drop_large_spte")
                start, pages = self.drop_large_spte_flush_range(k, base)
                self.kvm_flush_remote_tlbs_range_vcpu(  # type: ignore[attr-defined]
                    k, vcpu, start, pages, "drop_large_spte: the dropped SPTE's range"
                )
                self.set_huge_pde(k, n, TABLE, 0, "link_shadow_page")
            else:
                self.split_huge_spte(k, n, "kvm_tdp_mmu_map: tdp_mmu_split_huge_page")
        elif kind == NONE:
            self.set_huge_pde(k, n, TABLE, 0, "link a new table")
        self.set_spte(k, gpa, pfn if pfn >= 0 else hpa + gpa - base, memslot, "map 4 KiB")  # type: ignore[attr-defined]

    # -- dirty logging off: `collapse` (a host task) ------------------------------------------
    def kvm_mmu_slot_apply_flags_log_off(self, k: Step, task: HostTask) -> None:
        """x86.c:kvm_mmu_slot_apply_flags @ v6.18 with KVM_MEM_LOG_DIRTY_PAGES cleared:
        kvm_mmu_recover_huge_pages. The TDP MMU replaces the region's table by a huge SPTE made
        from its first present 4 KiB SPTE (recover_huge_pages_range, make_huge_spte) and
        flushes the memslot; the rmap MMU zaps the collapsible 4 KiB SPTEs
        (kvm_rmap_zap_collapsible_sptes)."""
        n = k.config.huge_region(task.gpa)
        for g in self.region_frames(k, n):
            k.kvm.log_dirty &= ~(1 << k.config.gpa_index(g))
        k.note(f"dirty logging off for the memslot of {k.config.huge[n][0]:#x}")
        if self.rmap_tdp(k):
            self.kvm_mmu_zap_collapsible_sptes(k, task, n)
            return
        if self.huge_pde(k, n)[0] != TABLE or not self.thp_intact(k, n):
            k.note("recover_huge_pages_range: nothing to recover")
            task.return_()
            return
        present = [_table_spte(self, k, g) for g in self.region_frames(k, n)]
        rights = next((r for h, r in present if h >= 0), 0)
        if not rights:
            k.note("recover_huge_pages_range: no present 4 KiB SPTE (-ENOENT)")
            task.return_()
            return
        self.set_huge_pde(k, n, LEAF, rights, "recover_huge_pages_range")
        self.kvm_flush_remote_tlbs_memslot(k, task)  # type: ignore[attr-defined]

    def kvm_mmu_zap_collapsible_sptes(self, k: Step, task: HostTask, n: int) -> None:
        """mmu.c:kvm_rmap_zap_collapsible_sptes -> kvm_mmu_zap_collapsible_spte @ v6.18
        (kvm_mmu_zap_collapsible_sptes @ v5.x): zap each 4 KiB SPTE of a direct page table
        whose page the host maps huge; with a range flush (Hyper-V) flush each zapped SPTE's
        range at once, else flush the memslot at the end."""
        if self.huge_pde(k, n)[0] != TABLE or not self.thp_intact(k, n):
            k.note("kvm_mmu_zap_collapsible_sptes: nothing to collapse")
            task.return_()
            return
        zapped = False
        for g in self.region_frames(k, n):
            if _table_spte(self, k, g)[0] < 0:
                continue
            self.set_spte(k, g, -1, 0, "kvm_mmu_zap_collapsible_spte")  # type: ignore[attr-defined]
            if self.hv_flush_available(k):  # type: ignore[attr-defined]
                start, pages = self.zap_collapsible_flush_range(k, g)
                why = "kvm_mmu_zap_collapsible_spte: the zapped SPTE's range"
                self.hv_flush_list(k, start, pages, why)  # type: ignore[attr-defined]
            else:
                zapped = True
        if zapped:
            self.kvm_flush_remote_tlbs_memslot(k, task)  # type: ignore[attr-defined]
        else:
            task.return_()

    # -- NX huge page recovery: `recover_nx` (a host task) ---------------------------------------
    def kvm_recover_nx_huge_pages(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_recover_nx_huge_pages @ v6.18: take mmu_lock (for read with the TDP MMU, for
        write with the rmap MMU: either way an MMU-notifier zap, which takes it for write,
        waits) and recover the first table on the list."""
        if not k.kvm.nx_huge:
            k.note("kvm_recover_nx_huge_pages: no possible NX huge page", "nothing to zap")
            task.return_()
            return
        k.kvm.mmu_lock = True
        k.note("lock(&kvm->mmu_lock)", "kvm_recover_nx_huge_pages")
        self.nx_recover_one(k, task, 0)

    def nx_recover_one(self, k: Step, task: HostTask, flush: int) -> None:
        """One turn of kvm_recover_nx_huge_pages's loop @ v6.18: the list's first table comes off
        it (unaccount_nx_huge_page) and is zapped unless its memslot logs dirty pages; the zap's
        flush joins the pending one."""
        n = (k.kvm.nx_huge & -k.kvm.nx_huge).bit_length() - 1
        k.kvm.nx_huge &= ~(1 << n)
        base = k.config.huge[n][0]
        if self.nx_recovery_skips(k, n):
            k.note(
                f"kvm_recover_nx_huge_pages: the table of {base:#x} logs dirty pages",
                "unaccount_nx_huge_page only: dirty logging off recovers it",
            )
        elif self.nx_zap_sp(k, n):
            flush = 1
        task.frame = (flush,)
        task.goto("kvm_recover_nx_huge_pages:yield")

    def nx_recovery_skips(self, k: Step, n: int) -> bool:
        """mmu.c:kvm_mmu_sp_dirty_logging_enabled @ v6.18: the table's memslot logs dirty
        pages (its 4 KiB SPTEs would only fault back in as 4 KiB)."""
        return bool(self.kvm_slot_dirty_track_enabled(k, k.config.huge[n][0]))  # type: ignore[attr-defined]

    def nx_zap_sp(self, k: Step, n: int) -> bool:
        """tdp_mmu.c:kvm_tdp_mmu_zap_possible_nx_huge_page @ v6.18 (mmu.c:kvm_mmu_prepare_zap_page
        with the rmap MMU): clear the region's PDE if it still points at the table, dropping
        the table's 4 KiB SPTEs with it; whether a remote flush is owed."""
        base = k.config.huge[n][0]
        if self.huge_pde(k, n)[0] != TABLE:
            k.note(f"the PDE of {base:#x} no longer points at the table", "nothing to zap")
            return False
        self.set_huge_pde(k, n, NONE, 0, "kvm_recover_nx_huge_pages: zap the NX-split table")
        return True

    def kvm_recover_nx_huge_pages_yield(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_recover_nx_huge_pages @ v6.18 after a table: with more tables to go, flush
        what is pending and yield mmu_lock (kvm_mmu_remote_flush_or_zap, then
        cond_resched_rwlock_read/write: the model always yields here); after the last, flush
        what is pending."""
        (flush,) = task.frame
        if k.kvm.nx_huge:
            self.nx_flush_before_yield(k, task, flush)
        else:
            self.nx_recovery_finish(k, task, flush)

    def nx_recovery_finish(self, k: Step, task: HostTask, flush: int) -> None:
        """kvm_mmu_remote_flush_or_zap(kvm, &invalid_list, flush) after the loop @ v6.18: the
        flush still owed, then the unlock."""
        task.frame = ()
        if flush:
            task.call("kvm_flush_remote_tlbs", "kvm_recover_nx_huge_pages:done")
        else:
            task.goto("kvm_recover_nx_huge_pages:done")

    def nx_flush_before_yield(self, k: Step, task: HostTask, flush: int) -> None:
        """kvm_mmu_remote_flush_or_zap(kvm, &invalid_list, flush) before cond_resched_*: the
        pending flush is done while mmu_lock is still held."""
        task.frame = ()
        if flush:
            k.note("kvm_recover_nx_huge_pages: a flush is pending, flush before yielding")
            task.call("kvm_flush_remote_tlbs", "kvm_recover_nx_huge_pages:unlock")
        else:
            task.goto("kvm_recover_nx_huge_pages:unlock")

    def kvm_recover_nx_huge_pages_unlock(self, k: Step, task: HostTask) -> None:
        """cond_resched_rwlock_read/write @ v6.18 (cond_resched_lock @ v5.x): mmu_lock is free
        until the worker runs again. `frame` keeps a flush still pending."""
        k.kvm.mmu_lock = False
        k.note("cond_resched: mmu_lock yielded")
        task.goto("kvm_recover_nx_huge_pages:relock")

    def kvm_recover_nx_huge_pages_relock(self, k: Step, task: HostTask) -> None:
        """mmu_lock again, and the next table on the list (another recovery may have emptied
        it meanwhile: then the loop ends)."""
        flush = task.frame[0] if task.frame else 0
        k.kvm.mmu_lock = True
        k.note("lock(&kvm->mmu_lock)", "kvm_recover_nx_huge_pages resumes")
        if k.kvm.nx_huge:
            self.nx_recover_one(k, task, flush)
        else:
            self.nx_recovery_finish(k, task, flush)

    def kvm_recover_nx_huge_pages_done(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_recover_nx_huge_pages @ v6.18: unlock after the last flush."""
        k.kvm.mmu_lock = False
        k.note("unlock(&kvm->mmu_lock)")
        task.return_()


def _table_spte(self: object, k: Step, gpa: int) -> tuple[int, int]:
    """The frame's 4 KiB SPTE in the region's table, whatever the region's PDE holds."""
    return Mmu.spte(self, k, gpa)  # type: ignore[arg-type]


class HugePages58:
    """v5.7 / v5.8: the rmap MMU always manages EPT/NPT (the TDP MMU came in v5.10), there is no
    eager page splitting (v5.17 for the TDP MMU), and the range of a dropped SPTE's flush is
    computed from the page table holding it: historical bug #15 (Hou Wenlong, "KVM: x86/mmu:
    Fix wrong start gfn of tlb flushing with range", 1b2dc7360463, v6.3; Fixes c3134ce240ee,
    v5.1)."""

    def rmap_tdp(self, k: Step) -> bool:
        return True

    def eager_page_split(self, k: Step) -> bool:
        return False

    def drop_large_spte_flush_range(self, k: Step, base: int) -> tuple[int, int]:
        """mmu.c:drop_large_spte @ v5.7/v5.8: kvm_flush_remote_tlbs_with_address(kvm, sp->gfn,
        KVM_PAGES_PER_HPAGE(sp->role.level)), sp the page directory holding the huge SPTE:
        its base GFN is that of the 1 GiB region, not of the dropped 2 MiB page."""
        return base & ~(GIB - 1), PAGES_PER_HPAGE[2]

    def disallowed_hugepage_adjust(self, k: Step, n: int) -> bool:
        """mmu.c:disallowed_hugepage_adjust @ v5.7/v5.8: with the NX mitigation on (a scenario
        with a region declared nx), any linked table keeps a fault at 4 KiB, whether or not an
        exec fault split it."""
        return self.huge_pde(k, n)[0] == TABLE and bool(k.config.nx_huge)  # type: ignore[attr-defined]

    def nx_recovery_skips(self, k: Step, n: int) -> bool:
        """mmu.c:kvm_recover_nx_lpages @ v5.7/v5.8 zaps every table it takes off the list
        (lpage_disallowed_mmu_pages), dirty logging or not."""
        return False

    def zap_collapsible_flush_range(self, k: Step, gpa: int) -> tuple[int, int]:
        """mmu.c:kvm_mmu_zap_collapsible_spte @ v5.7/v5.8: kvm_flush_remote_tlbs_with_address(
        kvm, sp->gfn, KVM_PAGES_PER_HPAGE(sp->role.level)), sp the page table holding the
        zapped 4 KiB SPTE: one page at the table's base GFN, not at the SPTE's."""
        return gpa & ~(HUGE - 1), PAGES_PER_HPAGE[1]


__all__ = ["HUGE", "PAGES_PER_HPAGE", "HugePages", "HugePages58"]
