"""Native TLB-invalidating operations: INVLPG, INVPCID, MOV to CR3/CR4/CR0, task switch, #PF.

Models SDM §4.10.4.1 and the Vol. 2A instruction pages, as seen from VMX (§28.3.3.1, new
§29.4.3.1, rule intel.native.scope): each operation removes linear and combined mappings of the
current VPID only (combined ones for every EP4TA) and never guest-physical ones. In VMX non-root
operation each instruction first checks whether the VMCS makes it exit (intel.vmx.conditional-exit,
§25.1.3 / §25.3); an exiting instruction removes nothing, the VMM must emulate it.

Also here: the architectural operations that are not instructions of software but apply the same
scope (power-up/RESET, INIT, GETSEC leaves).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmtlb.hw.addr import PCID_MASK, PHYS_ADDR_MASK, is_canonical
from kvmtlb.hw.cpu import (
    CR0_PG,
    CR3_NOFLUSH,
    CR4_PAE,
    CR4_PCIDE,
    CR4_PGE,
    CR4_SMEP,
    CR4_SMXE,
    VMX_NONROOT,
    VMX_OFF,
    VMX_ROOT,
    Capabilities,
    Cpu,
    Regs,
)
from kvmtlb.hw.effect import Effect, Readings
from kvmtlb.hw.invalidation import (
    COMBINED,
    INTEL_ALL,
    L_AND_C,
    L_AND_C_PSC,
    L_AND_C_TLB,
    NOTHING,
    Invalidation,
    Select,
)
from kvmtlb.hw.outcomes import GP, UD, Blocked, Done, Fault
from kvmtlb.hw.rules import check_ids
from kvmtlb.hw.vmexit import vm_exit


def _inv(rules: tuple[str, ...], *clauses: Select) -> Invalidation:
    return Invalidation(check_ids(rules), clauses)


# -- INVLPG ---------------------------------------------------------------------------------------
def invlpg_invalidation(vpid: int, pcid: int, addr: int) -> Invalidation:
    """intel.invlpg.page, intel.invlpg.psc under intel.native.scope."""
    return _inv(
        ("intel.invlpg.page", "intel.invlpg.psc", "intel.native.scope", "intel.split-pages"),
        Select(L_AND_C_TLB, vpid=vpid, pcid=pcid, or_global=True, addr=addr, whole_page=True),
        Select(L_AND_C_PSC, vpid=vpid, pcid=pcid),
    )


@dataclass(frozen=True, slots=True)
class Invlpg:
    addr: int

    def describe(self) -> str:
        return f"INVLPG {self.addr:#x}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        if cpu.mode == VMX_NONROOT and cpu.vmcs is not None and cpu.vmcs.invlpg_exiting:
            return vm_exit(cpu, "INVLPG")
        if cpu.regs.cpl > 0:
            return Effect(cpu, Fault(GP, "INVLPG at CPL > 0"))
        if not is_canonical(self.addr):
            return Effect(cpu, Done(), _inv(("intel.invlpg.noncanonical",)))
        return Effect(cpu, Done(), invlpg_invalidation(cpu.vpid, cpu.pcid, self.addr))


# -- INVPCID --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Invpcid:
    """INVPCID with register operand `type` and descriptor {PCID (bits 63:0), linear address}."""

    type: int
    pcid: int = 0
    addr: int = 0

    def describe(self) -> str:
        return f"INVPCID type {self.type} PCID {self.pcid:#x} addr {self.addr:#x}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        """Checks in the order of the INVPCID page and §25.3 (intel.invpcid.faults)."""
        r = cpu.regs
        if not caps.invpcid:
            return Effect(cpu, Fault(UD, "INVPCID not supported"))
        if cpu.mode == VMX_NONROOT and cpu.vmcs is not None:
            if not cpu.vmcs.enable_invpcid:
                return Effect(cpu, Fault(UD, "'enable INVPCID' is 0"))
            if cpu.vmcs.invlpg_exiting:
                return vm_exit(cpu, "INVPCID")
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
        v = cpu.vpid
        scope = "intel.native.scope"
        if self.type == 0:
            inv = _inv(
                ("intel.invpcid.address", scope),
                Select(L_AND_C_TLB, vpid=v, pcid=self.pcid, glob=False, addr=self.addr),
                Select(L_AND_C_PSC, vpid=v, pcid=self.pcid, addr=self.addr),
            )
        elif self.type == 1:
            inv = _inv(
                ("intel.invpcid.single", scope),
                Select(L_AND_C_TLB, vpid=v, pcid=self.pcid, glob=False),
                Select(L_AND_C_PSC, vpid=v, pcid=self.pcid),
            )
        elif self.type == 2:
            inv = _inv(("intel.invpcid.all-globals", scope), Select(L_AND_C, vpid=v))
        else:
            inv = _inv(
                ("intel.invpcid.all", scope),
                Select(L_AND_C_TLB, vpid=v, glob=False),
                Select(L_AND_C_PSC, vpid=v),
            )
        return Effect(cpu, Done(), inv)


# -- MOV to CR3 -----------------------------------------------------------------------------------
def mov_cr3_invalidation(vpid: int, pcid: int) -> Invalidation:
    """intel.mov-cr3.flush: non-global translations and all PSC entries of PCID `pcid`."""
    return _inv(
        ("intel.mov-cr3.flush", "intel.native.scope"),
        Select(L_AND_C_TLB, vpid=vpid, pcid=pcid, glob=False),
        Select(L_AND_C_PSC, vpid=vpid, pcid=pcid),
    )


@dataclass(frozen=True, slots=True)
class MovToCr3:
    """MOV to CR3 with source `value` (bit 63 is the no-flush hint when CR4.PCIDE = 1)."""

    value: int

    def describe(self) -> str:
        nf = " (no-flush)" if self.value & CR3_NOFLUSH else ""
        return f"MOV to CR3 {self.value & ~CR3_NOFLUSH:#x}{nf}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        r = cpu.regs
        if cpu.mode == VMX_NONROOT and cpu.vmcs is not None and cpu.vmcs.cr3_load_exiting:
            return vm_exit(cpu, "MOV to CR3")
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
        return Effect(new, Done(), mov_cr3_invalidation(cpu.vpid, pcid))


# -- MOV to CR4 -----------------------------------------------------------------------------------
def all_pcids_invalidation(vpid: int, rule: str) -> Invalidation:
    """Everything of the VPID, every PCID, global translations included (PGE change etc.)."""
    return _inv((rule, "intel.native.scope"), Select(L_AND_C, vpid=vpid))


@dataclass(frozen=True, slots=True)
class MovToCr4:
    value: int

    def describe(self) -> str:
        return f"MOV to CR4 {self.value:#x}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        r = cpu.regs
        value = self.value
        if cpu.mode == VMX_NONROOT and cpu.vmcs is not None:
            v = cpu.vmcs
            if (value ^ v.cr4_read_shadow) & v.cr4_guest_host_mask:
                return vm_exit(cpu, "MOV to CR4")
            value = (r.cr4 & v.cr4_guest_host_mask) | (value & ~v.cr4_guest_host_mask)
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
        vpid = cpu.vpid
        if changed & CR4_PGE:
            return Effect(new, Done(), all_pcids_invalidation(vpid, "intel.mov-cr4.pge"))
        if changed & CR4_PCIDE and not value & CR4_PCIDE:
            return Effect(new, Done(), all_pcids_invalidation(vpid, "intel.mov-cr4.pcide-clear"))
        if changed & CR4_PAE or (changed & CR4_SMEP and value & CR4_SMEP):
            inv = _inv(
                ("intel.mov-cr4.pae-smep", "intel.native.scope"),
                Select(L_AND_C, vpid=vpid, pcid=r.pcid),
            )
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

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        r = cpu.regs
        value = self.value
        if cpu.mode == VMX_NONROOT and cpu.vmcs is not None:
            v = cpu.vmcs
            if (value ^ v.cr0_read_shadow) & v.cr0_guest_host_mask:
                return vm_exit(cpu, "MOV to CR0")
            value = (r.cr0 & v.cr0_guest_host_mask) | (value & ~v.cr0_guest_host_mask)
        if r.cpl > 0:
            return Effect(cpu, Fault(GP, "MOV to CR0 at CPL > 0"))
        changed = r.cr0 ^ value
        if changed & CR0_PG and not value & CR0_PG:
            if r.cr4 & CR4_PCIDE:
                return Effect(cpu, Fault(GP, "clearing CR0.PG with CR4.PCIDE = 1"))
            if r.cs_l:
                return Effect(cpu, Fault(GP, "clearing CR0.PG in 64-bit mode"))
            new = cpu._replace(regs=r._replace(cr0=value))
            return Effect(new, Done(), all_pcids_invalidation(cpu.vpid, "intel.mov-cr0.pg-clear"))
        if changed & CR0_PG and not r.cr4 & CR4_PAE:
            return Effect(cpu, Fault(GP, "setting CR0.PG for IA-32e paging needs CR4.PAE"))
        new = cpu._replace(regs=r._replace(cr0=value))
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

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        if cpu.mode == VMX_NONROOT:
            return vm_exit(cpu, "task switch")
        if cpu.regs.ia32e:
            return Effect(cpu, Fault(GP, "task switches are not supported in IA-32e mode"))
        new = cpu._replace(regs=cpu.regs._replace(cr3=self.cr3 & PHYS_ADDR_MASK))
        inv = _inv(
            ("intel.task-switch", "intel.native.scope"),
            Select(L_AND_C_TLB, vpid=cpu.vpid, pcid=0, glob=False),
            Select(L_AND_C_PSC, vpid=cpu.vpid, pcid=0),
        )
        return Effect(new, Done(), inv)


# -- page fault -----------------------------------------------------------------------------------
def page_fault_invalidation(vpid: int, pcid: int, addr: int) -> Invalidation:
    """intel.pf.invalidate: what would be used for `addr`, and only the PSC entries on its path."""
    return _inv(
        ("intel.pf.invalidate", "intel.native.scope", "intel.split-pages"),
        Select(L_AND_C_TLB, vpid=vpid, pcid=pcid, or_global=True, addr=addr, whole_page=True),
        Select(L_AND_C_PSC, vpid=vpid, pcid=pcid, addr=addr),
    )


# -- reset, INIT, GETSEC --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reset:
    """Power-up or RESET: every mapping goes (intel.reset); the processor leaves VMX operation."""

    def describe(self) -> str:
        return "RESET"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        regs = Regs(cr0=0, cr3=0, cr4=0, cs_l=False)
        return Effect(Cpu(VMX_OFF, regs), Done(), _inv(("intel.reset",), Select(INTEL_ALL)))


@dataclass(frozen=True, slots=True)
class Init:
    """INIT: a VM exit in non-root, blocked in VMX root, otherwise a reset of CR0/CR3/CR4 that
    the manuals do not list as invalidating anything (intel.init)."""

    def describe(self) -> str:
        return "INIT"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        if cpu.mode == VMX_NONROOT:
            return vm_exit(cpu, "INIT signal")
        if cpu.mode == VMX_ROOT:
            return Effect(cpu, Blocked())
        new = cpu._replace(regs=Regs(cr0=0, cr3=0, cr4=0, cs_l=False))
        return Effect(new, Done(), _inv(("intel.init",)))


@dataclass(frozen=True, slots=True)
class Getsec:
    """GETSEC[leaf] for a leaf that invalidates TLBs: ENTERACCS, EXITAC, SENTER, WAKEUP."""

    leaf: str = "enteraccs"

    def describe(self) -> str:
        return f"GETSEC[{self.leaf.upper()}]"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        smxe = bool(cpu.regs.cr4 & CR4_SMXE)
        if cpu.mode == VMX_NONROOT:
            if smxe:
                return vm_exit(cpu, "GETSEC")
            return Effect(cpu, Fault(UD, "GETSEC with CR4.SMXE = 0"))
        if not caps.smx or not smxe:
            return Effect(cpu, Fault(UD, "GETSEC needs SMX and CR4.SMXE"))
        if cpu.mode == VMX_ROOT and self.leaf == "senter":
            return Effect(cpu, Fault(UD, "GETSEC[SENTER] in VMX operation"))
        return Effect(cpu, Done(), _inv(("intel.getsec",), Select(INTEL_ALL)))


__all__ = [
    "CR0_PG",
    "CR4_PGE",
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
