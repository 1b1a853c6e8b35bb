"""KVM's SVM backend: the flush hooks, the per-pCPU ASID allocator, VMCB run.

Ports arch/x86/kvm/svm/svm.c @ v6.18 (kvm/versions.py overrides older behaviour). SVM cannot flush
NPT-derived entries alone (APM §15.16.2): every flush of the vCPU is a flush of its ASID, either by
TLB_CONTROL = FLUSH_ASID at the next VMRUN (with FlushByAsid) or by moving the vCPU to a fresh ASID
(the generation trick). ASIDs are per pCPU; a vCPU that arrives on a pCPU gets a new one there.
"""

from __future__ import annotations

from kvmtlb.hw.cpu import CR0_DEFAULT, Regs
from kvmtlb.hw.svm import Invlpga, Vmrun
from kvmtlb.hw.vmcb import (
    SVM_GUEST,
    TLB_CONTROL_DO_NOTHING,
    TLB_CONTROL_FLUSH_ALL_ASID,
    TLB_CONTROL_FLUSH_ASID,
    SvmCapabilities,
    Vmcb,
)
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.state import Pcpu, Vcpu


class Svm:
    """arch/x86/kvm/svm/svm.c: the parts that flush, allocate ASIDs and run."""

    def _flush_by_asid(self, k: Step) -> bool:
        caps = k.config.caps
        assert isinstance(caps, SvmCapabilities)
        return caps.flush_by_asid

    def svm_flush_tlb_asid(self, k: Step, vcpu: Vcpu) -> None:
        """svm.c:svm_flush_tlb_asid @ v6.18: with FlushByAsid, TLB_CONTROL = FLUSH_ASID for the
        next VMRUN; without it, drop the VMCB's ASID generation so pre_svm_run assigns a fresh
        ASID. It flushes only the current ASID even for remote flushes: KVM uses one ASID for L1
        and L2 (no nested guest in the model)."""
        assert vcpu.vmcb is not None
        if self._flush_by_asid(k):
            vcpu.vmcb = vcpu.vmcb._replace(tlb_control=TLB_CONTROL_FLUSH_ASID)
            k.note("vmcb->control.tlb_ctl = TLB_CONTROL_FLUSH_ASID", "svm_flush_tlb_asid")
        else:
            vcpu.asid_generation -= 1
            k.note("vmcb->asid_generation--", "svm_flush_tlb_asid: no FlushByAsid, new ASID")

    def svm_flush_tlb_current(self, k: Step, vcpu: Vcpu) -> None:
        """svm.c:svm_flush_tlb_current @ v6.18 (no Hyper-V enlightenment in the model)."""
        self.svm_flush_tlb_asid(k, vcpu)

    def svm_flush_tlb_all(self, k: Step, vcpu: Vcpu) -> None:
        """svm.c:svm_flush_tlb_all @ v6.18."""
        self.svm_flush_tlb_asid(k, vcpu)

    def svm_flush_tlb_guest(self, k: Step, vcpu: Vcpu) -> None:
        """.flush_tlb_guest = svm_flush_tlb_asid in svm_x86_ops @ v6.18."""
        self.svm_flush_tlb_asid(k, vcpu)

    def svm_flush_tlb_gva(self, k: Step, vcpu: Vcpu, gva: int) -> None:
        """svm.c:svm_flush_tlb_gva @ v6.18: INVLPGA of the page in the VMCB's ASID."""
        assert vcpu.vmcb is not None
        k.hw(vcpu.cpu, Invlpga(gva, vcpu.vmcb.asid), "svm_flush_tlb_gva")

    def svm_hardware_enable(self, k: Step, sd: Pcpu) -> None:
        """svm.c:svm_hardware_enable @ v6.18: the per-pCPU ASID allocator; next_asid past the top
        forces a new generation (and a full flush) on first use."""
        sd.asid_generation = 1
        sd.max_asid = k.config.max_asid
        sd.min_asid = 1
        sd.next_asid = sd.max_asid + 1

    def svm_vcpu_create(self, k: Step, vcpu: Vcpu) -> None:
        """svm.c:svm_vcpu_create / init_vmcb @ v6.18: nested paging on, CR4 writes intercepted
        (every CR4 write exits on SVM), INVLPG and CR3 writes not intercepted with NPT. Without NPT
        (init_vmcb's !npt_enabled branch) #PF, INVLPG, INVPCID and CR3 writes are intercepted and
        the guest runs on the shadow root (svm_load_mmu_pgd)."""
        tdp = k.config.tdp
        start = k.config.start_root(vcpu.id)  # its VM's page table (kvm/vm.py)
        roots = k.config.tdp_roots or (k.config.tdp_root,)
        vcpu.cr3 = start
        vcpu.vmcb = Vmcb(
            ident=0x1000 * (vcpu.id + 1),
            asid=0,
            np_enable=tdp,
            ncr3=roots[max(vcpu.tdp_root, 0)] if tdp else 0,
            intercept_invlpg=not tdp,
            intercept_invpcid=not tdp,
            intercept_cr3_write=not tdp,
            intercept_cr4_write=True,
            intercept_cr0_write=True,
            intercept_pf=not tdp,
            guest=Regs(
                CR0_DEFAULT,
                start if tdp else k.config.shadow_roots[0],
                k.config.guest_cr4,
            ),
        )
        vcpu.asid_generation = 0

    def new_asid(self, k: Step, vcpu: Vcpu, sd: Pcpu) -> None:
        """svm.c:new_asid @ v6.18: the next ASID of this pCPU; when they run out, a new
        generation starts with TLB_CONTROL = FLUSH_ALL_ASID (no stale ASID may be reused)."""
        assert vcpu.vmcb is not None
        if sd.next_asid > sd.max_asid:
            sd.asid_generation += 1
            sd.next_asid = sd.min_asid
            vcpu.vmcb = vcpu.vmcb._replace(tlb_control=TLB_CONTROL_FLUSH_ALL_ASID)
            k.note(
                "vmcb->control.tlb_ctl = TLB_CONTROL_FLUSH_ALL_ASID",
                f"new_asid: ASIDs of pCPU{sd.id} wrapped, generation {sd.asid_generation}",
            )
        vcpu.asid_generation = sd.asid_generation
        vcpu.asid = sd.next_asid
        sd.next_asid += 1
        k.note(f"new_asid: ASID {vcpu.asid}", f"pCPU{sd.id} generation {sd.asid_generation}")

    def pre_svm_run(self, k: Step, vcpu: Vcpu) -> None:
        """svm.c:pre_svm_run @ v6.18: on a pCPU other than the VMCB's last one, the ASID
        generation is reset (ASIDs are per pCPU); a stale generation gets a new ASID."""
        sd = k.pcpus[vcpu.cpu]
        if vcpu.last_cpu != vcpu.cpu:
            vcpu.asid_generation = 0
            vcpu.last_cpu = vcpu.cpu
        if vcpu.asid_generation != sd.asid_generation:
            self.new_asid(k, vcpu, sd)

    def svm_vcpu_run(self, k: Step, vcpu: Vcpu) -> bool:
        """svm.c:svm_vcpu_run @ v6.18 up to VMRUN: pre_svm_run, the ASID into the VMCB."""
        assert vcpu.vmcb is not None
        self.pre_svm_run(k, vcpu)
        if vcpu.vmcb.asid != vcpu.asid:
            vcpu.vmcb = vcpu.vmcb._replace(asid=vcpu.asid)
        k.hw(vcpu.cpu, Vmrun(vcpu.vmcb), "svm_vcpu_enter_exit")
        return bool(k.machine.cpus[vcpu.cpu].mode == SVM_GUEST)

    def svm_vcpu_after_run(self, k: Step, vcpu: Vcpu) -> None:
        """svm.c:svm_vcpu_run @ v6.18 after the guest ran: TLB_CONTROL back to DO_NOTHING."""
        assert vcpu.vmcb is not None
        if vcpu.vmcb.tlb_control != TLB_CONTROL_DO_NOTHING:
            vcpu.vmcb = vcpu.vmcb._replace(tlb_control=TLB_CONTROL_DO_NOTHING)

    def svm_set_guest_cr3(self, k: Step, vcpu: Vcpu, value: int) -> None:
        """svm.c:svm_load_mmu_pgd @ v6.18 with NPT (svm_set_cr3 @ v5.x): the VMCB's guest CR3 is
        the guest's own."""
        assert vcpu.vmcb is not None
        vcpu.vmcb = vcpu.vmcb._replace(guest=vcpu.vmcb.guest._replace(cr3=value))

    def svm_set_guest_cr0(self, k: Step, vcpu: Vcpu, value: int) -> None:
        """svm.c:svm_set_cr0 @ v6.18 for a CR0.WP change: without NPT the VMCB's CR0 keeps PG
        and WP set (hcr0 |= X86_CR0_PG | X86_CR0_WP when !npt_enabled), so the processor still
        enforces the shadow tables' write protection and the guest's value lives in
        vcpu->arch.cr0 (Vcpu.cr0_wp) only; with NPT it is the guest's value. (SVM has no
        per-bit CR0 ownership: with NPT the selective CR0 write intercept still exits on a WP
        change, which the model's intercept_cr0_write stands for.)"""
        assert vcpu.vmcb is not None
        if not k.config.tdp:
            k.note("svm_set_cr0: the VMCB's CR0 keeps WP = 1 (shadow paging)")
            return
        vcpu.vmcb = vcpu.vmcb._replace(guest=vcpu.vmcb.guest._replace(cr0=value))
        k.note(f"svm_set_cr0: vmcb->save.cr0 = {value:#x}")

    def svm_set_guest_cr4(self, k: Step, vcpu: Vcpu, value: int) -> None:
        """svm.c:svm_set_cr4 @ v6.18: the VMCB's guest CR4."""
        assert vcpu.vmcb is not None
        vcpu.vmcb = vcpu.vmcb._replace(guest=vcpu.vmcb.guest._replace(cr4=value))


__all__ = ["Svm"]
