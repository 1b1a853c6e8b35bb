"""The hardware model's edges: descriptions, privilege and mode checks, SMM, intercepted faults,
what the model refuses (1 GiB pages, foreign entries, unknown hierarchies)."""

from __future__ import annotations

from typing import Any

import pytest
from hwsetups import CAPS, setup

from kvmtlb.hw.cpu import CR0_DEFAULT, CR4_DEFAULT, CR4_SMXE, Regs
from kvmtlb.hw.effect import DEFAULT_READINGS, Readings
from kvmtlb.hw.errors import AddressError, ModelError, OutsideUniverse
from kvmtlb.hw.layout import LayoutBuilder
from kvmtlb.hw.machine import IntelArch
from kvmtlb.hw.mappings import (
    AsidPsc,
    AsidTranslation,
    CombinedPsc,
    CombinedTranslation,
    GuestPhysicalPsc,
    GuestPhysicalTranslation,
    LinearPsc,
    LinearTranslation,
    NestedPsc,
    NestedTranslation,
)
from kvmtlb.hw.outcomes import (
    Access,
    Blocked,
    EptMisconfig,
    EptViolation,
    Fault,
    NestedPageFault,
    PageFault,
    VmEntryFailed,
    VmExit,
    VmFailInvalid,
    VmFailValid,
)
from kvmtlb.hw.paging import E_ALL, make_ept, make_npt, make_pte
from kvmtlb.hw.smm import DualMonitorSmmExit, DualMonitorSmmReturn, Rsm, Smi
from kvmtlb.hw.svm import AmdArch, FlushAllAsids, Invlpga, SvmExitEvent, Vmrun
from kvmtlb.hw.testbed import AmdSpec, IntelSpec, build_amd, build_intel
from kvmtlb.hw.vmcb import SVM_GUEST, SVM_OFF, SvmCapabilities, SvmCpu, Vmcb, svm_vmexit
from kvmtlb.hw.vmx import (
    Invept,
    Invvpid,
    Vmclear,
    VmEntry,
    VmExitEvent,
    VmfuncEptpSwitch,
    Vmptrld,
    Vmwrite,
    Vmxoff,
    Vmxon,
)
from kvmtlb.hw.walk import Stage2Fault, Translated
from kvmtlb.hw.x86 import Getsec, Init, Invlpg, Invpcid, MovToCr0, MovToCr3, MovToCr4, Reset

EVENTS: list[Any] = [
    Invlpg(0x1000),
    Invpcid(0, 1, 0x1000),
    MovToCr3(0x1000 | (1 << 63)),
    MovToCr3(0x1000),
    MovToCr4(0),
    MovToCr0(0),
    Reset(),
    Init(),
    Getsec("senter"),
    Invept(1),
    Invept(7),
    Invvpid(0, 1, 0x1000),
    Invvpid(9),
    Vmxon(),
    Vmxoff(),
    Vmclear(1),
    VmEntry(True),
    VmEntry(),
    VmExitEvent(),
    VmfuncEptpSwitch(0),
    Vmwrite("vpid", 1),
    Vmwrite("guest", Regs()),
    Smi(),
    Rsm(),
    DualMonitorSmmExit(),
    DualMonitorSmmReturn(),
    Vmrun(Vmcb(tlb_control=1)),
    Vmrun(Vmcb()),
    SvmExitEvent(),
    Invlpga(0x1000, 1),
    FlushAllAsids(),
]


def test_every_value_describes_itself() -> None:
    entries: list[Any] = [
        LinearTranslation(1, 0, 0x1000, 0x1000, 0x1000, 0x2000, 7, True),
        LinearPsc(1, 0, 2, 0, 0x3000, 7),
        GuestPhysicalTranslation(0x5000, 0x1000, 0x1000, 0x2000, 7),
        GuestPhysicalPsc(0x5000, 2, 0, 0x3000, 7),
        CombinedTranslation(1, 0, 0x5000, 0x1000, 0x1000, 0x1000, 0x2000, 7, 7, True, 0x9000),
        CombinedPsc(1, 0, 0x5000, 2, 0, 0x3000, 7),
        AsidTranslation(1, 0, 0x1000, 0x1000, 0x1000, 0x2000, 7, 7, True, 0x9000),
        AsidTranslation(1, 0, 0x1000, 0x1000, 0x1000, 0x2000, 7, 7, False, -1),
        AsidPsc(1, 0, 2, 0, 0x3000, 7),
        NestedTranslation(1, 0x1000, 0x1000, 0x2000, 7),
        NestedPsc(1, 2, 0, 0x3000, 7),
    ]
    outcomes: list[Any] = [
        Access(0x1000, 0x2000, 0x3000, 7, 7),
        Access(0x1000, -1, 0x3000, 7, 7),
        PageFault(0x1000, "rights"),
        EptViolation(0x2000, 0x1000),
        EptViolation(0x2000, -1),
        EptMisconfig(0x2000),
        NestedPageFault(0x2000, 0x1000),
        NestedPageFault(0x2000, -1),
        Fault("#GP", "x"),
        VmExit("x"),
        VmEntryFailed("x"),
        Blocked(),
        VmFailInvalid(),
        VmFailValid(7),
    ]
    for v in (*entries, *outcomes, *EVENTS):
        assert v.describe()
    with pytest.raises(ModelError):
        Vmwrite("no_such_field", 1)


@pytest.mark.parametrize(
    "event",
    [
        Invlpg(0x1000),
        Invpcid(0),
        MovToCr3(0x1000),
        MovToCr4(CR4_DEFAULT),
        MovToCr0(CR0_DEFAULT),
        Invept(2),
        Invvpid(2),
        Vmptrld(setup("root").vmcs),
        Vmclear(1),
        Vmwrite("vpid", 1),
        Vmxon(),
    ],
)
def test_cpl_3_faults(event: Any) -> None:
    cpu = setup("root")
    cpu = cpu._replace(regs=cpu.regs._replace(cpl=3))
    if isinstance(event, Vmxon):
        cpu = setup("off")
        cpu = cpu._replace(regs=cpu.regs._replace(cpl=3, cr4=cpu.regs.cr4 | (1 << 13)))
    eff = event.execute(cpu, CAPS, DEFAULT_READINGS)
    assert isinstance(eff.outcome, Fault) and eff.outcome.vector == "#GP"


def test_vmx_gates() -> None:
    for event in (
        Invept(1),
        Invvpid(1, 1),
        Vmptrld(setup("root").vmcs),
        Vmclear(1),
        Vmwrite("vpid", 1),
        Vmxoff(),
    ):
        assert isinstance(event.execute(setup("off"), CAPS, DEFAULT_READINGS).outcome, Fault)
        assert isinstance(event.execute(setup("nonroot"), CAPS, DEFAULT_READINGS).outcome, VmExit)
    assert isinstance(
        VmfuncEptpSwitch(5).execute(setup("nonroot_vmfunc"), CAPS, DEFAULT_READINGS).outcome, VmExit
    )
    on = setup("off")._replace(regs=Regs(CR0_DEFAULT, 0, CR4_DEFAULT | CR4_SMXE))
    assert isinstance(Getsec().execute(on, CAPS, DEFAULT_READINGS).outcome, Fault) is False


def test_intercepted_page_faults_exit_and_invalidate_only_if_read_so() -> None:
    cpu = setup("nonroot")._replace(vmcs=setup("nonroot").vmcs._replace(pf_exiting=True))
    for readings, removes in (
        (DEFAULT_READINGS, False),
        (Readings(intercepted_pf_invalidates=True), True),
    ):
        eff = IntelArch().fault_effect(cpu, PageFault(0x1000, "not present"), readings)
        assert isinstance(eff.outcome, VmExit)
        assert bool(eff.invalidation.clauses) is removes
    amd = SvmCpu(SVM_GUEST, Regs(), Vmcb(intercept_pf=True), Regs())
    for readings, removes in (
        (DEFAULT_READINGS, False),
        (Readings(intercepted_pf_invalidates=True), True),
    ):
        eff = AmdArch().fault_effect(amd, PageFault(0x1000, "not present"), readings)
        assert isinstance(eff.outcome, VmExit) and bool(eff.invalidation.clauses) is removes
    with pytest.raises(ModelError):
        IntelArch().fault_effect(setup("nonroot_noept"), EptViolation(0x1000, -1), DEFAULT_READINGS)
    with pytest.raises(ModelError):
        AmdArch().fault_effect(
            SvmCpu(SVM_GUEST, Regs(), Vmcb(np_enable=False), Regs()),
            NestedPageFault(0x1000, -1),
            DEFAULT_READINGS,
        )
    with pytest.raises(ModelError):
        IntelArch().fault_effect(setup("nonroot"), Access(0, 0, 0, 7, 7), DEFAULT_READINGS)
    with pytest.raises(ModelError):
        AmdArch().fault_effect(amd, Access(0, 0, 0, 7, 7), DEFAULT_READINGS)
    assert IntelArch().classify(
        setup("nonroot"), 0x1000, "read", Stage2Fault(0x2000, True, True)
    ) == EptMisconfig(0x2000)
    assert isinstance(
        AmdArch().classify(amd, 0x1000, "read", Translated(0x2000, 0x3000, 7, 0, False)),
        NestedPageFault,
    )


def test_svm_modes() -> None:
    off = SvmCpu(SVM_OFF, Regs(), None, Regs())
    caps = SvmCapabilities()
    for ev in (Vmrun(Vmcb()), Invlpga(0x1000, 1)):
        assert isinstance(ev.execute(off, caps, DEFAULT_READINGS).outcome, Fault)
    guest = SvmCpu(SVM_GUEST, Regs(), Vmcb(intercept_invlpga=False, asid=3), Regs())
    eff = Invlpga(0x1000, 1).execute(guest, caps, DEFAULT_READINGS)
    assert all(c.asid == 3 for c in eff.invalidation.clauses)  # the guest's own ASID only
    assert isinstance(Vmrun(Vmcb()).execute(guest, caps, DEFAULT_READINGS).outcome, VmExit)
    assert isinstance(
        Getsec().execute(guest._replace(vmcb=Vmcb()), caps, DEFAULT_READINGS).outcome, Fault
    )
    with pytest.raises(ModelError):
        svm_vmexit(off, "x")
    assert guest._replace(smm=True).walk_context().pg is False
    assert setup("smm").walk_context().pg is False


def test_machines_refuse_what_the_model_does_not_cover() -> None:
    tb = build_intel(IntelSpec(guest={0x1000: make_pte(0x10000)}, ept={0x10000: make_ept(0x80000)}))
    m = tb.machine
    assert "Machine(1 cpus" in repr(m) and "slots" in repr(m.memory)
    assert m.reference(0, 0x1000)
    with pytest.raises(ModelError):
        m.step(5, Invlpg(0))
    smm = m.step(0, Smi()).machine
    with pytest.raises(ModelError):
        smm.step(0, Invlpg(0))
    with pytest.raises(OutsideUniverse):
        m.universe.bit(NestedPsc(9, 2, 0, 0, 7))
    with pytest.raises(AddressError):
        tb.layout.slot(0x1234000, 0x1000)
    b = LayoutBuilder()
    with pytest.raises(AddressError):
        b.guest_root([0x5000])
    with pytest.raises(AddressError):
        b.set_entry(0x5000, 0, [0])
    with pytest.raises(AddressError):
        b.name(0x5000, 0x1000, create=False)
    # 1 GiB pages are outside the model (both stages)
    big = build_intel(
        IntelSpec(guest={0x1000: make_pte(0x10000)}, ept={0x10000: make_ept(0x80000)})
    )
    lay = LayoutBuilder()
    e = lay.ept_root()
    g = lay.guest_root([e])
    lay.map(g, 0x4000_0000, make_pte(0, large=True), level=3)
    lay.map(e, 0x4000_0000, make_ept(0, E_ALL, large=True), level=3)
    layout = lay.build()
    from kvmtlb.hw.layout import Format
    from kvmtlb.hw.tags import IntelEptTags
    from kvmtlb.hw.walk import WalkContext, Walker

    ctx = WalkContext(IntelEptTags(1, 0, e), g, e, Format.EPT, True, True)
    with pytest.raises(ModelError):
        Walker(ctx, layout.domain, None, layout.table_backing).translate_gpa(0x4000_0000)
    lin = LayoutBuilder()
    r = lin.linear_root()
    lin.map(r, 0x4000_0000, make_pte(0, large=True), level=3)
    ll = lin.build()
    from kvmtlb.hw.tags import IntelLinearTags

    with pytest.raises(ModelError):
        Walker(
            WalkContext(IntelLinearTags(0, 0), r, -1, Format.EPT, True, True),
            ll.domain,
            None,
            ll.table_backing,
        ).translate(0x4000_0000)
    with pytest.raises(ModelError):
        Walker(
            WalkContext(
                IntelLinearTags(0, 0), 0x777000, -1, Format.EPT, True, True, guest_physical=True
            ),
            ll.domain,
            None,
            {},
        ).translate(0x1000)
    assert big.machine.universe.entries
    amd = build_amd(AmdSpec(guest={0x1000: make_pte(0x10000)}, npt={0x10000: make_npt(0x80000)}))
    assert amd.machine.held(0) == []
