"""CR4.PGE per version and vendor: who owns the bit, and what KVM flushes when it changes.

- VMX with EPT: the guest owns CR4.PGE in every version (vmx.c:set_cr4_guest_host_mask @ v5.7/v5.8
  adds X86_CR4_PGE when enable_ept; vmx_setup_cr4_guest_owned_bits @ v6.18 keeps it from
  KVM_POSSIBLE_CR4_GUEST_BITS), so a toggle runs natively with no exit.
- SVM: every CR4 write exits. v5.7/v5.8 svm_set_cr4 flushes the ASID at once under NPT when PGE
  changes (svm_flush_tlb), and kvm_set_cr4 resets the MMU (PGE is a role bit there); v6.18 asks
  for KVM_REQ_TLB_FLUSH_GUEST in kvm_post_set_cr4 and leaves TLB_CONTROL alone in svm_set_cr4.
"""

from __future__ import annotations

import pytest
from kvmsetups import exit_to_host, system, thaw

from kvmtlb.hw.cpu import CR4_PGE
from kvmtlb.hw.vmcb import TLB_CONTROL_DO_NOTHING, TLB_CONTROL_FLUSH_ASID
from kvmtlb.kvm.requests import KVM_REQ_TLB_FLUSH_GUEST

VERSIONS = ("kvm-6.18", "kvm-5.8", "kvm-5.7")


@pytest.mark.parametrize("version", VERSIONS)
def test_vmx_ept_guest_owns_pge(version: str) -> None:
    k = thaw(system(version, "intel"))
    vmcs = k.vcpus[0].vmcs
    assert vmcs is not None
    assert not vmcs.cr4_guest_host_mask & CR4_PGE


@pytest.mark.parametrize(
    ("version", "immediate", "requested"),
    [("kvm-6.18", False, True), ("kvm-5.8", True, False), ("kvm-5.7", True, False)],
)
def test_svm_pge_toggle(version: str, immediate: bool, requested: bool) -> None:
    sys_ = system(version, "amd", flush_by_asid=True)
    k = thaw(sys_)
    vcpu, pol = k.vcpus[0], sys_.policy
    exit_to_host(k, pol, vcpu)
    assert vcpu.vmcb is not None and vcpu.vmcb.tlb_control == TLB_CONTROL_DO_NOTHING
    pol.kvm_set_cr4(k, vcpu, pol.kvm_read_cr4(k, vcpu) ^ CR4_PGE)
    want = TLB_CONTROL_FLUSH_ASID if immediate else TLB_CONTROL_DO_NOTHING
    assert vcpu.vmcb.tlb_control == want
    assert bool(vcpu.requests & KVM_REQ_TLB_FLUSH_GUEST) is requested


@pytest.mark.parametrize("version", ["kvm-5.8", "kvm-5.7"])
def test_svm_pge_toggle_without_flush_by_asid_takes_a_new_asid(version: str) -> None:
    sys_ = system(version, "amd", flush_by_asid=False)
    k = thaw(sys_)
    vcpu, pol = k.vcpus[0], sys_.policy
    exit_to_host(k, pol, vcpu)
    generation = vcpu.asid_generation
    pol.kvm_set_cr4(k, vcpu, pol.kvm_read_cr4(k, vcpu) ^ CR4_PGE)
    assert vcpu.asid_generation == generation - 1
