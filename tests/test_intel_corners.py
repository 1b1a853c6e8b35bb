"""The Intel corner cases of x86-tlb-architecture.md §6, on whole machines.

Each test names its corner case. Cases about what one event removes are rows of the invalidation
table (tests/data/intel_invalidations.toml, listed in its `covers`); the cases here need fills,
memory changes and several events to show.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from hwhelpers import do, enter, frames, kinds, leave, vmwrite

from kvmtlb.hw.cpu import CR0_DEFAULT, CR0_PG, CR4_DEFAULT, CR4_PCIDE, CR4_PGE, Regs
from kvmtlb.hw.effect import Readings
from kvmtlb.hw.mappings import CombinedPsc, CombinedTranslation
from kvmtlb.hw.paging import E_R, E_W, E_X, make_ept, make_pte
from kvmtlb.hw.testbed import IntelSpec, build_intel
from kvmtlb.hw.vmx import Invept, Invvpid, invvpid_invalidation
from kvmtlb.hw.x86 import Invlpg, MovToCr0, MovToCr3, MovToCr4

OLD, NEW, OTHER = 0x80000, 0x81000, 0x84000
GVA, GPA, GPA2 = 0x1000, 0x10000, 0x11000

INTEL_CORNERS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 19, 20, 21, 22, 23}
TESTED_HERE = {1, 2, 4, 5, 6, 9, 12, 13, 15, 19, 21, 22, 23}


def test_every_intel_corner_case_is_checked() -> None:
    table = tomllib.loads((Path(__file__).parent / "data" / "intel_invalidations.toml").read_text())
    in_table = {int(c[3:]) for e in table["event"] for c in e["covers"] if c.startswith("§6.")}
    missing = INTEL_CORNERS - in_table - TESTED_HERE - {8}  # §6.8: test_vmx_failures.py
    assert not missing, f"corner cases of §6 checked nowhere: {sorted(missing)}"


def _two_gpas(**kw: object) -> IntelSpec:
    """GVA 0x1000 -> GPA 0x10000 -> HPA OLD; the guest may remap it to GPA 0x11000 -> NEW."""
    spec = IntelSpec(
        guest={GVA: make_pte(GPA)},
        ept={GPA: make_ept(OLD), GPA2: make_ept(NEW)},
        guest_values={GVA: [make_pte(GPA2)]},
    )
    for k, v in kw.items():
        setattr(spec, k, v)
    return spec


def test_6_1_invept_does_not_touch_linear_mappings() -> None:
    spec = _two_gpas(linear={GVA: make_pte(0x90000)}, linear_values={GVA: [make_pte(0x91000)]})
    tb = build_intel(spec)
    guest = Regs(CR0_DEFAULT, tb.linear_root, CR4_DEFAULT)
    m = vmwrite(tb.machine, 0, enable_ept=False, unrestricted_guest=False, guest=guest)
    m = enter(m)  # EPT off: linear mappings for VPID 1
    assert frames(m, 0, GVA) == {0x90000}
    m = leave(m).write(tb.linear_slot(GVA), make_pte(0x91000))
    m_invept = enter(do(m, 0, Invept(2)))
    assert frames(m_invept, 0, GVA) == {0x90000, 0x91000}  # the linear mapping survived
    m_invvpid = enter(do(m, 0, Invvpid(1, 1)))
    assert frames(m_invvpid, 0, GVA) == {0x91000}


def test_6_2_invvpid_does_not_touch_guest_physical_mappings() -> None:
    tb = build_intel(
        IntelSpec(
            guest={GVA: make_pte(GPA)}, ept={GPA: make_ept(OLD)}, ept_values={GPA: [make_ept(NEW)]}
        )
    )
    m = enter(tb.machine).write(tb.ept_slot(GPA), make_ept(NEW))
    for t in (0, 1, 2, 3):
        after = enter(do(leave(m), 0, Invvpid(t, 0 if t == 2 else 1, GVA)))
        assert frames(after, 0, GVA) == {OLD, NEW}, f"INVVPID type {t}"
    # A MOV to CR3 inside the guest does not either.
    assert frames(do(m, 0, MovToCr3(tb.guest_root)), 0, GVA) == {OLD, NEW}


def test_6_4_switching_eptp_hides_but_does_not_drop() -> None:
    spec = IntelSpec(
        guest={GVA: make_pte(GPA)},
        ept={GPA: make_ept(OLD)},
        ept_values={GPA: [make_ept(NEW), make_ept(OTHER)]},
        ept_roots=2,
    )
    tb = build_intel(spec)
    m = enter(tb.machine)
    assert frames(m, 0, GVA) == {OLD}
    m = (
        leave(m)
        .write(tb.ept_slot(GPA, 0), make_ept(NEW))
        .write(tb.ept_slot(GPA, 1), make_ept(OTHER))
    )
    on_e2 = enter(vmwrite(m, 0, eptp=tb.eptp(1)))
    assert frames(on_e2, 0, GVA) == {OTHER}  # E1's stale entries are not used under E2
    back = enter(vmwrite(leave(on_e2), 0, eptp=tb.eptp(0)))
    assert frames(back, 0, GVA) == {OLD, NEW}  # ... and come back with E1


def test_6_5_vpid_off_entry_and_exit_flush_vpid_0_including_the_host() -> None:
    spec = _two_gpas(linear={GVA: make_pte(0x90000)}, linear_values={GVA: [make_pte(0x91000)]})
    tb = build_intel(spec)
    m = vmwrite(tb.machine, 0, enable_vpid=False)
    host = frames(m, 0, GVA)
    assert host == {0x90000}  # the host's own (VPID 0) linear mapping
    m = m.write(tb.linear_slot(GVA), make_pte(0x91000))
    assert frames(m, 0, GVA) == {0x90000, 0x91000}
    m = enter(m)
    m = m.write(tb.pte_slot(GVA), make_pte(GPA2))
    assert frames(m, 0, GVA) == {OLD, NEW}  # stale combined mapping of VPID 0
    m = leave(m)
    assert frames(m, 0, GVA) == {0x91000}  # the VM exit flushed the host's stale entry too
    assert frames(enter(m), 0, GVA) == {NEW}


def test_6_6_vpid_on_transitions_flush_nothing() -> None:
    tb = build_intel(_two_gpas())
    m = enter(tb.machine).write(tb.pte_slot(GVA), make_pte(GPA2))
    assert frames(enter(leave(m)), 0, GVA) == {OLD, NEW}


def test_6_9_globals_ignore_pcid_but_respect_vpid() -> None:
    spec = _two_gpas(
        guest={GVA: make_pte(GPA, glob=True)},
        pcids=(1, 2),
        vpids=(1, 2),
        guest_values={GVA: [make_pte(GPA2, glob=True)]},
    )
    tb = build_intel(spec)
    guest = Regs(CR0_DEFAULT, tb.guest_root | 1, CR4_DEFAULT | CR4_PCIDE)
    m = enter(vmwrite(tb.machine, 0, guest=guest))
    m = m.write(tb.pte_slot(GVA), make_pte(GPA2, glob=True))
    m = do(m, 0, MovToCr3(tb.guest_root | 2))  # flushes PCID 2's non-global entries only
    assert frames(m, 0, GVA) == {OLD, NEW}  # the global entry made under PCID 1 is used
    other_vpid = enter(vmwrite(leave(m), 0, vpid=2))
    assert frames(other_vpid, 0, GVA) == {NEW}


def test_6_9_invvpid_type_3_global_paths_follow_the_reading() -> None:
    glob = CombinedTranslation(1, 0, 0x2000, GVA, 0x1000, 0x1000, OLD, 7, 7, True, GPA)
    psc = CombinedPsc(1, 0, 0x2000, 2, 0, 0x5000, 7)
    keep = invvpid_invalidation(3, 1, keep_global_paths=True)
    strict = invvpid_invalidation(3, 1, keep_global_paths=False)
    assert not keep.removes(psc, [glob, psc])
    assert keep.removes(psc, [psc])  # no held global translation below it
    assert strict.removes(psc, [glob, psc])
    assert not keep.removes(glob, [glob, psc]) and not strict.removes(glob, [glob, psc])


def test_6_12_setting_pcide_keeps_pcid_0_entries() -> None:
    tb = build_intel(_two_gpas(pcids=(0,)))
    m = enter(tb.machine).write(tb.pte_slot(GVA), make_pte(GPA2))
    m = do(m, 0, MovToCr4(m.cpus[0].regs.cr4 | CR4_PCIDE))
    assert m.cpus[0].pcid == 0
    assert frames(m, 0, GVA) == {OLD, NEW}


def _unpaged(readings: Readings) -> tuple[object, int]:
    """The guest runs with CR0.PG = 0 (unrestricted guest): GVA 0x10000 is GPA 0x10000."""
    spec = IntelSpec(
        guest={GPA: make_pte(GPA2)},
        ept={GPA: make_ept(OLD), GPA2: make_ept(NEW)},
        unpaged=True,
        readings=readings,
    )
    tb = build_intel(spec)
    unpaged = Regs(CR0_DEFAULT & ~CR0_PG, tb.guest_root, CR4_DEFAULT & ~CR4_PGE, cs_l=False)
    m = enter(vmwrite(tb.machine, 0, guest=unpaged))
    assert frames(m, 0, GPA) == {OLD}  # identity: linear 0x10000 = GPA 0x10000
    m = do(m, 0, MovToCr0(CR0_DEFAULT))
    return m, GPA


def test_6_13_setting_pg_keeps_identity_combined_translations_literally() -> None:
    m, addr = _unpaged(Readings())
    assert frames(m, 0, addr) == {OLD, NEW}  # literal reading: the identity entry survives
    m, addr = _unpaged(Readings(pg_set_flushes=True))
    assert frames(m, 0, addr) == {NEW}


def test_6_15_same_vpid_for_two_vcpus_shares_translations() -> None:
    tb = build_intel(_two_gpas())
    vcpu_a = tb.machine.cpus[0].vmcs
    m = enter(tb.machine)
    m = leave(m).write(tb.pte_slot(GVA), make_pte(GPA2))
    b_same = vcpu_a._replace(ident=0x7000, launched=False)  # vCPU B, same VPID and EPTP
    from kvmtlb.hw.vmx import Vmptrld

    m_same = enter(do(m, 0, Vmptrld(b_same)))
    assert frames(m_same, 0, GVA) == {OLD, NEW}
    b_other = b_same._replace(vpid=2)
    tb2 = build_intel(_two_gpas(vpids=(1, 2)))
    m2 = leave(enter(tb2.machine)).write(tb2.pte_slot(GVA), make_pte(GPA2))
    assert frames(enter(do(m2, 0, Vmptrld(b_other))), 0, GVA) == {NEW}


def test_6_19_invalidations_are_local_to_one_processor() -> None:
    tb = build_intel(_two_gpas(cpus=2))
    vmcs = tb.machine.cpus[1].vmcs._replace(vpid=1)  # the same vCPU (VPID 1) on either pCPU
    from kvmtlb.hw.vmx import Vmptrld

    m = enter(do(tb.machine, 1, Vmptrld(vmcs)), 1)  # it runs on pCPU 1 first
    m = leave(m, 1)
    m = enter(m, 0).write(tb.pte_slot(GVA), make_pte(GPA2))  # then on pCPU 0
    m = do(m, 0, Invlpg(GVA))  # the guest's INVLPG runs on pCPU 0 only
    assert frames(m, 0, GVA) == {NEW}
    back = enter(m, 1)  # migrated back: pCPU 1 still holds the stale entry
    assert frames(back, 1, GVA) == {OLD, NEW}


def test_6_21_fills_happen_without_accesses() -> None:
    spec = IntelSpec(
        guest={GVA: make_pte(GPA)},
        ept={GPA: make_ept(OLD), GPA2: make_ept(NEW)},
        guest_values={0x2000: [make_pte(GPA2)]},
    )
    tb = build_intel(spec)
    m = enter(tb.machine).write(tb.pte_slot(0x2000), make_pte(GPA2))
    held = [e for e in m.held(0) if isinstance(e, CombinedTranslation)]
    assert any(e.page == 0x2000 and e.frame == NEW for e in held)


def test_6_22_split_large_pages() -> None:
    big = 0x20_0000
    spec = IntelSpec(
        guest={},
        guest_large={big: make_pte(0x40_0000, large=True)},
        names=(big + 0x1000,),
        ept={},
        ept_large={0x40_0000: make_ept(0x60_0000, large=True)},
        guest_values={},
    )
    tb = build_intel(spec)
    b_slot = tb.layout.slot(tb.guest_root, big, 2)
    m = enter(tb.machine)
    sizes = {(e.page, e.size) for e in m.held(0) if isinstance(e, CombinedTranslation)}
    assert (big, 0x20_0000) in sizes and (big + 0x1000, 0x1000) in sizes  # whole and pieces
    m = m.write(b_slot, 0)  # the guest unmaps the large page: every entry is stale
    assert "Access" in kinds(m, 0, big) and "Access" in kinds(m, 0, big + 0x1000)
    # INVLPG of one 4 KiB part removes every entry of the large page, pieces included.
    m2 = do(m, 0, Invlpg(big + 0x1000))
    assert kinds(m2, 0, big) == {"PageFault"} and kinds(m2, 0, big + 0x1000) == {"PageFault"}
    # INVVPID individual-address only removes what would translate that address: the piece
    # that covers the other 4 KiB part survives.
    m3 = enter(do(leave(m), 0, Invvpid(0, 1, big + 0x1000)))
    assert kinds(m3, 0, big + 0x1000) == {"PageFault"}
    assert "Access" in kinds(m3, 0, big)


def test_6_23_relaxing_permissions_gives_at_most_one_spurious_fault() -> None:
    spec = IntelSpec(
        guest={GVA: make_pte(GPA)},
        ept={GPA: make_ept(OLD, E_R | E_X)},
        ept_values={GPA: [make_ept(OLD, E_R | E_W | E_X)]},
    )
    tb = build_intel(spec)
    m = enter(tb.machine)
    assert kinds(m, 0, GVA, "write") == {"EptViolation"}
    m = m.write(tb.ept_slot(GPA), make_ept(OLD, E_R | E_W | E_X))  # relaxed, no INVEPT
    assert kinds(m, 0, GVA, "write") == {"EptViolation", "Access"}
    for outcome, succ in m.access(0, GVA, "write"):
        if type(outcome).__name__ == "EptViolation":
            # The violation removed the stale entries: after it, the write succeeds.
            assert kinds(enter(succ), 0, GVA, "write") == {"Access"}
    # The EPTP KVM builds: the root, WB memory type (6), a 4-level walk (3 << 3), no A/D.
    assert tb.eptp() == tb.ept_roots[0] | 0x1E
