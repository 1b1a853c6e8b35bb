"""The bug zoo's nested-VMX variants: kvm-6.18 with one historical nested TLB-flush bug back.

Each variant overrides one method of kvm/nested_vmx.py or the L2 case of a vmx.c hook, records the
upstream fix, and is caught on a built-in nested scenario (docs/bug-zoo.md). Bug #12 has no
variant here: kvm-6.18 itself ships it (the fix came in 2026), see nested-vmxoff-vpid-reuse.
Some variants are not historical: `bug-nested-vmptrld-sets-last-vpid`, a plausible mistake in
handle_vmptrld; `bug-nested-invept-frees-current-root`, one in handle_invept with several EPTPs;
`bug-nested-ept01-zap-skips-l2-root` and `bug-nested-ept01-invvpid-vpid01`,
plausible mistakes for an L2 without nested EPT on an EPT L0 (kvm/nested_ept01.py); the first
also covers the SVM analogue, an L2 without nested NPT on an NPT L0 (same root machinery).
"""

from __future__ import annotations

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import register
from kvmtlb.kvm.state import Vcpu
from kvmtlb.kvm.versions import Kvm618


@register
class RemoteFlushL1VpidOnly(Kvm618):
    name = "bug-nested-remote-flush-l1-vpid-only"
    kind = "bug"
    based_on = "kvm-6.18"
    # the series' first patch; its commit hash was not recovered from the stored sources
    upstream_fix = '"KVM: VMX: Flush all EPTP/VPID contexts on remote TLB flush" (v5.8)'
    summary = (
        "bug #1: without EPT, KVM_REQ_TLB_FLUSH flushes only vmx->vpid (L1's), so L2's vpid02 "
        "keeps translations of a page the host zapped and freed"
    )

    def vmx_flush_tlb_all(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.h:vmx_flush_tlb(vcpu, true) @ v5.7 without EPT: vpid_sync_context(vmx->vpid)."""
        if k.config.tdp:
            super().vmx_flush_tlb_all(k, vcpu)
            return
        self.vpid_sync_context(k, vcpu, vcpu.vpid)


@register
class InvvpidKeepsL2Roots(Kvm618):
    name = "bug-nested-invvpid-keeps-l2-roots"
    kind = "bug"
    based_on = "kvm-6.18"
    # Junaid Shahid's patch in the seed's series; its commit hash was not recovered
    upstream_fix = '"KVM: nVMX: Invalidate all roots when emulating INVVPID without EPT" (v5.8)'
    summary = (
        "bug #2: L1's INVVPID flushes vpid02 but leaves L2's shadow roots cached, so the next "
        "nested VM-Enter switches to a root whose unsync SPTEs L1 just invalidated"
    )

    def kvm_mmu_free_guest_mode_roots(self, k: Step, vcpu: Vcpu) -> None:
        """handle_invvpid before Junaid Shahid's fix: no root is freed."""
        k.note("handle_invvpid: L2's shadow roots kept")


@register
class GuestFlushL1Vpid(Kvm618):
    name = "bug-nested-flush-guest-l1-vpid"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "2b4a5a5d5688"
    summary = (
        "bug #9: KVM_REQ_TLB_FLUSH_GUEST (and INVLPG's flush) while L2 runs flushes vpid01 "
        "instead of L2's current VPID"
    )

    def vmx_flush_tlb_guest(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.c:vmx_flush_tlb_guest before 2b4a5a5d5688 (v5.16): vmx->vpid."""
        self.vpid_sync_context(k, vcpu, vcpu.vpid)

    def vmx_flush_tlb_gva(self, k: Step, vcpu: Vcpu, addr: int) -> None:
        """vmx.c:vmx_flush_tlb_gva before 2b4a5a5d5688 (v5.16): vmx->vpid."""
        self.vpid_sync_vcpu_addr(k, vcpu, vcpu.vpid, addr)


@register
class NewVpid12InvvpidOnly(Kvm618):
    name = "bug-nested-new-vpid12-no-sync"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "712494de96f3"
    summary = (
        "bug #10: a nested VM-Enter with a new vpid12 only INVVPIDs vpid02 instead of emulating "
        "a guest TLB flush, so L2's unsync shadow pages are not synced"
    )

    def nested_vmx_transition_tlb_flush(self, k: Step, vcpu: Vcpu, is_vmenter: bool) -> None:
        """nested.c:nested_vmx_transition_tlb_flush before 712494de96f3 (v5.16), on a new
        vpid12: vpid_sync_context(nested_get_vpid02(vcpu))."""
        if (
            is_vmenter
            and self.nested_cpu_has_vpid(vcpu)
            and vcpu.vpid12 != vcpu.last_vpid
            and self.nested_has_guest_tlb_tag(k, vcpu)
        ):
            vcpu.last_vpid = vcpu.vpid12
            k.note(f"nested_vmx_transition_tlb_flush: new vpid12 {vcpu.vpid12}", "INVVPID only")
            self.vpid_sync_context(k, vcpu, self.nested_get_vpid02(vcpu))
            return
        super().nested_vmx_transition_tlb_flush(k, vcpu, is_vmenter)


@register
class CurrentVpidIgnoresVmcs12(Kvm618):
    name = "bug-nested-current-vpid-ignores-vmcs12"
    kind = "bug"
    based_on = "kvm-6.18"
    fix = "2657b82a78f1"
    summary = (
        "bug #11: with L2 active but VPID off in vmcs12, the 'current' VPID is taken to be "
        "vpid02 while L2 runs on vpid01: the flush of a nested VM-Enter misses L1's entries"
    )

    def vmx_get_current_vpid(self, k: Step, vcpu: Vcpu) -> int:
        """vmx.c:vmx_get_current_vpid @ v5.16..v6.11: is_guest_mode alone picks vpid02."""
        return self.nested_get_vpid02(vcpu) if vcpu.guest_mode else vcpu.vpid


@register
class SvmNoTransitionFlush(Kvm618):
    name = "bug-nested-svm-no-transition-flush"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "nested SVM without nested_svm_transition_tlb_flush: L1 and L2 share the vCPU's ASID, "
        "so one's translations of an address reach the other after VMRUN or #VMEXIT"
    )

    def nested_svm_transition_tlb_flush(self, k: Step, vcpu: Vcpu) -> None:
        """A plausible mistake: trusting vmcb12's ASID to separate L2 from L1 (KVM gives L2 the
        vCPU's own ASID, so nothing does)."""
        k.note("nested_svm_transition_tlb_flush: nothing")


@register
class InveptNoop(Kvm618):
    name = "bug-nested-invept-noop"
    kind = "bug"
    based_on = "kvm-6.18"
    # "KVM: nVMX: Invalidate all EPTP contexts when emulating INVEPT for L1" (patch 03/37 of
    # the seed's series, in kvm.git queue for the v5.8 merge window: docs/bug-zoo.md)
    fix = "f8aa7e3958bc"
    summary = (
        "bug #3: handle_invept frees no guest_mmu root (v5.7's emulation), while nested "
        "VM-Enter no longer syncs or flushes EPT02: L2 keeps the EPT02 SPTE or the EPTP02 "
        "translation L1 just invalidated"
    )

    def handle_invept(self, k: Step, vcpu: Vcpu, kind: int, eptp: int = 0) -> None:
        """nested.c:handle_invept @ v5.7: nothing after the checks."""
        k.note("handle_invept: nothing (v5.7's emulation)")


@register
class RemoteFlushCurrentEptpOnly(Kvm618):
    name = "bug-nested-ept-remote-flush-current-only"
    kind = "bug"
    based_on = "kvm-6.18"
    # the series' first patch, as for bug-nested-remote-flush-l1-vpid-only
    upstream_fix = '"KVM: VMX: Flush all EPTP/VPID contexts on remote TLB flush" (v5.8)'
    summary = (
        "bug #1 with EPT: KVM_REQ_TLB_FLUSH flushes only the current EPTP (v5.7's "
        "vmx_flush_tlb), while nested VM-Enter and VM-Exit no longer flush the EPTP they "
        "switch to: the other of EPTP01 and EPTP02 keeps translations of a freed page"
    )

    def vmx_flush_tlb_all(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.h:__vmx_flush_tlb(vcpu, vpid, true) @ v5.7 with EPT: ept_sync_context of the
        current root only (mmu->root_hpa), nothing if it is invalid."""
        if not k.config.tdp:
            super().vmx_flush_tlb_all(k, vcpu)
            return
        if vcpu.root_valid:
            self.ept_sync_context(k, vcpu, self.construct_eptp(k, vcpu))


@register
class VmptrldSetsLastVpid(Kvm618):
    name = "bug-nested-vmptrld-sets-last-vpid"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "VMPTRLD of another vmcs12 takes its VPID as last_vpid, so the next VM-Enter sees no "
        "new vpid12 and does not flush vpid02: the L2 of one vmcs12 uses the translations the "
        "L2 of the other left under the vCPU's one vpid02"
    )

    def handle_vmptrld(self, k: Step, vcpu: Vcpu, root: int, vpid12: int, eptp12: int = 0) -> None:
        """nested.c:handle_vmptrld with last_vpid updated to the new vmcs12's VPID (not
        upstream: a plausible mistake; last_vpid must name the VPID whose translations vpid02
        holds)."""
        super().handle_vmptrld(k, vcpu, root, vpid12, eptp12)
        vcpu.last_vpid = vpid12


@register
class InveptFreesCurrentRoot(Kvm618):
    name = "bug-nested-invept-frees-current-root"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "single-context INVEPT frees guest_mmu's current root whatever its EPTP, not the roots "
        "of the operand's EPTP: a cached EPT02 root of the invalidated EPTP survives, and the "
        "fast switch back to it neither syncs nor flushes"
    )

    def handle_invept(self, k: Step, vcpu: Vcpu, kind: int, eptp: int = 0) -> None:
        """nested.c:handle_invept with KVM_MMU_ROOT_CURRENT for a single-context INVEPT (not
        upstream: a plausible mistake; ce8fe7b77bd8 matches each root's EPTP,
        nested_ept_root_matches)."""
        if kind != 1:
            super().handle_invept(k, vcpu, kind, eptp)
            return
        k.note("handle_invept(single-context)", "the current guest_mmu root only")
        self.kvm_mmu_free_guest_mmu_roots(k, vcpu, 1 << vcpu.ept02_cur)


@register
class ZapSkipsL2Root(Kvm618):
    name = "bug-nested-ept01-zap-skips-l2-root"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "the host's zap of an L1 frame reaches only L1's EPT/NPT root, not the direct root of "
        "role guest_mode KVM runs an L2 without nested EPT (or NPT, on SVM) on: L2 keeps an "
        "SPTE to the freed page"
    )

    def live_tdp_roots(self, k: Step) -> list[int]:
        """mmu.c:kvm_unmap_gfn_range walking only the roots of L1's role (not upstream: a
        plausible mistake; the TDP MMU walks every root of the VM, v5.x's rmap every shadow
        page)."""
        live = super().live_tdp_roots(k)
        if k.config.l2_on_ept01:
            live.remove(self.l2_tdp_index(k))
        return live


@register
class InvvpidVpid01(Kvm618):
    name = "bug-nested-ept01-invvpid-vpid01"
    kind = "bug"
    based_on = "kvm-6.18"
    summary = (
        "L1's INVVPID is emulated on vmx->vpid (L1's own VPID) instead of vpid02, so L2's "
        "translations of the pages L1 invalidated for it survive"
    )

    def handle_invvpid(self, k: Step, vcpu: Vcpu, kind: int, vpid: int, gva: int) -> None:
        """nested.c:handle_invvpid with vpid01 for vpid02 (not upstream: a plausible mistake;
        every L2 VPID is vpid02 to KVM)."""
        vpid02 = vcpu.vpid02
        vcpu.vpid02 = vcpu.vpid
        try:
            super().handle_invvpid(k, vcpu, kind, vpid, gva)
        finally:
            vcpu.vpid02 = vpid02


__all__ = [
    "CurrentVpidIgnoresVmcs12",
    "GuestFlushL1Vpid",
    "InveptFreesCurrentRoot",
    "InveptNoop",
    "InvvpidKeepsL2Roots",
    "InvvpidVpid01",
    "NewVpid12InvvpidOnly",
    "RemoteFlushCurrentEptpOnly",
    "RemoteFlushL1VpidOnly",
    "SvmNoTransitionFlush",
    "VmptrldSetsLastVpid",
    "ZapSkipsL2Root",
]
