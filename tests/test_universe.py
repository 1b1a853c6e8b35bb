"""MAY-set bitmasks: agreement with the entry predicates, and golden universe sizes."""

from __future__ import annotations

import random

from hwsetups import KINDS  # noqa: F401  (keeps the helper import path warm)

from kvmtlb.hw.paging import make_ept, make_pte
from kvmtlb.hw.scope import intel_scope
from kvmtlb.hw.testbed import IntelSpec, build_intel
from kvmtlb.hw.vmx import invept_all_invalidation, invept_single_invalidation, invvpid_invalidation
from kvmtlb.hw.x86 import invlpg_invalidation, mov_cr3_invalidation, page_fault_invalidation

SPEC = IntelSpec(
    guest={0x1000: make_pte(0x10000), 0x2000: make_pte(0x11000, glob=True)},
    ept={0x10000: make_ept(0x80000), 0x11000: make_ept(0x81000)},
    guest_values={0x1000: [make_pte(0x11000)], 0x2000: [make_pte(0x10000, glob=True)]},
    ept_values={0x10000: [make_ept(0x82000)]},
    vpids=(1, 2),
    pcids=(0, 1),
)


def test_removal_masks_agree_with_the_predicates() -> None:
    tb = build_intel(SPEC)
    u = tb.machine.universe
    ep4ta = tb.ept_roots[0]
    invs = [
        invlpg_invalidation(intel_scope(1), 0, 0x1000),
        page_fault_invalidation(intel_scope(1), 1, 0x2000),
        mov_cr3_invalidation(intel_scope(2), 0),
        invvpid_invalidation(0, 1, 0x2000),
        invvpid_invalidation(3, 1),
        invvpid_invalidation(3, 1, keep_global_paths=False),
        invept_single_invalidation(ep4ta),
        invept_all_invalidation(),
    ]
    rng = random.Random(7)
    for _ in range(40):
        may = rng.getrandbits(len(u))
        held = u.members(may)
        for inv in invs:
            want = u.bits(e for e in held if inv.removes(e, held))
            assert inv.removal_mask(u, may) == want, inv.rules


# Checked-in sizes: a change that alters what the model can cache shows up here in review.
GOLDEN = {"entries": 84}


def test_golden_universe_size() -> None:
    assert len(build_intel(SPEC).machine.universe) == GOLDEN["entries"]
