"""A second VM: creating a vCPU during the run, destroying a VM, and what they hand back to the
pools the two VMs share (the VPID bitmap, EPT/NPT root pages; ASIDs are per pCPU and shared by
construction).

Ports kvm_main.c:kvm_vm_ioctl_create_vcpu and kvm_destroy_vm, x86.c:kvm_arch_vcpu_create and
kvm_arch_destroy_vm, vmx.c:vmx_vcpu_free and free_vpid, svm.c:svm_vcpu_free @ v6.18 (the same
in kvm-5.7 and kvm-5.8 as far as the TLB is concerned: none of them flushes).

What the model keeps of a struct kvm per VM: its vCPUs (KvmConfig.vm_of), its guest page table
(the scenario's [vm1] table), its memslots (its guest frames: KvmConfig.gpa_vm; the two VMs'
frames are disjoint) and its EPT/NPT roots (Kvm.root_vm). The rest of Kvm (mmu_invalidate_*,
the dirty bitmap) is indexed by guest frame and so is per VM already. Ops that act on a whole
VM (kvm_flush_remote_tlbs, zaps, dirty logging) are not allowed in a two-VM scenario
(model/scenario.py), so no code path needs to know which VM a host op belongs to.

Nothing in the destruction of a VM flushes a TLB: the flush kvm_mmu_zap_all requests goes to
vCPUs that never run again. Its vCPUs' VPIDs (VMX) and its root pages go back to their pools,
and a vCPU created later may get them, while the processors may still cache translations tagged
with them: what keeps the other VM from using those is the flush on a vCPU's first load on a
pCPU (vmx_vcpu_load_vmcs), the new ASID on SVM (pre_svm_run), and kvm_mmu_load's flush of a new
root. The guest memory itself belongs to userspace, which outlives the VM: its pages stay the
destroyed VM's (vm-isolation), and are not freed (no host-isolation event).
"""

from __future__ import annotations

from kvmtlb.hw.vmx import Vmclear
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.state import IN_GUEST_MODE, OUTSIDE_GUEST_MODE, ROOT_FREE, Vcpu


class VmLifecycle:
    """kvm_main.c / x86.c: the vCPU and VM lifecycle, as far as it hands out and takes back
    the tags and root pages the TLBs are indexed by."""

    def kvm_vm_ioctl_create_vcpu(self, k: Step, vcpu: Vcpu) -> None:
        """kvm_main.c:kvm_vm_ioctl_create_vcpu -> x86.c:kvm_arch_vcpu_create @ v6.18: the
        vendor's vcpu_create (VMX: a VPID from the global bitmap, the lowest free one, and a new
        VMCS never loaded anywhere; SVM: a VMCB with no ASID yet), and an MMU without a root
        (kvm_mmu_create: root.hpa = INVALID_PAGE): its first entry loads one (kvm_mmu_load)."""
        assert vcpu.mode != IN_GUEST_MODE and not vcpu.loaded
        vcpu.tdp_root = -1
        vcpu.root_valid = False
        vcpu.pc = "vcpu_enter_guest"
        vcpu.mode = OUTSIDE_GUEST_MODE
        vcpu.last_cpu = -1
        self.vcpu_create(k, vcpu)  # type: ignore[attr-defined]
        tag = f"VPID {vcpu.vpid}" if k.config.vmx else "no ASID yet"
        k.note(f"kvm_vm_ioctl_create_vcpu(vcpu{vcpu.id}) of VM {k.config.vcpu_vm(vcpu.id)}", tag)

    def kvm_destroy_vm(self, k: Step, vm: int) -> None:
        """kvm_main.c:kvm_destroy_vm @ v6.18, once userspace stopped the VM's vCPU threads and
        closed the VM: kvm_arch_flush_shadow_all (kvm_mmu_zap_all) zaps every SPTE of the VM's
        roots, then kvm_arch_destroy_vm frees the vCPUs (kvm_destroy_vcpus: kvm_mmu_unload puts
        each one's root; the vendor's vcpu_free) and the roots go back to the page pool."""
        for r in self.live_tdp_roots(k):  # type: ignore[attr-defined]
            if k.kvm.root_vm[r] != vm:
                continue
            for gpa in k.config.gpas:
                if self.spte(k, gpa, r)[0] >= 0:  # type: ignore[attr-defined]
                    self.set_spte(k, gpa, -1, 0, "kvm_mmu_zap_all", r)  # type: ignore[attr-defined]
        k.note(
            "kvm_mmu_zap_all: no TLB flush reaches a processor",
            "the request goes to vCPUs that never run again",
        )
        for vcpu in k.vcpus:
            if k.config.vcpu_vm(vcpu.id) != vm or (vcpu.vmcs is None and vcpu.vmcb is None):
                continue
            self.kvm_mmu_put_root(k, vcpu)  # type: ignore[attr-defined]
            vcpu.root_valid = False
            if k.config.vmx:
                self.vmx_vcpu_free(k, vcpu)
            else:
                self.svm_vcpu_free(k, vcpu)
        for r, owner in enumerate(k.kvm.root_vm):
            if owner == vm and k.kvm.root_state[r] != ROOT_FREE:
                k.kvm.set_root(r, ROOT_FREE, 0)
                k.note(f"root {r} freed", "its page may become another VM's root")

    def vmx_vcpu_free(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.c:vmx_vcpu_free @ v6.18: free_vpid, then free_loaded_vmcs, whose
        loaded_vmcs_clear runs VMCLEAR on the pCPU the VMCS was last loaded on."""
        self.free_vpid(k, vcpu.vpid)
        assert vcpu.vmcs is not None
        if vcpu.last_cpu >= 0:
            k.hw(vcpu.last_cpu, Vmclear(vcpu.vmcs.ident), "free_loaded_vmcs")
            vcpu.last_cpu = -1

    def free_vpid(self, k: Step, vpid: int) -> None:
        """vmx.c:free_vpid @ v6.18: clear the VPID's bit in the global bitmap; no INVVPID (the
        next vCPU given the VPID relies on the flush of its first load on each pCPU)."""
        if not k.config.enable_vpid or vpid == 0:
            return
        k.kvm.vpid_bitmap &= ~(1 << vpid)
        k.note(f"free_vpid({vpid})", "no flush: the VPID may still tag cached entries")

    def svm_vcpu_free(self, k: Step, vcpu: Vcpu) -> None:
        """svm.c:svm_vcpu_free @ v6.18: nothing TLB-related (ASIDs belong to pCPUs, not to the
        vCPU: the ASID it last had stays in use on its pCPU until that pCPU's generation
        wraps; svm_clear_current_vmcb only drops the pCPU's IBPB cache of the VMCB)."""
        k.note(f"svm_vcpu_free(vcpu{vcpu.id})", f"its ASID {vcpu.asid} stays with its pCPU")


__all__ = ["VmLifecycle"]
