"""The memory of a cost run: one value per paging-structure entry of the workload's layout.

Models the same memory as kvmtlb.hw.layout.Memory (slots of guest and EPT/NPT tables, located by
the layout), but mutable and without value domains: the checker declares every value a slot may
take so that the universe of cached entries is finite, while a long workload writes values no one
declares in advance (a fresh host page after every zap). Writes are reported to the listeners
(the validity oracle) so that what they derived from the old value is forgotten.

The KVM port reads `values[slot]` (mmu.py:spte) and walks through `reader` (the emulator), as it
does on the checker's memory.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmtlb.hw.errors import AddressError
from kvmtlb.hw.layout import Layout


class WorkloadMemory:
    __slots__ = ("layout", "listeners", "slot_at", "values")

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.values: list[int] = [d[0] for d in layout.domains]
        self.slot_at = layout.slot_at
        self.listeners: list[Callable[[int], None]] = []

    def read(self, table: int, index: int) -> int:
        n = self.slot_at.get((table, index))
        return 0 if n is None else self.values[n]

    def reader(self, table: int, index: int) -> tuple[int, ...]:
        """The walk engine's view (hw/walk.py): the one value the slot holds."""
        n = self.slot_at.get((table, index))
        return (0,) if n is None else (self.values[n],)

    def write(self, slot: int, value: int) -> None:
        if not 0 <= slot < len(self.values):
            raise AddressError(f"no slot {slot} in this layout")
        if self.values[slot] == value:
            return
        self.values[slot] = value
        for listener in self.listeners:
            listener(slot)


__all__ = ["WorkloadMemory"]
