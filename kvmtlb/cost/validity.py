"""Whether a cached entry is still valid: whether a walk of current memory would build it again.

The cost model counts an entry removed by an invalidation as an over-flush when it was still
valid, and as a needed removal when it was stale (built from a paging-structure entry that has
changed since). "Valid" is decided by the MAY-set model's own walk engine (kvmtlb.hw.walk.Walker)
run with nothing held, over current memory, under the entry's tags: the entry is valid exactly
when it is among that walk's fills. So the definition is the architecture's, not a re-statement of
it.

Combined and AMD guest translations carry no CR3, only a PCID: they are judged against the
workload's one guest address space (its guest root). A walk's verdicts are memoized with the
slots the walk read; a write to one of those slots forgets them (memory.py calls `forget`). The
stage-2 translations of each guest-physical address are memoized the same way and fed to the
first-stage walks through the walker's `s2_oracle` hook.
"""

from __future__ import annotations

from typing import Any

from kvmtlb.cost.memory import WorkloadMemory
from kvmtlb.hw.addr import level_shift
from kvmtlb.hw.errors import ModelError
from kvmtlb.hw.layout import Format
from kvmtlb.hw.mappings import (
    PSC_KINDS,
    AsidPsc,
    AsidTranslation,
    CombinedPsc,
    CombinedTranslation,
    Entry,
    GuestPhysicalPsc,
    GuestPhysicalTranslation,
    NestedPsc,
    NestedTranslation,
)
from kvmtlb.hw.tags import AmdTags, IntelEptTags
from kvmtlb.hw.walk import WalkContext, Walker

# The leading tag fields of each kind that a walk does not read, and the values they are set to.
_UNTAG: dict[type, tuple[int, ...]] = {
    CombinedTranslation: (0, 0),  # vpid, pcid
    CombinedPsc: (0, 0),
    AsidTranslation: (1, 0),  # asid, pcid
    AsidPsc: (1, 0),
    NestedTranslation: (1,),  # asid
    NestedPsc: (1,),
}


_ALIAS_LIMIT = 1 << 18


def _untagged(e: Any) -> Any:
    """`e` with its VPID, PCID or ASID set to one value: what a walk reads does not depend on
    them (only on the guest root, which is the workload's, and the EPT/NPT root), so one walk
    decides the entry under every VPID, PCID and ASID."""
    tags = _UNTAG.get(type(e))
    if tags is None:
        return e
    return type(e)._make((*tags, *e[len(tags) :]))


class Validity:
    """Memoized validity of cached entries against the current memory of one run."""

    def __init__(self, memory: WorkloadMemory, guest_root: int, s2_root: int) -> None:
        self.mem = memory
        self.guest_root = guest_root
        self.s2_root = s2_root  # the VM's EPT PML4 / nCR3
        self._verdict: dict[Entry, bool] = {}  # untagged entry -> valid
        self._untagged: dict[Entry, Entry] = {}
        self._s2: dict[Any, tuple[Any, frozenset[int]]] = {}  # ("s2", root, GPA) -> results
        self._deps: dict[int, set[Any]] = {}  # slot -> verdicts and stage-2 results read there
        memory.listeners.append(self.forget)

    def forget(self, slot: int) -> None:
        """Slot `slot` was written: forget every verdict and stage-2 result read through it."""
        for key in self._deps.pop(slot, ()):
            self._verdict.pop(key, None)
            self._s2.pop(key, None)

    def valid(self, e: Entry) -> bool:
        u = self._untagged.get(e)
        if u is None:
            if len(self._untagged) >= _ALIAS_LIMIT:  # a pure cache: bound it on long runs
                self._untagged.clear()
            u = self._untagged[e] = _untagged(e)
        v = self._verdict.get(u)
        if v is None:
            v = self._decide(u)
        return v

    def _context(self, entry: Entry) -> tuple[WalkContext, int, bool]:
        """The context, address and stage of the walk that would build `entry`."""
        e: Any = entry
        if isinstance(entry, PSC_KINDS):
            addr = e.region << level_shift(e.level)
            pge = True
        else:
            addr = e.page
            pge = bool(getattr(e, "glob", False))
        if isinstance(e, CombinedTranslation | CombinedPsc):  # tagged (VPID, PCID, EP4TA)
            tags: Any = IntelEptTags(e.vpid, e.pcid, e.ep4ta)
            return WalkContext(tags, self.guest_root, e.ep4ta, Format.EPT, True, pge), addr, False
        if isinstance(e, GuestPhysicalTranslation | GuestPhysicalPsc):
            tags = IntelEptTags(0, 0, e.ep4ta)
            return WalkContext(tags, self.guest_root, e.ep4ta, Format.EPT, True, pge), addr, True
        if isinstance(e, AsidTranslation | AsidPsc):
            tags = AmdTags(e.asid, e.pcid, True)
            return (
                WalkContext(tags, self.guest_root, self.s2_root, Format.NPT, True, pge),
                addr,
                False,
            )
        if isinstance(e, NestedTranslation | NestedPsc):
            tags = AmdTags(e.asid, 0, True)
            return (
                WalkContext(tags, self.guest_root, self.s2_root, Format.NPT, True, pge),
                addr,
                True,
            )
        raise ModelError(f"the cost model does not make {type(e).__name__} entries")

    def _recorder(self, read: set[int]) -> Any:
        slot_at = self.mem.layout.slot_at
        values = self.mem.values

        def reader(table: int, index: int) -> tuple[int, ...]:
            n = slot_at.get((table, index))
            if n is None:
                return (0,)
            read.add(n)
            return (values[n],)

        return reader

    def _depend(self, key: Any, read: set[int]) -> None:
        for n in read:
            self._deps.setdefault(n, set()).add(key)

    def _stage2(self, ctx: WalkContext, gpa: int) -> tuple[Any, frozenset[int]]:
        """The stage-2 translations of `gpa` (hw.walk's results) and the slots they read,
        memoized; the guest-physical entries the walk builds are decided valid on the way."""
        key = ("s2", ctx.s2_root, gpa)
        hit = self._s2.get(key)
        if hit is None:
            read: set[int] = set()
            w = Walker(ctx, self._recorder(read), None, self.mem.layout.table_backing)
            results = w.translate_gpa(gpa)
            hit = self._s2[key] = (results, frozenset(read))
            self._depend(key, read)
            for f in w.fills:
                self._verdict[f] = True
                self._depend(f, read)
        return hit

    def _decide(self, e: Entry) -> bool:
        ctx, addr, stage2 = self._context(e)
        if stage2:
            self._stage2(ctx, addr)
            ok = self._verdict.get(e, False)
            if not ok:
                self._verdict[e] = False
                self._depend(e, set(self._s2[("s2", ctx.s2_root, addr)][1]))
            return ok
        # A first-stage walk: the guest's tables from current memory, each guest-physical address
        # through the memoized stage-2 results (Walker's s2_oracle hook).
        read: set[int] = set()

        def oracle(gpa: int) -> tuple[Any, int]:
            results, slots = self._stage2(ctx, gpa)
            read.update(slots)
            return (results, 0)

        w = Walker(ctx, self._recorder(read), None, self.mem.layout.table_backing, oracle)
        w.translate(addr)
        decided = set(w.fills)
        for f in decided:
            self._verdict[f] = True
        ok = e in decided
        if not ok:
            self._verdict[e] = False
            decided.add(e)
        for f in decided:
            self._depend(f, read)
        return ok


__all__ = ["Validity"]
