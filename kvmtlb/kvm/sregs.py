"""KVM_SET_SREGS: userspace rewrites a vCPU's control registers (x86.c @ v6.18, v5.8, v5.7).

Ports x86.c:kvm_arch_vcpu_ioctl_set_sregs, __set_sregs and __set_sregs_common @ v6.18 (and
__set_sregs @ v5.7/v5.8) for the registers the model has: CR3 and CR4 (PGE and SMEP; PCIDE is
left alone), in 4-level paging with CR0.PG = 1 and EFER.LMA = 1 throughout. KVM compares each
new register with the current one; any difference resets the MMU context
(kvm_mmu_reset_context: the current and cached roots are unloaded, and the next entry's
kvm_mmu_load flushes the current context for the new root), and since 4346db6e6e7a ("KVM: x86:
Force TLB flush on userspace changes to special registers", v6.7) also requests a flush of the
guest's TLB (KVM_REQ_TLB_FLUSH_GUEST). A write that changes nothing does neither.

What is abstracted away, and why that is sound here:
- The segment registers, descriptor tables, CR2, CR8, the APIC base and the interrupt bitmap
  cannot change a translation.
- EFER and CR0 are written back unchanged (no scenario changes paging mode or EFER.NX: the
  model's processors run with EFER.NXE = 1 and CR0.PG = 1), so they never add to
  mmu_reset_needed. PAE paging is not modelled, so is_pae_paging() is false and the PDPTRs
  (load_pdptrs, KVM_SET_SREGS2's pdptrs) are never loaded.
- KVM writes vcpu->arch.cr3 and marks the register dirty; with TDP the VMCS's GUEST_CR3 (the
  VMCB's CR3) takes it in vmx_load_mmu_pgd / svm_load_mmu_pgd at the next kvm_mmu_load. The
  port writes it during the ioctl: both happen before the next VM entry, and the write
  invalidates nothing. With shadow paging the hardware CR3 is the shadow root, loaded by
  kvm_mmu_load as for any new root.
"""

from __future__ import annotations

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.requests import KVM_REQ_TLB_FLUSH_GUEST, kvm_make_request
from kvmtlb.kvm.state import Vcpu


class SetSregs:
    """x86.c's KVM_SET_SREGS path @ v6.18."""

    def kvm_arch_vcpu_ioctl_set_sregs(
        self, k: Step, vcpu: Vcpu, cpu: int, cr3: int, cr4: int
    ) -> None:
        """x86.c:kvm_arch_vcpu_ioctl_set_sregs @ v6.18: vcpu_load, __set_sregs, vcpu_put, on
        `cpu`, where the vCPU's thread runs (it has left KVM_RUN to make the ioctl)."""
        self.vcpu_load(k, vcpu, cpu)  # type: ignore[attr-defined]
        k.note(f"KVM_SET_SREGS(vcpu{vcpu.id}): CR3 {cr3:#x}, CR4 {cr4:#x}")
        self.set_sregs(k, vcpu, cr3, cr4)
        self.vcpu_put(k, vcpu, preempted=False)  # type: ignore[attr-defined]

    def set_sregs(self, k: Step, vcpu: Vcpu, cr3: int, cr4: int) -> None:
        """x86.c:__set_sregs @ v6.18: __set_sregs_common says whether the MMU must be reset;
        if so, kvm_mmu_reset_context and a flush of the guest's TLB (4346db6e6e7a: stuffing
        CR0/CR3/CR4 from userspace may need an architectural flush, and KVM takes the simple,
        overkill route of flushing whenever it resets the MMU context)."""
        if self.set_sregs_common(k, vcpu, cr3, cr4):
            self.kvm_mmu_reset_context(k, vcpu)  # type: ignore[attr-defined]
            kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_GUEST)
            k.note("kvm_make_request(KVM_REQ_TLB_FLUSH_GUEST)", "__set_sregs: MMU reset")

    def set_sregs_common(self, k: Step, vcpu: Vcpu, cr3: int, cr4: int) -> bool:
        """x86.c:__set_sregs_common @ v6.18 (__set_sregs @ v5.x alike) for CR3 and CR4: the MMU
        needs a reset when kvm_read_cr3 differs from the new CR3 or kvm_read_cr4 from the new
        CR4; vcpu->arch.cr3 takes the value (with TDP the guest's CR3 in the VMCS/VMCB, see the
        module docstring), the vendor's set_cr4 the CR4. Unlike kvm_set_cr4 there is no
        kvm_post_set_cr4: the caller resets the MMU instead."""
        old_cr3 = self.kvm_read_cr3(k, vcpu)
        old_cr4 = self.kvm_read_cr4(k, vcpu)  # type: ignore[attr-defined]
        reset = old_cr3 != cr3 or old_cr4 != cr4
        vcpu.cr3 = cr3
        if k.config.tdp and old_cr3 != cr3:
            self.kvm_x86_call(k, "set_guest_cr3", vcpu, cr3)  # type: ignore[attr-defined]
        if old_cr4 != cr4:
            self.kvm_x86_call(k, "set_guest_cr4", vcpu, cr4)  # type: ignore[attr-defined]
        k.note(
            "__set_sregs_common",
            f"CR3 {old_cr3:#x} -> {cr3:#x}, CR4 {old_cr4:#x} -> {cr4:#x}: "
            + ("mmu_reset_needed" if reset else "nothing changed"),
        )
        return reset

    def kvm_read_cr3(self, k: Step, vcpu: Vcpu) -> int:
        """kvm_cache_regs.h:kvm_read_cr3 @ v6.18: the guest's CR3. With TDP the guest loads CR3
        without an exit, so it is read from the VMCS/VMCB (vmx_cache_reg's VCPU_EXREG_CR3); with
        shadow paging vcpu->arch.cr3 is always current (every MOV to CR3 exits)."""
        if not k.config.tdp:
            return vcpu.cr3
        if vcpu.vmcs is not None:
            return int(vcpu.vmcs.guest.cr3)
        assert vcpu.vmcb is not None
        return int(vcpu.vmcb.guest.cr3)


class SetSregs58(SetSregs):
    """x86.c:__set_sregs @ v5.8 (v5.7 alike)."""

    def set_sregs(self, k: Step, vcpu: Vcpu, cr3: int, cr4: int) -> None:
        """x86.c:__set_sregs @ v5.8 (v5.7 alike): a change resets the MMU context, and nothing
        more: the flush request came with 4346db6e6e7a (v6.7). kvm_mmu_load's flush of the
        current context for the new root is the only flush."""
        if self.set_sregs_common(k, vcpu, cr3, cr4):
            self.kvm_mmu_reset_context(k, vcpu)  # type: ignore[attr-defined]


__all__ = ["SetSregs", "SetSregs58"]
