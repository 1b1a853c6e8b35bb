"""VMX instructions and VM entry: VMXON, VMXOFF, VMPTRLD, VMCLEAR, VMWRITE, VMLAUNCH/VMRESUME,
INVEPT, INVVPID, and EPTP switching (VMFUNC leaf 0).

Models the instruction pages of SDM ch. 30 (new ch. 31) with their check order and failure
semantics (§30.2: VMfailValid(n) with a current VMCS, else VMfailInvalid; #UD outside VMX
operation or in compatibility mode; a VM exit in non-root operation; #GP at CPL > 0), the VM-entry
control checks of §26.2.1.1 and the TLB effects of §28.3.3.1 (new §29.4.3.1):

- INVVPID (intel.invvpid.*) removes linear and combined mappings, never guest-physical ones;
- INVEPT (intel.invept.*) removes guest-physical and combined mappings, never linear ones;
- VM entry with 'enable VPID' = 0 removes VPID 0000H's linear and combined mappings.

IA32_VMX_EPT_VPID_CAP (App. A.10) is a capability mask: any INVVPID type may be missing, so KVM's
fallbacks (vpid_sync_context, ept_sync_context) become reachable.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmtlb.hw.addr import MAXPHYADDR, PHYS_ADDR_MASK, is_canonical
from kvmtlb.hw.cpu import (
    CR4_VMXE,
    VMX_NONROOT,
    VMX_OFF,
    VMX_ROOT,
    Capabilities,
    Cpu,
    Vmcs,
)
from kvmtlb.hw.effect import Effect, Readings
from kvmtlb.hw.errors import ModelError
from kvmtlb.hw.invalidation import (
    COMBINED,
    GUEST_PHYSICAL,
    L_AND_C,
    L_AND_C_PSC,
    L_AND_C_TLB,
    Invalidation,
    Select,
)
from kvmtlb.hw.mappings import CombinedPsc, CombinedTranslation
from kvmtlb.hw.outcomes import (
    GP,
    UD,
    VMXERR_ENTRY_INVALID_CONTROL_FIELD,
    VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID,
    VMXERR_VMLAUNCH_NONCLEAR_VMCS,
    VMXERR_VMRESUME_NONLAUNCHED_VMCS,
    VMXERR_VMXON_IN_VMX_ROOT_OPERATION,
    Done,
    Fault,
    Outcome,
    VmEntryFailed,
    VmExit,
    VmFailInvalid,
    VmFailValid,
    VmSucceed,
)
from kvmtlb.hw.rules import check_ids
from kvmtlb.hw.vmexit import transition_invalidation, vm_exit

# IA32_VMX_EPT_VPID_CAP bits (SDM App. A.10).
CAP_EPT_WALK_4 = 1 << 6
CAP_EPT_UC = 1 << 8
CAP_EPT_WB = 1 << 14
CAP_EPT_2MB = 1 << 16
CAP_INVEPT = 1 << 20
CAP_EPT_AD = 1 << 21
CAP_INVEPT_SINGLE = 1 << 25
CAP_INVEPT_ALL = 1 << 26
CAP_INVVPID = 1 << 32
CAP_INVVPID_ADDR = 1 << 40
CAP_INVVPID_SINGLE = 1 << 41
CAP_INVVPID_ALL = 1 << 42
CAP_INVVPID_SINGLE_GLOBALS = 1 << 43
CAP_ALL = (
    CAP_EPT_WALK_4
    | CAP_EPT_UC
    | CAP_EPT_WB
    | CAP_EPT_2MB
    | CAP_INVEPT
    | CAP_EPT_AD
    | CAP_INVEPT_SINGLE
    | CAP_INVEPT_ALL
    | CAP_INVVPID
    | CAP_INVVPID_ADDR
    | CAP_INVVPID_SINGLE
    | CAP_INVVPID_ALL
    | CAP_INVVPID_SINGLE_GLOBALS
)

# The INVVPID/INVEPT types a scenario or workload may leave out (`ept_vpid_cap`), by name.
INVALIDATION_CAPS = {
    "invvpid-addr": CAP_INVVPID_ADDR,
    "invvpid-single": CAP_INVVPID_SINGLE,
    "invvpid-all": CAP_INVVPID_ALL,
    "invvpid-single-globals": CAP_INVVPID_SINGLE_GLOBALS,
    "invept-single": CAP_INVEPT_SINGLE,
    "invept-all": CAP_INVEPT_ALL,
}
INVALIDATION_CAP_NAMES = tuple(INVALIDATION_CAPS)


def ept_vpid_cap(names: tuple[str, ...] | list[str]) -> int:
    """IA32_VMX_EPT_VPID_CAP with the named INVVPID/INVEPT types and every other feature the
    model needs (4-level walk, WB, 2 MB pages, A/D, INVEPT); bit 32 (INVVPID supported) is set
    when any INVVPID type is."""
    cap = CAP_EPT_WALK_4 | CAP_EPT_UC | CAP_EPT_WB | CAP_EPT_2MB | CAP_EPT_AD | CAP_INVEPT
    for name in names:
        cap |= INVALIDATION_CAPS[name]
    if cap & (CAP_INVVPID_ADDR | CAP_INVVPID_SINGLE | CAP_INVVPID_ALL | CAP_INVVPID_SINGLE_GLOBALS):
        cap |= CAP_INVVPID
    return cap


INVEPT_SINGLE = 1
INVEPT_ALL = 2
INVVPID_ADDR = 0
INVVPID_SINGLE = 1
INVVPID_ALL = 2
INVVPID_SINGLE_GLOBALS = 3

EPTP_WB = 6
EPTP_UC = 0
EPTP_WALK_4 = 3 << 3
EPTP_AD = 1 << 6

_U64 = (1 << 64) - 1


def make_eptp(root: int, *, ad: bool = False) -> int:
    """The EPTP KVM's construct_eptp builds for a 4-level WB root (AD optional)."""
    return (root & PHYS_ADDR_MASK) | EPTP_WB | EPTP_WALK_4 | (EPTP_AD if ad else 0)


def eptp_valid(eptp: int, cap: int) -> bool:
    """Whether a VM entry with 'enable EPT' would accept this EPTP (SDM §26.2.1.1)."""
    memtype = eptp & 7
    if not ((memtype == EPTP_UC and cap & CAP_EPT_UC) or (memtype == EPTP_WB and cap & CAP_EPT_WB)):
        return False
    if (eptp >> 3) & 7 != 3 or not cap & CAP_EPT_WALK_4:
        return False
    if eptp & EPTP_AD and not cap & CAP_EPT_AD:
        return False
    if eptp & (0x1F << 7):
        return False
    return not eptp >> MAXPHYADDR


def _vmfail(cpu: Cpu, error: int) -> Outcome:
    """intel.vmx.fail: VMfailValid(n) with a current VMCS, else VMfailInvalid."""
    return VmFailValid(error) if cpu.vmcs is not None else VmFailInvalid()


def _inv(rules: tuple[str, ...], *clauses: Select) -> Invalidation:
    return Invalidation(check_ids(rules), clauses)


def _vmx_gate(cpu: Cpu, name: str, supported: bool = True) -> Effect | None:
    """The checks every VMX instruction starts with (§30.3): #UD outside VMX operation, in
    compatibility mode or without the capability (intel.vmx.ud); a VM exit in non-root operation
    (intel.vmx.nonroot-exit); #GP at CPL > 0."""
    r = cpu.regs
    if cpu.mode == VMX_OFF:
        return Effect(cpu, Fault(UD, f"{name} outside VMX operation"))
    if r.ia32e and not r.cs_l:
        return Effect(cpu, Fault(UD, f"{name} in compatibility mode"))
    if not supported:
        return Effect(cpu, Fault(UD, f"{name} not supported by the processor"))
    if cpu.mode == VMX_NONROOT:
        return vm_exit(cpu, name)
    if r.cpl > 0:
        return Effect(cpu, Fault(GP, f"{name} at CPL > 0"))
    return None


# -- INVEPT ---------------------------------------------------------------------------------------
def invept_single_invalidation(ep4ta: int) -> Invalidation:
    return _inv(("intel.invept.single",), Select(GUEST_PHYSICAL + COMBINED, ep4ta=ep4ta))


def invept_all_invalidation() -> Invalidation:
    return _inv(("intel.invept.all",), Select(GUEST_PHYSICAL + COMBINED))


@dataclass(frozen=True, slots=True)
class Invept:
    """INVEPT with register operand `type` and descriptor {EPTP (63:0), reserved (127:64)}."""

    type: int
    eptp: int = 0

    def describe(self) -> str:
        kind = {1: "single-context", 2: "all-context"}.get(self.type, f"type {self.type}")
        return f"INVEPT {kind} EPTP {self.eptp:#x}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        cap = caps.ept_vpid_cap
        gate = _vmx_gate(cpu, "INVEPT", caps.ept and bool(cap & CAP_INVEPT))
        if gate is not None:
            return gate
        t = self.type & _U64
        if not (t == INVEPT_SINGLE and cap & CAP_INVEPT_SINGLE) and not (
            t == INVEPT_ALL and cap & CAP_INVEPT_ALL
        ):
            return Effect(
                cpu,
                _vmfail(cpu, VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID),
                _inv(("intel.invept.checks",)),
            )
        if t == INVEPT_SINGLE:
            if not eptp_valid(self.eptp, cap):
                return Effect(
                    cpu,
                    _vmfail(cpu, VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID),
                    _inv(("intel.invept.checks",)),
                )
            return Effect(cpu, VmSucceed(), invept_single_invalidation(self.eptp & PHYS_ADDR_MASK))
        return Effect(cpu, VmSucceed(), invept_all_invalidation())


# -- INVVPID --------------------------------------------------------------------------------------
def invvpid_invalidation(
    type_: int, vpid: int, addr: int = 0, *, keep_global_paths: bool = True
) -> Invalidation:
    """What a successful INVVPID of `type_` removes (intel.invvpid.*)."""
    no_g = "intel.invvpid.no-guest-physical"
    if type_ == INVVPID_ADDR:
        return _inv(
            ("intel.invvpid.address", no_g),
            Select(L_AND_C_TLB, vpid=vpid, addr=addr),
            Select(L_AND_C_PSC, vpid=vpid, addr=addr),
        )
    if type_ == INVVPID_SINGLE:
        return _inv(("intel.invvpid.single", no_g), Select(L_AND_C, vpid=vpid))
    if type_ == INVVPID_ALL:
        return _inv(("intel.invvpid.all", no_g), Select(L_AND_C, vpid_nonzero=True))
    return Invalidation(
        check_ids(("intel.invvpid.single-globals", no_g)),
        (Select(L_AND_C_TLB, vpid=vpid, glob=False), Select(L_AND_C_PSC, vpid=vpid)),
        keep_global_paths,
    )


@dataclass(frozen=True, slots=True)
class Invvpid:
    """INVVPID with register operand `type` and descriptor {`desc` (63:0), `addr` (127:64)};
    `desc` bits 15:0 are the VPID, bits 63:16 must be zero."""

    type: int
    desc: int = 0
    addr: int = 0

    @property
    def vpid(self) -> int:
        return self.desc & 0xFFFF

    def describe(self) -> str:
        kind = {
            0: "individual-address",
            1: "single-context",
            2: "all-context",
            3: "single-context-retaining-globals",
        }.get(self.type, f"type {self.type}")
        extra = f" addr {self.addr:#x}" if self.type == 0 else ""
        return f"INVVPID {kind} VPID {self.desc:#x}{extra}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        cap = caps.ept_vpid_cap
        gate = _vmx_gate(cpu, "INVVPID", caps.vpid and bool(cap & CAP_INVVPID))
        if gate is not None:
            return gate
        fail = Effect(
            cpu,
            _vmfail(cpu, VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID),
            _inv(("intel.invvpid.checks",)),
        )
        t = self.type & _U64
        if t > 3 or not cap & (CAP_INVVPID_ADDR << t):
            return fail
        if (self.desc & _U64) >> 16:
            return fail
        vpid = self.vpid
        if t != INVVPID_ALL and vpid == 0:
            return fail
        if t == INVVPID_ADDR and not is_canonical(self.addr):
            return fail
        inv = invvpid_invalidation(
            t, vpid, self.addr, keep_global_paths=readings.invvpid3_keeps_global_psc
        )
        return Effect(cpu, VmSucceed(), inv)


# -- VMXON, VMXOFF, VMCS operations ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Vmxon:
    def describe(self) -> str:
        return "VMXON"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        if cpu.mode == VMX_NONROOT:
            return vm_exit(cpu, "VMXON")
        if cpu.mode == VMX_ROOT:
            return Effect(cpu, _vmfail(cpu, VMXERR_VMXON_IN_VMX_ROOT_OPERATION))
        if not cpu.regs.cr4 & CR4_VMXE:
            return Effect(cpu, Fault(UD, "VMXON with CR4.VMXE = 0"))
        if cpu.regs.cpl > 0:
            return Effect(cpu, Fault(GP, "VMXON at CPL > 0"))
        return Effect(
            cpu._replace(mode=VMX_ROOT, vmcs=None), VmSucceed(), _inv(("intel.vmxon-vmxoff",))
        )


@dataclass(frozen=True, slots=True)
class Vmxoff:
    def describe(self) -> str:
        return "VMXOFF"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        gate = _vmx_gate(cpu, "VMXOFF")
        if gate is not None:
            return gate
        return Effect(
            cpu._replace(mode=VMX_OFF, vmcs=None), VmSucceed(), _inv(("intel.vmxon-vmxoff",))
        )


@dataclass(frozen=True, slots=True)
class Vmptrld:
    """Make `vmcs` the current VMCS (its contents travel with the value)."""

    vmcs: Vmcs

    def describe(self) -> str:
        return f"VMPTRLD VMCS {self.vmcs.ident:#x}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        gate = _vmx_gate(cpu, "VMPTRLD")
        if gate is not None:
            return gate
        return Effect(cpu._replace(vmcs=self.vmcs), VmSucceed(), _inv(("intel.vmcs-ops",)))


@dataclass(frozen=True, slots=True)
class Vmclear:
    """VMCLEAR of the VMCS named `ident`: if it is current, there is no current VMCS after."""

    ident: int

    def describe(self) -> str:
        return f"VMCLEAR VMCS {self.ident:#x}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        gate = _vmx_gate(cpu, "VMCLEAR")
        if gate is not None:
            return gate
        vmcs = None if cpu.vmcs is not None and cpu.vmcs.ident == self.ident else cpu.vmcs
        return Effect(cpu._replace(vmcs=vmcs), VmSucceed(), _inv(("intel.vmcs-ops",)))


_VMCS_FIELDS = frozenset(Vmcs._fields) - {"ident", "launched"}


@dataclass(frozen=True, slots=True)
class Vmwrite:
    """VMWRITE of one field of the current VMCS (field names are Vmcs's)."""

    field: str
    value: object

    def __post_init__(self) -> None:
        if self.field not in _VMCS_FIELDS:
            raise ModelError(
                f"unknown or read-only VMCS field {self.field!r}; "
                f"known: {', '.join(sorted(_VMCS_FIELDS))}"
            )

    def describe(self) -> str:
        v = self.value
        if isinstance(v, bool):
            return f"VMWRITE {self.field} = {int(v)}"
        return f"VMWRITE {self.field} = {v:#x}" if isinstance(v, int) else f"VMWRITE {self.field}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        gate = _vmx_gate(cpu, "VMWRITE")
        if gate is not None:
            return gate
        if cpu.vmcs is None:
            return Effect(cpu, VmFailInvalid())
        vmcs = cpu.vmcs._replace(**{self.field: self.value})  # type: ignore[arg-type]
        return Effect(cpu._replace(vmcs=vmcs), VmSucceed(), _inv(("intel.vmcs-ops",)))


# -- VM entry -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VmEntry:
    """VMLAUNCH (`launch`) or VMRESUME of the current VMCS.

    The host-state area is modelled as holding the control registers in force at the VM entry
    (KVM keeps HOST_CR3 and HOST_CR4 up to date before entering).
    """

    launch: bool = False

    def describe(self) -> str:
        return "VMLAUNCH" if self.launch else "VMRESUME"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        name = self.describe()
        gate = _vmx_gate(cpu, name)
        if gate is not None:
            return gate
        v = cpu.vmcs
        if v is None:
            return Effect(cpu, VmFailInvalid())
        if self.launch and v.launched:
            return Effect(cpu, VmFailValid(VMXERR_VMLAUNCH_NONCLEAR_VMCS))
        if not self.launch and not v.launched:
            return Effect(cpu, VmFailValid(VMXERR_VMRESUME_NONLAUNCHED_VMCS))
        checks = _inv(("intel.vmentry.checks",))
        bad = (
            (v.enable_vpid and (v.vpid == 0 or not caps.vpid))
            or (v.enable_ept and (not caps.ept or not eptp_valid(v.eptp, caps.ept_vpid_cap)))
            or (v.unrestricted_guest and not v.enable_ept)
        )
        if bad:
            return Effect(cpu, VmFailValid(VMXERR_ENTRY_INVALID_CONTROL_FIELD), checks)
        if not v.guest.pg and not v.unrestricted_guest:
            return Effect(cpu, VmEntryFailed("guest CR0.PG = 0 without unrestricted guest"), checks)
        entered = v._replace(host=cpu.regs, launched=True)
        new = cpu._replace(mode=VMX_NONROOT, regs=v.guest, vmcs=entered)
        return Effect(new, Done(), transition_invalidation(v.enable_vpid, "intel.vmentry.no-vpid"))


@dataclass(frozen=True, slots=True)
class VmExitEvent:
    """A VM exit caused by something outside the guest's instruction stream (an external
    interrupt, an IPI, a preemption timer): `reason` is what the trace says."""

    reason: str = "external interrupt"

    def describe(self) -> str:
        return f"VM exit ({self.reason})"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        return vm_exit(cpu, self.reason)


# -- VMFUNC EPTP switching -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VmfuncEptpSwitch:
    """VMFUNC leaf 0 (EPTP switching) to entry `index` of the VMCS's EPTP list (§25.5.5.3)."""

    index: int

    def describe(self) -> str:
        return f"VMFUNC EPTP switch to #{self.index}"

    def execute(self, cpu: Cpu, caps: Capabilities, readings: Readings) -> Effect:
        v = cpu.vmcs
        if cpu.mode != VMX_NONROOT or v is None or not v.eptp_list:
            return Effect(cpu, Fault(UD, "VMFUNC outside non-root or not enabled"))
        if not 0 <= self.index < len(v.eptp_list):
            return vm_exit(cpu, "VMFUNC")
        new = cpu._replace(vmcs=v._replace(eptp=v.eptp_list[self.index]))
        if v.enable_vpid:
            return Effect(new, Done(), _inv(("intel.vmfunc.eptp-switch",)))
        return Effect(new, Done(), _inv(("intel.vmfunc.eptp-switch",), Select(COMBINED, vpid=0)))


def ept_violation_invalidation(
    vpid: int, pcid: int, ep4ta: int, gpa: int, gva: int
) -> Invalidation:
    """intel.ept-violation.invalidate: the guest-physical mappings used to translate `gpa` (current
    EP4TA) and, when the GPA was the translation of linear `gva` (>= 0), the combined mappings that
    would be used for `gva`."""
    clauses = [Select(GUEST_PHYSICAL, ep4ta=ep4ta, addr=gpa)]
    if gva >= 0:
        clauses.append(
            Select(
                (CombinedTranslation,), vpid=vpid, pcid=pcid, or_global=True, ep4ta=ep4ta, addr=gva
            )
        )
        clauses.append(Select((CombinedPsc,), vpid=vpid, pcid=pcid, ep4ta=ep4ta, addr=gva))
    return _inv(("intel.ept-violation.invalidate",), *clauses)


__all__ = [
    "CAP_ALL",
    "Invept",
    "Invvpid",
    "VmEntry",
    "VmExit",
    "VmExitEvent",
    "Vmclear",
    "VmfuncEptpSwitch",
    "Vmptrld",
    "Vmwrite",
    "Vmxoff",
    "Vmxon",
    "ept_violation_invalidation",
    "eptp_valid",
    "invept_all_invalidation",
    "invept_single_invalidation",
    "invvpid_invalidation",
    "make_eptp",
]
