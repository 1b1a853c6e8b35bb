"""A multi-processor x86 machine: memory and logical processors, as one immutable value.

Models the hardware semantics of design.md: each logical processor holds the MAY-set of entries
it may have cached; an event applies what it MUST invalidate and then the fill rule closes every
affected MAY-set under lookup (so entries are available "at any moment while a context is
active"); an access has one outcome per distinct translation it may use, plus a fault outcome
whose successor applies the #PF or EPT-violation invalidation. Evictions are never explored:
dropping an entry only causes another walk, whose results are already among the outcomes.

Memory is sequentially consistent between steps, and each processor's invalidations are local
(intel.multiprocessor, SDM §4.10.5): shootdowns are software's job.

Invariant: every processor's MAY-set is closed under the fill rule for its current context and the
current memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from kvmtlb.hw.cpu import CR0_WP, CR4_SMAP, CR4_SMEP, VMX_NONROOT, Capabilities, Cpu
from kvmtlb.hw.dirty import leaf_slot, log_write, sets_dirty, tracks_dirty, write_results
from kvmtlb.hw.effect import DEFAULT_READINGS, Effect, Event, Readings
from kvmtlb.hw.errors import ModelError, UnknownEvent
from kvmtlb.hw.invalidation import Invalidation, union
from kvmtlb.hw.layout import Memory
from kvmtlb.hw.outcomes import (
    Access,
    AccessOutcome,
    Done,
    EptMisconfig,
    EptViolation,
    NestedPageFault,
    Outcome,
    PageFault,
)
from kvmtlb.hw.paging import E_D, EPT_D
from kvmtlb.hw.rules import check_ids
from kvmtlb.hw.scope import native_scope
from kvmtlb.hw.smm import Rsm
from kvmtlb.hw.universe import ContextInfo, Universe
from kvmtlb.hw.vmcb import SvmCapabilities
from kvmtlb.hw.vmexit import vm_exit
from kvmtlb.hw.vmx import ept_violation_invalidation
from kvmtlb.hw.walk import (
    ACCESS_KINDS,
    WRITE,
    NotPresent,
    Stage2Fault,
    Translated,
    WalkContext,
    Walker,
    WalkResult,
    guest_denies,
    stage2_denies,
)
from kvmtlb.hw.x86 import page_fault_invalidation


class Processor(Protocol):
    """What the machine needs of a logical processor's state (Intel `Cpu`, AMD `SvmCpu`)."""

    @property
    def may(self) -> int: ...

    def walk_context(self) -> WalkContext: ...

    def _replace(self, **kw: Any) -> Any: ...


class Arch(Protocol):
    """The vendor-specific parts of accesses: classifying walk results, delivering faults."""

    def classify(self, cpu: Any, gva: int, access: str, r: WalkResult) -> AccessOutcome: ...

    def fault_effect(self, cpu: Any, outcome: AccessOutcome, readings: Readings) -> Effect: ...


class IntelArch:
    """Access outcomes and fault delivery on Intel (SDM §4.10.4.1, §28.3.3.1)."""

    def classify(self, cpu: Cpu, gva: int, access: str, r: WalkResult) -> AccessOutcome:
        if isinstance(r, NotPresent):
            return PageFault(gva, "not present")
        if isinstance(r, Stage2Fault):
            if r.misconfig:
                return EptMisconfig(r.gpa)
            return EptViolation(r.gpa, gva if r.final else -1)
        cr4 = cpu.regs.cr4
        if guest_denies(
            r,
            access,
            smep=bool(cr4 & CR4_SMEP),
            smap=bool(cr4 & CR4_SMAP),
            wp=bool(cpu.regs.cr0 & CR0_WP),
        ):
            return PageFault(gva, "rights")
        if stage2_denies(r, access):
            return EptViolation(r.gpa, gva)
        # the cached dirty flag tells writes apart only (hw/dirty.py)
        erights = r.erights if access == WRITE else r.erights & ~E_D
        return Access(gva, r.gpa, r.frame, r.rights, erights)

    def fault_effect(self, cpu: Cpu, outcome: AccessOutcome, readings: Readings) -> Effect:
        if isinstance(outcome, PageFault):
            inv = page_fault_invalidation(native_scope(cpu), cpu.pcid, outcome.gva)
            if cpu.mode == VMX_NONROOT and cpu.vmcs is not None and cpu.vmcs.pf_exiting:
                # intel.pf.intercepted: the retentive reading unless configured otherwise.
                eff = vm_exit(cpu, "#PF")
                if readings.intercepted_pf_invalidates:
                    return eff._replace(invalidation=union(inv, eff.invalidation))
                return eff
            return Effect(cpu, Done(), inv)
        if isinstance(outcome, EptViolation):
            if not cpu.ept_in_use:
                raise ModelError("EPT violation while EPT is not in use")
            inv = ept_violation_invalidation(
                cpu.vpid, cpu.pcid, cpu.ep4ta, outcome.gpa, outcome.gva
            )
            exit_ = vm_exit(cpu, f"EPT violation at GPA {outcome.gpa:#x}")
            return exit_._replace(invalidation=union(inv, exit_.invalidation))
        if isinstance(outcome, EptMisconfig):
            exit_ = vm_exit(cpu, f"EPT misconfiguration at GPA {outcome.gpa:#x}")
            misconfig = Invalidation(check_ids(("intel.ept-misconfig",)), ())
            return exit_._replace(invalidation=union(misconfig, exit_.invalidation))
        raise ModelError(f"{outcome!r} is not a fault")


STEP_MEMO_LIMIT = 1 << 16  # remembered Machine.step results; cleared when full


class MachineConfig:
    """What does not change during a run: the universe, capabilities, readings, vendor parts.

    Also holds the memo tables shared by every machine of the run. A processor state is a
    NamedTuple whose last field is `may`; the fields before it are its architectural state, the
    key of these memo tables.
    """

    def __init__(
        self,
        universe: Universe,
        caps: Capabilities | SvmCapabilities,
        readings: Readings = DEFAULT_READINGS,
        arch: Arch | None = None,
        memo_steps: bool = False,
    ) -> None:
        self.universe = universe
        self.caps = caps
        self.readings = readings
        self.arch: Arch = arch if arch is not None else IntelArch()
        self._effects: dict[tuple[Any, Any], Effect] = {}
        self._contexts: dict[Any, ContextInfo] = {}
        # (machine, cpu, event) -> the result. Worth it where whole machine states recur, as in
        # the explorer (many worlds share a machine and differ in KVM's state); on a random
        # stream of events it only costs, so it is off unless asked for.
        self.memo_steps = memo_steps
        self._steps: dict[tuple[Any, int, Any], Step] = {}

    def effect(self, cpu: Any, event: Event) -> Effect:
        key = (cpu[:-1], event)
        eff = self._effects.get(key)
        if eff is None:
            if not hasattr(event, "execute"):
                raise UnknownEvent(f"{event!r} is not an event of the processor model")
            eff = event.execute(cpu, self.caps, self.readings)
            self._effects[key] = eff
        return eff

    def context(self, cpu: Any) -> ContextInfo:
        """The walk context of `cpu`'s architectural state, with its cached masks and plans."""
        key = cpu[:-1]
        info = self._contexts.get(key)
        if info is None:
            info = self.universe.info(cpu.walk_context())
            self._contexts[key] = info
        return info


class Step(NamedTuple):
    machine: Machine
    outcome: Outcome
    invalidation: Invalidation
    removed: int  # bits removed from the executing processor's MAY-set


class Machine:
    """Memory plus a tuple of processors. Equal machines hash equal; `config` is shared context."""

    __slots__ = ("_hash", "config", "cpus", "memory")

    def __init__(self, config: MachineConfig, memory: Memory, cpus: tuple[Any, ...]) -> None:
        self.config = config
        self.memory = memory
        self.cpus = cpus
        self._hash = hash((memory, cpus))

    @classmethod
    def boot(cls, config: MachineConfig, memory: Memory, cpus: Sequence[Any]) -> Machine:
        """A machine whose processors' MAY-sets have been closed under the fill rule."""
        filled = tuple(cpu._replace(may=_fill(config, memory, cpu)) for cpu in cpus)
        return cls(config, memory, filled)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Machine)
            and self._hash == other._hash
            and self.memory == other.memory
            and self.cpus == other.cpus
        )

    def __repr__(self) -> str:
        return f"Machine({len(self.cpus)} cpus, {self.memory!r})"

    @property
    def universe(self) -> Universe:
        return self.config.universe

    def _check_cpu(self, i: int) -> Any:
        if not isinstance(i, int) or not 0 <= i < len(self.cpus):
            raise ModelError(f"no processor {i!r} (this machine has {len(self.cpus)})")
        return self.cpus[i]

    # -- events ---------------------------------------------------------------------------------
    def step(self, i: int, event: Event) -> Step:
        """Processor `i` executes `event`; returns the new machine and the outcome."""
        cpu = self._check_cpu(i)
        if getattr(cpu, "smm", False) and not isinstance(event, Rsm):
            raise ModelError(f"processor {i} is in SMM; only RSM is modelled there")
        if not self.config.memo_steps:
            return self._apply(i, cpu, self.config.effect(cpu, event))
        memo = self.config._steps
        key = (self, i, event)
        st = memo.get(key)
        if st is None:
            if len(memo) >= STEP_MEMO_LIMIT:
                memo.clear()
            st = memo[key] = self._apply(i, cpu, self.config.effect(cpu, event))
        return st

    def _apply(self, i: int, cpu: Any, eff: Effect) -> Step:
        may = cpu.may
        removed = 0
        if eff.invalidation.clauses:
            removed = eff.invalidation.removal_mask(self.config.universe, may)
            may &= ~removed
        new = eff.cpu._replace(may=may)
        new = new._replace(may=_fill(self.config, self.memory, new))
        cpus = (*self.cpus[:i], new, *self.cpus[i + 1 :])
        return Step(Machine(self.config, self.memory, cpus), eff.outcome, eff.invalidation, removed)

    # -- memory ---------------------------------------------------------------------------------
    def write(self, slot: int, value: int) -> Machine:
        """Store `value` into paging-structure entry `slot`; every processor then refills."""
        memory = self.memory.write(slot, value)
        if memory is self.memory:
            return self
        cpus = tuple(c._replace(may=_fill(self.config, memory, c)) for c in self.cpus)
        return Machine(self.config, memory, cpus)

    # -- accesses -------------------------------------------------------------------------------
    def translations(self, i: int, gva: int) -> tuple[WalkResult, ...]:
        cpu = self._check_cpu(i)
        info = self.config.context(cpu)
        return self.config.universe.translate(info, self.memory, cpu.may, gva)

    def outcomes(self, i: int, gva: int, access: str) -> list[AccessOutcome]:
        """Every outcome an `access` ("read", "write", "exec") of `gva` on processor `i` may
        have."""
        if access not in ACCESS_KINDS:
            raise ModelError(f"unknown access kind {access!r}; use one of {ACCESS_KINDS}")
        cpu = self.cpus[i]
        arch = self.config.arch
        results = self.translations(i, gva)
        if access == WRITE and tracks_dirty(cpu):
            results = write_results(results, self.reference(i, gva))
        return list(dict.fromkeys(arch.classify(cpu, gva, access, r) for r in results))

    def access(self, i: int, gva: int, access: str) -> list[tuple[AccessOutcome, Machine]]:
        """One successor per outcome; a fault's successor has the fault's invalidation applied
        (and, for an EPT violation, the VM exit it causes)."""
        result: list[tuple[AccessOutcome, Machine]] = []
        for o in self.outcomes(i, gva, access):
            if isinstance(o, PageFault | EptViolation | EptMisconfig | NestedPageFault):
                eff = self.config.arch.fault_effect(self.cpus[i], o, self.config.readings)
                result.append((o, self._apply(i, self.cpus[i], eff).machine))
            elif access == WRITE and sets_dirty(o) and tracks_dirty(self.cpus[i]):
                result.append((o, self._set_dirty(i, o)))
            else:
                result.append((o, self))
        return result

    def _set_dirty(self, i: int, o: Access) -> Machine:
        """Processor `i`'s write `o` sets the dirty flag of the EPT leaf of its GPA, and logs
        the GPA if page-modification logging is on (hw/dirty.py)."""
        cpu = self.cpus[i]
        slot = leaf_slot(self.memory, cpu.ep4ta, o.gpa)
        m = self.write(slot, self.memory.values[slot] | EPT_D)
        logged = log_write(m.cpus[i], o.gpa)
        if logged is m.cpus[i]:
            return m
        return Machine(self.config, m.memory, (*m.cpus[:i], logged, *m.cpus[i + 1 :]))

    def reference(self, i: int, gva: int) -> tuple[WalkResult, ...]:
        """The TLB-free reference walk of `gva` in processor `i`'s current context."""
        ctx = self.config.context(self._check_cpu(i)).ctx
        w = Walker(ctx, self.memory.reader, None, self.memory.layout.table_backing)
        return tuple(w.translate(gva))

    def held(self, i: int) -> list[Any]:
        """The entries processor `i` may hold, in canonical order."""
        return self.config.universe.members(self._check_cpu(i).may)


def _fill(config: MachineConfig, memory: Memory, cpu: Any) -> int:
    may: int = config.universe.fill(config.context(cpu), memory, cpu.may)
    return may


__all__ = ["Arch", "IntelArch", "Machine", "MachineConfig", "Processor", "Step", "Translated"]
