"""A guest page table in a guest frame (`[tables]`, shadow paging): the guest's stores to it go
through its own mapping of the frame, and KVM's write protection is that mapping's SPTE.

The expected behaviour comes from mmu.c @ v6.18 (and v5.7/v5.8, the same here): make_spte ->
mmu_try_to_unsync_pages unsyncs a shadowed table when it makes a mapping of it writable;
FNAME(sync_spte) may not (a synced table's mapping stays read-only); mmu_sync_children
write-protects every table it syncs and, if a mapping lost write permission, flushes every vCPU
and waits before it reads the guest's PTEs.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmsetups import exit_to_host, run_to_guest

from kvmtlb.hw.paging import RW, P, pte_addr
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.requests import KVM_REQ_TLB_FLUSH
from kvmtlb.kvm.state import IN_GUEST_MODE, OUTSIDE_GUEST_MODE
from kvmtlb.model import actions
from kvmtlb.model.scenario import ScenarioError, parse
from kvmtlb.model.system import System, build

VERSIONS = ("kvm-6.18", "kvm-5.8", "kvm-5.7")
SELF = 0x7000  # the guest's mapping of its table page
FRAME, FRAME_HPA = 0x30000, 0x90000

TEXT = """
name = "tables-unit"
[config]
vendor = "intel"
tdp = false
vcpus = 2
pcpus = 2
[guest]
"0x1000" = "0x10000 w"
"0x7000" = "0x30000 w"
[tables]
default = "0x30000"
[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"
"0x30000" = "0x90000 rw"
[threads]
vcpu1 = '''
map 0x1000 -> 0x11000 w
'''
"""


def system(version: str = "kvm-6.18", text: str = TEXT) -> System:
    return build(parse(text, "<unit>"), registry()[version]())


def self_spte(k: Step, pol: Any) -> int:
    return int(k.machine.memory.values[pol.sptep(k, 0, SELF)])


def unsync(k: Step, pol: Any) -> bool:
    return bool(k.kvm.unsync >> pol.table_sp_bit(k, 0) & 1)


def fault_in_self_map(k: Step, pol: Any, v: int) -> None:
    """vCPU `v` takes the shadow #PF of a write through its mapping of the table."""
    vcpu = k.vcpus[v]
    exit_to_host(k, pol, vcpu)
    pol.kvm_mmu_page_fault_shadow(k, vcpu, SELF, 1)
    pol.fname_page_fault_fetch(k, vcpu)
    run_to_guest(k, pol, vcpu)


@pytest.mark.parametrize("version", VERSIONS)
def test_store_is_a_write_through_the_guests_mapping(version: str) -> None:
    sys_ = system(version)
    acts = [a for a in actions.enabled(sys_, sys_.initial) if a.actor == "guest1"]
    assert [(a.kind, a.args) for a in acts] == [("store", (0,))]  # one outcome: the #PF
    out = actions.apply(sys_, sys_.initial, acts[0])
    assert "a store through 0x7000" in out.records[0].action
    k = Step.thaw(sys_.kvm, out.world, "test")
    assert k.vcpus[1].pc != "guest"  # the #PF exited to KVM; the PTE is unchanged
    slot = k.config.layout.slot(k.config.roots[0], 0x1000)
    assert pte_addr(int(k.machine.memory.values[slot])) == 0x10000


@pytest.mark.parametrize("version", VERSIONS)
def test_fault_unsyncs_the_table_and_makes_its_mapping_writable(version: str) -> None:
    sys_ = system(version)
    k = Step.thaw(sys_.kvm, sys_.initial, "test")
    pol: Any = sys_.policy
    assert not unsync(k, pol)
    fault_in_self_map(k, pol, 1)
    assert unsync(k, pol)
    spte = self_spte(k, pol)
    assert spte & P and spte & RW and pte_addr(spte) == FRAME_HPA


@pytest.mark.parametrize("version", VERSIONS)
def test_sync_write_protects_and_waits_for_every_vcpu(version: str) -> None:
    sys_ = system(version)
    k = Step.thaw(sys_.kvm, sys_.initial, "test")
    pol: Any = sys_.policy
    fault_in_self_map(k, pol, 1)
    other = k.vcpus[1]
    assert other.mode == IN_GUEST_MODE
    vcpu = k.vcpus[0]
    exit_to_host(k, pol, vcpu)
    pol.kvm_mmu_sync_roots(k, vcpu)
    assert not unsync(k, pol)
    assert not self_spte(k, pol) & RW
    # vCPU1 left guest mode before the sync read the PTEs, and flushes before it enters again
    assert other.mode == OUTSIDE_GUEST_MODE and other.pc != "guest"
    assert other.requests & KVM_REQ_TLB_FLUSH


def test_the_bug_variant_leaves_the_other_vcpu_in_guest_mode() -> None:
    sys_ = system("bug-sync-children-no-protect-flush")
    k = Step.thaw(sys_.kvm, sys_.initial, "test")
    pol: Any = sys_.policy
    fault_in_self_map(k, pol, 1)
    vcpu = k.vcpus[0]
    exit_to_host(k, pol, vcpu)
    pol.kvm_mmu_sync_roots(k, vcpu)
    assert not self_spte(k, pol) & RW
    assert k.vcpus[1].mode == IN_GUEST_MODE and not k.vcpus[1].requests & KVM_REQ_TLB_FLUSH


@pytest.mark.parametrize("version", VERSIONS)
def test_sync_spte_keeps_a_synced_tables_mapping_read_only(version: str) -> None:
    sys_ = system(version)
    k = Step.thaw(sys_.kvm, sys_.initial, "test")
    pol: Any = sys_.policy
    fault_in_self_map(k, pol, 1)
    k.kvm.unsync = 0  # as if synced (and still mapped writable: a sync without protection)
    assert pol.kvm_sync_spte(k, 0, SELF)
    assert not self_spte(k, pol) & RW
    k.kvm.unsync = 1 << pol.table_sp_bit(k, 0)
    pol.set_shadow_spte(k, 0, SELF, self_spte(k, pol) | RW, "test")
    assert not pol.kvm_sync_spte(k, 0, SELF)  # unsync: the writable mapping stays
    assert self_spte(k, pol) & RW


def test_without_a_mapping_of_the_frame_the_store_traps() -> None:
    text = TEXT.replace('"0x7000" = "0x30000 w"\n', '"0x7000" = "0x30000"\n')  # read-only
    sys_ = system(text=text)
    acts = [a for a in actions.enabled(sys_, sys_.initial) if a.actor == "guest1"]
    assert [a.kind for a in acts] == ["op"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("tdp = false", "tdp = true"), "[tables] needs shadow paging"),
        (('default = "0x30000"', 'nosuch = "0x30000"'), "unknown page table 'nosuch'"),
        (('default = "0x30000"', 'default = "0x40000"'), "is not mapped in [host]"),
        (('"0x30000" = "0x90000 rw"', '"0x30000" = "0x90000 r"'), "memslot is read-only"),
        (('default = "0x30000"', 'default = "0x30001"'), "not 4 KiB aligned"),
    ],
)
def test_format_errors(edit: tuple[str, str], message: str) -> None:
    text = TEXT.replace(*edit)
    with pytest.raises(ScenarioError) as e:
        parse(text, "<unit>")
    assert message in str(e.value)
    assert e.value.line > 0


def test_two_tables_in_one_frame_is_an_error() -> None:
    text = TEXT.replace('default = "0x30000"', 'default = "0x30000"\nb = "0x30000"').replace(
        "[host]", '[guest.b]\n"0x1000" = "0x10000 w"\n[host]'
    )
    with pytest.raises(ScenarioError, match="two page tables in GPA 0x30000"):
        parse(text, "<unit>")
