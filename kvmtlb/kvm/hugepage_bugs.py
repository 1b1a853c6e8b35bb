"""Bug-zoo variants of the huge-page and range-flush paths (kvm/hugepage.py, kvm/hyperv.py).

Historical bug #15 (kvm-tlb-flush.md §8): Hou Wenlong's "KVM: x86/mmu: Fix wrong start gfn of
tlb flushing with range" (1b2dc7360463, first released in v6.3; Fixes c3134ce240ee, v5.1) made
every range flush of a dropped SPTE name the SPTE's own GFN range
(kvm_flush_remote_tlbs_sptep); before it, drop_large_spte, __rmap_add, kvm_mmu_zap_collapsible_spte
and FNAME(invlpg) named the base GFN of the shadow page holding the SPTE, with the size of that
page's level. Only a range flush (KVM on Hyper-V) can tell the two apart. The first two variants
below put one call site back as v5.x shipped it.

Historical bug #13's NX recovery half: "KVM: x86/mmu: Ensure TLBs are flushed for TDP MMU during NX
zapping" (048f49809c52) and "KVM: x86/mmu: Don't allow TDP MMU to yield when recovering NX pages"
(33a3164161fc), both first released in v5.12 (Fixes 29cf0f5007a2, the TDP MMU's NX recovery of
v5.10: the stable backport's cover says the TDP MMU "had some missing TLB flushes in 5.10 and
5.11"). v5.7 and v5.8 predate the TDP MMU, and v6.18 has the fixes, so neither is an upstream
expectation here; the last two variants put each back on v6.18's TDP MMU.
"""

from __future__ import annotations

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.hugepage import GIB, HUGE, PAGES_PER_HPAGE
from kvmtlb.kvm.policy import register
from kvmtlb.kvm.state import HostTask
from kvmtlb.kvm.versions import Kvm618


@register
class RangeFlushSpBaseGfn(Kvm618):
    name = "bug-range-flush-sp-base-gfn"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "1b2dc7360463"
    summary = (
        "drop_large_spte flushes from the base GFN of the page directory holding the dropped "
        "2 MiB SPTE (sp->gfn, the 1 GiB region's) instead of the SPTE's own: on Hyper-V the "
        "range flush misses the huge page, whose stale translation outlives a later zap"
    )

    def drop_large_spte_flush_range(self, k: Step, base: int) -> tuple[int, int]:
        """mmu.c:drop_large_spte before 1b2dc7360463 (v5.1-v6.2): kvm_flush_remote_tlbs_with_
        address(kvm, sp->gfn, KVM_PAGES_PER_HPAGE(sp->role.level))."""
        return base & ~(GIB - 1), PAGES_PER_HPAGE[2]


@register
class RangeFlushWrongStartGfn(Kvm618):
    name = "bug-range-flush-wrong-start-gfn"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "1b2dc7360463"
    summary = (
        "kvm_mmu_zap_collapsible_spte flushes one page at the base GFN of the page table "
        "holding the zapped 4 KiB SPTE instead of at the SPTE's own GFN: on Hyper-V any other "
        "page of the 2 MiB region keeps its stale translation"
    )

    def zap_collapsible_flush_range(self, k: Step, gpa: int) -> tuple[int, int]:
        """mmu.c:kvm_mmu_zap_collapsible_spte before 1b2dc7360463 (v5.1-v6.2):
        kvm_flush_remote_tlbs_with_address(kvm, sp->gfn, KVM_PAGES_PER_HPAGE(sp->role.level))
        with sp the level-1 page table."""
        return gpa & ~(HUGE - 1), PAGES_PER_HPAGE[1]


@register
class NxRecoveryTdpNoFlush(Kvm618):
    name = "bug-nx-recovery-tdp-no-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "048f49809c52"
    summary = (
        "NX huge page recovery ignores the TDP MMU zap's 'flush needed' and flushes only for the "
        "legacy MMU's zapped pages: a vCPU keeps the 4 KiB translations of the zapped table, and "
        "a later notifier zap finds no SPTE, flushes nothing and frees the page"
    )

    def nx_zap_sp(self, k: Step, n: int) -> bool:
        """mmu.c:kvm_recover_nx_lpages before 048f49809c52 (v5.10-v5.11): the TDP MMU's zap of
        the table's range returned whether a flush is owed, and the caller dropped it (it
        flushed only when the legacy MMU's invalid_list was not empty)."""
        super().nx_zap_sp(k, n)
        k.note("kvm_recover_nx_lpages: the TDP MMU zap's flush request is dropped")
        return False


@register
class NxRecoveryYieldPendingFlush(Kvm618):
    name = "bug-nx-recovery-yield-pending-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "33a3164161fc"
    summary = (
        "NX huge page recovery yields mmu_lock between two tables with the first one's flush "
        "still pending (kept for the end): a notifier zap meanwhile finds no SPTE, flushes "
        "nothing, and the page is freed while a TLB still maps it"
    )

    def nx_flush_before_yield(self, k: Step, task: HostTask, flush: int) -> None:
        """mmu.c:kvm_recover_nx_lpages before 33a3164161fc (v5.10-v5.11): the TDP MMU's zap
        of the next table could yield mmu_lock (tdp_mmu_iter_cond_resched) while a flush owed
        for the previous table was still pending in the caller. The model's yield between two
        tables keeps the pending flush for the end, as that yield did."""
        k.note("kvm_recover_nx_lpages: yields", "the pending flush is left for later")
        task.frame = (flush,)
        task.goto("kvm_recover_nx_huge_pages:unlock")


__all__ = [
    "NxRecoveryTdpNoFlush",
    "NxRecoveryYieldPendingFlush",
    "RangeFlushSpBaseGfn",
    "RangeFlushWrongStartGfn",
]
