"""The oracle's machine: processors over one memory, with the maximal run and single runs.

Memory is a dict from (table page, index) to the entry's value (0 where nothing is stored).
`named` lists, per paging hierarchy root, the addresses a processor may touch there (the
scenario's linear addresses for a guest or linear hierarchy, every guest-physical page for a
stage-2 hierarchy: a kernel's direct map covers all of RAM); `backing` says where a guest table at
a guest-physical address lives, for a native processor.

`Machine` is the maximal run: after every event and every store, each processor caches every
entry of every path of every address it may touch, until nothing new appears (§4.10.2.3, §4.10.3.1:
a processor may cache at any time what a walk can produce). Nothing is evicted. So a processor of
`Machine` holds the union of what any run may hold. `ConcreteTlb` is one run: it walks one path at
a time and caches some of what it built, in a finite cache with LRU replacement per kind.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from kvmtlb.oracle.processor import Proc, Removes, classify, execute, fault
from kvmtlb.oracle.walk import ADDR, EPT_DIRTY, KIB4, PS, SD, Entry, Result, Walk, index

Mem = dict[tuple[int, int], int]


class Memory(NamedTuple):
    values: Mem
    named: dict[int, tuple[int, ...]]
    backing: dict[int, int]

    def read(self, table: int, index: int) -> tuple[int, ...]:
        return (self.values.get((table, index), 0),)


class MemoryView(Protocol):
    """What walks need of memory: the values of an entry, the named addresses, the backing."""

    @property
    def named(self) -> dict[int, tuple[int, ...]]: ...

    @property
    def backing(self) -> dict[int, int]: ...

    def read(self, table: int, index: int) -> tuple[int, ...]: ...


def addresses(p: Proc, mem: MemoryView) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The linear and the guest-physical addresses processor `p` may touch now."""
    v = p.view()
    gpas = mem.named.get(v.s2root, ()) if v.s2root >= 0 else ()
    if not v.pg:
        return gpas, gpas
    return mem.named.get(v.root, ()), gpas


def walker(p: Proc, mem: MemoryView, held: Iterable[Entry], merge: bool = True) -> Walk:
    return Walk(p.view(), mem.read, [e for e in held if p.usable(e)], mem.backing, merge)


def closure(p: Proc, mem: MemoryView, held: frozenset[Entry]) -> frozenset[Entry]:
    """`held` plus everything the paths of every address `p` may touch can build, repeatedly."""
    gvas, gpas = addresses(p, mem)
    while True:
        w = walker(p, mem, held)
        new: set[Entry] = set()
        for a in gvas:
            for _, built in w.paths(a):
                new.update(built)
        for g in gpas:
            for _, built in w.gpa_paths(g):
                new.update(built)
        if new <= held:
            return held
        held = held | new


def remove(held: frozenset[Entry], rm: Removes | None) -> frozenset[Entry]:
    if rm is None:
        return held
    return frozenset(e for e in held if not rm(e, held))


class Machine:
    """The maximal run of a multi-processor machine (immutable values in, new values out)."""

    def __init__(self, mem: Memory, procs: Iterable[Proc]) -> None:
        self.mem = mem
        self.procs = tuple(p._replace(held=closure(p, mem, p.held)) for p in procs)

    def _with(self, i: int, p: Proc) -> Machine:
        m = Machine.__new__(Machine)
        m.mem = self.mem
        m.procs = (
            *self.procs[:i],
            p._replace(held=closure(p, self.mem, p.held)),
            *self.procs[i + 1 :],
        )
        return m

    def step(self, i: int, ev: tuple[object, ...]) -> tuple[Machine, str, Removes | None]:
        """Processor `i` runs `ev`: the new machine, the outcome and what the event removes."""
        p = self.procs[i]
        new, outcome, rm = execute(p, ev)
        return self._with(i, new._replace(held=remove(p.held, rm))), outcome, rm

    def write(self, table: int, index: int, value: int) -> Machine:
        values = dict(self.mem.values)
        values[(table, index)] = value
        return Machine(self.mem._replace(values=values), self.procs)

    def results(self, i: int, gva: int) -> list[Result]:
        p = self.procs[i]
        return [r for r, _ in walker(p, self.mem, p.held).paths(gva)]

    def outcomes(self, i: int, gva: int, access: str) -> set[tuple[object, ...]]:
        p = self.procs[i]
        results = self.results(i, gva)
        if access == "write" and p.ad_on:
            # §28.2.4: a write sets the leaf's dirty flag unless the translation it uses holds
            # it set; to set it the processor walks the EPT, so a translation held clean is not
            # used as it is: the write takes what a walk of memory finds now
            fresh = [r for r, _ in walker(p, self.mem, frozenset()).paths(gva)]
            results = [r for r in results if r.what != "ok" or r.erights & SD or r in fresh]
            results += fresh
        return {classify(p, gva, access, r) for r in results}

    def take_write(self, i: int, outcome: tuple[object, ...]) -> Machine:
        """A write that completes with `outcome` (an "access"): with EPT A/D flags on and the
        translation not holding the dirty flag, the processor sets the flag in the EPT leaf of
        the GPA (§28.2.4) and, with 'enable PML', logs the GPA's page (§28.2.5)."""
        p = self.procs[i]
        erights = int(outcome[5])  # type: ignore[call-overload]
        if not p.ad_on or erights & SD:
            return self
        gpa = int(outcome[2])  # type: ignore[call-overload]
        table = p.eptp & ADDR
        for level in (4, 3, 2, 1):
            value = self.mem.values.get((table, index(gpa, level)), 0)
            if level == 1 or (level == 2 and value & PS):
                m = self.write(table, index(gpa, level), value | EPT_DIRTY)
                if p.enable_pml:
                    return m._with(i, p._replace(pml=(*p.pml, gpa - gpa % KIB4)))
                return m
            table = value & ADDR
        raise AssertionError("unreachable")

    def take(self, i: int, outcome: tuple[object, ...]) -> tuple[Machine, Removes | None]:
        """The successor of a faulting outcome (its invalidation, and the exit it causes)."""
        p = self.procs[i]
        new, rm = fault(p, outcome)
        return self._with(i, new._replace(held=remove(p.held, rm))), rm


class ConcreteTlb:
    """One run's cache: LRU order, an optional capacity per kind (evictions happen)."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[Entry, None] = OrderedDict()
        self.evicted = 0

    def held(self) -> frozenset[Entry]:
        return frozenset(self.entries)

    def insert(self, e: Entry) -> None:
        self.entries[e] = None
        self.entries.move_to_end(e)
        if self.capacity is not None:
            same = [x for x in self.entries if x.kind == e.kind]
            while len(same) > self.capacity:
                del self.entries[same.pop(0)]
                self.evicted += 1

    def invalidate(self, rm: Removes | None) -> None:
        if rm is None:
            return
        held = self.held()
        for e in [e for e in held if rm(e, held)]:
            del self.entries[e]

    def fill(self, p: Proc, mem: MemoryView, rng: random.Random, keep: float = 0.7) -> None:
        """Walk one random path of each address `p` may touch; cache a random part of it."""
        gvas, gpas = addresses(p, mem)
        for a in gvas:
            paths = list(walker(p, mem, self.held(), merge=False).paths(a))
            for e in rng.choice(paths)[1]:
                if rng.random() < keep:
                    self.insert(e)
        for g in gpas:
            gpaths = list(walker(p, mem, self.held(), merge=False).gpa_paths(g))
            for e in rng.choice(gpaths)[1]:
                if rng.random() < keep:
                    self.insert(e)


__all__ = ["ConcreteTlb", "Machine", "Memory", "MemoryView", "addresses", "closure", "remove"]
