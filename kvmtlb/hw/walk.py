"""Page walks through caches: every translation a processor may produce, and what it may fill.

Models the lookup rule of design.md ("Hardware semantics"), for the 1-D walk (EPT/NPT not in use)
and the 2-D walk (guest tables, each of whose guest-physical references is translated through
EPT/NPT: SDM §28.2.1, APM §15.25.5, amd.npt.walk). A 2-D translation holds both layers' rights
(amd.npt.rights) and the smaller of the two page sizes (amd.npt.size). The possible results of
translating an address are the union of

- every usable held translation for it (SDM §4.10.2.3: a cached entry may be used instead of
  memory, and may be stale), and
- every walk in which each step is resolved by any usable source: the root or a usable held
  paging-structure-cache entry (§4.10.3.2: any cache may be used or skipped) followed by the
  current memory below it; and, for every guest-physical reference (the guest root, each guest
  table, the leaf), a usable held guest-physical translation, a usable guest-physical
  paging-structure-cache entry followed by current EPT, or the current EPT.

Stale guest-physical entries therefore take part in guest walks (intel.stale.use: a cached entry
may be used after the structure it came from changed). Every entry a walk builds on the
way is recorded in `fills` (intel.create.speculative: processors may fill at any time for any
address whose walk succeeds, §4.10.2.3, §4.10.3.1), so that the MAY-set can grow by the closure
of lookup at every step.

Memory is read through a `reader(table, index)` that returns the values a slot may hold: exactly
one for concrete memory, the slot's whole domain when a universe is enumerated (universe.py). The
same code therefore computes the possible results now and every entry a scenario can ever make.

Abstracts away: 1 GiB pages, accessed/dirty-flag updates, memory types. A 2 MiB page may also be
cached as 4 KiB pieces (intel.split-pages, §4.10.2.3): both forms are filled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from kvmtlb.hw.addr import LARGE_PAGE_SIZE, LEVELS, PAGE_SIZE, page_base, region, table_index
from kvmtlb.hw.errors import ModelError
from kvmtlb.hw.layout import Format
from kvmtlb.hw.mappings import Entry
from kvmtlb.hw.paging import (
    E_ALL,
    E_D,
    E_R,
    E_W,
    E_X,
    EPT_D,
    EPT_PS,
    G_ALL,
    G_U,
    G_W,
    G_X,
    PS,
    RW,
    US,
    XD,
    G,
    ept_misconfigured,
    ept_present,
    ept_rights,
    pte_addr,
    pte_present,
    pte_rights,
)
from kvmtlb.hw.tags import Tags

Reader = Callable[[int, int], tuple[int, ...]]
Held = Callable[[type, tuple[int, int]], Iterable[Entry]]


class WalkContext(NamedTuple):
    """Everything a walk depends on besides memory and held entries."""

    tags: Tags
    root: int  # guest CR3 root (a GPA when stage 2 is on, else physical)
    s2_root: int  # EPT/NPT root HPA, or -1 when stage 2 is not in use
    s2_fmt: Format  # Format.EPT or Format.NPT (ignored when s2_root == -1)
    pg: bool  # CR0.PG
    pge: bool  # CR4.PGE: whether G=1 leaves make global translations
    guest_physical: bool = False  # a native reference: "physical" = GPA, tables via static backing


class Translated(NamedTuple):
    """One possible translation of an address."""

    gpa: int  # guest-physical page (-1 when no stage 2 and not a native reference)
    frame: int  # physical 4 KiB frame the address maps to
    rights: int  # guest-layer rights (G_W | G_U | G_X)
    erights: int  # stage-2 rights (E_R | E_W | E_X); E_ALL without stage 2
    glob: bool


class NotPresent(NamedTuple):
    """A guest (first-stage) walk reached a non-present entry: a page fault."""

    level: int


class Stage2Fault(NamedTuple):
    """A stage-2 walk failed (EPT violation / #NPF) for `gpa`; `final` if it was the leaf GPA;
    `misconfig` for an EPT misconfiguration (write without read, SDM §28.2.3.1)."""

    gpa: int
    final: bool
    misconfig: bool = False


WalkResult = Translated | NotPresent | Stage2Fault
_S2 = tuple[int, int, int]  # (host frame of the 4 KiB page, stage-2 rights, stage-2 page size)
S2Result = list[_S2 | Stage2Fault]
# Memoized stage-2 translation of a GPA: its results and its fills as universe bits, or None.
S2Oracle = Callable[[int], tuple[S2Result, int] | None]


class Walker:
    """The walks of one processor at one moment (one context, one memory, one held set)."""

    def __init__(
        self,
        ctx: WalkContext,
        reader: Reader,
        held: Held | None = None,
        backing: dict[int, int] | None = None,
        s2_oracle: S2Oracle | None = None,
    ) -> None:
        self.ctx = ctx
        self.reader = reader
        self.held: Held = held if held is not None else _nothing_held
        self.backing = backing or {}
        self.fills: set[Entry] = set()
        # With an oracle, stage-2 translations come memoized (results, fill bits) from the
        # universe; their fills are accumulated as bits here instead of entries.
        self.s2_oracle = s2_oracle
        self.fill_bits = 0
        self._s2_cache: dict[int, S2Result] = {}
        self._walk_cache: dict[tuple[int, int, int, int], list[WalkResult]] = {}
        kinds = ctx.tags.kinds
        self._tr_kind, self._psc_kind, self._s2_tr_kind, self._s2_psc_kind = kinds
        ept = ctx.s2_fmt is Format.EPT
        self._ept = ept
        self._s2_present = ept_present if ept else pte_present
        self._s2_rights = ept_rights if ept else _npt_rights
        self._s2_large = EPT_PS if ept else PS

    # -- stage 2 ------------------------------------------------------------------------------
    def translate_gpa(self, gpa: int) -> S2Result:
        """Every possible stage-2 translation of the 4 KiB guest-physical page `gpa`."""
        hit = self._s2_cache.get(gpa)
        if hit is not None:
            return hit
        if self.s2_oracle is not None:
            known = self.s2_oracle(gpa)
            if known is not None:
                results, bits = known
                self.fill_bits |= bits
                self._s2_cache[gpa] = results
                return results
        out: list[_S2 | Stage2Fault] = []
        assert self._s2_tr_kind is not None and self._s2_psc_kind is not None
        for size in (PAGE_SIZE, LARGE_PAGE_SIZE):
            for e in self.held(self._s2_tr_kind, (page_base(gpa, size), size)):
                out.append((e.frame + (gpa & (size - 1)), e.rights, size))  # type: ignore[union-attr]
        self._s2_walk(gpa, LEVELS, self.ctx.s2_root, E_ALL, out)
        for level in (4, 3, 2):
            for e in self.held(self._s2_psc_kind, (level, region(gpa, level))):
                self._s2_walk(gpa, level - 1, e.table, e.rights, out)  # type: ignore[union-attr]
        result = list(dict.fromkeys(out))
        self._s2_cache[gpa] = result
        return result

    def _s2_walk(
        self, gpa: int, level: int, table: int, rights: int, out: list[_S2 | Stage2Fault]
    ) -> None:
        tags = self.ctx.tags
        for value in self.reader(table, table_index(gpa, level)):
            if not self._s2_present(value):
                out.append(Stage2Fault(gpa, False))
                continue
            if self._ept and ept_misconfigured(value):
                out.append(Stage2Fault(gpa, False, True))  # intel.ept-misconfig: never cached
                continue
            r = rights & self._s2_rights(value)
            large = level == 2 and bool(value & self._s2_large)
            if level == 1 or large:
                if self._ept and value & EPT_D:
                    r |= E_D  # the leaf's dirty flag, cached with the translation (hw/dirty.py)
                size = PAGE_SIZE if level == 1 else LARGE_PAGE_SIZE
                base = pte_addr(value) & ~(size - 1)
                self.fills.add(tags.s2_translation(page_base(gpa, size), size, base, r))
                frame = base + (gpa & (size - 1))
                if large:
                    self.fills.add(tags.s2_translation(gpa, PAGE_SIZE, frame, r))
                out.append((frame, r, size))
            elif level == 3 and value & self._s2_large:
                raise ModelError("1 GiB stage-2 pages are not modelled")
            else:
                nxt = pte_addr(value)
                self.fills.add(tags.s2_psc(level, region(gpa, level), nxt, r))
                self._s2_walk(gpa, level - 1, nxt, r, out)

    # -- first stage -----------------------------------------------------------------------------
    def translate(self, gva: int) -> list[WalkResult]:
        """Every possible translation of the 4 KiB linear page `gva`, and the faults it may take."""
        ctx = self.ctx
        out: list[WalkResult] = []
        for size in (PAGE_SIZE, LARGE_PAGE_SIZE):
            for e in self.held(self._tr_kind, (page_base(gva, size), size)):
                out.append(self._held_translated(e, gva & (size - 1)))
        stage2 = ctx.s2_root >= 0
        if not ctx.pg:
            self._translate_unpaged(gva, stage2, out)
            return list(dict.fromkeys(out))
        if stage2:
            for res in self.translate_gpa(page_base(ctx.root)):
                if isinstance(res, Stage2Fault) or not res[1] & E_R:
                    mis = isinstance(res, Stage2Fault) and res.misconfig
                    out.append(Stage2Fault(page_base(ctx.root), False, mis))
                else:
                    self._walk(gva, LEVELS, res[0], G_ALL, out)
        else:
            self._walk(gva, LEVELS, self._table_hpa(page_base(ctx.root)), G_ALL, out)
        for level in (4, 3, 2):
            for e in self.held(self._psc_kind, (level, region(gva, level))):
                t = e.table if stage2 else self._table_hpa(e.table)  # type: ignore[union-attr]
                self._walk(gva, level - 1, t, e.rights, out)
        return list(dict.fromkeys(out))

    def _held_translated(self, e: Entry, off: int) -> Translated:
        frame: int = e.frame + off  # type: ignore[union-attr]
        gpa: int = getattr(e, "gpa", -1)
        if gpa >= 0:
            gpa += off
        elif self.ctx.guest_physical:
            gpa = frame
        erights: int = getattr(e, "erights", E_ALL)
        return Translated(gpa, frame, e.rights, erights, e.glob)  # type: ignore[union-attr]

    def _translate_unpaged(self, gva: int, stage2: bool, out: list[WalkResult]) -> None:
        """CR0.PG = 0: linear = (guest-)physical. With EPT, combined translations may be cached
        (no combined PSC entries, SDM §28.3.2); without it nothing is cached."""
        if not stage2:
            out.append(Translated(gva if self.ctx.guest_physical else -1, gva, G_ALL, E_ALL, False))
            return
        tags = self.ctx.tags
        for res in self.translate_gpa(gva):
            if isinstance(res, Stage2Fault):
                out.append(Stage2Fault(gva, True, res.misconfig))
                continue
            frame, er, _ = res
            self.fills.add(
                tags.translation(gva, PAGE_SIZE, PAGE_SIZE, frame, G_ALL, er, False, gva)
            )
            out.append(Translated(gva, frame, G_ALL, er, False))

    def _table_hpa(self, phys: int) -> int:
        """Where a first-stage table at physical address `phys` lives (1-D walks)."""
        if self.ctx.guest_physical:
            hpa = self.backing.get(phys)
            if hpa is None:
                raise ModelError(f"guest table {phys:#x} has no backing page")
            return hpa
        return phys

    def _walk(self, gva: int, level: int, table: int, rights: int, out: list[WalkResult]) -> None:
        """Continue a walk of `gva` at `level` in the table at host address `table`. A walk that
        resumes from a held paging-structure-cache entry usually meets a sub-walk already done
        (same level, table and rights): its results are reused."""
        key = (gva, level, table, rights)
        done = self._walk_cache.get(key)
        if done is None:
            done = []
            self._walk_uncached(gva, level, table, rights, done)
            self._walk_cache[key] = done
        out.extend(done)

    def _walk_uncached(
        self, gva: int, level: int, table: int, rights: int, out: list[WalkResult]
    ) -> None:
        ctx = self.ctx
        tags = ctx.tags
        stage2 = ctx.s2_root >= 0
        for value in self.reader(table, table_index(gva, level)):
            if not pte_present(value):
                out.append(NotPresent(level))  # intel.create.present: nothing is cached
                continue
            r = rights & pte_rights(value)  # intel.tlb.contents: R/W, U/S ANDed, XD ORed
            large = level == 2 and bool(value & PS)
            if level == 3 and value & PS:
                raise ModelError("1 GiB pages are not modelled")
            if level == 1 or large:
                self._leaf(gva, value, r, PAGE_SIZE if level == 1 else LARGE_PAGE_SIZE, out)
                continue
            nxt = pte_addr(value)
            # intel.psc.contents: the region's next-table address with the rights so far.
            psc_region = region(gva, level)
            if not stage2:
                self.fills.add(tags.psc(level, psc_region, nxt, r))
                self._walk(gva, level - 1, self._table_hpa(nxt), r, out)
                continue
            for res in self.translate_gpa(nxt):
                if isinstance(res, Stage2Fault) or not res[1] & E_R:
                    mis = isinstance(res, Stage2Fault) and res.misconfig
                    out.append(Stage2Fault(nxt, False, mis))
                    continue
                self.fills.add(tags.psc(level, psc_region, res[0], r))
                self._walk(gva, level - 1, res[0], r, out)

    def _leaf(self, gva: int, value: int, rights: int, size: int, out: list[WalkResult]) -> None:
        """A leaf of size `size` maps `gva`: fill its translation (and, for a large page, the
        4 KiB piece a processor may cache instead: intel.split-pages; `span` records `size`)."""
        ctx = self.ctx
        tags = ctx.tags
        glob = bool(value & G) and ctx.pge  # intel.create.global
        base = pte_addr(value) & ~(size - 1)
        off = gva & (size - 1)
        if ctx.s2_root < 0:
            gp = ctx.guest_physical
            self.fills.add(
                tags.translation(
                    page_base(gva, size), size, size, base, rights, E_ALL, glob, base if gp else -1
                )
            )
            if size != PAGE_SIZE:
                piece = base + off
                self.fills.add(
                    tags.translation(
                        gva, PAGE_SIZE, size, piece, rights, E_ALL, glob, piece if gp else -1
                    )
                )
            out.append(Translated(base + off if gp else -1, base + off, rights, E_ALL, glob))
            return
        leaf_gpa = base + off
        for res in self.translate_gpa(leaf_gpa):
            if isinstance(res, Stage2Fault):
                out.append(Stage2Fault(leaf_gpa, True, res.misconfig))
                continue
            frame, er, s2size = res
            tsize = min(size, s2size)
            toff = gva & (tsize - 1)
            self.fills.add(
                tags.translation(
                    page_base(gva, tsize),
                    tsize,
                    size,
                    frame - toff,
                    rights,
                    er,
                    glob,
                    leaf_gpa - toff,
                )
            )
            if tsize != PAGE_SIZE:
                self.fills.add(
                    tags.translation(gva, PAGE_SIZE, size, frame, rights, er, glob, leaf_gpa)
                )
            out.append(Translated(leaf_gpa, frame, rights, er, glob))


def _nothing_held(kind: type, key: tuple[int, int]) -> Iterable[Entry]:
    return ()


def _npt_rights(value: int) -> int:
    """NPT entries are IA-32e entries (APM §15.25.5): present grants read, R/W write, no XD
    execute; nested accesses are user accesses, so an entry without U/S grants nothing."""
    if not pte_present(value) or not value & US:
        return 0
    r = E_R
    if value & RW:
        r |= E_W
    if not value & XD:
        r |= E_X
    return r


# -- access checks ------------------------------------------------------------------------------
READ, WRITE, EXEC = "read", "write", "exec"
ACCESS_KINDS = (READ, WRITE, EXEC)


def guest_denies(
    t: Translated, access: str, *, smep: bool = False, smap: bool = False, wp: bool = True
) -> bool:
    """Whether guest paging denies `access` (CPL 0, NXE = 1, RFLAGS.AC = 0; SDM §4.6):
    SMEP forbids supervisor fetches from user pages, SMAP supervisor data accesses to them
    (§4.6.1), and a supervisor write to a read-only page is denied only with CR0.WP = 1
    (§4.6.1: with WP = 0 it may write any page its data accesses may read). The check is made
    when the access is, on the rights the TLB entry holds (§4.10.2.2), so a CR0.WP change needs
    no invalidation. Protection keys are not modelled: PKRU is taken as 0, which denies
    nothing."""
    user = bool(t.rights & G_U)
    if smap and user and access != EXEC:
        return True
    if access == WRITE:
        return wp and not t.rights & G_W
    if access == EXEC:
        return not t.rights & G_X or (smep and user)
    return False


def stage2_denies(t: Translated, access: str) -> bool:
    need = {READ: E_R, WRITE: E_W, EXEC: E_X}[access]
    return not t.erights & need


__all__ = [
    "ACCESS_KINDS",
    "EXEC",
    "READ",
    "WRITE",
    "NotPresent",
    "Stage2Fault",
    "Translated",
    "WalkContext",
    "WalkResult",
    "Walker",
    "guest_denies",
    "stage2_denies",
]
