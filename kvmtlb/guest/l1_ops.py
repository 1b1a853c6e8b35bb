"""The operations of a guest that is itself a hypervisor (L1) running a nested guest (L2).

A vCPU's thread may contain, besides the guest kernel's ops (kvmtlb.guest.ops), L1's VMX
instructions: `vmxon`, `vmxoff`, `vmlaunch ROOT [vpid=N]`, `vmresume [vpid=N]`, `vmptrld ROOT`
(the vmcs12 launched on ROOT current again), `invvpid TYPE [vpid=N] [GVA]`, and with nested EPT
`invept TYPE`, `ept_map L2GPA -> L1GPA RIGHTS` and `ept_unmap L2GPA` (L1's stores to its
EPT12); on AMD `vmrun ROOT [asid=N] [tlb_control=N]` and `invlpga GVA [asid=N]`, and with
nested NPT `npt_map L2GPA -> L1GPA RIGHTS` and `npt_unmap L2GPA` (L1's stores to its NPT12);
and `vmcall` (VMMCALL on AMD), the instruction with which L2 exits to L1. Between a `vmlaunch`
/ `vmresume` / `vmrun` and the next `vmcall` the vCPU runs L2: the ordinary guest ops there
are L2's (its page table is the vmcs12's GUEST_CR3, the scenario's table ROOT).
docs/scenarios.md, "Nested VMX".

vmcs12 is modelled by what the TLB rules read: VPID (`vpid=N`, N > 0 enables VPID in vmcs12,
vpid=0 disables it), GUEST_CR3 (the L2 page table) and 'enable EPT': off on a shadow-paging L0;
on an EPT L0 (nested EPT) on, with EPTP = one of the scenario's EPT12 tables (L2 GPA -> L1
GPA): [ept12] (named `default`) or an [ept12.NAME] (`ept=NAME` on vmlaunch, vmresume, invept,
ept_map and ept_unmap). The ops hold the table's index (`ept`, 0 for [ept12]) and its name as
written (`ept_name`, "" when the op did not name one).
vmcb12 likewise: ASID, TLB_CONTROL, CR3, and NP_ENABLE: on with an [npt12] table (nested NPT on
an NPT L0), nCR3 = that table; off otherwise (on a shadow-paging L0, or on an NPT L0 without
[npt12]: kvm/nested_ept01.py).
"""

from __future__ import annotations

from typing import NamedTuple


class VmxonOp(NamedTuple):
    line: int = 0

    def describe(self) -> str:
        return "vmxon"


class VmxoffOp(NamedTuple):
    line: int = 0

    def describe(self) -> str:
        return "vmxoff"


class VmlaunchOp(NamedTuple):
    """VMPTRLD of a fresh vmcs12 whose GUEST_CR3 is page table `root` and VPID `vpid` (0: VPID
    disabled in vmcs12), then VMLAUNCH."""

    root: str
    vpid: int
    line: int = 0
    ept: int = 0  # nested EPT: vmcs12's EPTP, an EPT12 table's index
    ept_name: str = ""

    def describe(self) -> str:
        return f"vmlaunch {self.root} vpid={self.vpid}{_ept(self.ept_name)}"


class VmptrldOp(NamedTuple):
    """VMPTRLD of the vmcs12 L1 launched L2 on page table `root` with (kept in L1's memory, as
    L1 left it), making it current again for a VMRESUME. `vpid` is that vmcs12's VPID, which
    the parser works out from the thread (model/nested_scenario.py:resolve_vmptrld)."""

    root: str
    vpid: int = -1
    line: int = 0
    ept: int = 0  # nested EPT: that vmcs12's EPTP as L1 left it (resolve_vmptrld too)

    def describe(self) -> str:
        return f"vmptrld {self.root}"


class VmresumeOp(NamedTuple):
    """VMRESUME of the current vmcs12; with vpid >= 0, L1 first writes that VPID into it."""

    vpid: int = -1
    line: int = 0
    ept: int = -1  # nested EPT: L1 first writes this EPT12's EPTP into vmcs12 (-1: unchanged)
    ept_name: str = ""

    def describe(self) -> str:
        return "vmresume" + (f" vpid={self.vpid}" if self.vpid >= 0 else "") + _ept(self.ept_name)


class InvvpidOp(NamedTuple):
    type: int
    vpid: int
    gva: int = 0
    line: int = 0

    def describe(self) -> str:
        extra = f" {self.gva:#x}" if self.type == 0 else ""
        return f"invvpid {self.type} vpid={self.vpid}{extra}"


class VmcallOp(NamedTuple):
    """L2 executes VMCALL: a VM exit to L1 (through L0, which reflects it)."""

    line: int = 0

    def describe(self) -> str:
        return "vmcall"


class VmrunOp(NamedTuple):
    """SVM: VMRUN of L1's vmcb12: CR3 page table `root`, ASID `asid`, TLB_CONTROL
    `tlb_control` (0 nothing, 1 every ASID, 3 the ASID, 7 its non-global entries)."""

    root: str
    asid: int = 1
    tlb_control: int = 0
    line: int = 0

    def describe(self) -> str:
        tc = f" tlb_control={self.tlb_control}" if self.tlb_control else ""
        return f"vmrun {self.root} asid={self.asid}{tc}"


class InvlpgaOp(NamedTuple):
    """SVM: L1's INVLPGA of page `gva` in ASID `asid`."""

    gva: int
    asid: int
    line: int = 0

    def describe(self) -> str:
        return f"invlpga {self.gva:#x} asid={self.asid}"


class InveptOp(NamedTuple):
    """Nested EPT: L1's INVEPT of `type` 1 (single context: the EPTP of vmcs12, EPT12) or 2 (all
    contexts)."""

    type: int
    line: int = 0
    # single-context: the operand's EPTP, an EPT12 table's index (the parser resolves an
    # unnamed one to vmcs12's current EPTP: model/nested_scenario.py:resolve_vmptrld)
    ept: int = -1
    ept_name: str = ""

    def describe(self) -> str:
        return f"invept {self.type}{_ept(self.ept_name)}"


class EptMapOp(NamedTuple):
    """Nested EPT: L1's store to its EPT12 leaf of L2 GPA `l2gpa`: L1 GPA `l1gpa` with `rights`
    (r, w, x), or not present when `l1gpa` < 0 (`ept_unmap`)."""

    l2gpa: int
    l1gpa: int
    rights: str
    line: int = 0
    ept: int = 0  # the EPT12 table stored to
    ept_name: str = ""

    def describe(self) -> str:
        if self.l1gpa < 0:
            return f"ept_unmap {self.l2gpa:#x}{_ept(self.ept_name)}"
        return f"ept_map {self.l2gpa:#x} -> {self.l1gpa:#x} {self.rights}{_ept(self.ept_name)}"


class NptMapOp(NamedTuple):
    """Nested NPT: L1's store to its NPT12 leaf of L2 GPA `l2gpa`: L1 GPA `l1gpa` with `rights`
    (r: present, w: writable, x: executable; U/S is always set, nested accesses being user
    accesses), or not present when `l1gpa` < 0 (`npt_unmap`)."""

    l2gpa: int
    l1gpa: int
    rights: str
    line: int = 0

    def describe(self) -> str:
        if self.l1gpa < 0:
            return f"npt_unmap {self.l2gpa:#x}"
        return f"npt_map {self.l2gpa:#x} -> {self.l1gpa:#x} {self.rights}"


L1Op = (
    VmxonOp
    | VmxoffOp
    | VmlaunchOp
    | VmresumeOp
    | VmptrldOp
    | InvvpidOp
    | VmcallOp
    | VmrunOp
    | InvlpgaOp
    | InveptOp
    | EptMapOp
    | NptMapOp
)
L1_OPS = (
    VmxonOp,
    VmxoffOp,
    VmlaunchOp,
    VmresumeOp,
    VmptrldOp,
    InvvpidOp,
    VmcallOp,
    VmrunOp,
    InvlpgaOp,
    InveptOp,
    EptMapOp,
    NptMapOp,
)
VMX_OPS = (VmxonOp, VmxoffOp, VmlaunchOp, VmresumeOp, VmptrldOp, InvvpidOp, InveptOp, EptMapOp)
EPT_OPS = (InveptOp, EptMapOp)
SVM_OPS = (VmrunOp, InvlpgaOp, NptMapOp)
NPT_OPS = (NptMapOp,)

__all__ = [
    "EPT_OPS",
    "L1_OPS",
    "NPT_OPS",
    "SVM_OPS",
    "VMX_OPS",
    "EptMapOp",
    "InveptOp",
    "InvlpgaOp",
    "InvvpidOp",
    "L1Op",
    "NptMapOp",
    "VmcallOp",
    "VmlaunchOp",
    "VmptrldOp",
    "VmresumeOp",
    "VmrunOp",
    "VmxoffOp",
    "VmxonOp",
]


def _ept(name: str) -> str:
    return f" ept={name}" if name else ""
