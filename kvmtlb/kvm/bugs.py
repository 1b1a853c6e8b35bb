"""The bug zoo: variants that reintroduce historical KVM TLB-flush bugs and plausible mistakes.

Each variant overrides one method of an upstream version (or splits one step into two), records
the upstream fix commit and CVE where there is one, and must be caught on at least one built-in
scenario with a trace (docs/bug-zoo.md lists which scenario catches which).
"""

from __future__ import annotations

from typing import ClassVar

from kvmtlb.hw.cpu import CR4_SMEP
from kvmtlb.hw.paging import P, make_ept, make_npt
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import register
from kvmtlb.kvm.requests import KVM_REQ_TLB_FLUSH_GUEST, kvm_make_request
from kvmtlb.kvm.state import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    KVM_VCPU_PREEMPTED,
    MODE_NAMES,
    HostTask,
    Pcpu,
    Vcpu,
)
from kvmtlb.kvm.versions import Kvm618


@register
class NonAtomicStealTimeClear(Kvm618):
    name = "bug-cve-2019-3016-nonatomic-clear"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "b043138246a4"
    cve = "CVE-2019-3016"
    summary = (
        "record_steal_time reads the preempted byte and clears it in a separate store: a "
        "FLUSH_TLB the guest sets in between is lost"
    )
    STEPS: ClassVar[dict[str, str]] = {
        **Kvm618.STEPS,
        "record_steal_time:clear": "record_steal_time_clear",
    }

    def record_steal_time(self, k: Step, vcpu: Vcpu) -> None:
        """Before b043138246a4: read st->preempted, flush if asked, then store 0 (kvm_write_guest
        of the host's copy), in separate steps."""
        if not k.config.pv_tlb_flush:
            super().record_steal_time(k, vcpu)
            return
        old = vcpu.st_byte
        k.note("record_steal_time: read st->preempted", f"{old:#x}")
        vcpu.frame = (old,)
        vcpu.pc = "record_steal_time:clear"

    def record_steal_time_clear(self, k: Step, vcpu: Vcpu) -> None:
        vcpu.st_byte = 0
        vcpu.st_preempted = False
        k.note("record_steal_time: st->preempted = 0 (a plain store)")
        vcpu.pc = "record_steal_time:flush"


@register
class DoubleSetPreempted(Kvm618):
    name = "bug-cve-2019-3016-double-preempted"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "8c6de56a42e0"
    cve = "CVE-2019-3016"
    summary = (
        "kvm_steal_time_set_preempted stores PREEMPTED again while already preempted, "
        "overwriting a FLUSH_TLB the guest set"
    )

    def kvm_steal_time_set_preempted(self, k: Step, vcpu: Vcpu) -> None:
        if not vcpu.at_instruction_boundary:
            return
        vcpu.st_byte = KVM_VCPU_PREEMPTED
        vcpu.st_preempted = True
        k.note(
            f"kvm_steal_time_set_preempted(vcpu{vcpu.id}): st->preempted = KVM_VCPU_PREEMPTED",
            "no check that it was already set",
        )


@register
class PreemptedOutsideBoundary(Kvm618):
    name = "bug-preempted-outside-instruction-boundary"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "6cd88243c7e0"
    cve = "CVE-2022-39189"
    summary = (
        "a vCPU scheduled out mid-emulation is reported preempted, so the guest skips its "
        "IPI while KVM still holds a translation"
    )

    def kvm_steal_time_set_preempted(self, k: Step, vcpu: Vcpu) -> None:
        if vcpu.st_preempted:
            return
        vcpu.st_byte = KVM_VCPU_PREEMPTED
        vcpu.st_preempted = True
        k.note(
            f"kvm_steal_time_set_preempted(vcpu{vcpu.id}): st->preempted = KVM_VCPU_PREEMPTED",
            "whether or not at an instruction boundary",
        )


@register
class NoMigrationFlushVmx(Kvm618):
    name = "bug-vmx-no-migration-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "vmx_vcpu_load_vmcs does not flush when the vCPU arrives on another pCPU, which may "
        "hold stale entries of the vCPU's VPID and EPTP"
    )

    def vmx_migration_flush(self, k: Step, vcpu: Vcpu) -> None:
        k.note("vmx_vcpu_load_vmcs: new pCPU, no flush")


@register
class MigrationFlushGuestOnly(Kvm618):
    name = "bug-vmx-migration-flush-guest-only"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "on migration, only the guest's view is flushed (INVVPID, KVM_REQ_TLB_FLUSH_GUEST) "
        "although EPT is on: stale guest-physical mappings survive"
    )

    def vmx_migration_flush(self, k: Step, vcpu: Vcpu) -> None:
        kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_GUEST)
        k.note("kvm_make_request(KVM_REQ_TLB_FLUSH_GUEST)", "vmx_vcpu_load_vmcs: new pCPU")


@register
class SvmKeepAsidOnMigration(Kvm618):
    name = "bug-svm-keep-asid-on-migration"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "pre_svm_run keeps the vCPU's ASID on a new pCPU, where that ASID may name stale "
        "entries (ASIDs are per pCPU)"
    )

    def pre_svm_run(self, k: Step, vcpu: Vcpu) -> None:
        # The generation is compared with the new pCPU's without the reset on a pCPU change.
        sd = k.pcpus[vcpu.cpu]
        vcpu.last_cpu = vcpu.cpu
        if vcpu.asid_generation != sd.asid_generation:
            self.new_asid(k, vcpu, sd)


@register
class FlushAllWithInvvpid(Kvm618):
    name = "bug-flush-tlb-all-invvpid"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "vmx_flush_tlb_all uses INVVPID with EPT on: guest-physical mappings (tagged by "
        "EP4TA, not VPID) survive a remote flush (the mix-up the seed's message warns of)"
    )

    def vmx_flush_tlb_all(self, k: Step, vcpu: Vcpu) -> None:
        if k.config.enable_vpid:
            self.vpid_sync_context(k, vcpu, vcpu.vpid)
        else:
            super().vmx_flush_tlb_all(k, vcpu)


@register
class GuestFlushSkipsInvvpid(Kvm618):
    name = "bug-flush-tlb-guest-skips-invvpid"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "vmx_flush_tlb_guest issues nothing with VPID on (as if VM entry flushed, which it "
        "only does with VPID off)"
    )

    def vmx_flush_tlb_guest(self, k: Step, vcpu: Vcpu) -> None:
        k.note("vmx_flush_tlb_guest: nothing")


@register
class RemoteFlushNoWait(Kvm618):
    name = "bug-remote-flush-no-wait"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "kvm_flush_remote_tlbs sends its kicks without waiting for them: it returns while a "
        "vCPU still runs guest code on stale entries"
    )

    def kvm_kick_many_cpus(self, k: Step, mask: int, sender: int, wait: bool) -> bool:
        return super().kvm_kick_many_cpus(k, mask, sender, False)


@register
class WrprotectNoFlush(Kvm618):
    name = "bug-dirty-log-no-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "b64d740ea7dd"
    summary = (
        "write protection for dirty logging without a remote TLB flush: cached writable "
        "entries let guest writes go unlogged"
    )

    def kvm_tdp_mmu_write_protect(self, k: Step, gpa: int) -> bool:
        super().kvm_tdp_mmu_write_protect(k, gpa)
        return False


@register
class SvmFlushKeepsAsid(Kvm618):
    name = "bug-svm-flush-keeps-asid"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "svm_flush_tlb_asid without FlushByAsid neither sets TLB_CONTROL nor moves the vCPU "
        "to a new ASID: nothing is flushed"
    )

    def svm_flush_tlb_asid(self, k: Step, vcpu: Vcpu) -> None:
        if self._flush_by_asid(k):
            super().svm_flush_tlb_asid(k, vcpu)
        else:
            k.note("svm_flush_tlb_asid: no FlushByAsid, ASID kept")


@register
class SvmAsidWrapNoFlushAll(Kvm618):
    name = "bug-svm-asid-wrap-no-flush-all"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "new_asid starts a new generation when a pCPU's ASIDs run out but does not set "
        "TLB_CONTROL FLUSH_ALL_ASID: a reused ASID still names another vCPU's old entries"
    )

    def new_asid(self, k: Step, vcpu: Vcpu, sd: Pcpu) -> None:
        if sd.next_asid > sd.max_asid:
            sd.asid_generation += 1
            sd.next_asid = sd.min_asid
            k.note(f"new_asid: ASIDs of pCPU{sd.id} wrapped, no flush of every ASID")
        vcpu.asid_generation = sd.asid_generation
        vcpu.asid = sd.next_asid
        sd.next_asid += 1
        k.note(f"new_asid: ASID {vcpu.asid}", f"pCPU{sd.id} generation {sd.asid_generation}")


@register
class PostSetCr4IgnoresSmep(Kvm618):
    name = "bug-post-set-cr4-ignores-smep"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "kvm_post_set_cr4 overlooks CR4.SMEP (no MMU reset, no flush request): setting it, "
        "which must invalidate the current PCID's entries, leaves them (KVM intercepts the write)"
    )

    def kvm_post_set_cr4(self, k: Step, vcpu: Vcpu, old: int, cr4: int) -> None:
        super().kvm_post_set_cr4(k, vcpu, old, cr4 & ~CR4_SMEP | old & CR4_SMEP)


@register
class MakeSpteNoDirtyLog(Kvm618):
    name = "bug-make-spte-no-dirty-log"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "make_spte installs a writable SPTE in a slot with dirty logging on without marking the "
        "page dirty: writes through it never fault and are never logged"
    )

    def make_spte(self, k: Step, gpa: int, hpa: int, rights: int) -> int:
        """spte.c:make_spte @ v6.18 without its mark_page_dirty_in_slot."""
        return make_ept(hpa, rights) if k.config.vmx else make_npt(hpa, rights)


@register
class NotifierFlushAtRangeEnd(Kvm618):
    name = "bug-notifier-flush-at-range-end"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "the MMU notifier's invalidate_range_start zaps the SPTE but leaves kvm_flush_remote_tlbs "
        "to invalidate_range_end: the primary MMU frees the page in between, while a TLB still "
        "maps it"
    )
    HOST_STEPS: ClassVar[dict[str, str]] = {
        **Kvm618.HOST_STEPS,
        "kvm_mmu_notifier_invalidate_range_end:end": "kvm_mmu_invalidate_end_step",
    }

    def kvm_mmu_notifier_invalidate_range_start(self, k: Step, task: HostTask) -> None:
        """invalidate_begin and the zap, but no flush before returning to the primary MMU."""
        self.kvm_mmu_invalidate_begin(k)
        self.kvm_unmap_gfn_range(k, task.gpa)
        task.return_()

    def kvm_mmu_notifier_invalidate_range_end(self, k: Step, task: HostTask) -> None:
        """The flush happens here, after the primary MMU let go of the page."""
        task.call("kvm_flush_remote_tlbs", "kvm_mmu_notifier_invalidate_range_end:end")

    def kvm_mmu_invalidate_end_step(self, k: Step, task: HostTask) -> None:
        self.kvm_mmu_invalidate_end(k)
        task.return_()


# -- shadow paging ------------------------------------------------------------------------------
@register
class GuestFlushNoShadowSync(Kvm618):
    name = "bug-guest-flush-no-shadow-sync"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "b53e84eed08b"
    summary = (
        "without TDP, the guest's own TLB flush (PV flush, CR4.PGE toggle, INVPCID all-context) "
        "flushes the hardware but does not sync unsync shadow pages: the SPTEs keep the guest's "
        "old mappings"
    )

    def kvm_vcpu_flush_tlb_guest(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:kvm_vcpu_flush_tlb_guest before b53e84eed08b (v5.13): the vendor hook only."""
        self.kvm_x86_call(k, "flush_tlb_guest", vcpu)


@register
class InvalidatePcidKeepsCachedRoots(Kvm618):
    name = "bug-invalidate-pcid-keeps-cached-roots"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "21823fbda552"
    summary = (
        "MOV CR3 with a flush of a PCID syncs the current root only: a cached root with the same "
        "PCID keeps its unsync shadow pages, and a no-flush switch to it uses them"
    )

    def free_prev_roots_with_pcid(self, k: Step, vcpu: Vcpu, pcid: int) -> None:
        """x86.c:kvm_invalidate_pcid without freeing the cached roots of the PCID (as kvm_set_cr3
        was before 21823fbda552, v5.14)."""


@register
class InvlpgCurrentRootOnly(Kvm618):
    name = "bug-invlpg-current-root-only"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "the emulated INVLPG syncs the address in the current root only: INVLPG invalidates "
        "global translations in every PCID, so a cached root's unsync SPTE comes back on a "
        "no-flush switch"
    )

    def kvm_mmu_invlpg(self, k: Step, vcpu: Vcpu, gva: int) -> None:
        """mmu.c:kvm_mmu_invlpg with KVM_MMU_ROOT_CURRENT instead of KVM_MMU_ROOTS_ALL."""
        current = [k.config.root_index(vcpu.cr3)] if vcpu.root_valid else []
        self.kvm_mmu_invalidate_addr(k, vcpu, gva, current)


@register
class ZapRmapCurrentRootOnly(Kvm618):
    name = "bug-zap-rmap-current-roots-only"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "a host zap of a guest frame drops the SPTEs of the shadow pages that vCPUs run on but "
        "not those of cached roots, as if the rmap held only the current roots' SPTEs: switching "
        "back to such a root reaches the freed page"
    )

    def kvm_zap_rmap(self, k: Step, gpa: int) -> None:
        """mmu.c:kvm_zap_rmap restricted to the shadow pages under some vCPU's current root."""
        current = {self.sroot(k, v, k.config.root_index(v.cr3)) for v in k.vcpus if v.root_valid}
        for r, gva in self.rmap_sptes(k, gpa):
            if r in current:
                self.set_shadow_spte(k, r, gva, 0, f"kvm_zap_rmap({gpa:#x})")


@register
class TrackWriteKeepsShadowPde(Kvm618):
    name = "bug-track-write-keeps-shadow-pde"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "KVM emulates the guest's store to an upper-level table (a PDE, PDPTE or PML4E) but "
        "leaves the shadow entry linked (no kvm_mmu_track_write zap): the shadow tables keep "
        "translating through the table the guest unmapped or replaced"
    )

    def kvm_mmu_track_write(self, k: Step, vcpu: Vcpu, root: int, gva: int, level: int) -> None:
        """mmu.c:kvm_mmu_track_write with nothing done for a non-leaf entry."""
        if level == 1:
            super().kvm_mmu_track_write(k, vcpu, root, gva, level)


@register
class TrackWritePdeFlushOnePage(Kvm618):
    name = "bug-track-write-pde-flush-one-page"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "KVM emulates the guest's store to a PDE mapping a 2 MiB page and zaps the shadow PDE, "
        "but flushes only the 4 KiB page at the PDE's address, on the writing vCPU "
        "(flush_tlb_gva, as if the entry mapped one 4 KiB page): the other 4 KiB pieces of the "
        "guest's large page, cached from the direct shadow page's SPTEs, survive, and an "
        "emulated INVLPG of one address of the page drops only that piece"
    )

    def kvm_mmu_track_write(self, k: Step, vcpu: Vcpu, root: int, gva: int, level: int) -> None:
        """mmu.c:kvm_mmu_track_write with a PDE's zap flushed by address instead of
        kvm_mmu_remote_flush_or_zap."""
        if level != 2 or k.config.tdp:
            super().kvm_mmu_track_write(k, vcpu, root, gva, level)
            return
        zapped = False
        for s in k.config.shadows_of(root):
            slot = self.shadow_entry_slot(k, s, gva, level)
            if k.machine.memory.values[slot] & P:
                k.write_slot(slot, 0, f"kvm_mmu_track_write: zap the shadow PDE of {gva:#x}")
                zapped = True
        if zapped:
            self.kvm_x86_call(k, "flush_tlb_gva", vcpu, gva)


@register
class InvalidatePcidTdpNoFlush(Kvm618):
    name = "bug-invalidate-pcid-tdp-no-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "e45e9e3998f0"
    summary = (
        "with TDP, kvm_invalidate_pcid does nothing (as if only shadow roots held the guest's "
        "translations): a MOV to CR3 or INVPCID that KVM emulates leaves the hardware TLB's "
        "entries of the PCID in place"
    )

    def kvm_invalidate_pcid(self, k: Step, vcpu: Vcpu, pcid: int) -> None:
        """x86.c:kvm_invalidate_pcid before e45e9e3998f0 (v5.16): the shadow branch only."""
        if not k.config.tdp:
            super().kvm_invalidate_pcid(k, vcpu, pcid)


@register
class TrackWriteKeepsSpte(Kvm618):
    name = "bug-track-write-keeps-spte"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "KVM's emulator stores to a guest PTE of a synced shadow page but the page-track notifier "
        "does not zap the written entry's SPTE: no later INVLPG or flush syncs a synced page, so "
        "the old mapping stays"
    )

    def kvm_mmu_track_write(self, k: Step, vcpu: Vcpu, root: int, gva: int, level: int) -> None:
        """mmu.c:kvm_mmu_track_write with nothing done for a PTE."""
        if level != 1:
            super().kvm_mmu_track_write(k, vcpu, root, gva, level)


@register
class MmuLoadNoFlush(Kvm618):
    name = "bug-mmu-load-no-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "kvm_mmu_load installs a new root without flushing the current context: entries cached "
        "under an obsolete root (the ASID on SVM; a reused root page's EP4TA on VMX) survive"
    )

    def kvm_mmu_load_flush(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_load @ v6.18 with its last call, flush_tlb_current, left out: as if a
        freshly allocated root could have no entries cached for it."""
        k.note("kvm_mmu_load: no flush", "the new root is assumed to have no cached entries")


@register
class ZapYieldWithoutFlush(Kvm618):
    name = "bug-zap-yield-without-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "a835429cda91"
    summary = (
        "a zap of a GFN range yields mmu_lock with a flush still pending (as the TDP MMU did for "
        "a flush pending from an earlier root): a notifier zap meanwhile finds the SPTE gone, "
        "flushes nothing, and the page is freed while a TLB still maps it"
    )

    def kvm_zap_gfn_range_yield(self, k: Step, task: HostTask) -> None:
        """tdp_mmu.c:zap_gfn_range before a835429cda91 (v5.10-v5.11): the flush pending from
        before the yield is kept for the end of the range, not done before mmu_lock is
        dropped."""
        k.note("tdp_mmu_iter_cond_resched: yields", "the pending flush is left for later")
        task.goto("kvm_zap_gfn_range:unlock")


@register
class WaitRequestKicksInGuestOnly(Kvm618):
    name = "bug-wait-request-kicks-in-guest-only"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "kvm_request_needs_ipi kicks only vCPUs IN_GUEST_MODE, also for KVM_REQUEST_WAIT "
        "requests: a second sender that finds a vCPU EXITING_GUEST_MODE returns without waiting "
        "for it to leave the guest"
    )

    def kvm_request_needs_ipi(self, k: Step, vcpu: Vcpu, req: int) -> int:
        """kvm_main.c:kvm_request_needs_ipi @ v6.18 with the KVM_REQUEST_WAIT case dropped."""
        mode = vcpu.mode
        if mode == IN_GUEST_MODE:
            vcpu.mode = EXITING_GUEST_MODE
        target = vcpu.cpu if mode == IN_GUEST_MODE and vcpu.cpu >= 0 else -1
        k.note(
            f"kvm_request_needs_ipi(vcpu{vcpu.id})",
            f"mode was {MODE_NAMES[mode]}" + (f": kick pCPU{target}" if target >= 0 else ""),
        )
        return target


@register
class ClearDirtyLogNoFlush(Kvm618):
    name = "bug-clear-dirty-log-no-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "KVM_CLEAR_DIRTY_LOG write-protects the pages whose dirty bits it cleared but skips "
        "kvm_flush_remote_tlbs_memslot: writable translations cached since the last fault let "
        "writes go unlogged"
    )

    def kvm_flush_remote_tlbs_memslot(self, k: Step, task: HostTask) -> None:
        """The flush of kvm_clear_dirty_log_protect left out."""
        k.note("kvm_clear_dirty_log_protect: no kvm_flush_remote_tlbs_memslot")
        task.return_()


@register
class SvmFreeAsidReuse(Kvm618):
    name = "bug-svm-free-asid-reuse"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "svm_vcpu_free hands the vCPU's ASID back to its pCPU's allocator, as free_vpid does a "
        "VPID, without TLB_CONTROL FLUSH_ALL_ASID: the next vCPU given it there, in the same "
        "generation, finds the destroyed VM's entries"
    )

    def svm_vcpu_free(self, k: Step, vcpu: Vcpu) -> None:
        """svm.c:svm_vcpu_free @ v6.18 with an ASID hand-back it does not have: the generation
        allocator hands an ASID out once per generation, and only a new generation (with its
        flush of every ASID) may reuse it."""
        sd = k.pcpus[vcpu.last_cpu] if vcpu.last_cpu >= 0 else None
        if (
            sd is not None
            and vcpu.asid_generation == sd.asid_generation
            and vcpu.asid == sd.next_asid - 1
        ):
            sd.next_asid = vcpu.asid
            k.note(
                f"svm_vcpu_free(vcpu{vcpu.id}): ASID {vcpu.asid} back to pCPU{sd.id}",
                "no flush of the ASID",
            )
            return
        super().svm_vcpu_free(k, vcpu)


@register
class MemslotDeleteStillValid(Kvm618):
    name = "bug-memslot-delete-still-valid"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "kvm_set_memslot deletes a memslot without first marking it KVM_MEMSLOT_INVALID: a "
        "fault after the fast zap maps the slot's old page again into a new root, and userspace "
        "frees that memory once the ioctl returns"
    )

    def kvm_invalidate_memslot(self, k: Step, gpa: int) -> None:
        """kvm_main.c:kvm_invalidate_memslot @ v6.18 left out: the zap alone is trusted to
        remove every mapping of the slot."""
        k.note(f"kvm_set_memslot({gpa:#x}, KVM_MR_DELETE): the slot stays valid")


@register
class MemslotMoveNoFlush(Kvm618):
    name = "bug-memslot-move-no-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "kvm_set_memslot skips kvm_arch_flush_shadow_memslot for KVM_MR_MOVE (the host pages "
        "stay, only the GPA changes): the SPTEs and TLB entries of the old GPA survive the move, "
        "so the guest still reaches the moved page through a GPA that has no memory"
    )

    def kvm_arch_flush_shadow_memslot(self, k: Step, task: HostTask) -> None:
        """x86.c:kvm_arch_flush_shadow_memslot @ v6.18 left out for a move (`task.hpa`, the
        destination, is set): neither the zap of the old range nor its remote flush."""
        if task.hpa < 0:
            super().kvm_arch_flush_shadow_memslot(k, task)
            return
        k.note(f"kvm_set_memslot({task.gpa:#x}, KVM_MR_MOVE): no kvm_arch_flush_shadow_memslot")
        task.return_()


@register
class SyncChildrenNoProtectFlush(Kvm618):
    name = "bug-sync-children-no-protect-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "mmu_sync_children write-protects the guest tables it is about to sync but does not "
        "flush before reading their PTEs: a vCPU with a writable translation of a table still "
        "cached stores to it unseen, and the page, now synced, keeps the old mapping"
    )

    def kvm_mmu_remote_flush(self, k: Step, vcpu: Vcpu, why: str) -> None:
        """The flush after kvm_vcpu_write_protect_gfn in mmu_sync_children left out."""
        k.note("mmu_sync_children: no flush after write-protecting", why)


@register
class PostSetCr0IgnoresWp(Kvm618):
    name = "bug-post-set-cr0-ignores-wp"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "kvm_post_set_cr0 treats CR0.WP as no MMU role bit (as v6.18 may with TDP) under shadow "
        "paging: no reset, so the writable supervisor-only SPTEs made for CR0.WP = 0 stay in use "
        "after the guest sets WP again, and supervisor writes to read-only pages go through"
    )

    def kvm_post_set_cr0(self, k: Step, vcpu: Vcpu, old_wp: bool, wp: bool) -> None:
        """x86.c:kvm_post_set_cr0 @ v6.18 with its TDP shortcut for a WP-only change taken
        without TDP too."""
        k.note("kvm_post_set_cr0: CR0.WP only", "no MMU reset")


@register
class ShadowRoleIgnoresCr0Wp(Kvm618):
    name = "bug-shadow-role-ignores-cr0-wp"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "CR0.WP is left out of the shadow pages' role (role.base.cr0_wp, set by "
        "kvm_calc_mmu_role_common @ v5.x and kvm_calc_cpu_role @ v6.18): vCPUs with WP = 0 and "
        "WP = 1 share shadow pages, so the writable supervisor-only SPTE made for a WP = 0 write "
        "lets a WP = 1 vCPU write through a read-only guest PTE"
    )

    def sroot(self, k: Step, vcpu: Vcpu, g: int) -> int:
        """One set of shadow pages for both roles."""
        return g


@register
class SetSregsCr3NoReset(Kvm618):
    name = "bug-set-sregs-cr3-no-reset"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "__set_sregs_common leaves a CR3 change out of mmu_reset_needed (not a historical bug: "
        "every version compares kvm_read_cr3 with the new CR3): KVM_SET_SREGS that only moves "
        "CR3 neither resets the MMU nor flushes, so the old page table's translations (with TDP "
        "the hardware's, tagged with the same VPID/ASID and PCID; with shadow paging the old "
        "shadow root, still loaded) stay in use"
    )

    def set_sregs_common(self, k: Step, vcpu: Vcpu, cr3: int, cr4: int) -> bool:
        """x86.c:__set_sregs_common @ v6.18 without the CR3 comparison: the registers are
        written as upstream does, but only a CR4 change asks for the MMU reset."""
        old_cr3 = self.kvm_read_cr3(k, vcpu)
        old_cr4 = self.kvm_read_cr4(k, vcpu)
        vcpu.cr3 = cr3
        if k.config.tdp and old_cr3 != cr3:
            self.kvm_x86_call(k, "set_guest_cr3", vcpu, cr3)
        if old_cr4 != cr4:
            self.kvm_x86_call(k, "set_guest_cr4", vcpu, cr4)
        reset = old_cr4 != cr4
        k.note(
            "__set_sregs_common (CR3 not compared)",
            f"CR3 {old_cr3:#x} -> {cr3:#x}, CR4 {old_cr4:#x} -> {cr4:#x}: "
            + ("mmu_reset_needed" if reset else "no MMU reset"),
        )
        return reset
