"""Generic KVM: vCPU load and put, remote TLB flushes with kicks, the MMU-notifier window.

Ports virt/kvm/kvm_main.c @ v6.18. kvm_flush_remote_tlbs is split where other processors can
interleave: for each vCPU in turn its request is set, then its mode is read (and moved from
IN_GUEST_MODE to EXITING_GUEST_MODE), then the IPIs are sent, then the sender waits until every
IPI was taken (KVM_REQUEST_WAIT). Paired with the re-check of requests in vcpu_enter_guest after
IN_GUEST_MODE, this guarantees that a vCPU cannot run guest code with a TLB older than the
request: either the sender sees it in guest mode and kicks it, or it sees the request.

The host-side paths (the MMU notifier's invalidate_range_start/end, kvm_flush_remote_tlbs) are
step methods on a `HostTask`, labelled in `KvmPolicy.HOST_STEPS` as the vCPU's steps are in
`STEPS`: the host thread (kvmtlb.host) calls them from the host kernel's operations and keeps the
task's label and locals between the steps, so a variant can override, reorder or split them.
"""

from __future__ import annotations

from dataclasses import fields

from kvmtlb.kvm.context import Step, World
from kvmtlb.kvm.requests import KVM_REQ_TLB_FLUSH, WAIT_REQUESTS, kvm_make_request, request_names
from kvmtlb.kvm.state import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    MODE_NAMES,
    OUTSIDE_GUEST_MODE,
    HostTask,
    Kvm,
    Vcpu,
)

HOST_SENDER = 1  # the host thread's bit in Pcpu.kicks
HOST2_SENDER = 1 << 16  # the second host thread's (`spawn`); vCPUs have bits 1 to 8
P_KICKS = 2  # position of Pcpu.kicks in the frozen Pcpu tuple
K_MMU_LOCK = [f.name for f in fields(Kvm)].index("mmu_lock")
V_PC = [f.name for f in fields(Vcpu)].index("pc")  # position of Vcpu.pc in the frozen tuple
# Host labels that take mmu_lock, so wait while a yielding zap holds it.
TAKES_MMU_LOCK = frozenset(
    {
        "kvm_mmu_notifier_invalidate_range_start",
        "kvm_zap_gfn_range",
        "kvm_zap_gfn_range:relock",
        "kvm_recover_nx_huge_pages",
        "kvm_recover_nx_huge_pages:relock",
    }
)


class KvmMain:
    """virt/kvm/kvm_main.c: vcpu_load/vcpu_put, requests to all vCPUs, kicks, notifiers."""

    # -- vcpu_load / vcpu_put ---------------------------------------------------------------------
    def vcpu_load(self, k: Step, vcpu: Vcpu, cpu: int) -> None:
        """kvm_main.c:vcpu_load / kvm_sched_in @ v6.18: the vCPU runs on `cpu` again."""
        vcpu.cpu = cpu
        k.pcpus[cpu].running = vcpu.id
        vcpu.preempted = False
        k.note(f"vcpu_load(vcpu{vcpu.id}) on pCPU{cpu}")
        self.kvm_arch_vcpu_load(k, vcpu, cpu)  # type: ignore[attr-defined]

    def vcpu_put(self, k: Step, vcpu: Vcpu, preempted: bool = True) -> None:
        """kvm_main.c:kvm_sched_out / vcpu_put @ v6.18: a runnable vCPU scheduled out is
        vcpu->preempted; kvm_arch_vcpu_put reports it to the guest."""
        vcpu.preempted = preempted
        k.note(
            f"vcpu_put(vcpu{vcpu.id}) from pCPU{vcpu.cpu}",
            "vcpu->preempted = true" if preempted else "",
        )
        self.kvm_arch_vcpu_put(k, vcpu)  # type: ignore[attr-defined]
        k.pcpus[vcpu.cpu].running = -1
        vcpu.cpu = -1

    # -- requests to every vCPU -------------------------------------------------------------------
    def kvm_make_vcpu_request(self, k: Step, vcpu: Vcpu, req: int) -> None:
        """kvm_main.c:kvm_make_vcpu_request @ v6.18 (kvm_make_vcpus_request_mask's loop body in
        v5.7/v5.8), first half: set `req` on this vCPU. kvm_make_all_cpus_request_except runs it
        and then kvm_request_needs_ipi for each vCPU in turn; the barrier in between orders the
        request before the mode read, and other processors may act between the two."""
        kvm_make_request(vcpu, req)
        k.note(f"kvm_make_vcpu_request(vcpu{vcpu.id}, {request_names(req)})")

    def kvm_request_needs_ipi(self, k: Step, vcpu: Vcpu, req: int) -> int:
        """kvm_main.c:kvm_make_vcpu_request / kvm_request_needs_ipi @ v6.18, second half, for one
        vCPU: atomically move IN_GUEST_MODE to EXITING_GUEST_MODE; a waiting request kicks every
        vCPU not OUTSIDE_GUEST_MODE. Returns the pCPU to kick, or -1."""
        mode = vcpu.mode
        if mode == IN_GUEST_MODE:
            vcpu.mode = EXITING_GUEST_MODE
        needs = mode != OUTSIDE_GUEST_MODE if req & WAIT_REQUESTS else mode == IN_GUEST_MODE
        target = vcpu.cpu if needs and vcpu.cpu >= 0 else -1
        k.note(
            f"kvm_request_needs_ipi(vcpu{vcpu.id})",
            f"mode was {MODE_NAMES[mode]}" + (f": kick pCPU{target}" if target >= 0 else ""),
        )
        return target

    def kvm_kick_many_cpus(self, k: Step, mask: int, sender: int, wait: bool) -> bool:
        """kvm_main.c:kvm_kick_many_cpus @ v6.18: an IPI (ack_kick) to every pCPU in `mask`;
        with `wait`, the sender then waits until each has taken it. Returns whether any IPI was
        sent."""
        cpus = [p.id for p in k.pcpus if mask & (1 << p.id)]
        if wait:
            for p in cpus:
                k.pcpus[p].kicks |= sender
        k.note("kvm_kick_many_cpus", ", ".join(f"pCPU{p}" for p in cpus) or "no pCPU to kick")
        return bool(cpus)

    def kvm_kick_done(self, k: Step, mask: int, sender: int) -> bool:
        """Whether every IPI `sender` sent to `mask` has been taken (smp_call_function_many's
        wait)."""
        return not any(p.kicks & sender for p in k.pcpus if mask & (1 << p.id))

    def ack_kicks(self, k: Step, cpu: int) -> None:
        """A pCPU takes the pending IPIs (ack_kick is empty: taking the IPI is the ack)."""
        if k.pcpus[cpu].kicks:
            k.pcpus[cpu].kicks = 0
            k.note(f"pCPU{cpu} takes the IPI (ack_kick)")

    # -- kvm_flush_remote_tlbs, as host-task steps -------------------------------------------
    def kvm_flush_remote_tlbs(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_flush_remote_tlbs @ v6.18 (kvm_make_all_cpus_request_except): the
        request of vCPU `frame[0]` (0 on entry); its mode is read in the next step."""
        i, mask = task.frame if task.frame else (0, 0)
        self.kvm_make_vcpu_request(k, k.vcpus[i], KVM_REQ_TLB_FLUSH)
        task.frame = (i, mask)
        task.goto("kvm_flush_remote_tlbs:mode")

    def kvm_flush_remote_tlbs_mode(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_make_vcpu_request @ v6.18, second half, for vCPU `frame[0]`; then the
        next vCPU's request, or the kicks after the last."""
        i, mask = task.frame
        target = self.kvm_request_needs_ipi(k, k.vcpus[i], KVM_REQ_TLB_FLUSH)
        if target >= 0:
            mask |= 1 << target
        if i + 1 < len(k.vcpus):
            task.frame = (i + 1, mask)
            task.goto("kvm_flush_remote_tlbs")
        else:
            task.frame = (mask,)
            task.goto("kvm_flush_remote_tlbs:kick")

    def kvm_flush_remote_tlbs_kick(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_make_all_cpus_request_except @ v6.18: kick the collected pCPUs and
        wait (KVM_REQ_TLB_FLUSH is a KVM_REQUEST_WAIT request)."""
        (mask,) = task.frame
        self.kvm_kick_many_cpus(k, mask, task.sender, wait=True)
        task.goto("kvm_flush_remote_tlbs:wait")

    def kvm_flush_remote_tlbs_wait(self, k: Step, task: HostTask) -> None:
        """smp_call_function_many's wait is over (`host_step_enabled`): kvm_flush_remote_tlbs
        returns."""
        k.note("kvm_flush_remote_tlbs returns")
        task.frame = ()
        task.return_()

    # -- kvm_make_all_cpus_request for other requests, as host-task steps ----------------------
    def kvm_make_all_cpus_request(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_make_all_cpus_request @ v6.18 for the request `frame[0]` (a request with
        KVM_REQUEST_WAIT, such as KVM_REQ_MMU_FREE_OBSOLETE_ROOTS): set it on vCPU `frame[1]`; as
        kvm_flush_remote_tlbs does, the mode is read in the next step, and the sender kicks and
        waits after the last vCPU."""
        req, i, _mask = task.frame
        self.kvm_make_vcpu_request(k, k.vcpus[i], req)
        task.goto("kvm_make_all_cpus_request:mode")

    def kvm_make_all_cpus_request_mode(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_make_vcpu_request @ v6.18, second half (kvm_request_needs_ipi)."""
        req, i, mask = task.frame
        target = self.kvm_request_needs_ipi(k, k.vcpus[i], req)
        if target >= 0:
            mask |= 1 << target
        if i + 1 < len(k.vcpus):
            task.frame = (req, i + 1, mask)
            task.goto("kvm_make_all_cpus_request")
        else:
            task.frame = (mask,)
            task.goto("kvm_make_all_cpus_request:kick")

    def kvm_make_all_cpus_request_kick(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_make_all_cpus_request_except @ v6.18: kick and wait."""
        (mask,) = task.frame
        self.kvm_kick_many_cpus(k, mask, task.sender, wait=True)
        task.goto("kvm_make_all_cpus_request:wait")

    def kvm_make_all_cpus_request_wait(self, k: Step, task: HostTask) -> None:
        """Every kicked pCPU took its IPI: kvm_make_all_cpus_request returns."""
        k.note("kvm_make_all_cpus_request returns")
        task.frame = ()
        task.return_()

    def host_step_enabled(
        self, w: World, pc: str, frame: tuple[int, ...], sender: int = HOST_SENDER
    ) -> bool:
        """Whether the host task at label `pc` (of the host thread whose kick bit is `sender`)
        may step in world `w`: the wait of kvm_flush_remote_tlbs (and of
        kvm_make_all_cpus_request) blocks until every pCPU it kicked took the IPI; a step that
        takes mmu_lock waits while a yielding zap holds it."""
        if pc in ("kvm_flush_remote_tlbs:wait", "kvm_make_all_cpus_request:wait"):
            (mask,) = frame
            return not any(
                w.pcpus[p][P_KICKS] & sender for p in range(len(w.pcpus)) if mask >> p & 1
            )
        if pc in TAKES_MMU_LOCK:
            return not w.kvm[K_MMU_LOCK]
        if pc == "kvm_set_memslot:swap":  # synchronize_srcu: no fault between lookup and map
            return not any(vc[V_PC] == "kvm_tdp_page_fault:map" for vc in w.vcpus)
        return True

    # -- the MMU notifier, as host-task steps --------------------------------------------------
    def kvm_mmu_notifier_invalidate_range_start(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_mmu_notifier_invalidate_range_start @ v6.18 (kvm_handle_hva_range with
        on_lock = kvm_mmu_invalidate_begin, handler kvm_unmap_gfn_range, flush_on_ret): faults
        on the range retry from here on, the SPTE is zapped, and if something was zapped,
        kvm_flush_remote_tlbs runs before the callback returns to the primary MMU."""
        self.kvm_mmu_invalidate_begin(k)
        if self.kvm_unmap_gfn_range(k, task.gpa):  # type: ignore[attr-defined]
            task.goto("kvm_flush_remote_tlbs")
        else:
            task.return_()

    def kvm_mmu_notifier_invalidate_range_end(self, k: Step, task: HostTask) -> None:
        """kvm_main.c:kvm_mmu_notifier_invalidate_range_end @ v6.18: kvm_mmu_invalidate_end."""
        self.kvm_mmu_invalidate_end(k)
        task.return_()

    # -- the MMU-notifier window ---------------------------------------------------------------
    def kvm_mmu_invalidate_begin(self, k: Step) -> None:
        """kvm_main.c:kvm_mmu_invalidate_begin @ v6.18: faults on the range must retry."""
        k.kvm.mmu_invalidate_in_progress += 1
        k.note(
            "kvm_mmu_invalidate_begin",
            f"mmu_invalidate_in_progress = {k.kvm.mmu_invalidate_in_progress}",
        )

    def kvm_mmu_invalidate_end(self, k: Step) -> None:
        """kvm_main.c:kvm_mmu_invalidate_end @ v6.18: bump the sequence, then drop the count."""
        k.kvm.mmu_invalidate_seq += 1
        k.kvm.mmu_invalidate_in_progress -= 1
        k.note("kvm_mmu_invalidate_end", f"mmu_invalidate_seq = {k.kvm.mmu_invalidate_seq}")

    def mmu_invalidate_retry_gfn(self, k: Step, mmu_seq: int) -> bool:
        """kvm_host.h:mmu_invalidate_retry_gfn @ v6.18 (every zap in the model covers the
        faulting frame's range conservatively)."""
        return bool(k.kvm.mmu_invalidate_in_progress) or k.kvm.mmu_invalidate_seq != mmu_seq


__all__ = ["HOST2_SENDER", "HOST_SENDER", "KvmMain"]
