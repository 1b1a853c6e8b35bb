"""Misuse of the hardware model's API raises typed exceptions and never corrupts state."""

from __future__ import annotations

import pytest
from hwhelpers import enter

from kvmtlb.hw.addr import check_page
from kvmtlb.hw.errors import AddressError, ModelError, OutsideUniverse, UnknownEvent
from kvmtlb.hw.layout import LayoutBuilder
from kvmtlb.hw.paging import make_ept, make_pte
from kvmtlb.hw.testbed import IntelSpec, build_intel
from kvmtlb.hw.vmx import Vmwrite


def bed():
    return build_intel(
        IntelSpec(guest={0x1000: make_pte(0x10000)}, ept={0x10000: make_ept(0x80000)})
    )


def test_addresses_are_checked() -> None:
    with pytest.raises(AddressError, match="not 4 KiB aligned"):
        check_page(0x1001, "GVA")
    with pytest.raises(AddressError, match="outside"):
        check_page(1 << 40, "GVA", limit=1 << 32)
    with pytest.raises(AddressError, match="integer"):
        check_page("0x1000", "GVA")
    b = LayoutBuilder()
    e = b.ept_root()
    with pytest.raises(AddressError):
        b.map(e, 0x10008, make_ept(0x80000))
    with pytest.raises(AddressError, match="no paging hierarchy"):
        b.map(0x123000, 0x1000, 0)


def test_unknown_slot_and_hierarchy() -> None:
    tb = bed()
    with pytest.raises(AddressError, match="name the address"):
        tb.layout.slot(tb.guest_root, 0x5000)
    with pytest.raises(AddressError):
        tb.machine.write(10_000, 0)


def test_write_outside_the_universe_leaves_the_machine_usable() -> None:
    tb = bed()
    m = enter(tb.machine)
    before = m.outcomes(0, 0x1000, "read")
    with pytest.raises(OutsideUniverse, match="declare it"):
        m.write(tb.ept_slot(0x10000), make_ept(0x99000))
    assert m.outcomes(0, 0x1000, "read") == before


def test_unknown_events_and_processors() -> None:
    m = bed().machine
    with pytest.raises(UnknownEvent):
        m.step(0, "INVLPG 0x1000")
    with pytest.raises(ModelError, match="no processor"):
        m.step(5, Vmwrite("vpid", 1))
    with pytest.raises(ModelError, match="unknown or read-only VMCS field"):
        Vmwrite("bogus", 1)
    with pytest.raises(ModelError, match="unknown access kind"):
        enter(m).outcomes(0, 0x1000, "fetch")
    with pytest.raises(ModelError, match="VM exit"):
        from kvmtlb.hw.vmx import VmExitEvent

        m.step(0, VmExitEvent())
