"""The architectural state of one Intel logical processor, and the tags it makes current.

Models: VMX operation (off, root, non-root; SDM §23.1), the control registers that decide what is
cached and how it is tagged (CR0.PG, CR3 with its PCID, CR4.PGE/PCIDE/PAE/SMEP), the current VMCS
(the controls the TLB rules read, and the guest- and host-state CR values that VM entries and exits
load), and the MAY-set of cached entries (an int over the scenario's universe).

Abstracts away: segmentation beyond CS.L (64-bit code), EFER (IA-32e mode is active exactly when
CR0.PG = 1: the model's paging is always 4-level), interrupts, general registers, MSRs. The
processor always runs at the CPL in `Regs.cpl` (0 for both the hypervisor and the guest kernel).
"""

from __future__ import annotations

from typing import NamedTuple

from kvmtlb.hw.addr import PCID_MASK, PHYS_ADDR_MASK
from kvmtlb.hw.layout import Format
from kvmtlb.hw.tags import IntelEptTags, IntelLinearTags
from kvmtlb.hw.walk import WalkContext

# CR0 and CR4 bits (SDM §2.5).
CR0_PE = 1 << 0
CR0_WP = 1 << 16
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_VMXE = 1 << 13
CR4_SMXE = 1 << 14
CR4_PCIDE = 1 << 17
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
CR4_PKE = 1 << 22
CR3_NOFLUSH = 1 << 63

CR0_DEFAULT = CR0_PE | CR0_WP | CR0_PG
CR4_DEFAULT = CR4_PAE | CR4_PGE | CR4_VMXE

# VMX operation.
VMX_OFF = 0
VMX_ROOT = 1
VMX_NONROOT = 2


class Regs(NamedTuple):
    """The control state that decides translation and tagging."""

    cr0: int = CR0_DEFAULT
    cr3: int = 0
    cr4: int = CR4_DEFAULT
    cs_l: bool = True  # executing 64-bit code (CS.L = 1 in IA-32e mode)
    cpl: int = 0

    @property
    def pg(self) -> bool:
        return bool(self.cr0 & CR0_PG)

    @property
    def ia32e(self) -> bool:
        """IA-32e mode is active (EFER.LMA); the model's EFER.LME is always 1."""
        return bool(self.cr0 & CR0_PG)

    @property
    def pcid(self) -> int:
        """The current PCID (intel.tag.pcid): CR3[11:0] with CR4.PCIDE = 1, else 000H."""
        return self.cr3 & PCID_MASK if self.cr4 & CR4_PCIDE else 0

    @property
    def root(self) -> int:
        return self.cr3 & PHYS_ADDR_MASK


class Vmcs(NamedTuple):
    """The VMCS fields the model reads (SDM ch. 24); `ident` names the VMCS region."""

    ident: int = 0
    vpid: int = 0
    enable_vpid: bool = False
    enable_ept: bool = False
    eptp: int = 0
    unrestricted_guest: bool = False
    invlpg_exiting: bool = False
    cr3_load_exiting: bool = False
    enable_invpcid: bool = True
    cr0_guest_host_mask: int = 0
    cr0_read_shadow: int = 0
    cr4_guest_host_mask: int = 0
    cr4_read_shadow: int = 0
    pf_exiting: bool = False
    eptp_list: tuple[int, ...] = ()
    enable_pml: bool = False  # secondary control 'enable PML' (SDM §28.2.5; hw/dirty.py)
    pml: tuple[int, ...] = ()  # the page-modification log: the GPAs logged, oldest first
    guest: Regs = Regs()
    host: Regs = Regs()
    launched: bool = False


class Cpu(NamedTuple):
    """One logical processor: VMX mode, registers, current VMCS, SMM flag and MAY-set."""

    mode: int = VMX_ROOT
    regs: Regs = Regs()
    vmcs: Vmcs | None = None
    smm: bool = False
    may: int = 0

    @property
    def vpid(self) -> int:
        """The current VPID (intel.tag.vpid)."""
        v = self.vmcs
        if self.mode == VMX_NONROOT and v is not None and v.enable_vpid and not self.smm:
            return v.vpid
        return 0

    @property
    def ept_in_use(self) -> bool:
        v = self.vmcs
        return self.mode == VMX_NONROOT and v is not None and v.enable_ept and not self.smm

    @property
    def ep4ta(self) -> int:
        """The current EP4TA (intel.tag.ep4ta): EPTP bits 51:12, as an address; 0 if none."""
        return self.vmcs.eptp & PHYS_ADDR_MASK if self.ept_in_use and self.vmcs else 0

    @property
    def pcid(self) -> int:
        return self.regs.pcid

    def walk_context(self) -> WalkContext:
        """What this processor's walks depend on now (its tags, roots, CR0.PG, CR4.PGE)."""
        r = self.regs
        pge = bool(r.cr4 & CR4_PGE)
        if self.smm:
            # SMM runs with paging off in the model: nothing is filled while in SMM.
            return WalkContext(IntelLinearTags(0, 0), 0, -1, Format.EPT, False, pge)
        if self.ept_in_use:
            ep4ta = self.ep4ta
            return WalkContext(
                IntelEptTags(self.vpid, r.pcid, ep4ta), r.root, ep4ta, Format.EPT, r.pg, pge
            )
        return WalkContext(IntelLinearTags(self.vpid, r.pcid), r.root, -1, Format.EPT, r.pg, pge)


class Capabilities(NamedTuple):
    """What the processor supports: IA32_VMX_EPT_VPID_CAP and the CPUID bits the rules read."""

    ept_vpid_cap: int
    ept: bool = True
    vpid: bool = True
    invpcid: bool = True
    pcid: bool = True
    smx: bool = False
