"""CR0.WP with TDP per version and vendor: who owns the bit, what KVM does when it changes.

- VMX with EPT: kvm-6.18 gives the guest CR0.WP (vmx_l1_guest_owned_cr0_bits; fb509f76acc8,
  v6.4), so a toggle runs natively; kvm-5.7/5.8 own only CR0.TS (KVM_POSSIBLE_CR0_GUEST_BITS):
  the toggle exits, GUEST_CR0 takes the guest's WP, and kvm_set_cr0's update_bits reset the MMU.
- SVM with NPT: every version takes the exit; kvm-6.18's kvm_post_set_cr0 keeps the roots for a
  WP-only change with TDP, v5.x resets the MMU.
- The processor checks WP at the access (SDM 4.6.1), so a guest with WP = 0 writes read-only
  pages natively; a KVM that kept GUEST_CR0.WP = 1 under EPT (as it must under shadow paging)
  would make that write fault, and cr0-wp-toggle catches it.
"""

from __future__ import annotations

import pytest
from kvmsetups import exit_to_host, system, thaw

from kvmtlb.check.explorer import explore
from kvmtlb.check.inputs import builtin_names
from kvmtlb.hw.cpu import CR0_DEFAULT, CR0_WP
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.state import Vcpu
from kvmtlb.kvm.versions import Kvm58
from kvmtlb.model.scenario import load
from kvmtlb.model.system import build

VERSIONS = ("kvm-6.18", "kvm-5.8", "kvm-5.7")


@pytest.mark.parametrize(("version", "owned"), [("kvm-6.18", True), ("kvm-5.8", False)])
def test_vmx_ept_guest_owns_wp_from_v6_4(version: str, owned: bool) -> None:
    k = thaw(system(version, "intel"))
    vmcs = k.vcpus[0].vmcs
    assert vmcs is not None
    assert bool(vmcs.cr0_guest_host_mask & CR0_WP) is not owned


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize(("version", "reset"), [("kvm-6.18", False), ("kvm-5.8", True)])
def test_intercepted_wp_write_with_tdp(vendor: str, version: str, reset: bool) -> None:
    """The exit path (VMX under v5.x, SVM always): the guest's value goes to the hardware's CR0,
    and only v5.x unloads the roots."""
    sys_ = system(version, vendor)
    k = thaw(sys_)
    vcpu, pol = k.vcpus[0], sys_.policy
    exit_to_host(k, pol, vcpu)
    assert vcpu.root_valid
    pol.kvm_set_cr0(k, vcpu, CR0_DEFAULT & ~CR0_WP)
    regs = vcpu.vmcs.guest if vendor == "intel" else vcpu.vmcb.guest  # type: ignore[union-attr]
    assert not regs.cr0 & CR0_WP
    assert vcpu.root_valid is not reset


class KeepsHardwareWp(Kvm58):
    """A vmx_set_cr0 that keeps GUEST_CR0.WP = 1 with EPT, as shadow paging needs."""

    name = "user-keeps-hardware-wp"
    kind = "user"

    def vmx_set_guest_cr0(self, k: Step, vcpu: Vcpu, value: int) -> None:
        super().vmx_set_guest_cr0(k, vcpu, value | CR0_WP)


def test_cr0_wp_toggle_catches_a_kvm_that_keeps_wp_set() -> None:
    scenario = load(builtin_names()["cr0-wp-toggle"])
    for version in VERSIONS:
        assert explore(build(scenario, registry()[version]())).verdict == "safe"
    assert explore(build(scenario, KeepsHardwareWp())).verdict == "violation"
