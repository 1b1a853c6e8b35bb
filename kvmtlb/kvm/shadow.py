"""KVM's shadow MMU (EPT/NPT off), as far as translation and flushing need it.

Ports arch/x86/kvm/mmu/mmu.c, paging_tmpl.h and spte.c @ v6.18 for 4-level guests with 4 KiB
pages. KVM keeps a shadow page table per guest page table (shadow pages are keyed by the guest
table's frame and role): the processor walks the shadow tables (hardware CR3 = the shadow root),
whose last-level SPTEs map a GVA straight to the host page of the guest frame the guest's PTE
names. The model's shadow hierarchies (kvmtlb.model.system builds them) mirror the guest's tables
one for one:

- upper-level shadow entries are present from the start; the guest's stores to a PDE, PDPTE
  or PML4E (`link`, `unlink`) are emulated, and the shadow entry they shadow is zapped
  (kvm_mmu_track_write); the next fault links, level by level, the shadow page of the table
  the guest's entry then names (FNAME(fetch)); shadow pages are keyed by the guest table they
  shadow, so a table page two page tables share (at any level) has one shadow page;
- each last-level shadow page is synced (its guest table write-protected: a guest store to it
  exits and KVM unsyncs the page, mmu_try_to_unsync_pages) or unsync (`Kvm.unsync`: the guest
  writes its PTEs freely, and the SPTEs may be stale until a sync point: INVLPG, MOV CR3 with
  flush, INVPCID, a guest TLB flush, kvm_mmu_load);
- the rmap (a GFN to the SPTEs that map it) is the reverse of the SPTE values: every host page
  belongs to one guest frame (`KvmConfig.frame_of`).

- a last-level table page the scenario places in a guest frame (`[tables]`,
  `KvmConfig.table_frame`) is reached by the guest's stores through its own mapping of that frame
  (`self_map_gva`): write protection is then the SPTEs of that mapping (read-only while the page
  is synced), FNAME(fetch) unsyncs the page when it makes such an SPTE writable, and
  mmu_sync_children write-protects the frame and flushes every vCPU before it syncs. Without
  `[tables]` a store to a synced table is an exit, not an access through a translation.

- the guest's CR0.WP (`set_cr0`) is KVM's to emulate: the processor keeps WP = 1,
  FNAME(page_fault) makes writable supervisor-only SPTEs for WP = 0, and a WP change resets the
  MMU. CR0.WP is a role bit (role.cr0_wp): a scenario that clears it has a second set of shadow
  hierarchies (`KvmConfig.wp_roles`; hierarchy len(roots) + g shadows guest page table g for
  role WP = 0), and a vCPU's roots are of the role kvm_mmu_load allocated them with
  (`Vcpu.root_wp`). Write tracking, unsync and the rmap reach the pages of both roles; a sync
  reaches those under the vCPU's roots.

- a guest 2 MiB page (PDE.PS) is mapped through a direct shadow page (role.direct): 4 KiB SPTEs
  for the frames at the GVAs' offsets, linked under the shadow page of the guest's page
  directory (FNAME(fetch), `link_direct_sp`; one per hierarchy and region). It is never unsync;
  the guest's store to the PDE exits like any upper-level store, and kvm_mmu_track_write zaps
  the shadow PDE and flushes every vCPU.

What is not modelled: huge SPTEs; guest A/D bits; the
shadow page lifecycle (pages are never zapped or reallocated, so a root KVM "frees" comes back
with its unsync pages, which kvm_mmu_load syncs, as KVM's hash lookup finds them).
"""

from __future__ import annotations

from typing import Any

from kvmtlb.hw.addr import ENTRY_NAMES, region
from kvmtlb.hw.cpu import CR3_NOFLUSH, CR4_PCIDE, CR4_SMEP
from kvmtlb.hw.paging import E_W, PS, RW, US, XD, P, make_pte, pte_addr
from kvmtlb.hw.vmx import Vmwrite
from kvmtlb.hw.walk import ACCESS_KINDS
from kvmtlb.kvm.context import KvmConfig, Step, vm_exit_event
from kvmtlb.kvm.requests import (
    KVM_REQ_LOAD_MMU_PGD,
    KVM_REQ_MMU_SYNC,
    KVM_REQ_TLB_FLUSH,
    KVM_REQ_TLB_FLUSH_CURRENT,
    KVM_REQ_TLB_FLUSH_GUEST,
    kvm_make_request,
)
from kvmtlb.kvm.state import EXITING_GUEST_MODE, IN_GUEST_MODE, Vcpu
from kvmtlb.kvm.x86 import EXIT_EXTERNAL_INTERRUPT

KVM_MMU_NUM_PREV_ROOTS = 3  # kvm_host.h @ v6.18 (and v5.7/v5.8)
HUGE_PAGE = 1 << 21  # a guest 2 MiB page (PDE.PS)
CR3_PCID_MASK = 0xFFF


def spte_from_gpte(gpte: int, hpa: int, writable: bool) -> int:
    """spte.c:make_spte @ v6.18 (mmu.c:set_spte @ v5.x) for a 4 KiB shadow SPTE: the host page,
    the guest PTE's U/S and XD, write permission only when `writable`; never G: KVM does not mark
    global entries in shadow page tables (the reason kvm_handle_invpcid treats a non-global flush
    as a global one)."""
    return make_pte(hpa, writable=writable, user=bool(gpte & US), executable=not gpte & XD)


def self_map_gva(cfg: KvmConfig, values: Any, current: int, root: int, gva: int) -> int:
    """The GVA through which the guest's store to the PTE of `gva` in page table `root` goes,
    when the vCPU runs on page table `current`: a GVA whose present, writable guest PTE (as
    `current`'s PDE resolves it) names the frame `[tables]` gives that table page. -1 when the
    file places no such frame, or `current` does not map it writable (the store is then modelled
    as a trap on a synced table, as without `[tables]`)."""
    if not cfg.table_frame or gva >> 21 or cfg.table_frame[root] < 0:
        return -1
    frame = cfg.table_frame[root]
    for s in cfg.gvas:
        t = cfg.table_owners(values, cfg.roots, current, s)
        if t < 0:
            continue
        gpte = int(values[cfg.layout.slot(cfg.roots[t], s)])
        if gpte & P and gpte & RW and pte_addr(gpte) == frame:
            return s
    return -1


def vcpu_sender(vcpu: Vcpu) -> int:
    """A vCPU's bit in Pcpu.kicks (bit 0 is the host thread's)."""
    return 1 << (vcpu.id + 1)


class ShadowMmu:
    """mmu.c / paging_tmpl.h: shadow pages, their sync, and the intercepted guest operations."""

    # -- where things are ------------------------------------------------------------------------
    def kvm_get_active_pcid(self, k: Step, vcpu: Vcpu) -> int:
        """x86.h:kvm_get_active_pcid @ v6.18: the PCID of the guest's CR3 when CR4.PCIDE."""
        return self.kvm_get_pcid(k, vcpu, vcpu.cr3)

    def kvm_get_pcid(self, k: Step, vcpu: Vcpu, cr3: int) -> int:
        """x86.h:kvm_get_pcid @ v6.18."""
        cr4: int = self.kvm_read_cr4(k, vcpu)  # type: ignore[attr-defined]
        return cr3 & CR3_PCID_MASK if cr4 & CR4_PCIDE else 0

    def cr3_operand(self, k: Step, vcpu: Vcpu, cr3: int) -> tuple[int, bool, int]:
        """x86.c:kvm_set_cr3 @ v6.18 (v5.x alike), its decoding of the source: with CR4.PCIDE,
        bit 63 asks for no flush and is not part of CR3. Returns (CR3, no flush, PCID)."""
        pcide = bool(self.kvm_read_cr4(k, vcpu) & CR4_PCIDE)  # type: ignore[attr-defined]
        noflush = pcide and bool(cr3 & CR3_NOFLUSH)
        cr3 &= ~CR3_NOFLUSH
        return cr3, noflush, cr3 & CR3_PCID_MASK if pcide else 0

    def sroot(self, k: Step, vcpu: Vcpu, g: int) -> int:
        """The shadow hierarchy of guest page table `g` the vCPU's roots use: that of their role
        (role.cr0_wp, KvmConfig.shadow_index)."""
        return k.config.shadow_index(g, vcpu.root_wp)

    def sptep(self, k: Step, s: int, gva: int) -> int:
        """The slot of the last-level SPTE of `gva` in shadow hierarchy `s` (guest page table
        guest_of(s)'s shadow pages of one role; without set_cr0 wp=0, s is the guest root)."""
        return k.config.layout.slot(k.config.shadow_roots[s], gva)

    def gpte(self, k: Step, root: int, gva: int) -> int:
        """The guest's current PTE for `gva` in its page table `root` (guest memory)."""
        slot = k.config.layout.slot(k.config.roots[root], gva)
        return int(k.machine.memory.values[slot])

    def guest_leaf(self, k: Step, chain: tuple[int, ...], gva: int) -> tuple[int, int]:
        """FNAME(walk_addr) @ v6.18 from the end of a walk `chain` (KvmConfig.table_chain):
        the guest's leaf entry for `gva` and the GPA it maps. A walk that stops at the PDE
        (a chain of two) ends at a 2 MiB page if that PDE is present with PS = 1: the GPA is
        the page's base plus the GVA's offset in it (the guest's walker takes the large page's
        gfn, gw->gfn, at that offset). Anything else is a not-present leaf."""
        if len(chain) == 3:
            gpte = self.gpte(k, chain[2], gva)
            return gpte, pte_addr(gpte)
        if len(chain) == 2:
            slot = k.config.layout.slot(k.config.roots[chain[1]], gva, 2)
            pde = int(k.machine.memory.values[slot])
            if pde & P and pde & PS:
                return pde, (pte_addr(pde) & ~(HUGE_PAGE - 1)) + (gva & (HUGE_PAGE - 1))
        return 0, -1

    def guest_pde_target(self, k: Step, root: int, gva: int) -> int:
        """Whose last-level table page the guest's walk of `gva` from page table `root` reaches
        through its PML4E, PDPTE and PDE (a root index; -1: one is not present)."""
        return k.config.table_owners(k.machine.memory.values, k.config.roots, root, gva)

    def shadow_entry_slot(self, k: Step, s: int, gva: int, level: int) -> int:
        """The slot of the level-`level` shadow entry of `gva` in shadow hierarchy `s`'s page of
        that level (the shadow page of that guest table, of one role)."""
        return k.config.layout.slot(k.config.shadow_roots[s], gva, level)

    def shadow_pde_target(self, k: Step, s: int, gva: int) -> int:
        """The same for the shadow walk from hierarchy `s`: the shadow hierarchy whose last-level
        page the shadow PML4E, PDPTE and PDE link (-1: one is zapped)."""
        return k.config.table_owners(k.machine.memory.values, k.config.shadow_roots, s, gva)

    def sp_unsync(self, k: Step, s: int, gva: int) -> bool:
        return bool(k.kvm.unsync >> self.sp_bit(k, s, gva) & 1)

    def sp_bit(self, k: Step, s: int, gva: int) -> int:
        return k.config.spt_bit[s][k.config.gvas.index(gva)]

    def sp_gvas(self, k: Step, s: int, bit: int) -> list[int]:
        """The GVAs whose SPTEs live in last-level shadow page `bit` of hierarchy `s`."""
        return [g for i, g in enumerate(k.config.gvas) if k.config.spt_bit[s][i] == bit]

    def table_root(self, k: Step, gpa: int) -> int:
        """The page table whose last-level table page of the first region `[tables]` places in
        guest frame `gpa` (-1: none; the frame is not a guest page table KVM shadows)."""
        frames = k.config.table_frame
        return frames.index(gpa) if gpa >= 0 and gpa in frames else -1

    def table_sp_bit(self, k: Step, s: int) -> int:
        """The last-level shadow page of hierarchy `s` that shadows that table page of its guest
        page table (-1: no GVA of the scenario lives in the first region, so nothing shadows
        it)."""
        for i, gva in enumerate(k.config.gvas):
            if not gva >> 21:
                return k.config.spt_bit[s][i]
        return -1

    def table_synced(self, k: Step, table: int) -> bool:
        """Whether some shadow page of guest page table `table`'s `[tables]` page (of either
        role) is synced: its guest table is then write-protected (mmu_try_to_unsync_pages with
        can_unsync false fails on the first synced page of the GFN)."""
        bits = [self.table_sp_bit(k, s) for s in k.config.shadows_of(table)]
        return any(bit >= 0 and not k.kvm.unsync >> bit & 1 for bit in bits)

    def sp_frame(self, k: Step, s: int, bit: int) -> int:
        """sp->gfn for last-level shadow page `bit` of hierarchy `s`: its guest table's `[tables]`
        frame, or -1 when the file does not place it (no mapping of it to write-protect)."""
        frames = k.config.table_frame
        g = k.config.guest_of(s)
        if frames and frames[g] >= 0 and self.table_sp_bit(k, s) == bit:
            return frames[g]
        return -1

    def set_shadow_spte(self, k: Step, s: int, gva: int, value: int, why: str) -> None:
        slot = self.sptep(k, s, gva)
        if k.machine.memory.values[slot] == value:
            return
        what = f"{pte_addr(value):#x}{' rw' if value & RW else ' ro'}" if value & P else "0"
        k.write_slot(slot, value, f"{why}: SPTE[{gva:#x}] = {what}")

    # -- guest page-table writes: write tracking and unsync ---------------------------------------
    def kvm_emulate_guest_pt_write(
        self, k: Step, vcpu: Vcpu, root: int, gva: int, level: int, value: int
    ) -> None:
        """A store to a guest paging entry that KVM's emulator does: always for a PDE, PDPTE or
        PML4E (an upper-level shadow page never goes unsync, so the guest's store faults and is
        emulated), and for a PTE when the instruction itself is emulated (`map ... emulated`).
        The store, then the page-track notifier."""
        self.emulator_write_phys(k, root, gva, level, value)
        self.kvm_mmu_track_write(k, vcpu, root, gva, level)

    def emulator_write_phys(self, k: Step, root: int, gva: int, level: int, value: int) -> None:
        """x86.c:emulator_write_phys @ v6.18: the guest's level-`level` entry of `gva` (1: the
        PTE, 2: the PDE, 3: the PDPTE, 4: the PML4E) in page table `root` takes the new
        value."""
        slot = k.config.layout.slot(k.config.roots[root], gva, level)
        what = ENTRY_NAMES[level]
        k.write_slot(slot, value, f"emulated store: guest {what} of {gva:#x} = {value:#x}")

    def kvm_mmu_track_write(self, k: Step, vcpu: Vcpu, root: int, gva: int, level: int) -> None:
        """mmu.c:kvm_mmu_track_write @ v6.18 (kvm_mmu_pte_write @ v5.x): in the shadow page of
        the written table, synced or unsync and at whatever level, the shadow entry of the
        written entry is zapped (mmu_page_zap_pte; for a PDE, PDPTE or PML4E this unlinks the
        child shadow page), and a zapped present entry is flushed on every vCPU
        (kvm_mmu_remote_flush_or_zap; v5.x need_remote_flush: a present entry zapped, then
        kvm_flush_remote_tlbs). v5.x may then prefetch a new guest PTE (mmu_pte_write_new_pte),
        an optional fill the model leaves to the next fault."""
        if k.config.tdp:
            return
        flush = False
        for s in k.config.shadows_of(root):  # every shadow page of the table, of either role
            slot = self.shadow_entry_slot(k, s, gva, level)
            if not k.machine.memory.values[slot] & P:
                continue
            what = "SPTE" if level == 1 else f"shadow {ENTRY_NAMES[level]} of"
            k.write_slot(slot, 0, f"kvm_mmu_track_write: zap the {what} {gva:#x}")
            flush = True
        if flush:
            self.kvm_flush_remote_tlbs_vcpu(k, vcpu, "kvm_mmu_remote_flush_or_zap")

    def kvm_mmu_track_write_fault(self, k: Step, vcpu: Vcpu, root: int, gva: int) -> None:
        """The guest stored to a write-protected (synced) guest page table: the #PF exit's
        FNAME(page_fault) -> make_spte -> mmu_try_to_unsync_pages @ v6.18 (mmu_need_write_protect
        @ v5.x): a last-level shadow page may go unsync (kvm_unsync_page), and the guest's store,
        retried, goes through without exiting."""
        self.mmu_try_to_unsync_pages(k, root, gva)

    def mmu_try_to_unsync_pages(self, k: Step, root: int, gva: int) -> None:
        """mmu.c:mmu_try_to_unsync_pages @ v6.18: mark the shadow pages of the written table
        (one per role) unsync."""
        for s in k.config.shadows_of(root):
            k.kvm.unsync |= 1 << self.sp_bit(k, s, gva)
        k.note(
            f"mmu_try_to_unsync_pages: the shadow page for {gva:#x} is unsync",
            "the guest writes that page table without exits until it is synced",
        )

    def mmu_try_to_unsync_gfn(self, k: Step, gpa: int) -> None:
        """mmu.c:mmu_try_to_unsync_pages @ v6.18 called with the frame (make_spte of a writable
        mapping of a shadowed guest table): its last-level shadow page goes unsync, if synced."""
        for s in k.config.shadows_of(self.table_root(k, gpa)):
            bit = self.table_sp_bit(k, s)
            if bit >= 0 and not k.kvm.unsync >> bit & 1:
                k.kvm.unsync |= 1 << bit
                k.note(
                    f"mmu_try_to_unsync_pages({gpa:#x}): the shadow page of that guest table is "
                    "unsync",
                    "its mapping may be writable: the guest's stores to it do not exit",
                )

    # -- sync -------------------------------------------------------------------------------------
    def kvm_sync_spte(self, k: Step, s: int, gva: int) -> bool:
        """paging_tmpl.h:FNAME(sync_spte) @ v6.18: bring one SPTE of an unsync page in line with
        its guest PTE: drop it if the guest PTE is not present or names another frame, else keep
        the page and take the guest's rights (write only if the SPTE had it). Returns whether the
        SPTE changed (the caller flushes)."""
        slot = self.sptep(k, s, gva)
        spte = int(k.machine.memory.values[slot])
        if not spte & P:
            return False
        gpte = self.gpte(k, k.config.guest_of(s), gva)
        hpa = pte_addr(spte)
        if not gpte & P or k.config.frame_of_page(hpa) != pte_addr(gpte):
            self.set_shadow_spte(k, s, gva, 0, "FNAME(sync_spte): guest PTE changed, drop")
            return True
        writable = bool(spte & RW) and bool(gpte & RW)
        table = self.table_root(k, pte_addr(gpte))
        if writable and table >= 0 and self.table_synced(k, table):
            # make_spte with synchronizing: mmu_try_to_unsync_pages may not unsync, so a
            # mapping of a synced guest table stays write-protected
            writable = False
        new = spte_from_gpte(gpte, hpa, writable)
        if new == spte:
            return False
        self.set_shadow_spte(k, s, gva, new, "FNAME(sync_spte): new access rights")
        return True

    def kvm_sync_page(self, k: Step, s: int, bit: int) -> bool:
        """mmu.c:kvm_sync_page / __kvm_sync_page @ v6.18: the page is synced again (its guest
        table write-protected), each SPTE through FNAME(sync_spte). Returns whether to flush."""
        k.kvm.unsync &= ~(1 << bit)
        flush = False
        for gva in self.sp_gvas(k, s, bit):
            flush |= self.kvm_sync_spte(k, s, gva)
        return flush

    def mmu_sync_children(self, k: Step, vcpu: Vcpu, root: int) -> None:
        """mmu.c:mmu_sync_children @ v6.18 (v5.7/v5.8 alike): write-protect the guest table of
        every unsync page under the root (kvm_vcpu_write_protect_gfn; rmap_write_protect @
        v5.x) and, if a mapping of one lost write permission, flush every vCPU and wait
        (kvm_mmu_remote_flush_or_zap; kvm_flush_remote_tlbs @ v5.x) before reading the guest's
        PTEs; then sync each page, and flush if an SPTE changed."""
        pages = [(t, bit) for t, bit in self.reachable_pages(k, root) if k.kvm.unsync >> bit & 1]
        protected = False
        for t, bit in pages:
            frame = self.sp_frame(k, t, bit)
            if frame >= 0:
                protected |= self.kvm_vcpu_write_protect_gfn(k, frame)
        if protected:
            self.kvm_mmu_remote_flush(k, vcpu, "mmu_sync_children: guest tables write-protected")
        flush = False
        for t, bit in pages:
            k.note(f"mmu_sync_children: sync the last-level shadow page {bit}")
            flush |= self.kvm_sync_page(k, t, bit)
        if flush:
            self.kvm_mmu_sync_flush(k, vcpu)

    def reachable_pages(self, k: Step, root: int) -> list[tuple[int, int]]:
        """The last-level shadow pages the shadow PDEs of `root` link, as (owning root, bit)."""
        out: list[tuple[int, int]] = []
        for gva in k.config.gvas:
            t = self.shadow_pde_target(k, root, gva)
            if t >= 0:
                page = (t, self.sp_bit(k, t, gva))
                if page not in out:
                    out.append(page)
        return sorted(out, key=lambda p: p[1])

    def kvm_mmu_sync_flush(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_remote_flush_or_zap @ v6.18: SPTEs changed, flush every vCPU."""
        self.kvm_flush_remote_tlbs_vcpu(k, vcpu, "kvm_mmu_remote_flush_or_zap")

    def kvm_mmu_sync_roots(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_sync_roots @ v6.18: sync the unsync pages under the current root."""
        if k.config.tdp or not vcpu.root_valid:
            return
        self.mmu_sync_children(k, vcpu, self.sroot(k, vcpu, k.config.root_index(vcpu.cr3)))

    def kvm_mmu_sync_prev_roots(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_sync_prev_roots @ v6.18: the same for every cached root."""
        if k.config.tdp:
            return
        for pgd in vcpu.prev_roots:
            self.mmu_sync_children(k, vcpu, self.sroot(k, vcpu, k.config.root_index(pgd)))

    def kvm_flush_remote_tlbs_vcpu(self, k: Step, vcpu: Vcpu, why: str) -> None:
        """kvm_main.c:kvm_flush_remote_tlbs @ v6.18 called by a vCPU's own KVM code: the request
        on every vCPU and a kick for those in guest mode. The caller does not wait here: what a
        sync drops is also stale natively until the guest's own flush, which other vCPUs run
        themselves."""
        for other in k.vcpus:
            kvm_make_request(other, KVM_REQ_TLB_FLUSH)
            if other.mode == IN_GUEST_MODE and other.cpu >= 0:
                other.mode = EXITING_GUEST_MODE
                k.pcpus[other.cpu].kicks |= vcpu_sender(vcpu)
        k.note("kvm_flush_remote_tlbs: KVM_REQ_TLB_FLUSH to every vCPU", why)

    def kvm_mmu_remote_flush(self, k: Step, vcpu: Vcpu, why: str) -> None:
        """kvm_main.c:kvm_flush_remote_tlbs @ v6.18 from a vCPU that must not go on before every
        other vCPU left guest mode (KVM_REQ_TLB_FLUSH waits for its IPIs): the request on every
        vCPU, and each one running guest code takes the IPI now, a VM exit; it flushes before it
        enters again. Taking the IPIs at once leaves out only interleavings in which a target
        acts before its IPI lands, which are the same as the target acting before the flush."""
        for other in k.vcpus:
            kvm_make_request(other, KVM_REQ_TLB_FLUSH)
        k.note("kvm_flush_remote_tlbs: KVM_REQ_TLB_FLUSH to every vCPU, and wait", why)
        for other in k.vcpus:
            if other is vcpu or other.cpu < 0 or other.pc != "guest":
                continue
            k.hw(other.cpu, vm_exit_event(k.config.vmx, "IPI"))
            self.vcpu_exit(k, other, EXIT_EXTERNAL_INTERRUPT, (), cause="kick IPI")  # type: ignore[attr-defined]
            self.ack_kicks(k, other.cpu)  # type: ignore[attr-defined]

    # -- INVLPG and INVPCID -----------------------------------------------------------------------
    def kvm_mmu_invalidate_addr(self, k: Step, vcpu: Vcpu, gva: int, roots: list[int]) -> None:
        """mmu.c:kvm_mmu_invalidate_addr @ v6.18: flush_tlb_gva, then in each of `roots` (guest
        root indices) the SPTE of `gva` if its shadow page is unsync (kvm_sync_spte; a change is
        flushed on every vCPU, kvm_flush_remote_tlbs_sptep)."""
        self.kvm_x86_call(k, "flush_tlb_gva", vcpu, gva)  # type: ignore[attr-defined]
        if k.config.tdp:
            return
        changed = False
        for r in roots:
            t = self.shadow_pde_target(k, self.sroot(k, vcpu, r), gva)
            if t >= 0 and self.sp_unsync(k, t, gva):
                changed |= self.kvm_sync_spte(k, t, gva)
        if changed:
            self.kvm_flush_remote_tlbs_vcpu(k, vcpu, "kvm_flush_remote_tlbs_sptep")

    def valid_roots(self, k: Step, vcpu: Vcpu) -> list[int]:
        """The guest-root indices of the current root (if valid) and of every cached root."""
        cur = [k.config.root_index(vcpu.cr3)] if vcpu.root_valid else []
        return cur + [k.config.root_index(p) for p in vcpu.prev_roots]

    def kvm_mmu_invlpg(self, k: Step, vcpu: Vcpu, gva: int) -> None:
        """mmu.c:kvm_mmu_invlpg @ v6.18: INVLPG invalidates the address in every PCID, so every
        root, current and cached (KVM_MMU_ROOTS_ALL)."""
        self.kvm_mmu_invalidate_addr(k, vcpu, gva, self.valid_roots(k, vcpu))

    def kvm_mmu_invpcid_gva(self, k: Step, vcpu: Vcpu, gva: int, pcid: int) -> None:
        """mmu.c:kvm_mmu_invpcid_gva @ v6.18: the roots whose PCID is `pcid`."""
        roots = []
        if vcpu.root_valid and pcid == self.kvm_get_active_pcid(k, vcpu):
            roots.append(k.config.root_index(vcpu.cr3))
        for pgd in vcpu.prev_roots:
            if self.kvm_get_pcid(k, vcpu, pgd) == pcid:
                roots.append(k.config.root_index(pgd))
        if roots:
            self.kvm_mmu_invalidate_addr(k, vcpu, gva, roots)

    def kvm_handle_invpcid(self, k: Step, vcpu: Vcpu, kind: int, pcid: int, gva: int) -> None:
        """x86.c:kvm_handle_invpcid @ v6.18: individual address (type 0) through
        kvm_mmu_invpcid_gva; single context (1) as kvm_invalidate_pcid; all contexts, with or
        without globals (2, 3), a guest TLB flush (shadow SPTEs are never global, so type 3 is
        type 2)."""
        k.note(f"kvm_handle_invpcid(type {kind}, pcid {pcid})")
        if kind == 0:
            self.kvm_mmu_invpcid_gva(k, vcpu, gva, pcid)
        elif kind == 1:
            self.kvm_invalidate_pcid(k, vcpu, pcid)  # type: ignore[attr-defined]
        else:
            kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_GUEST)
            k.note("kvm_make_request(KVM_REQ_TLB_FLUSH_GUEST)", "INVPCID all contexts")

    # -- CR3 and roots ----------------------------------------------------------------------------
    def kvm_mmu_new_pgd(self, k: Step, vcpu: Vcpu, new_pgd: int) -> None:
        """mmu.c:kvm_mmu_new_pgd / fast_pgd_switch / cached_root_find_and_keep_current @ v6.18:
        the current root goes to the front of prev_roots; a cached root for the new PGD becomes
        current (KVM_REQ_LOAD_MMU_PGD, no sync and no flush here); without one, the least
        recently used root is freed and the next entry loads a new root (kvm_mmu_load)."""
        if k.config.tdp:
            return
        old = [vcpu.cr3] if vcpu.root_valid else []
        cached = [*old, *vcpu.prev_roots]
        if new_pgd in cached:
            cached.remove(new_pgd)
            vcpu.prev_roots = tuple(cached[:KVM_MMU_NUM_PREV_ROOTS])
            kvm_make_request(vcpu, KVM_REQ_LOAD_MMU_PGD)
            k.note(f"kvm_mmu_new_pgd({new_pgd:#x}): fast switch to a cached root")
            return
        vcpu.prev_roots = tuple(cached[:KVM_MMU_NUM_PREV_ROOTS])
        vcpu.root_valid = False
        k.note(f"kvm_mmu_new_pgd({new_pgd:#x}): no cached root, free the current one")

    def kvm_set_cr3_shadow(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """x86.c:kvm_set_cr3 @ v6.18: with CR4.PCIDE the no-flush bit skips the flush; a new CR3
        switches roots (kvm_mmu_new_pgd); unless no-flush, kvm_invalidate_pcid."""
        cr3, noflush, pcid = self.cr3_operand(k, vcpu, cr3)
        k.note(f"kvm_set_cr3({cr3:#x}{', no flush' if noflush else ''})")
        if cr3 != vcpu.cr3:
            self.kvm_mmu_new_pgd(k, vcpu, cr3)
        vcpu.cr3 = cr3
        if not noflush:
            self.kvm_invalidate_pcid(k, vcpu, pcid)  # type: ignore[attr-defined]

    def kvm_invalidate_pcid_shadow(self, k: Step, vcpu: Vcpu, pcid: int) -> None:
        """x86.c:kvm_invalidate_pcid @ v6.18, without TDP: the current root is synced and flushed
        if it uses the PCID; cached roots with the PCID are freed (21823fbda552: they would
        otherwise come back unsynced on a no-flush switch)."""
        if self.kvm_get_active_pcid(k, vcpu) == pcid:
            kvm_make_request(vcpu, KVM_REQ_MMU_SYNC)
            kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT)
            k.note("kvm_make_request(KVM_REQ_MMU_SYNC, KVM_REQ_TLB_FLUSH_CURRENT)")
        if not self.kvm_read_cr4(k, vcpu) & CR4_PCIDE:  # type: ignore[attr-defined]
            return
        self.free_prev_roots_with_pcid(k, vcpu, pcid)

    def free_prev_roots_with_pcid(self, k: Step, vcpu: Vcpu, pcid: int) -> None:
        keep = tuple(p for p in vcpu.prev_roots if self.kvm_get_pcid(k, vcpu, p) != pcid)
        if keep != vcpu.prev_roots:
            k.note(f"kvm_mmu_free_roots: the cached roots with PCID {pcid}")
            vcpu.prev_roots = keep

    def kvm_mmu_load_pgd(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.h:kvm_mmu_load_pgd @ v6.18: the vendor's load_mmu_pgd puts the shadow root, with
        the guest's active PCID, in the hardware CR3 the next VM entry loads."""
        if k.config.tdp:
            return
        hw_cr3 = k.config.shadow_roots[self.sroot(k, vcpu, k.config.root_index(vcpu.cr3))]
        hw_cr3 |= self.kvm_get_active_pcid(k, vcpu)
        if k.config.vmx:
            assert vcpu.vmcs is not None
            if vcpu.vmcs.guest.cr3 != hw_cr3:
                guest = vcpu.vmcs.guest._replace(cr3=hw_cr3)
                k.hw(vcpu.cpu, Vmwrite("guest", guest), "vmx_load_mmu_pgd: GUEST_CR3")
        else:
            assert vcpu.vmcb is not None
            if vcpu.vmcb.guest.cr3 != hw_cr3:
                vcpu.vmcb = vcpu.vmcb._replace(guest=vcpu.vmcb.guest._replace(cr3=hw_cr3))
                k.note(f"svm_load_mmu_pgd: vmcb->save.cr3 = {hw_cr3:#x}")

    def kvm_mmu_unload(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_unload @ v6.18: free the current and every cached root."""
        vcpu.root_valid = False
        vcpu.prev_roots = ()
        k.note("kvm_mmu_unload", "current and cached roots freed")

    # -- the shadow page fault --------------------------------------------------------------------
    def kvm_mmu_page_fault_shadow(self, k: Step, vcpu: Vcpu, gva: int, kind: int) -> None:
        """paging_tmpl.h:FNAME(page_fault) @ v6.18, up to kvm_faultin_pfn: FNAME(walk_addr) walks
        the guest's page table in memory; a fault there is the guest's own, injected
        (kvm_inject_emulated_page_fault); else the host page is looked up with the
        mmu_invalidate_seq snapshot, and FNAME(fetch) is the next step."""
        root = k.config.root_index(vcpu.cr3)
        chain = k.config.table_chain(k.machine.memory.values, k.config.roots, root, gva)
        gpte, gpa = self.guest_leaf(k, chain, gva)
        access = ACCESS_KINDS[kind]
        if not self.guest_permits(k, vcpu, gpte, access):
            vcpu.pf_injected = gva
            k.observe(vcpu.id, gva, -1, kind)
            k.note(f"FNAME(walk_addr)({gva:#x}): the guest's PTE faults", "inject #PF")
            return
        mmu_seq = k.kvm.mmu_invalidate_seq
        pfn = self.gfn_to_pfn(k, gpa)  # type: ignore[attr-defined]
        k.note(f"FNAME(walk_addr)({gva:#x}) = {gpa:#x}; kvm_faultin_pfn = {pfn:#x}")
        vcpu.frame = (gva, kind, mmu_seq, pfn, gpte, *chain)
        vcpu.pc = "FNAME(page_fault):fetch"

    def guest_permits(self, k: Step, vcpu: Vcpu, gpte: int, access: str) -> bool:
        """mmu.h:permission_fault @ v6.18 for a supervisor access: a present PTE, write
        permission for a write unless CR0.WP = 0, no XD for a fetch, and no fetch from a user page
        under SMEP."""
        if not gpte & P:
            return False
        if access == "write":
            return bool(gpte & RW) or not vcpu.cr0_wp
        if access == "exec":
            smep = bool(self.kvm_read_cr4(k, vcpu) & CR4_SMEP)  # type: ignore[attr-defined]
            return not gpte & XD and not (smep and gpte & US)
        return True

    def fname_page_fault_fetch(self, k: Step, vcpu: Vcpu) -> None:
        """paging_tmpl.h:FNAME(page_fault) @ v6.18 under mmu_lock: is_page_fault_stale retries;
        FNAME(fetch) retries if a guest entry on the walk changed since (FNAME(gpte_changed)),
        links at each upper level the shadow page of the guest table the walk went through
        where the shadow entry was zapped (kvm_mmu_get_child_sp, link_shadow_page), and makes
        the SPTE (make_spte: writable if the guest PTE and the memslot allow it, marking the page
        dirty under dirty logging)."""
        gva, kind, mmu_seq, pfn, gpte, *walked = vcpu.frame
        chain = tuple(walked)
        vcpu.frame = ()
        vcpu.pc = "vcpu_enter_guest"
        if self.mmu_invalidate_retry_gfn(k, mmu_seq):  # type: ignore[attr-defined]
            k.note(f"FNAME(page_fault)({gva:#x}): mmu_invalidate_retry_gfn, retry")
            return
        root = k.config.root_index(vcpu.cr3)
        values = k.machine.memory.values
        if (
            k.config.table_chain(values, k.config.roots, root, gva) != chain
            or self.guest_leaf(k, chain, gva)[0] != gpte
        ):
            k.note(f"FNAME(fetch)({gva:#x}): FNAME(gpte_changed), retry")
            return
        # the shadow pages of the walk's tables, of the root's role
        owners = [self.sroot(k, vcpu, g) for g in (root, *chain)]
        for level, owner, child in zip((4, 3, 2), owners[:-1], owners[1:], strict=False):
            slot = self.shadow_entry_slot(k, owner, gva, level)
            value = k.config.shadow_ptr[(child, level, region(gva, level))]
            if values[slot] != value:
                k.write_slot(
                    slot,
                    value,
                    f"FNAME(fetch): link_shadow_page, shadow {ENTRY_NAMES[level]} of {gva:#x} "
                    f"-> {value:#x}",
                )
        if len(chain) == 2:
            # a guest 2 MiB page: the last shadow page is a direct one (role.direct), linked
            # under the shadow page of the guest's page directory
            self.link_direct_sp(k, owners[-1], gva, gpte)
        gpa = self.guest_leaf(k, chain, gva)[1]
        writable = bool(gpte & RW) and bool(self.host_rights(k, gpa) & E_W)  # type: ignore[attr-defined]
        if writable and self.table_root(k, gpa) >= 0:
            # make_spte -> mmu_try_to_unsync_pages: the frame is a guest table KVM shadows
            # (write-tracked); its shadow page goes unsync and the mapping may be writable
            self.mmu_try_to_unsync_gfn(k, gpa)
        if writable and self.kvm_slot_dirty_track_enabled(k, gpa):  # type: ignore[attr-defined]
            self.mark_page_dirty_in_slot(k, gpa)  # type: ignore[attr-defined]
        value = spte_from_gpte(gpte, pfn, writable)
        if ACCESS_KINDS[kind] == "write" and not gpte & RW and not vcpu.cr0_wp:
            value = self.cr0_wp_clear_spte(k, vcpu, gpte, pfn)
        self.set_shadow_spte(k, owners[-1], gva, value, "FNAME(fetch)")

    def link_direct_sp(self, k: Step, s: int, gva: int, gpde: int) -> None:
        """paging_tmpl.h:FNAME(fetch) @ v6.18 (v5.x alike) at the guest's large page: below the
        shadow PDE, kvm_mmu_get_child_sp(.., base_gfn, direct = true, access) finds or makes the
        direct shadow page for the page's gfn and rights, and link_shadow_page links it. The
        model has one such page per hierarchy and region: linking it where the shadow PDE was
        zapped (the guest rewrote its PDE) starts it empty, as a page for another gfn or access
        would be (one for the same ones maps the same frames, and the next faults map them
        again)."""
        slot = self.shadow_entry_slot(k, s, gva, 2)
        value = k.config.shadow_ptr[(s, 2, region(gva, 2))]
        if k.machine.memory.values[slot] == value:
            return
        base = gva & ~(HUGE_PAGE - 1)
        for other in k.config.gvas:
            if other & ~(HUGE_PAGE - 1) == base:
                self.set_shadow_spte(k, s, other, 0, "kvm_mmu_get_child_sp: a new direct page")
        k.write_slot(
            slot,
            value,
            f"FNAME(fetch): link_shadow_page, the direct shadow page of the guest's 2 MiB page "
            f"{base:#x} (gfn {pte_addr(gpde):#x})",
        )

    def cr0_wp_clear_spte(self, k: Step, vcpu: Vcpu, gpte: int, pfn: int) -> int:
        """paging_tmpl.h:FNAME(page_fault) @ v6.18 (v5.x alike): a supervisor write fault on a
        read-only guest PTE with CR0.WP = 0 is let through by making the SPTE writable but
        supervisor-only (the processor runs with WP = 1), and not executable under SMEP."""
        smep = bool(self.kvm_read_cr4(k, vcpu) & CR4_SMEP)  # type: ignore[attr-defined]
        k.note("FNAME(page_fault): CR0.WP = 0", "a writable, supervisor-only SPTE")
        return make_pte(pfn, writable=True, user=False, executable=not gpte & XD and not smep)

    # -- the host's changes, through the rmap -----------------------------------------------------
    def rmap_sptes(self, k: Step, gpa: int) -> list[tuple[int, int]]:
        """The rmap of a guest frame: every (shadow hierarchy, GVA) whose present SPTE maps one
        of its host pages, in the shadow pages of either role."""
        out = []
        values = k.machine.memory.values
        for r in range(len(k.config.shadow_roots)):
            for gva in k.config.gvas:
                spte = int(values[self.sptep(k, r, gva)])
                if spte & P and k.config.frame_of_page(pte_addr(spte)) == gpa:
                    out.append((r, gva))
        return out

    def kvm_zap_rmap(self, k: Step, gpa: int) -> None:
        """mmu.c:kvm_zap_rmap (kvm_unmap_gfn_range's shadow-MMU part) @ v6.18."""
        for r, gva in self.rmap_sptes(k, gpa):
            self.set_shadow_spte(k, r, gva, 0, f"kvm_zap_rmap({gpa:#x})")

    def rmap_write_protect(self, k: Step, gpa: int) -> bool:
        """mmu.c:rmap_write_protect (kvm_mmu_slot_remove_write_access's shadow part) @ v6.18.
        Returns whether an SPTE lost write permission."""
        values = k.machine.memory.values
        changed = False
        for r, gva in self.rmap_sptes(k, gpa):
            spte = int(values[self.sptep(k, r, gva)])
            if spte & RW:
                self.set_shadow_spte(k, r, gva, spte & ~RW, f"rmap_write_protect({gpa:#x})")
                changed = True
        return changed

    def kvm_vcpu_write_protect_gfn(self, k: Step, gpa: int) -> bool:
        """mmu.c:kvm_vcpu_write_protect_gfn @ v6.18 (rmap_write_protect @ v5.x): every SPTE
        that maps the frame loses write permission; returns whether one had it."""
        return self.rmap_write_protect(k, gpa)


__all__ = ["KVM_MMU_NUM_PREV_ROOTS", "ShadowMmu", "self_map_gva", "spte_from_gpte"]
