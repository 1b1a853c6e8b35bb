"""The tags current on a logical processor, and which cached entries they make usable.

Models the creation and use rules of SDM §28.3.2 (new §29.4.2) and APM §15.16 / §15.25:

- intel.create.linear / intel.use.linear: while EPT is not in use, linear mappings are made and
  used for the current VPID and PCID, plus global translations of the current VPID under any PCID
  (§4.10.2.4).
- intel.create.combined / intel.use.combined: while EPT is in use, combined mappings are made and
  used for (current VPID, current PCID, current EP4TA), plus global combined translations of the
  current VPID and EP4TA under any PCID; guest-physical mappings for the current EP4TA.
- intel.create.guest-physical / intel.use.guest-physical: guest-physical mappings are made and
  used only while EPT is in use, for the current EP4TA, also for the guest-physical references of
  guest walks (see walk.py).
- intel.retain.ept-toggle: entries of the kind not in use stay in the MAY-set, unusable, and are
  usable again when the EPT state (or the EPTP) flips back: `usable` hides them, nothing removes
  them.
- amd.tag.asid: everything a guest caches is tagged by ASID (and PCID); nested (NPT-derived)
  entries by ASID only, never by nCR3 (APM §15.16, §15.25.1). amd.global.asid: a global entry
  is usable under any PCID, but only inside its ASID.

A tags value is a hashable NamedTuple; the entry universe caches one usable-mask per value.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from kvmtlb.hw.mappings import (
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


class Tags(Protocol):
    """What a walk needs to know about the current tags."""

    def translation(
        self,
        page: int,
        size: int,
        span: int,
        frame: int,
        rights: int,
        erights: int,
        glob: bool,
        gpa: int,
    ) -> Entry: ...

    def psc(self, level: int, region: int, table: int, rights: int) -> Entry: ...

    def s2_translation(self, page: int, size: int, frame: int, rights: int) -> Entry: ...

    def s2_psc(self, level: int, region: int, table: int, rights: int) -> Entry: ...

    def usable(self, entry: Entry) -> bool: ...

    @property
    def kinds(self) -> tuple[type, type, type | None, type | None]: ...


class IntelLinearTags(NamedTuple):
    """EPT not in use (VMX root, outside VMX, or non-root with EPT off): linear mappings."""

    vpid: int
    pcid: int

    @property
    def kinds(self) -> tuple[type, type, type | None, type | None]:
        return (LinearTranslation, LinearPsc, None, None)

    def translation(
        self,
        page: int,
        size: int,
        span: int,
        frame: int,
        rights: int,
        erights: int,
        glob: bool,
        gpa: int,
    ) -> Entry:
        return LinearTranslation(self.vpid, self.pcid, page, size, span, frame, rights, glob)

    def psc(self, level: int, region: int, table: int, rights: int) -> Entry:
        return LinearPsc(self.vpid, self.pcid, level, region, table, rights)

    def s2_translation(self, page: int, size: int, frame: int, rights: int) -> Entry:
        raise AssertionError("no guest-physical mappings while EPT is not in use")

    def s2_psc(self, level: int, region: int, table: int, rights: int) -> Entry:
        raise AssertionError("no guest-physical mappings while EPT is not in use")

    def usable(self, entry: Entry) -> bool:
        if isinstance(entry, LinearTranslation):
            return entry.vpid == self.vpid and (entry.pcid == self.pcid or entry.glob)
        if isinstance(entry, LinearPsc):
            return entry.vpid == self.vpid and entry.pcid == self.pcid
        return False


class IntelEptTags(NamedTuple):
    """EPT in use: combined mappings for (VPID, PCID, EP4TA), guest-physical for EP4TA."""

    vpid: int
    pcid: int
    ep4ta: int

    @property
    def kinds(self) -> tuple[type, type, type | None, type | None]:
        return (CombinedTranslation, CombinedPsc, GuestPhysicalTranslation, GuestPhysicalPsc)

    def translation(
        self,
        page: int,
        size: int,
        span: int,
        frame: int,
        rights: int,
        erights: int,
        glob: bool,
        gpa: int,
    ) -> Entry:
        return CombinedTranslation(
            self.vpid, self.pcid, self.ep4ta, page, size, span, frame, rights, erights, glob, gpa
        )

    def psc(self, level: int, region: int, table: int, rights: int) -> Entry:
        return CombinedPsc(self.vpid, self.pcid, self.ep4ta, level, region, table, rights)

    def s2_translation(self, page: int, size: int, frame: int, rights: int) -> Entry:
        return GuestPhysicalTranslation(self.ep4ta, page, size, frame, rights)

    def s2_psc(self, level: int, region: int, table: int, rights: int) -> Entry:
        return GuestPhysicalPsc(self.ep4ta, level, region, table, rights)

    def usable(self, entry: Entry) -> bool:
        if isinstance(entry, CombinedTranslation):
            return (
                entry.vpid == self.vpid
                and entry.ep4ta == self.ep4ta
                and (entry.pcid == self.pcid or entry.glob)
            )
        if isinstance(entry, CombinedPsc):
            return (entry.vpid, entry.pcid, entry.ep4ta) == (self.vpid, self.pcid, self.ep4ta)
        if isinstance(entry, GuestPhysicalTranslation | GuestPhysicalPsc):
            return entry.ep4ta == self.ep4ta
        return False


class AmdTags(NamedTuple):
    """AMD: ASID (and PCID) tags; `npt` says whether nested paging is on for this context."""

    asid: int
    pcid: int
    npt: bool

    @property
    def kinds(self) -> tuple[type, type, type | None, type | None]:
        if self.npt:
            return (AsidTranslation, AsidPsc, NestedTranslation, NestedPsc)
        return (AsidTranslation, AsidPsc, None, None)

    def translation(
        self,
        page: int,
        size: int,
        span: int,
        frame: int,
        rights: int,
        erights: int,
        glob: bool,
        gpa: int,
    ) -> Entry:
        return AsidTranslation(
            self.asid, self.pcid, page, size, span, frame, rights, erights, glob, gpa
        )

    def psc(self, level: int, region: int, table: int, rights: int) -> Entry:
        return AsidPsc(self.asid, self.pcid, level, region, table, rights)

    def s2_translation(self, page: int, size: int, frame: int, rights: int) -> Entry:
        return NestedTranslation(self.asid, page, size, frame, rights)

    def s2_psc(self, level: int, region: int, table: int, rights: int) -> Entry:
        return NestedPsc(self.asid, level, region, table, rights)

    def usable(self, entry: Entry) -> bool:
        if isinstance(entry, AsidTranslation):
            return entry.asid == self.asid and (entry.pcid == self.pcid or entry.glob)
        if isinstance(entry, AsidPsc):
            return entry.asid == self.asid and entry.pcid == self.pcid
        if isinstance(entry, NestedTranslation | NestedPsc):
            return self.npt and entry.asid == self.asid
        return False
