"""kvm_set_cr3 with TDP (x86.c @ v6.18, v5.8, v5.7): reached when KVM emulates a MOV to CR3.

The CPU did not execute the instruction, so KVM both loads the new CR3 into the VMCS/VMCB and
flushes the guest's PCID for it: KVM_REQ_TLB_FLUSH_GUEST through kvm_invalidate_pcid in v6.18
(e45e9e3998f0 made its TDP branch flush: historical bug #8), the flush kvm_mmu_new_pgd /
kvm_mmu_new_cr3 requested for the current context in v5.8 and v5.7.
"""

from __future__ import annotations

import pytest
from kvmsetups import exit_to_host, system, thaw

from kvmtlb.hw.cpu import CR3_NOFLUSH
from kvmtlb.kvm.requests import (
    KVM_REQ_TLB_FLUSH,
    KVM_REQ_TLB_FLUSH_CURRENT,
    KVM_REQ_TLB_FLUSH_GUEST,
)

WANT = {
    "kvm-6.18": KVM_REQ_TLB_FLUSH_GUEST,
    "kvm-5.8": KVM_REQ_TLB_FLUSH_CURRENT,
    "kvm-5.7": KVM_REQ_TLB_FLUSH,
}


def guest_cr3(k, vcpu) -> int:  # type: ignore[no-untyped-def]
    return int(vcpu.vmcs.guest.cr3 if vcpu.vmcs is not None else vcpu.vmcb.guest.cr3)


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize("version", sorted(WANT))
def test_emulated_mov_cr3_loads_cr3_and_flushes(version: str, vendor: str) -> None:
    sys_ = system(version, vendor, pcid=True)
    k = thaw(sys_)
    vcpu = k.vcpus[0]
    exit_to_host(k, sys_.policy, vcpu)
    vcpu.requests = 0
    value = k.config.guest_root | 1
    sys_.policy.kvm_set_cr3(k, vcpu, value)
    assert guest_cr3(k, vcpu) == value and vcpu.cr3 == value
    assert vcpu.requests == WANT[version]


@pytest.mark.parametrize("version", sorted(WANT))
def test_emulated_mov_cr3_noflush_loads_without_a_flush(version: str) -> None:
    sys_ = system(version, "intel", pcid=True)
    k = thaw(sys_)
    vcpu = k.vcpus[0]
    exit_to_host(k, sys_.policy, vcpu)
    vcpu.requests = 0
    sys_.policy.kvm_set_cr3(k, vcpu, k.config.guest_root | 2 | CR3_NOFLUSH)
    assert guest_cr3(k, vcpu) == k.config.guest_root | 2
    assert vcpu.requests == 0
