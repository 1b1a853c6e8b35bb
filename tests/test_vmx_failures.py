"""Failure semantics of the VMX and TLB instructions (x86-tlb-architecture.md §5).

The INVVPID cases mirror kvm-unit-tests' x86/vmx_tests.c invvpid_test (types -127..127, VPID
widths, VPID 0, the non-canonical address, #UD outside VMX operation and in compatibility mode),
run under several IA32_VMX_EPT_VPID_CAP masks so that unsupported types are exercised.
"""

from __future__ import annotations

import pytest
from hwsetups import CAPS, E1, VMCS, setup

from kvmtlb.hw.addr import is_canonical
from kvmtlb.hw.cpu import (
    CR4_PCIDE,
    VMX_NONROOT,
    VMX_ROOT,
    Capabilities,
    Cpu,
    Regs,
)
from kvmtlb.hw.effect import Readings
from kvmtlb.hw.outcomes import (
    Fault,
    VmEntryFailed,
    VmExit,
    VmFailInvalid,
    VmFailValid,
    VmSucceed,
)
from kvmtlb.hw.vmx import (
    CAP_ALL,
    CAP_EPT_AD,
    CAP_INVEPT_ALL,
    CAP_INVEPT_SINGLE,
    CAP_INVVPID,
    CAP_INVVPID_ADDR,
    CAP_INVVPID_ALL,
    CAP_INVVPID_SINGLE,
    CAP_INVVPID_SINGLE_GLOBALS,
    EPTP_AD,
    Invept,
    Invvpid,
    VmEntry,
    Vmptrld,
    Vmxon,
    make_eptp,
)
from kvmtlb.hw.x86 import Invpcid, MovToCr3, MovToCr4

NONCANONICAL = 0xAAAA_AAAA_AAAA_AAAA
TYPE_BITS = [CAP_INVVPID_ADDR, CAP_INVVPID_SINGLE, CAP_INVVPID_ALL, CAP_INVVPID_SINGLE_GLOBALS]
CAP_MASKS = [
    CAP_ALL,
    CAP_ALL & ~CAP_INVVPID_ADDR,
    CAP_ALL & ~CAP_INVVPID_SINGLE & ~CAP_INVVPID_SINGLE_GLOBALS,
    CAP_ALL & ~CAP_INVVPID_ALL,
    CAP_ALL & ~(CAP_INVVPID_ADDR | CAP_INVVPID_ALL),
]
READ = Readings()


def invvpid_valid(cap: int, type_: int, vpid: int, gla: int) -> bool:
    """The expectation kvm-unit-tests encodes in invvpid_valid()."""
    t = type_ & ((1 << 64) - 1)
    if t > 3 or not cap & TYPE_BITS[t]:
        return False
    if vpid >> 16:
        return False
    if t != 2 and not vpid:
        return False
    return not (t == 0 and not is_canonical(gla))


def run_invvpid(cap: int, type_: int, vpid: int, gla: int) -> object:
    return Invvpid(type_, vpid, gla).execute(setup("root"), Capabilities(cap), READ).outcome


@pytest.mark.parametrize("cap", CAP_MASKS, ids=[hex(c) for c in CAP_MASKS])
def test_invvpid_like_kvm_unit_tests(cap: int) -> None:
    cases = [(i, 0xFFFF, 0) for i in range(-127, 128)]
    types = [t for t in range(4) if cap & TYPE_BITS[t]]
    cases += [(t, 1 << i, 0) for i in range(64) for t in types]
    cases += [(t, 0, 0) for t in types]
    if 0 in types:
        cases.append((0, 0xFFFF, NONCANONICAL))
    for type_, vpid, gla in cases:
        outcome = run_invvpid(cap, type_, vpid, gla)
        if invvpid_valid(cap, type_, vpid, gla):
            assert outcome == VmSucceed(), (type_, vpid, gla)
        else:
            assert outcome == VmFailValid(28), (type_, vpid, gla)


def test_invvpid_faults_and_exits() -> None:
    inv = Invvpid(1, 1)
    assert inv.execute(setup("off"), CAPS, READ).outcome.vector == "#UD"
    compat = setup("root")._replace(regs=Regs(cs_l=False))
    assert inv.execute(compat, CAPS, READ).outcome.vector == "#UD"
    assert isinstance(inv.execute(setup("nonroot"), CAPS, READ).outcome, VmExit)
    cpl3 = setup("root")._replace(regs=Regs(cpl=3))
    assert inv.execute(cpl3, CAPS, READ).outcome.vector == "#GP"
    no_vmcs = setup("root")._replace(vmcs=None)
    assert inv.execute(no_vmcs, CAPS, READ).outcome == VmSucceed()
    assert Invvpid(1, 0).execute(no_vmcs, CAPS, READ).outcome == VmFailInvalid()
    no_invvpid = Capabilities(CAP_ALL & ~CAP_INVVPID)
    assert isinstance(inv.execute(setup("root"), no_invvpid, READ).outcome, Fault)
    assert isinstance(
        inv.execute(setup("root"), Capabilities(CAP_ALL, vpid=False), READ).outcome, Fault
    )


@pytest.mark.parametrize("cap", [CAP_ALL, CAP_ALL & ~CAP_INVEPT_SINGLE, CAP_ALL & ~CAP_INVEPT_ALL])
def test_invept_types_and_eptp_checks(cap: int) -> None:
    root = setup("root")
    good = make_eptp(E1)
    for t in range(-3, 6):
        out = Invept(t, good).execute(root, Capabilities(cap), READ).outcome
        supported = (t == 1 and cap & CAP_INVEPT_SINGLE) or (t == 2 and cap & CAP_INVEPT_ALL)
        assert out == (VmSucceed() if supported else VmFailValid(28)), t
    if not cap & CAP_INVEPT_SINGLE:
        return
    bad = [
        good & ~7 | 1,  # memory type WC: not supported for the EPT paging structures
        good & ~(7 << 3) | (2 << 3),  # page-walk length 3
        good | (1 << 7),  # reserved bit 7
        good | (1 << 50),  # above MAXPHYADDR
    ]
    for eptp in bad:
        assert Invept(1, eptp).execute(root, Capabilities(cap), READ).outcome == VmFailValid(28)
    no_ad = Capabilities(cap & ~CAP_EPT_AD)
    assert Invept(1, good | EPTP_AD).execute(root, no_ad, READ).outcome == VmFailValid(28)
    assert Invept(1, good | EPTP_AD).execute(root, Capabilities(cap), READ).outcome == VmSucceed()
    if cap & CAP_INVEPT_ALL:  # type 2 ignores the descriptor
        assert Invept(2, bad[0]).execute(root, Capabilities(cap), READ).outcome == VmSucceed()


def test_invpcid_faults() -> None:
    nonroot = setup("nonroot")
    assert Invpcid(4).execute(nonroot, CAPS, READ).outcome.vector == "#GP"
    assert Invpcid(1, 1 << 12).execute(nonroot, CAPS, READ).outcome.vector == "#GP"
    assert Invpcid(0, 1, NONCANONICAL).execute(nonroot, CAPS, READ).outcome.vector == "#GP"
    nopcid = setup("nonroot_nopcid")
    assert Invpcid(0, 1, 0x1000).execute(nopcid, CAPS, READ).outcome.vector == "#GP"
    assert Invpcid(0, 0, 0x1000).execute(nopcid, CAPS, READ).outcome.__class__.__name__ == "Done"
    disabled = nonroot._replace(vmcs=VMCS._replace(enable_invpcid=False))
    assert Invpcid(2).execute(disabled, CAPS, READ).outcome.vector == "#UD"
    unsupported = Capabilities(CAP_ALL, invpcid=False)
    assert Invpcid(2).execute(nonroot, unsupported, READ).outcome.vector == "#UD"


def test_mov_cr_faults() -> None:
    nonroot = setup("nonroot")
    assert MovToCr3(1 << 60).execute(nonroot, CAPS, READ).outcome.vector == "#GP"
    nopcid = setup("nonroot_nopcid")
    bad_cr3 = nopcid._replace(regs=nopcid.regs._replace(cr3=nopcid.regs.cr3 | 5))
    set_pcide = MovToCr4(bad_cr3.regs.cr4 | CR4_PCIDE)
    assert set_pcide.execute(bad_cr3, CAPS, READ).outcome.vector == "#GP"
    no_pcid = Capabilities(CAP_ALL, pcid=False)
    assert (
        MovToCr4(nopcid.regs.cr4 | CR4_PCIDE).execute(nopcid, no_pcid, READ).outcome.vector == "#GP"
    )


def test_vmxon_and_vm_entry_checks() -> None:
    root = setup("root")
    assert Vmxon().execute(root, CAPS, READ).outcome == VmFailValid(15)
    assert Vmxon().execute(root._replace(vmcs=None), CAPS, READ).outcome == VmFailInvalid()
    fresh = VMCS._replace(launched=False)
    cpu = Cpu(VMX_ROOT, root.regs, fresh)
    assert VmEntry(launch=False).execute(cpu, CAPS, READ).outcome == VmFailValid(5)
    assert VmEntry(launch=True).execute(root, CAPS, READ).outcome == VmFailValid(4)
    zero_vpid = Cpu(VMX_ROOT, root.regs, fresh._replace(vpid=0))
    assert VmEntry(launch=True).execute(zero_vpid, CAPS, READ).outcome == VmFailValid(7)
    no_ept_ug = Cpu(VMX_ROOT, root.regs, fresh._replace(enable_ept=False))
    assert VmEntry(launch=True).execute(no_ept_ug, CAPS, READ).outcome == VmFailValid(7)
    bad_eptp = Cpu(VMX_ROOT, root.regs, fresh._replace(eptp=make_eptp(E1) | (1 << 8)))
    assert VmEntry(launch=True).execute(bad_eptp, CAPS, READ).outcome == VmFailValid(7)
    unpaged = fresh._replace(unrestricted_guest=False, guest=Regs(cr0=0))
    out = VmEntry(launch=True).execute(Cpu(VMX_ROOT, root.regs, unpaged), CAPS, READ).outcome
    assert isinstance(out, VmEntryFailed)
    assert VmEntry().execute(root._replace(vmcs=None), CAPS, READ).outcome == VmFailInvalid()
    nonroot = Cpu(VMX_NONROOT, root.regs, VMCS)
    assert isinstance(Vmptrld(VMCS).execute(nonroot, CAPS, READ).outcome, VmExit)
