"""KVM's common x86 code: request servicing, the flush wrappers, steal time, exits, emulation.

Ports arch/x86/kvm/x86.c @ v6.18, split at its race windows (design.md, "Interleaving
granularity"). Each step method runs atomically; `Vcpu.pc` names the next one:

    vcpu_enter_guest          service TLB_FLUSH, TLB_FLUSH_CURRENT, TLB_FLUSH_GUEST, then
                              STEAL_UPDATE (record_steal_time's exchange of the steal-time byte)
    record_steal_time:flush   the flush the exchanged byte asked for (kvm_vcpu_flush_tlb_guest)
    vcpu_enter_guest:mode     kvm_mmu_reload, preemption off, vcpu->mode = IN_GUEST_MODE
    vcpu_enter_guest:recheck  kvm_vcpu_exit_request: back out if requests arrived; else VM entry
    guest                     in guest mode (the guest thread runs)
    handle_exit               the exit handler (CR4 write, INVLPG, EPT violation, emulation)
    kvm_tdp_page_fault:map    the fault handler after gfn_to_pfn (see mmu.py)
    x86_emulate_insn:complete the emulated access after its walk (see `x86_emulate_insn_walk`)

The vendor hooks are reached through `kvm_x86_call` (kvm_x86_ops in KVM).
"""

from __future__ import annotations

from typing import Any

from kvmtlb.hw.cpu import CR0_WP, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_PSE, CR4_SMAP, CR4_SMEP
from kvmtlb.hw.layout import Format
from kvmtlb.hw.outcomes import Fault
from kvmtlb.hw.tags import IntelLinearTags
from kvmtlb.hw.walk import Translated, WalkContext, Walker
from kvmtlb.kvm.context import Step, vm_exit_event
from kvmtlb.kvm.requests import (
    KVM_REQ_LOAD_MMU_PGD,
    KVM_REQ_MMU_SYNC,
    KVM_REQ_STEAL_UPDATE,
    KVM_REQ_TLB_FLUSH,
    KVM_REQ_TLB_FLUSH_CURRENT,
    KVM_REQ_TLB_FLUSH_GUEST,
    kvm_check_request,
    kvm_clear_request,
    kvm_make_request,
    kvm_request_pending,
    request_names,
)
from kvmtlb.kvm.state import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    KVM_VCPU_FLUSH_TLB,
    KVM_VCPU_PREEMPTED,
    OUTSIDE_GUEST_MODE,
    Vcpu,
)

# Exit reasons, as the model names them (frame[0] at pc "handle_exit").
EXIT_EXTERNAL_INTERRUPT = 1
EXIT_CR4_WRITE = 2
EXIT_CR3_WRITE = 3
EXIT_INVLPG = 4
EXIT_TDP_FAULT = 5  # EPT violation / #NPF
EXIT_EMULATION = 6  # an instruction KVM emulates (MMIO, emulated_read)
EXIT_CR0_WRITE = 7
EXIT_SHADOW_PF = 8  # a guest #PF KVM intercepts (shadow paging): frame (gva, access kind)
EXIT_PT_WRITE = 9  # a guest store to a write-protected guest page table: frame (root, gva)
EXIT_INVPCID = 10  # frame (type, pcid, gva)
EXIT_PDE_WRITE = 11  # a guest store to a non-leaf entry, emulated: (root, gva, value, level)
EXIT_PTE_WRITE = 12  # a guest PTE store KVM's emulator does: frame (root, gva, value)
EXIT_NESTED = 13  # L1's VMX instruction or L2's exit to L1: frame (op code, a, b, c); nested_vmx
EXIT_NAMES = {
    EXIT_EXTERNAL_INTERRUPT: "external interrupt",
    EXIT_CR4_WRITE: "CR4 write",
    EXIT_CR3_WRITE: "CR3 write",
    EXIT_INVLPG: "INVLPG",
    EXIT_TDP_FAULT: "EPT violation / #NPF",
    EXIT_EMULATION: "emulation",
    EXIT_CR0_WRITE: "CR0 write",
    EXIT_SHADOW_PF: "#PF",
    EXIT_PT_WRITE: "#PF on a write-protected guest page table",
    EXIT_INVPCID: "INVPCID",
    EXIT_PDE_WRITE: "#PF on a write-protected upper-level guest table",
    EXIT_PTE_WRITE: "emulation of a store to a guest PTE",
    EXIT_NESTED: "VMX instruction (nested)",
}


# mmu.h:KVM_MMU_CR4_ROLE_BITS @ v6.18 (LA57 is not modelled; PGE left the role in v5.x's
# successors, its toggle is a KVM_REQ_TLB_FLUSH_GUEST instead).
KVM_MMU_CR4_ROLE_BITS = CR4_PSE | CR4_PAE | CR4_SMEP | CR4_SMAP | CR4_PKE


class X86:
    """arch/x86/kvm/x86.c: the TLB-flush machinery common to VMX and SVM."""

    # -- kvm_x86_ops ----------------------------------------------------------------------------
    def kvm_x86_call(self, k: Step, hook: str, vcpu: Vcpu, *args: Any) -> Any:
        """Dispatch a kvm_x86_ops hook to the vendor's implementation (vmx_<hook>/svm_<hook>)."""
        prefix = "vmx" if k.config.vmx else "svm"
        return getattr(self, f"{prefix}_{hook}")(k, vcpu, *args)

    # -- the flush wrappers ---------------------------------------------------------------------
    def kvm_vcpu_flush_tlb_all(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:kvm_vcpu_flush_tlb_all @ v6.18: flushing every context flushes the current one,
        so a pending KVM_REQ_TLB_FLUSH_CURRENT is dropped."""
        self.kvm_x86_call(k, "flush_tlb_all", vcpu)
        kvm_clear_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT)

    def kvm_vcpu_flush_tlb_current(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:kvm_vcpu_flush_tlb_current @ v6.18."""
        self.kvm_x86_call(k, "flush_tlb_current", vcpu)

    def kvm_vcpu_flush_tlb_guest(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:kvm_vcpu_flush_tlb_guest @ v6.18: without TDP, the guest's flush must also sync
        the unsync shadow pages of every root, current and cached (b53e84eed08b unloaded the
        MMU for this; later commits sync instead); then the vendor's flush_tlb_guest."""
        if not k.config.tdp:
            self.kvm_mmu_sync_roots(k, vcpu)  # type: ignore[attr-defined]
            self.kvm_mmu_sync_prev_roots(k, vcpu)  # type: ignore[attr-defined]
        self.kvm_x86_call(k, "flush_tlb_guest", vcpu)

    def kvm_service_local_tlb_flush_requests(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:kvm_service_local_tlb_flush_requests @ v6.18: CURRENT, then GUEST."""
        if kvm_check_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT):
            self.kvm_vcpu_flush_tlb_current(k, vcpu)
        if kvm_check_request(vcpu, KVM_REQ_TLB_FLUSH_GUEST):
            self.kvm_vcpu_flush_tlb_guest(k, vcpu)

    # -- vcpu_enter_guest ---------------------------------------------------------------------
    def vcpu_enter_guest(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_run / vcpu_enter_guest @ v6.18, the request loop (TLB-relevant requests, in
        order): TLB_FLUSH, then the local CURRENT/GUEST flushes, then STEAL_UPDATE. vcpu_run
        clears at_instruction_boundary at the top of every iteration: a preemption from here on
        (until the next exit for an external interrupt) is not at an instruction boundary."""
        vcpu.at_instruction_boundary = False
        if vcpu.requests:
            k.note("vcpu_enter_guest: requests", request_names(vcpu.requests))
        self.kvm_service_mmu_requests(k, vcpu)
        if kvm_check_request(vcpu, KVM_REQ_TLB_FLUSH):
            self.kvm_vcpu_flush_tlb_all(k, vcpu)
        self.kvm_service_local_tlb_flush_requests(k, vcpu)
        self.kvm_service_dirty_logging_request(k, vcpu)  # type: ignore[attr-defined]
        if kvm_check_request(vcpu, KVM_REQ_STEAL_UPDATE):
            self.record_steal_time(k, vcpu)
            return
        vcpu.pc = "vcpu_enter_guest:mode"

    def kvm_service_mmu_requests(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_enter_guest @ v6.18 (and v5.x): the root requests of a fast zap
        (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS; KVM_REQ_MMU_RELOAD in v5.x), KVM_REQ_MMU_SYNC
        (kvm_mmu_sync_roots), then KVM_REQ_LOAD_MMU_PGD, all before the TLB flush requests."""
        self.kvm_service_root_requests(k, vcpu)  # type: ignore[attr-defined]
        if kvm_check_request(vcpu, KVM_REQ_MMU_SYNC):
            self.kvm_mmu_sync_roots(k, vcpu)  # type: ignore[attr-defined]
        if kvm_check_request(vcpu, KVM_REQ_LOAD_MMU_PGD):
            self.kvm_mmu_load_pgd(k, vcpu)  # type: ignore[attr-defined]

    def record_steal_time(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:record_steal_time @ v6.18, first half: with the PV TLB flush, an atomic exchange
        of 0 into the guest's preempted byte (so a FLUSH_TLB the guest set is never lost), and
        st.preempted is cleared. The flush is the next step."""
        if not k.config.pv_tlb_flush:
            vcpu.st_byte = 0
            vcpu.st_preempted = False
            vcpu.pc = "vcpu_enter_guest:mode"
            return
        old = vcpu.st_byte
        vcpu.st_byte = 0
        vcpu.st_preempted = False
        k.note("record_steal_time: xchg(&st->preempted, 0)", f"read {steal_byte_names(old)}")
        vcpu.frame = (old,)
        vcpu.pc = "record_steal_time:flush"

    def record_steal_time_flush(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:record_steal_time @ v6.18, second half: if the guest asked, flush its TLB."""
        (old,) = vcpu.frame
        vcpu.frame = ()
        if old & KVM_VCPU_FLUSH_TLB:
            k.note("record_steal_time: KVM_VCPU_FLUSH_TLB set", "kvm_vcpu_flush_tlb_guest")
            self.kvm_vcpu_flush_tlb_guest(k, vcpu)
        vcpu.pc = "vcpu_enter_guest:mode"

    def vcpu_enter_guest_mode(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_enter_guest @ v6.18: kvm_mmu_reload, preempt_disable, then
        smp_store_release(&vcpu->mode, IN_GUEST_MODE) with the full barrier after it."""
        self.kvm_mmu_reload(k, vcpu)
        vcpu.mode = IN_GUEST_MODE
        k.note("vcpu->mode = IN_GUEST_MODE")
        vcpu.pc = "vcpu_enter_guest:recheck"

    def vcpu_enter_guest_recheck(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_enter_guest @ v6.18, with preemption and interrupts off: the re-check of
        requests after IN_GUEST_MODE (pairs with kvm_flush_remote_tlbs setting the request
        before reading the mode); if it says exit, back out; else VM entry, and a kick that
        arrived while interrupts were off exits at once. One atomic step of three methods, each
        of which a variant may override alone."""
        if self.kvm_vcpu_exit_request(k, vcpu):
            vcpu.mode = OUTSIDE_GUEST_MODE
            k.note(
                "kvm_vcpu_exit_request: requests pending, cancel entry",
                request_names(vcpu.requests),
            )
            vcpu.pc = "vcpu_enter_guest"
            return
        self.vcpu_enter_guest_run(k, vcpu)
        self.vcpu_enter_guest_pending_kick(k, vcpu)

    def kvm_vcpu_exit_request(self, k: Step, vcpu: Vcpu) -> bool:
        """x86.c:kvm_vcpu_exit_request @ v6.18: a sender moved the mode to EXITING_GUEST_MODE, or
        a request is pending."""
        return vcpu.mode == EXITING_GUEST_MODE or kvm_request_pending(vcpu)

    def vcpu_enter_guest_run(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_enter_guest @ v6.18: the vcpu_run hook (VM entry)."""
        vcpu.at_instruction_boundary = False
        running = self.kvm_x86_call(k, "vcpu_run", vcpu)
        if not running:
            raise AssertionError("VM entry failed")
        vcpu.pc = "guest"

    def vcpu_enter_guest_pending_kick(self, k: Step, vcpu: Vcpu) -> None:
        """A kick sent while interrupts were off is taken right after the VM entry: an exit for
        an external interrupt, and the IPI is acknowledged."""
        if vcpu.pc != "guest" or not k.pcpus[vcpu.cpu].kicks:
            return
        event = vm_exit_event(k.config.vmx, "IPI")
        k.hw(vcpu.cpu, event)
        self.vcpu_exit(k, vcpu, EXIT_EXTERNAL_INTERRUPT, (), cause="pending IPI")
        self.ack_kicks(k, vcpu.cpu)  # type: ignore[attr-defined]

    def kvm_mmu_reload(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.h:kvm_mmu_reload @ v6.18: load a root if the current one is invalid."""
        if not vcpu.root_valid:
            self.kvm_mmu_load(k, vcpu)

    def kvm_mmu_load(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_load @ v6.18: a new root (for shadow paging, the guest CR3's shadow
        root, whose unsync pages are synced: kvm_mmu_sync_roots, then kvm_mmu_load_pgd); its
        provenance is unknown, so flush the current context right after loading it (freeing a
        root then needs no flush)."""
        vcpu.root_valid = True
        vcpu.root_wp = vcpu.cr0_wp  # the root's role: the MMU's role as of now
        k.note("kvm_mmu_load: new root")
        if k.config.tdp:
            self.mmu_alloc_direct_roots(k, vcpu)  # type: ignore[attr-defined]
        self.kvm_mmu_sync_roots(k, vcpu)  # type: ignore[attr-defined]
        self.kvm_mmu_load_pgd(k, vcpu)  # type: ignore[attr-defined]
        self.kvm_mmu_load_flush(k, vcpu)

    def kvm_mmu_load_flush(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_load @ v6.18, its last call: flush_tlb_current for the new root."""
        self.kvm_x86_call(k, "flush_tlb_current", vcpu)

    # -- exits ------------------------------------------------------------------------------------
    def vcpu_exit(
        self, k: Step, vcpu: Vcpu, reason: int, frame: tuple[int, ...], cause: str = ""
    ) -> None:
        """After a VM exit: vcpu->mode = OUTSIDE_GUEST_MODE, the vendor's after-run work
        (handle_exit_irqoff sets at_instruction_boundary for an external interrupt only), and the
        exit handler next."""
        vcpu.mode = OUTSIDE_GUEST_MODE
        vcpu.at_instruction_boundary = self.exit_at_instruction_boundary(reason)
        if not k.config.vmx:
            self.svm_vcpu_after_run(k, vcpu)  # type: ignore[attr-defined]
        else:
            self.vmx_flush_pml_buffer(k, vcpu)  # type: ignore[attr-defined]
        k.note(
            f"vcpu{vcpu.id} VM exit: {EXIT_NAMES[reason]}{' (' + cause + ')' if cause else ''}",
            "vcpu->mode = OUTSIDE_GUEST_MODE",
        )
        if reason == EXIT_EXTERNAL_INTERRUPT:
            vcpu.pc = "vcpu_enter_guest"
        else:
            vcpu.pc = "handle_exit"
            vcpu.frame = (reason, *frame)

    def exit_at_instruction_boundary(self, reason: int) -> bool:
        """vmx.c/svm.c handle_exit_irqoff @ v6.18: only an exit for an external interrupt is known
        to be at an instruction boundary."""
        return reason == EXIT_EXTERNAL_INTERRUPT

    def handle_exit(self, k: Step, vcpu: Vcpu) -> None:
        """The exit handlers the model reaches (vmx.c:handle_cr / svm.c:cr_interception,
        handle_invlpg, the TDP fault handler, the emulator)."""
        reason, *args = vcpu.frame
        vcpu.frame = ()
        vcpu.pc = "vcpu_enter_guest"
        if reason == EXIT_CR4_WRITE:
            self.kvm_set_cr4(k, vcpu, args[0])
        elif reason == EXIT_CR0_WRITE:
            self.kvm_set_cr0(k, vcpu, args[0])
        elif reason == EXIT_CR3_WRITE:
            self.kvm_set_cr3(k, vcpu, args[0])
        elif reason == EXIT_INVLPG:
            self.kvm_mmu_invlpg(k, vcpu, args[0])  # type: ignore[attr-defined]
        elif reason == EXIT_TDP_FAULT:
            self.kvm_mmu_page_fault(k, vcpu, args[0], bool(args[1]))  # type: ignore[attr-defined]
        elif reason == EXIT_EMULATION:
            self.x86_emulate_insn_walk(k, vcpu, args[0])
        elif reason == EXIT_SHADOW_PF:
            self.kvm_mmu_page_fault_shadow(k, vcpu, args[0], args[1])  # type: ignore[attr-defined]
        elif reason == EXIT_PT_WRITE:
            self.kvm_mmu_track_write_fault(k, vcpu, args[0], args[1])  # type: ignore[attr-defined]
        elif reason == EXIT_PTE_WRITE:
            self.kvm_emulate_guest_pt_write(k, vcpu, args[0], args[1], 1, args[2])  # type: ignore[attr-defined]
        elif reason == EXIT_PDE_WRITE:
            self.kvm_emulate_guest_pt_write(k, vcpu, args[0], args[1], args[3], args[2])  # type: ignore[attr-defined]
        elif reason == EXIT_INVPCID:
            self.kvm_handle_invpcid(k, vcpu, *args)  # type: ignore[attr-defined]
        elif reason == EXIT_NESTED:
            self.handle_nested_exit(k, vcpu, *args)  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"unhandled exit {reason}")

    # -- control-register emulation --------------------------------------------------------------
    def kvm_read_cr4(self, k: Step, vcpu: Vcpu) -> int:
        if k.config.vmx:
            assert vcpu.vmcs is not None
            return vcpu.vmcs.guest.cr4
        assert vcpu.vmcb is not None
        return vcpu.vmcb.guest.cr4

    def kvm_set_cr4(self, k: Step, vcpu: Vcpu, cr4: int) -> None:
        """x86.c:kvm_set_cr4 @ v6.18: load the value (vendor set_cr4), then kvm_post_set_cr4."""
        old = self.kvm_read_cr4(k, vcpu)
        k.note(f"kvm_set_cr4({cr4:#x})", f"old CR4 {old:#x}")
        self.kvm_x86_call(k, "set_guest_cr4", vcpu, cr4)
        self.kvm_post_set_cr4(k, vcpu, old, cr4)

    def kvm_post_set_cr4(self, k: Step, vcpu: Vcpu, old: int, cr4: int) -> None:
        """x86.c:kvm_post_set_cr4 @ v6.18: a change of an MMU role bit resets the MMU context
        (the root is reloaded, and kvm_mmu_load flushes the current context); a PGE toggle or
        clearing PCIDE needs a flush of the guest's TLB (KVM_REQ_TLB_FLUSH_GUEST); else a PAE
        toggle or setting SMEP a flush of the current context (KVM_REQ_TLB_FLUSH_CURRENT)."""
        changed = old ^ cr4
        if changed & KVM_MMU_CR4_ROLE_BITS:
            self.kvm_mmu_reset_context(k, vcpu)
        if not k.config.tdp and changed & CR4_PCIDE and cr4 & CR4_PCIDE:
            # cached roots could come back on a no-flush MOV CR3 though the guest never
            # flushed them under PCIDs
            self.kvm_mmu_unload(k, vcpu)  # type: ignore[attr-defined]
        if changed & CR4_PGE or (changed & CR4_PCIDE and not cr4 & CR4_PCIDE):
            kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_GUEST)
            k.note("kvm_make_request(KVM_REQ_TLB_FLUSH_GUEST)", "kvm_post_set_cr4")
        elif changed & CR4_PAE or (changed & CR4_SMEP and cr4 & CR4_SMEP):
            kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT)
            k.note("kvm_make_request(KVM_REQ_TLB_FLUSH_CURRENT)", "kvm_post_set_cr4")

    def kvm_set_cr0(self, k: Step, vcpu: Vcpu, cr0: int) -> None:
        """x86.c:kvm_set_cr0 @ v6.18 for the bit the model's guest changes, CR0.WP, when its
        write exits (always with shadow paging and on SVM; with EPT only where the guest does
        not own the bit, vmx_l1_guest_owned_cr0_bits): vcpu->arch.cr0, the vendor's set_cr0,
        then kvm_post_set_cr0."""
        old, wp = vcpu.cr0_wp, bool(cr0 & CR0_WP)
        k.note(f"kvm_set_cr0({cr0:#x})", f"CR0.WP {int(old)} -> {int(wp)}")
        vcpu.cr0_wp = wp
        self.kvm_x86_call(k, "set_guest_cr0", vcpu, cr0)
        self.kvm_post_set_cr0(k, vcpu, old, wp)

    def kvm_post_set_cr0(self, k: Step, vcpu: Vcpu, old_wp: bool, wp: bool) -> None:
        """x86.c:kvm_post_set_cr0 @ v6.18: CR0.WP is an MMU role bit (KVM_MMU_CR0_ROLE_BITS), so
        changing it resets the MMU context, and the next entry loads a root of the new role
        (kvm_mmu_load, which flushes); with TDP a WP-only change only refreshes the MMU's
        permission checks (kvm_init_mmu), keeping the roots: the TDP roots do not depend on
        the guest's WP ("KVM: x86: Do not unload MMU roots when only toggling CR0.WP with TDP
        enabled", v6.4)."""
        if old_wp == wp:
            return
        if k.config.tdp:
            k.note("kvm_post_set_cr0: CR0.WP only, with TDP", "kvm_init_mmu, the roots stay")
            return
        self.kvm_mmu_reset_context(k, vcpu)

    def kvm_mmu_reset_context(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_reset_context @ v6.18 (and v5.8): kvm_mmu_unload; the next entry loads a
        new root (kvm_mmu_reload)."""
        vcpu.root_valid = False
        vcpu.prev_roots = ()
        k.note("kvm_mmu_reset_context", "the current and cached roots are unloaded")
        if k.config.tdp:
            self.kvm_mmu_put_root(k, vcpu)  # type: ignore[attr-defined]

    def kvm_set_cr3(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """x86.c:kvm_set_cr3 @ v6.18 (with TDP): load CR3; unless the no-flush bit is set,
        kvm_invalidate_pcid. Without TDP, `kvm_set_cr3_shadow` (kvm/shadow.py)."""
        if not k.config.tdp:
            self.kvm_set_cr3_shadow(k, vcpu, cr3)  # type: ignore[attr-defined]
            return
        cr3, noflush, pcid = self.cr3_operand(k, vcpu, cr3)  # type: ignore[attr-defined]
        k.note(f"kvm_set_cr3({cr3:#x}{', no flush' if noflush else ''})")
        vcpu.cr3 = cr3
        self.kvm_x86_call(k, "set_guest_cr3", vcpu, cr3)
        if not noflush:
            self.kvm_invalidate_pcid(k, vcpu, pcid)

    def kvm_invalidate_pcid(self, k: Step, vcpu: Vcpu, pcid: int) -> None:
        """x86.c:kvm_invalidate_pcid @ v6.18: with TDP, the guest's TLB entries for the PCID are
        hardware's, and KVM flushes them all (KVM_REQ_TLB_FLUSH_GUEST). Without TDP,
        `kvm_invalidate_pcid_shadow` (kvm/shadow.py)."""
        if not k.config.tdp:
            self.kvm_invalidate_pcid_shadow(k, vcpu, pcid)  # type: ignore[attr-defined]
            return
        kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_GUEST)
        k.note("kvm_make_request(KVM_REQ_TLB_FLUSH_GUEST)", f"kvm_invalidate_pcid({pcid})")

    # -- vCPU load and put ----------------------------------------------------------------------
    def kvm_arch_vcpu_load(self, k: Step, vcpu: Vcpu, cpu: int) -> None:
        """x86.c:kvm_arch_vcpu_load @ v6.18: the vendor load, then KVM_REQ_STEAL_UPDATE."""
        if k.config.vmx:
            self.vmx_vcpu_load_vmcs(k, vcpu, cpu)  # type: ignore[attr-defined]
        kvm_make_request(vcpu, KVM_REQ_STEAL_UPDATE)

    def kvm_arch_vcpu_put(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:kvm_arch_vcpu_put @ v6.18: a vCPU scheduled out while runnable is reported
        preempted to the guest."""
        if vcpu.preempted:
            self.kvm_steal_time_set_preempted(k, vcpu)

    def kvm_steal_time_set_preempted(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:kvm_steal_time_set_preempted @ v6.18: not outside an instruction boundary
        (6cd88243c7e0: KVM may hold a translation mid-emulation), not twice (CVE-2019-3016: the
        plain store would wipe a FLUSH_TLB the guest set meanwhile); else store PREEMPTED."""
        if not vcpu.at_instruction_boundary:
            k.note(f"kvm_steal_time_set_preempted(vcpu{vcpu.id}): not at an instruction boundary")
            return
        if vcpu.st_preempted:
            return
        vcpu.st_byte = KVM_VCPU_PREEMPTED
        vcpu.st_preempted = True
        k.note(f"kvm_steal_time_set_preempted(vcpu{vcpu.id}): st->preempted = KVM_VCPU_PREEMPTED")

    # -- the emulator -----------------------------------------------------------------------------
    def x86_emulate_insn_walk(self, k: Step, vcpu: Vcpu, gva: int) -> None:
        """emulate.c / x86.c:kvm_mmu_gva_to_gpa_read @ v6.18: KVM walks the guest's page tables in
        software (current memory, no TLB) and keeps the translation while it emulates. The vCPU is
        mid-instruction until the access completes (the next step)."""
        cr3 = (
            vcpu.cr3  # shadow paging: the hardware CR3 holds the shadow root
            if not k.config.tdp
            else vcpu.vmcs.guest.cr3
            if vcpu.vmcs is not None
            else vcpu.vmcb.guest.cr3
            if vcpu.vmcb is not None
            else 0
        )
        cr4 = self.kvm_read_cr4(k, vcpu)
        pcid = cr3 & 0xFFF if cr4 & CR4_PCIDE else 0
        ctx = WalkContext(
            IntelLinearTags(0, pcid),
            cr3 & ~0xFFF & ((1 << 63) - 1),
            -1,
            Format.EPT,
            True,
            bool(cr4 & CR4_PGE),
            guest_physical=True,
        )
        w = Walker(ctx, k.machine.memory.reader, None, k.config.layout.table_backing)
        res = [r for r in w.translate(gva) if isinstance(r, Translated)]
        if res:
            t = res[0]
            vcpu.frame = (gva, t.gpa, t.rights)
            k.note(f"emulator: gva_to_gpa({gva:#x}) = {t.gpa:#x}", "mid-instruction")
        else:
            vcpu.frame = (gva, -1, 0)
            k.note(f"emulator: gva_to_gpa({gva:#x}) faults", "inject #PF")
        vcpu.pc = "x86_emulate_insn:complete"

    def x86_emulate_insn_complete(self, k: Step, vcpu: Vcpu) -> None:
        """The emulated access completes with the translation obtained by the walk; the
        instruction retires (an instruction boundary)."""
        gva, gpa, rights = vcpu.frame
        vcpu.frame = ()
        if gpa >= 0:
            k.observe(vcpu.id, gva, gpa, rights)
        k.note(f"emulator: read {gva:#x} via GPA {gpa:#x}" if gpa >= 0 else "emulator: #PF")
        vcpu.pc = "vcpu_enter_guest"


def steal_byte_names(byte: int) -> str:
    names = [
        n
        for b, n in ((KVM_VCPU_PREEMPTED, "PREEMPTED"), (KVM_VCPU_FLUSH_TLB, "FLUSH_TLB"))
        if byte & b
    ]
    return " | ".join(names) if names else "0"


__all__ = ["EXIT_NAMES", "X86", "Fault"]
