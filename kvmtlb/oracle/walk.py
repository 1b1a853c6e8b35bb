"""The oracle's cached entries, paging-entry decoders and page walks, written from the manuals.

- Entries (SDM §28.3.1, §4.10.2.2, §4.10.3.1; APM §15.16, §15.25): one record type for every kind,
  with the tags the kind carries and -1 in the others. A translation maps the page
  [base, base + size) to the frame `target`; `span` is the size of the page the walk found (a
  2 MiB page may be cached as 4 KiB pieces, §4.10.2.3). A paging-structure-cache (PSC) entry of
  level L (4 = PML4E) covers the region [base, base + size) of 2^(12 + 9 (L - 1)) bytes and
  names the next table `target`, with the rights of the levels above and including it.
- Decoders: IA-32e entries (§4.5 Tables 4-14..4-20), EPT entries (§28.2.2: bits 2:0 = R/W/X,
  present if any is set, bit 7 = page size; W without R is a misconfiguration, §28.2.3.1), nested
  (NPT) entries (APM §15.25.5: IA-32e format, walked as user accesses).
- Walks: every path a lookup may take, each step resolved by memory or by any usable held entry
  (§4.10.2.3: a cached translation may be used instead of memory, and may be stale; §4.10.3.2:
  any paging-structure cache may be used or skipped), with the entries the path builds. A 2-D walk
  translates every guest-physical reference (the guest root, each guest table, the leaf) through
  stage 2 (§28.2.1, APM §15.25.5) and may use stale guest-physical entries for it.

Rights are ints with the same meaning as the manuals' bits, restated here: guest W, U, X (X =
XD clear) and stage-2 R, W, X.

Abstracts away what the model abstracts away (hardware-model.md): 1 GiB pages, 5-level paging,
accessed/dirty flags, memory types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

# -- the manuals' bits -------------------------------------------------------------------------
P, RW, US, PS, G = 1, 2, 4, 0x80, 0x100
XD = 1 << 63
ADDR = ((1 << 52) - 1) & ~0xFFF  # bits 51:12
EPT_READ, EPT_WRITE, EPT_EXEC = 1, 2, 4

GW, GU, GX = 1, 2, 4  # guest rights
SR, SW, SX = 1, 2, 4  # stage-2 rights
ALL = 7
# The dirty flag of an EPT leaf (bit 9, §28.2.4), and the bit a translation keeps it in: a TLB
# entry holds the leaf's dirty flag (§4.10.2.2). Not a right; only writes look at it.
EPT_DIRTY = 1 << 9
SD = 8

KIB4 = 0x1000
MIB2 = 0x20_0000


class Entry(NamedTuple):
    """A cached entry. `kind`: linear, combined, gphys, asid, nested (translations) and the same
    names with '-psc' (paging-structure caches)."""

    kind: str
    vpid: int = -1
    pcid: int = -1
    ep4ta: int = -1
    asid: int = -1
    level: int = 0
    base: int = 0
    size: int = 0
    span: int = 0
    target: int = 0
    rights: int = 0
    erights: int = ALL
    glob: bool = False
    gpa: int = -1

    @property
    def psc(self) -> bool:
        return self.kind.endswith("-psc")

    def covers(self, addr: int) -> bool:
        """A translation maps `addr`; a PSC entry lies on the walk path of `addr`."""
        return self.base <= addr < self.base + self.size

    def covers_whole_page(self, addr: int) -> bool:
        """A translation is a piece of the page (of size `span`) that maps `addr`."""
        span = max(self.span, self.size)
        return addr - addr % span <= self.base < addr - addr % span + span


def region_size(level: int) -> int:
    return 1 << (12 + 9 * (level - 1))


def index(addr: int, level: int) -> int:
    return (addr >> (12 + 9 * (level - 1))) & 511


def align(addr: int, size: int) -> int:
    return addr - addr % size


def guest_rights(value: int) -> int:
    return (GW if value & RW else 0) | (GU if value & US else 0) | (0 if value & XD else GX)


class Stage2:
    """Decoders of one stage-2 format."""

    def __init__(self, ept: bool) -> None:
        self.ept = ept

    def present(self, value: int) -> bool:
        return bool(value & 7) if self.ept else bool(value & P)

    def misconfigured(self, value: int) -> bool:
        return self.ept and bool(value & EPT_WRITE) and not value & EPT_READ

    def rights(self, value: int) -> int:
        if self.ept:
            return value & 7
        if not value & US:  # nested walks are user accesses (APM §15.25.5)
            return 0
        return SR | (SW if value & RW else 0) | (0 if value & XD else SX)


class View(NamedTuple):
    """What a processor's walks depend on now. `make` builds the entries of its kinds."""

    kind: str  # kind of its translations: linear, combined, asid
    s2kind: str  # gphys, nested, or "" without stage 2
    vpid: int
    pcid: int
    ep4ta: int
    asid: int
    root: int  # CR3's address (a GPA under stage 2 or for a native processor)
    s2root: int  # -1 without stage 2
    ept: bool
    pg: bool
    pge: bool
    native: bool  # physical addresses are guest-physical; tables found through `backing`


class Result(NamedTuple):
    """One way a lookup may end: ("ok", gpa, frame, rights, erights, glob), ("notpresent",),
    ("s2fault", gpa, final, misconfig)."""

    what: str
    gpa: int = -1
    frame: int = -1
    rights: int = 0
    erights: int = ALL
    glob: bool = False
    final: bool = False
    misconfig: bool = False


Read = Callable[[int, int], Iterable[int]]


class Walk:
    """Every path of one processor's lookups, over memory `read` and usable `held` entries."""

    def __init__(
        self,
        view: View,
        read: Read,
        held: Iterable[Entry],
        backing: dict[int, int],
        merge: bool = True,
    ) -> None:
        self.v = view
        self.read = read
        self.held = list(held)
        self.backing = backing
        self.s2 = Stage2(view.ept)
        # With `merge`, paths that end in the same result are given as one path that built the
        # union of what they built: exact for the union of all paths' entries and the set of
        # results (the maximal run, outcomes), and keeps the number of paths small. Single runs
        # walk with merge=False.
        self.merge = merge
        self._gpa: dict[int, list[tuple[Result, tuple[Entry, ...]]]] = {}
        self._cont: dict[tuple[int, int, int, int], list[tuple[Result, tuple[Entry, ...]]]] = {}

    def _merged(
        self, paths: Iterable[tuple[Result, tuple[Entry, ...]]]
    ) -> list[tuple[Result, tuple[Entry, ...]]]:
        if not self.merge:
            return list(paths)
        d: dict[Result, dict[Entry, None]] = {}
        for r, b in paths:
            d.setdefault(r, {}).update(dict.fromkeys(b))
        return [(r, tuple(b)) for r, b in d.items()]

    def _entry(self, kind: str, **kw: int | bool) -> Entry:
        v = self.v
        tags: dict[str, int] = {}
        if kind.startswith(("linear", "combined")):
            tags["vpid"] = v.vpid
        if kind.startswith(("linear", "combined", "asid")):
            tags["pcid"] = v.pcid
        if kind.startswith(("combined", "gphys")):
            tags["ep4ta"] = v.ep4ta
        if kind.startswith(("asid", "nested")):
            tags["asid"] = v.asid
        return Entry(kind, **tags, **kw)  # type: ignore[arg-type]

    # -- stage 2 ------------------------------------------------------------------------------
    def gpa_paths(self, gpa: int) -> Iterator[tuple[Result, tuple[Entry, ...]]]:
        """Paths of a guest-physical reference: ("ok", frame, erights, size) as Result fields
        gpa=size. Held translations first, then memory from the root or a held PSC entry."""
        hit = self._gpa.get(gpa)
        if hit is None:
            hit = self._gpa[gpa] = self._merged(self._gpa_paths(gpa))
        return iter(hit)

    def _gpa_paths(self, gpa: int) -> Iterator[tuple[Result, tuple[Entry, ...]]]:
        kind = self.v.s2kind
        for e in self.held:
            if e.kind == kind and e.covers(gpa):
                yield Result("ok", e.size, e.target + gpa - e.base, 0, e.rights), ()
        yield from self._s2(gpa, 4, self.v.s2root, ALL, ())
        for e in self.held:
            if e.kind == kind + "-psc" and e.covers(gpa):
                yield from self._s2(gpa, e.level - 1, e.target, e.rights, ())

    def _s2(
        self, gpa: int, level: int, table: int, rights: int, built: tuple[Entry, ...]
    ) -> Iterator[tuple[Result, tuple[Entry, ...]]]:
        s2 = self.s2
        for value in self.read(table, index(gpa, level)):
            if not s2.present(value):
                yield Result("s2fault"), built
                continue
            if s2.misconfigured(value):
                yield Result("s2fault", misconfig=True), built
                continue
            r = rights & s2.rights(value)
            if level == 3 and value & PS:
                raise ValueError("1 GiB stage-2 pages are outside the reference")
            if level == 1 or (level == 2 and value & PS):
                if s2.ept and value & EPT_DIRTY:
                    r |= SD
                size = region_size(level)
                base = value & ADDR & ~(size - 1)
                frame = base + gpa % size
                made = [
                    self._entry(
                        self.v.s2kind, base=align(gpa, size), size=size, target=base, rights=r
                    )
                ]
                if size != KIB4:
                    made.append(
                        self._entry(
                            self.v.s2kind,
                            base=align(gpa, KIB4),
                            size=KIB4,
                            target=align(frame, KIB4),
                            rights=r,
                        )
                    )
                yield Result("ok", size, frame, 0, r), (*built, *made)
                continue
            nxt = value & ADDR
            psc = self._entry(
                self.v.s2kind + "-psc",
                level=level,
                base=align(gpa, region_size(level)),
                size=region_size(level),
                target=nxt,
                rights=r,
            )
            yield from self._s2(gpa, level - 1, nxt, r, (*built, psc))

    # -- first stage --------------------------------------------------------------------------
    def paths(self, gva: int) -> Iterator[tuple[Result, tuple[Entry, ...]]]:
        v = self.v
        for e in self.held:
            if e.kind == v.kind and e.covers(gva):
                off = gva - e.base
                gpa = e.gpa + off if e.gpa >= 0 else (e.target + off if v.native else -1)
                yield Result("ok", gpa, e.target + off, e.rights, e.erights, e.glob), ()
        stage2 = v.s2root >= 0
        if not v.pg:  # linear = (guest-)physical
            if not stage2:
                yield Result("ok", gva if v.native else -1, gva, ALL, ALL), ()
                return
            for r, built in self.gpa_paths(gva):
                if r.what != "ok":
                    yield Result("s2fault", gva, final=True, misconfig=r.misconfig), built
                    continue
                made = self._entry(
                    v.kind,
                    base=align(gva, KIB4),
                    size=KIB4,
                    span=KIB4,
                    target=align(r.frame, KIB4),
                    rights=ALL,
                    erights=r.erights,
                    glob=False,
                    gpa=align(gva, KIB4),
                )
                yield Result("ok", gva, r.frame, ALL, r.erights), (*built, made)
            return
        root = align(v.root, KIB4)
        if stage2:
            for r, built in self.gpa_paths(root):
                if r.what != "ok" or not r.erights & SR:
                    yield Result("s2fault", root, misconfig=r.misconfig), built
                else:
                    yield from self._walk(gva, 4, r.frame, ALL, built)
        else:
            yield from self._walk(gva, 4, self._table(root), ALL, ())
        for e in self.held:
            if e.kind == v.kind + "-psc" and e.covers(gva):
                start = e.target if stage2 else self._table(e.target)
                yield from self._walk(gva, e.level - 1, start, e.rights, ())

    def _table(self, addr: int) -> int:
        return self.backing.get(addr, -1) if self.v.native else addr

    def _walk(
        self, gva: int, level: int, table: int, rights: int, built: tuple[Entry, ...]
    ) -> Iterator[tuple[Result, tuple[Entry, ...]]]:
        """The paths from the level-`level` table at `table`, after a prefix that built
        `built` (the continuation is the same whatever the prefix: it is computed once)."""
        key = (gva, level, table, rights)
        cont = self._cont.get(key)
        if cont is None:
            cont = self._cont[key] = self._merged(self._walk_from(gva, level, table, rights, ()))
        for r, b in cont:
            yield r, (*built, *b)

    def _walk_from(
        self, gva: int, level: int, table: int, rights: int, built: tuple[Entry, ...]
    ) -> Iterator[tuple[Result, tuple[Entry, ...]]]:
        v = self.v
        for value in self.read(table, index(gva, level)):
            if not value & P:
                yield Result("notpresent"), built
                continue
            r = rights & guest_rights(value)
            if level == 3 and value & PS:
                raise ValueError("1 GiB pages are outside the reference")
            if level == 1 or (level == 2 and value & PS):
                yield from self._leaf(gva, value, r, region_size(level), built)
                continue
            nxt = value & ADDR
            reg = dict(level=level, base=align(gva, region_size(level)), size=region_size(level))
            if v.s2root < 0:
                psc = self._entry(v.kind + "-psc", target=nxt, rights=r, **reg)
                yield from self._walk(gva, level - 1, self._table(nxt), r, (*built, psc))
                continue
            for s, sb in self.gpa_paths(nxt):
                if s.what != "ok" or not s.erights & SR:
                    yield Result("s2fault", nxt, misconfig=s.misconfig), (*built, *sb)
                    continue
                psc = self._entry(v.kind + "-psc", target=s.frame, rights=r, **reg)
                yield from self._walk(gva, level - 1, s.frame, r, (*built, *sb, psc))

    def _leaf(
        self, gva: int, value: int, rights: int, size: int, built: tuple[Entry, ...]
    ) -> Iterator[tuple[Result, tuple[Entry, ...]]]:
        v = self.v
        glob = bool(value & G) and v.pge  # §4.10.2.4: global only with CR4.PGE = 1
        base = value & ADDR & ~(size - 1)
        off = gva % size
        if v.s2root < 0:
            gp = v.native
            made = [
                self._entry(
                    v.kind,
                    base=align(gva, size),
                    size=size,
                    span=size,
                    target=base,
                    rights=rights,
                    glob=glob,
                )
            ]
            if size != KIB4:
                made.append(
                    self._entry(
                        v.kind,
                        base=align(gva, KIB4),
                        size=KIB4,
                        span=size,
                        target=align(base + off, KIB4),
                        rights=rights,
                        glob=glob,
                    )
                )
            if v.kind == "asid":  # AMD records carry the (absent) stage-2 layer
                made = [e._replace(erights=ALL, gpa=-1) for e in made]
            yield (
                Result("ok", base + off if gp else -1, base + off, rights, ALL, glob),
                (*built, *made),
            )
            return
        leaf = base + off
        for s, sb in self.gpa_paths(leaf):
            if s.what != "ok":
                yield Result("s2fault", leaf, final=True, misconfig=s.misconfig), (*built, *sb)
                continue
            tsize = min(size, s.gpa)  # the smaller page size of the two layers (APM §15.25.9)
            toff = gva % tsize
            made = [
                self._entry(
                    v.kind,
                    base=align(gva, tsize),
                    size=tsize,
                    span=size,
                    target=s.frame - toff,
                    rights=rights,
                    erights=s.erights,
                    glob=glob,
                    gpa=leaf - toff,
                )
            ]
            if tsize != KIB4:
                made.append(
                    self._entry(
                        v.kind,
                        base=align(gva, KIB4),
                        size=KIB4,
                        span=size,
                        target=align(s.frame, KIB4),
                        rights=rights,
                        erights=s.erights,
                        glob=glob,
                        gpa=align(leaf, KIB4),
                    )
                )
            yield Result("ok", leaf, s.frame, rights, s.erights, glob), (*built, *sb, *made)
