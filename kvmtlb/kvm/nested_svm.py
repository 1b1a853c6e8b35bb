"""Nested SVM: KVM emulating SVM for a guest hypervisor (L1) that runs a nested guest (L2).

Ports arch/x86/kvm/svm/nested.c and svm.c's invlpga_interception @ v6.18 (`NestedSvm`), and
svm/nested.c @ v5.8 / v5.7 (`NestedSvm58`), as far as TLB flushes go. KVM runs L1 and L2 on one
ASID (the vCPU's), so it flushes that ASID, and syncs the MMU, on every nested VMRUN and
#VMEXIT: L1's TLB_CONTROL and ASID in vmcb12 are not needed (the TODO list of
nested_svm_transition_tlb_flush). With shadow paging L2's page tables are shadowed like L1's
(kvm/shadow.py); on an NPT L0 with nested NPT (vmcb12's NP_ENABLE on, an [npt12] table) L2
runs on the shadow NPT02 of kvm/nested_npt.py, and with nested paging off in vmcb12 on root_mmu's
direct root of role guest_mode (v6.18) or on L1's own NPT root (v5.x), kvm/nested_ept01.py. L1's
INVLPGA is handled like INVLPG.

The state reuses `Vcpu`'s nested fields: `guest_mode`, `vmcs12_guest_cr3` (vmcb12's CR3 as of
the last #VMEXIT) and `vmcs12_host_cr3` (the host save area's CR3: L1's at VMRUN).
"""

from __future__ import annotations

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.requests import KVM_REQ_MMU_SYNC, KVM_REQ_TLB_FLUSH_CURRENT, kvm_make_request
from kvmtlb.kvm.state import Vcpu


class NestedSvm:
    """svm/nested.c @ v6.18."""

    def nested_svm_vmrun(self, k: Step, vcpu: Vcpu, root: int, asid: int, tlb_ctl: int) -> None:
        """nested.c:nested_svm_vmrun -> enter_svm_guest_mode @ v6.18: vmcb01's state saved
        (L1's CR3), nested_vmcb02_prepare_control (vmcb02's TLB_CONTROL = DO_NOTHING; L2 runs
        on the vCPU's ASID, not vmcb12's), nested_svm_transition_tlb_flush, then L2's CR3
        (nested_svm_load_cr3)."""
        vcpu.vmcs12_host_cr3 = self.svm_guest_cr3(k, vcpu)
        vcpu.vmcs12_guest_cr3 = k.config.roots[root]
        vcpu.guest_mode = True
        k.note(
            f"nested_svm_vmrun: vmcb12 ASID {asid}, TLB_CONTROL {tlb_ctl}, "
            f"CR3 {vcpu.vmcs12_guest_cr3:#x}",
            "enter_svm_guest_mode: L2 runs on the vCPU's own ASID",
        )
        self.nested_svm_transition_tlb_flush(k, vcpu)
        if k.config.nested_npt:
            # nested_vmcb02_prepare_control: nested_svm_init_mmu_context (kvm/nested_npt.py),
            # then nested_svm_load_cr3 with nested NPT: L2's CR3, no MMU switch
            self.nested_svm_init_mmu_context(k, vcpu)  # type: ignore[attr-defined]
            self.nested_npt_set_guest_cr3(k, vcpu, vcpu.vmcs12_guest_cr3)  # type: ignore[attr-defined]
            return
        if k.config.l2_on_ept01:
            # nested_vmcb02_prepare_save -> nested_svm_load_cr3(nested_npt = false) on an NPT
            # L0: the direct root of role guest_mode (kvm/nested_ept01.py)
            self.nested_ept01_load_cr3(  # type: ignore[attr-defined]
                k, vcpu, vcpu.vmcs12_guest_cr3, "nested_vmcb02_prepare_save"
            )
            return
        self.nested_svm_load_cr3(k, vcpu, vcpu.vmcs12_guest_cr3)

    def svm_guest_cr3(self, k: Step, vcpu: Vcpu) -> int:
        """The running guest's CR3 (L1's at VMRUN, what vmcb01 keeps; L2's at #VMEXIT, what
        vmcb12 keeps): with NPT the guest's own, in the VMCB; with shadow paging
        vcpu->arch.cr3."""
        if k.config.tdp:
            assert vcpu.vmcb is not None
            return vcpu.vmcb.guest.cr3
        return vcpu.cr3

    def nested_svm_vmexit(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_svm_vmexit @ v6.18: vmcb12 keeps L2's CR3, leave guest mode,
        nested_svm_transition_tlb_flush, L1's CR3 from vmcb01 (nested_svm_load_cr3)."""
        vcpu.vmcs12_guest_cr3 = self.svm_guest_cr3(k, vcpu)
        vcpu.guest_mode = False
        k.note("nested_svm_vmexit: leave_guest_mode")
        if k.config.nested_npt:
            # nested_svm_uninit_mmu_context, the transition flush, nested_svm_load_cr3(L1's)
            self.nested_svm_uninit_mmu_context(k, vcpu)  # type: ignore[attr-defined]
            self.nested_svm_transition_tlb_flush(k, vcpu)
            self.nested_npt_set_guest_cr3(k, vcpu, vcpu.vmcs12_host_cr3)  # type: ignore[attr-defined]
            return
        self.nested_svm_transition_tlb_flush(k, vcpu)
        if k.config.l2_on_ept01:
            # nested_svm_load_cr3(L1's CR3 from vmcb01, nested_npt = false): L1's root again
            self.nested_ept01_load_cr3(  # type: ignore[attr-defined]
                k, vcpu, vcpu.vmcs12_host_cr3, "nested_svm_vmexit"
            )
            return
        self.nested_svm_load_cr3(k, vcpu, vcpu.vmcs12_host_cr3)

    def nested_svm_transition_tlb_flush(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_svm_transition_tlb_flush @ v6.18: KVM_REQ_MMU_SYNC and
        KVM_REQ_TLB_FLUSH_CURRENT, unconditionally (L1 and L2 share the ASID)."""
        kvm_make_request(vcpu, KVM_REQ_MMU_SYNC | KVM_REQ_TLB_FLUSH_CURRENT)
        k.note(
            "nested_svm_transition_tlb_flush: "
            "kvm_make_request(KVM_REQ_MMU_SYNC, KVM_REQ_TLB_FLUSH_CURRENT)"
        )

    def nested_svm_load_cr3(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """nested.c:nested_svm_load_cr3 @ v6.18 without nested NPT: kvm_mmu_new_pgd, then
        vcpu->arch.cr3."""
        self.kvm_mmu_new_pgd(k, vcpu, cr3)  # type: ignore[attr-defined]
        vcpu.cr3 = cr3

    def invlpga_interception(self, k: Step, vcpu: Vcpu, gva: int, asid: int) -> None:
        """svm.c:invlpga_interception @ v6.18 (v5.7 alike): the ASID operand is ignored; the
        address is invalidated as INVLPG would (kvm_mmu_invlpg: flush_tlb_gva on the vCPU's
        ASID, the SPTE synced in every root)."""
        k.note(f"invlpga_interception({gva:#x}, ASID {asid})", "kvm_mmu_invlpg")
        self.kvm_mmu_invlpg(k, vcpu, gva)  # type: ignore[attr-defined]


class NestedSvm58(NestedSvm):
    """svm/nested.c @ v5.8 (v5.7 alike): enter_svm_guest_mode and nested_svm_vmexit load the
    CR3 with kvm_set_cr3 and reset the MMU context (every root unloaded: the next entry loads,
    syncs and flushes a root); VMRUN also flushes the ASID (svm_flush_tlb)."""

    def nested_svm_vmrun(self, k: Step, vcpu: Vcpu, root: int, asid: int, tlb_ctl: int) -> None:
        """nested.c:enter_svm_guest_mode @ v5.8: kvm_set_cr3(vmcb12 CR3),
        kvm_mmu_reset_context, svm_flush_tlb (v5.7: svm_flush_tlb(vcpu, true)). With nested
        NPT: nested_svm_init_mmu_context first, and the VMCB's CR3 and vcpu->arch.cr3 are
        vmcb12's (no kvm_set_cr3: npt_enabled)."""
        vcpu.vmcs12_host_cr3 = self.svm_guest_cr3(k, vcpu)
        vcpu.vmcs12_guest_cr3 = k.config.roots[root]
        vcpu.guest_mode = True
        k.note(f"enter_svm_guest_mode: vmcb12 ASID {asid}, TLB_CONTROL {tlb_ctl}")
        if k.config.nested_npt:
            self.nested_svm_init_mmu_context(k, vcpu)  # type: ignore[attr-defined]
            self.nested_npt_set_guest_cr3(k, vcpu, vcpu.vmcs12_guest_cr3)  # type: ignore[attr-defined]
        elif k.config.l2_on_ept01:
            self.nested_svm_set_cr3_npt(k, vcpu, vcpu.vmcs12_guest_cr3)
        else:
            self.nested_svm_set_cr3(k, vcpu, vcpu.vmcs12_guest_cr3)
        self.svm_flush_tlb_asid(k, vcpu)  # type: ignore[attr-defined]

    def nested_svm_vmexit(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_svm_vmexit @ v5.8: kvm_set_cr3(hsave CR3), kvm_mmu_reset_context.
        With nested NPT: nested_svm_uninit_mmu_context, the VMCB's CR3 from hsave,
        kvm_mmu_reset_context and kvm_mmu_load (kvm/nested_npt.py)."""
        vcpu.vmcs12_guest_cr3 = self.svm_guest_cr3(k, vcpu)
        vcpu.guest_mode = False
        k.note("nested_svm_vmexit: leave_guest_mode")
        if k.config.nested_npt:
            self.nested_svm_uninit_mmu_context(k, vcpu)  # type: ignore[attr-defined]
            self.nested_npt_set_guest_cr3(k, vcpu, vcpu.vmcs12_host_cr3)  # type: ignore[attr-defined]
            return
        if k.config.l2_on_ept01:
            # then kvm_mmu_load: here at the next entry (kvm_mmu_reload), L1's root, flushed
            self.nested_svm_set_cr3_npt(k, vcpu, vcpu.vmcs12_host_cr3)
            return
        self.nested_svm_set_cr3(k, vcpu, vcpu.vmcs12_host_cr3)

    def nested_svm_set_cr3(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """(void)kvm_set_cr3(vcpu, cr3); kvm_mmu_reset_context(vcpu) @ v5.8 (without NPT)."""
        self.kvm_set_cr3(k, vcpu, cr3)  # type: ignore[attr-defined]
        self.kvm_mmu_reset_context(k, vcpu)  # type: ignore[attr-defined]

    def nested_svm_set_cr3_npt(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """nested.c:enter_svm_guest_mode / nested_svm_vmexit @ v5.8 (v5.7 alike) with
        npt_enabled and nested paging off in vmcb12: the VMCB's save.cr3 and vcpu->arch.cr3 take
        the CR3 (vmcb12's, or hsave's on #VMEXIT), no kvm_set_cr3; then kvm_mmu_reset_context
        (every root unloaded; the next entry's kvm_mmu_load takes a root, and flushes)."""
        self.nested_npt_set_guest_cr3(k, vcpu, cr3)  # type: ignore[attr-defined]
        self.kvm_mmu_reset_context(k, vcpu)  # type: ignore[attr-defined]

    def tdp_role_guest_mode(self, k: Step, vcpu: Vcpu) -> bool:
        """The MMU role of SVM @ v5.8 / v5.7 on an NPT L0: kvm_mmu_reset_context runs before
        enter_guest_mode on VMRUN (nested_prepare_vmcb_control @ v5.8, enter_svm_guest_mode @
        v5.7) and after leave_guest_mode on #VMEXIT, so its role has guest_mode clear while L2
        runs: L2 runs on L1's NPT root. VMX as v6.18 (kvm/nested_ept01.py)."""
        if k.config.vmx:
            mode: bool = super().tdp_role_guest_mode(k, vcpu)  # type: ignore[misc]
            return mode
        return False


__all__ = ["NestedSvm", "NestedSvm58"]
