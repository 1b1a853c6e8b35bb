"""Native TLB-invalidating operations: INVLPG, INVPCID, MOV to CR3/CR4/CR0, task switch, #PF.

Models SDM §4.10.4.1 and the Vol. 2A instruction pages, and APM Vol. 2 §15.16.1 for AMD. Each
operation acts within the scope of the current tag (scope.py): on Intel the linear and combined
mappings of the current VPID (combined ones for every EP4TA), never guest-physical ones
(intel.native.scope, §28.3.3.1); on AMD the current ASID (amd.guest-ops.asid). In a guest, the
hypervisor's intercept check comes first: an intercepted operation flushes nothing.

The vendors differ in which control-register changes flush: Intel flushes on a CR4.PGE change,
CR4.PCIDE 1→0, a PAE change or SMEP 0→1, and CR0.PG 1→0; AMD on changes of CR4.PGE, PAE or PSE
and on setting or clearing CR0.PG (§15.16.1).

Also here: the architectural operations that are not instructions of software but apply the same
scope (power-up/RESET, INIT, GETSEC leaves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmtlb.hw.addr import PCID_MASK, PHYS_ADDR_MASK, is_canonical
from kvmtlb.hw.cpu import (
    CR0_PG,
    CR3_NOFLUSH,
    CR4_PAE,
    CR4_PCIDE,
    CR4_PGE,
    CR4_PSE,
    CR4_SMEP,
    CR4_SMXE,
    VMX_OFF,
    VMX_ROOT,
    Cpu,
    Regs,
)
from kvmtlb.hw.effect import Effect, Readings
from kvmtlb.hw.invalidation import (
    ALL_KINDS,
    COMBINED,
    INTEL_ALL,
    NOTHING,
    Invalidation,
    Select,
)
from kvmtlb.hw.outcomes import GP, UD, Blocked, Done, Fault
from kvmtlb.hw.rules import check_ids
from kvmtlb.hw.scope import Scope, intercept, loaded_cr, native_scope, vendor


def _inv(rules: tuple[str, ...], *clauses: Select) -> Invalidation:
    return Invalidation(check_ids(rules), clauses)


def _rule(cpu: Any, intel: str, amd: str) -> str:
    return amd if vendor(cpu) == "amd" else intel


# -- INVLPG ---------------------------------------------------------------------------------------
def invlpg_invalidation(scope: Scope, pcid: int, addr: int) -> Invalidation:
    """intel.invlpg.page, intel.invlpg.psc (AMD: amd.invlpg) within `scope`: the translations
    for the page (every piece of a split large page) under the current PCID, global ones under
    any PCID, and every paging-structure-cache entry of the current PCID."""
    rules = ("amd.invlpg",) if scope.tag == "asid" else ("intel.invlpg.page", "intel.invlpg.psc")
    return _inv(
        (*rules, scope.rule, "intel.split-pages"),
        scope.translations(pcid=pcid, or_global=True, addr=addr, whole_page=True),
        scope.pscs(pcid=pcid),
    )


@dataclass(frozen=True, slots=True)
class Invlpg:
    addr: int

    def describe(self) -> str:
        return f"INVLPG {self.addr:#x}"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        exit_ = intercept(cpu, "invlpg")
        if exit_ is not None:
            return exit_
        if cpu.regs.cpl > 0:
            return Effect(cpu, Fault(GP, "INVLPG at CPL > 0"))
        if not is_canonical(self.addr):
            return Effect(cpu, Done(), _inv(("intel.invlpg.noncanonical",)))
        return Effect(cpu, Done(), invlpg_invalidation(native_scope(cpu), cpu.pcid, self.addr))


# -- INVPCID --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Invpcid:
    """INVPCID with register operand `type` and descriptor {PCID (bits 63:0), linear address}."""

    type: int
    pcid: int = 0
    addr: int = 0

    def describe(self) -> str:
        return f"INVPCID type {self.type} PCID {self.pcid:#x} addr {self.addr:#x}"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        """Checks in the order of the INVPCID page and §25.3 (intel.invpcid.faults)."""
        r = cpu.regs
        if not caps.invpcid:
            return Effect(cpu, Fault(UD, "INVPCID not supported"))
        exit_ = intercept(cpu, "invpcid")
        if exit_ is not None:
            return exit_
        if r.cpl > 0:
            return Effect(cpu, Fault(GP, "INVPCID at CPL > 0"))
        if not 0 <= self.type <= 3:
            return Effect(cpu, Fault(GP, f"INVPCID type {self.type} > 3"))
        if self.pcid >> 12:
            return Effect(cpu, Fault(GP, "INVPCID descriptor bits 63:12 are not 0"))
        if self.type in (0, 1) and self.pcid != 0 and not r.cr4 & CR4_PCIDE:
            return Effect(cpu, Fault(GP, "INVPCID PCID != 0 with CR4.PCIDE = 0"))
        if self.type == 0 and not is_canonical(self.addr):
            return Effect(cpu, Fault(GP, "INVPCID non-canonical address"))
        s = native_scope(cpu)
        if self.type == 0:
            inv = _inv(
                ("intel.invpcid.address", s.rule),
                s.translations(pcid=self.pcid, glob=False, addr=self.addr),
                s.pscs(pcid=self.pcid, addr=self.addr),
            )
        elif self.type == 1:
            inv = _inv(
                ("intel.invpcid.single", s.rule),
                s.translations(pcid=self.pcid, glob=False),
                s.pscs(pcid=self.pcid),
            )
        elif self.type == 2:
            inv = _inv(("intel.invpcid.all-globals", s.rule), s.everything())
        else:
            inv = _inv(("intel.invpcid.all", s.rule), s.translations(glob=False), s.pscs())
        return Effect(cpu, Done(), inv)


# -- MOV to CR3 -----------------------------------------------------------------------------------
def mov_cr3_invalidation(scope: Scope, pcid: int) -> Invalidation:
    """intel.mov-cr3.flush (AMD: amd.mov-cr3): the non-global translations and all
    paging-structure-cache entries of PCID `pcid`, within `scope`."""
    rule = "amd.mov-cr3" if scope.tag == "asid" else "intel.mov-cr3.flush"
    return _inv(
        (rule, scope.rule),
        scope.translations(pcid=pcid, glob=False),
        scope.pscs(pcid=pcid),
    )


@dataclass(frozen=True, slots=True)
class MovToCr3:
    """MOV to CR3 with source `value` (bit 63 is the no-flush hint when CR4.PCIDE = 1)."""

    value: int

    def describe(self) -> str:
        nf = " (no-flush)" if self.value & CR3_NOFLUSH else ""
        return f"MOV to CR3 {self.value & ~CR3_NOFLUSH:#x}{nf}"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        r = cpu.regs
        exit_ = intercept(cpu, "mov_cr3")
        if exit_ is not None:
            return exit_
        if r.cpl > 0:
            return Effect(cpu, Fault(GP, "MOV to CR3 at CPL > 0"))
        # intel.mov-cr3.faults: reserved bits; bit 63 without PCIDE (KVM's reading).
        pcide = bool(r.cr4 & CR4_PCIDE)
        noflush = bool(self.value & CR3_NOFLUSH)
        stored = self.value & ~CR3_NOFLUSH
        if noflush and not pcide:
            return Effect(cpu, Fault(GP, "CR3 bit 63 set with CR4.PCIDE = 0"))
        if stored & ~(PHYS_ADDR_MASK | PCID_MASK):
            return Effect(cpu, Fault(GP, "reserved CR3 bits set"))
        new = cpu._replace(regs=r._replace(cr3=stored))
        if noflush:
            return Effect(new, Done(), _inv(("intel.mov-cr3.noflush",)))
        pcid = stored & PCID_MASK if pcide else 0
        return Effect(new, Done(), mov_cr3_invalidation(native_scope(cpu), pcid))


# -- MOV to CR4 -----------------------------------------------------------------------------------
def all_pcids_invalidation(scope: Scope, rule: str) -> Invalidation:
    """Everything in `scope`, every PCID, global translations included (PGE change etc.)."""
    return _inv((rule, scope.rule), scope.everything())


@dataclass(frozen=True, slots=True)
class MovToCr4:
    value: int

    def describe(self) -> str:
        return f"MOV to CR4 {self.value:#x}"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        r = cpu.regs
        exit_ = intercept(cpu, "mov_cr4", self.value)
        if exit_ is not None:
            return exit_
        value = loaded_cr(cpu, "cr4", self.value)
        if r.cpl > 0:
            return Effect(cpu, Fault(GP, "MOV to CR4 at CPL > 0"))
        old = r.cr4
        changed = old ^ value
        if changed & CR4_PCIDE and value & CR4_PCIDE:
            if not caps.pcid:
                return Effect(cpu, Fault(GP, "PCID not supported"))
            if r.cr3 & PCID_MASK or not r.ia32e:
                return Effect(cpu, Fault(GP, "setting CR4.PCIDE needs CR3[11:0] = 0 and IA-32e"))
        if changed & CR4_PAE and not value & CR4_PAE and r.ia32e:
            return Effect(cpu, Fault(GP, "clearing CR4.PAE in IA-32e mode"))
        new = cpu._replace(regs=r._replace(cr4=value))
        s = native_scope(cpu)
        if vendor(cpu) == "amd":
            if changed & (CR4_PGE | CR4_PAE | CR4_PSE):
                return Effect(new, Done(), all_pcids_invalidation(s, "amd.mov-cr4"))
            if changed & CR4_PCIDE and not value & CR4_PCIDE:
                return Effect(new, Done(), all_pcids_invalidation(s, "intel.mov-cr4.pcide-clear"))
            return Effect(new, Done(), _inv(("amd.mov-cr4",)) if changed else NOTHING)
        if changed & CR4_PGE:
            return Effect(new, Done(), all_pcids_invalidation(s, "intel.mov-cr4.pge"))
        if changed & CR4_PCIDE and not value & CR4_PCIDE:
            return Effect(new, Done(), all_pcids_invalidation(s, "intel.mov-cr4.pcide-clear"))
        if changed & CR4_PAE or (changed & CR4_SMEP and value & CR4_SMEP):
            inv = _inv(("intel.mov-cr4.pae-smep", s.rule), s.everything(pcid=r.pcid))
            return Effect(new, Done(), inv)
        if changed & CR4_PCIDE:
            return Effect(new, Done(), _inv(("intel.mov-cr4.pcide-set",)))
        return Effect(new, Done(), _inv(("intel.mov-cr4.other",)) if changed else NOTHING)


# -- MOV to CR0 -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MovToCr0:
    value: int

    def describe(self) -> str:
        return f"MOV to CR0 {self.value:#x}"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        r = cpu.regs
        exit_ = intercept(cpu, "mov_cr0", self.value)
        if exit_ is not None:
            return exit_
        value = loaded_cr(cpu, "cr0", self.value)
        if r.cpl > 0:
            return Effect(cpu, Fault(GP, "MOV to CR0 at CPL > 0"))
        changed = r.cr0 ^ value
        s = native_scope(cpu)
        if changed & CR0_PG and not value & CR0_PG:
            if r.cr4 & CR4_PCIDE:
                return Effect(cpu, Fault(GP, "clearing CR0.PG with CR4.PCIDE = 1"))
            if r.cs_l:
                return Effect(cpu, Fault(GP, "clearing CR0.PG in 64-bit mode"))
            new = cpu._replace(regs=r._replace(cr0=value))
            rule = _rule(cpu, "intel.mov-cr0.pg-clear", "amd.mov-cr0")
            return Effect(new, Done(), all_pcids_invalidation(s, rule))
        if changed & CR0_PG and not r.cr4 & CR4_PAE:
            return Effect(cpu, Fault(GP, "setting CR0.PG for IA-32e paging needs CR4.PAE"))
        new = cpu._replace(regs=r._replace(cr0=value))
        if changed & CR0_PG and vendor(cpu) == "amd":
            return Effect(new, Done(), all_pcids_invalidation(s, "amd.mov-cr0"))
        if changed & CR0_PG and readings.pg_set_flushes:
            inv = _inv(("intel.mov-cr0.other",), Select(COMBINED, vpid=cpu.vpid, pcid=0))
            return Effect(new, Done(), inv)
        return Effect(new, Done(), _inv(("intel.mov-cr0.other",)) if changed else NOTHING)


# -- task switch ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TaskSwitch:
    """A task switch that loads CR3 with `cr3` (SDM §7.3, §4.10.4.1)."""

    cr3: int

    def describe(self) -> str:
        return f"task switch (CR3 {self.cr3:#x})"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        exit_ = intercept(cpu, "task_switch")
        if exit_ is not None:
            return exit_
        if cpu.regs.ia32e:
            return Effect(cpu, Fault(GP, "task switches are not supported in IA-32e mode"))
        new = cpu._replace(regs=cpu.regs._replace(cr3=self.cr3 & PHYS_ADDR_MASK))
        s = native_scope(cpu)
        inv = _inv(
            ("intel.task-switch", s.rule),
            s.translations(pcid=0, glob=False),
            s.pscs(pcid=0),
        )
        return Effect(new, Done(), inv)


# -- page fault -----------------------------------------------------------------------------------
def page_fault_invalidation(scope: Scope, pcid: int, addr: int) -> Invalidation:
    """intel.pf.invalidate (AMD: amd.pf.invalidate): what would be used for `addr` (every piece
    of a split large page), and only the paging-structure-cache entries on its path."""
    rule = "amd.pf.invalidate" if scope.tag == "asid" else "intel.pf.invalidate"
    return _inv(
        (rule, scope.rule, "intel.split-pages"),
        scope.translations(pcid=pcid, or_global=True, addr=addr, whole_page=True),
        scope.pscs(pcid=pcid, addr=addr),
    )


# -- reset, INIT, GETSEC --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reset:
    """Power-up or RESET: every mapping goes (intel.reset); the processor leaves VMX operation."""

    def describe(self) -> str:
        return "RESET"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        regs = Regs(cr0=0, cr3=0, cr4=0, cs_l=False)
        new = cpu._replace(mode=VMX_OFF, regs=regs)
        new = new._replace(vmcb=None) if hasattr(cpu, "vmcb") else new._replace(vmcs=None)
        return Effect(new, Done(), _inv(("intel.reset",), Select(ALL_KINDS)))


@dataclass(frozen=True, slots=True)
class Init:
    """INIT: a VM exit in a guest, blocked in VMX root operation, otherwise a reset of
    CR0/CR3/CR4 that the manuals do not list as invalidating anything (intel.init)."""

    def describe(self) -> str:
        return "INIT"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        exit_ = intercept(cpu, "init")
        if exit_ is not None:
            return exit_
        if isinstance(cpu, Cpu) and cpu.mode == VMX_ROOT:
            return Effect(cpu, Blocked())
        new = cpu._replace(regs=Regs(cr0=0, cr3=0, cr4=0, cs_l=False))
        return Effect(new, Done(), _inv(("intel.init",)))


@dataclass(frozen=True, slots=True)
class Getsec:
    """GETSEC[leaf] for a leaf that invalidates TLBs: ENTERACCS, EXITAC, SENTER, WAKEUP."""

    leaf: str = "enteraccs"

    def describe(self) -> str:
        return f"GETSEC[{self.leaf.upper()}]"

    def execute(self, cpu: Any, caps: Any, readings: Readings) -> Effect:
        exit_ = intercept(cpu, "getsec")
        if exit_ is not None:
            return exit_
        if not caps.smx or not cpu.regs.cr4 & CR4_SMXE:
            return Effect(cpu, Fault(UD, "GETSEC needs SMX and CR4.SMXE"))
        if cpu.mode == VMX_ROOT and self.leaf == "senter":
            return Effect(cpu, Fault(UD, "GETSEC[SENTER] in VMX operation"))
        return Effect(cpu, Done(), _inv(("intel.getsec",), Select(INTEL_ALL)))


__all__ = [
    "Getsec",
    "Init",
    "Invlpg",
    "Invpcid",
    "MovToCr0",
    "MovToCr3",
    "MovToCr4",
    "Reset",
    "TaskSwitch",
    "all_pcids_invalidation",
    "invlpg_invalidation",
    "mov_cr3_invalidation",
    "page_fault_invalidation",
]
