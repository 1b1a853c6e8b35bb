"""KVM's VMX backend: the flush hooks, VPID/EPT helpers, VPID allocation, VMCS load and run.

Ports arch/x86/kvm/vmx/vmx.c and vmx_ops.h @ v6.18 (kvm-5.7 and kvm-5.8 override what differed,
kvm/versions.py). Every INVVPID/INVEPT goes to the hardware model through `Step.hw` on the pCPU
the vCPU is loaded on.

The obligations the helpers encode (SDM §28.3.3): INVVPID never removes guest-physical mappings,
INVEPT never removes linear ones; a VPID of 0 cannot be targeted (vpid_sync_* return early: with
VPID disabled, VM entry and exit already flush VPID 0's linear and combined mappings).
"""

from __future__ import annotations

from kvmtlb.hw.cpu import (
    CR0_DEFAULT,
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    CR4_PCIDE,
    CR4_PGE,
    CR4_PKE,
    CR4_PSE,
    CR4_SMAP,
    CR4_SMEP,
    VMX_NONROOT,
    Capabilities,
    Regs,
    Vmcs,
)
from kvmtlb.hw.outcomes import VmExit
from kvmtlb.hw.vmx import (
    CAP_INVEPT_ALL,
    CAP_INVEPT_SINGLE,
    CAP_INVVPID_ADDR,
    CAP_INVVPID_ALL,
    CAP_INVVPID_SINGLE,
    Invept,
    Invvpid,
    Vmclear,
    VmEntry,
    Vmptrld,
    Vmwrite,
    make_eptp,
)
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.requests import KVM_REQ_TLB_FLUSH, kvm_make_request
from kvmtlb.kvm.state import Vcpu

# The CR4 bits the model's guests change; KVM intercepts writes to those it does not let the
# guest own (the CR4 guest/host mask).
CR4_MODELLED = CR4_PGE | CR4_PCIDE | CR4_PAE | CR4_PSE | CR4_SMEP | CR4_SMAP | CR4_PKE


class Vmx:
    """arch/x86/kvm/vmx: the parts of vmx.c and vmx_ops.h that flush, load and run."""

    # -- capabilities (vmx/capabilities.h) ---------------------------------------------------
    def _cap(self, k: Step) -> int:
        caps = k.config.caps
        assert isinstance(caps, Capabilities)
        return caps.ept_vpid_cap

    def cpu_has_vmx_invvpid_single(self, k: Step) -> bool:
        return bool(self._cap(k) & CAP_INVVPID_SINGLE)

    def cpu_has_vmx_invvpid_global(self, k: Step) -> bool:
        return bool(self._cap(k) & CAP_INVVPID_ALL)

    def cpu_has_vmx_invvpid_individual_addr(self, k: Step) -> bool:
        return bool(self._cap(k) & CAP_INVVPID_ADDR)

    def cpu_has_vmx_invept_context(self, k: Step) -> bool:
        return bool(self._cap(k) & CAP_INVEPT_SINGLE)

    def cpu_has_vmx_invept_global(self, k: Step) -> bool:
        return bool(self._cap(k) & CAP_INVEPT_ALL)

    # -- vmx_ops.h ---------------------------------------------------------------------------
    def vpid_sync_vcpu_single(self, k: Step, vcpu: Vcpu, vpid: int) -> None:
        """vmx_ops.h:vpid_sync_vcpu_single @ v6.18: INVVPID single-context; no-op for VPID 0."""
        if vpid == 0:
            return
        k.hw(vcpu.cpu, Invvpid(1, vpid), "vpid_sync_vcpu_single")

    def vpid_sync_vcpu_global(self, k: Step, vcpu: Vcpu) -> None:
        """vmx_ops.h:vpid_sync_vcpu_global @ v6.18: INVVPID all-context."""
        k.hw(vcpu.cpu, Invvpid(2, 0), "vpid_sync_vcpu_global")

    def vpid_sync_context(self, k: Step, vcpu: Vcpu, vpid: int) -> None:
        """vmx_ops.h:vpid_sync_context @ v6.18: single-context if supported, else all-context
        (skipped for VPID 0)."""
        if self.cpu_has_vmx_invvpid_single(k):
            self.vpid_sync_vcpu_single(k, vcpu, vpid)
        elif vpid != 0:
            self.vpid_sync_vcpu_global(k, vcpu)

    def vpid_sync_vcpu_addr(self, k: Step, vcpu: Vcpu, vpid: int, addr: int) -> None:
        """vmx_ops.h:vpid_sync_vcpu_addr @ v6.18 (v5.7: the same, with the fallback in
        vmx_flush_tlb_gva): individual-address if supported, else the context; no-op for VPID 0."""
        if vpid == 0:
            return
        if self.cpu_has_vmx_invvpid_individual_addr(k):
            k.hw(vcpu.cpu, Invvpid(0, vpid, addr), "vpid_sync_vcpu_addr")
        else:
            self.vpid_sync_context(k, vcpu, vpid)

    def ept_sync_global(self, k: Step, vcpu: Vcpu) -> None:
        """vmx_ops.h:ept_sync_global @ v6.18 (and v5.7): INVEPT all-context."""
        k.hw(vcpu.cpu, Invept(2), "ept_sync_global")

    def ept_sync_context(self, k: Step, vcpu: Vcpu, eptp: int) -> None:
        """vmx_ops.h:ept_sync_context @ v6.18: INVEPT single-context if supported, else global."""
        if self.cpu_has_vmx_invept_context(k):
            k.hw(vcpu.cpu, Invept(1, eptp), "ept_sync_context")
        else:
            self.ept_sync_global(k, vcpu)

    # -- vmx.c -------------------------------------------------------------------------------
    def construct_eptp(self, k: Step, vcpu: Vcpu) -> int:
        """vmx.c:construct_eptp @ v6.18: WB, 4-level walk, the address of the vCPU's root
        (mmu->root.hpa). A/D flags are enabled with enable_ept_ad_bits; the model sets the bit
        only with PML (kvm/pml.py): elsewhere KVM's writable SPTEs are made dirty and never
        cleaned, so the processor would have no flag to set."""
        roots = k.config.tdp_roots or (k.config.tdp_root,)
        return make_eptp(roots[max(vcpu.tdp_root, 0)], ad=k.config.pml)

    def vmx_get_current_vpid(self, k: Step, vcpu: Vcpu) -> int:
        """vmx.c:vmx_get_current_vpid @ v6.18 (no nested guest in the model: vmx->vpid)."""
        return vcpu.vpid

    def vmx_flush_tlb_all(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.c:vmx_flush_tlb_all @ v6.18. With EPT, INVEPT all-context: VM entry does not flush
        guest-physical mappings even with VPID off, and INVVPID never does. Without EPT, every
        VPID context (global INVVPID, or single-context on the vCPU's VPID)."""
        if k.config.tdp:
            self.ept_sync_global(k, vcpu)
        elif k.config.enable_vpid:
            if self.cpu_has_vmx_invvpid_global(k):
                self.vpid_sync_vcpu_global(k, vcpu)
            else:
                self.vpid_sync_vcpu_single(k, vcpu, vcpu.vpid)

    def vmx_flush_tlb_current(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.c:vmx_flush_tlb_current @ v6.18: the current EPTP (INVEPT single-context), or the
        current VPID without EPT; nothing if the current root is invalid."""
        if not vcpu.root_valid:
            return
        if k.config.tdp:
            self.ept_sync_context(k, vcpu, self.construct_eptp(k, vcpu))
        else:
            self.vpid_sync_context(k, vcpu, self.vmx_get_current_vpid(k, vcpu))

    def vmx_flush_tlb_gva(self, k: Step, vcpu: Vcpu, addr: int) -> None:
        """vmx.c:vmx_flush_tlb_gva @ v6.18: INVVPID individual-address on the current VPID (v5.7:
        on vmx->vpid, the same VPID without nested guests)."""
        self.vpid_sync_vcpu_addr(k, vcpu, self.vmx_get_current_vpid(k, vcpu), addr)

    def vmx_flush_tlb_guest(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.c:vmx_flush_tlb_guest @ v6.18: the guest's own mappings (linear and combined) of
        the current VPID; never INVEPT. A no-op with VPID 0: VM entry and exit flush VPID 0."""
        self.vpid_sync_context(k, vcpu, self.vmx_get_current_vpid(k, vcpu))

    def allocate_vpid(self, k: Step) -> int:
        """vmx.c:allocate_vpid @ v6.18: the first free bit of the global bitmap; 0 (no VPID) when
        VPID is disabled or the bitmap is exhausted."""
        if not k.config.enable_vpid:
            return 0
        for vpid in range(1, k.config.nr_vpids):
            if not k.kvm.vpid_bitmap & (1 << vpid):
                k.kvm.vpid_bitmap |= 1 << vpid
                return vpid
        return 0

    def vmx_vcpu_create(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.c:vmx_vcpu_create / init_vmcs @ v6.18: a VPID, and a VMCS that owns CR0.PG and
        CR4.PCIDE and lets the guest own CR4.PGE; with VPID 0 'enable VPID' is cleared. Without
        EPT the guest runs on the shadow root (vmx_load_mmu_pgd) and KVM intercepts what changes
        translations (enable_unrestricted_guest needs EPT)."""
        vcpu.vpid = self.allocate_vpid(k)
        cr4 = k.config.guest_cr4
        tdp = k.config.tdp
        start = k.config.start_root(vcpu.id)  # its VM's page table (kvm/vm.py)
        vcpu.cr3 = start
        vcpu.vmcs = Vmcs(
            ident=0x1000 * (vcpu.id + 1),
            vpid=vcpu.vpid,
            enable_vpid=vcpu.vpid != 0,
            enable_ept=tdp,
            eptp=self.construct_eptp(k, vcpu) if tdp else 0,
            enable_pml=self.vmx_pml_at_create(k),  # type: ignore[attr-defined]
            unrestricted_guest=k.config.unrestricted_guest and tdp,
            # without EPT, KVM intercepts #PF, INVLPG (and so INVPCID) and CR3 loads (init_vmcs:
            # exec_controls / the exception bitmap, vmx_update_exception_bitmap)
            invlpg_exiting=not tdp,
            cr3_load_exiting=not tdp,
            pf_exiting=not tdp,
            # init_vmcs: CR0_GUEST_HOST_MASK is ~cr0_guest_owned_bits (of the bits modelled)
            cr0_guest_host_mask=(CR0_PG | CR0_WP) & ~self.vmx_l1_guest_owned_cr0_bits(k),
            cr0_read_shadow=CR0_DEFAULT,
            cr4_guest_host_mask=CR4_MODELLED & ~self.vmx_cr4_guest_owned_bits(k),
            cr4_read_shadow=cr4,
            guest=Regs(CR0_DEFAULT, start if tdp else k.config.shadow_roots[0], cr4),
            host=k.config.host_regs,
        )

    def vmx_l1_guest_owned_cr0_bits(self, k: Step) -> int:
        """vmx.h:vmx_l1_guest_owned_cr0_bits @ v6.18 (of the CR0 bits modelled): CR0.WP is the
        guest's with EPT (fb509f76acc8, "KVM: VMX: Make CR0.WP a guest owned bit", v6.4), so
        its toggles do not exit; without EPT shadow paging must see every WP write."""
        return CR0_WP if k.config.tdp else 0

    def vmx_cr4_guest_owned_bits(self, k: Step) -> int:
        """vmx.c:vmx_setup_cr4_guest_owned_bits @ v6.18 (set_cr4_guest_host_mask @ v5.7/v5.8,
        which adds X86_CR4_PGE to KVM_CR4_GUEST_OWNED_BITS when enable_ept): with EPT the guest
        owns CR4.PGE, so PGE toggles run natively; PCIDE stays host-owned."""
        return CR4_PGE if k.config.tdp else 0

    def vmx_vcpu_load_vmcs(self, k: Step, vcpu: Vcpu, cpu: int) -> None:
        """vmx.c:vmx_vcpu_load_vmcs @ v6.18. On a new pCPU: VMCLEAR on the old one, VMPTRLD here,
        and KVM_REQ_TLB_FLUSH: VPIDs and EPTPs are global, so this pCPU may hold stale entries
        from an earlier residency of the vCPU."""
        already_loaded = vcpu.last_cpu == cpu
        assert vcpu.vmcs is not None
        if not already_loaded and vcpu.last_cpu >= 0:
            old = k.machine.cpus[vcpu.last_cpu]
            if old.vmcs is not None and old.vmcs.ident == vcpu.vmcs.ident:
                vcpu.vmcs = old.vmcs
                k.hw(vcpu.last_cpu, Vmclear(vcpu.vmcs.ident), "loaded_vmcs_clear")
        current = k.machine.cpus[cpu].vmcs
        if current is None or current.ident != vcpu.vmcs.ident:
            self._save_running_vmcs(k, cpu)
            k.hw(cpu, Vmptrld(vcpu.vmcs), "vmx_vcpu_load_vmcs")
        if not already_loaded:
            self.vmx_migration_flush(k, vcpu)
            vcpu.last_cpu = cpu

    def vmx_migration_flush(self, k: Step, vcpu: Vcpu) -> None:
        """The flush vmx_vcpu_load_vmcs @ v6.18 requests when the vCPU arrives on a pCPU."""
        kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH)
        k.note("kvm_make_request(KVM_REQ_TLB_FLUSH)", "vmx_vcpu_load_vmcs: new pCPU")

    def _save_running_vmcs(self, k: Step, cpu: int) -> None:
        """Before another VMCS becomes current, KVM's copy of the old one is up to date."""
        cur = k.machine.cpus[cpu].vmcs
        if cur is None:
            return
        owner = cur.ident // 0x1000 - 1  # vmx_vcpu_create: ident = 0x1000 * (id + 1)
        if 0 <= owner < len(k.vcpus):
            other = k.vcpus[owner]
            if other.vmcs is not None and other.vmcs.ident == cur.ident:
                other.vmcs = cur

    def vmx_vcpu_run(self, k: Step, vcpu: Vcpu) -> bool:
        """vmx.c:vmx_vcpu_run @ v6.18 (the VM entry): VMLAUNCH or VMRESUME. Returns whether the
        guest is running."""
        assert vcpu.vmcs is not None
        out = k.hw(vcpu.cpu, VmEntry(launch=not vcpu.vmcs.launched), "vmx_vcpu_enter_exit")
        cpu = k.machine.cpus[vcpu.cpu]
        return bool(cpu.mode == VMX_NONROOT and not isinstance(out, VmExit))

    def vmx_guest_cr4(self, vcpu: Vcpu) -> int:
        assert vcpu.vmcs is not None
        return vcpu.vmcs.guest.cr4

    def vmx_set_guest_cr3(self, k: Step, vcpu: Vcpu, value: int) -> None:
        """vmx.c:vmx_load_mmu_pgd @ v6.18 with EPT (vmx_set_cr3 @ v5.x): GUEST_CR3 is the
        guest's own CR3 (a VMWRITE of the loaded VMCS)."""
        assert vcpu.vmcs is not None
        if vcpu.vmcs.guest.cr3 != value:
            guest = vcpu.vmcs.guest._replace(cr3=value)
            k.hw(vcpu.cpu, Vmwrite("guest", guest), "vmx_load_mmu_pgd: GUEST_CR3")

    def vmx_set_guest_cr0(self, k: Step, vcpu: Vcpu, value: int) -> None:
        """vmx.c:vmx_set_cr0 @ v6.18 for a CR0.WP change: CR0_READ_SHADOW takes the guest's
        value; without EPT, GUEST_CR0 keeps WP = 1 (KVM_VM_CR0_ALWAYS_ON with shadow paging), so
        the processor enforces the shadow tables' write protection in supervisor mode too; with
        EPT, GUEST_CR0 is the guest's value, WP included."""
        k.hw(vcpu.cpu, Vmwrite("cr0_read_shadow", value), "vmx_set_cr0")
        assert vcpu.vmcs is not None
        if k.config.tdp and vcpu.vmcs.guest.cr0 != value:
            guest = vcpu.vmcs.guest._replace(cr0=value)
            k.hw(vcpu.cpu, Vmwrite("guest", guest), "vmx_set_cr0: GUEST_CR0")

    def vmx_set_guest_cr4(self, k: Step, vcpu: Vcpu, value: int) -> None:
        """vmx.c:vmx_set_cr4 @ v6.18: GUEST_CR4 and CR4_READ_SHADOW (VMWRITEs of the loaded
        VMCS)."""
        assert vcpu.vmcs is not None
        guest = vcpu.vmcs.guest._replace(cr4=value)
        k.hw(vcpu.cpu, Vmwrite("guest", guest), "vmx_set_cr4")
        k.hw(vcpu.cpu, Vmwrite("cr4_read_shadow", value), "vmx_set_cr4")


__all__ = ["CR4_MODELLED", "Vmx"]
