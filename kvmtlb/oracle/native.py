"""A native processor over guest-physical memory, on the oracle's rules: the reference of
guest-transparency (design.md, "the native reference TLB").

A native processor has no VPID, EPT or ASID: it is the oracle's `Proc` of vendor "native", whose
physical addresses are the guest's (a translation's frame is a GPA) and whose guest tables are
read where they live (their static backing pages). It runs the guest's own instructions (INVLPG,
MOV to CR3/CR4/CR0, INVPCID) with the oracle's semantics (processor.py), never the model's.

For the explorer the set a processor holds is an int over an enumeration of every entry a native
processor of the scenario can make (the oracle's walks with every entry reading as its whole
declared domain); `static_mask` names the entries built only from entries that never change, which
a canonical fingerprint may ignore (their presence is unobservable: whenever their tags are
current the fill holds them). Fills, steps and lookups are memoized: the reference changes only on
guest page-table writes and guest invalidations, and many explored states share it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from kvmtlb.oracle.machine import closure, remove, walker
from kvmtlb.oracle.processor import Proc, Regs, classify, execute
from kvmtlb.oracle.walk import Entry

Read = Callable[[int, int], tuple[int, ...]]
MEMO_LIMIT = 1 << 16


class NativeCpu(NamedTuple):
    """A native processor, in the field layout the checker's canonical encoding reads: mode,
    registers, no VMCS, no SMM, then the held set as an int over `NativeReference.entries`."""

    mode: int
    regs: Regs
    vmcs: None = None
    smm: bool = False
    may: int = 0


class _Mem(NamedTuple):
    read: Read
    named: dict[int, tuple[int, ...]]
    backing: dict[int, int]


def _proc(regs: Regs) -> Proc:
    return Proc("native", False, regs, regs)


class NativeReference:
    """The entries native processors over the guest hierarchies `roots` (the page tables CR3 may
    point at) can make, and their rules."""

    def __init__(
        self,
        roots: tuple[int, ...],
        pcids: tuple[int, ...],
        cr0: int,
        cr4: int,
        named: dict[int, tuple[int, ...]],
        backing: dict[int, int],
        domain: Read,
    ) -> None:
        self.named = named
        self.backing = backing
        self._domain = domain
        pcide = 1 << 17
        self._regs = [
            Regs(cr0, root | p, c4)
            for root in roots
            for p in sorted(set(pcids))
            for c4 in ((cr4 | pcide) | 0x80, (cr4 | pcide) & ~0x80)
        ]
        found = self._enumerate(domain)
        self.entries: tuple[Entry, ...] = tuple(sorted(found))
        self.bit_of = {e: 1 << n for n, e in enumerate(self.entries)}
        self.full = (1 << len(self.entries)) - 1
        self._static: int | None = None
        self._fills: dict[tuple[Any, ...], int] = {}
        self._outcomes: dict[tuple[Any, ...], tuple[tuple[object, ...], ...]] = {}

    def _enumerate(self, read: Read) -> set[Entry]:
        mem = _Mem(read, self.named, self.backing)
        found: set[Entry] = set()
        for regs in self._regs:  # every PCID the scenario names, CR4.PGE set and clear
            found |= closure(_proc(regs), mem, frozenset())
        return found

    def static_mask(self) -> int:
        """The entries derived only from entries whose declared domain is one value."""
        if self._static is None:
            dom = self._domain

            def fixed(table: int, index: int) -> tuple[int, ...]:
                d = dom(table, index)
                return d if len(d) == 1 else ()

            self._static = self.bits(self._enumerate(fixed))
        return self._static

    # -- encoding -----------------------------------------------------------------------------
    def bits(self, entries: frozenset[Entry] | set[Entry]) -> int:
        m = 0
        for e in entries:
            m |= self.bit_of[e]
        return m

    def members(self, may: int) -> frozenset[Entry]:
        out = []
        n = 0
        while may:
            if may & 1:
                out.append(self.entries[n])
            may >>= 1
            n += 1
        return frozenset(out)

    # -- the rules ----------------------------------------------------------------------------
    def fill(self, regs: Regs, may: int, read: Read, mem_key: object) -> int:
        key = (regs, may, mem_key)
        hit = self._fills.get(key)
        if hit is None:
            if len(self._fills) >= MEMO_LIMIT:
                self._fills.clear()
            mem = _Mem(read, self.named, self.backing)
            hit = self._fills[key] = self.bits(closure(_proc(regs), mem, self.members(may)))
        return hit

    def step(self, regs: Regs, may: int, event: tuple[object, ...]) -> tuple[Regs, int, str]:
        """Run a guest instruction: the new registers, what is left held, the outcome word."""
        p = _proc(regs)
        new, word, rm = execute(p, event)
        held = remove(self.members(may), rm)
        return new.host, self.bits(held), word

    def outcomes(
        self, regs: Regs, may: int, gva: int, access: str, read: Read, mem_key: object
    ) -> tuple[tuple[object, ...], ...]:
        key = (regs, may, mem_key, gva, access)
        hit = self._outcomes.get(key)
        if hit is None:
            if len(self._outcomes) >= MEMO_LIMIT:
                self._outcomes.clear()
            p = _proc(regs)
            mem = _Mem(read, self.named, self.backing)
            results = [r for r, _ in walker(p, mem, self.members(may)).paths(gva)]
            hit = tuple(dict.fromkeys(classify(p, gva, access, r) for r in results))
            self._outcomes[key] = hit
        return hit


__all__ = ["NativeCpu", "NativeReference"]
