"""A native x86 processor over guest-physical memory: the reference a guest is judged against.

Models what design.md calls the native reference TLB: the translations a non-virtualized processor
could hold and use, given the same guest page-table writes and the same guest invalidations. Its
physical address space is the guest's (a translation's frame is a GPA), it has no VPID, EPT or
ASID, and it walks the guest's page tables where they live (their static backing pages). It
executes the guest's own instructions (INVLPG, MOV to CR3/CR4, INVPCID) with native semantics.
"""

from __future__ import annotations

from typing import NamedTuple

from kvmtlb.hw.cpu import CR4_PGE, VMX_OFF, Regs
from kvmtlb.hw.layout import Format
from kvmtlb.hw.tags import IntelLinearTags
from kvmtlb.hw.walk import WalkContext


class NativeCpu(NamedTuple):
    """A native logical processor: registers and MAY-set (field layout like `Cpu`)."""

    mode: int = VMX_OFF
    regs: Regs = Regs()
    vmcs: None = None
    smm: bool = False
    may: int = 0

    @property
    def vpid(self) -> int:
        return 0

    @property
    def ept_in_use(self) -> bool:
        return False

    @property
    def pcid(self) -> int:
        return self.regs.pcid

    def walk_context(self) -> WalkContext:
        r = self.regs
        return WalkContext(
            IntelLinearTags(0, r.pcid),
            r.root,
            -1,
            Format.EPT,
            r.pg,
            bool(r.cr4 & CR4_PGE),
            guest_physical=True,
        )


def native_contexts(root: int, pcids: tuple[int, ...]) -> list[WalkContext]:
    """Every context a native reference over the guest hierarchy `root` can reach."""
    return [
        WalkContext(IntelLinearTags(0, p), root, -1, Format.EPT, True, pge, guest_physical=True)
        for p in sorted(set(pcids))
        for pge in (True, False)
    ]
