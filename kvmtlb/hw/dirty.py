"""EPT dirty flags and page-modification logging (Intel), for writes.

Models SDM §28.2.4 and §28.2.5 (new §29.3.5, §29.3.6) with the TLB rules of §4.10.2.2 and
§4.10.4.3, for a processor whose current EPTP enables accessed and dirty flags (bit 6):

- a write to a guest-physical address sets the dirty flag of the EPT leaf that maps it, if it is
  clear. The processor sets it in memory, atomically with the access;
- a translation caches the leaf's dirty flag (`E_D` in its EPT rights, hw/walk.py). A write
  through a translation cached dirty sets nothing. A translation cached clean is not used for
  a write as it is: the processor walks the EPT to set the flag, so the write takes the
  translation the walk finds now (and sets the flag if memory still has it clear, or finds it
  set by another processor and sets nothing). Hence clearing a dirty flag without invalidating
  (§4.10.4.3) lets later writes through a translation cached dirty go unnoticed;
- with page-modification logging on (the secondary control 'enable PML', `Vmcs.enable_pml`),
  each dirty flag the processor changes from 0 to 1 logs the access's guest-physical address
  (4 KiB aligned) to the log. The log is the PML page and its index; the model keeps the logged
  addresses in order with the VMCS (`Vmcs.pml`), as it models no data memory, and never fills
  it (a log-full VM exit takes 512 entries; a scenario names a handful of frames).

The flag is set in the leaf a walk of memory finds now (`leaf_slot`: a 2 MiB EPT leaf has one
too). Abstracts away: accessed flags (every cached entry is accessed), the dirty flags of NPT
(AMD has no page-modification logging) and of guest paging, and EPT A/D's treatment of guest
paging-structure reads as writes (§28.2.3.2: it decides which EPT violations occur, and the model's
guest tables are mapped writable in the EPT). KVM sets an EPT leaf's dirty flag only when its
EPTP enables them (kvm/pml.py), so a dirty flag is in the model's memory only when the processor
reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvmtlb.hw.addr import table_index
from kvmtlb.hw.cpu import Cpu
from kvmtlb.hw.errors import AddressError
from kvmtlb.hw.outcomes import Access
from kvmtlb.hw.paging import E_D, EPT_D, EPT_PS, pte_addr
from kvmtlb.hw.vmx import EPTP_AD
from kvmtlb.hw.walk import Translated, WalkResult

if TYPE_CHECKING:
    from kvmtlb.hw.layout import Memory


def tracks_dirty(cpu: object) -> bool:
    """Whether `cpu` uses EPT now with an EPTP that enables accessed and dirty flags."""
    if not isinstance(cpu, Cpu) or not cpu.ept_in_use:
        return False
    return cpu.vmcs is not None and bool(cpu.vmcs.eptp & EPTP_AD)


def write_results(
    cached: Sequence[WalkResult], walked: Sequence[WalkResult]
) -> tuple[WalkResult, ...]:
    """What a write may use: the translations cached dirty, and for the rest what a walk of
    memory finds now (`walked`: the TLB-free walk, whose translations are cached too)."""
    kept = [r for r in cached if not isinstance(r, Translated) or r.erights & E_D or r in walked]
    return tuple(dict.fromkeys([*kept, *walked]))


def sets_dirty(o: object) -> bool:
    """Whether a write with outcome `o` (under tracks_dirty) sets an EPT dirty flag."""
    return isinstance(o, Access) and not o.erights & E_D


def logs_write(cpu: object, o: object) -> bool:
    """Whether a write with outcome `o` on `cpu` is logged by the processor itself: it sets an
    EPT dirty flag with 'enable PML' on (§28.2.5)."""
    return tracks_dirty(cpu) and sets_dirty(o) and cpu.vmcs.enable_pml  # type: ignore[attr-defined]


def pml_holds(cpus: Sequence[object], gpa: int) -> bool:
    """Whether the page of `gpa` is in the PML log of the current VMCS of one of `cpus`."""
    page = gpa & ~0xFFF
    return any(page in v.pml for v in (getattr(c, "vmcs", None) for c in cpus) if v is not None)


def leaf_slot(memory: Memory, ept_root: int, gpa: int) -> int:
    """The memory slot of the EPT leaf that maps `gpa` in the hierarchy at `ept_root`, found by
    walking memory as it is now (a level-2 entry that maps a 2 MiB page, else the PTE)."""
    table = ept_root
    for level in (4, 3, 2, 1):
        n = memory.layout.slot_at.get((table, table_index(gpa, level)))
        if n is None:
            raise AddressError(f"no level-{level} EPT entry maps {gpa:#x} under {ept_root:#x}")
        value = memory.values[n]
        if level == 1 or (level == 2 and value & EPT_PS):
            return n
        table = pte_addr(value)
    raise AssertionError("unreachable")


def log_write(cpu: Cpu, gpa: int) -> Cpu:
    """§28.2.5: with 'enable PML' the dirty flag just set logs the 4 KiB page of `gpa`."""
    v = cpu.vmcs
    if v is None or not v.enable_pml:
        return cpu
    return cpu._replace(vmcs=v._replace(pml=(*v.pml, gpa & ~0xFFF)))


__all__ = [
    "EPTP_AD",
    "EPT_D",
    "leaf_slot",
    "log_write",
    "logs_write",
    "pml_holds",
    "sets_dirty",
    "tracks_dirty",
    "write_results",
]
