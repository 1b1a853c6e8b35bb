"""The result of executing one event: new processor state, outcome, and what it invalidates.

Events are values (frozen dataclasses) with a pure `execute(cpu, caps, readings) -> Effect`. The
machine (machine.py) removes `invalidation` from the processor's MAY-set and then applies the fill
rule; the cost model applies the same `invalidation` to its concrete TLBs.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from kvmtlb.hw.invalidation import NOTHING, Invalidation
from kvmtlb.hw.outcomes import Outcome


class Readings(NamedTuple):
    """Switches for the places where the manuals are ambiguous (x86-tlb-architecture.md §8).

    The defaults are the readings that retain more (design.md): a model that keeps more can only
    find more stale translations, never hide one.
    """

    invvpid3_keeps_global_psc: bool = True  # INVVPID type 3 keeps PSC entries of global paths
    intercepted_pf_invalidates: bool = False  # a #PF that exits via the exception bitmap
    pg_set_flushes: bool = False  # MOV to CR0 setting PG removes identity combined translations
    invlpga_removes_globals: bool = False  # AMD INVLPGA also removes global entries


DEFAULT_READINGS = Readings()


class Effect(NamedTuple):
    cpu: Any  # the processor state after the event (Intel `Cpu` or AMD `SvmCpu`), MAY-set aside
    outcome: Outcome
    invalidation: Invalidation = NOTHING


class Event(Protocol):
    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect: ...

    def describe(self) -> str: ...
