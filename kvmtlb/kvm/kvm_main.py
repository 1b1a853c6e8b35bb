"""Generic KVM: vCPU load and put, remote TLB flushes with kicks, the MMU-notifier window.

Ports virt/kvm/kvm_main.c @ v6.18. kvm_flush_remote_tlbs is split where other processors can
interleave: the requests are set on every vCPU, then each vCPU's mode is read (and moved from
IN_GUEST_MODE to EXITING_GUEST_MODE), then the IPIs are sent, then the sender waits until every
IPI was taken (KVM_REQUEST_WAIT). Paired with the re-check of requests in vcpu_enter_guest after
IN_GUEST_MODE, this guarantees that a vCPU cannot run guest code with a TLB older than the
request: either the sender sees it in guest mode and kicks it, or it sees the request.

The caller (the host thread, kvmtlb.host) keeps the sender's locals between the steps.
"""

from __future__ import annotations

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.requests import WAIT_REQUESTS, kvm_make_request, request_names
from kvmtlb.kvm.state import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    MODE_NAMES,
    OUTSIDE_GUEST_MODE,
    Vcpu,
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


__all__ = ["KvmMain"]
