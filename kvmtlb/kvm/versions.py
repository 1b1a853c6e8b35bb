"""The upstream versions: kvm-6.18 (the ported structure), kvm-5.8 and kvm-5.7.

kvm-6.18 is `KvmPolicy` as ported (v6.18 sources). kvm-5.8 is v5.8, after Sean Christopherson's
series "KVM: x86: TLB flushing fixes and enhancements" (March 2020, seed e64419d991ea): the hooks
tlb_flush_all / tlb_flush_current / tlb_flush_gva / tlb_flush_guest and KVM_REQ_TLB_FLUSH_CURRENT,
but no KVM_REQ_TLB_FLUSH_GUEST yet and no at_instruction_boundary. kvm-5.7 is v5.7, before the
series: one hook tlb_flush(vcpu, invalidate_gpa), the PV flush through
kvm_vcpu_flush_tlb(vcpu, false), and vpid_sync_* helpers with their older fallbacks.

Only what differs is overridden; each override cites its function and version.
"""

from __future__ import annotations

from typing import ClassVar

from kvmtlb.hw.cpu import CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_PSE, CR4_SMAP, CR4_SMEP
from kvmtlb.hw.paging import E_W
from kvmtlb.hw.vmx import Invvpid
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.hugepage import HugePages58
from kvmtlb.kvm.hyperv import HypervFlush58
from kvmtlb.kvm.nested_ept import NestedEpt57
from kvmtlb.kvm.nested_ept01 import NestedEpt0157
from kvmtlb.kvm.nested_npt import NestedNpt58
from kvmtlb.kvm.nested_svm import NestedSvm58
from kvmtlb.kvm.nested_vmx import NestedVmx57, NestedVmx58
from kvmtlb.kvm.pml import Pml58
from kvmtlb.kvm.policy import KvmPolicy, register
from kvmtlb.kvm.requests import (
    KVM_REQ_MMU_RELOAD,
    KVM_REQ_MMU_SYNC,
    KVM_REQ_STEAL_UPDATE,
    KVM_REQ_TLB_FLUSH,
    KVM_REQ_TLB_FLUSH_CURRENT,
    kvm_check_request,
    kvm_make_request,
    request_names,
)
from kvmtlb.kvm.sregs import SetSregs58
from kvmtlb.kvm.state import KVM_VCPU_FLUSH_TLB, KVM_VCPU_PREEMPTED, HostTask, Vcpu
from kvmtlb.kvm.x86 import steal_byte_names

# x86.c:kvm_set_cr4 @ v5.7/v5.8: a change of these bits resets the MMU context (new root, and
# kvm_mmu_load flushes the current context before the next entry).
MMU_ROLE_BITS = CR4_PGE | CR4_PSE | CR4_PAE | CR4_SMEP | CR4_SMAP | CR4_PKE


@register
class Kvm618(KvmPolicy):
    name = "kvm-6.18"
    summary = (
        "v6.18: flush_tlb_{all,current,gva,guest}, TLB_FLUSH_CURRENT/GUEST, at_instruction_boundary"
    )


@register
class Kvm58(
    NestedNpt58, NestedVmx58, NestedSvm58, HugePages58, HypervFlush58, Pml58, SetSregs58, Kvm618
):
    name = "kvm-5.8"
    summary = (
        "v5.8: after the seed's series (tlb_flush_guest, tlb_flush_current), before "
        "TLB_FLUSH_GUEST and at_instruction_boundary"
    )

    def kvm_steal_time_set_preempted(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:kvm_steal_time_set_preempted @ v5.8: the "already preempted" check of
        CVE-2019-3016, but no at_instruction_boundary (added by 6cd88243c7e0, v5.19)."""
        if vcpu.st_preempted:
            return
        vcpu.st_byte = KVM_VCPU_PREEMPTED
        vcpu.st_preempted = True
        k.note(f"kvm_steal_time_set_preempted(vcpu{vcpu.id}): st->preempted = KVM_VCPU_PREEMPTED")

    def vmx_l1_guest_owned_cr0_bits(self, k: Step) -> int:
        """vmx.c:init_vmcs @ v5.8 (v5.7 alike): cr0_guest_owned_bits is
        KVM_POSSIBLE_CR0_GUEST_BITS, X86_CR0_TS only: every CR0.WP write exits, EPT or not."""
        return 0

    def kvm_post_set_cr0(self, k: Step, vcpu: Vcpu, old_wp: bool, wp: bool) -> None:
        """x86.c:kvm_set_cr0 @ v5.8 (v5.7 alike): a change of an update_bits bit (PG, WP)
        resets the MMU context, with or without TDP; the next entry loads a root and flushes
        the current context."""
        if old_wp != wp:
            self.kvm_mmu_reset_context(k, vcpu)

    def kvm_post_set_cr4(self, k: Step, vcpu: Vcpu, old: int, cr4: int) -> None:
        """x86.c:kvm_set_cr4 @ v5.8: a change of a paging-role bit, or clearing PCIDE, resets the
        MMU context; the next entry loads a new root and flushes the current context."""
        changed = old ^ cr4
        if changed & MMU_ROLE_BITS or (changed & CR4_PCIDE and not cr4 & CR4_PCIDE):
            self.kvm_mmu_reset_context(k, vcpu)

    def kvm_invalidate_pcid(self, k: Step, vcpu: Vcpu, pcid: int) -> None:
        """x86.c:kvm_set_cr3 @ v5.8 (with TDP): kvm_mmu_new_pgd with skip_tlb_flush unless the
        no-flush bit; a TLB flush request for the current context."""
        from kvmtlb.kvm.requests import kvm_make_request

        kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT)
        k.note("kvm_make_request(KVM_REQ_TLB_FLUSH_CURRENT)", "kvm_mmu_new_pgd")

    def kvm_service_local_tlb_flush_requests(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_enter_guest @ v5.8: only KVM_REQ_TLB_FLUSH_CURRENT exists."""
        if kvm_check_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT):
            self.kvm_vcpu_flush_tlb_current(k, vcpu)

    def record_steal_time_flush(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:record_steal_time @ v5.8: the PV flush calls kvm_x86_ops.tlb_flush_guest
        directly (the seed e64419d991ea)."""
        (old,) = vcpu.frame
        vcpu.frame = ()
        if old & KVM_VCPU_FLUSH_TLB:
            k.note("record_steal_time: KVM_VCPU_FLUSH_TLB set", "kvm_x86_ops.tlb_flush_guest")
            self.kvm_x86_call(k, "flush_tlb_guest", vcpu)
        self.record_steal_time_clear_preempted(k, vcpu)
        vcpu.pc = "vcpu_enter_guest:mode"

    def record_steal_time(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:record_steal_time @ v5.7/v5.8, first half: the exchange of 0 into the guest's
        preempted byte. Unlike v6.18, KVM's own copy (vcpu->arch.st.preempted) is cleared only
        after the flush (`record_steal_time_flush`), so a preemption in between is not reported
        to the guest (kvm_steal_time_set_preempted sees it already set)."""
        if not k.config.pv_tlb_flush:
            super().record_steal_time(k, vcpu)
            return
        old = vcpu.st_byte
        vcpu.st_byte = 0
        k.note("record_steal_time: xchg(&st->preempted, 0)", f"read {steal_byte_names(old)}")
        vcpu.frame = (old,)
        vcpu.pc = "record_steal_time:flush"

    def record_steal_time_clear_preempted(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:record_steal_time @ v5.7/v5.8: vcpu->arch.st.preempted = 0 after the flush."""
        vcpu.st_preempted = False

    def svm_set_guest_cr4(self, k: Step, vcpu: Vcpu, value: int) -> None:
        """svm.c:svm_set_cr4 @ v5.7/v5.8: with NPT, a change of CR4.PGE flushes the ASID at once
        (svm_flush_tlb(vcpu, true) in v5.7, svm_flush_tlb(vcpu) in v5.8: both FlushByAsid or a
        new ASID), then the VMCB's guest CR4."""
        old = self.kvm_read_cr4(k, vcpu)
        if k.config.tdp and (old ^ value) & CR4_PGE:
            k.note("svm_set_cr4: CR4.PGE changed with NPT", "svm_flush_tlb")
            self.svm_flush_tlb_asid(k, vcpu)
        super().svm_set_guest_cr4(k, vcpu, value)

    # -- roots and the fast zap @ v5.8 (v5.7 alike) -----------------------------------------
    HOST_STEPS: ClassVar[dict[str, str]] = {
        **Kvm618.HOST_STEPS,
        "kvm_zap_obsolete_pages": "kvm_zap_obsolete_pages",
    }

    def kvm_service_root_requests(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_enter_guest @ v5.8 (v5.7 alike): KVM_REQ_MMU_RELOAD unloads every root
        (kvm_mmu_unload), obsolete or not; KVM_REQ_MMU_FREE_OBSOLETE_ROOTS did not exist."""
        if kvm_check_request(vcpu, KVM_REQ_MMU_RELOAD) and k.config.tdp:
            vcpu.root_valid = False
            k.note("kvm_mmu_unload", "KVM_REQ_MMU_RELOAD")
            self.kvm_mmu_put_root(k, vcpu)

    def kvm_mmu_zap_all_fast(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_mmu_zap_all_fast @ v5.8 (v5.7 alike), under mmu_lock: toggle mmu_valid_gen
        (every root is obsolete), kvm_reload_remote_mmus (KVM_REQ_MMU_RELOAD to every vCPU, a
        KVM_REQUEST_WAIT request), then kvm_zap_obsolete_pages."""
        self.kvm_tdp_mmu_invalidate_roots(k)
        task.frame = (KVM_REQ_MMU_RELOAD, 0, 0)
        task.call("kvm_make_all_cpus_request", "kvm_zap_obsolete_pages")

    def kvm_tdp_mmu_write_protect(self, k: Step, gpa: int) -> bool:
        """mmu.c:kvm_mmu_slot_remove_write_access @ v5.8 (v5.7 alike): slot_rmap_write_protect
        reports whether it cleared a writable SPTE, and only then is the memslot flushed
        (kvm_arch_flush_remote_tlbs_memslot). An SPTE that is already not writable, such as one
        access-tracked by clear_young (which did not flush either), gives no flush, while a TLB
        may still hold the writable translation: historical bug #14, fixed by b64d740ea7dd
        ("kvm: x86: mmu: Always flush TLBs when enabling dirty logging", July 2022)."""
        if not k.config.tdp:
            return super().kvm_tdp_mmu_write_protect(k, gpa)
        # the memslot's SPTEs: a 2 MiB region is one memslot, whichever frame the op names
        n = k.config.huge_region(gpa) if k.config.huge else -1
        frames = self.region_frames(k, n) if n >= 0 else [gpa]
        writable = any(self.spte(k, g, r)[1] & E_W for g in frames for r in self.live_tdp_roots(k))
        super().kvm_tdp_mmu_write_protect(k, gpa)
        if not writable:
            k.note("slot_rmap_write_protect: no writable SPTE", "so no flush")
        return writable

    def kvm_zap_obsolete_pages(self, k: Step, task: HostTask) -> None:
        """mmu.c:kvm_zap_obsolete_pages @ v5.8 (v5.7 alike): zap the obsolete pages (a root a
        vCPU still holds loses its children and is freed with its last reference); if any were
        zapped, kvm_mmu_commit_zap_page flushes remote TLBs before freeing them. (The flush of
        kvm_mmu_commit_zap_page when a vCPU's unload frees an obsolete root later is not
        modelled: leaving out a flush can only make a run less safe.)"""
        if self.zap_invalidated_roots(k):
            task.goto("kvm_flush_remote_tlbs")
        else:
            task.return_()

    def vmx_flush_tlb_guest(self, k: Step, vcpu: Vcpu) -> None:
        """vmx.c:vmx_flush_tlb_guest @ v5.8: vpid_sync_context(to_vmx(vcpu)->vpid)."""
        self.vpid_sync_context(k, vcpu, vcpu.vpid)

    def exit_at_instruction_boundary(self, reason: int) -> bool:
        """v5.8 has no at_instruction_boundary: every preemption is reported."""
        return True

    # -- shadow paging @ v5.8 ------------------------------------------------------------------
    def kvm_mmu_sync_flush(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:mmu_sync_children -> kvm_mmu_flush_or_zap @ v5.8: a local flush only
        (KVM_REQ_TLB_FLUSH_CURRENT); the remote flush came with v5.16."""
        kvm_make_request(vcpu, self.LOCAL_FLUSH_REQUEST)
        k.note(f"kvm_make_request({request_names(self.LOCAL_FLUSH_REQUEST)})", "sync changed SPTEs")

    LOCAL_FLUSH_REQUEST = KVM_REQ_TLB_FLUSH_CURRENT

    def kvm_set_cr3_shadow(self, k: Step, vcpu: Vcpu, cr3: int) -> None:
        """x86.c:kvm_set_cr3 @ v5.8 (v5.7 alike): the same CR3 with a flush syncs the current
        root and flushes it; a new CR3 goes through kvm_mmu_new_pgd, whose fast switch to a
        cached root syncs and flushes the new root unless no-flush. No cached root is synced or
        freed: a cached root with the PCID keeps its unsync pages (fixed by 21823fbda552,
        v5.14)."""
        cr3, noflush, _pcid = self.cr3_operand(k, vcpu, cr3)
        k.note(f"kvm_set_cr3({cr3:#x}{', no flush' if noflush else ''})")
        if cr3 == vcpu.cr3:
            if not noflush:
                self.kvm_mmu_sync_roots(k, vcpu)
                kvm_make_request(vcpu, self.LOCAL_FLUSH_REQUEST)
                k.note(f"kvm_make_request({request_names(self.LOCAL_FLUSH_REQUEST)})")
            return
        hit = cr3 in vcpu.prev_roots
        self.kvm_mmu_new_pgd(k, vcpu, cr3)
        vcpu.cr3 = cr3
        if hit and not noflush:
            kvm_make_request(vcpu, KVM_REQ_MMU_SYNC | self.LOCAL_FLUSH_REQUEST)
            k.note(
                f"kvm_make_request(KVM_REQ_MMU_SYNC, {request_names(self.LOCAL_FLUSH_REQUEST)})",
                "fast_pgd_switch",
            )

    def kvm_handle_invpcid(self, k: Step, vcpu: Vcpu, kind: int, pcid: int, gva: int) -> None:
        """vmx.c:handle_invpcid @ v5.8 (v5.7 alike): single context syncs and flushes the
        current root if it has the PCID and frees the cached roots that have it; all contexts
        (types 2 and 3) unload the MMU (kvm_mmu_unload; the reload syncs and flushes)."""
        if kind == 1:
            k.note(f"handle_invpcid(type 1, pcid {pcid})")
            if self.kvm_get_active_pcid(k, vcpu) == pcid:
                self.kvm_mmu_sync_roots(k, vcpu)
                kvm_make_request(vcpu, self.LOCAL_FLUSH_REQUEST)
            self.free_prev_roots_with_pcid(k, vcpu, pcid)
        elif kind in (2, 3):
            k.note(f"handle_invpcid(type {kind})")
            self.kvm_mmu_unload(k, vcpu)
        else:
            super().kvm_handle_invpcid(k, vcpu, kind, pcid, gva)


@register
class Kvm57(NestedEpt57, NestedEpt0157, NestedVmx57, Kvm58):
    name = "kvm-5.7"
    summary = (
        "v5.7: before the seed's series: tlb_flush(invalidate_gpa); the PV flush "
        "through kvm_vcpu_flush_tlb(vcpu, false)"
    )

    # -- x86.c @ v5.7 ----------------------------------------------------------------------------
    def kvm_vcpu_flush_tlb(self, k: Step, vcpu: Vcpu, invalidate_gpa: bool) -> None:
        """x86.c:kvm_vcpu_flush_tlb @ v5.7: kvm_x86_ops->tlb_flush(vcpu, invalidate_gpa)."""
        if k.config.vmx:
            self.vmx_flush_tlb(k, vcpu, invalidate_gpa)
        else:
            self.svm_flush_tlb(k, vcpu, invalidate_gpa)

    def vcpu_enter_guest(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:vcpu_enter_guest @ v5.7: KVM_REQ_MMU_SYNC, KVM_REQ_LOAD_MMU_PGD, then
        KVM_REQ_TLB_FLUSH -> kvm_vcpu_flush_tlb(vcpu, true); then KVM_REQ_STEAL_UPDATE."""
        if vcpu.requests:
            k.note("vcpu_enter_guest: requests", request_names(vcpu.requests))
        self.kvm_service_mmu_requests(k, vcpu)
        if kvm_check_request(vcpu, KVM_REQ_TLB_FLUSH):
            self.kvm_vcpu_flush_tlb(k, vcpu, True)
        if kvm_check_request(vcpu, KVM_REQ_STEAL_UPDATE):
            self.record_steal_time(k, vcpu)
            return
        vcpu.pc = "vcpu_enter_guest:mode"

    def record_steal_time_flush(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:record_steal_time @ v5.7: kvm_vcpu_flush_tlb(vcpu, false)."""
        (old,) = vcpu.frame
        vcpu.frame = ()
        if old & KVM_VCPU_FLUSH_TLB:
            k.note("record_steal_time: KVM_VCPU_FLUSH_TLB set", "kvm_vcpu_flush_tlb(false)")
            self.kvm_vcpu_flush_tlb(k, vcpu, False)
        self.record_steal_time_clear_preempted(k, vcpu)
        vcpu.pc = "vcpu_enter_guest:mode"

    def kvm_mmu_load_flush(self, k: Step, vcpu: Vcpu) -> None:
        """mmu.c:kvm_mmu_load @ v5.7, its last call: kvm_x86_ops->tlb_flush(vcpu, true)."""
        self.kvm_vcpu_flush_tlb(k, vcpu, True)

    LOCAL_FLUSH_REQUEST = KVM_REQ_TLB_FLUSH  # v5.7 has no KVM_REQ_TLB_FLUSH_CURRENT

    def kvm_invalidate_pcid(self, k: Step, vcpu: Vcpu, pcid: int) -> None:
        """x86.c:kvm_set_cr3 @ v5.7 (with TDP): kvm_mmu_new_cr3 requests a full TLB flush unless
        the no-flush bit is set."""
        from kvmtlb.kvm.requests import kvm_make_request

        kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH)
        k.note("kvm_make_request(KVM_REQ_TLB_FLUSH)", "kvm_mmu_new_cr3")

    # -- vmx.h / vmx_ops.h @ v5.7 --------------------------------------------------------------
    def vmx_flush_tlb(self, k: Step, vcpu: Vcpu, invalidate_gpa: bool) -> None:
        """vmx.h:vmx_flush_tlb @ v5.7: __vmx_flush_tlb(vcpu, vmx->vpid, invalidate_gpa)."""
        self._vmx_flush_tlb(k, vcpu, vcpu.vpid, invalidate_gpa)

    def _vmx_flush_tlb(self, k: Step, vcpu: Vcpu, vpid: int, invalidate_gpa: bool) -> None:
        """vmx.h:__vmx_flush_tlb @ v5.7: INVEPT single-context on the current root when EPT is on
        and the caller asks for guest-physical mappings or VPID is off; else the VPID context."""
        if k.config.tdp and (invalidate_gpa or not k.config.enable_vpid):
            if not vcpu.root_valid:
                return
            self.ept_sync_context(k, vcpu, self.construct_eptp(k, vcpu))
        else:
            self.vpid_sync_context(k, vcpu, vpid)

    def vpid_sync_vcpu_single(self, k: Step, vcpu: Vcpu, vpid: int) -> None:
        """vmx_ops.h:vpid_sync_vcpu_single @ v5.7: no-op for VPID 0, and a capability check."""
        if vpid == 0:
            return
        if self.cpu_has_vmx_invvpid_single(k):
            k.hw(vcpu.cpu, Invvpid(1, vpid), "vpid_sync_vcpu_single")

    def vpid_sync_vcpu_global(self, k: Step, vcpu: Vcpu) -> None:
        """vmx_ops.h:vpid_sync_vcpu_global @ v5.7: with a capability check."""
        if self.cpu_has_vmx_invvpid_global(k):
            k.hw(vcpu.cpu, Invvpid(2, 0), "vpid_sync_vcpu_global")

    def vpid_sync_context(self, k: Step, vcpu: Vcpu, vpid: int) -> None:
        """vmx_ops.h:vpid_sync_context @ v5.7: single-context if supported, else all-context
        (also for VPID 0: the series' "Skip global INVVPID fallback if vpid==0" came later)."""
        if self.cpu_has_vmx_invvpid_single(k):
            self.vpid_sync_vcpu_single(k, vcpu, vpid)
        else:
            self.vpid_sync_vcpu_global(k, vcpu)

    # vpid_sync_vcpu_addr, ept_sync_global and vmx_flush_tlb_gva behave as in v6.18 (vmx.py).

    # -- svm.c @ v5.7 ---------------------------------------------------------------------------
    def svm_flush_tlb(self, k: Step, vcpu: Vcpu, invalidate_gpa: bool) -> None:
        """svm.c:svm_flush_tlb @ v5.7: the flag is ignored; FlushByAsid, or a new ASID."""
        self.svm_flush_tlb_asid(k, vcpu)


__all__ = ["Kvm57", "Kvm58", "Kvm618"]
