"""The finite universe of cached entries a scenario can produce, and MAY-sets as bitmasks over it.

A MAY-set (design.md, "Hardware semantics") is the set of entries a logical processor MAY hold.
The explorer stores millions of them, so each is an int: bit i set means the universe's entry i
may be held. The universe is enumerated when a scenario loads, from the layout's slot domains and
the contexts the scenario can reach: the walk engine (walk.py) is run with every slot reading as
its whole domain and nothing held, which yields every entry any history of writes and fills can
produce (each entry is a function of the values read on its derivation path, each of those values
is in its slot's domain, and held entries only shortcut a prefix of such a path). The order of the
entries is canonical (kind, then fields), so the encoding is the same in every process.

Fills and lookups are memoized. The fill of a context is the union of the fills of its named
addresses, and the walks of one address read a known set of slots and consult a known set of
entries (an address's "plan", recorded once per context by a domain walk of that address alone).
So each address is memoized on (its slot values, the held entries it can consult): a processor
that changes one PTE re-walks only the addresses that can read it, and a memo entry serves every
memory state that agrees on those slots.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from operator import itemgetter
from typing import Any

from kvmtlb.hw.errors import OutsideUniverse
from kvmtlb.hw.layout import Layout, Memory
from kvmtlb.hw.mappings import PSC_KINDS, Entry, sort_key
from kvmtlb.hw.tags import Tags
from kvmtlb.hw.walk import Held, S2Oracle, S2Result, WalkContext, Walker, WalkResult


def iter_bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class _Plan:
    """What the walks of one address under one context read and consult."""

    __slots__ = ("addr", "get", "is_gpa", "mask", "memo", "slots")

    def __init__(self, addr: int, is_gpa: bool, slots: tuple[int, ...], mask: int) -> None:
        self.addr = addr
        self.is_gpa = is_gpa
        self.slots = slots
        self.mask = mask
        self.memo: dict[tuple[Any, int], int] = {}
        # Slot values as a hashable key (a tuple, a single value, or () for no slots).
        self.get: Callable[[tuple[int, ...]], Any] = (
            itemgetter(*slots) if slots else (lambda values: ())
        )


class ContextInfo:
    """Everything cached about one walk context: usable mask, address plans, memo tables."""

    __slots__ = (
        "ctx",
        "fill_memo",
        "gpa_plans",
        "gva_plans",
        "plans",
        "s2_memo",
        "translate_memo",
        "usable",
    )

    def __init__(self, ctx: WalkContext, usable: int, plans: list[_Plan]) -> None:
        self.ctx = ctx
        self.usable = usable
        self.plans = plans
        self.gva_plans = {p.addr: p for p in plans if not p.is_gpa}
        self.gpa_plans = {p.addr: p for p in plans if p.is_gpa}
        # GPA plan memo of stage-2 results: (slot values, held bits) -> (results, fill bits)
        self.s2_memo: dict[tuple[int, Any, int], tuple[S2Result, int]] = {}
        self.fill_memo: dict[tuple[Memory, int], int] = {}
        self.translate_memo: dict[tuple[int, Any, int], tuple[WalkResult, ...]] = {}


class Universe:
    """Every entry the scenario can produce, with bit positions and cached masks."""

    def __init__(self, layout: Layout, contexts: Iterable[WalkContext]) -> None:
        self.layout = layout
        self.contexts = tuple(dict.fromkeys(contexts))
        # A fixpoint: an entry made in one context may be usable in another (a PSC entry made
        # under nested paging is tagged by ASID and PCID only, so it is usable with nested
        # paging off), and walks through it there make entries no walk from a root makes.
        found: set[Entry] = set()
        while True:
            new: set[Entry] = set()
            for ctx in self.contexts:
                w = Walker(ctx, layout.domain, _index(found, ctx.tags), layout.table_backing)
                for gva in self.addresses(ctx):
                    w.translate(gva)
                for gpa in self._gpas(ctx):
                    w.translate_gpa(gpa)
                new |= w.fills
            if new <= found:
                break
            found |= new
        self.entries: tuple[Entry, ...] = tuple(sorted(found, key=sort_key))
        self.bit_of: dict[Entry, int] = {e: i for i, e in enumerate(self.entries)}
        self.key_masks: dict[tuple[type, tuple[int, int]], int] = {}
        for i, e in enumerate(self.entries):
            k = (type(e), _key(e))
            self.key_masks[k] = self.key_masks.get(k, 0) | (1 << i)
        self.full = (1 << len(self.entries)) - 1
        self._masks: dict[Hashable, int] = {}
        self._infos: dict[WalkContext, ContextInfo] = {}
        self._static: int | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def static_mask(self) -> int:
        """The entries derived only from paging-structure entries that never change (a slot
        whose domain has one value): whenever their tags are current the fill rule holds them,
        and a walk through them equals the walk through memory. Their presence is therefore
        unobservable, and a canonical fingerprint may ignore them."""
        if self._static is None:
            layout = self.layout

            def fixed(table: int, index: int) -> tuple[int, ...]:
                dom = layout.domain(table, index)
                return dom if len(dom) == 1 else ()

            found: set[Entry] = set()
            for ctx in self.contexts:
                w = Walker(ctx, fixed, None, layout.table_backing)
                for gva in self.addresses(ctx):
                    w.translate(gva)
                for gpa in self._gpas(ctx):
                    w.translate_gpa(gpa)
                found |= w.fills
            self._static = self.bits(e for e in found if e in self.bit_of)
        return self._static

    # -- addressing -----------------------------------------------------------------------------
    def addresses(self, ctx: WalkContext) -> tuple[int, ...]:
        """The linear addresses filled at every step under `ctx` (the named GVAs)."""
        if not ctx.pg:
            return self.layout.named.get(ctx.s2_root, ()) if ctx.s2_root >= 0 else ()
        return self.layout.named.get(ctx.root, ())

    def _gpas(self, ctx: WalkContext) -> tuple[int, ...]:
        # The guest may touch any guest-physical page it owns (a kernel's direct map covers all
        # of RAM), so guest-physical translations of every mapped GPA may be filled.
        return self.layout.named.get(ctx.s2_root, ()) if ctx.s2_root >= 0 else ()

    def bit(self, entry: Entry) -> int:
        try:
            return 1 << self.bit_of[entry]
        except KeyError:
            raise OutsideUniverse(
                f"entry not in the scenario's universe: {entry.describe()}; the layout or the "
                "contexts given to the universe do not cover it"
            ) from None

    def bits(self, entries: Iterable[Entry]) -> int:
        m = 0
        for e in entries:
            m |= self.bit(e)
        return m

    def members(self, mask: int) -> list[Entry]:
        return [self.entries[i] for i in iter_bits(mask)]

    def held(self, mask: int) -> Held:
        """The walk engine's view of the held entries in `mask`."""
        entries = self.entries
        key_masks = self.key_masks

        def lookup(kind: type, key: tuple[int, int]) -> list[Entry]:
            m = key_masks.get((kind, key), 0) & mask
            return [entries[i] for i in iter_bits(m)] if m else []

        return lookup

    # -- masks ----------------------------------------------------------------------------------
    def mask(self, key: Hashable, predicate: Callable[[Entry], bool]) -> int:
        """The entries satisfying `predicate`, cached under `key` (which must determine it)."""
        m = self._masks.get(key)
        if m is None:
            m = 0
            for i, e in enumerate(self.entries):
                if predicate(e):
                    m |= 1 << i
            self._masks[key] = m
        return m

    def usable_mask(self, tags: Tags) -> int:
        return self.mask(("usable", type(tags), tags), tags.usable)

    # -- contexts and plans ---------------------------------------------------------------------
    def info(self, ctx: WalkContext) -> ContextInfo:
        info = self._infos.get(ctx)
        if info is None:
            plans = [self._plan(ctx, a, False) for a in self.addresses(ctx)]
            plans += [self._plan(ctx, g, True) for g in self._gpas(ctx)]
            info = ContextInfo(ctx, self.usable_mask(ctx.tags), plans)
            self._infos[ctx] = info
        return info

    def _plan(self, ctx: WalkContext, addr: int, is_gpa: bool) -> _Plan:
        """Record what the walks of `addr` can read and consult, by a domain walk."""
        layout = self.layout
        slots: set[int] = set()
        mask = 0

        def reader(table: int, index: int) -> tuple[int, ...]:
            n = layout.slot_at.get((table, index))
            if n is None:
                return (0,)
            slots.add(n)
            return layout.domains[n]

        usable = self.usable_mask(ctx.tags)

        def held(kind: type, key: tuple[int, int]) -> list[Entry]:
            # Every usable entry of the universe may be held: the walks through it read slots
            # too. A paging-structure-cache entry may name a table of another hierarchy (AMD
            # nested entries are tagged by ASID, not nCR3; PSC entries by PCID, not CR3), whose
            # slots are then part of this address's plan.
            nonlocal mask
            m = self.key_masks.get((kind, key), 0)
            mask |= m
            return self.members(m & usable)

        w = Walker(ctx, reader, held, layout.table_backing)
        if is_gpa:
            w.translate_gpa(addr)
        else:
            w.translate(addr)
        return _Plan(addr, is_gpa, tuple(sorted(slots)), mask & usable)

    # -- fill and lookup ----------------------------------------------------------------------
    def fill(self, info: ContextInfo, mem: Memory, may: int) -> int:
        """The MAY-set after the fill rule: closed under lookup for the context of `info`."""
        held = may & info.usable
        key = (mem, held)
        add = info.fill_memo.get(key)
        if add is None:
            add = self._fill(info, mem, held)
            info.fill_memo[key] = add
        return may | add

    def _s2_oracle(self, info: ContextInfo, mem: Memory, held: int) -> S2Oracle:
        """Memoized stage-2 translations for the walks of one fill or lookup."""
        values = mem.values
        plans = info.gpa_plans
        memo = info.s2_memo
        table_backing = self.layout.table_backing

        def oracle(gpa: int) -> tuple[S2Result, int] | None:
            plan = plans.get(gpa)
            if plan is None:
                return None
            k = (gpa, plan.get(values), held & plan.mask)
            hit = memo.get(k)
            if hit is None:
                w = Walker(info.ctx, mem.reader, self.held(k[2]), table_backing)
                results = w.translate_gpa(gpa)
                hit = (results, self.bits(w.fills))
                memo[k] = hit
            return hit

        return oracle

    def _fill(self, info: ContextInfo, mem: Memory, held: int) -> int:
        values = mem.values
        cur = held
        pending = info.plans
        while pending:
            new = 0
            oracle = self._s2_oracle(info, mem, cur) if info.gpa_plans else None
            for plan in pending:
                k = (plan.get(values), cur & plan.mask)
                f = plan.memo.get(k)
                if f is None:
                    if plan.is_gpa and oracle is not None:
                        hit = oracle(plan.addr)
                        assert hit is not None
                        f = hit[1]
                    else:
                        w = Walker(
                            info.ctx, mem.reader, self.held(k[1]), self.layout.table_backing, oracle
                        )
                        w.translate(plan.addr)
                        f = self.bits(w.fills) | w.fill_bits
                    plan.memo[k] = f
                new |= f
            new &= ~cur
            if not new:
                break
            cur |= new
            pending = [p for p in info.plans if p.mask & new]
        return cur & ~held

    def translate(
        self, info: ContextInfo, mem: Memory, may: int, gva: int
    ) -> tuple[WalkResult, ...]:
        """Every possible translation (and fault) of linear page `gva` under the context."""
        plan = info.gva_plans.get(gva)
        held = may & info.usable
        if plan is None:  # not a named address: walk it directly
            w = Walker(info.ctx, mem.reader, self.held(held), self.layout.table_backing)
            return tuple(w.translate(gva))
        key = (plan.addr, plan.get(mem.values), held & plan.mask)
        hit = info.translate_memo.get(key)
        if hit is None:
            oracle = self._s2_oracle(info, mem, held) if info.gpa_plans else None
            w = Walker(info.ctx, mem.reader, self.held(key[2]), self.layout.table_backing, oracle)
            hit = tuple(w.translate(gva))
            info.translate_memo[key] = hit
        return hit


def _index(entries: set[Entry], tags: Tags) -> Held:
    by: dict[tuple[type, tuple[int, int]], list[Entry]] = {}
    for e in entries:
        if tags.usable(e):
            by.setdefault((type(e), _key(e)), []).append(e)

    def lookup(kind: type, key: tuple[int, int]) -> list[Entry]:
        return by.get((kind, key), [])

    return lookup


def _key(e: Entry) -> tuple[int, int]:
    if isinstance(e, PSC_KINDS):
        return (e.level, e.region)  # type: ignore[union-attr]
    return (e.page, e.size)  # type: ignore[union-attr]


__all__ = ["ContextInfo", "Universe", "iter_bits"]
