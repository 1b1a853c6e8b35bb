"""Address kinds, translation tags and the 4-level paging geometry.

Models: the three address spaces a virtualized access crosses (guest-virtual, guest-physical,
host-physical; KVM's gva_t, gpa_t, hpa_t) and the tags the manuals attach to cached
translations (VPID, PCID, EP4TA on Intel; ASID on AMD), as distinct types.

Abstracts away: 5-level paging (LA57) and 1 GiB pages. Linear addresses are 48-bit canonical,
physical addresses have MAXPHYADDR = 46 bits. The model only needs 4 KiB and 2 MiB pages for
the rules it checks; nothing in the flush rules depends on the other sizes.
"""

from __future__ import annotations

from typing import NewType

from kvmtlb.hw.errors import AddressError

GVA = NewType("GVA", int)
GPA = NewType("GPA", int)
HPA = NewType("HPA", int)

VPID = NewType("VPID", int)
PCID = NewType("PCID", int)
EP4TA = NewType("EP4TA", int)
ASID = NewType("ASID", int)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
LARGE_PAGE_SIZE = 1 << 21
LEVELS = 4
ENTRIES_PER_TABLE = 512
LINEAR_BITS = 48
MAXPHYADDR = 46
PHYS_ADDR_MASK = ((1 << MAXPHYADDR) - 1) & ~(PAGE_SIZE - 1)

# Scenario files may name pages below 4 GiB only (scenario-format.md); table pages and fresh
# host pages live above that, where a scenario cannot name them.
NAMEABLE_LIMIT = 1 << 32

PCID_MASK = 0xFFF
VPID_LIMIT = 1 << 16


# What the SDM calls the entry of each level of 4-level paging (§4.5).
ENTRY_NAMES = {1: "PTE", 2: "PDE", 3: "PDPTE", 4: "PML4E"}


def level_shift(level: int) -> int:
    """Bit position of the lowest address bit translated by a level-`level` entry."""
    return PAGE_SHIFT + 9 * (level - 1)


def table_index(addr: int, level: int) -> int:
    """Index of the level-`level` entry (4 = PML4E, 1 = PTE) that maps `addr`."""
    return (addr >> level_shift(level)) & (ENTRIES_PER_TABLE - 1)


def region(addr: int, level: int) -> int:
    """Key of the paging-structure-cache entry caching the level-`level` entry for `addr`.

    SDM §4.10.3.1: PML4E cache entries are keyed by linear bits 47:39, PDPTE cache by 47:30,
    PDE cache by 47:21. The same holds for EPT paging-structure caches over guest-physical bits.
    """
    return (addr & ((1 << LINEAR_BITS) - 1)) >> level_shift(level)


def page_base(addr: int, size: int = PAGE_SIZE) -> int:
    return addr & ~(size - 1)


def is_canonical(addr: int) -> bool:
    """48-bit canonical form: bits 63:47 all equal (SDM Vol. 1 §3.3.7.1)."""
    top = addr >> (LINEAR_BITS - 1)
    return top == 0 or top == (1 << (64 - LINEAR_BITS + 1)) - 1


def check_page(addr: int, what: str, *, limit: int = 1 << 64) -> int:
    """Validate a page address given to the model's API; raise AddressError if it is not one."""
    if not isinstance(addr, int) or isinstance(addr, bool):
        raise AddressError(f"{what} must be an integer page address, got {addr!r}")
    if addr < 0 or addr >= limit:
        raise AddressError(f"{what} {addr:#x} is outside the model's address space (< {limit:#x})")
    if addr & (PAGE_SIZE - 1):
        raise AddressError(f"{what} {addr:#x} is not 4 KiB aligned")
    return addr
