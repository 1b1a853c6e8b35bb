"""TDP roots come and go (kvmtlb/kvm/mmu.py, issue 15): a fast zap makes the root obsolete, a
vCPU drops it at its next entry and kvm_mmu_load takes a root on the lowest free page, loads it
(EPTP or nCR3) and flushes it; page aging without A/D bits and v5.x's conditional flush after
write protection (bug #14)."""

from __future__ import annotations

from typing import Any

import pytest
from kvmsetups import exit_to_host, flushes, run_to_guest, system, thaw

from kvmtlb.check.runner import builtin_scenarios
from kvmtlb.hw.vmx import make_eptp
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.requests import (
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
    KVM_REQ_MMU_RELOAD,
    kvm_make_request,
)
from kvmtlb.kvm.state import ROOT_FREE, ROOT_INVALID, ROOT_VALID, ROOT_ZAPPED, HostTask
from kvmtlb.model.scenario import load
from kvmtlb.model.system import build

VERSIONS = ("kvm-6.18", "kvm-5.8", "kvm-5.7")
GPA = 0x10000


def zap_all_fast(k: Any, pol: Any) -> None:
    """kvm_mmu_zap_all_fast's own steps, with the kicks left out (the vCPU is out of the guest)."""
    pol.kvm_tdp_mmu_invalidate_roots(k)
    pol.zap_invalidated_roots(k)


def reload_request(version: str) -> int:
    return KVM_REQ_MMU_FREE_OBSOLETE_ROOTS if version == "kvm-6.18" else KVM_REQ_MMU_RELOAD


@pytest.mark.parametrize("version", VERSIONS)
def test_freed_root_page_comes_back_and_is_flushed(version: str) -> None:
    sys_ = system(version, "intel", host="zap_all_fast\nzap_all_fast")
    k = thaw(sys_)
    pol, vcpu = sys_.policy, k.vcpus[0]
    roots = k.config.tdp_roots
    assert len(roots) == 3 and k.kvm.root_state == (ROOT_VALID, ROOT_FREE, ROOT_FREE)
    exit_to_host(k, pol, vcpu)
    zap_all_fast(k, pol)
    assert k.kvm.root_state[0] == ROOT_ZAPPED  # the vCPU still holds it
    kvm_make_request(vcpu, reload_request(version))
    k.ops.clear()
    run_to_guest(k, pol, vcpu)
    # root 0 was freed with the vCPU's reference, and its page is the new root
    assert vcpu.tdp_root == 0 and k.kvm.root_state[0] == ROOT_VALID
    assert vcpu.vmcs is not None and vcpu.vmcs.eptp == make_eptp(roots[0])
    assert any("INVEPT" in f for f in flushes(k)), flushes(k)


@pytest.mark.parametrize("version", VERSIONS)
def test_root_held_elsewhere_gives_a_new_page(version: str) -> None:
    sys_ = system(version, "amd", host="zap_all_fast")
    k = thaw(sys_)
    pol, vcpu = sys_.policy, k.vcpus[0]
    exit_to_host(k, pol, vcpu)
    pol.kvm_tdp_mmu_invalidate_roots(k)
    assert k.kvm.root_state[0] == ROOT_INVALID
    kvm_make_request(vcpu, reload_request(version))
    run_to_guest(k, pol, vcpu)
    # the obsolete root is not zapped yet, so its page is not free: the next one is used
    assert vcpu.tdp_root == 1 and vcpu.vmcb is not None
    assert vcpu.vmcb.ncr3 == k.config.tdp_roots[1]
    assert k.kvm.root_state == (ROOT_INVALID, ROOT_VALID)
    pol.zap_invalidated_roots(k)
    assert k.kvm.root_state == (ROOT_FREE, ROOT_VALID)


def test_mmu_load_without_its_flush_issues_nothing() -> None:
    sys_ = system("bug-mmu-load-no-flush", "intel", host="zap_all_fast\nzap_all_fast")
    k = thaw(sys_)
    pol, vcpu = sys_.policy, k.vcpus[0]
    exit_to_host(k, pol, vcpu)
    zap_all_fast(k, pol)
    kvm_make_request(vcpu, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
    k.ops.clear()
    run_to_guest(k, pol, vcpu)
    assert vcpu.tdp_root == 0
    assert not any("INVEPT" in f for f in flushes(k)), flushes(k)


@pytest.mark.parametrize(("version", "flush"), [("kvm-6.18", True), ("kvm-5.8", False)])
def test_write_protect_after_access_tracking(version: str, flush: bool) -> None:
    """Bug #14: aging without EPT A/D bits leaves no writable SPTE, so v5.x's write protection
    asks for no flush; v6.18 always flushes (b64d740ea7dd)."""
    sys_ = system(version, "intel", host="age 0x10000\nwrprotect 0x10000", ept_ad=False)
    k = thaw(sys_)
    pol = sys_.policy
    task = HostTask("kvm_mmu_notifier_clear_young", gpa=GPA, ret=("mm:done",))
    pol.kvm_mmu_notifier_clear_young(k, task)
    assert pol.spte(k, GPA)[0] == -1  # not present to the hardware
    assert pol.kvm_tdp_mmu_write_protect(k, GPA) is flush


def test_aging_with_ad_bits_keeps_the_spte() -> None:
    sys_ = system("kvm-5.8", "intel", host="age 0x10000\nwrprotect 0x10000")
    k = thaw(sys_)
    pol = sys_.policy
    pol.kvm_mmu_notifier_clear_young(k, HostTask("x", gpa=GPA, ret=("mm:done",)))
    assert pol.spte(k, GPA)[0] >= 0
    assert pol.kvm_tdp_mmu_write_protect(k, GPA)


@pytest.mark.parametrize(
    ("policy", "next_label"),
    [
        ("kvm-6.18", "kvm_flush_remote_tlbs"),
        ("bug-zap-yield-without-flush", "kvm_zap_gfn_range:unlock"),
    ],
)
def test_zap_gfn_range_flushes_before_it_yields(policy: str, next_label: str) -> None:
    """tdp_mmu_iter_cond_resched flushes a pending zap before mmu_lock is dropped (a835429cda91);
    the variant yields with it pending, and holds no lock across the yield either way."""
    path = builtin_scenarios()[0].parent / "zap-range-yield-race.toml"
    sys_ = build(load(path, set(registry())), registry()[policy]())
    k = Step.thaw(sys_.kvm, sys_.initial)
    pol = sys_.policy
    task = HostTask("kvm_zap_gfn_range", gpa=GPA, hpa=0x11000, ret=("mm:done",))
    pol.kvm_zap_gfn_range(k, task)
    assert k.kvm.mmu_lock and task.frame == (1,)
    pol.kvm_zap_gfn_range_yield(k, task)
    assert task.pc == next_label
