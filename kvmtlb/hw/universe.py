"""The finite universe of cached entries a scenario can produce, and MAY-sets as bitmasks over it.

A MAY-set (design.md, "Hardware semantics") is the set of entries a logical processor MAY hold.
The explorer stores millions of them, so each is an int: bit i set means the universe's entry i
may be held. The universe is enumerated when a scenario loads, from the layout's slot domains and
the contexts the scenario can reach: the walk engine (walk.py) is run with every slot reading as
its whole domain and nothing held, which yields every entry any history of writes and fills can
produce (each entry is a function of the values read on its derivation path, each of those values
is in its slot's domain, and held entries only shortcut a prefix of such a path). The order of the
entries is canonical (kind, then fields), so the encoding is the same in every process.

Fills and lookups are memoized per (context, memory, usable held bits): the explorer revisits the
same situations many times, and a memo hit costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator

from kvmtlb.hw.addr import LARGE_PAGE_SIZE, PAGE_SIZE, page_base
from kvmtlb.hw.errors import OutsideUniverse
from kvmtlb.hw.layout import Layout, Memory
from kvmtlb.hw.mappings import PSC_KINDS, Entry, sort_key
from kvmtlb.hw.tags import Tags
from kvmtlb.hw.walk import Held, WalkContext, Walker, WalkResult


def iter_bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class Universe:
    """Every entry the scenario can produce, with bit positions and cached masks."""

    def __init__(self, layout: Layout, contexts: Iterable[WalkContext]) -> None:
        self.layout = layout
        self.contexts = tuple(dict.fromkeys(contexts))
        found: set[Entry] = set()
        for ctx in self.contexts:
            w = Walker(ctx, layout.domain, None, layout.table_backing)
            self._walk_all(w, ctx)
            found |= w.fills
        self.entries: tuple[Entry, ...] = tuple(sorted(found, key=sort_key))
        self.bit_of: dict[Entry, int] = {e: i for i, e in enumerate(self.entries)}
        self.key_masks: dict[tuple[type, tuple[int, int]], int] = {}
        for i, e in enumerate(self.entries):
            k = (type(e), _key(e))
            self.key_masks[k] = self.key_masks.get(k, 0) | (1 << i)
        self.full = (1 << len(self.entries)) - 1
        self._masks: dict[Hashable, int] = {}
        self._usable: dict[tuple[type, Tags], int] = {}
        self._fill_memo: dict[tuple[WalkContext, Memory, int], int] = {}
        self._translate_memo: dict[
            tuple[WalkContext, Memory, int, int], tuple[WalkResult, ...]
        ] = {}

    def __len__(self) -> int:
        return len(self.entries)

    # -- addressing -----------------------------------------------------------------------------
    def addresses(self, ctx: WalkContext) -> tuple[int, ...]:
        """The linear addresses filled at every step under `ctx` (the named GVAs)."""
        if not ctx.pg:
            return self.layout.named.get(ctx.s2_root, ()) if ctx.s2_root >= 0 else ()
        return self.layout.named.get(ctx.root, ())

    def _walk_all(self, w: Walker, ctx: WalkContext) -> None:
        for gva in self.addresses(ctx):
            w.translate(gva)
        if ctx.s2_root >= 0:
            # The guest may touch any guest-physical page it owns (a kernel's direct map covers
            # all of RAM), so guest-physical translations of every mapped GPA may be filled.
            for gpa in self.layout.named.get(ctx.s2_root, ()):
                w.translate_gpa(gpa)

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
        key = (type(tags), tags)
        m = self._usable.get(key)
        if m is None:
            m = 0
            for i, e in enumerate(self.entries):
                if tags.usable(e):
                    m |= 1 << i
            self._usable[key] = m
        return m

    # -- fill and lookup ----------------------------------------------------------------------
    def fill(self, ctx: WalkContext, mem: Memory, may: int) -> int:
        """The MAY-set after the fill rule: closed under lookup for context `ctx`."""
        held = may & self.usable_mask(ctx.tags)
        key = (ctx, mem, held)
        add = self._fill_memo.get(key)
        if add is None:
            add = 0
            while True:
                w = Walker(ctx, mem.reader, self.held(held | add), self.layout.table_backing)
                self._walk_all(w, ctx)
                new = self.bits(w.fills) & ~(held | add)
                if not new:
                    break
                add |= new
            self._fill_memo[key] = add
        return may | add

    def translate(
        self, ctx: WalkContext, mem: Memory, may: int, gva: int
    ) -> tuple[WalkResult, ...]:
        """Every possible translation (and fault) of linear page `gva` under `ctx`."""
        held = may & self.usable_mask(ctx.tags)
        key = (ctx, mem, held, gva)
        hit = self._translate_memo.get(key)
        if hit is None:
            w = Walker(ctx, mem.reader, self.held(held), self.layout.table_backing)
            hit = tuple(w.translate(gva))
            self._translate_memo[key] = hit
        return hit

    def translate_gpa(self, ctx: WalkContext, mem: Memory, may: int, gpa: int) -> list[object]:
        held = may & self.usable_mask(ctx.tags)
        w = Walker(ctx, mem.reader, self.held(held), self.layout.table_backing)
        return list(w.translate_gpa(gpa))


def _key(e: Entry) -> tuple[int, int]:
    if isinstance(e, PSC_KINDS):
        return (e.level, e.region)  # type: ignore[union-attr]
    return (e.page, e.size)  # type: ignore[union-attr]


def covers(entry: Entry, addr: int) -> bool:
    """Whether translation `entry` maps linear/guest-physical page `addr`."""
    return page_base(addr, entry.size) == entry.page  # type: ignore[union-attr]


__all__ = ["LARGE_PAGE_SIZE", "PAGE_SIZE", "Universe", "covers", "iter_bits"]
