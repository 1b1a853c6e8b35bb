"""A concrete TLB: the entries one processor actually holds, filled by single-path walks.

Where the MAY-set model (walk.py, universe.py) computes every translation a processor may
produce, this module does what one real processor does on one occasion: walk one path (choosing,
at each step, one usable source: a held translation, a held paging-structure-cache entry, or
memory), and cache some of the entries that path built, in a finite cache with LRU replacement
per kind. It is written independently of walk.py so that the property tests can check the MAY-set
model against it. (The cost model has its own indexed concrete TLB, kvmtlb/cost/tlb.py, built for
long runs on the same predicates: this one scans every held entry on each insert.)

Invalidations are applied through the same `Invalidation.removes` predicate the MAY-set uses, so
the two can never disagree on what an instruction removes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from kvmtlb.hw.addr import LARGE_PAGE_SIZE, LEVELS, PAGE_SIZE, page_base, region, table_index
from kvmtlb.hw.invalidation import Invalidation
from kvmtlb.hw.layout import Format, Memory
from kvmtlb.hw.mappings import PSC_KINDS, Entry
from kvmtlb.hw.paging import (
    E_ALL,
    E_R,
    EPT_PS,
    G_ALL,
    PS,
    G,
    ept_misconfigured,
    ept_present,
    ept_rights,
    pte_addr,
    pte_present,
    pte_rights,
)
from kvmtlb.hw.walk import NotPresent, Stage2Fault, Translated, WalkContext, WalkResult, _npt_rights


class Path(NamedTuple):
    """One way a lookup can go: its result, the entries the path built, and the memory
    references it made (paging-structure reads, for the cost model)."""

    result: WalkResult
    built: tuple[Entry, ...]
    refs: int
    hit: bool  # resolved by a held translation, with no walk


class _S2Path(NamedTuple):
    frame: int  # 4 KiB host frame, or -1 on a stage-2 fault
    rights: int
    size: int
    built: tuple[Entry, ...]
    refs: int
    misconfig: bool = False


def _covers(e: Entry, addr: int) -> bool:
    return page_base(addr, e.size) == e.page  # type: ignore[union-attr]


class PathWalker:
    """Enumerates the single paths a lookup can take, given held entries and memory."""

    def __init__(self, ctx: WalkContext, memory: Memory, held: Sequence[Entry]) -> None:
        self.ctx = ctx
        self.mem = memory
        tags = ctx.tags
        self.usable = [e for e in held if tags.usable(e)]
        self._gpa_cache: dict[int, list[_S2Path]] = {}
        self._by_kind: dict[type, list[Entry]] = {}
        for e in self.usable:
            self._by_kind.setdefault(type(e), []).append(e)
        ept = ctx.s2_fmt is Format.EPT
        self._ept = ept
        self._s2_present = ept_present if ept else pte_present
        self._s2_rights = ept_rights if ept else _npt_rights
        self._s2_large = EPT_PS if ept else PS
        tr, psc, s2tr, s2psc = tags.kinds
        self._tr, self._psc, self._s2tr, self._s2psc = tr, psc, s2tr, s2psc

    def _held(self, kind: type | None) -> list[Entry]:
        return self._by_kind.get(kind, []) if kind is not None else []

    # -- stage 2 --------------------------------------------------------------------------------
    def gpa_paths(self, gpa: int) -> list[_S2Path]:
        hit = self._gpa_cache.get(gpa)
        if hit is None:
            hit = self._gpa_cache[gpa] = list(self._gpa_paths(gpa))
        return hit

    def _gpa_paths(self, gpa: int) -> Iterator[_S2Path]:
        for e in self._held(self._s2tr):
            if _covers(e, gpa):
                yield _S2Path(e.frame + (gpa & (e.size - 1)), e.rights, e.size, (), 0)  # type: ignore[union-attr]
        yield self._s2_from(gpa, LEVELS, self.ctx.s2_root, E_ALL, (), 0)
        for e in self._held(self._s2psc):
            if region(gpa, e.level) == e.region:  # type: ignore[union-attr]
                yield self._s2_from(gpa, e.level - 1, e.table, e.rights, (), 0)  # type: ignore[union-attr]

    def _s2_from(
        self, gpa: int, level: int, table: int, rights: int, built: tuple[Entry, ...], refs: int
    ) -> _S2Path:
        tags = self.ctx.tags
        while True:
            value = self.mem.read(table, table_index(gpa, level))
            refs += 1
            if not self._s2_present(value):
                return _S2Path(-1, 0, 0, built, refs)
            if self._ept and ept_misconfigured(value):
                return _S2Path(-1, 0, 0, built, refs, True)
            rights &= self._s2_rights(value)
            if level == 1 or (level == 2 and value & self._s2_large):
                size = PAGE_SIZE if level == 1 else LARGE_PAGE_SIZE
                base = pte_addr(value) & ~(size - 1)
                frame = base + (gpa & (size - 1))
                built += (tags.s2_translation(page_base(gpa, size), size, base, rights),)
                if size != PAGE_SIZE:
                    built += (tags.s2_translation(gpa, PAGE_SIZE, frame, rights),)
                return _S2Path(frame, rights, size, built, refs)
            table = pte_addr(value)
            built += (tags.s2_psc(level, region(gpa, level), table, rights),)
            level -= 1

    # -- first stage ---------------------------------------------------------------------------
    def paths(self, gva: int) -> Iterator[Path]:
        ctx = self.ctx
        tags = ctx.tags
        for held in self._held(self._tr):
            e: Any = held
            if _covers(e, gva):
                off = gva & (e.size - 1)
                frame = e.frame + off
                gpa = getattr(e, "gpa", -1)
                if gpa >= 0:
                    gpa += off
                elif ctx.guest_physical:
                    gpa = frame
                t = Translated(gpa, frame, e.rights, getattr(e, "erights", E_ALL), e.glob)
                yield Path(t, (), 0, True)
        stage2 = ctx.s2_root >= 0
        if not ctx.pg:
            if not stage2:
                gpa = gva if ctx.guest_physical else -1
                yield Path(Translated(gpa, gva, G_ALL, E_ALL, False), (), 0, False)
                return
            for p in self.gpa_paths(gva):
                if p.frame < 0:
                    yield Path(Stage2Fault(gva, True, p.misconfig), p.built, p.refs, False)
                else:
                    made = tags.translation(
                        gva, PAGE_SIZE, PAGE_SIZE, p.frame, G_ALL, p.rights, False, gva
                    )
                    yield Path(
                        Translated(gva, p.frame, G_ALL, p.rights, False),
                        (*p.built, made),
                        p.refs,
                        False,
                    )
            return
        root = page_base(ctx.root)
        if stage2:
            for p in self.gpa_paths(root):
                if p.frame < 0 or not p.rights & E_R:
                    yield Path(Stage2Fault(root, False, p.misconfig), p.built, p.refs, False)
                else:
                    yield from self._walk(gva, LEVELS, p.frame, G_ALL, p.built, p.refs)
        else:
            yield from self._walk(gva, LEVELS, self._phys(root), G_ALL, (), 0)
        for psc in self._held(self._psc):
            p_: Any = psc
            if region(gva, p_.level) == p_.region:
                start = p_.table if stage2 else self._phys(p_.table)
                yield from self._walk(gva, p_.level - 1, start, p_.rights, (), 0)

    def _phys(self, addr: int) -> int:
        if self.ctx.guest_physical:
            return self.mem.layout.table_backing[addr]
        return addr

    def _walk(
        self, gva: int, level: int, table: int, rights: int, built: tuple[Entry, ...], refs: int
    ) -> Iterator[Path]:
        ctx = self.ctx
        tags = ctx.tags
        value = self.mem.read(table, table_index(gva, level))
        refs += 1
        if not pte_present(value):
            yield Path(NotPresent(level), built, refs, False)
            return
        rights &= pte_rights(value)
        if level == 1 or (level == 2 and value & PS):
            size = PAGE_SIZE if level == 1 else LARGE_PAGE_SIZE
            glob = bool(value & G) and ctx.pge
            base = pte_addr(value) & ~(size - 1)
            off = gva & (size - 1)
            gp = ctx.guest_physical
            if ctx.s2_root < 0:
                made = [
                    tags.translation(
                        page_base(gva, size),
                        size,
                        size,
                        base,
                        rights,
                        E_ALL,
                        glob,
                        base if gp else -1,
                    )
                ]
                if size != PAGE_SIZE:  # the 4 KiB piece a processor may cache instead
                    made.append(
                        tags.translation(
                            gva,
                            PAGE_SIZE,
                            size,
                            base + off,
                            rights,
                            E_ALL,
                            glob,
                            base + off if gp else -1,
                        )
                    )
                t = Translated(base + off if gp else -1, base + off, rights, E_ALL, glob)
                yield Path(t, (*built, *made), refs, False)
                return
            leaf = base + off
            for p in self.gpa_paths(leaf):
                if p.frame < 0:
                    fault = Stage2Fault(leaf, True, p.misconfig)
                    yield Path(fault, built + p.built, refs + p.refs, False)
                    continue
                tsize = min(size, p.size)
                toff = gva & (tsize - 1)
                made = [
                    tags.translation(
                        page_base(gva, tsize),
                        tsize,
                        size,
                        p.frame - toff,
                        rights,
                        p.rights,
                        glob,
                        leaf - toff,
                    )
                ]
                if tsize != PAGE_SIZE:
                    made.append(
                        tags.translation(
                            gva, PAGE_SIZE, size, p.frame, rights, p.rights, glob, leaf
                        )
                    )
                yield Path(
                    Translated(leaf, p.frame, rights, p.rights, glob),
                    (*built, *p.built, *made),
                    refs + p.refs,
                    False,
                )
            return
        nxt = pte_addr(value)
        if ctx.s2_root < 0:
            psc = tags.psc(level, region(gva, level), nxt, rights)
            yield from self._walk(gva, level - 1, self._phys(nxt), rights, (*built, psc), refs)
            return
        for p in self.gpa_paths(nxt):
            if p.frame < 0 or not p.rights & E_R:
                fault = Stage2Fault(nxt, False, p.misconfig)
                yield Path(fault, built + p.built, refs + p.refs, False)
                continue
            psc = tags.psc(level, region(gva, level), p.frame, rights)
            yield from self._walk(
                gva, level - 1, p.frame, rights, built + p.built + (psc,), refs + p.refs
            )


Chooser = Callable[[int], int]  # given a number of options, pick one (index)


class ConcreteTlb:
    """The entries one processor holds: LRU-ordered, with an optional capacity per kind."""

    def __init__(self, capacity: dict[type, int] | None = None) -> None:
        self.capacity = capacity or {}
        self.entries: OrderedDict[Entry, None] = OrderedDict()

    def __contains__(self, e: Entry) -> bool:
        return e in self.entries

    def held(self) -> list[Entry]:
        return list(self.entries)

    def touch(self, e: Entry) -> None:
        if e in self.entries:
            self.entries.move_to_end(e)

    def insert(self, e: Entry) -> list[Entry]:
        """Cache `e` (most recently used); returns the entries evicted to make room."""
        if e in self.entries:
            self.entries.move_to_end(e)
            return []
        self.entries[e] = None
        cap = self.capacity.get(type(e))
        evicted: list[Entry] = []
        if cap is not None:
            same = [x for x in self.entries if type(x) is type(e)]
            while len(same) > cap:
                victim = same.pop(0)
                del self.entries[victim]
                evicted.append(victim)
        return evicted

    def evict(self, e: Entry) -> None:
        self.entries.pop(e, None)

    def invalidate(self, inv: Invalidation) -> list[Entry]:
        """Apply `inv`; returns the entries it removed."""
        held = list(self.entries)
        gone = [e for e in held if inv.removes(e, held)]
        for e in gone:
            del self.entries[e]
        return gone


def is_psc(e: Entry) -> bool:
    return isinstance(e, PSC_KINDS)
