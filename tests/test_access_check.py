"""The access check at CPL 0 against hand-derived outcomes (SDM §4.6.1, APM vol. 2 §5.6):
SMAP denies supervisor data accesses to user pages (RFLAGS.AC = 0), not fetches; SMEP denies
supervisor fetches from user pages; supervisor pages are unaffected by both; with CR4.PKE = 1
and PKRU = 0 (the model's reading) protection keys deny nothing. The expected outcomes are
written here, not computed by either model."""

from __future__ import annotations

from typing import Any

import pytest

from kvmtlb.hw.cpu import CR0_WP, CR4_PKE, CR4_SMAP, CR4_SMEP
from kvmtlb.hw.outcomes import Access, PageFault
from kvmtlb.hw.paging import make_ept, make_npt, make_pte
from kvmtlb.hw.svm import Vmrun
from kvmtlb.hw.testbed import AmdSpec, IntelSpec, build_amd, build_intel
from kvmtlb.hw.vmx import VmEntry
from kvmtlb.hw.x86 import MovToCr0, MovToCr4

USER, SUPER = 0x1000, 0x2000  # a user page and a supervisor page, both writable and executable


def _guest(vendor: str) -> Any:
    guest = {
        USER: make_pte(0x10000, user=True, executable=True),
        SUPER: make_pte(0x11000, executable=True),
    }
    if vendor == "intel":
        tb = build_intel(
            IntelSpec(guest=guest, ept={0x10000: make_ept(0x80000), 0x11000: make_ept(0x81000)})
        )
        return tb.machine.step(0, VmEntry(launch=True)).machine
    tb = build_amd(
        AmdSpec(guest=guest, npt={0x10000: make_npt(0x80000), 0x11000: make_npt(0x81000)})
    )
    return tb.machine.step(0, Vmrun(tb.vmcb[0])).machine


def _outcome(m: Any, gva: int, access: str) -> str:
    outs = m.outcomes(0, gva, access)
    assert len(outs) == 1, outs
    (o,) = outs
    if isinstance(o, PageFault):
        return f"#PF {o.reason}"
    assert isinstance(o, Access)
    return "ok"


# (CR4 bits set by the guest, page, access) -> outcome
CASES = [
    (0, USER, "read", "ok"),
    (0, USER, "write", "ok"),
    (0, USER, "exec", "ok"),
    (CR4_SMAP, USER, "read", "#PF rights"),
    (CR4_SMAP, USER, "write", "#PF rights"),
    (CR4_SMAP, USER, "exec", "ok"),
    (CR4_SMAP, SUPER, "read", "ok"),
    (CR4_SMAP, SUPER, "write", "ok"),
    (CR4_SMEP, USER, "exec", "#PF rights"),
    (CR4_SMEP, USER, "read", "ok"),
    (CR4_SMEP, SUPER, "exec", "ok"),
    (CR4_SMEP | CR4_SMAP, USER, "read", "#PF rights"),
    (CR4_PKE, USER, "read", "ok"),
    (CR4_PKE, USER, "write", "ok"),
    (CR4_PKE, SUPER, "write", "ok"),
]


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize(("bits", "page", "access", "expected"), CASES)
def test_access_check(vendor: str, bits: int, page: int, access: str, expected: str) -> None:
    m = _guest(vendor)
    if bits:
        m = m.step(0, MovToCr4(m.cpus[0].regs.cr4 | bits)).machine
        assert m.cpus[0].regs.cr4 & bits == bits
    assert _outcome(m, page, access) == expected


# CR0.WP (§4.6.1; APM vol. 2 §5.6.4): a supervisor write to a read-only page faults with WP = 1
# and is let through with WP = 0; a MOV to CR0 that changes WP invalidates nothing
# (§4.10.4.1: intel.mov-cr0.other), and the check applies to the rights a TLB entry holds, so
# a translation cached under WP = 1 serves a write under WP = 0.
RO = 0x3000


def _guest_ro(vendor: str) -> Any:
    guest = {RO: make_pte(0x12000, writable=False)}
    if vendor == "intel":
        tb = build_intel(IntelSpec(guest=guest, ept={0x12000: make_ept(0x82000)}))
        return tb.machine.step(0, VmEntry(launch=True)).machine
    tb = build_amd(AmdSpec(guest=guest, npt={0x12000: make_npt(0x82000)}))
    return tb.machine.step(0, Vmrun(tb.vmcb[0])).machine


@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_cr0_wp_decides_a_supervisor_write_to_a_read_only_page(vendor: str) -> None:
    m = _guest_ro(vendor)
    assert _outcome(m, RO, "write") == "#PF rights"
    m = m.step(0, MovToCr0(m.cpus[0].regs.cr0 & ~CR0_WP)).machine
    assert not m.cpus[0].regs.cr0 & CR0_WP
    assert _outcome(m, RO, "write") == "ok"
    assert _outcome(m, RO, "read") == "ok"
    m = m.step(0, MovToCr0(m.cpus[0].regs.cr0 | CR0_WP)).machine
    assert _outcome(m, RO, "write") == "#PF rights"
