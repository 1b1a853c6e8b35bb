"""AMD SVM: VMRUN with TLB_CONTROL, #VMEXIT, INVLPGA, the operations that flush every ASID, and
the vendor's access and fault semantics.

Models APM Vol. 2 §15.5, §15.16 and §15.25:

- VMRUN checks the VMCB (amd.vmrun.checks), applies TLB_CONTROL (Table 15-9: 0 nothing, 1 every
  ASID including the host's, 3 the VMCB's ASID, 7 its non-global entries; 3 and 7 need
  FlushByAsid, and without it the APM leaves them undefined: the model guarantees no flush and
  says so by the rule amd.tlb-control.unsupported), loads the guest's registers and makes the
  VMCB's ASID current. It flushes nothing else (amd.vmrun.no-flush) and never clears TLB_CONTROL
  (amd.tlb-control.persists).
- Everything a guest caches, guest-derived or nested (NPT-derived), is tagged by ASID only
  (amd.npt.asid-only): a new nCR3 under the same ASID leaves the old entries usable.
- INVLPGA removes one virtual page's translation in a given ASID (amd.invlpga).
- SMI, RSM and translation-affecting MSR writes flush every ASID (amd.flush-all-asids).
- A #PF invalidates like on Intel within the ASID; a nested page fault invalidates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmtlb.hw.addr import is_canonical
from kvmtlb.hw.cpu import CR0_WP, CR4_SMAP, CR4_SMEP
from kvmtlb.hw.effect import Effect, Readings
from kvmtlb.hw.errors import ModelError
from kvmtlb.hw.invalidation import ASID_KINDS, Invalidation, Select, union
from kvmtlb.hw.mappings import AsidPsc, AsidTranslation, NestedPsc, NestedTranslation
from kvmtlb.hw.outcomes import (
    GP,
    UD,
    Access,
    AccessOutcome,
    Done,
    Fault,
    NestedPageFault,
    PageFault,
    VmEntryFailed,
)
from kvmtlb.hw.rules import check_ids
from kvmtlb.hw.scope import amd_scope
from kvmtlb.hw.vmcb import (
    ASID_HOST,
    SVM_GUEST,
    SVM_OFF,
    TLB_CONTROL_DO_NOTHING,
    TLB_CONTROL_FLUSH_ALL_ASID,
    TLB_CONTROL_FLUSH_ASID,
    TLB_CONTROL_FLUSH_ASID_LOCAL,
    SvmCapabilities,
    SvmCpu,
    Vmcb,
    svm_vmexit,
)
from kvmtlb.hw.walk import NotPresent, Stage2Fault, WalkResult, guest_denies, stage2_denies
from kvmtlb.hw.x86 import page_fault_invalidation


def _inv(rules: tuple[str, ...], *clauses: Select) -> Invalidation:
    return Invalidation(check_ids(rules), clauses)


def tlb_control_invalidation(tlb_control: int, asid: int, caps: SvmCapabilities) -> Invalidation:
    """What VMRUN removes for a TLB_CONTROL value (APM Table 15-9)."""
    if tlb_control == TLB_CONTROL_DO_NOTHING:
        return _inv(("amd.tlb-control.nothing", "amd.tlb-control.persists"))
    if tlb_control == TLB_CONTROL_FLUSH_ALL_ASID:
        return _inv(("amd.tlb-control.flush-all", "amd.tlb-control.persists"), Select(ASID_KINDS))
    by_asid = caps.flush_by_asid
    if tlb_control == TLB_CONTROL_FLUSH_ASID and by_asid:
        return _inv(
            ("amd.tlb-control.flush-asid", "amd.tlb-control.persists"),
            Select(ASID_KINDS, asid=asid),
        )
    if tlb_control == TLB_CONTROL_FLUSH_ASID_LOCAL and by_asid:
        return _inv(
            ("amd.tlb-control.flush-asid-local", "amd.tlb-control.persists"),
            Select((AsidTranslation,), asid=asid, glob=False),
            Select((AsidPsc, NestedTranslation, NestedPsc), asid=asid),
        )
    # 3 or 7 without FlushByAsid, or a reserved value: undefined; no flush is guaranteed.
    return _inv(("amd.tlb-control.unsupported", "amd.tlb-control.persists"))


@dataclass(frozen=True, slots=True)
class Vmrun:
    """VMRUN of `vmcb` (its contents travel with the value). Guest CR0/CR3/CR4 loaded from the
    VMCB, even a changed paging mode, flush nothing: that flush is the hypervisor's obligation
    through TLB_CONTROL or a new ASID (amd.vmcb-paging-change)."""

    vmcb: Vmcb

    def describe(self) -> str:
        tc = self.vmcb.tlb_control
        extra = f", TLB_CONTROL {tc}" if tc else ""
        return f"VMRUN (ASID {self.vmcb.asid}{extra})"

    def execute(self, cpu: SvmCpu, caps: SvmCapabilities, readings: Readings) -> Effect:
        if cpu.mode == SVM_OFF:
            return Effect(cpu, Fault(UD, "VMRUN with EFER.SVME = 0"))
        if cpu.mode == SVM_GUEST:
            return svm_vmexit(cpu, "VMRUN")
        if cpu.regs.cpl > 0:
            return Effect(cpu, Fault(GP, "VMRUN at CPL > 0"))
        v = self.vmcb
        checks = _inv(("amd.vmrun.checks",))
        if v.asid == ASID_HOST or v.asid >= caps.nasid:
            return Effect(cpu, VmEntryFailed(f"VMEXIT_INVALID: ASID {v.asid}"), checks)
        if v.np_enable and not caps.npt:
            return Effect(cpu, VmEntryFailed("VMEXIT_INVALID: nested paging unsupported"), checks)
        inv = tlb_control_invalidation(v.tlb_control, v.asid, caps)
        new = cpu._replace(mode=SVM_GUEST, regs=v.guest, vmcb=v, host=cpu.regs)
        return Effect(new, Done(), union(_inv(("amd.vmrun.no-flush",)), inv))


@dataclass(frozen=True, slots=True)
class SvmExitEvent:
    """A #VMEXIT caused by something outside the guest's instruction stream (an interrupt)."""

    reason: str = "external interrupt"

    def describe(self) -> str:
        return f"#VMEXIT ({self.reason})"

    def execute(self, cpu: SvmCpu, caps: SvmCapabilities, readings: Readings) -> Effect:
        return svm_vmexit(cpu, self.reason)


@dataclass(frozen=True, slots=True)
class Invlpga:
    """INVLPGA: invalidate the translation of virtual page `addr` (rAX) in ASID `asid` (ECX).
    #UD with EFER.SVME = 0, #GP at CPL != 0, a #VMEXIT when intercepted (amd.invlpga.faults)."""

    addr: int
    asid: int

    def describe(self) -> str:
        return f"INVLPGA {self.addr:#x}, ASID {self.asid}"

    def execute(self, cpu: SvmCpu, caps: SvmCapabilities, readings: Readings) -> Effect:
        if cpu.mode == SVM_OFF:
            return Effect(cpu, Fault(UD, "INVLPGA with EFER.SVME = 0"))
        asid = self.asid
        if cpu.mode == SVM_GUEST and cpu.vmcb is not None:
            if cpu.vmcb.intercept_invlpga:
                return svm_vmexit(cpu, "INVLPGA")
            asid = cpu.asid  # a guest can only reach its own entries (unconfirmed)
        if cpu.regs.cpl > 0:
            return Effect(cpu, Fault(GP, "INVLPGA at CPL != 0"))
        if not is_canonical(self.addr):
            return Effect(cpu, Done(), _inv(("amd.invlpga",)))
        glob = None if readings.invlpga_removes_globals else False
        inv = _inv(
            ("amd.invlpga",),
            Select((AsidTranslation,), asid=asid, addr=self.addr, glob=glob),
            Select((AsidPsc,), asid=asid, addr=self.addr),
        )
        return Effect(cpu, Done(), inv)


@dataclass(frozen=True, slots=True)
class FlushAllAsids:
    """An operation that flushes every ASID: an SMI, RSM, or a WRMSR to an MTRR, an IORR or
    another translation-affecting MSR (`cause` names it)."""

    cause: str = "WRMSR to an MTRR"

    def describe(self) -> str:
        return self.cause

    def execute(self, cpu: SvmCpu, caps: SvmCapabilities, readings: Readings) -> Effect:
        return Effect(cpu, Done(), _inv(("amd.flush-all-asids",), Select(ASID_KINDS)))


class AmdArch:
    """Access outcomes and fault delivery on AMD (APM §15.16, §15.25)."""

    def classify(self, cpu: SvmCpu, gva: int, access: str, r: WalkResult) -> AccessOutcome:
        if isinstance(r, NotPresent):
            return PageFault(gva, "not present")
        if isinstance(r, Stage2Fault):
            return NestedPageFault(r.gpa, gva if r.final else -1)
        cr4 = cpu.regs.cr4
        if guest_denies(
            r,
            access,
            smep=bool(cr4 & CR4_SMEP),
            smap=bool(cr4 & CR4_SMAP),
            wp=bool(cpu.regs.cr0 & CR0_WP),
        ):
            return PageFault(gva, "rights")
        if stage2_denies(r, access):
            return NestedPageFault(r.gpa, gva)
        return Access(gva, r.gpa, r.frame, r.rights, r.erights)

    def fault_effect(self, cpu: SvmCpu, outcome: AccessOutcome, readings: Readings) -> Effect:
        if isinstance(outcome, PageFault):
            inv = page_fault_invalidation(amd_scope(cpu.asid), cpu.pcid, outcome.gva)
            if cpu.mode == SVM_GUEST and cpu.vmcb is not None and cpu.vmcb.intercept_pf:
                eff = svm_vmexit(cpu, "#PF")
                if readings.intercepted_pf_invalidates:
                    return eff._replace(invalidation=union(inv, eff.invalidation))
                return eff
            return Effect(cpu, Done(), inv)
        if isinstance(outcome, NestedPageFault):
            if not cpu.npt_in_use:
                raise ModelError("#NPF while nested paging is not in use")
            eff = svm_vmexit(cpu, f"#NPF at GPA {outcome.gpa:#x}")
            return eff._replace(
                invalidation=union(_inv(("amd.npf.no-invalidate",)), eff.invalidation)
            )
        raise ModelError(f"{outcome!r} is not a fault")


__all__ = [
    "AmdArch",
    "FlushAllAsids",
    "Invlpga",
    "SvmExitEvent",
    "Vmrun",
    "tlb_control_invalidation",
]
