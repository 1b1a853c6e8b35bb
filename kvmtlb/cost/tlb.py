"""The concrete TLB of one physical CPU: what it holds, per mapping kind, with LRU replacement.

Models the caches of SDM §28.3.1 / APM §15.16 as one finite cache per entry kind
(kvmtlb.hw.mappings: linear, guest-physical and combined translations and their
paging-structure caches; AMD's ASID-tagged and nested ones), each with a capacity and
least-recently-used replacement. Where the MAY-set machine holds every entry a processor may hold,
this holds the entries one processor does hold after the walks it actually made
(kvmtlb.cost.walk).

The two share their rules:

- Lookup finds exactly the entries the current tags make usable (`Tags.usable`, SDM §28.3.2): an
  entry is filed under its tags (a global translation under "any PCID", §4.10.2.4), and a context
  probes with keys derived from entries built by its own `Tags` constructors, so no tag rule is
  restated here (tests/test_cost_tlb.py checks the equivalence).
- Invalidation applies `Select.matches` / `Invalidation.removes` (kvmtlb.hw.invalidation), the
  predicate of the MAY-set machine. For speed it is evaluated once per group of entries that agree
  on every field a clause without an address reads (kind, VPID, PCID, EP4TA, ASID, global bit),
  and, for a clause with an address, only on the entries that could map it (in each group, the
  one key for its 4 KiB page and the one for its 2 MiB page, and the entries that come from a
  2 MiB page around it). tests/test_cost_tlb.py checks that the result equals the brute-force
  `[e for e in held if inv.removes(e, held)]`.

Why not `kvmtlb.hw.concrete.ConcreteTlb`: it scans every held entry on each insert and
invalidation, fine for the property tests' handful of entries, too slow for a long workload.

Abstracts away: set associativity (a cache is fully associative within its capacity), the split
into first- and second-level TLBs, separate arrays per page size, and the order in which a real
processor may prefer one of several usable entries (at most one entry is filed per key: an entry
is only made on a miss).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from kvmtlb.hw.addr import LARGE_PAGE_SIZE, PAGE_SIZE
from kvmtlb.hw.errors import ModelError
from kvmtlb.hw.invalidation import Invalidation
from kvmtlb.hw.mappings import (
    PSC_KINDS,
    AsidPsc,
    AsidTranslation,
    CombinedPsc,
    CombinedTranslation,
    Entry,
    GuestPhysicalPsc,
    GuestPhysicalTranslation,
    LinearPsc,
    LinearTranslation,
    NestedPsc,
    NestedTranslation,
)

# The tag fields of each kind, in the order they form a key (mappings.py spells them out).
TAG_FIELDS: dict[type, tuple[str, ...]] = {
    LinearTranslation: ("vpid", "pcid"),
    LinearPsc: ("vpid", "pcid"),
    GuestPhysicalTranslation: ("ep4ta",),
    GuestPhysicalPsc: ("ep4ta",),
    CombinedTranslation: ("vpid", "pcid", "ep4ta"),
    CombinedPsc: ("vpid", "pcid", "ep4ta"),
    AsidTranslation: ("asid", "pcid"),
    AsidPsc: ("asid", "pcid"),
    NestedTranslation: ("asid",),
    NestedPsc: ("asid",),
}

# Short names of the kinds, for counters and capacities.
KIND_NAMES: dict[type, str] = {
    LinearTranslation: "linear",
    LinearPsc: "linear-psc",
    GuestPhysicalTranslation: "guest-physical",
    GuestPhysicalPsc: "guest-physical-psc",
    CombinedTranslation: "combined",
    CombinedPsc: "combined-psc",
    AsidTranslation: "asid",
    AsidPsc: "asid-psc",
    NestedTranslation: "nested",
    NestedPsc: "nested-psc",
}
KIND_BY_NAME = {n: k for k, n in KIND_NAMES.items()}

ANY_PCID = -1  # the PCID under which a global translation is filed (usable under any PCID)
_TAG_SHIFT = 49  # keys are ints: tag id above bit 49, the address (and size or level) below
ADDR_MASK = (1 << 48) - 1
_LARGE = 1  # bit 0 of a translation key: the entry maps a 2 MiB page


class KeySpace:
    """Interns the tag tuples of keys and groups as small ints, shared by the TLBs of a machine so
    that a context's probe keys serve every pCPU."""

    def __init__(self) -> None:
        self._ids: dict[tuple[Any, ...], int] = {}

    def intern(self, tag: tuple[Any, ...]) -> int:
        n = self._ids.get(tag)
        if n is None:
            n = self._ids[tag] = len(self._ids)
        return n

    def lookup_tag(self, e: Entry) -> tuple[Any, ...]:
        """The tags an entry is found by: its tag fields, with ANY_PCID for a global translation
        (SDM §4.10.2.4: a global entry is used under any PCID)."""
        kind = type(e)
        fields = TAG_FIELDS[kind]
        glob = bool(getattr(e, "glob", False))
        return (kind, *(ANY_PCID if f == "pcid" and glob else getattr(e, f) for f in fields))

    def base(self, e: Entry) -> int:
        """The high part of the key of every entry filed with `e`'s lookup tags."""
        return self.intern(self.lookup_tag(e)) << _TAG_SHIFT

    def key(self, e: Entry) -> int:
        if isinstance(e, PSC_KINDS):
            return self.base(e) | psc_key(e.region, e.level)  # type: ignore[union-attr]
        return self.base(e) | translation_key(e.page, e.size)  # type: ignore[union-attr]

    def group(self, e: Entry) -> int:
        """Entries of one group agree on every field `Select.matches` reads besides the address:
        the kind, VPID, PCID, EP4TA, ASID and global bit."""
        return self.intern(
            (
                type(e),
                getattr(e, "vpid", None),
                getattr(e, "pcid", None),
                getattr(e, "ep4ta", None),
                getattr(e, "asid", None),
                bool(getattr(e, "glob", False)),
            )
        )


def translation_key(page: int, size: int) -> int:
    """The low part of a translation's key: the page's 48 linear (or guest-physical) address bits,
    unique for canonical addresses, and whether it maps 2 MiB."""
    return (page & ADDR_MASK) | (_LARGE if size == LARGE_PAGE_SIZE else 0)


def psc_key(region: int, level: int) -> int:
    return (region << 3) | level


class KindCache:
    """The entries of one kind: key -> entry in LRU order (oldest first), with the indexes that
    invalidation uses: key -> group, group -> keys, and, for translations that map or come from
    a 2 MiB page, 2 MiB region -> keys."""

    __slots__ = ("capacity", "entries", "gid", "groups", "is_psc", "large", "n_global")

    def __init__(self, capacity: int, is_psc: bool) -> None:
        self.capacity = capacity
        self.is_psc = is_psc
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.gid: dict[int, int] = {}
        self.groups: dict[int, set[int]] = {}
        self.large: dict[int, set[int]] = {}
        self.n_global = 0  # global translations held (lookups probe "any PCID" only if > 0)


_PAGE_MASK = ADDR_MASK & ~(PAGE_SIZE - 1)  # the 4 KiB page of a translation key
_REGION_MASK = ADDR_MASK & ~(LARGE_PAGE_SIZE - 1)  # its 2 MiB region


def _add(index: dict[int, set[int]], at: int, key: int) -> None:
    keys = index.get(at)
    if keys is None:
        index[at] = {key}
    else:
        keys.add(key)


def _discard(index: dict[int, set[int]], at: int, key: int) -> None:
    keys = index.get(at)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[at]


class Tlb:
    """The entries one physical CPU holds, one `KindCache` per kind."""

    def __init__(self, keys: KeySpace, capacity: Mapping[type, int]) -> None:
        self.keys = keys
        self.capacity = dict(capacity)
        self.caches: dict[type, KindCache] = {}

    def cache(self, kind: type) -> KindCache:
        kc = self.caches.get(kind)
        if kc is None:
            cap = self.capacity.get(kind)
            if cap is None:
                raise ModelError(f"no TLB capacity for {KIND_NAMES.get(kind, kind.__name__)}")
            kc = self.caches[kind] = KindCache(cap, kind in PSC_KINDS)
        return kc

    def __len__(self) -> int:
        return sum(len(kc.entries) for kc in self.caches.values())

    def held(self) -> list[Entry]:
        return [e for kc in self.caches.values() for e in kc.entries.values()]

    def __contains__(self, e: object) -> bool:
        kc = self.caches.get(type(e))
        return kc is not None and kc.entries.get(self.keys.key(e)) == e  # type: ignore[arg-type]

    def check(self) -> None:
        """Assert that every entry is filed under its own key and group (for tests)."""
        for kc in self.caches.values():
            for key, e in kc.entries.items():
                assert self.keys.key(e) == key, (e, key)
                assert self.keys.group(e) == kc.gid[key], e
                assert key in kc.groups[kc.gid[key]]
            assert sum(len(v) for v in kc.groups.values()) == len(kc.entries)
            glob = sum(1 for e in kc.entries.values() if getattr(e, "glob", False))
            assert glob == kc.n_global

    # -- fill ---------------------------------------------------------------------------------
    def insert(self, e: Entry) -> Entry | None:
        """Cache `e` as the most recently used entry of its kind; returns the entry evicted to make
        room (the least recently used of the kind), if any."""
        large = getattr(e, "size", PAGE_SIZE) != PAGE_SIZE or getattr(e, "span", 0) > PAGE_SIZE
        glob = bool(getattr(e, "glob", False))
        return self.put(self.cache(type(e)), self.keys.key(e), self.keys.group(e), e, glob, large)

    def put(
        self, kc: KindCache, key: int, gid: int, e: Any, glob: bool = False, large: bool = False
    ) -> Entry | None:
        """`insert` with the key, the group, whether `e` is global and whether it maps or comes
        from a 2 MiB page already known (the walker's fast path)."""
        entries = kc.entries
        if key in entries:
            self._remove(kc, key)
        entries[key] = e
        kc.gid[key] = gid
        keys = kc.groups.get(gid)
        if keys is None:
            kc.groups[gid] = {key}
        else:
            keys.add(key)
        if large:
            _add(kc.large, key & _REGION_MASK, key)
        if glob:
            kc.n_global += 1
        if len(entries) > kc.capacity:
            return self._remove(kc, next(iter(entries)))
        return None

    def _remove(self, kc: KindCache, key: int) -> Entry:
        e: Any = kc.entries.pop(key)
        _discard(kc.groups, kc.gid.pop(key), key)
        if kc.large:
            _discard(kc.large, key & _REGION_MASK, key)
        if kc.n_global and getattr(e, "glob", False):
            kc.n_global -= 1
        return e  # type: ignore[no-any-return]

    def _remove_group(self, kc: KindCache, gid: int, keys: set[int]) -> list[Entry]:
        """Remove every entry of one group (what `_remove` does for each, at once)."""
        del kc.groups[gid]
        entries, gids = kc.entries, kc.gid
        gone = [entries.pop(key) for key in keys]
        for key in keys:
            del gids[key]
        if kc.large:
            for key in keys:
                _discard(kc.large, key & _REGION_MASK, key)
        if kc.n_global:
            kc.n_global -= sum(1 for e in gone if getattr(e, "glob", False))
        return gone

    def _candidates(self, kc: KindCache, addr: int) -> set[int]:
        """The keys of the translations a clause with address `addr` can match: those that map
        its 4 KiB page or its 2 MiB page (under each group's lookup tags: one key each), and
        those that come from a 2 MiB page containing it (whole_page)."""
        addr &= ADDR_MASK
        page, large = addr & _PAGE_MASK, (addr & _REGION_MASK) | _LARGE
        entries = kc.entries
        out = set(kc.large.get(addr & _REGION_MASK, ()))
        for keys in kc.groups.values():
            base = next(iter(keys)) & ~ADDR_MASK
            for key in (base | page, base | large):
                if key in entries:
                    out.add(key)
        return out

    # -- invalidation ---------------------------------------------------------------------------
    def invalidate(self, inv: Invalidation) -> list[Entry]:
        """Remove what `inv` must remove (hw.invalidation's predicate); returns the removed
        entries."""
        if not inv.clauses:
            return []
        if inv.keep_global_paths:
            # The retentive reading of INVVPID type 3 looks at the other held entries: apply the
            # predicate to every entry (KVM never issues type 3; this path is rare).
            held = self.held()
            removed = [e for e in held if inv.removes(e, held)]
            for e in removed:
                self._remove(self.caches[type(e)], self.keys.key(e))
            return removed
        gone: list[Entry] = []
        for clause in inv.clauses:
            for kind in clause.kinds:
                kc = self.caches.get(kind)
                if kc is None or not kc.entries:
                    continue
                if getattr(clause, "per_entry", False):  # a GPA range (kvmtlb.hw.hyperv)
                    for key in list(kc.entries):
                        if clause.matches(kc.entries[key]):
                            gone.append(self._remove(kc, key))
                    continue
                if clause.addr is None:
                    for gid, keys in list(kc.groups.items()):
                        if clause.matches(kc.entries[next(iter(keys))]):
                            gone += self._remove_group(kc, gid, keys)
                    continue
                if kc.is_psc:
                    candidates: Iterable[int] = list(kc.entries)
                else:
                    candidates = self._candidates(kc, clause.addr)
                for key in candidates:
                    if clause.matches(kc.entries[key]):
                        gone.append(self._remove(kc, key))
        return gone


__all__ = [
    "ADDR_MASK",
    "ANY_PCID",
    "KIND_BY_NAME",
    "KIND_NAMES",
    "TAG_FIELDS",
    "KeySpace",
    "KindCache",
    "Tlb",
    "psc_key",
    "translation_key",
]
