"""Bug-zoo variants of the huge-page and range-flush paths (kvm/hugepage.py, kvm/hyperv.py).

Historical bug #15 (kvm-tlb-flush.md §8): Hou Wenlong's "KVM: x86/mmu: Fix wrong start gfn of
tlb flushing with range" (1b2dc7360463, first released in v6.3; Fixes c3134ce240ee, v5.1) made
every range flush of a dropped SPTE name the SPTE's own GFN range
(kvm_flush_remote_tlbs_sptep); before it, drop_large_spte, __rmap_add, kvm_mmu_zap_collapsible_spte
and FNAME(invlpg) named the base GFN of the shadow page holding the SPTE, with the size of that
page's level. Only a range flush (KVM on Hyper-V) can tell the two apart. Each variant below puts
one call site back as v5.x shipped it.
"""

from __future__ import annotations

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.hugepage import GIB, HUGE, PAGES_PER_HPAGE
from kvmtlb.kvm.policy import register
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


__all__ = ["RangeFlushSpBaseGfn", "RangeFlushWrongStartGfn"]
