"""The TDP MMU's dirty logging (kvmtlb/kvm/mmu.py): every path that installs a writable SPTE in a
slot with dirty logging on logs the page, as spte.c:make_spte @ v6.18 (set_spte @ v5.x) and
mmu.c:fast_page_fault do; without dirty logging, nothing is logged."""

from __future__ import annotations

from typing import Any

import pytest
from kvmsetups import exit_to_host, system, thaw

from kvmtlb.hw.paging import E_W
from kvmtlb.kvm.state import Vcpu

VERSIONS = ("kvm-6.18", "kvm-5.8", "kvm-5.7")
GPA = 0x10000
# host ops that make the layout enumerate every SPTE value the tests install
HOST_OPS = "wrprotect 0x10000\nzap 0x10000\nremap 0x10000 -> 0x90000"


def in_host(version: str, vendor: str) -> tuple[Any, Any, Vcpu]:
    sys_ = system(version, vendor, host=HOST_OPS)
    k = thaw(sys_)
    vcpu = k.vcpus[0]
    exit_to_host(k, sys_.policy, vcpu)
    return k, sys_.policy, vcpu


def fault(k: Any, pol: Any, vcpu: Vcpu, write: bool) -> None:
    """An EPT violation / #NPF on GPA, through both steps of the slow path if it takes them."""
    pol.kvm_mmu_page_fault(k, vcpu, GPA, write)
    if vcpu.pc == "kvm_tdp_page_fault:map":
        pol.kvm_tdp_page_fault_map(k, vcpu)


def dirty(k: Any) -> bool:
    return bool(k.kvm.dirty[k.config.gpa_index(GPA)])


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize("version", VERSIONS)
def test_read_fault_after_wrprotect_and_zap_logs_the_writable_spte(
    version: str, vendor: str
) -> None:
    """The false alarm of `wrprotect G; zap G`: the read fault maps G writable (the memslot
    allows writes), so the page must be in the dirty bitmap before any write can go unfaulted."""
    k, pol, vcpu = in_host(version, vendor)
    assert pol.kvm_tdp_mmu_write_protect(k, GPA)
    assert not dirty(k)
    pol.kvm_unmap_gfn_range(k, GPA)
    fault(k, pol, vcpu, write=False)
    hpa, rights = pol.spte(k, GPA)
    assert hpa >= 0 and rights & E_W
    assert dirty(k)


@pytest.mark.parametrize("version", VERSIONS)
def test_migrated_page_mapped_writable_is_logged(version: str) -> None:
    k, pol, _ = in_host(version, "intel")
    pol.kvm_tdp_mmu_write_protect(k, GPA)
    pol.kvm_unmap_gfn_range(k, GPA)
    pol.kvm_tdp_mmu_map_page(k, GPA, 0x90000)
    assert dirty(k)


@pytest.mark.parametrize("version", VERSIONS)
def test_fast_page_fault_logs_and_restores_write(version: str) -> None:
    k, pol, vcpu = in_host(version, "intel")
    pol.kvm_tdp_mmu_write_protect(k, GPA)
    hpa, rights = pol.spte(k, GPA)
    assert hpa >= 0 and not rights & E_W
    fault(k, pol, vcpu, write=True)
    assert pol.spte(k, GPA)[1] & E_W
    assert dirty(k)


@pytest.mark.parametrize("version", VERSIONS)
def test_without_dirty_logging_nothing_is_logged(version: str) -> None:
    k, pol, vcpu = in_host(version, "intel")
    k.kvm.set_dirty(k.config.gpa_index(GPA), False)  # boot leaves every page dirty; observe none
    pol.kvm_unmap_gfn_range(k, GPA)
    fault(k, pol, vcpu, write=True)
    assert pol.spte(k, GPA)[1] & E_W
    assert not pol.kvm_slot_dirty_track_enabled(k, GPA)
    assert not dirty(k)
