"""System-management mode: SMI and RSM (default treatment), and the dual-monitor transitions.

Models only the TLB effects of SDM §34.14 and §34.15 (their numbers in the current editions are
unconfirmed): an SMI removes the linear and combined mappings of VPID 0000H (intel.smi); RSM
removes those of every VPID (intel.rsm); neither touches guest-physical mappings. SMM itself is
modelled as running with paging off, so nothing is filled while a processor is in SMM; its handler
is not executed. The dual-monitor treatment (intel.smm.dual-monitor) is modelled by its two
invalidations only.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmtlb.hw.cpu import Capabilities, Cpu
from kvmtlb.hw.effect import Effect, Readings
from kvmtlb.hw.invalidation import L_AND_C, Invalidation, Select
from kvmtlb.hw.outcomes import Done, Fault
from kvmtlb.hw.rules import check_ids


@dataclass(frozen=True, slots=True)
class Smi:
    def describe(self) -> str:
        return "SMI"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        inv = Invalidation(check_ids(("intel.smi",)), (Select(L_AND_C, vpid=0),))
        return Effect(cpu._replace(smm=True), Done(), inv)


@dataclass(frozen=True, slots=True)
class Rsm:
    def describe(self) -> str:
        return "RSM"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        if not cpu.smm:
            return Effect(cpu, Fault("#UD", "RSM outside SMM"))
        inv = Invalidation(check_ids(("intel.rsm",)), (Select(L_AND_C),))
        return Effect(cpu._replace(smm=False), Done(), inv)


@dataclass(frozen=True, slots=True)
class DualMonitorSmmExit:
    """An SMM VM exit under the dual-monitor treatment (§34.15.2.5)."""

    def describe(self) -> str:
        return "SMM VM exit (dual-monitor)"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        inv = Invalidation(check_ids(("intel.smm.dual-monitor",)), (Select(L_AND_C, vpid=0),))
        return Effect(cpu, Done(), inv)


@dataclass(frozen=True, slots=True)
class DualMonitorSmmReturn:
    """The VM entry that returns from SMM under the dual-monitor treatment (§34.15.4.5)."""

    def describe(self) -> str:
        return "VM entry returning from SMM (dual-monitor)"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        inv = Invalidation(check_ids(("intel.smm.dual-monitor",)), (Select(L_AND_C),))
        return Effect(cpu, Done(), inv)
