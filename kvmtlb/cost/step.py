"""The KVM port's `Step`, running on the cost model's concrete machine.

A policy's methods take a `kvmtlb.kvm.context.Step` and issue every instruction through
`Step.hw`; they read the processors (`k.machine.cpus`) and the SPTEs (`k.machine.memory.values`)
and store SPTEs through `Step.write_slot`. `CostStep` keeps that interface and points it at a
`CostMachine`, so the cost model runs the policy's own code (a user's variant is costed by what it
issues), while one long-lived step object stands for the whole run: no freezing between steps,
and the trace (`note`) is kept only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from kvmtlb.cost.machine import CostMachine
from kvmtlb.hw.effect import Event
from kvmtlb.hw.machine import Machine
from kvmtlb.hw.outcomes import AccessOutcome, Outcome
from kvmtlb.kvm.context import KvmConfig, Step
from kvmtlb.kvm.state import Kvm, Pcpu, Vcpu


@dataclass
class CostStep(Step):
    """`Step` over a `CostMachine` (which also serves as `machine`: it has `cpus` and `memory`).
    Tracing (`Step.tracing`) is off unless asked for."""

    cm: Any = None  # the CostMachine

    @classmethod
    def create(
        cls,
        config: KvmConfig,
        cm: CostMachine,
        kvm: Kvm,
        vcpus: list[Vcpu],
        pcpus: list[Pcpu],
        guests: list[Any],
        host: Any,
        trace: bool = False,
    ) -> CostStep:
        # The policy reads `k.machine.cpus` and `k.machine.memory.values`, which CostMachine has;
        # Step turns the vCPU and pCPU lists into its Thawed records.
        return cls(
            config,
            cast(Machine, cm),
            kvm,
            cast(Any, vcpus),
            cast(Any, pcpus),
            None,
            guests,
            host,
            "",
            trace,
            cm=cm,
        )

    @property
    def concrete(self) -> CostMachine:
        cm: CostMachine = self.cm
        return cm

    def hw(self, pcpu: int, event: Event, why: str = "") -> Outcome:
        """Run `event` on physical CPU `pcpu` of the concrete machine."""
        cm = self.concrete
        before = cm.cpus[pcpu]
        eff = cm.step(pcpu, event)
        self.follow_control(pcpu, before, self.concrete.cpus[pcpu])
        if self.tracing:
            self.note(f"{event.describe()}{' (' + why + ')' if why else ''}", f"pCPU{pcpu}")
        return eff.outcome

    def fault(self, pcpu: int, outcome: AccessOutcome, name: str) -> None:
        """Deliver an access's fault on `pcpu` (a #PF, or an EPT violation / #NPF and its exit)."""
        cm = self.concrete
        before = cm.cpus[pcpu]
        cm.fault(pcpu, outcome, name)
        self.follow_control(pcpu, before, self.concrete.cpus[pcpu])
        self.note(outcome.describe(), f"pCPU{pcpu}")

    def write_slot(self, slot: int, value: int, what: str) -> None:
        self.concrete.memory.write(slot, value)
        self.note(what)

    def observe(self, vcpu: int, gva: int, gpa: int, rights: int) -> None:
        """Emulated accesses are the checker's business."""


__all__ = ["CostStep"]
