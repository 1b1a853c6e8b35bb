"""Hyper-V's enlightened guest-physical flushes, as seen by the processors of its guest (KVM).

Models the two hypercalls KVM issues when it runs as a guest of Hyper-V with the enlightened TLB
(HV_X64_NESTED_GUEST_MAPPING_FLUSH on VMX, HV_X64_NESTED_ENLIGHTENED_TLB on SVM; Hyper-V TLFS
6.0b): HvCallFlushGuestPhysicalAddressSpace (every mapping derived from one EPT/NPT hierarchy)
and HvCallFlushGuestPhysicalAddressList (the mappings of the GPA ranges it lists). The L0
hypervisor carries them out on every processor of the partition, so KVM's code runs the event on
each pCPU (`hv_flush_events`); the event changes no processor state, it only invalidates.

What a list flush removes is exactly what the list names (issue 15 asks for it: a flush of a
wrong range must be observable): the entries whose whole guest-physical footprint lies in a
listed range. A translation of a 2 MiB page goes only if the range covers the 2 MiB (KVM itself
always names a huge SPTE's whole range: kvm_flush_remote_tlbs_gfn rounds the GFN down to the
level and flushes KVM_PAGES_PER_HPAGE(level) pages), a guest-physical paging-structure-cache
entry only if the range covers its region. The TLFS does not say how a list of 4 KiB pages
treats a larger cached translation, and a real L0 may flush more; the reading that retains more
is the one design.md asks for where a manual is silent: it can only find more stale entries.
Paging-structure caches of the guest's own tables (combined, or AMD guest PSCs) are keyed by GVA
and point at guest tables in a GPA range a scenario never names: they are left alone.

Abstracts away: the hypercall's input page, its failure modes (KVM falls back to
kvm_flush_remote_tlbs on an error; the model's L0 never fails), and the rep-count arithmetic of
hyperv_fill_flush_guest_mapping_list (a range is given as a start GPA and a page count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmtlb.hw.addr import PAGE_SIZE, level_shift, page_base
from kvmtlb.hw.effect import Effect, Readings
from kvmtlb.hw.invalidation import ASID_KINDS, Invalidation, Select
from kvmtlb.hw.mappings import (
    AsidTranslation,
    CombinedPsc,
    CombinedTranslation,
    Entry,
    GuestPhysicalPsc,
    GuestPhysicalTranslation,
    NestedPsc,
    NestedTranslation,
)
from kvmtlb.hw.outcomes import Done
from kvmtlb.hw.rules import check_ids

INTEL_GPA_KINDS = (GuestPhysicalTranslation, GuestPhysicalPsc, CombinedTranslation, CombinedPsc)
AMD_GPA_KINDS = (NestedTranslation, NestedPsc, AsidTranslation)


@dataclass(frozen=True, slots=True)
class GpaRange:
    """Entries derived from the GPA range [start, start + npages * 4 KiB) of one hierarchy:
    Intel entries of EP4TA `ep4ta`; AMD entries of every non-zero ASID (`ep4ta` < 0; AMD tags
    entries by ASID only, and the model's VM owns every non-zero ASID)."""

    ep4ta: int
    start: int
    npages: int
    # what a concrete TLB (kvmtlb.cost.tlb) needs to apply it: the kinds it may remove, and that
    # it depends on each entry's address fields, so it is tested entry by entry
    per_entry = True

    @property
    def kinds(self) -> tuple[type, ...]:
        return INTEL_GPA_KINDS if self.ep4ta >= 0 else AMD_GPA_KINDS

    def _covers(self, base: int, size: int) -> bool:
        """The range holds all of [base, base + size)."""
        return self.start <= base and base + size <= self.start + self.npages * PAGE_SIZE

    def matches(self, e: Entry) -> bool:
        if self.ep4ta >= 0:
            if not isinstance(e, INTEL_GPA_KINDS) or e.ep4ta != self.ep4ta:
                return False
        elif not isinstance(e, AMD_GPA_KINDS) or e.asid == 0:
            return False
        if isinstance(e, GuestPhysicalPsc | NestedPsc):
            shift = level_shift(e.level)
            return self._covers(e.region << shift, 1 << shift)
        if isinstance(e, CombinedPsc):
            return False  # keyed by GVA; points at a guest table (see the module header)
        if isinstance(e, GuestPhysicalTranslation | NestedTranslation):
            return self._covers(e.page, e.size)
        # combined (Intel) / ASID-tagged (AMD) translations: the GPA they were made from
        gpa: int = e.gpa
        if gpa < 0:
            return False
        size: int = e.size
        return self._covers(page_base(gpa, size), size)


def hv_flush_space_invalidation(vmx: bool, root: int) -> Invalidation:
    """What HvCallFlushGuestPhysicalAddressSpace of hierarchy `root` removes on one processor."""
    if vmx:
        return Invalidation(
            check_ids(("intel.hv.flush-gpa-space",)), (Select(INTEL_GPA_KINDS, ep4ta=root),)
        )
    return Invalidation(
        check_ids(("amd.hv.flush-gpa-space",)), (Select(ASID_KINDS, asid_nonzero=True),)
    )


def hv_flush_list_invalidation(vmx: bool, root: int, start: int, npages: int) -> Invalidation:
    """What HvCallFlushGuestPhysicalAddressList of one range of hierarchy `root` removes."""
    rule = "intel.hv.flush-gpa-list" if vmx else "amd.hv.flush-gpa-list"
    clause = GpaRange(root if vmx else -1, start, npages)
    return Invalidation(check_ids((rule,)), (clause,))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class HvFlushGuestPhysicalAddressSpace:
    """The L0 hypervisor's flush of every mapping derived from hierarchy `root` (EPTP's
    address or nCR3), as it lands on one processor."""

    vmx: bool
    root: int

    def describe(self) -> str:
        return f"HvFlushGuestPhysicalAddressSpace({self.root:#x})"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        return Effect(cpu, Done(), hv_flush_space_invalidation(self.vmx, self.root))


@dataclass(frozen=True, slots=True)
class HvFlushGuestPhysicalAddressList:
    """The L0 hypervisor's flush of the GPAs [start, start + npages pages) of hierarchy `root`,
    as it lands on one processor."""

    vmx: bool
    root: int
    start: int
    npages: int

    def describe(self) -> str:
        end = self.start + self.npages * PAGE_SIZE
        return f"HvFlushGuestPhysicalAddressList({self.root:#x}, GPA {self.start:#x}-{end - 1:#x})"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        inv = hv_flush_list_invalidation(self.vmx, self.root, self.start, self.npages)
        return Effect(cpu, Done(), inv)


__all__ = [
    "GpaRange",
    "HvFlushGuestPhysicalAddressList",
    "HvFlushGuestPhysicalAddressSpace",
    "hv_flush_list_invalidation",
    "hv_flush_space_invalidation",
]
