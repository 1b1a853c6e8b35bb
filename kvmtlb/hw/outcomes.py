"""Architectural outcomes of events, as values.

Whatever the ISA defines is returned, never raised: an instruction completes (`Done`), a VMX
instruction succeeds or fails (`VmSucceed`, `VmFailInvalid`, `VmFailValid` with the VM-instruction
error number of SDM §30.4), an exception is raised to the software that executed it (`Fault`), the
instruction causes a VM exit (`VmExit`), or an access translates (`Access`) or faults
(`PageFault`, `EptViolation`, `NestedPageFault`).
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

from kvmtlb.hw.paging import format_ept_rights, format_guest_rights

# VM-instruction error numbers (SDM §30.4, new §31.4).
VMXERR_VMCLEAR_VMXON_POINTER = 3
VMXERR_VMLAUNCH_NONCLEAR_VMCS = 4
VMXERR_VMRESUME_NONLAUNCHED_VMCS = 5
VMXERR_ENTRY_INVALID_CONTROL_FIELD = 7
VMXERR_VMXON_IN_VMX_ROOT_OPERATION = 15
VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID = 28


class Done(NamedTuple):
    """The instruction completed (for MOV to CR, INVLPG, INVPCID, ...)."""

    def describe(self) -> str:
        return "done"


class VmSucceed(NamedTuple):
    def describe(self) -> str:
        return "VMsucceed"


class VmFailInvalid(NamedTuple):
    def describe(self) -> str:
        return "VMfailInvalid"


class VmFailValid(NamedTuple):
    error: int

    def describe(self) -> str:
        return f"VMfailValid({self.error})"


class Fault(NamedTuple):
    """An exception delivered to the executing software: '#GP', '#UD'."""

    vector: str
    why: str

    def describe(self) -> str:
        return f"{self.vector} ({self.why})"


class VmExit(NamedTuple):
    """The event caused a VM exit; the processor is now in VMX root operation (or host mode)."""

    reason: str

    def describe(self) -> str:
        return f"VM exit: {self.reason}"


class VmEntryFailed(NamedTuple):
    """VM entry failed on guest state (SDM §26.3.1): modelled as no change."""

    reason: str

    def describe(self) -> str:
        return f"VM-entry failure: {self.reason}"


class Blocked(NamedTuple):
    """The event is held pending (INIT in VMX root operation)."""

    def describe(self) -> str:
        return "blocked"


class Access(NamedTuple):
    """An access translated: linear page -> (guest-physical page) -> physical frame."""

    gva: int
    gpa: int
    frame: int
    rights: int
    erights: int

    def describe(self) -> str:
        via = f" -> GPA {self.gpa:#x}" if self.gpa >= 0 else ""
        return (
            f"{self.gva:#x}{via} -> {self.frame:#x} "
            f"[{format_guest_rights(self.rights)}/{format_ept_rights(self.erights)}]"
        )


class PageFault(NamedTuple):
    """A #PF on `gva`: `reason` is "not present" or "rights"."""

    gva: int
    reason: str

    def describe(self) -> str:
        return f"#PF at {self.gva:#x} ({self.reason})"


class EptViolation(NamedTuple):
    """An EPT violation for `gpa`; `gva` is the linear address it came from, or -1."""

    gpa: int
    gva: int

    def describe(self) -> str:
        src = f" (from linear {self.gva:#x})" if self.gva >= 0 else ""
        return f"EPT violation at GPA {self.gpa:#x}{src}"


class EptMisconfig(NamedTuple):
    """An EPT misconfiguration for `gpa` (a VM exit; it invalidates nothing)."""

    gpa: int

    def describe(self) -> str:
        return f"EPT misconfiguration at GPA {self.gpa:#x}"


class NestedPageFault(NamedTuple):
    """AMD: a nested page fault (#NPF) for `gpa`; `gva` as for EptViolation."""

    gpa: int
    gva: int

    def describe(self) -> str:
        src = f" (from linear {self.gva:#x})" if self.gva >= 0 else ""
        return f"#NPF at GPA {self.gpa:#x}{src}"


Outcome: TypeAlias = (
    Done | VmSucceed | VmFailInvalid | VmFailValid | Fault | VmExit | VmEntryFailed | Blocked
)
AccessOutcome: TypeAlias = Access | PageFault | EptViolation | EptMisconfig | NestedPageFault

GP = "#GP"
UD = "#UD"
