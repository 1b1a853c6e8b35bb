"""The native reference of guest-transparency, run on the independent oracle (kvmtlb.oracle).

Guest-transparency compares what a vCPU may see with what a native processor could see given the
same guest page-table writes and the same guest invalidations. If both sides ran the model's own
instruction semantics, a wrong INVLPG, INVPCID, MOV to CR3/CR4 rule or a wrong access check would
be wrong on both sides and move no verdict. So the reference runs on `kvmtlb.oracle.native`,
which shares no predicate, constructor or decoder with `kvmtlb.hw`.

`NativeMachine` has the interface the guest thread, the properties and the canonical encoding use
of a hardware `Machine` (`cpus`, `step(i, event).machine`, `write(slot, value)`,
`outcomes(i, gva, access)`, equality and hashing); it is a `Machine` subclass only so that code
that stores to paging structures refreshes it as it refreshes any machine. Only the operands of
the model's events cross over (an INVLPG's address, a MOV's source value), and only data comes
back (outcomes as `Access` / `PageFault` values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvmtlb.hw.effect import Event
from kvmtlb.hw.invalidation import NOTHING
from kvmtlb.hw.layout import Layout, Memory
from kvmtlb.hw.machine import Machine, Step
from kvmtlb.hw.outcomes import GP, UD, Access, AccessOutcome, Done, Fault, PageFault
from kvmtlb.hw.x86 import Invlpg, Invpcid, MovToCr0, MovToCr3, MovToCr4
from kvmtlb.oracle.native import NativeCpu, NativeReference
from kvmtlb.oracle.processor import Regs

STEP_MEMO_LIMIT = 1 << 16


class NativeConfig:
    """What does not change during a run: the oracle's reference and the memo of steps.
    `universe` is the name the explorer reads the entry enumeration under."""

    def __init__(self, reference: NativeReference) -> None:
        self.universe = reference
        self.steps: dict[tuple[Any, int, Any], Step] = {}


def _operands(event: Event) -> tuple[object, ...]:
    if isinstance(event, Invlpg):
        return ("invlpg", event.addr)
    if isinstance(event, MovToCr3):
        return ("mov_cr3", event.value)
    if isinstance(event, MovToCr4):
        return ("mov_cr4", event.value)
    if isinstance(event, MovToCr0):
        return ("mov_cr0", event.value)
    if isinstance(event, Invpcid):
        return ("invpcid", event.type, event.pcid, event.addr)
    raise TypeError(f"{event.describe()} is not a guest instruction of the native reference")


def _outcome(word: str) -> Any:
    if word == "gp":
        return Fault(GP, "on the native reference")
    if word == "ud":
        return Fault(UD, "on the native reference")
    return Done()


class NativeMachine(Machine):
    """Native processors over the guest's memory, on the oracle's rules."""

    __slots__ = ()
    config: NativeConfig  # type: ignore[assignment]

    @classmethod
    def start(
        cls,
        layout: Layout,
        memory: Memory,
        roots: Sequence[int],
        pcids: Sequence[int],
        cr0: int,
        cr4: int,
        n: int,
        starts: Sequence[int] = (),
    ) -> tuple[NativeConfig, NativeMachine]:
        ref = NativeReference(
            tuple(roots),
            tuple(pcids),
            cr0,
            cr4,
            dict(layout.named),
            dict(layout.table_backing),
            lambda t, i: layout.domain(t, i),
        )
        config = NativeConfig(ref)
        # CR3 points at the first page table at start, or at `starts[i]` (a second VM's)
        cpus = tuple(
            NativeCpu(0, r, may=ref.fill(r, 0, memory.reader, memory))
            for r in (Regs(cr0, starts[i] if starts else roots[0], cr4) for i in range(n))
        )
        return config, cls(config, memory, cpus)  # type: ignore[arg-type]

    def _refill(self, memory: Memory, cpus: Sequence[NativeCpu]) -> NativeMachine:
        ref = self.config.universe
        return NativeMachine(
            self.config,  # type: ignore[arg-type]
            memory,
            tuple(c._replace(may=ref.fill(c.regs, c.may, memory.reader, memory)) for c in cpus),
        )

    def step(self, i: int, event: Event) -> Step:
        memo = self.config.steps
        key = (self, i, event)
        st = memo.get(key)
        if st is None:
            if len(memo) >= STEP_MEMO_LIMIT:
                memo.clear()
            cpu: NativeCpu = self.cpus[i]
            regs, may, word = self.config.universe.step(cpu.regs, cpu.may, _operands(event))
            cpus = list(self.cpus)
            cpus[i] = cpu._replace(regs=regs, may=may)
            st = memo[key] = Step(self._refill(self.memory, cpus), _outcome(word), NOTHING, 0)
        return st

    def load_state(self, i: int, cr3: int, cr4: int) -> NativeMachine:
        """Userspace loads CR3 and CR4 into processor `i` (KVM_SET_SREGS; docs/scenarios.md,
        "set_sregs"). Guest-transparency's reading: a write that changes no register is no event
        at all (userspace writes back what it read); one that changes a register leaves the
        processor as a restored one starts, in the new state with nothing cached (as after a
        migration to a fresh processor), and the fill rule then fills it from the current
        tables. No instruction of the guest's did this, so no manual's rule applies."""
        cpu: NativeCpu = self.cpus[i]
        regs = cpu.regs._replace(cr3=cr3, cr4=cr4)
        if regs == cpu.regs:
            return self
        cpus = list(self.cpus)
        cpus[i] = cpu._replace(regs=regs, may=0)
        return self._refill(self.memory, cpus)

    def write(self, slot: int, value: int) -> NativeMachine:
        memory = self.memory.write(slot, value)
        if memory is self.memory:
            return self
        return self._refill(memory, self.cpus)

    def outcomes(self, i: int, gva: int, access: str) -> list[AccessOutcome]:
        cpu: NativeCpu = self.cpus[i]
        found = self.config.universe.outcomes(
            cpu.regs, cpu.may, gva, access, self.memory.reader, self.memory
        )
        out: list[AccessOutcome] = []
        for o in found:
            if o[0] == "access":
                _, va, gpa, frame, rights, erights = o
                out.append(Access(int(va), int(gpa), int(frame), int(rights), int(erights)))  # type: ignore[call-overload]
            else:
                out.append(PageFault(int(o[1]), str(o[2])))  # type: ignore[call-overload]
        return out


__all__ = ["NativeConfig", "NativeMachine"]
