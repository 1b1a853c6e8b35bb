"""The access check at CPL 0 against hand-derived outcomes (SDM §4.6.1, APM vol. 2 §5.6):
SMAP denies supervisor data accesses to user pages (RFLAGS.AC = 0), not fetches; SMEP denies
supervisor fetches from user pages; supervisor pages are unaffected by both; with CR4.PKE = 1
and PKRU = 0 (the model's reading) protection keys deny nothing. The expected outcomes are
written here, not computed by either model."""

from __future__ import annotations

from typing import Any

import pytest

from kvmtlb.hw.cpu import CR4_PKE, CR4_SMAP, CR4_SMEP
from kvmtlb.hw.outcomes import Access, PageFault
from kvmtlb.hw.paging import make_ept, make_npt, make_pte
from kvmtlb.hw.svm import Vmrun
from kvmtlb.hw.testbed import AmdSpec, IntelSpec, build_amd, build_intel
from kvmtlb.hw.vmx import VmEntry
from kvmtlb.hw.x86 import MovToCr4

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
