"""The transition relation: which steps are enabled in a world, and what each one does.

Actors, in the deterministic order successors are generated:

1. each vCPU (ascending): its KVM thread's next step when it is loaded and in host mode
   (`vcpuN`), or, in guest mode, each enabled guest step (`guestN`; an access has one step per
   outcome the hardware allows);
2. the host thread (`host`);
3. the environment: a pCPU taking a pending KVM kick (`pcpuN`: in guest mode a VM exit for the
   IPI, in host mode with interrupts on just the acknowledgement), and the scheduler switching
   vCPUs that time-share a pCPU (`sched`).

VM exits happen where they lead somewhere: for a guest instruction KVM intercepts, for an EPT
violation or #NPF, for emulation, for a kick, and for preemption (a host-interrupt exit followed
by vcpu_put). A bare host-interrupt exit that neither preempts nor carries a kick is not explored:
it only makes KVM service its requests earlier (removing entries) before it re-enters.
"""

from __future__ import annotations

from typing import NamedTuple

from kvmtlb.guest.thread import GuestThread, guest_actions, guest_step
from kvmtlb.guest.thread import describe as guest_describe
from kvmtlb.host.thread import (
    HostThread,
    host2_describe,
    host2_enabled,
    host2_step,
    host_actions,
    host_step,
    preempt,
)
from kvmtlb.host.thread import (
    describe as host_describe,
)
from kvmtlb.kvm.context import Record, Step, World, vm_exit_event
from kvmtlb.kvm.x86 import EXIT_EXTERNAL_INTERRUPT
from kvmtlb.model.system import System

# Field positions in the frozen vCPU and pCPU tuples (kvm/state.py).
V_PC, V_CPU = 1, 5
P_RUNNING, P_KICKS = 1, 2


class Action(NamedTuple):
    actor: str  # "vcpu0", "guest1", "host", "pcpu0", "sched"
    kind: str  # "kvm", a guest step name, "host", "ipi", "load", "switch"
    args: tuple[int, ...] = ()


class Outcome(NamedTuple):
    world: World
    records: list[Record]
    observations: list[tuple[int, int, int, int]]


def enabled(system: System, w: World) -> list[Action]:
    pol = system.policy
    acts: list[Action] = []
    for v, vc in enumerate(w.vcpus):
        cpu = vc[V_CPU]
        if cpu < 0:
            continue
        if vc[V_PC] != "guest":
            acts.append(Action(f"vcpu{v}", "kvm"))
        else:
            for name, args in guest_actions(
                w, v, system.scenario.programs[v], cpu, system.kvm.pv_tlb_flush, system.kvm
            ):
                acts.append(Action(f"guest{v}", name, args))
    if host_actions(w, pol, system.scenario.host_program):
        acts.append(Action("host", "host"))
    if host2_enabled(w, pol, system.scenario.host_program):
        acts.append(Action("host2", "host"))
    for p, pc in enumerate(w.pcpus):
        if pc[P_KICKS] and _interruptible(system, w, p):
            acts.append(Action(f"pcpu{p}", "ipi"))
    h: HostThread = w.host
    for p in range(len(w.pcpus)):
        waiting = [
            u
            for u, vc in enumerate(w.vcpus)
            if vc[V_CPU] < 0 and h.home[u] == p and not h.held >> u & 1
        ]
        if not waiting:
            continue
        running = w.pcpus[p][P_RUNNING]
        if running < 0:
            acts.extend(Action("sched", "load", (p, u)) for u in waiting)
        elif w.vcpus[running][V_PC] not in pol.NOT_PREEMPTIBLE:
            acts.extend(Action("sched", "switch", (p, u)) for u in waiting)
    return acts


def _interruptible(system: System, w: World, p: int) -> bool:
    running = w.pcpus[p][P_RUNNING]
    if running < 0:
        return True
    return w.vcpus[running][V_PC] not in system.policy.IRQS_OFF


def unfinished(system: System, w: World) -> list[str]:
    """The threads that still have work: guest threads with ops left, IPIs to handle or acks to
    wait for, and the host thread with ops left."""
    out = []
    for v, g in enumerate(w.guests):
        assert isinstance(g, GuestThread)
        if g.op < len(system.scenario.programs[v]) or g.inbox or g.handler:
            out.append(f"vcpu{v}")
    h: HostThread = w.host
    if h.op < len(system.scenario.host_program):
        out.append("host")
    if h.bg_op >= 0:
        out.append("host2")
    return out


def apply(system: System, w: World, a: Action, tracing: bool = True) -> Outcome:
    """Run one enabled step; deterministic. Without `tracing` the step keeps no trace lines."""
    pol = system.policy
    k = Step.thaw(system.kvm, w, a.actor, tracing)
    if a.kind == "kvm":
        v = int(a.actor[4:])
        pol.step(k, k.vcpus[v])
    elif a.actor.startswith("guest"):
        v = int(a.actor[5:])
        guest_step(k, pol, v, system.scenario.programs[v], a.kind, a.args)
    elif a.actor == "host":
        host_step(k, pol, system.scenario.host_program)
    elif a.actor == "host2":
        host2_step(k, pol, system.scenario.host_program)
    elif a.kind == "ipi":
        p = int(a.actor[4:])
        running = k.pcpus[p].running
        if running >= 0 and k.vcpus[running].pc == "guest":
            vcpu = k.vcpus[running]
            k.hw(p, vm_exit_event(system.kvm.vmx, "IPI"))
            pol.vcpu_exit(k, vcpu, EXIT_EXTERNAL_INTERRUPT, (), cause="kick IPI")
        pol.ack_kicks(k, p)
    elif a.kind == "load":
        p, u = a.args
        pol.vcpu_load(k, k.vcpus[u], p)
    elif a.kind == "switch":
        p, u = a.args
        preempt(k, pol, k.pcpus[p].running)
        pol.vcpu_load(k, k.vcpus[u], p)
    else:
        raise AssertionError(f"unknown action {a}")
    return Outcome(k.freeze(), k.log, k.observations)


def describe(system: System, w: World, a: Action) -> str:
    """What an action does, before it is applied (for traces)."""
    if a.kind == "kvm":
        v = int(a.actor[4:])
        return system.policy.step_name(w.vcpus[v][V_PC])
    if a.actor.startswith("guest"):
        v = int(a.actor[5:])
        return guest_describe(w, v, system.scenario.programs[v], a.kind, a.args)
    if a.actor == "host":
        return host_describe(w, system.scenario.host_program)
    if a.actor == "host2":
        return host2_describe(w, system.scenario.host_program)
    if a.kind == "ipi":
        return "takes the kick IPI"
    if a.kind == "load":
        return f"schedule vcpu{a.args[1]} in on pCPU{a.args[0]}"
    return f"switch pCPU{a.args[0]} to vcpu{a.args[1]}"
