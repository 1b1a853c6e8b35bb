"""Single-path page walks through a concrete TLB, counting the memory references they make.

Models what one processor does on a TLB miss for a guest access under EPT or NPT (SDM §4.10.3.2,
§28.2.1; APM §15.25.5): after the translation lookup misses, it looks up the paging-structure
caches from the lowest level up (PDE cache, then PDPTE cache, then PML4 cache), walks the rest of
the guest tables from the deepest hit (or from CR3), and translates every guest-physical address
the walk uses (the guest root, each guest table, the leaf) the same way, through the guest-physical
(AMD: nested) TLB, its paging-structure caches and the EPT (NPT) tables. Each paging-structure
entry read from memory is one memory reference. With nothing cached, a 4 KiB translation reads 4
guest entries plus 4 EPT entries for each of its 5 guest-physical addresses: `MAX_REFS_2D` = 24.

Every entry the walk builds is made by the context's `Tags` constructors (kvmtlb.hw.tags), as in
hw/walk.py and hw/concrete.py, with the same contents (rights ANDed over the levels, the global bit
from the leaf and CR4.PGE, the smaller of the two page sizes), and cached in the pCPU's TLB.

With EPT/NPT off (shadow paging, kvmtlb/kvm/shadow.py) the processor walks KVM's shadow tables,
which sit in host memory: a 1-D walk (`Walker.miss_flat`) from the hardware CR3 (the shadow root)
through the linear paging-structure caches, one reference per level, 4 with nothing cached; it
fills linear translations tagged VPID and PCID on Intel, ASID and PCID on AMD (SDM §4.10.2,
§28.3.1; APM §15.16).

Abstracts away: the walker's accessed/dirty-flag writes, walks in parallel, and 1 GiB pages (not
modelled in kvmtlb). A 2 MiB page is cached as one 2 MiB entry, never as the 4 KiB pieces
intel.split-pages allows.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kvmtlb.cost.tlb import ADDR_MASK, KIND_NAMES, KindCache, Tlb, translation_key
from kvmtlb.hw.addr import (
    ENTRIES_PER_TABLE,
    LARGE_PAGE_SIZE,
    LEVELS,
    PAGE_SIZE,
    PHYS_ADDR_MASK,
    page_base,
)
from kvmtlb.hw.errors import ModelError
from kvmtlb.hw.layout import Format
from kvmtlb.hw.paging import (
    E_ALL,
    E_R,
    EPT_PS,
    EPT_R,
    EPT_W,
    G_ALL,
    G_U,
    G_W,
    G_X,
    PS,
    G,
    P,
)
from kvmtlb.hw.walk import NotPresent, Stage2Fault, WalkContext, _npt_rights

MAX_REFS_2D = LEVELS + (LEVELS + 1) * LEVELS  # guest entries + EPT entries of 5 GPAs = 24


# Address arithmetic of the 4-level geometry (kvmtlb.hw.addr), inlined on the hot path.
_SHIFT = (0, 12, 21, 30, 39)  # level -> level_shift(level)
_INDEX = ENTRIES_PER_TABLE - 1
_PAGE = ~(PAGE_SIZE - 1)
_LARGE_OFF = LARGE_PAGE_SIZE - 1


class Context:
    """What a pCPU's walks need about its current state, with its probe keys precomputed.

    The probe keys are the keys of entries built by the context's own `Tags` constructors, so an
    entry is found exactly when `Tags.usable` accepts it (tlb.py)."""

    __slots__ = (
        "ctx",
        "ept",
        "flat",
        "pge",
        "psc",
        "psc_base",
        "psc_gid",
        "root",
        "s2_root",
        "s2psc",
        "s2psc_base",
        "s2psc_gid",
        "s2tr",
        "s2tr_base",
        "s2tr_gid",
        "tags",
        "tlb",
        "tr",
        "tr_base",
        "tr_gbase",
        "tr_ggid",
        "tr_gid",
    )

    def __init__(self, ctx: WalkContext, tlb: Tlb) -> None:
        tags = ctx.tags
        tr_kind, psc_kind, s2tr_kind, s2psc_kind = tags.kinds
        if not ctx.pg:
            raise ModelError("the cost model runs guest accesses with paging on")
        self.flat = s2tr_kind is None or s2psc_kind is None or ctx.s2_root < 0
        keys = tlb.keys
        self.ctx = ctx
        self.tags: Any = tags
        self.tlb = tlb
        self.tr: KindCache = tlb.cache(tr_kind)
        self.psc: KindCache = tlb.cache(psc_kind)
        local = tags.translation(0, PAGE_SIZE, PAGE_SIZE, 0, 0, 0, False, 0)
        glob = tags.translation(0, PAGE_SIZE, PAGE_SIZE, 0, 0, 0, True, 0)
        psc = tags.psc(LEVELS, 0, 0, 0)
        self.tr_base, self.tr_gid = keys.base(local), keys.group(local)
        self.tr_gbase, self.tr_ggid = keys.base(glob), keys.group(glob)
        self.psc_base, self.psc_gid = keys.base(psc), keys.group(psc)
        if self.flat:  # shadow paging: no second stage
            self.s2tr = self.s2psc = self.tr
            self.s2tr_base = self.s2tr_gid = self.s2psc_base = self.s2psc_gid = -1
        else:
            assert s2tr_kind is not None and s2psc_kind is not None
            self.s2tr = tlb.cache(s2tr_kind)
            self.s2psc = tlb.cache(s2psc_kind)
            s2tr = tags.s2_translation(0, PAGE_SIZE, 0, 0)
            s2psc = tags.s2_psc(LEVELS, 0, 0, 0)
            self.s2tr_base, self.s2tr_gid = keys.base(s2tr), keys.group(s2tr)
            self.s2psc_base, self.s2psc_gid = keys.base(s2psc), keys.group(s2psc)
        self.root = page_base(ctx.root)
        self.s2_root = ctx.s2_root
        self.pge = ctx.pge
        self.ept = ctx.s2_fmt is Format.EPT

    def lookup(self, gva: int) -> Any:
        """The usable translation of linear page `gva`, or None (touches it: most recently used).
        4 KiB then 2 MiB, non-global then global (a global entry is usable under any PCID)."""
        kc = self.tr
        entries = kc.entries
        page = gva & ADDR_MASK
        keys = [self.tr_base | page]
        if kc.n_global:
            keys.append(self.tr_gbase | page)
        if kc.large:
            large = (page & ~_LARGE_OFF) | 1
            keys += [self.tr_base | large, self.tr_gbase | large]
        for key in keys:
            e = entries.get(key)
            if e is not None:
                entries.move_to_end(key)
                return e
        return None


_S2 = tuple[int, int, int]  # (host frame of the 4 KiB page, stage-2 rights, stage-2 page size)


class Walker:
    """The walks of one machine: reads its memory, fills the TLB it is given, counts.

    The counts are ints on the walker (the hot path); `fold` adds them to a Counter under the
    names of the kinds they were made with."""

    def __init__(self, memory: Any) -> None:
        self.mem = memory
        self.misses = 0  # translation misses (the linear-address lookup)
        self.psc_hits = 0
        self.s2_lookups = 0  # guest-physical lookups of 2-D walks
        self.s2_misses = 0
        self.s2_psc_hits = 0
        self.refs_guest = 0  # guest paging-structure entries read
        self.refs_s2 = 0  # EPT/NPT entries read
        self.evictions: Counter[str] = Counter()
        self.kinds: tuple[str, str, str, str] = ("", "", "", "")

    def fold(self, n: Counter[str]) -> None:
        tr, psc, s2tr, s2psc = self.kinds
        for name, value in (
            (f"tlb.misses.{tr}", self.misses),
            (f"psc.hits.{psc}", self.psc_hits),
            (f"tlb.lookups.{s2tr}", self.s2_lookups),
            (f"tlb.misses.{s2tr}", self.s2_misses),
            (f"psc.hits.{s2psc}", self.s2_psc_hits),
            ("walk.refs.guest", self.refs_guest),
            ("walk.refs.stage2", self.refs_s2),
        ):
            if value:
                n[name] += value
        for kind, value in self.evictions.items():
            n[f"evictions.{kind}"] += value
        self.reset()

    def reset(self) -> None:
        self.misses = self.psc_hits = self.s2_lookups = self.s2_misses = self.s2_psc_hits = 0
        self.refs_guest = self.refs_s2 = 0
        self.evictions.clear()

    def note_kinds(self, c: Context) -> None:
        """The kinds the counts are made with (the contexts of one run all have the same)."""
        tr = KIND_NAMES[type(c.tags.translation(0, PAGE_SIZE, PAGE_SIZE, 0, 0, 0, False, 0))]
        psc = KIND_NAMES[type(c.tags.psc(LEVELS, 0, 0, 0))]
        if c.flat:
            self.kinds = (tr, psc, "none", "none")  # no stage-2 counts are made
            return
        self.kinds = (
            tr,
            psc,
            KIND_NAMES[type(c.tags.s2_translation(0, PAGE_SIZE, 0, 0))],
            KIND_NAMES[type(c.tags.s2_psc(LEVELS, 0, 0, 0))],
        )

    # -- stage 2 ------------------------------------------------------------------------------
    def gpa(self, c: Context, gpa: int) -> _S2 | Stage2Fault:
        """Translate guest-physical `gpa`: guest-physical TLB, then its paging-structure caches
        (lowest level first), then the EPT/NPT tables from the deepest hit."""
        self.s2_lookups += 1
        kc = c.s2tr
        entries = kc.entries
        page = gpa & _PAGE
        key = c.s2tr_base | page
        e: Any = entries.get(key)
        if e is None and kc.large:
            key = c.s2tr_base | (page & ~_LARGE_OFF) | 1
            e = entries.get(key)
        if e is not None:
            entries.move_to_end(key)
            return (e.frame + (gpa & (e.size - 1)), e.rights, e.size)
        self.s2_misses += 1
        level, table, rights = LEVELS, c.s2_root, E_ALL
        pscs = c.s2psc.entries
        base = c.s2psc_base
        for lv in (2, 3, 4):
            key = base | ((gpa >> _SHIFT[lv]) << 3) | lv
            p: Any = pscs.get(key)
            if p is not None:
                pscs.move_to_end(key)
                self.s2_psc_hits += 1
                level, table, rights = lv - 1, p.table, p.rights
                break
        tags = c.tags
        tlb = c.tlb
        slot_at = self.mem.slot_at
        values = self.mem.values
        ept = c.ept
        large_bit = EPT_PS if ept else PS
        refs = 0
        while True:
            n = slot_at.get((table, (gpa >> _SHIFT[level]) & _INDEX))  # memory.py: read
            value = 0 if n is None else values[n]
            refs += 1
            if ept:
                if not value & 7:  # ept_present
                    self.refs_s2 += refs
                    return Stage2Fault(gpa, False)
                if value & EPT_W and not value & EPT_R:  # ept_misconfigured
                    self.refs_s2 += refs
                    return Stage2Fault(gpa, False, True)
                rights &= value & E_ALL  # ept_rights
            else:
                if not value & P:
                    self.refs_s2 += refs
                    return Stage2Fault(gpa, False)
                rights &= _npt_rights(value)
            if level == 1 or (level == 2 and value & large_bit):
                self.refs_s2 += refs
                size = PAGE_SIZE if level == 1 else LARGE_PAGE_SIZE
                base_hpa = value & PHYS_ADDR_MASK & ~(size - 1)
                gpage = gpa & ~(size - 1)
                made = tags.s2_translation(gpage, size, base_hpa, rights)
                key = c.s2tr_base | translation_key(gpage, size)
                victim = tlb.put(c.s2tr, key, c.s2tr_gid, made, False, size != PAGE_SIZE)
                if victim is not None:
                    self.evictions[KIND_NAMES[type(victim)]] += 1
                return (base_hpa + (gpa & (size - 1)), rights, size)
            if level == 3 and value & large_bit:
                raise ModelError("1 GiB stage-2 pages are not modelled")
            nxt = value & PHYS_ADDR_MASK
            made = tags.s2_psc(level, gpa >> _SHIFT[level], nxt, rights)
            victim = tlb.put(
                c.s2psc, base | ((gpa >> _SHIFT[level]) << 3) | level, c.s2psc_gid, made
            )
            if victim is not None:
                self.evictions[KIND_NAMES[type(victim)]] += 1
            table = nxt
            level -= 1

    # -- the guest's tables -----------------------------------------------------------------------
    def miss(self, c: Context, gva: int) -> Any:
        """The walk after a translation miss for linear page `gva` (below 2**48): the
        translation it cached, or the walk's fault (NotPresent, Stage2Fault)."""
        self.misses += 1
        level, table, rights = LEVELS, -1, G_ALL
        pscs = c.psc.entries
        base = c.psc_base
        for lv in (2, 3, 4):
            key = base | ((gva >> _SHIFT[lv]) << 3) | lv
            p: Any = pscs.get(key)
            if p is not None:
                pscs.move_to_end(key)
                self.psc_hits += 1
                level, table, rights = lv - 1, p.table, p.rights
                break
        if table < 0:
            s = self.gpa(c, c.root)
            if isinstance(s, Stage2Fault) or not s[1] & E_R:
                mis = isinstance(s, Stage2Fault) and s.misconfig
                return Stage2Fault(c.root, False, mis)
            table = s[0]
        slot_at = self.mem.slot_at
        values = self.mem.values
        while True:
            n = slot_at.get((table, (gva >> _SHIFT[level]) & _INDEX))  # memory.py: read
            value = 0 if n is None else values[n]
            self.refs_guest += 1
            if not value & P:
                return NotPresent(level)
            # paging.py pte_rights: W from R/W (bit 1), U from U/S (bit 2), X unless XD (bit 63)
            rights &= ((value >> 1) & (G_W | G_U)) | (0 if value >> 63 else G_X)
            if level == 1 or (level == 2 and value & PS):
                break
            if level == 3 and value & PS:
                raise ModelError("1 GiB pages are not modelled")
            s = self.gpa(c, value & PHYS_ADDR_MASK)
            if isinstance(s, Stage2Fault) or not s[1] & E_R:
                mis = isinstance(s, Stage2Fault) and s.misconfig
                return Stage2Fault(value & PHYS_ADDR_MASK, False, mis)
            made = c.tags.psc(level, gva >> _SHIFT[level], s[0], rights)
            victim = c.tlb.put(c.psc, base | ((gva >> _SHIFT[level]) << 3) | level, c.psc_gid, made)
            if victim is not None:
                self.evictions[KIND_NAMES[type(victim)]] += 1
            table = s[0]
            level -= 1
        # The leaf (a PTE, or a PDE mapping 2 MiB): its guest-physical address through stage 2.
        size = PAGE_SIZE if level == 1 else LARGE_PAGE_SIZE
        glob = bool(value & G) and c.pge
        leaf = (value & PHYS_ADDR_MASK & ~(size - 1)) + (gva & (size - 1))
        # A guest-physical TLB hit for a 4 KiB leaf is the common case: gpa() inlined.
        s2entries = c.s2tr.entries
        s2key = c.s2tr_base | (leaf & _PAGE)
        e2: Any = s2entries.get(s2key)
        if e2 is not None and e2.size == PAGE_SIZE:
            s2entries.move_to_end(s2key)
            self.s2_lookups += 1
            frame, erights, s2size = e2.frame + (leaf & (PAGE_SIZE - 1)), e2.rights, PAGE_SIZE
        else:
            s = self.gpa(c, leaf)
            if isinstance(s, Stage2Fault):
                return Stage2Fault(leaf, True, s.misconfig)
            frame, erights, s2size = s
        tsize = size if size <= s2size else s2size
        toff = gva & (tsize - 1)
        page = gva - toff
        made = c.tags.translation(
            page, tsize, size, frame - toff, rights, erights, glob, leaf - toff
        )
        large = size != PAGE_SIZE
        key = (c.tr_gbase if glob else c.tr_base) | page | (1 if tsize != PAGE_SIZE else 0)
        victim = c.tlb.put(c.tr, key, c.tr_ggid if glob else c.tr_gid, made, glob, large)
        if victim is not None:
            self.evictions[KIND_NAMES[type(victim)]] += 1
        return made

    # -- shadow paging: 1-D walks of the shadow tables ---------------------------------------------
    def miss_flat(self, c: Context, gva: int) -> Any:
        """The walk after a translation miss for linear page `gva` with EPT/NPT off: the shadow
        tables from the deepest paging-structure-cache hit (or the hardware CR3), each level one
        memory reference (counted as `walk.refs.guest`: the tables the processor walks). Returns
        the translation it cached, or NotPresent."""
        self.misses += 1
        level, table, rights = LEVELS, c.root, G_ALL
        pscs = c.psc.entries
        base = c.psc_base
        for lv in (2, 3, 4):
            key = base | ((gva >> _SHIFT[lv]) << 3) | lv
            p: Any = pscs.get(key)
            if p is not None:
                pscs.move_to_end(key)
                self.psc_hits += 1
                level, table, rights = lv - 1, p.table, p.rights
                break
        slot_at = self.mem.slot_at
        values = self.mem.values
        while True:
            n = slot_at.get((table, (gva >> _SHIFT[level]) & _INDEX))  # memory.py: read
            value = 0 if n is None else values[n]
            self.refs_guest += 1
            if not value & P:
                return NotPresent(level)
            rights &= ((value >> 1) & (G_W | G_U)) | (0 if value >> 63 else G_X)
            if level == 1 or (level == 2 and value & PS):
                break
            if level == 3 and value & PS:
                raise ModelError("1 GiB pages are not modelled")
            nxt = value & PHYS_ADDR_MASK
            made = c.tags.psc(level, gva >> _SHIFT[level], nxt, rights)
            victim = c.tlb.put(c.psc, base | ((gva >> _SHIFT[level]) << 3) | level, c.psc_gid, made)
            if victim is not None:
                self.evictions[KIND_NAMES[type(victim)]] += 1
            table = nxt
            level -= 1
        size = PAGE_SIZE if level == 1 else LARGE_PAGE_SIZE
        glob = bool(value & G) and c.pge
        frame = value & PHYS_ADDR_MASK & ~(size - 1)
        page = gva & ~(size - 1)
        made = c.tags.translation(page, size, size, frame, rights, E_ALL, glob, -1)
        large = size != PAGE_SIZE
        key = (c.tr_gbase if glob else c.tr_base) | page | (1 if large else 0)
        victim = c.tlb.put(c.tr, key, c.tr_ggid if glob else c.tr_gid, made, glob, large)
        if victim is not None:
            self.evictions[KIND_NAMES[type(victim)]] += 1
        return made


__all__ = ["MAX_REFS_2D", "Context", "Walker"]
