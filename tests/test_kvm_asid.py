"""TLB tags KVM hands out: SVM ASIDs per pCPU with generations, VMX VPIDs from a global bitmap.

SVM (svm/svm.c @ v6.18, same logic in v5.7/v5.8): each pCPU allocates ASIDs min_asid..max_asid in
order within a generation; svm_hardware_enable starts next_asid past max_asid, so the first VMRUN
on a pCPU starts a generation; running out starts a new generation with TLB_CONTROL =
FLUSH_ALL_ASID (new_asid). A vCPU whose generation is not its pCPU's takes a new ASID at
pre_svm_run: after a flush without FlushByAsid (svm_flush_tlb_asid: generation--) and after
arriving on another pCPU (generation zeroed: pre_svm_run @ v6.18, svm_vcpu_load @ v5.7/v5.8).

VMX (vmx.c:allocate_vpid @ v6.18): the first free bit of a global bitmap whose bit 0 is the host's;
none free (or VPID disabled) gives VPID 0, and the vCPU runs with "enable VPID" off.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmsetups import RecStep, entries, exit_to_host, run_to_guest, system, thaw

from kvmtlb.host.thread import preempt
from kvmtlb.hw.vmcb import TLB_CONTROL_FLUSH_ALL_ASID
from kvmtlb.kvm.policy import KvmPolicy
from kvmtlb.kvm.state import Pcpu, Vcpu

VERSIONS = ("kvm-5.7", "kvm-5.8", "kvm-6.18")


def switch(k: RecStep, pol: KvmPolicy, out: int, into: int, pcpu: int) -> str:
    """Preempt vCPU `out` (if loaded), load vCPU `into` on `pcpu`, run it into the guest; the
    VMRUN it did, rendered with ` @pCPUn` when not on pCPU0."""
    if k.vcpus[out].loaded:
        preempt(k, pol, out)
    pol.vcpu_load(k, k.vcpus[into], pcpu)
    k.ops.clear()
    run_to_guest(k, pol, k.vcpus[into])
    (vmrun,) = entries(k)
    return vmrun


@pytest.mark.parametrize("version", VERSIONS)
def test_first_vmrun_on_a_pcpu_starts_a_generation(version: str) -> None:
    """svm_hardware_enable leaves next_asid > max_asid: the first new_asid wraps, to generation 2,
    ASID min_asid = 1, with TLB_CONTROL = FLUSH_ALL_ASID (the pCPU may hold anything)."""
    sys_ = system(version, "amd", vcpus=1, pcpus=1)
    pol = sys_.policy
    k = thaw(sys_)
    sd = Pcpu(0)
    pol.svm_hardware_enable(k, sd)
    assert (sd.asid_generation, sd.min_asid, sd.max_asid, sd.next_asid) == (1, 1, 16, 17)
    vcpu = Vcpu(7, vmcb=k.vcpus[0].vmcb)
    pol.new_asid(k, vcpu, sd)
    assert vcpu.vmcb is not None
    assert (vcpu.asid, vcpu.asid_generation) == (1, 2)
    assert vcpu.vmcb.tlb_control == TLB_CONTROL_FLUSH_ALL_ASID
    assert (sd.asid_generation, sd.next_asid) == (2, 2)
    # The booted system went the same way on its pCPU0.
    assert (k.vcpus[0].asid, k.vcpus[0].asid_generation) == (1, 2)
    assert (k.pcpus[0].asid_generation, k.pcpus[0].next_asid) == (2, 2)


@pytest.mark.parametrize("version", VERSIONS)
def test_asids_in_order_then_wrap(version: str) -> None:
    """Three vCPUs time-share one pCPU with two ASIDs (max_asid = 2)."""
    sys_ = system(version, "amd", vcpus=3, pcpus=1, max_asid=2)
    pol = sys_.policy
    k = thaw(sys_)
    exit_to_host(k, pol, k.vcpus[0])
    runs = [
        switch(k, pol, 0, 1, 0),  # ASID 2, the last of generation 2
        switch(k, pol, 1, 2, 0),  # none left: generation 3 starts
        switch(k, pol, 2, 0, 0),  # vCPU0's ASID 1 was of generation 2: a new one
        switch(k, pol, 0, 1, 0),  # none left: generation 4
        switch(k, pol, 1, 0, 0),  # vCPU0's ASID 2 is of generation 3: still stale
    ]
    assert runs == [
        "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING",
        "VMRUN ASID=1 TLB_CONTROL=FLUSH_ALL_ASID",
        "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING",
        "VMRUN ASID=1 TLB_CONTROL=FLUSH_ALL_ASID",
        "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING",
    ]
    assert k.pcpus[0].asid_generation == 4
    assert [(v.asid, v.asid_generation) for v in k.vcpus] == [(2, 4), (1, 4), (1, 3)]


@pytest.mark.parametrize("version", VERSIONS)
def test_same_generation_keeps_its_asid(version: str) -> None:
    """A vCPU switched back within its generation keeps its ASID and flushes nothing."""
    sys_ = system(version, "amd", vcpus=2, pcpus=1)
    pol = sys_.policy
    k = thaw(sys_)
    exit_to_host(k, pol, k.vcpus[0])
    assert switch(k, pol, 0, 1, 0) == "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING"
    assert switch(k, pol, 1, 0, 0) == "VMRUN ASID=1 TLB_CONTROL=DO_NOTHING"
    assert switch(k, pol, 0, 1, 0) == "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING"
    assert k.pcpus[0].next_asid == 3


@pytest.mark.parametrize(
    ("name", "arrival"),
    [
        ("kvm-5.7", "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING @pCPU1"),
        ("kvm-5.8", "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING @pCPU1"),
        ("kvm-6.18", "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING @pCPU1"),
        # Keeps ASID 1 on pCPU1, where vCPU1 ran as ASID 1: its entries are usable again.
        ("bug-svm-keep-asid-on-migration", "VMRUN ASID=1 TLB_CONTROL=DO_NOTHING @pCPU1"),
    ],
)
def test_migration_takes_a_new_asid(name: str, arrival: str) -> None:
    """vCPU0 (ASID 1 on pCPU0) moves to pCPU1, where vCPU1 used ASID 1 in the same generation:
    ASIDs are per pCPU, so vCPU0 must take pCPU1's next one."""
    sys_ = system(name, "amd", vcpus=2, pcpus=2)
    pol = sys_.policy
    k = thaw(sys_)
    assert [(v.asid, v.asid_generation, v.cpu) for v in k.vcpus] == [(1, 2, 0), (1, 2, 1)]
    preempt(k, pol, 1)
    exit_to_host(k, pol, k.vcpus[0])
    assert switch(k, pol, 0, 0, 1) == arrival
    if name.startswith("kvm-"):
        # And back on pCPU0: its ASID 1 is not reused; pCPU0's next one is taken.
        assert switch(k, pol, 0, 0, 0) == "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING"


@pytest.mark.parametrize(
    ("name", "flush_by_asid", "vmrun"),
    [
        ("kvm-5.7", True, "VMRUN ASID=1 TLB_CONTROL=FLUSH_ASID"),
        ("kvm-5.7", False, "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING"),
        ("kvm-5.8", True, "VMRUN ASID=1 TLB_CONTROL=FLUSH_ASID"),
        ("kvm-5.8", False, "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING"),
        ("kvm-6.18", True, "VMRUN ASID=1 TLB_CONTROL=FLUSH_ASID"),
        ("kvm-6.18", False, "VMRUN ASID=2 TLB_CONTROL=DO_NOTHING"),
        ("bug-svm-flush-keeps-asid", False, "VMRUN ASID=1 TLB_CONTROL=DO_NOTHING"),
    ],
)
def test_flush_without_flushbyasid_takes_a_new_asid(
    name: str, flush_by_asid: bool, vmrun: str
) -> None:
    """Two flushes before the next VMRUN (svm_flush_tlb_asid, or 5.7's svm_flush_tlb): with
    FlushByAsid, TLB_CONTROL = FLUSH_ASID on the same ASID; without, one new ASID."""
    sys_ = system(name, "amd", flush_by_asid=flush_by_asid)
    pol = sys_.policy
    k = thaw(sys_)
    vcpu = k.vcpus[0]
    exit_to_host(k, pol, vcpu)
    for _ in range(2):
        pol.svm_flush_tlb_asid(k, vcpu)
    k.ops.clear()
    run_to_guest(k, pol, vcpu)
    assert entries(k) == [vmrun]
    assert k.pcpus[0].next_asid == (2 if vmrun.startswith("VMRUN ASID=1") else 3)
    assert vcpu.asid_generation == k.pcpus[0].asid_generation


# -- VPIDs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("knobs", "vpids", "bitmap"),
    [
        ({}, [1, 2, 3], 0b1111),  # VMX_NR_VPIDS is large: 1, 2, 3
        ({"vpids": 3}, [1, 2, 0], 0b111),  # bits 1 and 2, then exhausted: VPID 0
        ({"vpids": 1}, [0, 0, 0], 0b1),  # only the host's bit
        ({"vpid": False}, [0, 0, 0], 0b1),  # enable_vpid = 0: the bitmap is not touched
    ],
)
def test_vpid_allocation(
    version: str, knobs: dict[str, Any], vpids: list[int], bitmap: int
) -> None:
    sys_ = system(version, "intel", vcpus=3, pcpus=3, **knobs)
    k = thaw(sys_)
    assert [v.vpid for v in k.vcpus] == vpids
    assert k.kvm.vpid_bitmap == bitmap
    for v in k.vcpus:
        assert v.vmcs is not None
        assert (v.vmcs.vpid, v.vmcs.enable_vpid) == (v.vpid, v.vpid != 0)


def test_exhausted_vpid_runs_with_vpid_off() -> None:
    """vmx.c:vmx_secondary_exec_control @ v6.18 clears "enable VPID" for VPID 0: the VM entry of
    the vCPU that got no VPID is a VPID-off entry (which flushes VPID 0's mappings)."""
    sys_ = system("kvm-6.18", "intel", vcpus=3, pcpus=3, vpids=3)
    k = thaw(sys_)
    assert [v.pc for v in k.vcpus] == ["guest"] * 3
    out = []
    for v in k.vcpus:
        exit_to_host(k, sys_.policy, v)
        k.ops.clear()
        run_to_guest(k, sys_.policy, v)
        out += entries(k, home=v.id)
    assert out == ["VM entry VPID=1", "VM entry VPID=2", "VM entry VPID=0"]
