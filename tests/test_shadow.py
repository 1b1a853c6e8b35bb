"""The shadow MMU (kvmtlb/kvm/shadow.py) hook by hook, per version and vendor.

Each test boots a tiny `tdp = false` scenario with two guest page tables (`default` and `b`, both
mapping GVA 0x1000), takes vCPU0 out of guest mode and calls the policy's methods as the explorer's
steps do, then looks at what KVM's state and the shadow tables hold. The expected values come
from the KVM sources the docstrings cite (v6.18, and the v5.x behaviour verified for historical
bugs #6 and #7), not from the port.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmsetups import exit_to_host, run_to_guest

from kvmtlb.check.explorer import explore
from kvmtlb.hw.cpu import CR3_NOFLUSH
from kvmtlb.hw.paging import RW, P, make_pte, pte_addr
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import KvmPolicy, registry
from kvmtlb.kvm.requests import (
    KVM_REQ_LOAD_MMU_PGD,
    KVM_REQ_MMU_SYNC,
    KVM_REQ_TLB_FLUSH,
    KVM_REQ_TLB_FLUSH_CURRENT,
    KVM_REQ_TLB_FLUSH_GUEST,
)
from kvmtlb.kvm.shadow import spte_from_gpte
from kvmtlb.kvm.state import Vcpu
from kvmtlb.model.properties import check_observations
from kvmtlb.model.scenario import ScenarioError, parse
from kvmtlb.model.system import System, build

VERSIONS = ("kvm-6.18", "kvm-5.8", "kvm-5.7")
GVA = 0x1000
OLD, NEW = 0x10000, 0x11000  # guest frames
OLD_HPA, NEW_HPA = 0x80000, 0x81000

TEXT = """
name = "shadow-unit"
[config]
vendor = "VENDOR"
tdp = false
vcpus = 1
pcpus = 1
pcid = true
[guest]
"0x1000" = "0x10000 w"
[guest.b]
"0x1000" = "0x10000 w"
[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"
[threads]
vcpu0 = '''
read 0x1000
map 0x1000 -> 0x11000 w
map 0x1000 -> 0x11000 w root=b
mov_cr3 b pcid=1
read 0x1000
unmap 0x1000
'''
host = "zap 0x10000"
"""


def booted(version: str, vendor: str = "intel") -> tuple[System, Step, KvmPolicy, Vcpu]:
    sys_ = build(parse(TEXT.replace("VENDOR", vendor), "<unit>"), registry()[version]())
    k = Step.thaw(sys_.kvm, sys_.initial, "test")
    vcpu = k.vcpus[0]
    exit_to_host(k, sys_.policy, vcpu)
    return sys_, k, sys_.policy, vcpu


def spte(k: Step, pol: Any, root: int) -> int:
    return int(k.machine.memory.values[pol.sptep(k, root, GVA)])


def fault_in(k: Step, pol: Any, vcpu: Vcpu, kind: int = 0) -> None:
    """A shadow #PF for GVA, both steps."""
    pol.kvm_mmu_page_fault_shadow(k, vcpu, GVA, kind)
    if vcpu.pc == "FNAME(page_fault):fetch":
        pol.fname_page_fault_fetch(k, vcpu)


def guest_write(k: Step, pol: Any, root: int, gpa: int) -> None:
    """The guest's store to its PTE, after KVM unsynced the page (the first store exits)."""
    pol.kvm_mmu_track_write_fault(k, k.vcpus[0], root, GVA)
    slot = k.config.layout.slot(k.config.roots[root], GVA)
    k.write_slot(slot, make_pte(gpa, executable=False), "guest store")


# -- the fault path ------------------------------------------------------------------------------
@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize("version", VERSIONS)
def test_fault_installs_the_host_page_of_the_guest_frame(version: str, vendor: str) -> None:
    _, k, pol, vcpu = booted(version, vendor)
    assert not spte(k, pol, 0) & P
    fault_in(k, pol, vcpu)
    value = spte(k, pol, 0)
    assert value & P and pte_addr(value) == OLD_HPA and value & RW
    assert vcpu.pc == "vcpu_enter_guest" and vcpu.pf_injected == -1


def test_fault_on_a_not_present_guest_pte_is_injected_and_checked() -> None:
    """FNAME(walk_addr) faults: KVM injects the guest's #PF, observed for guest-transparency."""
    sys_, k, pol, vcpu = booted("kvm-6.18")
    slot = k.config.layout.slot(k.config.roots[0], GVA)
    k.write_slot(slot, 0, "guest unmaps")
    fault_in(k, pol, vcpu, kind=1)
    assert vcpu.pf_injected == GVA and not spte(k, pol, 0) & P
    assert k.observations == [(0, GVA, -1, 1)]
    # natively a write of an unmapped page faults too: no violation
    assert check_observations(sys_, k.freeze(), k.observations) is None


def test_injected_pf_the_native_reference_cannot_take_is_a_violation() -> None:
    sys_, k, _pol, _vcpu = booted("kvm-6.18")
    k.observe(0, GVA, -1, 0)  # a #PF on a read of a page the native reference maps
    v = check_observations(sys_, k.freeze(), k.observations)
    assert v is not None and v.prop == "guest-transparency" and "injected a #PF" in v.detail


def test_fetch_retries_when_the_guest_pte_changed_since_the_walk() -> None:
    """FNAME(gpte_changed): the SPTE must not be built from a guest PTE that is gone."""
    _, k, pol, vcpu = booted("kvm-6.18")
    pol.kvm_mmu_page_fault_shadow(k, vcpu, GVA, 0)
    slot = k.config.layout.slot(k.config.roots[0], GVA)
    k.write_slot(slot, make_pte(NEW, executable=False), "another vCPU store")
    pol.fname_page_fault_fetch(k, vcpu)
    assert not spte(k, pol, 0) & P and vcpu.pc == "vcpu_enter_guest"


# -- unsync and sync ------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_sync_drops_an_spte_whose_guest_pte_names_another_frame(version: str) -> None:
    _, k, pol, vcpu = booted(version)
    fault_in(k, pol, vcpu)
    guest_write(k, pol, 0, NEW)
    assert pol.sp_unsync(k, 0, GVA)
    assert pte_addr(spte(k, pol, 0)) == OLD_HPA  # stale until a sync point
    pol.kvm_mmu_sync_roots(k, vcpu)
    assert not pol.sp_unsync(k, 0, GVA)
    assert not spte(k, pol, 0) & P


def test_sync_flush_is_remote_in_618_and_local_in_5x() -> None:
    """mmu_sync_children: kvm_mmu_remote_flush_or_zap (v5.16+) against kvm_mmu_flush_or_zap's
    local request (KVM_REQ_TLB_FLUSH_CURRENT in v5.8, KVM_REQ_TLB_FLUSH in v5.7)."""
    for version, want in (
        ("kvm-6.18", KVM_REQ_TLB_FLUSH),
        ("kvm-5.8", KVM_REQ_TLB_FLUSH_CURRENT),
        ("kvm-5.7", KVM_REQ_TLB_FLUSH),
    ):
        _, k, pol, vcpu = booted(version)
        fault_in(k, pol, vcpu)
        guest_write(k, pol, 0, NEW)
        vcpu.requests = 0
        pol.kvm_mmu_sync_roots(k, vcpu)
        assert vcpu.requests == want, version


def test_sync_of_an_unchanged_spte_flushes_nothing() -> None:
    _, k, pol, vcpu = booted("kvm-6.18")
    fault_in(k, pol, vcpu)
    guest_write(k, pol, 0, OLD)  # the same frame: nothing to drop
    vcpu.requests = 0
    pol.kvm_mmu_sync_roots(k, vcpu)
    assert vcpu.requests == 0 and pte_addr(spte(k, pol, 0)) == OLD_HPA


@pytest.mark.parametrize(("version", "syncs"), [("kvm-6.18", True), ("kvm-5.8", False)])
def test_guest_flush_syncs_only_from_5_13_on(version: str, syncs: bool) -> None:
    """Historical bug #6 (b53e84eed08b, v5.13): v5.8's PV flush calls the vendor hook only."""
    _, k, pol, vcpu = booted(version)
    fault_in(k, pol, vcpu)
    guest_write(k, pol, 0, NEW)
    if version == "kvm-6.18":
        pol.kvm_vcpu_flush_tlb_guest(k, vcpu)
    else:
        vcpu.frame = (3,)  # record_steal_time read PREEMPTED | FLUSH_TLB
        pol.record_steal_time_flush(k, vcpu)
    assert pol.sp_unsync(k, 0, GVA) is not syncs
    assert bool(spte(k, pol, 0) & P) is not syncs


# -- INVLPG, INVPCID, MOV CR3 --------------------------------------------------------------------
def switch_to_b_and_back(k: Step, pol: Any, vcpu: Vcpu) -> None:
    """vCPU0 loads b (PCID 1), faults GVA in there, and comes back to default (PCID 0) with a
    flush: b is then a cached root holding a present SPTE for GVA."""
    pol.kvm_set_cr3(k, vcpu, k.config.roots[1] | 1)
    run_to_guest(k, pol, vcpu)
    exit_to_host(k, pol, vcpu)
    fault_in(k, pol, vcpu)
    pol.kvm_set_cr3(k, vcpu, k.config.roots[0])
    run_to_guest(k, pol, vcpu)
    exit_to_host(k, pol, vcpu)


@pytest.mark.parametrize("version", VERSIONS)
def test_invlpg_syncs_the_address_in_cached_roots(version: str) -> None:
    _, k, pol, vcpu = booted(version)
    switch_to_b_and_back(k, pol, vcpu)
    assert vcpu.prev_roots and k.config.root_index(vcpu.prev_roots[0]) == 1
    assert spte(k, pol, 1) & P
    guest_write(k, pol, 1, NEW)
    pol.kvm_mmu_invlpg(k, vcpu, GVA)
    assert not spte(k, pol, 1) & P


@pytest.mark.parametrize(("version", "frees"), [("kvm-6.18", True), ("kvm-5.8", False)])
def test_mov_cr3_flush_frees_cached_roots_of_the_pcid(version: str, frees: bool) -> None:
    """Historical bug #7 (21823fbda552, v5.14): kvm_invalidate_pcid frees the cached roots with
    the PCID being flushed; v5.8's kvm_set_cr3 syncs the current root only."""
    _, k, pol, vcpu = booted(version)
    pol.kvm_set_cr3(k, vcpu, k.config.roots[1] | 1)
    run_to_guest(k, pol, vcpu)
    exit_to_host(k, pol, vcpu)
    pol.kvm_set_cr3(k, vcpu, k.config.roots[0] | 1 | CR3_NOFLUSH)  # default, PCID 1, no flush
    run_to_guest(k, pol, vcpu)
    exit_to_host(k, pol, vcpu)
    assert (k.config.roots[1] | 1) in vcpu.prev_roots
    pol.kvm_set_cr3(k, vcpu, k.config.roots[0] | 1)  # the same CR3, flush PCID 1
    assert ((k.config.roots[1] | 1) in vcpu.prev_roots) is not frees


def test_fast_switch_requests_load_pgd_without_sync_under_noflush() -> None:
    _, k, pol, vcpu = booted("kvm-6.18")
    switch_to_b_and_back(k, pol, vcpu)
    vcpu.requests = 0
    pol.kvm_set_cr3(k, vcpu, k.config.roots[1] | 1 | CR3_NOFLUSH)
    assert vcpu.requests == KVM_REQ_LOAD_MMU_PGD
    assert k.config.root_index(vcpu.cr3) == 1 and vcpu.root_valid
    assert k.config.root_index(vcpu.prev_roots[0]) == 0


def test_mov_cr3_flush_of_the_active_pcid_syncs_and_flushes_current() -> None:
    _, k, pol, vcpu = booted("kvm-6.18")
    vcpu.requests = 0
    pol.kvm_set_cr3(k, vcpu, vcpu.cr3)
    assert vcpu.requests == KVM_REQ_MMU_SYNC | KVM_REQ_TLB_FLUSH_CURRENT


def test_prev_roots_keep_at_most_three_in_lru_order() -> None:
    _, k, pol, vcpu = booted("kvm-6.18")
    a, b = k.config.roots
    for cr3 in (b | 1, a | 2, b | 3, a | 4):
        pol.kvm_mmu_new_pgd(k, vcpu, cr3)
        vcpu.cr3 = cr3
        vcpu.root_valid = True
    assert vcpu.prev_roots == (b | 3, a | 2, b | 1)


@pytest.mark.parametrize(
    ("version", "kind", "want"),
    [
        ("kvm-6.18", 2, KVM_REQ_TLB_FLUSH_GUEST),
        ("kvm-6.18", 3, KVM_REQ_TLB_FLUSH_GUEST),
        ("kvm-5.8", 2, 0),  # kvm_mmu_unload instead of a request
    ],
)
def test_invpcid_all_contexts(version: str, kind: int, want: int) -> None:
    _, k, pol, vcpu = booted(version)
    vcpu.requests = 0
    pol.kvm_handle_invpcid(k, vcpu, kind, 0, 0)
    assert vcpu.requests == want
    assert vcpu.root_valid is (version == "kvm-6.18")


def test_pcide_set_unloads_cached_roots_in_618_only() -> None:
    for version, unloads in (("kvm-6.18", True), ("kvm-5.8", False)):
        _, k, pol, vcpu = booted(version)
        switch_to_b_and_back(k, pol, vcpu)
        cr4 = pol.kvm_read_cr4(k, vcpu)
        pol.kvm_post_set_cr4(k, vcpu, cr4 & ~0x20000, cr4 | 0x20000)
        assert (not vcpu.prev_roots) is unloads, version


# -- the host side ------------------------------------------------------------------------------
def test_zap_reaches_the_sptes_of_every_root() -> None:
    _, k, pol, vcpu = booted("kvm-6.18")
    switch_to_b_and_back(k, pol, vcpu)
    fault_in(k, pol, vcpu)
    assert spte(k, pol, 0) & P and spte(k, pol, 1) & P
    pol.kvm_unmap_gfn_range(k, OLD)
    assert not spte(k, pol, 0) & P and not spte(k, pol, 1) & P


def test_write_protect_clears_w_in_every_spte_of_the_frame() -> None:
    _, k, pol, vcpu = booted("kvm-6.18")
    fault_in(k, pol, vcpu)
    assert spte(k, pol, 0) & RW
    assert pol.kvm_tdp_mmu_write_protect(k, OLD)
    assert spte(k, pol, 0) & P and not spte(k, pol, 0) & RW


def test_frame_of_a_fresh_page() -> None:
    sys_, *_ = booted("kvm-6.18")
    cfg = sys_.kvm
    assert cfg.frame_of_page(OLD_HPA) == OLD
    assert cfg.frame_of_page(cfg.fresh_page(NEW, 1)) == NEW
    assert cfg.frame_of_page(0x5000) == -1


def test_spte_is_never_global() -> None:
    """KVM does not mark global entries in shadow page tables (kvm_handle_invpcid's comment)."""
    value = spte_from_gpte(make_pte(OLD, glob=True), OLD_HPA, True)
    assert not value & (1 << 8)


def test_emulated_read_walks_the_guests_table_not_the_shadow() -> None:
    """The emulator walks vcpu->arch.cr3 (the hardware CR3 holds the shadow root)."""
    _, k, pol, vcpu = booted("kvm-6.18")
    pol.x86_emulate_insn_walk(k, vcpu, GVA)
    assert vcpu.frame == (GVA, OLD, vcpu.frame[2])


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize("version", VERSIONS)
def test_the_unit_scenario_is_safe(version: str, vendor: str) -> None:
    """Every interleaving of the unit scenario (a remap in both page tables, a flushing switch to
    b, the host's zap) keeps the properties: no sync point is missed there by any version."""
    sys_ = build(parse(TEXT.replace("VENDOR", vendor), "<unit>"), registry()[version]())
    assert explore(sys_).label == "safe"


# -- the scenario format --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[guest.b]", "[guest.default]"), "bad page-table name"),
        (("mov_cr3 b pcid=1", "mov_cr3 c pcid=1"), "unknown mov_cr3 argument 'c'"),
        (("root=b", "root=c"), "no guest page table named 'c'"),
        (("tdp = false", 'tdp = false\nflush_order = "later"'), "unknown flush_order"),
    ],
)
def test_format_errors(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse(TEXT.replace("VENDOR", "intel").replace(*edit), "<unit>")


# -- non-leaf edits -------------------------------------------------------------------------------
PDE_TEXT = TEXT.replace("unmap 0x1000\n", "unmap 0x1000\nlink 0x1000 -> b\nunlink 0x1000\n")


def booted_pde(version: str) -> tuple[Step, Any, Vcpu]:
    sys_ = build(parse(PDE_TEXT.replace("VENDOR", "intel"), "<unit>"), registry()[version]())
    k = Step.thaw(sys_.kvm, sys_.initial, "test")
    vcpu = k.vcpus[0]
    exit_to_host(k, sys_.policy, vcpu)
    return k, sys_.policy, vcpu


@pytest.mark.parametrize("version", VERSIONS)
def test_pde_store_zaps_the_shadow_pde_and_flushes_every_vcpu(version: str) -> None:
    k, pol, vcpu = booted_pde(version)
    fault_in(k, pol, vcpu)
    assert pol.shadow_pde_target(k, 0, GVA) == 0
    vcpu.requests = 0
    pol.kvm_emulate_guest_pt_write(k, vcpu, 0, GVA, 2, 0)
    assert pol.guest_pde_target(k, 0, GVA) == -1
    assert pol.shadow_pde_target(k, 0, GVA) == -1
    assert vcpu.requests == KVM_REQ_TLB_FLUSH


def test_fault_after_link_uses_the_other_tables_pte_and_shadow_page() -> None:
    """FNAME(fetch) links the shadow page of the table the guest's PDE names (keyed by that
    table): root 0's shadow PDE then points at root 1's shadow page, whose SPTE is installed."""
    k, pol, vcpu = booted_pde("kvm-6.18")
    value = k.config.guest_ptr[(1, 2, GVA >> 21)]
    pol.kvm_emulate_guest_pt_write(k, vcpu, 0, GVA, 2, value)
    assert pol.guest_pde_target(k, 0, GVA) == 1
    fault_in(k, pol, vcpu)
    assert pol.shadow_pde_target(k, 0, GVA) == 1
    assert spte(k, pol, 1) & P and not spte(k, pol, 0) & P


def test_fault_after_unlink_injects_the_guests_pf() -> None:
    k, pol, vcpu = booted_pde("kvm-6.18")
    pol.kvm_emulate_guest_pt_write(k, vcpu, 0, GVA, 2, 0)
    fault_in(k, pol, vcpu)
    assert vcpu.pf_injected == GVA


def test_sync_follows_the_shadow_links() -> None:
    """mmu_sync_children walks the shadow tree: after a link, root 0 reaches root 1's page."""
    k, pol, vcpu = booted_pde("kvm-6.18")
    pol.kvm_emulate_guest_pt_write(k, vcpu, 0, GVA, 2, k.config.guest_ptr[(1, 2, GVA >> 21)])
    fault_in(k, pol, vcpu)
    assert [t for t, _ in pol.reachable_pages(k, 0)] == [1]
    guest_write(k, pol, 1, NEW)
    pol.kvm_mmu_sync_roots(k, vcpu)
    assert not pol.sp_unsync(k, 1, GVA) and not spte(k, pol, 1) & P


def test_link_parses_and_names_its_target() -> None:
    with pytest.raises(ScenarioError, match="link takes GVA -> TABLE"):
        parse(PDE_TEXT.replace("VENDOR", "intel").replace("link 0x1000 -> b", "link 0x1000 b"))
    with pytest.raises(ScenarioError, match="no guest page table named 'c'"):
        parse(PDE_TEXT.replace("VENDOR", "intel").replace("link 0x1000 -> b", "link 0x1000 -> c"))


@pytest.mark.parametrize("version", VERSIONS)
def test_emulated_pte_store_zaps_the_spte_of_a_synced_page(version: str) -> None:
    """kvm_mmu_track_write: the written entry's SPTE goes (the page stays synced), and a present
    one is flushed on every vCPU."""
    _, k, pol, vcpu = booted(version)
    fault_in(k, pol, vcpu)
    vcpu.requests = 0
    pol.kvm_emulate_guest_pt_write(k, vcpu, 0, GVA, 1, make_pte(NEW, executable=False))
    assert not pol.sp_unsync(k, 0, GVA)
    assert not spte(k, pol, 0) & P
    assert vcpu.requests == KVM_REQ_TLB_FLUSH


# -- non-leaf edits above the PDE (link/unlink level=3|4) ------------------------------------------
def booted_upper(version: str, level: int) -> tuple[Step, Any, Vcpu]:
    """PDE_TEXT with its link and unlink one or two levels up, and b's PDE pointed back at the
    default page table's last-level table."""
    text = PDE_TEXT.replace("link 0x1000 -> b\n", f"link 0x1000 -> b level={level}\n")
    text = text.replace("unlink 0x1000\n", f"unlink 0x1000 level={level}\n")
    text = text.replace("mov_cr3 b", "link 0x1000 -> default root=b\nmov_cr3 b")
    sys_ = build(parse(text.replace("VENDOR", "intel"), "<unit>"), registry()[version]())
    k = Step.thaw(sys_.kvm, sys_.initial, "test")
    vcpu = k.vcpus[0]
    exit_to_host(k, sys_.policy, vcpu)
    return k, sys_.policy, vcpu


@pytest.mark.parametrize("level", [3, 4])
@pytest.mark.parametrize("version", VERSIONS)
def test_upper_store_zaps_the_shadow_entry_and_flushes_every_vcpu(version: str, level: int) -> None:
    """kvm_mmu_track_write at any level: the shadow PDPTE (PML4E) of the written entry goes, so
    the shadow walk breaks there, and every vCPU is flushed."""
    k, pol, vcpu = booted_upper(version, level)
    fault_in(k, pol, vcpu)
    vcpu.requests = 0
    pol.kvm_emulate_guest_pt_write(k, vcpu, 0, GVA, level, 0)
    assert pol.guest_pde_target(k, 0, GVA) == -1
    assert pol.shadow_pde_target(k, 0, GVA) == -1
    assert not k.machine.memory.values[pol.shadow_entry_slot(k, 0, GVA, level)]
    assert vcpu.requests == KVM_REQ_TLB_FLUSH


@pytest.mark.parametrize("level", [3, 4])
def test_fetch_links_every_level_of_the_other_tables(level: int) -> None:
    """After the default page table's PDPTE (PML4E) is pointed at page table b's page directory
    (PDPT), the fault links b's shadow pages from that level down and installs the SPTE in b's
    last-level shadow page, which the default root then reaches."""
    k, pol, vcpu = booted_upper("kvm-6.18", level)
    value = k.config.guest_ptr[(1, level, GVA >> (12 + 9 * (level - 1)))]
    pol.kvm_emulate_guest_pt_write(k, vcpu, 0, GVA, level, value)
    assert k.config.table_chain(k.machine.memory.values, k.config.roots, 0, GVA)[-1] == 1
    fault_in(k, pol, vcpu)
    assert pol.shadow_pde_target(k, 0, GVA) == 1
    assert k.config.table_chain(k.machine.memory.values, k.config.shadow_roots, 0, GVA) == (
        (1, 1, 1) if level == 4 else (0, 1, 1)
    )
    assert spte(k, pol, 1) & P and not spte(k, pol, 0) & P


def test_fetch_retries_when_an_upper_entry_changed_since_the_walk() -> None:
    """FNAME(gpte_changed) at every level: a PDPTE stored between the walk and FNAME(fetch) sends
    the fault back, even though the walk's last-level table is the same."""
    k, pol, vcpu = booted_upper("kvm-6.18", 3)
    pol.kvm_mmu_page_fault_shadow(k, vcpu, GVA, 0)
    assert vcpu.pc == "FNAME(page_fault):fetch"
    # point the PDPTE at b's page directory and b's PDE back at the default's table: same PTE
    pol.emulator_write_phys(k, 1, GVA, 2, k.config.guest_ptr[(0, 2, GVA >> 21)])
    pol.emulator_write_phys(k, 0, GVA, 3, k.config.guest_ptr[(1, 3, GVA >> 30)])
    assert pol.guest_pde_target(k, 0, GVA) == 0
    pol.fname_page_fault_fetch(k, vcpu)
    assert not spte(k, pol, 0) & P


@pytest.mark.parametrize(
    ("op", "message"),
    [
        ("link 0x1000 -> b level=5", "level 2, 3 or 4"),
        ("unlink 0x1000 level=1", "level 2, 3 or 4"),
        ("link 0x1000 -> b level=", "level 2, 3 or 4"),
        ("unlink 0x1000 level=3 level=4", "unlink takes GVA"),
    ],
)
def test_level_errors(op: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse(PDE_TEXT.replace("VENDOR", "intel").replace("unlink 0x1000\n", op + "\n"))


def test_level_parses_in_either_order_with_root() -> None:
    for text in ("link 0x1000 -> b root=b level=3", "link 0x1000 -> b level=3 root=b"):
        sc = parse(PDE_TEXT.replace("VENDOR", "intel").replace("link 0x1000 -> b", text))
        (op,) = [o for o in sc.programs[0] if o.describe().startswith("link")]
        assert (op.root, op.level) == ("b", 3)
        assert op.describe() == "link 0x1000 -> b root=b level=3"
