"""The kinds of cached mapping a logical processor may hold, with their tags spelled out.

Models SDM §28.3.1 (new §29.4.1): three kinds of mapping, each as translations (TLB entries, page
number -> page frame) and as paging-structure-cache entries (upper address bits -> physical
address of the next paging structure, §4.10.3.1):

- linear mappings, made while EPT is not in use, tagged (VPID, PCID);
- guest-physical mappings, made while EPT is in use, tagged by EP4TA only;
- combined mappings, made while EPT is in use, tagged (VPID, PCID, EP4TA).

AMD (APM Vol. 2 §15.16, §15.25) tags everything a guest caches with its ASID (and the PCID when
the guest's CR4.PCIDE is set); the NPT-derived and guest-derived parts are kept as separate kinds
so that "a new nCR3 with the same ASID" is observable.

Each translation also carries, as ghost data used only by the checker, the guest-physical address
it came from (`gpa`); hardware keeps no such field.

Entries are NamedTuples of small ints: hashable, cheap, and ordered; `KIND_ORDER` orders kinds
when a universe enumerates them. `page` is the base of the page the translation maps and `size`
its size (4 KiB or 2 MiB); `span` is the size of the page the walk found (a processor may cache a
2 MiB page as 4 KiB pieces, SDM §4.10.2.3); `frame` is the base of the physical page it maps to.
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

from kvmtlb.hw.paging import format_ept_rights, format_guest_rights


class LinearTranslation(NamedTuple):
    """Linear -> physical translation made while EPT is not in use (SDM §28.3.1)."""

    vpid: int
    pcid: int
    page: int
    size: int
    span: int  # size of the page the walk mapped (a 4 KiB piece of a 2 MiB page: 2 MiB)
    frame: int
    rights: int
    glob: bool

    def describe(self) -> str:
        g = " global" if self.glob else ""
        return (
            f"linear VPID {self.vpid} PCID {self.pcid} {self.page:#x} -> {self.frame:#x} "
            f"[{format_guest_rights(self.rights)}]{g}"
        )


class LinearPsc(NamedTuple):
    """Paging-structure-cache entry of the linear kind (SDM §4.10.3.1, §28.3.1)."""

    vpid: int
    pcid: int
    level: int
    region: int
    table: int
    rights: int

    def describe(self) -> str:
        return (
            f"linear PSC L{self.level} VPID {self.vpid} PCID {self.pcid} region {self.region:#x} "
            f"-> table {self.table:#x}"
        )


class GuestPhysicalTranslation(NamedTuple):
    """Guest-physical -> host-physical translation, tagged by EP4TA only (SDM §28.3.1)."""

    ep4ta: int
    page: int
    size: int
    frame: int
    rights: int

    def describe(self) -> str:
        return (
            f"guest-physical EP4TA {self.ep4ta:#x} GPA {self.page:#x} -> HPA {self.frame:#x} "
            f"[{format_ept_rights(self.rights)}]"
        )


class GuestPhysicalPsc(NamedTuple):
    """EPT paging-structure-cache entry, tagged by EP4TA (SDM §28.3.1)."""

    ep4ta: int
    level: int
    region: int
    table: int
    rights: int

    def describe(self) -> str:
        return (
            f"guest-physical PSC L{self.level} EP4TA {self.ep4ta:#x} region {self.region:#x} "
            f"-> EPT table {self.table:#x}"
        )


class CombinedTranslation(NamedTuple):
    """Linear -> host-physical translation made while EPT is in use (SDM §28.3.1)."""

    vpid: int
    pcid: int
    ep4ta: int
    page: int
    size: int
    span: int  # size of the page the walk mapped (a 4 KiB piece of a 2 MiB page: 2 MiB)
    frame: int
    rights: int
    erights: int
    glob: bool
    gpa: int

    def describe(self) -> str:
        g = " global" if self.glob else ""
        return (
            f"combined VPID {self.vpid} PCID {self.pcid} EP4TA {self.ep4ta:#x} "
            f"{self.page:#x} -> GPA {self.gpa:#x} -> HPA {self.frame:#x} "
            f"[{format_guest_rights(self.rights)}/{format_ept_rights(self.erights)}]{g}"
        )


class CombinedPsc(NamedTuple):
    """Combined paging-structure-cache entry: linear region -> HPA of a guest table."""

    vpid: int
    pcid: int
    ep4ta: int
    level: int
    region: int
    table: int
    rights: int

    def describe(self) -> str:
        return (
            f"combined PSC L{self.level} VPID {self.vpid} PCID {self.pcid} EP4TA {self.ep4ta:#x} "
            f"region {self.region:#x} -> table HPA {self.table:#x}"
        )


class AsidTranslation(NamedTuple):
    """AMD: a guest-linear translation tagged by ASID (and PCID), APM §15.16, §15.25.

    Under nested paging it maps guest-linear -> system-physical with the combined rights
    (`rights` guest layer, `erights` nested layer) and ghost `gpa`; without nested paging (ASID 0,
    the host, or a shadow-paged guest) `gpa` equals -1 and `erights` is E_ALL.
    """

    asid: int
    pcid: int
    page: int
    size: int
    span: int  # size of the page the walk mapped (a 4 KiB piece of a 2 MiB page: 2 MiB)
    frame: int
    rights: int
    erights: int
    glob: bool
    gpa: int

    def describe(self) -> str:
        g = " global" if self.glob else ""
        via = f" -> GPA {self.gpa:#x}" if self.gpa >= 0 else ""
        return (
            f"ASID {self.asid} PCID {self.pcid} {self.page:#x}{via} -> {self.frame:#x} "
            f"[{format_guest_rights(self.rights)}/{format_ept_rights(self.erights)}]{g}"
        )


class AsidPsc(NamedTuple):
    """AMD: a guest paging-structure-cache entry tagged by ASID (and PCID)."""

    asid: int
    pcid: int
    level: int
    region: int
    table: int
    rights: int

    def describe(self) -> str:
        return (
            f"ASID {self.asid} PCID {self.pcid} PSC L{self.level} region {self.region:#x} "
            f"-> table {self.table:#x}"
        )


class NestedTranslation(NamedTuple):
    """AMD: a guest-physical -> system-physical translation, tagged by ASID only (not nCR3)."""

    asid: int
    page: int
    size: int
    frame: int
    rights: int

    def describe(self) -> str:
        return (
            f"nested ASID {self.asid} GPA {self.page:#x} -> HPA {self.frame:#x} "
            f"[{format_ept_rights(self.rights)}]"
        )


class NestedPsc(NamedTuple):
    """AMD: a nested paging-structure-cache entry, tagged by ASID only."""

    asid: int
    level: int
    region: int
    table: int
    rights: int

    def describe(self) -> str:
        return (
            f"nested PSC L{self.level} ASID {self.asid} region {self.region:#x} "
            f"-> NPT table {self.table:#x}"
        )


Entry: TypeAlias = (
    LinearTranslation
    | LinearPsc
    | GuestPhysicalTranslation
    | GuestPhysicalPsc
    | CombinedTranslation
    | CombinedPsc
    | AsidTranslation
    | AsidPsc
    | NestedTranslation
    | NestedPsc
)

TRANSLATION_KINDS: tuple[type, ...] = (
    LinearTranslation,
    GuestPhysicalTranslation,
    CombinedTranslation,
    AsidTranslation,
    NestedTranslation,
)
PSC_KINDS: tuple[type, ...] = (LinearPsc, GuestPhysicalPsc, CombinedPsc, AsidPsc, NestedPsc)


KIND_ORDER: dict[type, int] = {
    k: n
    for n, k in enumerate(
        (
            LinearTranslation,
            LinearPsc,
            GuestPhysicalTranslation,
            GuestPhysicalPsc,
            CombinedTranslation,
            CombinedPsc,
            AsidTranslation,
            AsidPsc,
            NestedTranslation,
            NestedPsc,
        )
    )
}


def sort_key(entry: Entry) -> tuple[int, tuple[int, ...]]:
    """Canonical order of entries across kinds: kind first, then fields."""
    return (KIND_ORDER[type(entry)], tuple(int(x) for x in entry))
