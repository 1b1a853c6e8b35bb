"""Invalidations as values: what an event MUST remove, as one pure `matches` predicate.

Every instruction, fault and transition that invalidates cached translations produces an
`Invalidation`: a union of `Select` clauses, each naming entry kinds and the tags and address
that an entry must carry to be removed, plus the rule ID that requires it. The MAY-set model
(universe.py turns an invalidation into a cached bitmask) and the concrete TLBs of the cost
model call the same predicate, so the two can never disagree on what an instruction removes.

Only what the manuals REQUIRE is removed; "may also invalidate" never is (style rule 5): a model
that flushes more than the architecture requires hides missing-flush bugs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmtlb.hw.addr import page_base, region
from kvmtlb.hw.mappings import (
    PSC_KINDS,
    TRANSLATION_KINDS,
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

if TYPE_CHECKING:
    from kvmtlb.hw.universe import Universe

# Kind groups used by the rules.
LINEAR = (LinearTranslation, LinearPsc)
COMBINED = (CombinedTranslation, CombinedPsc)
GUEST_PHYSICAL = (GuestPhysicalTranslation, GuestPhysicalPsc)
L_AND_C = LINEAR + COMBINED
L_AND_C_TLB = (LinearTranslation, CombinedTranslation)
L_AND_C_PSC = (LinearPsc, CombinedPsc)
INTEL_ALL = LINEAR + GUEST_PHYSICAL + COMBINED
ASID_KINDS = (AsidTranslation, AsidPsc, NestedTranslation, NestedPsc)
ASID_GUEST_TLB = (AsidTranslation,)
ASID_GUEST_PSC = (AsidPsc,)
ALL_KINDS = INTEL_ALL + ASID_KINDS


@dataclass(frozen=True, slots=True)
class Select:
    """Entries of `kinds` whose fields match; a field left None matches any value.

    - `addr`: translations that map the page `addr`; paging-structure-cache entries on the walk
      path of `addr` (their region contains it).
    - `pcid` with `or_global`: the PCID matches, or the translation is global (the entries that
      "would be used" for the address under PCID `pcid`, SDM §4.10.2.4).
    - `glob`: True selects only global translations, False only non-global ones and
      paging-structure-cache entries (which are never global, §4.10.3.1).
    - `vpid_nonzero`: every VPID except 0000H (INVVPID all-context).
    - `whole_page`: with `addr`, every translation of the page the walk mapped `addr` with,
      including the 4 KiB pieces of a split large page that cover other addresses
      (intel.split-pages: INVLPG and #PF remove all of them).
    """

    kinds: tuple[type, ...]
    vpid: int | None = None
    pcid: int | None = None
    ep4ta: int | None = None
    asid: int | None = None
    addr: int | None = None
    glob: bool | None = None
    or_global: bool = False
    vpid_nonzero: bool = False
    asid_nonzero: bool = False
    whole_page: bool = False

    def matches(self, e: Entry) -> bool:
        if not isinstance(e, self.kinds):
            return False
        is_psc = isinstance(e, PSC_KINDS)
        if self.vpid is not None and getattr(e, "vpid", None) != self.vpid:
            return False
        if self.vpid_nonzero and getattr(e, "vpid", 0) == 0:
            return False
        if self.asid is not None and getattr(e, "asid", None) != self.asid:
            return False
        if self.asid_nonzero and getattr(e, "asid", 0) == 0:
            return False
        if self.ep4ta is not None and getattr(e, "ep4ta", None) != self.ep4ta:
            return False
        glob = False if is_psc else bool(getattr(e, "glob", False))
        if self.glob is not None and glob != self.glob:
            return False
        if (
            self.pcid is not None
            and getattr(e, "pcid", None) != self.pcid
            and not (self.or_global and glob)
        ):
            return False
        if self.addr is not None:
            if is_psc:
                if region(self.addr, e.level) != e.region:  # type: ignore[union-attr]
                    return False
            elif page_base(self.addr, e.size) != e.page:  # type: ignore[union-attr]
                span: int = getattr(e, "span", 0)
                if not (self.whole_page and page_base(self.addr, span) == page_base(e.page, span)):  # type: ignore[union-attr]
                    return False
        return True


@dataclass(frozen=True, slots=True)
class Invalidation:
    """What one event must remove: the union of its clauses; `rules` name the manual's rules.

    `keep_global_paths` implements the retentive reading of INVVPID type 3 (SDM §28.3.3.1: it
    "is not required to invalidate information that was used for global translations"):
    paging-structure-cache entries on the path of a global translation still held for the same
    VPID (and EP4TA) are kept. The manual is ambiguous here (x86-tlb-architecture.md §6.9), and
    design.md says to choose the reading that retains more.
    """

    rules: tuple[str, ...]
    clauses: tuple[Select, ...]
    keep_global_paths: bool = False

    def matches(self, e: Entry) -> bool:
        return any(c.matches(e) for c in self.clauses)

    def removes(self, e: Entry, held: Iterable[Entry] = ()) -> bool:
        """Whether `e` must be removed, given the other entries `held` beside it."""
        if not self.matches(e):
            return False
        if self.keep_global_paths and isinstance(e, PSC_KINDS):
            return not any(_global_path(e, h) for h in held)
        return True

    def removal_mask(self, universe: Universe, may: int) -> int:
        """The bits of `may` this invalidation removes."""
        m = universe.mask(self, self.matches) & may
        if self.keep_global_paths and m:
            for e in universe.members(m):
                if isinstance(e, PSC_KINDS):
                    held = universe.members(may & _global_translation_mask(universe))
                    if any(_global_path(e, h) for h in held):
                        m &= ~universe.bit(e)
        return m


NOTHING = Invalidation((), ())


def _global_translation_mask(universe: Universe) -> int:
    return universe.mask(
        "global-translations",
        lambda e: isinstance(e, TRANSLATION_KINDS) and bool(getattr(e, "glob", False)),
    )


def _global_path(psc: Entry, t: Entry) -> bool:
    """Whether paging-structure-cache entry `psc` lies on the walk path of `t`, a held global
    translation for the same VPID (and EP4TA)."""
    if not isinstance(t, TRANSLATION_KINDS) or not getattr(t, "glob", False):
        return False
    if getattr(t, "vpid", None) != getattr(psc, "vpid", None):
        return False
    if getattr(t, "ep4ta", None) != getattr(psc, "ep4ta", None):
        return False
    return region(t.page, psc.level) == psc.region  # type: ignore[union-attr]


def union(*invalidations: Invalidation) -> Invalidation:
    rules: list[str] = []
    clauses: list[Select] = []
    keep = False
    for inv in invalidations:
        rules.extend(r for r in inv.rules if r not in rules)
        clauses.extend(inv.clauses)
        keep = keep or inv.keep_global_paths
    return Invalidation(tuple(rules), tuple(clauses), keep)
