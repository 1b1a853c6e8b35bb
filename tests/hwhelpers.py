"""Helpers to drive testbed machines in tests."""

from __future__ import annotations

from typing import Any

from kvmtlb.hw.machine import Machine
from kvmtlb.hw.outcomes import Access
from kvmtlb.hw.vmx import VmEntry, VmExitEvent, Vmwrite


def enter(m: Machine, i: int = 0) -> Machine:
    vmcs = m.cpus[i].vmcs
    st = m.step(i, VmEntry(launch=not vmcs.launched))
    assert type(st.outcome).__name__ == "Done", st.outcome
    return st.machine


def leave(m: Machine, i: int = 0) -> Machine:
    return m.step(i, VmExitEvent()).machine


def do(m: Machine, i: int, event: Any) -> Machine:
    return m.step(i, event).machine


def vmwrite(m: Machine, i: int, **fields: Any) -> Machine:
    for k, v in fields.items():
        m = m.step(i, Vmwrite(k, v)).machine
    return m


def frames(m: Machine, i: int, gva: int, access: str = "read") -> set[int]:
    """The host frames an access may reach."""
    return {o.frame for o in m.outcomes(i, gva, access) if isinstance(o, Access)}


def kinds(m: Machine, i: int, gva: int, access: str = "read") -> set[str]:
    return {type(o).__name__ for o in m.outcomes(i, gva, access)}
