"""The architectural state of one AMD logical processor with SVM, and #VMEXIT.

Models: host mode and guest mode (APM Vol. 2 §15.1), the current ASID (0, the host, whenever no
guest runs: amd.asid.host-zero, §15.16.1, §15.6), the VMCB fields the TLB rules read (ASID,
TLB_CONTROL, nested paging enable and nCR3, the intercepts of TLB-relevant guest operations, the
guest's control registers), the host state that #VMEXIT restores, and the MAY-set.

#VMEXIT (§15.6) saves the guest's control registers into the VMCB and reloads the host's; it flushes
nothing (amd.vmrun.no-flush). The VMCB stays with the processor after the exit, so the
hypervisor can read the guest state it saved.

Abstracts away: VMCB clean bits (the model always reloads every field; a clean-bit bug is outside
the model), the host save area's other contents, EFER (SVME is on whenever the processor is in
host or guest mode; long mode is on exactly when CR0.PG = 1), interrupts and event injection.
"""

from __future__ import annotations

from typing import NamedTuple

from kvmtlb.hw.cpu import CR4_PGE, Regs
from kvmtlb.hw.effect import Effect
from kvmtlb.hw.errors import ModelError
from kvmtlb.hw.invalidation import Invalidation
from kvmtlb.hw.layout import Format
from kvmtlb.hw.outcomes import VmExit
from kvmtlb.hw.rules import check_ids
from kvmtlb.hw.tags import AmdTags
from kvmtlb.hw.walk import WalkContext

SVM_OFF = 0  # EFER.SVME = 0
SVM_HOST = 1
SVM_GUEST = 2

ASID_HOST = 0

# TLB_CONTROL values (APM Table 15-9).
TLB_CONTROL_DO_NOTHING = 0
TLB_CONTROL_FLUSH_ALL_ASID = 1
TLB_CONTROL_FLUSH_ASID = 3
TLB_CONTROL_FLUSH_ASID_LOCAL = 7


class Vmcb(NamedTuple):
    """The VMCB fields the model reads (APM Appendix B); `ident` names the VMCB."""

    ident: int = 0
    asid: int = 1
    tlb_control: int = TLB_CONTROL_DO_NOTHING
    np_enable: bool = True
    ncr3: int = 0
    intercept_invlpg: bool = False
    intercept_invlpga: bool = True
    intercept_invpcid: bool = False
    intercept_cr0_write: bool = False
    intercept_cr3_write: bool = False
    intercept_cr4_write: bool = False
    intercept_pf: bool = False
    intercept_task_switch: bool = True
    guest: Regs = Regs()


class SvmCapabilities(NamedTuple):
    """CPUID Fn8000_000A: FlushByAsid (EDX bit 6), NASID (EBX), nested paging; PCID, INVPCID."""

    flush_by_asid: bool = True
    nasid: int = 16
    npt: bool = True
    pcid: bool = True
    invpcid: bool = True
    smx: bool = False


class SvmCpu(NamedTuple):
    """One AMD logical processor: mode, registers, VMCB, saved host state, SMM flag, MAY-set.

    The MAY-set is the processor's own (amd.asid.per-cpu): an ASID names entries of this
    processor only, so the same ASID on another processor may name stale entries there."""

    mode: int = SVM_HOST
    regs: Regs = Regs()
    vmcb: Vmcb | None = None
    host: Regs = Regs()  # the host state #VMEXIT restores (saved by VMRUN)
    smm: bool = False
    may: int = 0

    @property
    def asid(self) -> int:
        """The current ASID: the VMCB's in guest mode, 0 (the host) otherwise."""
        if self.mode == SVM_GUEST and self.vmcb is not None and not self.smm:
            return self.vmcb.asid
        return ASID_HOST

    @property
    def npt_in_use(self) -> bool:
        v = self.vmcb
        return self.mode == SVM_GUEST and v is not None and v.np_enable and not self.smm

    @property
    def pcid(self) -> int:
        return self.regs.pcid

    def walk_context(self) -> WalkContext:
        r = self.regs
        pge = bool(r.cr4 & CR4_PGE)
        if self.smm:
            return WalkContext(AmdTags(0, 0, False), 0, -1, Format.NPT, False, pge)
        if self.npt_in_use and self.vmcb is not None:
            tags = AmdTags(self.asid, r.pcid, True)
            return WalkContext(tags, r.root, self.vmcb.ncr3, Format.NPT, r.pg, pge)
        return WalkContext(AmdTags(self.asid, r.pcid, False), r.root, -1, Format.NPT, r.pg, pge)


def svm_vmexit(cpu: SvmCpu, reason: str) -> Effect:
    """#VMEXIT: save the guest's registers in the VMCB, reload the host's; nothing is flushed."""
    if cpu.mode != SVM_GUEST or cpu.vmcb is None:
        raise ModelError(f"#VMEXIT ({reason}) outside guest mode")
    saved = cpu.vmcb._replace(guest=cpu.regs)
    new = cpu._replace(mode=SVM_HOST, regs=cpu.host, vmcb=saved)
    return Effect(new, VmExit(reason), Invalidation(check_ids(("amd.vmrun.no-flush",)), ()))
