"""An L2 without nested EPT on an EPT L0 (vmcs12 has EPT off while KVM itself uses EPT), and
its SVM analogue, an L2 without nested NPT on an NPT L0 (vmcb12's NP_ENABLE off).

Ports the TDP half of nested.c:nested_vmx_load_cr3 and the role switch of mmu.c's root cache
(read in the stable trees v5.7.14, v5.8.18 and v6.18.2, docs/kvm-sources.md, "An L2 without
nested EPT on an EPT L0"):

- L2 does not get an MMU of its own: vcpu->arch.mmu stays root_mmu, but the MMU role carries
  guest_mode (mmu.c:kvm_calc_mmu_role_common @ v5.7 / v5.8, kvm_calc_tdp_mmu_root_page_role @
  v6.18: role.guest_mode = is_guest_mode(vcpu)), so L2 runs on a direct EPT root of its own,
  with an EPTP other than L1's. Its SPTEs map L1 GPAs (L2's page tables, walked by the
  processor, name L1 GPAs) to host pages, as EPT01's do, and are faulted in separately.
- nested VM-Enter and VM-Exit (nested_vmx_load_cr3 with nested_ept false): the role changes
  (kvm_init_mmu) and the PGD switch (kvm_mmu_new_cr3 @ v5.7, __kvm_mmu_new_pgd @ v5.8,
  kvm_mmu_new_pgd @ v6.18) looks for a usable root in the root cache: a direct root is usable
  whatever the CR3 (is_root_usable @ v5.7, v5.8, v6.18), so the root of the other role, kept in
  prev_roots since the last transition, comes back (KVM_REQ_LOAD_MMU_PGD), and the one left
  goes to prev_roots. v5.7 then asks for a sync and a TLB flush (skip_tlb_flush = false: the
  flush of the incoming EPTP), v5.8 asks for neither (skip_tlb_flush = true), v6.18 for neither
  (force_flush_and_sync_on_reuse off). Without a usable root, kvm_mmu_reload loads one
  (kvm_mmu_load flushes the current context).
- GUEST_CR3 is vmcs12's (L2's own CR3: vmx_load_mmu_pgd with EPT writes vcpu->arch.cr3); L2's
  MOV CR3 and INVLPG are not intercepted (L1's vmcs12 controls are not modelled: it asks for
  neither) and run on the processor under L2's VPID and EPTP.
- the host's zap reaches both roots (kvm_unmap_gfn_range: every root, v5.x's rmap or v6.18's
  TDP MMU walk), and kvm_flush_remote_tlbs flushes both EPTPs where vmx_flush_tlb_all is an
  INVEPT all-context (v5.8, v6.18); v5.7 flushes the current EPTP only (bug #1's EPT half,
  masked there by the flush of the incoming EPTP on every nested transition).
- INVVPID from L1 flushes vpid02 and frees no root (handle_invvpid frees roots only
  `if (!enable_ept)`, v5.8 and v6.18; v5.7 never).

Nested SVM on an NPT L0 with nested paging off in vmcb12 (read in the same three trees,
docs/kvm-sources.md, "An L2 without nested NPT on an NPT L0") shares the root machinery:

- v6.18: svm/nested.c:nested_svm_load_cr3 (from nested_vmcb02_prepare_save on VMRUN, after
  enter_guest_mode; from nested_svm_vmexit after leave_guest_mode) sets vcpu->arch.cr3 to
  vmcb12's CR3 (L1's from vmcb01 on #VMEXIT), re-runs kvm_init_mmu (the role's guest_mode
  follows is_guest_mode) and, without nested NPT, calls kvm_mmu_new_pgd: the fast switch to
  the cached direct root of the other role, as above, with no sync and no flush of its own;
  svm_load_mmu_pgd then puts that root in vmcb02's (vmcb01's) nCR3 and the guest's CR3 in its
  save area. L1 and L2 share the vCPU's ASID, and nested_svm_transition_tlb_flush asks for a
  sync and a flush of that ASID on every VMRUN and #VMEXIT (kvm/nested_svm.py).
- v5.8 and v5.7: enter_svm_guest_mode copies vmcb12's CR3 into the VMCB and vcpu->arch.cr3
  (npt_enabled) and resets the MMU context (kvm_mmu_reset_context; v5.8 from
  nested_prepare_vmcb_control) before enter_guest_mode: the role it computes has guest_mode
  clear, so the next kvm_mmu_load takes L1's NPT root again (mmu_alloc_direct_roots by role)
  and L2 runs on it; svm_flush_tlb flushes the ASID on VMRUN and kvm_mmu_load's flush does at
  the entry after #VMEXIT (nested_svm_vmexit: CR3 from hsave, kvm_mmu_reset_context,
  kvm_mmu_load). L2 never gets a root of its own there (`tdp_role_guest_mode`).
- the host's zap and kvm_flush_remote_tlbs: both roots, and the one ASID, as with nested NPT.

Abstracted: the guest_mode root is one fixed root page (never freed: nothing in the modelled
scenarios frees a root of root_mmu with EPT, and with two roles and three prev_roots both
roots stay cached); the host's other operations (remaps, dirty logging, fast zaps) are
forbidden by the scenario checks, as with nested EPT.
"""

from __future__ import annotations

from kvmtlb.hw.vmx import make_eptp
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.requests import (
    KVM_REQ_LOAD_MMU_PGD,
    KVM_REQ_MMU_SYNC,
    KVM_REQ_TLB_FLUSH,
    kvm_make_request,
    request_names,
)
from kvmtlb.kvm.state import Vcpu


class NestedEpt01:
    """root_mmu's guest_mode root for an L2 without nested EPT @ v6.18 (and v5.8)."""

    # -- the root pages -----------------------------------------------------------------------
    def tdp_root_hpas(self, k: Step) -> tuple[int, ...]:
        """The VM's EPT root pages, and after them L2's guest_mode root."""
        roots: tuple[int, ...] = super().tdp_root_hpas(k)  # type: ignore[misc]
        if k.config.l2_on_ept01:
            return (*roots, k.config.l2_tdp_root)
        return roots

    def l2_tdp_index(self, k: Step) -> int:
        """The index of L2's root in tdp_root_hpas."""
        return len(k.config.tdp_roots or (k.config.tdp_root,))

    def live_tdp_roots(self, k: Step) -> list[int]:
        """What a zap must reach: L2's root too (its SPTEs map L1 GPAs as EPT01's do)."""
        live: list[int] = super().live_tdp_roots(k)  # type: ignore[misc]
        if k.config.l2_on_ept01:
            live.append(self.l2_tdp_index(k))
        return live

    def l2_root_current(self, k: Step, vcpu: Vcpu) -> bool:
        return k.config.l2_on_ept01 and vcpu.tdp_root == self.l2_tdp_index(k)

    def kvm_mmu_root_obsolete(self, k: Step, vcpu: Vcpu) -> bool:
        """L2's root is never made obsolete in the model (no fast zap with it)."""
        if self.l2_root_current(k, vcpu):
            return False
        obsolete: bool = super().kvm_mmu_root_obsolete(k, vcpu)  # type: ignore[misc]
        return obsolete

    def kvm_mmu_put_root(self, k: Step, vcpu: Vcpu) -> None:
        """Dropping L2's root: its page stays KVM's (the shadow page of its role is found again
        by the next mmu_alloc_direct_roots)."""
        if self.l2_root_current(k, vcpu):
            vcpu.tdp_root = -1
            k.note("kvm_mmu_free_roots: L2's root (role.guest_mode) dropped")
            return
        super().kvm_mmu_put_root(k, vcpu)  # type: ignore[misc]

    def kvm_mmu_reset_context(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_reset_context -> kvm_mmu_unload @ v6.18 (v5.7, v5.8 alike): every root
        of root_mmu and of guest_mmu is freed, the cached one of the MMU that is not current
        too (L2's guest_mode root, or nested EPT's EPT02 roots)."""
        super().kvm_mmu_reset_context(k, vcpu)  # type: ignore[misc]
        if (k.config.l2_on_ept01 or k.config.nested_ept) and (
            vcpu.parked_root_valid or vcpu.ept02_prev
        ):
            vcpu.parked_root_valid = False
            vcpu.ept02_prev = 0
            k.note("kvm_mmu_unload: the other MMU's roots freed too")

    def tdp_role_guest_mode(self, k: Step, vcpu: Vcpu) -> bool:
        """The guest_mode bit of the MMU role KVM last computed (kvm_init_mmu): that of
        is_guest_mode when the role was computed, which is the current mode @ v6.18 (and on
        VMX in v5.x)."""
        return vcpu.guest_mode

    def mmu_alloc_direct_roots(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:mmu_alloc_direct_roots @ v6.18 (v5.x alike) while L2 runs: the root of role
        guest_mode (kvm_tdp_mmu_get_vcpu_root_hpa finds it by role; v5.x's kvm_mmu_get_page
        finds the shadow page of that role)."""
        if k.config.l2_on_ept01 and self.tdp_role_guest_mode(k, vcpu):
            vcpu.tdp_root = self.l2_tdp_index(k)
            k.note("mmu_alloc_direct_roots: the root of role.guest_mode (L2's)")
            return
        super().mmu_alloc_direct_roots(k, vcpu)  # type: ignore[misc]

    def construct_eptp(self, k: Step, vcpu: Vcpu) -> int:
        """vmx.c:construct_eptp @ v6.18 of mmu->root.hpa: L2's root while it is current."""
        if self.l2_root_current(k, vcpu):
            return make_eptp(k.config.l2_tdp_root)
        eptp: int = super().construct_eptp(k, vcpu)  # type: ignore[misc]
        return eptp

    # -- nested_vmx_load_cr3 / nested_svm_load_cr3 with TDP in L0 and not in vmcs12/vmcb12 --------
    def nested_ept01_load_cr3(self, k: Step, vcpu: Vcpu, cr3: int, why: str) -> None:
        """nested.c:nested_vmx_load_cr3(cr3, nested_ept = false) @ v6.18 on an EPT L0 (SVM:
        svm/nested.c:nested_svm_load_cr3(cr3, nested_npt = false) @ v6.18 on an NPT L0):
        vcpu->arch.cr3 = cr3, kvm_init_mmu (the role's guest_mode follows is_guest_mode), then
        kvm_mmu_new_pgd: the root of the new role from prev_roots (the old one goes there), and
        the guest's CR3 = cr3 for the entry (GUEST_CR3 by vmx_load_mmu_pgd; the VMCB's save.cr3
        by svm_load_mmu_pgd, whose nCR3 is the root)."""
        vcpu.root_valid, vcpu.parked_root_valid = vcpu.parked_root_valid, vcpu.root_valid
        role = "guest_mode" if vcpu.guest_mode else "L1's"
        loader = "nested_vmx_load_cr3" if k.config.vmx else "nested_svm_load_cr3"
        if vcpu.root_valid:
            vcpu.tdp_root = self.l2_tdp_index(k) if vcpu.guest_mode else 0
            hpa = self.tdp_root_hpas(k)[vcpu.tdp_root]
            pgd = f"EPTP {self.construct_eptp(k, vcpu):#x}" if k.config.vmx else f"nCR3 {hpa:#x}"
            k.note(
                f"{why}: {loader} -> kvm_mmu_new_pgd({cr3:#x})",
                f"fast_pgd_switch: the cached root of role {role} ({pgd})",
            )
            self.nested_ept01_pgd_requests(k, vcpu)
        else:
            vcpu.tdp_root = -1
            k.note(
                f"{why}: {loader} -> kvm_mmu_new_pgd({cr3:#x})",
                f"no cached root of role {role}: kvm_mmu_reload will load one",
            )
        if k.config.vmx:
            self.nested_ept_set_guest_cr3(k, vcpu, cr3, why)  # type: ignore[attr-defined]
        else:
            self.nested_npt_set_guest_cr3(k, vcpu, cr3)  # type: ignore[attr-defined]

    def nested_ept01_pgd_requests(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_new_pgd @ v6.18 after a fast switch: KVM_REQ_LOAD_MMU_PGD only (v5.8's
        __kvm_mmu_new_pgd with skip_tlb_flush = true and a direct root alike)."""
        kvm_make_request(vcpu, KVM_REQ_LOAD_MMU_PGD)
        k.note("kvm_make_request(KVM_REQ_LOAD_MMU_PGD)", "no sync, no flush")


class NestedEpt0157(NestedEpt01):
    """mmu.c @ v5.7: nested_vmx_load_cr3 calls kvm_mmu_new_cr3(vcpu, cr3, false)."""

    def nested_ept01_pgd_requests(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:fast_cr3_switch @ v5.7 with skip_tlb_flush = false: KVM_REQ_LOAD_MMU_PGD,
        KVM_REQ_MMU_SYNC and KVM_REQ_TLB_FLUSH (vmx_flush_tlb: INVEPT of the incoming root)."""
        reqs = KVM_REQ_LOAD_MMU_PGD | KVM_REQ_MMU_SYNC | KVM_REQ_TLB_FLUSH
        kvm_make_request(vcpu, reqs)
        k.note(f"fast_cr3_switch: kvm_make_request({request_names(reqs)})")


__all__ = ["NestedEpt01", "NestedEpt0157"]
