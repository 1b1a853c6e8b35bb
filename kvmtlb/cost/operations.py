"""What a hardware event counts as: the operation names of the cost model's counters.

Every instruction and transition a run executes goes through one place (machine.py) and is named
here from the event and its architectural effect, never from the code path that issued it, so a
user's policy is counted by what it does. The names are the counters' (`op.<name>`) and the cost
table's (costs.toml):

- flushes KVM issues: `invept-single`, `invept-all`, `invvpid-addr`, `invvpid-single`,
  `invvpid-all`, `invvpid-single-globals` (only those that succeeded), `tlb-control-1`,
  `tlb-control-3`, `tlb-control-7` (a VMRUN with that TLB_CONTROL), `new-asid` (a VMRUN with an
  ASID its VMCB did not run with last time);
- VMX transitions: `vm-entry`, `vm-exit`, and of those the ones that flush because VPID is off
  (`vm-entry-vpid-off`, `vm-exit-vpid-off`: rules intel.vmentry.no-vpid, intel.vmexit.no-vpid);
  on AMD `vm-entry` is VMRUN and `vm-exit` #VMEXIT;
- the guest's own flushes: `invlpg`, `mov-cr3`, `mov-cr4` (one that invalidates), `invpcid`,
  `invlpga`; faults: `page-fault`, `page-fault-exit` (a #PF KVM intercepts: shadow paging),
  `ept-violation`, `npf`;
- VMCS operations: `vmptrld`, `vmclear`, `vmwrite`;
- KVM on Hyper-V (`hv_range_flush`): `hv-flush-space` and `hv-flush-list`, the L0 hypervisor's
  HvFlushGuestPhysicalAddressSpace / HvFlushGuestPhysicalAddressList, counted once per processor
  they land on (kvmtlb.hw.hyperv).

The "primary" operation of an event is the one its invalidation belongs to: removed entries are
attributed to it (`overflush.<op>` for those still valid).
"""

from __future__ import annotations

from typing import Any

from kvmtlb.hw.effect import Effect
from kvmtlb.hw.hyperv import HvFlushGuestPhysicalAddressList, HvFlushGuestPhysicalAddressSpace
from kvmtlb.hw.outcomes import Done, VmExit, VmSucceed
from kvmtlb.hw.svm import Invlpga, Vmrun
from kvmtlb.hw.vmx import Invept, Invvpid, Vmclear, VmEntry, Vmptrld, Vmwrite
from kvmtlb.hw.x86 import Invlpg, Invpcid, MovToCr3, MovToCr4

INVEPT_NAMES = {1: "invept-single", 2: "invept-all"}
INVVPID_NAMES = {
    0: "invvpid-addr",
    1: "invvpid-single",
    2: "invvpid-all",
    3: "invvpid-single-globals",
}

# Every operation name the model can count, in report order.
ALL_OPS = (
    "invept-single",
    "invept-all",
    "invvpid-addr",
    "invvpid-single",
    "invvpid-all",
    "invvpid-single-globals",
    "tlb-control-1",
    "tlb-control-3",
    "tlb-control-7",
    "new-asid",
    "vm-entry",
    "vm-exit",
    "vm-entry-vpid-off",
    "vm-exit-vpid-off",
    "invlpg",
    "mov-cr3",
    "mov-cr4",
    "invpcid",
    "invlpga",
    "page-fault",
    "page-fault-exit",
    "ept-violation",
    "npf",
    "vmptrld",
    "vmclear",
    "vmwrite",
    "hv-flush-space",
    "hv-flush-list",
)


def operations(event: Any, eff: Effect, last_asid: dict[int, int]) -> tuple[list[str], str]:
    """The operations `event` counts as, given its effect, and the primary one ("" if none).
    `last_asid` (VMCB ident -> ASID of its last VMRUN) is updated for VMRUN."""
    out = eff.outcome
    rules = eff.invalidation.rules
    if isinstance(out, VmExit):
        if "intel.vmexit.no-vpid" in rules:
            return ["vm-exit", "vm-exit-vpid-off"], "vm-exit-vpid-off"
        return ["vm-exit"], "vm-exit"
    if isinstance(event, VmEntry):
        if not isinstance(out, Done):
            return [], ""
        if "intel.vmentry.no-vpid" in rules:
            return ["vm-entry", "vm-entry-vpid-off"], "vm-entry-vpid-off"
        return ["vm-entry"], "vm-entry"
    if isinstance(event, Vmrun):
        if not isinstance(out, Done):
            return [], ""
        ops = ["vm-entry"]
        primary = "vm-entry"
        v = event.vmcb
        if last_asid.get(v.ident) != v.asid:
            ops.append("new-asid")
            last_asid[v.ident] = v.asid
        if v.tlb_control:
            primary = f"tlb-control-{v.tlb_control}"
            ops.append(primary)
        return ops, primary
    if isinstance(event, Invept):
        name = INVEPT_NAMES.get(event.type, "") if isinstance(out, VmSucceed) else ""
        return ([name], name) if name else ([], "")
    if isinstance(event, Invvpid):
        name = INVVPID_NAMES.get(event.type, "") if isinstance(out, VmSucceed) else ""
        return ([name], name) if name else ([], "")
    if isinstance(out, Done):
        name = ""
        if isinstance(event, Invlpg):
            name = "invlpg"
        elif isinstance(event, MovToCr3):
            name = "mov-cr3"
        elif isinstance(event, MovToCr4) and eff.invalidation.clauses:
            name = "mov-cr4"
        elif isinstance(event, Invpcid):
            name = "invpcid"
        elif isinstance(event, Invlpga):
            name = "invlpga"
        elif isinstance(event, HvFlushGuestPhysicalAddressSpace):
            name = "hv-flush-space"
        elif isinstance(event, HvFlushGuestPhysicalAddressList):
            name = "hv-flush-list"
        return ([name], name) if name else ([], "")
    if isinstance(out, VmSucceed):
        if isinstance(event, Vmptrld):
            return ["vmptrld"], ""
        if isinstance(event, Vmclear):
            return ["vmclear"], ""
        if isinstance(event, Vmwrite):
            return ["vmwrite"], ""
    return [], ""


__all__ = ["ALL_OPS", "operations"]
