"""The bug zoo's nested-NPT variants: kvm-6.18 with one plausible mistake in nested NPT.

Each variant overrides one method of kvm/nested_npt.py or kvm/nested_svm.py and is caught on a
built-in amd-nested-npt-* scenario (docs/bug-zoo.md). Neither is historical: upstream's nested
SVM has flushed and synced unconditionally on every transition since nested_svm_transition_tlb_flush
appeared (v5.10), and its TODO list names the conditions an optimization would have to keep.
"""

from __future__ import annotations

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import register
from kvmtlb.kvm.requests import KVM_REQ_TLB_FLUSH_CURRENT, kvm_make_request
from kvmtlb.kvm.state import Vcpu
from kvmtlb.kvm.versions import Kvm618


@register
class NptTransitionNoSync(Kvm618):
    name = "bug-nsvm-npt-transition-no-sync"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "nested_svm_transition_tlb_flush flushes the ASID but drops KVM_REQ_MMU_SYNC (the TODO's "
        "'sync nested NPT MMU on VMRUN that flushes L2's ASID' forgotten): after L1 edits NPT12 "
        "and asks for a flush, the unsync NPT02 page keeps the old SPTE"
    )

    def nested_svm_transition_tlb_flush(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_svm_transition_tlb_flush without the MMU sync request."""
        kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT)
        k.note("nested_svm_transition_tlb_flush: kvm_make_request(KVM_REQ_TLB_FLUSH_CURRENT)")


@register
class NptZapSkipsNpt02(Kvm618):
    name = "bug-nsvm-npt-zap-skips-npt02"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "a host zap of an L1 GPA drops the TDP MMU's NPT01 SPTE but not the shadow MMU's NPT02 "
        "SPTEs that map it (the rmap walk skipped while the TDP MMU is on): L2 keeps reaching "
        "the freed host page through NPT02"
    )

    def npt02_zap_rmap(self, k: Step, gpa: int) -> bool:
        """mmu.c:kvm_unmap_gfn_range with the TDP MMU only: the shadow MMU's rmap not walked."""
        k.note(f"kvm_unmap_gfn_range({gpa:#x}): the shadow MMU's rmap skipped")
        return False
