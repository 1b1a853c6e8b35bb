"""The seed commit's central claim, checked on the model (../shared/seed/, design.md).

"INVVPID is not required to invalidate guest-physical mappings": after an EPT entry changes,
INVVPID single-context for the VPID leaves the old HPA a possible outcome; INVEPT single-context
on the EP4TA removes it.
"""

from hwhelpers import do, enter, frames, leave

from kvmtlb.hw.paging import make_ept, make_pte
from kvmtlb.hw.testbed import IntelSpec, build_intel
from kvmtlb.hw.vmx import Invept, Invvpid

OLD, NEW = 0x80000, 0x82000


def _bed():
    spec = IntelSpec(
        guest={0x1000: make_pte(0x10000)},
        ept={0x10000: make_ept(OLD)},
        ept_values={0x10000: [make_ept(NEW)]},
    )
    return build_intel(spec)


def test_invvpid_keeps_the_old_hpa_invept_removes_it() -> None:
    tb = _bed()
    m = enter(tb.machine)
    assert frames(m, 0, 0x1000) == {OLD}
    m = m.write(tb.ept_slot(0x10000), make_ept(NEW))
    assert frames(m, 0, 0x1000) == {OLD, NEW}  # stale guest-physical and combined entries
    m = leave(m)
    after_invvpid = enter(do(m, 0, Invvpid(1, 1)))
    # INVVPID removed the combined mappings, but the stale guest-physical translation of GPA
    # 0x10000 still takes part in the next walk.
    assert frames(after_invvpid, 0, 0x1000) == {OLD, NEW}
    after_invept = enter(do(m, 0, Invept(1, tb.eptp())))
    assert frames(after_invept, 0, 0x1000) == {NEW}


def test_invvpid_alone_does_not_become_safe_by_vm_entry_with_vpid() -> None:
    tb = _bed()
    m = enter(tb.machine)
    m = m.write(tb.ept_slot(0x10000), make_ept(NEW))
    m = enter(leave(m))
    assert OLD in frames(m, 0, 0x1000)
