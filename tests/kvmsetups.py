"""Fixtures for the KVM-port tests: a booted system per (policy, configuration), a Step that
records every hardware event KVM issues, and a rendering of those events in the words of the
tables (tests/data/kvm_hooks.toml).

A system is built from a tiny scenario (kvmtlb.model.system.build boots it: every vCPU created,
vCPU0 loaded on pCPU0 and in guest mode). A test thaws the initial world into a `RecStep`, takes
vCPU0 out of guest mode the way an interrupt would, and calls the policy's methods on it, as the
explorer's actions do (kvmtlb/model/actions.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from kvmtlb.hw.effect import Event
from kvmtlb.hw.outcomes import Done, Outcome, VmSucceed
from kvmtlb.hw.svm import Invlpga, SvmExitEvent, Vmrun
from kvmtlb.hw.vmcb import (
    TLB_CONTROL_DO_NOTHING,
    TLB_CONTROL_FLUSH_ALL_ASID,
    TLB_CONTROL_FLUSH_ASID,
)
from kvmtlb.hw.vmx import (
    Invept,
    Invvpid,
    Vmclear,
    VmEntry,
    VmExitEvent,
    Vmptrld,
    Vmwrite,
    make_eptp,
)
from kvmtlb.kvm.context import KvmConfig, Step
from kvmtlb.kvm.policy import KvmPolicy, registry
from kvmtlb.kvm.state import Vcpu
from kvmtlb.kvm.x86 import EXIT_EXTERNAL_INTERRUPT
from kvmtlb.model.scenario import parse
from kvmtlb.model.system import System, build

TLB_CONTROL_NAMES = {
    TLB_CONTROL_DO_NOTHING: "DO_NOTHING",
    TLB_CONTROL_FLUSH_ALL_ASID: "FLUSH_ALL_ASID",
    TLB_CONTROL_FLUSH_ASID: "FLUSH_ASID",
}

# Events that load, clear or leave a VMCS: no TLB invalidation (SDM: VMCLEAR, VMPTRLD and VMWRITE
# invalidate nothing), and VM exits are the trigger, not KVM's doing.
NOT_FLUSHES = (Vmclear, Vmptrld, Vmwrite, VmExitEvent, SvmExitEvent)
ENTRIES = (VmEntry, Vmrun)
FLUSHES = (Invept, Invvpid, Invlpga)

GVA = 0x1000


def scenario_text(vendor: str, vcpus: int = 1, pcpus: int = 2, host: str = "", **knobs: Any) -> str:
    """A minimal scenario: one guest page, `vcpus` vCPUs that read it, the host thread's ops
    (one per line), the given [config] knobs (TOML values)."""
    lines = ["[config]", f'vendor = "{vendor}"', f"vcpus = {vcpus}", f"pcpus = {pcpus}"]
    for key, value in knobs.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, list | tuple):
            lines.append(f"{key} = [" + ", ".join(f'"{v}"' for v in value) + "]")
        else:
            lines.append(f"{key} = {value}")
    threads = "\n".join(f'vcpu{v} = """\nread {GVA:#x}\n"""' for v in range(vcpus))
    if host:
        threads += f'\nhost = """\n{host}\n"""'

    return (
        'name = "kvm-test"\n'
        + "\n".join(lines)
        + f'\n\n[guest]\n"{GVA:#x}" = "0x10000 w"\n\n[host]\n"0x10000" = "0x80000 rwx"\n\n'
        + f"[threads]\n{threads}\n"
    )


def _freeze_knobs(knobs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in knobs.items()))


@cache
def _system(
    policy: str, vendor: str, vcpus: int, pcpus: int, host: str, knobs: tuple[Any, ...]
) -> System:
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in knobs}
    text = scenario_text(vendor, vcpus, pcpus, host, **kw)
    return build(parse(text, f"<{policy} {vendor} {kw}>"), registry()[policy]())


def system(
    policy: str, vendor: str, vcpus: int = 1, pcpus: int = 2, host: str = "", **knobs: Any
) -> System:
    """The booted system (cached: World values are immutable)."""
    return _system(policy, vendor, vcpus, pcpus, host, _freeze_knobs(knobs))


@dataclass(frozen=True)
class HwOp:
    """One hardware event KVM issued: where, what, its architectural outcome, and the VMCS that
    was current on that pCPU when it ran (for rendering VM entries)."""

    pcpu: int
    event: Event
    outcome: Outcome
    vmcs_vpid: int  # the VPID of the current VMCS if "enable VPID" is set, else 0


@dataclass
class RecStep(Step):
    """A Step that also keeps the hardware events, in order, and a timeline of hardware events
    and KVM notes (for ordering tests)."""

    ops: list[HwOp] = field(default_factory=list)
    timeline: list[Any] = field(default_factory=list)
    _in_hw: bool = False

    def hw(self, pcpu: int, event: Event, why: str = "") -> Outcome:
        cpu = self.machine.cpus[pcpu]
        vmcs = getattr(cpu, "vmcs", None)
        vpid = vmcs.vpid if vmcs is not None and vmcs.enable_vpid else 0
        self._in_hw = True
        try:
            outcome = super().hw(pcpu, event, why)
        finally:
            self._in_hw = False
        op = HwOp(pcpu, event, outcome, vpid)
        self.ops.append(op)
        self.timeline.append(op)
        return outcome

    def note(self, action: str, detail: str = "", actor: str | None = None) -> None:
        super().note(action, detail, actor)
        if not self._in_hw:
            self.timeline.append(action)


def thaw(sys_: System, actor: str = "test", tracing: bool = True) -> RecStep:
    """The booted world as a RecStep; without `tracing`, as the explorer runs steps (no trace
    lines; RecStep still records the hardware events and the notes)."""
    k = RecStep.thaw(sys_.kvm, sys_.initial, actor, tracing)
    assert isinstance(k, RecStep)
    return k


def exit_to_host(k: Step, pol: KvmPolicy, vcpu: Vcpu) -> None:
    """A VM exit for an external interrupt (as a kick IPI does): vCPU in host mode at
    vcpu_enter_guest, at an instruction boundary."""
    assert vcpu.pc == "guest"
    k.hw(vcpu.cpu, VmExitEvent("IPI") if k.config.vmx else SvmExitEvent("IPI"))
    pol.vcpu_exit(k, vcpu, EXIT_EXTERNAL_INTERRUPT, (), cause="test")


def run_to_guest(k: Step, pol: KvmPolicy, vcpu: Vcpu, limit: int = 20) -> list[str]:
    """Step the vCPU's KVM thread until it is in guest mode; returns the step labels run."""
    labels = []
    while vcpu.pc != "guest":
        labels.append(vcpu.pc)
        pol.step(k, vcpu)
        if len(labels) > limit:
            raise AssertionError(f"vcpu{vcpu.id} does not reach guest mode: {labels}")
    return labels


def check_succeeded(ops: list[HwOp]) -> None:
    """Every instruction KVM issued succeeded (KVM WARNs on a VMfail: vmx_insn_failed)."""
    for op in ops:
        if isinstance(op.event, Invept | Invvpid):
            assert isinstance(op.outcome, VmSucceed), f"{op.event.describe()}: {op.outcome}"
        elif isinstance(op.event, Invlpga | Vmrun | VmEntry):
            assert isinstance(op.outcome, Done), f"{op.event.describe()}: {op.outcome}"


def render(op: HwOp, config: KvmConfig, home: int = 0) -> str:
    """An event in the table's words; ` @pCPUn` when not on the vCPU's home pCPU."""
    e = op.event
    if isinstance(e, Invept):
        if e.type == 1:
            assert e.eptp == make_eptp(config.tdp_root), f"INVEPT of a foreign EPTP {e.eptp:#x}"
            s = "INVEPT single-context"
        else:
            s = "INVEPT all-context" if e.type == 2 else f"INVEPT type {e.type}"
    elif isinstance(e, Invvpid):
        s = {
            0: f"INVVPID individual-address vpid={e.vpid} addr={e.addr:#x}",
            1: f"INVVPID single-context vpid={e.vpid}",
            2: "INVVPID all-context",
            3: f"INVVPID single-context-retaining-globals vpid={e.vpid}",
        }[e.type]
    elif isinstance(e, Invlpga):
        s = f"INVLPGA addr={e.addr:#x} asid={e.asid}"
    elif isinstance(e, VmEntry):
        s = f"VM entry VPID={op.vmcs_vpid}"
    elif isinstance(e, Vmrun):
        tc = TLB_CONTROL_NAMES[e.vmcb.tlb_control]
        s = f"VMRUN ASID={e.vmcb.asid} TLB_CONTROL={tc}"
    else:
        s = e.describe()
    return s if op.pcpu == home else f"{s} @pCPU{op.pcpu}"


def flushes(k: RecStep, home: int = 0) -> list[str]:
    """The flush instructions among the recorded events, rendered; any event that is neither a
    flush, an entry, nor a VMCS load/clear or exit fails the test."""
    out = []
    for op in k.ops:
        if isinstance(op.event, FLUSHES):
            out.append(render(op, k.config, home))
        elif not isinstance(op.event, ENTRIES + NOT_FLUSHES):
            raise AssertionError(f"unexpected hardware event {op.event.describe()}")
    return out


def entries(k: RecStep, home: int = 0) -> list[str]:
    return [render(op, k.config, home) for op in k.ops if isinstance(op.event, ENTRIES)]


def timeline(k: RecStep, notes: tuple[str, ...] = (), home: int = 0) -> list[str]:
    """Flushes and VM entries (rendered) and the KVM notes that start with one of `notes`, in the
    order they happened."""
    out = []
    for item in k.timeline:
        if isinstance(item, HwOp):
            if isinstance(item.event, FLUSHES + ENTRIES):
                out.append(render(item, k.config, home))
        elif item.startswith(notes) and notes:
            out.append(item)
    return out


def policy(name: str) -> KvmPolicy:
    return registry()[name]()


__all__ = [
    "GVA",
    "HwOp",
    "RecStep",
    "check_succeeded",
    "entries",
    "exit_to_host",
    "flushes",
    "policy",
    "render",
    "run_to_guest",
    "scenario_text",
    "system",
    "thaw",
    "timeline",
]
