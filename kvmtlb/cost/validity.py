"""Whether a cached entry is still valid: whether a walk of current memory would build it again.

The cost model counts an entry removed by an invalidation as an over-flush when it was still
valid, and as a needed removal when it was stale (built from a paging-structure entry that has
changed since). "Valid" is decided by the MAY-set model's own walk engine (kvmtlb.hw.walk.Walker)
run with nothing held, over current memory, under the entry's tags: the entry is valid exactly
when it is among that walk's fills. So the definition is the architecture's, not a re-statement of
it.

Combined and AMD guest translations carry no CR3, only a PCID: they are judged against the guest
page table of the address space their linear address lies in (each address space of a workload
has its working set in its own 1 GiB: workload.AS_STRIDE). A walk's verdicts are memoized with the
slots the walk read; a write to one of those slots forgets them (memory.py calls `forget`). The
stage-2 translations of each guest-physical address are memoized the same way and fed to the
first-stage walks through the walker's `s2_oracle` hook.

With shadow paging (`ShadowIntent`) the processor walks KVM's shadow tables, and a translation
built from a shadow entry that is itself stale (an unsync shadow page not yet synced) would pass a
walk of current memory. So a shadow translation is judged against what the guest and the host
mean now: the guest's current PTE for its page (in the page table of the address space the page
belongs to, AS_STRIDE apart) names a guest frame, the host currently backs that frame with the
entry's host page, and the entry grants no right the guest PTE does not. The shadow tables' upper
levels never change (kvm/shadow.py): their paging-structure-cache entries are judged by the
MAY-set walker on the shadow root, as above.

With nested EPT (`Ept12Intent`) KVM's shadow EPT02 may lag L1's EPT12 the same way (an unsync
EPT02 page): a translation through EPT02 must also agree with EPT12 and the host's backing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kvmtlb.cost.memory import WorkloadMemory
from kvmtlb.hw.addr import PAGE_SIZE, level_shift
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
    LinearPsc,
    LinearTranslation,
    NestedPsc,
    NestedTranslation,
)
from kvmtlb.hw.paging import E_W, P, ept_rights, pte_addr, pte_rights
from kvmtlb.hw.tags import AmdTags, IntelEptTags, IntelLinearTags
from kvmtlb.hw.walk import WalkContext, Walker

# The leading tag fields of each kind that a walk does not read, and the values they are set to.
_UNTAG: dict[type, tuple[int, ...]] = {
    CombinedTranslation: (0, 0),  # vpid, pcid
    CombinedPsc: (0, 0),
    AsidTranslation: (1, 0),  # asid, pcid
    AsidPsc: (1, 0),
    LinearPsc: (0, 0),  # vpid, pcid
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


class ShadowIntent:
    """Shadow paging: whether a linear translation still gives what the guest's page table and
    the host's backing of the frame give now (see the module docstring)."""

    def __init__(
        self,
        memory: WorkloadMemory,
        slots: Callable[[int], int],
        gpa_index: dict[int, int],
        backing: Callable[[], Sequence[int]],
    ) -> None:
        self.mem = memory
        self.slots = slots  # linear page -> the slot of its guest PTE (-1: none)
        self.gpa_index = gpa_index
        self.backing = backing  # the host page of each guest frame (Kvm.backing), -1 if none

    def valid(self, e: Any) -> bool:
        if e.size != PAGE_SIZE:
            return False  # the workloads map 4 KiB pages only
        slot = self.slots(e.page)
        if slot < 0:
            return False
        gpte = self.mem.values[slot]
        if not gpte & P:
            return False
        i = self.gpa_index.get(pte_addr(gpte))
        if i is None or self.backing()[i] != e.frame:
            return False
        return not e.rights & ~pte_rights(gpte)


class Ept12Intent:
    """Nested EPT: whether a translation through KVM's shadow EPT02 still gives what L1's EPT12
    and the host mean now. EPT02 may lag EPT12 (an unsync EPT02 page keeps its SPTEs until a
    sync), and a walk of current memory through EPT02 would call a translation built from such
    a stale SPTE valid; so an entry tagged with EPT02's EP4TA whose guest-physical page is one
    of the workload's frames is also judged against intent: EPT12's leaf for that L2 GPA names
    an L1 frame the host currently backs with the entry's host page, and grants every right the
    entry's stage-2 rights hold. (L2's page-table pages, which EPT12 and EPT02 map statically,
    are judged by the walk alone.)"""

    def __init__(
        self,
        memory: WorkloadMemory,
        ept02_root: int,
        ept12_slot: dict[int, int],
        gpa_index: dict[int, int],
        backing: Callable[[], Sequence[int]],
    ) -> None:
        self.mem = memory
        self.ept02_root = ept02_root
        self.ept12_slot = ept12_slot  # L2 GPA (a workload frame) -> the slot of its EPT12 leaf
        self.gpa_index = gpa_index
        self.backing = backing

    def tagged(self, e: Any) -> bool:
        """Whether `e` is a translation through EPT02."""
        return isinstance(e, CombinedTranslation | GuestPhysicalTranslation) and (
            e.ep4ta == self.ept02_root
        )

    def valid(self, e: Any) -> bool:
        """`e` (valid by a walk of memory) is valid by L1's and the host's intent too."""
        if isinstance(e, CombinedTranslation):
            gpa, rights = e.gpa, e.erights
        elif isinstance(e, GuestPhysicalTranslation):
            gpa, rights = e.page, e.rights
        else:
            return True
        if e.ep4ta != self.ept02_root or e.size != PAGE_SIZE:
            return True  # (the nested workloads map 4 KiB pages only)
        slot = self.ept12_slot.get(gpa)
        if slot is None:
            return True
        e12 = self.mem.values[slot]
        r12 = ept_rights(e12)
        i = self.gpa_index.get(pte_addr(e12))
        if not r12 or i is None:
            return False
        if self.backing()[i] != e.frame:
            return False
        return not rights & ~r12


class Validity:
    """Memoized validity of cached entries against the current memory of one run."""

    def __init__(
        self,
        memory: WorkloadMemory,
        guest_root: int,
        s2_root: int,
        shadow: ShadowIntent | None = None,
        root_of: Callable[[int], int] | None = None,
        all_roots: Sequence[int] = (),
        ept12: Ept12Intent | None = None,
    ) -> None:
        self.mem = memory
        self.guest_root = guest_root
        # Several address spaces: linear address -> the root of its page table (guest, or shadow
        # with shadow paging), -1 for an address outside every working set; every such root.
        self.root_of = root_of
        self.all_roots = tuple(all_roots)
        self.s2_root = s2_root  # the VM's EPT PML4 / nCR3
        self.shadow = shadow
        self.ept12 = ept12  # nested EPT: EPT02 translations judged by L1's EPT12 too
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
        if self.shadow is not None and isinstance(e, LinearTranslation | AsidTranslation):
            return self.shadow.valid(e)
        u = self._untagged.get(e)
        if u is None:
            if len(self._untagged) >= _ALIAS_LIMIT:  # a pure cache: bound it on long runs
                self._untagged.clear()
            u = self._untagged[e] = _untagged(e)
        v = self._verdict.get(u)
        if v is None:
            v = self._decide(u)
        if self.ept12 is not None and self.ept12.tagged(e):
            if not v:
                # an EPT02 translation with less write permission than EPT02 now grants (KVM
                # made the SPTE writable again after L1 did, which needs no flush) is what a
                # walk made before; it faults on a write, which removes it (SDM 29.4.3)
                w: Any = e
                up = w._replace(erights=w.erights | E_W) if hasattr(w, "erights") else None
                if up is None:
                    up = w._replace(rights=w.rights | E_W)
                v = up != e and self.valid(up)
            return v and self.ept12.valid(e)
        return v

    def harmless(self, e: Any, gva: int) -> bool:
        """Whether a hit on `e`, which a walk would no longer build, for an access to `gva` is
        still what the processor may give: a walk of current memory under `e`'s tags maps
        `gva` to the same host address with every right `e` grants. That is so for an entry of
        a 2 MiB page whose SPTE KVM split in place (4 KiB entries, the same memory, no flush
        owed: tdp_mmu.c:tdp_mmu_split_huge_page), and for one with fewer rights than its
        SPTE has now (write permission restored without a flush: fast_page_fault); an access
        the entry does not allow faults, which removes it (SDM 29.4.3). With nested EPT the
        walk's result must also agree with L1's EPT12 (`Ept12Intent`)."""
        if not isinstance(e, CombinedTranslation | AsidTranslation):
            return False
        key = ("harmless", _untagged(e), gva)
        hit = self._verdict.get(key)  # type: ignore[call-overload]
        if hit is not None:
            return bool(hit)
        ctx, _, _ = self._context(_untagged(e))
        read: set[int] = set()

        def oracle(gpa: int) -> tuple[Any, int]:
            results, slots = self._stage2(ctx, gpa)
            read.update(slots)
            return (results, 0)

        w = Walker(ctx, self._recorder(read), None, self.mem.layout.table_backing, oracle)
        w.translate(gva)
        hpa = e.frame + (gva - e.page)
        erights = getattr(e, "erights", 0)
        ok = any(
            type(f) is type(e)
            and f.page <= gva < f.page + f.size
            and f.frame + (gva - f.page) == hpa
            and not e.rights & ~f.rights
            and not erights & ~getattr(f, "erights", 0)
            for f in w.fills
        )
        if ok and self.ept12 is not None and self.ept12.tagged(e):
            f = next(f for f in w.fills if type(f) is type(e) and f.page <= gva < f.page + f.size)
            ok = self.ept12.valid(f._replace(rights=e.rights, erights=erights))
        self._verdict[key] = ok  # type: ignore[index]
        self._depend(key, read)
        return ok

    def _context(self, entry: Entry) -> tuple[WalkContext, int, bool]:
        """The context, address and stage of the walk that would build `entry`."""
        e: Any = entry
        if isinstance(entry, PSC_KINDS):
            addr = e.region << level_shift(e.level)
            pge = True
        else:
            addr = e.page
            pge = bool(getattr(e, "glob", False))
        if self.shadow is not None and isinstance(e, LinearPsc | AsidPsc):
            flat: Any = IntelLinearTags(0, 0) if isinstance(e, LinearPsc) else AmdTags(1, 0, False)
            root = self.root_of(addr) if self.root_of is not None else -1
            return WalkContext(flat, root, -1, Format.EPT, True, pge), addr, False
        groot = self.root_of(addr) if self.root_of is not None else self.guest_root
        if isinstance(e, CombinedTranslation | CombinedPsc):  # tagged (VPID, PCID, EP4TA)
            tags: Any = IntelEptTags(e.vpid, e.pcid, e.ep4ta)
            return WalkContext(tags, groot, e.ep4ta, Format.EPT, True, pge), addr, False
        if isinstance(e, GuestPhysicalTranslation | GuestPhysicalPsc):
            tags = IntelEptTags(0, 0, e.ep4ta)
            return WalkContext(tags, self.guest_root, e.ep4ta, Format.EPT, True, pge), addr, True
        if isinstance(e, AsidTranslation | AsidPsc):
            tags = AmdTags(e.asid, e.pcid, True)
            return (
                WalkContext(tags, groot, self.s2_root, Format.NPT, True, pge),
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

        # A PML4-cache entry spans every address space: it is valid if one page table's walk makes
        # it (its `table` names that table's PDPT).
        roots = [ctx.root] if ctx.root >= 0 else list(self.all_roots)
        decided: set[Entry] = set()
        for root in roots:
            w = Walker(
                ctx._replace(root=root),
                self._recorder(read),
                None,
                self.mem.layout.table_backing,
                oracle,
            )
            w.translate(addr)
            decided.update(w.fills)
        for f in decided:
            self._verdict[f] = True
        ok = e in decided
        if not ok:
            self._verdict[e] = False
            decided.add(e)
        for f in decided:
            self._depend(f, read)
        return ok


__all__ = ["Ept12Intent", "ShadowIntent", "Validity"]
