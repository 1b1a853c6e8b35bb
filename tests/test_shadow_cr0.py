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


def spte(k: Step, pol: Any) -> int:
    return int(k.machine.memory.values[pol.sptep(k, 0, 0x1000)])


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
    write_fault(k, pol)
    s = spte(k, pol)
    assert s & P and s & RW and not s & US and pte_addr(s) == 0x80000


@pytest.mark.parametrize("version", VERSIONS)
def test_wp_set_resets_and_drops_the_wp0_sptes(version: str) -> None:
    k, pol = booted(version)
    vcpu = k.vcpus[0]
    pol.kvm_set_cr0(k, vcpu, CR0_DEFAULT & ~CR0_WP)
    write_fault(k, pol)
    vcpu.root_valid = True
    pol.kvm_set_cr0(k, vcpu, CR0_DEFAULT)
    assert vcpu.cr0_wp and not vcpu.root_valid
    assert not spte(k, pol) & P


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
        (("vcpus = 1\npcpus = 1", "vcpus = 2\npcpus = 1"), "set_cr0 needs vcpus = 1"),
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
