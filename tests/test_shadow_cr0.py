"""CR0.WP under shadow paging (`set_cr0 wp=0|1`): KVM intercepts the write, keeps the processor at
WP = 1, emulates WP = 0 with writable supervisor-only SPTEs (paging_tmpl.h:FNAME(page_fault)
@ v6.18), and resets the MMU on every change (CR0.WP is an MMU role bit: x86.c:kvm_post_set_cr0
@ v6.18; kvm_set_cr0's update_bits @ v5.x)."""

from __future__ import annotations

from typing import Any

import pytest
from kvmsetups import exit_to_host

from kvmtlb.check.explorer import explore
from kvmtlb.hw.cpu import CR0_DEFAULT, CR0_WP
from kvmtlb.hw.paging import RW, US, P, pte_addr
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import registry
from kvmtlb.model.scenario import ScenarioError, parse
from kvmtlb.model.system import build

VERSIONS = ("kvm-6.18", "kvm-5.8", "kvm-5.7")
TEXT = """
name = "cr0-unit"
[config]
vendor = "VENDOR"
tdp = false
vcpus = 1
pcpus = 1
[guest]
"0x1000" = "0x10000"
[host]
"0x10000" = "0x80000 rwx"
[threads]
vcpu0 = '''
set_cr0 wp=0
write 0x1000
set_cr0 wp=1
write 0x1000
'''
"""


def booted(version: str, vendor: str = "intel") -> tuple[Step, Any]:
    sys_ = build(parse(TEXT.replace("VENDOR", vendor), "<unit>"), registry()[version]())
    k = Step.thaw(sys_.kvm, sys_.initial, "test")
    exit_to_host(k, sys_.policy, k.vcpus[0])
    return k, sys_.policy


def spte(k: Step, pol: Any, wp: bool = True) -> int:
    """The SPTE of 0x1000 in the shadow pages of role CR0.WP = `wp`."""
    return int(k.machine.memory.values[pol.sptep(k, k.config.shadow_index(0, wp), 0x1000)])


def reload(k: Step, pol: Any) -> None:
    """What the next entry does after an MMU reset: kvm_mmu_reload loads a root of the MMU's
    current role."""
    pol.kvm_mmu_reload(k, k.vcpus[0])


def write_fault(k: Step, pol: Any) -> None:
    vcpu = k.vcpus[0]
    pol.kvm_mmu_page_fault_shadow(k, vcpu, 0x1000, 1)
    if vcpu.pc == "FNAME(page_fault):fetch":
        pol.fname_page_fault_fetch(k, vcpu)


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize("version", VERSIONS)
def test_wp_clear_makes_a_writable_supervisor_only_spte(version: str, vendor: str) -> None:
    k, pol = booted(version, vendor)
    vcpu = k.vcpus[0]
    write_fault(k, pol)  # WP = 1: the guest's own #PF is injected
    assert vcpu.pf_injected == 0x1000 and not spte(k, pol) & P
    vcpu.pf_injected = -1
    pol.kvm_set_cr0(k, vcpu, CR0_DEFAULT & ~CR0_WP)
    assert not vcpu.cr0_wp and not vcpu.root_valid  # the MMU was reset
    reload(k, pol)
    assert not vcpu.root_wp  # a root of role CR0.WP = 0
    write_fault(k, pol)
    s = spte(k, pol, wp=False)
    assert s & P and s & RW and not s & US and pte_addr(s) == 0x80000
    assert not spte(k, pol) & P  # the pages of role WP = 1 never hold it


@pytest.mark.parametrize("version", VERSIONS)
def test_wp_set_resets_to_the_pages_of_the_other_role(version: str) -> None:
    """Back at WP = 1 the vCPU's next root is of role WP = 1, whose SPTE is not present: the
    write faults again (and KVM injects the guest's #PF), while the WP = 0 pages keep theirs."""
    k, pol = booted(version)
    vcpu = k.vcpus[0]
    pol.kvm_set_cr0(k, vcpu, CR0_DEFAULT & ~CR0_WP)
    reload(k, pol)
    write_fault(k, pol)
    pol.kvm_set_cr0(k, vcpu, CR0_DEFAULT)
    assert vcpu.cr0_wp and not vcpu.root_valid
    reload(k, pol)
    assert vcpu.root_wp
    write_fault(k, pol)
    assert vcpu.pf_injected == 0x1000
    assert not spte(k, pol) & P and spte(k, pol, wp=False) & RW


def test_vmx_keeps_wp_in_the_processor_and_the_guests_value_in_the_read_shadow() -> None:
    k, pol = booted("kvm-6.18")
    vcpu = k.vcpus[0]
    vmcs = vcpu.vmcs
    assert vmcs is not None and vmcs.cr0_guest_host_mask & CR0_WP
    pol.kvm_set_cr0(k, vcpu, CR0_DEFAULT & ~CR0_WP)
    assert vcpu.vmcs is not None
    assert vcpu.vmcs.cr0_read_shadow == CR0_DEFAULT & ~CR0_WP
    assert vcpu.vmcs.guest.cr0 & CR0_WP


def test_the_bug_variant_keeps_the_wp0_spte() -> None:
    k, pol = booted("bug-post-set-cr0-ignores-wp")
    vcpu = k.vcpus[0]
    pol.kvm_set_cr0(k, vcpu, CR0_DEFAULT & ~CR0_WP)
    assert vcpu.root_valid and vcpu.root_wp  # no reset: the root of role WP = 1 stays
    write_fault(k, pol)
    pol.kvm_set_cr0(k, vcpu, CR0_DEFAULT)
    assert spte(k, pol) & RW
    scenario = parse(TEXT.replace("VENDOR", "intel"), "<unit>")
    assert explore(build(scenario, registry()["bug-post-set-cr0-ignores-wp"]())).verdict == (
        "violation"
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("tdp = false", "tdp = true"), "set_cr0 needs shadow paging"),
        (("set_cr0 wp=0", "set_cr0 wp=2"), "bad set_cr0 argument 'wp=2'"),
        (("set_cr0 wp=0", "set_cr0 pg=0"), "bad set_cr0 argument 'pg=0'"),
        (("set_cr0 wp=0", "set_cr0"), "set_cr0"),
    ],
)
def test_format_errors(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(TEXT.replace("VENDOR", "intel").replace(*edit), "<unit>")
    assert message in str(e.value)
    assert e.value.line > 0


# -- several vCPUs: the two roles' shadow pages side by side --------------------------------------
TWO = TEXT.replace("vcpus = 1\npcpus = 1", "vcpus = 2\npcpus = 2").replace(
    "write 0x1000\n'''", "write 0x1000\n'''\nvcpu1 = '''\nwrite 0x1000\nunmap 0x1000\n'''"
)


def test_two_roles_track_unsync_and_rmap_reach_both() -> None:
    """A guest-table store zaps the written entry in the shadow pages of both roles, the #PF of a
    store unsyncs both, and the rmap (a host zap) finds the SPTEs of both."""
    sys_ = build(parse(TWO.replace("VENDOR", "intel"), "<unit>"), registry()["kvm-6.18"]())
    k = Step.thaw(sys_.kvm, sys_.initial, "test")
    pol = sys_.policy
    v0, v1 = k.vcpus[0], k.vcpus[1]
    exit_to_host(k, pol, v0)
    exit_to_host(k, pol, v1)
    assert k.config.wp_roles and len(k.config.shadow_roots) == 2
    pol.kvm_set_cr0(k, v0, CR0_DEFAULT & ~CR0_WP)
    pol.kvm_mmu_reload(k, v0)
    for v in (v0, v1):
        pol.kvm_mmu_page_fault_shadow(k, v, 0x1000, 0)
        pol.fname_page_fault_fetch(k, v)
    assert spte(k, pol) & P and spte(k, pol, wp=False) & P
    assert sorted(s for s, _ in pol.rmap_sptes(k, 0x10000)) == [0, 1]
    pol.kvm_mmu_track_write(k, v1, 0, 0x1000, 1)
    assert not spte(k, pol) & P and not spte(k, pol, wp=False) & P
    pol.mmu_try_to_unsync_pages(k, 0, 0x1000)
    assert pol.sp_unsync(k, 0, 0x1000) and pol.sp_unsync(k, 1, 0x1000)


def test_the_write_of_a_wp0_vcpu_stays_out_of_a_wp1_vcpus_pages() -> None:
    """vCPU0 (WP = 0) writes through the read-only PTE; vCPU1 (WP = 1) must still fault: safe in
    kvm-6.18, and a KVM that shares the roles' pages (the variant) lets vCPU1's write through."""
    scenario = parse(TWO.replace("VENDOR", "intel"), "<unit>")
    assert explore(build(scenario, registry()["kvm-6.18"]())).verdict == "safe"
    bug = explore(build(scenario, registry()["bug-shadow-role-ignores-cr0-wp"]()))
    assert bug.verdict == "violation"
