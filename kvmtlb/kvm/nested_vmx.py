"""Nested VMX: KVM emulating VMX for a guest hypervisor (L1) that runs a nested guest (L2).

Ports arch/x86/kvm/vmx/nested.c, nested.h and the nested halves of vmx.c @ v6.18 (`NestedVmx`),
and as they were in v5.8 (`NestedVmx58`, after the seed's series) and v5.7 (`NestedVmx57`,
before it), as far as TLB tags and flushes go:

- VMXON / VMXOFF: enter_vmx_operation allocates vpid02, free_nested frees it;
- nested VM-Enter (nested_vmx_run -> nested_vmx_enter_non_root_mode): vmcs02's VPID
  (prepare_vmcs02_early_rare: vpid02 when vmcs12 enables VPID, else vpid01), the transition
  flush (nested_vmx_transition_tlb_flush, with last_vpid), and L2's CR3 (nested_vmx_load_cr3:
  with shadow paging a new root for L2's page table, kvm_mmu_new_pgd);
- nested VM-Exit (nested_vmx_vmexit -> load_vmcs12_host_state): the flush requests pending for
  L2, vmcs01's VPID, the transition flush, L1's CR3;
- INVVPID from L1 (handle_invvpid): vpid02 flushed, L2's shadow roots freed;
- the vendor hooks' L2 cases: vmx_get_current_vpid, vmx_flush_tlb_all's vpid02 half.

What is modelled: L0 with shadow paging (enable_ept = 0) and VPID, vmcs12 with EPT off (L2's
page tables map L2's GVAs to L1's GPAs, and KVM shadows them as it shadows L1's: kvm/shadow.py),
vmcs12 with VPID on or off. Not modelled: nested EPT (the shadow EPT02 MMU and INVEPT
emulation: kvm/nested_ept.py), L0 with EPT (vmcs12 with EPT off there:
kvm/nested_ept01.py), a vmcs12 per L2 vCPU beyond the current one (VMPTRLD of another vmcs12
is a VMLAUNCH of a new one), nested SVM.

The hardware keeps one VMCS per vCPU here: where KVM switches between vmcs01 and vmcs02
(vmx_switch_vmcs), the model VMWRITEs the fields that differ (VIRTUAL_PROCESSOR_ID, and GUEST_CR3
through kvm_mmu_load_pgd), which gives the processor the same tags.
"""

from __future__ import annotations

from kvmtlb.hw.vmx import Invvpid, Vmwrite
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.requests import (
    KVM_REQ_LOAD_MMU_PGD,
    KVM_REQ_MMU_SYNC,
    KVM_REQ_TLB_FLUSH,
    KVM_REQ_TLB_FLUSH_CURRENT,
    KVM_REQ_TLB_FLUSH_GUEST,
    kvm_check_request,
    kvm_make_request,
    request_names,
)
from kvmtlb.kvm.state import Vcpu
from kvmtlb.kvm.vmx import Vmx

KVM_MMU_NUM_PREV_ROOTS = 3

# The operations L1 (or L2's VMCALL) hands KVM's exit handler: frame[1] of EXIT_NESTED.
NESTED_VMXON = 1
NESTED_VMXOFF = 2
NESTED_VMLAUNCH = 3
NESTED_VMRESUME = 4
NESTED_INVVPID = 5
NESTED_VMCALL = 6  # L2's VMCALL (VMMCALL on AMD): a nested VM exit / #VMEXIT to L1
NESTED_VMRUN = 7  # SVM: frame (root, asid, tlb_control)
NESTED_INVLPGA = 8  # SVM: frame (gva, asid)
NESTED_INVEPT = 9  # nested EPT: frame (type)
NESTED_EPT12_WRITE = 10  # nested EPT: L1's store to a write-protected EPT12, frame (L2 GPA)
NESTED_VMPTRLD = 11  # VMPTRLD of another vmcs12: frame (its L2 table, its VPID)
NESTED_OP_NAMES = {
    NESTED_VMXON: "VMXON",
    NESTED_VMXOFF: "VMXOFF",
    NESTED_VMLAUNCH: "VMLAUNCH",
    NESTED_VMRESUME: "VMRESUME",
    NESTED_INVVPID: "INVVPID",
    NESTED_VMCALL: "VMCALL",
    NESTED_VMRUN: "VMRUN",
    NESTED_INVLPGA: "INVLPGA",
    NESTED_INVEPT: "INVEPT",
    NESTED_EPT12_WRITE: "EPT violation (L1's store to EPT12)",
    NESTED_VMPTRLD: "VMPTRLD",
}
INVVPID_TYPE_NAMES = {
    0: "individual-address",
    1: "single-context",
    2: "all-context",
    3: "single-context-retaining-globals",
}


class NestedVmx(Vmx):
    """vmx/nested.c and the nested cases of vmx.c @ v6.18."""

    # -- nested.h ---------------------------------------------------------------------------
    def nested_cpu_has_vpid(self, vcpu: Vcpu) -> bool:
        """nested.h:nested_cpu_has_vpid @ v6.18: vmcs12 enables VPID (the model's vpid12 is 0
        exactly when it does not: VM entry with VPID enabled and VPID 0 fails)."""
        return vcpu.vpid12 != 0

    def nested_get_vpid02(self, vcpu: Vcpu) -> int:
        """nested.h:nested_get_vpid02 @ v6.18: vpid02 if KVM allocated one, else vpid01."""
        return vcpu.vpid02 if vcpu.vpid02 else vcpu.vpid

    def nested_has_guest_tlb_tag(self, k: Step, vcpu: Vcpu) -> bool:
        """nested.c:nested_has_guest_tlb_tag @ v6.18: L2's TLB entries are tagged apart from
        L1's: by EPTP with EPT, else by vpid02."""
        return k.config.tdp or (self.nested_cpu_has_vpid(vcpu) and vcpu.vpid02 != 0)

    # -- vmx.c, the L2 cases -------------------------------------------------------------------
    def vmx_get_current_vpid(self, k: Step, vcpu: Vcpu) -> int:
        """vmx.c:vmx_get_current_vpid @ v6.18: with L2 active and VPID enabled in vmcs12, the
        effective vpid02; else vpid01 (L2 without VPID runs on vpid01: the fix of bug #11)."""
        if vcpu.guest_mode and self.nested_cpu_has_vpid(vcpu):
            return self.nested_get_vpid02(vcpu)
        return vcpu.vpid

    def vmx_flush_tlb_all(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.c:vmx_flush_tlb_all @ v6.18, its VPID half without EPT: all-context INVVPID, or
        single-context on vpid01 and on vpid02 (the seed series' first patch, bug #1)."""
        if k.config.tdp or not k.config.enable_vpid or self.cpu_has_vmx_invvpid_global(k):
            super().vmx_flush_tlb_all(k, vcpu)
            return
        self.vpid_sync_vcpu_single(k, vcpu, vcpu.vpid)
        self.vpid_sync_vcpu_single(k, vcpu, vcpu.vpid02)

    def free_vpid(self, k: Step, vpid: int) -> None:
        """vmx.c:free_vpid @ v6.18: clear the VPID's bit (nothing for VPID 0)."""
        if k.config.enable_vpid and vpid:
            k.kvm.vpid_bitmap &= ~(1 << vpid)

    # -- the exit handlers of L1's VMX instructions -----------------------------------------------
    def handle_nested_exit(self, k: Step, vcpu: Vcpu, code: int, a: int, b: int, c: int) -> None:
        """vmx.c:kvm_vmx_exit_handlers @ v6.18 for the VMX instructions (VMXON, VMXOFF,
        VMLAUNCH, VMRESUME, INVVPID) L1 executes, and nested.c:nested_vmx_reflect_vmexit for
        L2's VMCALL, which L1 intercepts (a nested VM exit); on SVM, svm.c's VMRUN and INVLPGA
        intercepts and L2's VMMCALL (kvm/nested_svm.py)."""
        k.note(f"vcpu{vcpu.id}: {NESTED_OP_NAMES[code]} exit handler")
        if code == NESTED_VMXON:
            self.enter_vmx_operation(k, vcpu)
        elif code == NESTED_VMXOFF:
            self.free_nested(k, vcpu)
        elif code in (NESTED_VMLAUNCH, NESTED_VMRESUME):
            self.nested_vmx_run(k, vcpu, code == NESTED_VMLAUNCH, a, b, c)
        elif code == NESTED_INVVPID:
            self.handle_invvpid(k, vcpu, a, b, c)
        elif code == NESTED_VMPTRLD:
            self.handle_vmptrld(k, vcpu, a, b, c)
        elif code == NESTED_VMCALL and k.config.vmx:
            self.nested_vmx_vmexit(k, vcpu)
        elif code == NESTED_VMCALL:
            self.nested_svm_vmexit(k, vcpu)  # type: ignore[attr-defined]
        elif code == NESTED_VMRUN:
            self.nested_svm_vmrun(k, vcpu, a, b, c)  # type: ignore[attr-defined]
        elif code == NESTED_INVLPGA:
            self.invlpga_interception(k, vcpu, a, b)  # type: ignore[attr-defined]
        elif code == NESTED_INVEPT:
            self.handle_invept(k, vcpu, a, b)  # type: ignore[attr-defined]
        elif code == NESTED_EPT12_WRITE:
            self.ept12_write_fault(k, vcpu, a, b)  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"unknown nested operation {code}")

    def enter_vmx_operation(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:enter_vmx_operation @ v6.18: vpid02 = allocate_vpid(); nested.vmxon. It
        does not reset last_vpid (bug #12, fixed after v6.18: NestedLastVpidReset)."""
        vcpu.vpid02 = self.allocate_vpid(k)
        vcpu.nested_vmxon = True
        k.note(f"enter_vmx_operation: vpid02 = {vcpu.vpid02}", f"last_vpid stays {vcpu.last_vpid}")

    def free_nested(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:handle_vmxoff -> free_nested @ v6.18: free vpid02 (its VPID may go to
        another vCPU's VMXON), nested.vmxon = false."""
        self.free_vpid(k, vcpu.vpid02)
        k.note(f"free_nested: free_vpid({vcpu.vpid02})")
        vcpu.vpid02 = 0
        vcpu.nested_vmxon = False

    def handle_vmptrld(self, k: Step, vcpu: Vcpu, root: int, vpid12: int, eptp12: int = 0) -> None:
        """nested.c:handle_vmptrld @ v6.18 (v5.8, v5.7 alike), for a vmcs12 other than the
        current one: nested_release_vmcs12 writes the current vmcs12 back to L1's memory and
        frees guest_mmu's roots (nested EPT's, every one: KVM_MMU_ROOTS_ALL; a shadow-paging L0
        or an L2 without nested EPT has none), then the new vmcs12 is read into the cache
        (set_current_vmptr). No TLB flush and no change of last_vpid: a different VPID is
        caught by the next VM-Enter's nested_vmx_transition_tlb_flush. `root`, `vpid12` and
        `eptp12` are what KVM reads from the new vmcs12 (its GUEST_CR3, its VPID, its EPTP: an
        EPT12 table's index)."""
        if vcpu.vmcs12_guest_cr3 == k.config.roots[root]:
            k.note("handle_vmptrld: the current vmcs12 (its page table)", "nothing to do")
            return
        self.nested_release_guest_mmu(k, vcpu)  # type: ignore[attr-defined]
        vcpu.vmcs12_guest_cr3 = k.config.roots[root]
        vcpu.vpid12 = vpid12
        vcpu.eptp12 = eptp12
        k.note(
            f"handle_vmptrld: vmcs12 of GUEST_CR3 {vcpu.vmcs12_guest_cr3:#x}, VPID "
            f"{vpid12 or 'off'}",
            f"last_vpid stays {vcpu.last_vpid}",
        )

    # -- nested VM-Enter --------------------------------------------------------------------------
    def nested_vmx_run(
        self, k: Step, vcpu: Vcpu, launch: bool, root: int, vpid12: int, eptp12: int = -1
    ) -> None:
        """nested.c:nested_vmx_run -> nested_vmx_enter_non_root_mode @ v6.18: service the flushes
        pending for L1 while its context is current, enter guest mode, prepare vmcs02 (its VPID
        first: prepare_vmcs02_early_rare), then prepare_vmcs02: the transition flush, then L2's
        CR3 (nested_vmx_load_cr3). L1's CR3 is vmcs12's HOST_CR3. `root` is the L2 page table
        of a VMLAUNCH (-1: VMRESUME), `vpid12` vmcs12's VPID as L1 wrote it (-1: unchanged),
        `eptp12` its EPTP with nested EPT (an EPT12 table's index; -1: unchanged)."""
        self.nested_service_local_flushes(k, vcpu)
        if launch:
            # the model's VMLAUNCH makes a fresh vmcs12 current first (handle_vmptrld ->
            # nested_release_vmcs12 of the old one; after VMXON free_nested freed them)
            self.nested_release_guest_mmu(k, vcpu)  # type: ignore[attr-defined]
        if root >= 0:
            vcpu.vmcs12_guest_cr3 = k.config.roots[root]
        if vpid12 >= 0:
            vcpu.vpid12 = vpid12
        if eptp12 >= 0:
            vcpu.eptp12 = eptp12
        vcpu.vmcs12_host_cr3 = self.l1_cr3(k, vcpu)
        vcpu.guest_mode = True
        k.note(
            f"nested_vmx_run: {'VMLAUNCH' if launch else 'VMRESUME'} vmcs12 "
            f"(VPID {vcpu.vpid12 or 'off'}, GUEST_CR3 {vcpu.vmcs12_guest_cr3:#x})",
            "enter_guest_mode",
        )
        self.prepare_vmcs02_early_rare(k, vcpu)
        self.nested_vmx_transition_tlb_flush(k, vcpu, True)
        if k.config.nested_ept:
            # prepare_vmcs02: nested_ept_init_mmu_context, then nested_vmx_load_cr3 with
            # nested_ept (no PGD switch: GUEST_CR3 is L2's own), kvm/nested_ept.py
            self.nested_ept_init_mmu_context(k, vcpu)  # type: ignore[attr-defined]
            self.nested_ept_set_guest_cr3(k, vcpu, vcpu.vmcs12_guest_cr3, "prepare_vmcs02")  # type: ignore[attr-defined]
            return
        if k.config.l2_on_ept01:
            # vmcs12 without EPT on an EPT L0: root_mmu's guest_mode root, kvm/nested_ept01.py
            self.nested_ept01_load_cr3(k, vcpu, vcpu.vmcs12_guest_cr3, "prepare_vmcs02")  # type: ignore[attr-defined]
            return
        self.nested_vmx_load_cr3(k, vcpu, vcpu.vmcs12_guest_cr3)

    def l1_cr3(self, k: Step, vcpu: Vcpu) -> int:
        """L1's CR3 as KVM holds it at a nested VM-Enter (vmcs12's HOST_CR3 in the model): with
        EPT the guest's own, in vmcs01's GUEST_CR3; with shadow paging vcpu->arch.cr3."""
        if k.config.tdp:
            assert vcpu.vmcs is not None
            return vcpu.vmcs.guest.cr3
        return vcpu.cr3

    def prepare_vmcs02_early_rare(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:prepare_vmcs02_early_rare @ v6.18: VIRTUAL_PROCESSOR_ID is vpid02 when
        vmcs12 enables VPID and KVM has a vpid02, else vpid01 (L2 without VPID shares VPID 0
        with L1 architecturally, which KVM emulates with vpid01)."""
        if not k.config.enable_vpid:
            return
        vpid = vcpu.vpid02 if self.nested_cpu_has_vpid(vcpu) and vcpu.vpid02 else vcpu.vpid
        self.vmcs_write_vpid(k, vcpu, vpid, "prepare_vmcs02_early_rare")

    def vmcs_write_vpid(self, k: Step, vcpu: Vcpu, vpid: int, why: str) -> None:
        assert vcpu.vmcs is not None
        if vcpu.vmcs.vpid != vpid:
            k.hw(vcpu.cpu, Vmwrite("vpid", vpid), f"{why}: VIRTUAL_PROCESSOR_ID")

    def nested_vmx_transition_tlb_flush(self, k: Step, vcpu: Vcpu, is_vmenter: bool) -> None:
        """nested.c:nested_vmx_transition_tlb_flush @ v6.18: without VPID in vmcs12, L1
        expects a flush of every linear mapping at each transition (a guest TLB flush, which
        also syncs shadow pages); on VM-Enter with a vpid12 other than the last one, L2 is a
        new ASID to L1 (a guest TLB flush: bug #10's fix); if L1 and L2 share a tag (no EPT,
        no vpid02), the current context. Otherwise nothing: the tags differ."""
        if not self.nested_cpu_has_vpid(vcpu):
            self.nested_request(k, vcpu, KVM_REQ_TLB_FLUSH_GUEST, "vmcs12 without VPID")
            return
        if is_vmenter and vcpu.vpid12 != vcpu.last_vpid:
            vcpu.last_vpid = vcpu.vpid12
            self.nested_request(k, vcpu, KVM_REQ_TLB_FLUSH_GUEST, f"new vpid12 {vcpu.vpid12}")
            return
        if not self.nested_has_guest_tlb_tag(k, vcpu):
            self.nested_request(k, vcpu, KVM_REQ_TLB_FLUSH_CURRENT, "L1 and L2 share a tag")
            return
        k.note("nested_vmx_transition_tlb_flush: no flush", f"vpid12 {vcpu.vpid12} = last_vpid")

    def nested_request(self, k: Step, vcpu: Vcpu, req: int, why: str) -> None:
        kvm_make_request(vcpu, req)
        k.note(f"nested_vmx_transition_tlb_flush: kvm_make_request({request_names(req)})", why)

    def nested_vmx_load_cr3(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """nested.c:nested_vmx_load_cr3 @ v6.18 without nested EPT: kvm_mmu_new_pgd (a fast
        switch to a cached root of that page table, no sync and no flush: the transition flush
        decides those), then vcpu->arch.cr3."""
        self.kvm_mmu_new_pgd(k, vcpu, cr3)  # type: ignore[attr-defined]
        vcpu.cr3 = cr3

    # -- nested VM-Exit ---------------------------------------------------------------------------
    def nested_vmx_vmexit(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_vmx_vmexit @ v6.18: service L2's pending local flushes while L2's
        context is current, leave guest mode (vmcs12's GUEST_CR3 keeps L2's CR3), switch to
        vmcs01 (vpid01), then load_vmcs12_host_state: the transition flush and L1's CR3."""
        self.nested_service_local_flushes(k, vcpu)
        vcpu.vmcs12_guest_cr3 = self.l1_cr3(k, vcpu)  # L2's, at this exit
        vcpu.guest_mode = False
        k.note("nested_vmx_vmexit: leave_guest_mode", "vmx_switch_vmcs(vmcs01)")
        if k.config.enable_vpid:
            self.vmcs_write_vpid(k, vcpu, vcpu.vpid, "vmx_switch_vmcs(vmcs01)")
        self.nested_vmx_transition_tlb_flush(k, vcpu, False)
        if k.config.nested_ept:
            # load_vmcs12_host_state: nested_ept_uninit_mmu_context, nested_vmx_load_cr3
            self.nested_ept_uninit_mmu_context(k, vcpu)  # type: ignore[attr-defined]
            self.nested_ept_set_guest_cr3(k, vcpu, vcpu.vmcs12_host_cr3, "load_vmcs12_host_state")  # type: ignore[attr-defined]
            return
        if k.config.l2_on_ept01:
            self.nested_ept01_load_cr3(k, vcpu, vcpu.vmcs12_host_cr3, "load_vmcs12_host_state")  # type: ignore[attr-defined]
            return
        self.nested_vmx_load_cr3(k, vcpu, vcpu.vmcs12_host_cr3)

    def nested_service_local_flushes(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_vmx_enter_non_root_mode and nested_vmx_vmexit @ v6.18:
        kvm_service_local_tlb_flush_requests before switching between L1 and L2, so a pending
        flush hits the context it was meant for (40e5f9080472, v5.16)."""
        self.kvm_service_local_tlb_flush_requests(k, vcpu)  # type: ignore[attr-defined]

    # -- INVVPID ----------------------------------------------------------------------------------
    def handle_invvpid(self, k: Step, vcpu: Vcpu, kind: int, vpid: int, gva: int) -> None:
        """nested.c:handle_invvpid @ v6.18: always the effective vpid02 (never vpid01: INVVPID
        names a VPID of L1's, and every L2 VPID is vpid02 to KVM), individual-address or the
        whole context; then, without EPT, L2's shadow roots are freed: the VPID is not part of
        the MMU role, so L1's invalidation must reach the unsync shadow pages
        (kvm_mmu_free_guest_mode_roots; bug #2)."""
        vpid02 = self.nested_get_vpid02(vcpu)
        k.note(f"handle_invvpid({INVVPID_TYPE_NAMES[kind]}, vpid12 {vpid})", f"vpid02 {vpid02}")
        if kind == 0:
            self.vpid_sync_vcpu_addr(k, vcpu, vpid02, gva)
        else:
            self.vpid_sync_context(k, vcpu, vpid02)
        if not k.config.tdp:
            self.kvm_mmu_free_guest_mode_roots(k, vcpu)

    def kvm_mmu_free_guest_mode_roots(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_free_guest_mode_roots @ v6.18: free the roots KVM built for L2 (role
        guest_mode), current or cached; the next nested VM-Enter loads a new one, synced and
        flushed (kvm_mmu_load)."""
        nested = k.config.nested_roots
        keep = tuple(p for p in vcpu.prev_roots if k.config.root_index(p) not in nested)
        if keep != vcpu.prev_roots:
            k.note("kvm_mmu_free_guest_mode_roots: L2's cached roots freed")
            vcpu.prev_roots = keep
        if vcpu.guest_mode and vcpu.root_valid:
            vcpu.root_valid = False
            k.note("kvm_mmu_free_guest_mode_roots: L2's current root freed")


class NestedVmx58(NestedVmx):
    """nested.c and vmx.c @ v5.8: after the seed's series (nested_vmx_transition_tlb_flush
    introduced, vpid01/vpid02 both flushed on KVM_REQ_TLB_FLUSH), before bugs #9, #10 and #11
    were fixed (v5.16, v5.16, v6.12)."""

    def vmx_get_current_vpid(self, k: Step, vcpu: Vcpu) -> int:
        """vmx.c:vmx_flush_tlb_current @ v5.8: in guest mode nested_get_vpid02, whether or not
        vmcs12 enables VPID (what vmx_get_current_vpid kept until 2024: bug #11)."""
        return self.nested_get_vpid02(vcpu) if vcpu.guest_mode else vcpu.vpid

    def vmx_flush_tlb_gva(self, k: Step, vcpu: Vcpu, addr: int) -> None:
        """vmx.c:vmx_flush_tlb_gva @ v5.8 (and v5.7): vpid_sync_vcpu_addr on vmx->vpid, L1's
        VPID even while L2 runs (bug #9's gva half, 2b4a5a5d5688, v5.16)."""
        self.vpid_sync_vcpu_addr(k, vcpu, vcpu.vpid, addr)

    def nested_vmx_transition_tlb_flush(self, k: Step, vcpu: Vcpu, is_vmenter: bool) -> None:
        """nested.c:nested_vmx_transition_tlb_flush @ v5.8: without VPID in vmcs12, a full
        KVM_REQ_TLB_FLUSH; with a shared tag, the current context; on VM-Enter with a new vpid12,
        an immediate INVVPID of vpid02, with no guest TLB flush and so no sync of L2's shadow
        pages (bug #10, fixed by 712494de96f3 in v5.16)."""
        if not self.nested_cpu_has_vpid(vcpu):
            self.nested_request(k, vcpu, KVM_REQ_TLB_FLUSH, "vmcs12 without VPID")
        elif not self.nested_has_guest_tlb_tag(k, vcpu):
            self.nested_request(k, vcpu, KVM_REQ_TLB_FLUSH_CURRENT, "L1 and L2 share a tag")
        elif is_vmenter and vcpu.vpid12 != vcpu.last_vpid:
            vcpu.last_vpid = vcpu.vpid12
            k.note(f"nested_vmx_transition_tlb_flush: new vpid12 {vcpu.vpid12}", "INVVPID vpid02")
            self.vpid_sync_context(k, vcpu, self.nested_get_vpid02(vcpu))
        else:
            k.note("nested_vmx_transition_tlb_flush: no flush")

    def nested_vmx_load_cr3(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """nested.c:nested_vmx_load_cr3 @ v5.8: kvm_mmu_new_pgd(cr3, skip_tlb_flush = true,
        skip_mmu_sync = !nested_vmx_transition_mmu_sync) : a fast switch syncs only when L0 has
        no EPT and vmcs12 no VPID (nested_vmx_transition_mmu_sync)."""
        hit = self.nested_fast_pgd_switch(k, vcpu, cr3)
        if hit and not k.config.tdp and not self.nested_cpu_has_vpid(vcpu):
            kvm_make_request(vcpu, KVM_REQ_MMU_SYNC)
            k.note("__kvm_mmu_new_pgd: kvm_make_request(KVM_REQ_MMU_SYNC)")
        vcpu.cr3 = cr3

    def nested_fast_pgd_switch(self, k: Step, vcpu: Vcpu, cr3: int) -> bool:
        """mmu.c:__kvm_mmu_new_pgd / fast_pgd_switch @ v5.x (shadow paging): returns whether a
        cached root of `cr3` became current (KVM_REQ_LOAD_MMU_PGD); else the current root is
        freed and the next entry loads one (kvm_mmu_load syncs and flushes it)."""
        if cr3 == vcpu.cr3 and vcpu.root_valid:
            return True
        old = [vcpu.cr3] if vcpu.root_valid else []
        cached = [*old, *vcpu.prev_roots]
        hit = cr3 in cached
        if hit:
            cached.remove(cr3)
            kvm_make_request(vcpu, KVM_REQ_LOAD_MMU_PGD)
            k.note(f"fast_pgd_switch({cr3:#x}): a cached root")
        else:
            vcpu.root_valid = False
            k.note(f"fast_pgd_switch({cr3:#x}): no cached root, free the current one")
        vcpu.prev_roots = tuple(cached[:KVM_MMU_NUM_PREV_ROOTS])
        return hit

    def nested_service_local_flushes(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:nested_vmx_enter_non_root_mode and nested_vmx_vmexit @ v5.8: only
        KVM_REQ_TLB_FLUSH_CURRENT is serviced before the switch (there is no
        KVM_REQ_TLB_FLUSH_GUEST yet)."""
        if kvm_check_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT):
            self.kvm_vcpu_flush_tlb_current(k, vcpu)  # type: ignore[attr-defined]

    def kvm_mmu_free_guest_mode_roots(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c:handle_invvpid @ v5.8 without EPT: kvm_mmu_free_roots(root_mmu,
        KVM_MMU_ROOTS_ALL), every root (Junaid Shahid's fix of bug #2 in the seed's series;
        only L2's roots since 25b62c6274ed)."""
        self.kvm_mmu_unload(k, vcpu)  # type: ignore[attr-defined]


class NestedVmx57(NestedVmx58):
    """nested.c @ v5.7: before the seed's series. The flushes of nested transitions live in
    prepare_vmcs02 and load_vmcs12_host_state; KVM_REQ_TLB_FLUSH flushes vmx->vpid only
    (bug #1); every nested CR3 load flushes (kvm_mmu_new_cr3 with skip_tlb_flush = false)."""

    def nested_vmx_transition_tlb_flush(self, k: Step, vcpu: Vcpu, is_vmenter: bool) -> None:
        """nested.c:prepare_vmcs02 (VM-Enter) and load_vmcs12_host_state (VM-Exit) @ v5.7:
        with VPID in vmcs12 and a tag of its own, a new vpid12 is flushed at once
        (__vmx_flush_tlb on vpid02); else a full KVM_REQ_TLB_FLUSH (on VM-Exit only without
        VPID in vmcs12 or without a tag)."""
        if not k.config.enable_vpid:
            return
        if self.nested_cpu_has_vpid(vcpu) and self.nested_has_guest_tlb_tag(k, vcpu):
            if is_vmenter and vcpu.vpid12 != vcpu.last_vpid:
                vcpu.last_vpid = vcpu.vpid12
                k.note(f"prepare_vmcs02: new vpid12 {vcpu.vpid12}", "__vmx_flush_tlb(vpid02)")
                self._vmx_flush_tlb(k, vcpu, self.nested_get_vpid02(vcpu), False)  # type: ignore[attr-defined]
            else:
                k.note("nested transition: no flush", f"vpid12 {vcpu.vpid12}")
            return
        why = "prepare_vmcs02" if is_vmenter else "load_vmcs12_host_state"
        kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH)
        k.note(f"{why}: kvm_make_request(KVM_REQ_TLB_FLUSH)")

    def nested_vmx_load_cr3(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """nested.c:nested_vmx_load_cr3 @ v5.7: kvm_mmu_new_cr3(vcpu, cr3, false): a fast
        switch syncs the root and requests a TLB flush (KVM_REQ_MMU_SYNC, KVM_REQ_TLB_FLUSH:
        vmx_flush_tlb, vmx->vpid); without a cached root the reload flushes."""
        if self.nested_fast_pgd_switch(k, vcpu, cr3):
            kvm_make_request(vcpu, KVM_REQ_MMU_SYNC | KVM_REQ_TLB_FLUSH)
            k.note("fast_cr3_switch: kvm_make_request(KVM_REQ_MMU_SYNC, KVM_REQ_TLB_FLUSH)")
        vcpu.cr3 = cr3

    def nested_service_local_flushes(self, k: Step, vcpu: Vcpu) -> None:
        """nested.c @ v5.7 services no flush request before a nested transition."""

    def handle_invvpid(self, k: Step, vcpu: Vcpu, kind: int, vpid: int, gva: int) -> None:
        """nested.c:handle_invvpid @ v5.7: individual-address INVVPID of vpid02 if supported,
        else __vmx_flush_tlb(vpid02); the other types __vmx_flush_tlb(vpid02). No shadow root is
        freed (bug #2's fix came with the seed's series); the next nested VM-Enter's
        kvm_mmu_new_cr3 syncs L2's root."""
        vpid02 = self.nested_get_vpid02(vcpu)
        k.note(f"handle_invvpid({INVVPID_TYPE_NAMES[kind]}, vpid12 {vpid})", f"vpid02 {vpid02}")
        if kind == 0 and self.cpu_has_vmx_invvpid_individual_addr(k):
            k.hw(vcpu.cpu, Invvpid(0, vpid02, gva), "handle_invvpid")
        else:
            self._vmx_flush_tlb(k, vcpu, vpid02, False)  # type: ignore[attr-defined]


__all__ = ["NestedVmx", "NestedVmx57", "NestedVmx58"]
