"""Paging-structure entry formats: IA-32e guest entries and EPT entries, and access rights.

Models: the bits of an IA-32e paging-structure entry (SDM §4.5: P, R/W, U/S, PS, G, XD and the
address field) and of an EPT entry (SDM §28.2.2, new §29.3.2: read, write, execute, the leaf
memory type, PS), and how walks combine them into rights (§4.10.2.2: R/W and U/S are ANDed over
the levels, XD is ORed; EPT R/W/X are ANDed).

Accessed flags are abstracted away (the processor sets A before caching, §4.10.2.3, so every
cached entry is modelled as accessed), and so are the guest's dirty flags. The dirty flag of an
EPT leaf (bit 9, SDM §28.2.4, new §29.3.5) is modelled: a translation caches it (§4.10.2.2: the
dirty flag is among what a TLB entry holds), as `E_D` in the EPT rights, because a write through
a translation cached dirty sets nothing and logs nothing (page-modification logging, §28.2.5);
see hw/dirty.py. Also abstracted away: protection keys, PAT/PCD/PWT and EPT memory types beyond
"WB leaf", and the user-execute bit of mode-based execute control. None of them affects which
translations an invalidation must remove.

Rights are small ints so that walks and cached entries stay compact: guest rights use
G_W | G_U | G_X (X meaning "XD clear"), EPT and NPT rights use E_R | E_W | E_X.
"""

from __future__ import annotations

from kvmtlb.hw.addr import PHYS_ADDR_MASK

# IA-32e paging-structure entry bits (SDM §4.5, Tables 4-14..4-20).
P = 1 << 0
RW = 1 << 1
US = 1 << 2
PS = 1 << 7
G = 1 << 8
XD = 1 << 63

# EPT paging-structure entry bits (SDM §28.2.2).
EPT_R = 1 << 0
EPT_W = 1 << 1
EPT_X = 1 << 2
EPT_MEMTYPE_WB = 6 << 3
EPT_PS = 1 << 7
EPT_D = 1 << 9  # the dirty flag of an EPT leaf, used when the EPTP enables A/D flags

# Rights of a translation, guest layer.
G_W = 1
G_U = 2
G_X = 4
G_ALL = G_W | G_U | G_X
# Rights of a translation, EPT/NPT layer.
E_R = 1
E_W = 2
E_X = 4
E_ALL = E_R | E_W | E_X
# Not a right: the EPT leaf's dirty flag as the translation cached it (hw/dirty.py).
E_D = 8


def make_pte(
    addr: int,
    *,
    writable: bool = True,
    user: bool = False,
    executable: bool = True,
    glob: bool = False,
    large: bool = False,
    present: bool = True,
) -> int:
    """An IA-32e paging-structure entry pointing at `addr` (a table or a page frame)."""
    value = addr & PHYS_ADDR_MASK
    if present:
        value |= P
    if writable:
        value |= RW
    if user:
        value |= US
    if not executable:
        value |= XD
    if glob:
        value |= G
    if large:
        value |= PS
    return value


def make_npt(addr: int, rights: int = 7, *, large: bool = False) -> int:
    """A nested-page-table leaf (IA-32e format, U/S set: nested accesses are user accesses)
    granting the E_R | E_W | E_X `rights` it can express (read is implied by present)."""
    return make_pte(
        addr, writable=bool(rights & 2), user=True, executable=bool(rights & 4), large=large
    )


def make_table_pte(addr: int) -> int:
    """A non-leaf guest entry granting every right, so the leaf decides the rights."""
    return make_pte(addr, writable=True, user=True, executable=True)


def pte_present(value: int) -> bool:
    return bool(value & P)


def pte_addr(value: int) -> int:
    return value & PHYS_ADDR_MASK


def pte_rights(value: int) -> int:
    """Guest rights granted by one entry: W from R/W, U from U/S, X unless XD."""
    rights = 0
    if value & RW:
        rights |= G_W
    if value & US:
        rights |= G_U
    if not value & XD:
        rights |= G_X
    return rights


def make_ept(addr: int, rights: int = E_ALL, *, large: bool = False, leaf: bool = True) -> int:
    """An EPT entry pointing at `addr` with EPT rights `rights` (E_R | E_W | E_X)."""
    value = (addr & PHYS_ADDR_MASK) | (rights & E_ALL)
    if leaf:
        value |= EPT_MEMTYPE_WB
    if large:
        value |= EPT_PS
    return value


def ept_present(value: int) -> bool:
    """SDM §28.2.2: an EPT entry is present when any of bits 2:0 is set."""
    return bool(value & 7)


def ept_misconfigured(value: int) -> bool:
    """SDM §28.2.3.1: write permission without read permission is a misconfiguration (the only
    misconfiguration the model's entries can express)."""
    return bool(value & EPT_W) and not value & EPT_R


def ept_rights(value: int) -> int:
    return value & E_ALL


def format_guest_rights(rights: int) -> str:
    return "".join(c if rights & b else "-" for c, b in (("w", G_W), ("u", G_U), ("x", G_X)))


def format_ept_rights(rights: int) -> str:
    """ "rwx" with "-" for a missing right, and " dirty" when the translation cached the leaf's
    dirty flag set (E_D)."""
    text = "".join(c if rights & b else "-" for c, b in (("r", E_R), ("w", E_W), ("x", E_X)))
    return text + " dirty" if rights & E_D else text
