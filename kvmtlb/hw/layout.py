"""Where the paging structures live, and the memory that holds them.

Models: 4-level paging hierarchies in memory. A guest hierarchy's tables live in guest-physical
memory (their GPAs are in a reserved range a scenario cannot name) and are backed by host pages
mapped through the EPT/NPT hierarchies the builder names, so that walking a guest's tables goes
through EPT (the 2-D walk of SDM §28.2.1). EPT, NPT and linear (host or shadow) hierarchies live
in host-physical memory directly.

Memory holds table entries only ("slots"); data pages carry no contents because the properties
are about which translation an access uses, not what it reads. Each slot has a declared finite
domain (its initial value and every value the caller will ever write); the entry universe is
enumerated from those domains (see universe.py), so a write outside a slot's domain raises
OutsideUniverse instead of silently producing entries the MAY-set bitmask cannot hold.

Abstracts away: the guest's own mapping of its page tables (the guest writes a PTE "at its GPA";
the write reaches the current backing page), and host changes to the backing of guest table
pages (the reserved range is never zapped or migrated: scenario files cannot name it). Both are
sound for the flush properties: they concern leaf mappings and the tags of cached entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from kvmtlb.hw.addr import (
    LEVELS,
    PAGE_SIZE,
    check_page,
    page_base,
    table_index,
)
from kvmtlb.hw.errors import AddressError, OutsideUniverse
from kvmtlb.hw.paging import E_ALL, EPT_PS, PS, make_ept, make_table_pte

GUEST_TABLE_GPA_BASE = 0x1_0000_0000
TABLE_HPA_BASE = 0x2_0000_0000
FRESH_HPA_BASE = 0x3_0000_0000


class Format(Enum):
    """Entry format of a hierarchy's tables, and which address space its pointers live in."""

    GUEST = "guest"  # IA-32e entries; table pointers are GPAs, translated by a stage-2 hierarchy
    LINEAR = "linear"  # IA-32e entries; table pointers are physical (host) addresses
    EPT = "ept"  # EPT entries (SDM §28.2.2); pointers are HPAs
    NPT = "npt"  # AMD nested page tables: IA-32e entries (APM §15.25.5); pointers are HPAs


@dataclass(frozen=True)
class Hierarchy:
    """One paging hierarchy: its format, its root (GPA for GUEST, HPA otherwise)."""

    fmt: Format
    root: int
    stage2: tuple[int, ...] = ()  # GUEST only: the EPT/NPT roots its table pages are mapped in


@dataclass(frozen=True)
class Slot:
    """One paging-structure entry of the layout: table page (HPA) and index."""

    table: int
    index: int
    hierarchy: int  # root of the hierarchy it belongs to
    level: int
    addr: int  # the address whose walk reads this slot (base of the region it maps)


class Layout:
    """Immutable description of every table page and slot, with each slot's value domain."""

    def __init__(
        self,
        hierarchies: dict[int, Hierarchy],
        slots: list[Slot],
        domains: list[tuple[int, ...]],
        named: dict[int, tuple[int, ...]],
        table_backing: dict[int, int],
    ) -> None:
        self.hierarchies = hierarchies
        self.slots = tuple(slots)
        self.domains = tuple(domains)
        self.slot_at: dict[tuple[int, int], int] = {
            (s.table, s.index): n for n, s in enumerate(slots)
        }
        # named[root]: addresses walked at every fill under that hierarchy (GVAs for guest and
        # linear hierarchies, GPAs for EPT/NPT hierarchies).
        self.named = named
        self.table_backing = table_backing  # guest table GPA -> backing HPA (static)
        self._domain_at: dict[tuple[int, int], tuple[int, ...]] = {
            (s.table, s.index): d for s, d in zip(slots, domains, strict=True)
        }
        self._slot_by: dict[tuple[int, int, int], int] = {
            (s.hierarchy, s.level, s.addr): n for n, s in enumerate(slots) if s.addr >= 0
        }

    def slot(self, root: int, addr: int, level: int = 1) -> int:
        """Number of the level-`level` slot of hierarchy `root` that maps `addr`."""
        if root not in self.hierarchies:
            raise AddressError(f"no paging hierarchy with root {root:#x}")
        n = self._slot_by.get((root, level, _region_base(addr, level)))
        if n is not None:
            return n
        raise AddressError(
            f"{addr:#x} has no level-{level} entry in the hierarchy rooted at {root:#x}; "
            "name the address when building the layout"
        )

    def domain(self, table: int, index: int) -> tuple[int, ...]:
        return self._domain_at.get((table, index), (0,))

    def initial_memory(self) -> Memory:
        return Memory(self, tuple(d[0] for d in self.domains))


def _region_base(addr: int, level: int) -> int:
    return page_base(addr, PAGE_SIZE << (9 * (level - 1)))


class Memory:
    """The contents of every slot: an immutable tuple with a cached hash."""

    __slots__ = ("_hash", "layout", "values")

    def __init__(self, layout: Layout, values: tuple[int, ...]) -> None:
        self.layout = layout
        self.values = values
        self._hash = hash(values)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Memory) and self.values == other.values

    def __repr__(self) -> str:
        return f"Memory({len(self.values)} slots)"

    def read(self, table: int, index: int) -> int:
        n = self.layout.slot_at.get((table, index))
        return 0 if n is None else self.values[n]

    def reader(self, table: int, index: int) -> tuple[int, ...]:
        """The walk engine's view: the values the slot may hold now (exactly one)."""
        n = self.layout.slot_at.get((table, index))
        return (0,) if n is None else (self.values[n],)

    def write(self, slot: int, value: int) -> Memory:
        if not 0 <= slot < len(self.values):
            raise AddressError(f"no slot {slot} in this layout")
        if value not in self.layout.domains[slot]:
            s = self.layout.slots[slot]
            raise OutsideUniverse(
                f"value {value:#x} for the level-{s.level} entry mapping {s.addr:#x} was not "
                "declared when the layout was built; declare it with LayoutBuilder.allow"
            )
        if self.values[slot] == value:
            return self
        values = list(self.values)
        values[slot] = value
        return Memory(self.layout, tuple(values))


@dataclass
class _Table:
    hierarchy: int
    level: int
    addr: int  # base of the region this table maps
    hpa: int  # where it lives
    entries: dict[int, list[int]] = field(default_factory=dict)  # index -> [initial, allowed...]


class LayoutBuilder:
    """Builds a Layout: allocates table pages in the reserved ranges and records slot domains."""

    def __init__(self) -> None:
        self._hier: dict[int, Hierarchy] = {}
        self._tables: dict[tuple[int, int, int], _Table] = {}  # (root, level, region base)
        self._next_gpa = GUEST_TABLE_GPA_BASE
        self._next_hpa = TABLE_HPA_BASE
        self._named: dict[int, list[int]] = {}  # in naming order (the universe's order)
        self._is_named: dict[int, set[int]] = {}  # the same, for membership in O(1)
        self._backing: dict[int, int] = {}

    # -- hierarchies -----------------------------------------------------------------------
    def ept_root(self) -> int:
        return self._new_root(Format.EPT)

    def npt_root(self) -> int:
        return self._new_root(Format.NPT)

    def linear_root(self) -> int:
        return self._new_root(Format.LINEAR)

    def guest_root(self, stage2: Iterable[int]) -> int:
        """A guest hierarchy whose table pages are mapped in each of the `stage2` hierarchies."""
        stage2 = tuple(stage2)
        for r in stage2:
            if r not in self._hier or self._hier[r].fmt not in (Format.EPT, Format.NPT):
                raise AddressError(f"{r:#x} is not an EPT/NPT root of this layout")
        gpa = self._alloc_guest_table_page(stage2)
        self._hier[gpa] = Hierarchy(Format.GUEST, gpa, stage2)
        self._tables[(gpa, LEVELS, 0)] = _Table(gpa, LEVELS, 0, self._backing[gpa])
        self._named[gpa] = []
        self._is_named[gpa] = set()
        return gpa

    def _new_root(self, fmt: Format) -> int:
        hpa = self._alloc_hpa()
        self._hier[hpa] = Hierarchy(fmt, hpa)
        self._tables[(hpa, LEVELS, 0)] = _Table(hpa, LEVELS, 0, hpa)
        self._named[hpa] = []
        self._is_named[hpa] = set()
        return hpa

    def _alloc_hpa(self) -> int:
        hpa = self._next_hpa
        self._next_hpa += PAGE_SIZE
        return hpa

    def _alloc_guest_table_page(self, stage2: tuple[int, ...]) -> int:
        gpa = self._next_gpa
        self._next_gpa += PAGE_SIZE
        hpa = self._alloc_hpa()
        self._backing[gpa] = hpa
        for s2 in stage2:
            self._set(s2, gpa, 1, self._leaf_value(s2, hpa), name=True)
        return gpa

    def _leaf_value(self, s2_root: int, hpa: int) -> int:
        if self._hier[s2_root].fmt is Format.EPT:
            return make_ept(hpa, E_ALL)
        return make_table_pte(hpa)  # NPT: an IA-32e entry granting every right

    # -- entries -----------------------------------------------------------------------------
    def name(self, root: int, addr: int, *, create: bool = True) -> None:
        """Make `addr` a named address of hierarchy `root` (walked at every fill). With `create`,
        its level-1 entry gets a slot (initially not present) so it can be written later; an
        address inside a large page is named with create=False."""
        if create:
            self._path(root, addr, 1).entries.setdefault(table_index(addr, 1), [0])
        elif root not in self._named:
            raise AddressError(f"no paging hierarchy with root {root:#x}")
        self._add_named(root, addr)

    def map(self, root: int, addr: int, value: int, *, level: int = 1) -> int:
        """Set the initial value of the level-`level` entry mapping `addr`; returns `value`."""
        self._set(root, addr, level, value, name=True)
        return value

    def allow(self, root: int, addr: int, values: Iterable[int], *, level: int = 1) -> None:
        """Declare further values the level-`level` entry mapping `addr` may be given."""
        table = self._path(root, addr, level)
        dom = table.entries.setdefault(table_index(addr, level), [0])
        for v in values:
            if v not in dom:
                dom.append(v)
        if level == 1:
            self._add_named(root, addr)

    def _add_named(self, root: int, addr: int) -> None:
        # a set beside the list: a working set of 2^18 pages took minutes with `in` on the list
        if addr not in self._is_named[root]:
            self._is_named[root].add(addr)
            self._named[root].append(addr)

    def table_pointer(self, root: int, addr: int, level: int) -> int:
        """The value that a level-`level` entry holds to point at the next table for `addr`."""
        table = self._path(root, addr, level - 1)
        h = self._hier[root]
        if h.fmt is Format.GUEST:
            return make_table_pte(_gpa_of_table(table, self._backing))
        if h.fmt is Format.EPT:
            return make_ept(table.hpa, E_ALL, leaf=False)
        return make_table_pte(table.hpa)

    def new_table(self, root: int, level: int) -> int:
        """A spare table page of `root` at `level` (to rewire a non-leaf entry to it).

        Returns its address as the parent entry names it (GPA for guest hierarchies).
        """
        h = self._hier[root]
        if h.fmt is Format.GUEST:
            gpa = self._alloc_guest_table_page(h.stage2)
            hpa = self._backing[gpa]
            key_addr = gpa
        else:
            hpa = self._alloc_hpa()
            key_addr = hpa
        self._tables[(root, level, -key_addr)] = _Table(root, level, -1, hpa)
        return key_addr

    def set_entry(self, table_addr: int, index: int, values: Iterable[int]) -> None:
        """Declare the initial value (first) and allowed values of one entry of a spare table."""
        hpa = self._backing.get(table_addr, table_addr)
        for t in self._tables.values():
            if t.hpa == hpa:
                dom = t.entries.setdefault(index, [])
                for v in values:
                    if v not in dom:
                        dom.append(v)
                return
        raise AddressError(f"no table page at {table_addr:#x}")

    def _set(self, root: int, addr: int, level: int, value: int, *, name: bool) -> None:
        table = self._path(root, addr, level)
        dom = table.entries.setdefault(table_index(addr, level), [])
        if value in dom:
            dom.remove(value)
        dom.insert(0, value)
        leafy = level == 1 or _is_large(self._hier[root].fmt, value)
        if name and leafy:
            self._add_named(root, addr)

    def _path(self, root: int, addr: int, level: int) -> _Table:
        """The table holding the level-`level` entry for `addr`, creating tables on the way."""
        if root not in self._hier:
            raise AddressError(f"no paging hierarchy with root {root:#x}")
        check_page(addr, "address")
        h = self._hier[root]
        table = self._tables[(root, LEVELS, 0)]
        for lvl in range(LEVELS, level, -1):
            nxt_base = _region_base(addr, lvl)
            key = (root, lvl - 1, nxt_base)
            child = self._tables.get(key)
            if child is None:
                if h.fmt is Format.GUEST:
                    gpa = self._alloc_guest_table_page(h.stage2)
                    child = _Table(root, lvl - 1, nxt_base, self._backing[gpa])
                    ptr = make_table_pte(gpa)
                else:
                    child = _Table(root, lvl - 1, nxt_base, self._alloc_hpa())
                    ptr = (
                        make_ept(child.hpa, E_ALL, leaf=False)
                        if h.fmt is Format.EPT
                        else make_table_pte(child.hpa)
                    )
                self._tables[key] = child
                dom = table.entries.setdefault(table_index(addr, lvl), [])
                if ptr not in dom:
                    dom.insert(0, ptr)
            table = child
        return table

    def build(self) -> Layout:
        slots: list[Slot] = []
        domains: list[tuple[int, ...]] = []
        for t in sorted(self._tables.values(), key=lambda t: (t.hpa,)):
            for idx in sorted(t.entries):
                # A slot may be cleared only if 0 was declared (a named address starts with 0).
                dom = t.entries[idx]
                addr = t.addr + (idx << (12 + 9 * (t.level - 1))) if t.addr >= 0 else -1
                slots.append(Slot(t.hpa, idx, t.hierarchy, t.level, addr))
                domains.append(tuple(dom))
        named = {r: tuple(v) for r, v in self._named.items()}
        return Layout(dict(self._hier), slots, domains, named, dict(self._backing))


def _is_large(fmt: Format, value: int) -> bool:
    if fmt is Format.EPT:
        return bool(value & EPT_PS)
    return bool(value & PS)


def _gpa_of_table(table: _Table, backing: dict[int, int]) -> int:
    for gpa, hpa in backing.items():
        if hpa == table.hpa:
            return gpa
    raise AddressError("table page has no guest-physical address")


__all__ = [
    "FRESH_HPA_BASE",
    "Format",
    "Hierarchy",
    "Layout",
    "LayoutBuilder",
    "Memory",
    "Slot",
]
