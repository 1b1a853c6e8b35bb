"""The host of a cost run: scheduling vCPUs out and in, MMU-notifier zaps, page migration.

Runs the checker's host code (kvmtlb.host.thread) to completion instead of step by step:

- `preempt` is kvmtlb.host.thread.preempt (a host-interrupt VM exit if the vCPU is in the guest,
  then the policy's vcpu_put, which reports it preempted in its steal-time byte);
- `load` is the policy's vcpu_load on a pCPU, then its entry path until the vCPU runs guest code
  (flush requests, record_steal_time with a PV flush, VM entry);
- `zap` and `remap` are the host thread's ZapOp and RemapOp: kvm_mmu_invalidate_begin, the SPTE
  change, kvm_flush_remote_tlbs with its requests and kicks, the primary MMU's change,
  kvm_mmu_invalidate_end (and the new SPTE for a remap). A kicked pCPU takes the IPI as in the
  checker's environment step: a VM exit, then the vCPU services its requests before re-entering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmtlb.host.ops import CollapseOp, HostOp, RemapOp, WrprotectOp, ZapOp
from kvmtlb.host.thread import HOST_SENDER, HostThread, host_step, preempt
from kvmtlb.kvm.context import vm_exit_event
from kvmtlb.kvm.x86 import EXIT_EXTERNAL_INTERRUPT

if TYPE_CHECKING:
    from kvmtlb.cost.simulate import Simulation


class CostError(Exception):
    """A run cannot go on (the policy keeps a vCPU out of the guest, a frame ran out of fresh
    host pages): the message names what happened."""


def schedule_out(sim: Simulation, v: int) -> None:
    preempt(sim.k, sim.policy, v)
    sim.n["host.preemptions"] += 1


def schedule_in(sim: Simulation, v: int, p: int, migrated: bool) -> None:
    k = sim.k
    sim.policy.vcpu_load(k, k.vcpus[v], p)
    if migrated:
        sim.n["host.migrations"] += 1
    sim.run_to_guest(v)


def zap(sim: Simulation, gpa: int) -> None:
    sim.n["host.zaps"] += 1
    run_host_op(sim, ZapOp(gpa))


def remap(sim: Simulation, gpa: int) -> None:
    """Page migration of frame `gpa` to a fresh host page."""
    k = sim.k
    i = k.config.gpa_index(gpa)
    if k.kvm.fresh[i] + 1 >= k.config.fresh_stride:
        raise CostError(f"guest frame {gpa:#x} ran out of fresh host pages")
    hpa = k.config.fresh_page(gpa, k.kvm.bump_fresh(i))
    sim.n["host.remaps"] += 1
    run_host_op(sim, RemapOp(gpa, hpa))


def dirty_log(sim: Simulation, gpa: int) -> None:
    """Dirty logging switched on for frame `gpa`'s memslot: the host thread's WrprotectOp
    (kvm_mmu_slot_remove_write_access and kvm_flush_remote_tlbs_memslot)."""
    sim.n["host.dirty-logs"] += 1
    run_host_op(sim, WrprotectOp(gpa))


def dirty_log_off(sim: Simulation, gpa: int) -> None:
    """Dirty logging switched off for the memslot of frame `gpa`'s 2 MiB region: the host
    thread's CollapseOp (kvm_mmu_slot_apply_flags: the huge SPTE recovered, or the collapsible
    4 KiB SPTEs zapped, and their flushes; kvm/hugepage.py)."""
    sim.n["host.dirty-logs-off"] += 1
    run_host_op(sim, CollapseOp(gpa))


def run_host_op(sim: Simulation, op: HostOp) -> None:
    """The host thread runs `op` to its end; kicked pCPUs take their IPIs when it waits."""
    k = sim.k
    k.host = HostThread(home=sim.placement)
    program = (op,)
    for _ in range(64 + 8 * len(k.vcpus)):
        h: HostThread = k.host
        if h.op >= len(program):
            return
        if h.phase == "kvm_flush_remote_tlbs:wait":
            (mask,) = h.frame
            pending = [p.id for p in k.pcpus if mask >> p.id & 1 and p.kicks & HOST_SENDER]
            if pending:
                for p in pending:
                    take_kick(sim, p)
                continue
        host_step(k, sim.policy, program)
    raise CostError(f"the host operation {op.describe()} does not complete")


def take_kick(sim: Simulation, p: int) -> None:
    """pCPU `p` takes the host's kick IPI: a vCPU in guest mode exits (and re-enters after
    servicing its requests); the IPI is acknowledged."""
    k = sim.k
    sim.n["host.kicks"] += 1
    running = k.pcpus[p].running
    exited = -1
    if running >= 0 and k.vcpus[running].pc == "guest":
        vcpu = k.vcpus[running]
        k.hw(p, vm_exit_event(k.config.vmx, "IPI"))
        sim.policy.vcpu_exit(k, vcpu, EXIT_EXTERNAL_INTERRUPT, (), cause="kick IPI")
        exited = running
    sim.policy.ack_kicks(k, p)
    if exited >= 0:
        sim.run_to_guest(exited)


__all__ = [
    "CostError",
    "dirty_log",
    "dirty_log_off",
    "remap",
    "run_host_op",
    "schedule_in",
    "schedule_out",
    "take_kick",
    "zap",
]
