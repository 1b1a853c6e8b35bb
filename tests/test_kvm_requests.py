"""KVM requests: the order vcpu_enter_guest serves them in, subsumption, and the kick protocol.

Servicing order (x86.c:vcpu_enter_guest @ v6.18): KVM_REQ_TLB_FLUSH (kvm_vcpu_flush_tlb_all, which
clears a pending KVM_REQ_TLB_FLUSH_CURRENT), then kvm_service_local_tlb_flush_requests
(TLB_FLUSH_CURRENT, then TLB_FLUSH_GUEST), then KVM_REQ_STEAL_UPDATE (record_steal_time, whose PV
flush runs before entry); kvm_mmu_reload after the requests. The kick protocol
(kvm_main.c:kvm_make_all_cpus_request / kvm_request_needs_ipi @ v6.18): the requester sets the bit,
then reads vcpu->mode; the vCPU sets IN_GUEST_MODE, then re-reads its requests
(kvm_vcpu_exit_request); so either the requester sees IN_GUEST_MODE and kicks, or the vCPU sees
the request and backs out. The requester waits until every kicked pCPU took the IPI.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmsetups import RecStep, entries, exit_to_host, flushes, policy, run_to_guest, system, thaw
from kvmsetups import timeline as timeline_of

from kvmtlb.host.thread import HOST_SENDER, preempt
from kvmtlb.kvm.requests import (
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
    KVM_REQ_MMU_RELOAD,
    KVM_REQ_STEAL_UPDATE,
    KVM_REQ_TLB_FLUSH,
    KVM_REQ_TLB_FLUSH_CURRENT,
    KVM_REQ_TLB_FLUSH_GUEST,
    KVM_REQ_UPDATE_CPU_DIRTY_LOGGING,
    WAIT_REQUESTS,
    kvm_make_request,
)
from kvmtlb.kvm.state import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    KVM_VCPU_FLUSH_TLB,
    KVM_VCPU_PREEMPTED,
    OUTSIDE_GUEST_MODE,
)
from kvmtlb.model import actions

VERSIONS = ("kvm-5.7", "kvm-5.8", "kvm-6.18")
STEAL = ("record_steal_time",)


def in_host(policy_name: str, vendor: str = "intel", **knobs: Any) -> tuple[RecStep, Any]:
    """vCPU0 after a VM exit for an interrupt, with the PV TLB flush on; no event recorded yet."""
    sys_ = system(policy_name, vendor, pv_tlb_flush=True, **knobs)
    k = thaw(sys_)
    exit_to_host(k, sys_.policy, k.vcpus[0])
    k.ops.clear()
    k.timeline.clear()
    return k, sys_.policy


def pv_flush_pending(k: RecStep, pol: Any) -> None:
    """Preempted, the guest asked for a flush, loaded again: KVM_REQ_STEAL_UPDATE is pending."""
    vcpu = k.vcpus[0]
    preempt(k, pol, 0)
    vcpu.st_byte |= KVM_VCPU_FLUSH_TLB
    pol.vcpu_load(k, vcpu, 0)
    assert vcpu.requests & KVM_REQ_STEAL_UPDATE


# -- servicing order -------------------------------------------------------------------------------
def test_order_all_then_current_then_guest_then_steal_update() -> None:
    k, pol = in_host("kvm-6.18")
    vcpu = k.vcpus[0]
    pv_flush_pending(k, pol)
    for req in (KVM_REQ_TLB_FLUSH_GUEST, KVM_REQ_TLB_FLUSH_CURRENT, KVM_REQ_TLB_FLUSH):
        kvm_make_request(vcpu, req)
    labels = run_to_guest(k, pol, vcpu)
    assert labels == [
        "vcpu_enter_guest",
        "record_steal_time:flush",
        "vcpu_enter_guest:mode",
        "vcpu_enter_guest:recheck",
    ]
    assert timeline_of(k, STEAL) == [
        "INVEPT all-context",  # KVM_REQ_TLB_FLUSH: kvm_vcpu_flush_tlb_all (and CURRENT dropped)
        "INVVPID single-context vpid=1",  # KVM_REQ_TLB_FLUSH_GUEST
        "record_steal_time: xchg(&st->preempted, 0)",  # KVM_REQ_STEAL_UPDATE, after the flushes
        "record_steal_time: KVM_VCPU_FLUSH_TLB set",
        "INVVPID single-context vpid=1",  # its PV flush, still before the entry
        "VM entry VPID=1",
    ]
    assert vcpu.requests == 0
    assert vcpu.st_byte == 0


@pytest.mark.parametrize("version", ["kvm-5.8", "kvm-6.18"])
def test_flush_all_clears_current(version: str) -> None:
    """kvm_vcpu_flush_tlb_all clears KVM_REQ_TLB_FLUSH_CURRENT (x86.c @ v5.8 and v6.18)."""
    k, pol = in_host(version)
    vcpu = k.vcpus[0]
    kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT)
    kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH)
    run_to_guest(k, pol, vcpu)
    assert flushes(k) == ["INVEPT all-context"]
    k, pol = in_host(version)
    kvm_make_request(k.vcpus[0], KVM_REQ_TLB_FLUSH_CURRENT)
    run_to_guest(k, pol, k.vcpus[0])
    assert flushes(k) == ["INVEPT single-context"]


def test_current_before_guest() -> None:
    """kvm_service_local_tlb_flush_requests @ v6.18: CURRENT, then GUEST; neither subsumes the
    other (INVEPT keeps linear mappings, INVVPID keeps guest-physical ones)."""
    k, pol = in_host("kvm-6.18")
    vcpu = k.vcpus[0]
    kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_GUEST)
    kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH_CURRENT)
    run_to_guest(k, pol, vcpu)
    assert flushes(k) == ["INVEPT single-context", "INVVPID single-context vpid=1"]


def test_kvm_5_7_serves_tlb_flush_with_invalidate_gpa() -> None:
    """x86.c:vcpu_enter_guest @ v5.7: KVM_REQ_TLB_FLUSH is kvm_vcpu_flush_tlb(vcpu, true), the
    current EPTP only; then STEAL_UPDATE."""
    k, pol = in_host("kvm-5.7")
    vcpu = k.vcpus[0]
    pv_flush_pending(k, pol)
    kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH)
    run_to_guest(k, pol, vcpu)
    assert timeline_of(k, STEAL) == [
        "INVEPT single-context",
        "record_steal_time: xchg(&st->preempted, 0)",
        "record_steal_time: KVM_VCPU_FLUSH_TLB set",
        "INVVPID single-context vpid=1",
        "VM entry VPID=1",
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_requests_are_bits(version: str) -> None:
    """A request made twice (two remote flushes before the vCPU gets to it) is served once."""
    k, pol = in_host(version)
    pol.kvm_make_vcpu_request(k, k.vcpus[0], KVM_REQ_TLB_FLUSH)
    pol.kvm_make_vcpu_request(k, k.vcpus[0], KVM_REQ_TLB_FLUSH)
    run_to_guest(k, pol, k.vcpus[0])
    assert flushes(k) == ["INVEPT single-context" if version == "kvm-5.7" else "INVEPT all-context"]


@pytest.mark.parametrize("version", ["kvm-5.8", "kvm-6.18"])
def test_svm_subsumption_one_new_asid(version: str) -> None:
    """Without FlushByAsid every flush drops the ASID generation; however many were served, the
    vCPU takes one new ASID at the next VMRUN."""
    k, pol = in_host(version, "amd", flush_by_asid=False)
    vcpu = k.vcpus[0]
    for req in (KVM_REQ_TLB_FLUSH, KVM_REQ_TLB_FLUSH_CURRENT, KVM_REQ_TLB_FLUSH_GUEST):
        kvm_make_request(vcpu, req)
    if version == "kvm-5.8":  # no KVM_REQ_TLB_FLUSH_GUEST in 5.8: nobody sets it
        vcpu.requests &= ~KVM_REQ_TLB_FLUSH_GUEST
    run_to_guest(k, pol, vcpu)
    assert entries(k) == ["VMRUN ASID=2 TLB_CONTROL=DO_NOTHING"]
    assert k.pcpus[0].next_asid == 3


def test_mmu_reload_after_the_requests() -> None:
    """vcpu_enter_guest @ v6.18: kvm_mmu_reload (a new root, flushed by kvm_mmu_load's
    flush_tlb_current) runs after the request loop, just before IN_GUEST_MODE."""
    k, pol = in_host("kvm-6.18")
    vcpu = k.vcpus[0]
    vcpu.root_valid = False
    kvm_make_request(vcpu, KVM_REQ_TLB_FLUSH)
    run_to_guest(k, pol, vcpu)
    assert timeline_of(k, ("kvm_mmu_load", "vcpu->mode")) == [
        "INVEPT all-context",
        "kvm_mmu_load: new root",
        "INVEPT single-context",
        "vcpu->mode = IN_GUEST_MODE",
        "VM entry VPID=1",
    ]


# -- steal time ---------------------------------------------------------------------------------
def test_record_steal_time_exchange_is_atomic() -> None:
    """record_steal_time @ v6.18 reads and zeroes st->preempted in one step (the xchg of
    b043138246a4): right after it, a guest sees 0 and sends an IPI. The CVE-2019-3016 variant
    reads, then stores 0 in a later step: a guest that sets FLUSH_TLB in between skips its IPI,
    and the flush is lost."""
    for name, lost in (("kvm-6.18", False), ("bug-cve-2019-3016-nonatomic-clear", True)):
        k, pol = in_host(name)
        vcpu = k.vcpus[0]
        preempt(k, pol, 0)
        pol.vcpu_load(k, vcpu, 0)
        pol.step(k, vcpu)  # vcpu_enter_guest: STEAL_UPDATE, the read of st->preempted
        skipped_ipi = bool(vcpu.st_byte & KVM_VCPU_PREEMPTED)  # kvm_flush_tlb_multi's cmpxchg
        if skipped_ipi:
            vcpu.st_byte |= KVM_VCPU_FLUSH_TLB
        run_to_guest(k, pol, vcpu)
        assert (skipped_ipi and not flushes(k)) is lost, name
        assert vcpu.st_byte == 0


@pytest.mark.parametrize(
    ("name", "flushed"), [("kvm-6.18", True), ("bug-cve-2019-3016-double-preempted", False)]
)
def test_second_set_preempted_keeps_flush_tlb(name: str, flushed: bool) -> None:
    """kvm_steal_time_set_preempted @ v6.18 returns if st.preempted is already set (8c6de56a42e0):
    a second vcpu_put before the vCPU entered must not overwrite the guest's FLUSH_TLB."""
    k, pol = in_host(name)
    vcpu = k.vcpus[0]
    preempt(k, pol, 0)
    vcpu.st_byte |= KVM_VCPU_FLUSH_TLB
    pol.vcpu_load(k, vcpu, 0)
    preempt(k, pol, 0)  # scheduled out again before vcpu_enter_guest ran
    assert vcpu.st_byte == (KVM_VCPU_PREEMPTED | KVM_VCPU_FLUSH_TLB if flushed else 1)
    pol.vcpu_load(k, vcpu, 0)
    run_to_guest(k, pol, vcpu)
    assert flushes(k) == (["INVVPID single-context vpid=1"] if flushed else [])


@pytest.mark.parametrize(
    ("name", "reported"),
    [
        ("kvm-6.18", False),
        ("kvm-5.8", True),
        ("bug-preempted-outside-instruction-boundary", True),
    ],
)
def test_preemption_inside_the_entry_path(name: str, reported: bool) -> None:
    """vcpu_run @ v6.18 clears at_instruction_boundary before vcpu_enter_guest, so a preemption
    there is not reported to the guest (6cd88243c7e0, v5.19); 5.8 reports it."""
    k, pol = in_host(name)
    vcpu = k.vcpus[0]
    pol.step(k, vcpu)  # vcpu_enter_guest: nothing pending
    assert vcpu.pc == "vcpu_enter_guest:mode"
    preempt(k, pol, 0)
    assert (vcpu.st_byte == KVM_VCPU_PREEMPTED) is reported
    assert vcpu.st_preempted is reported


@pytest.mark.parametrize(
    ("name", "cleared"), [("kvm-6.18", True), ("kvm-5.8", False), ("kvm-5.7", False)]
)
def test_record_steal_time_clears_st_preempted(name: str, cleared: bool) -> None:
    """record_steal_time @ v6.18 clears vcpu->arch.st.preempted right after the exchange (since
    7e2175ebd695, v5.16); v5.7/v5.8 clear it only after the flush."""
    k, pol = in_host(name)
    vcpu = k.vcpus[0]
    pv_flush_pending(k, pol)
    assert vcpu.st_preempted
    pol.step(k, vcpu)  # vcpu_enter_guest: STEAL_UPDATE, the exchange
    assert vcpu.pc == "record_steal_time:flush"
    assert vcpu.st_preempted is not cleared
    pol.step(k, vcpu)  # the flush
    assert not vcpu.st_preempted


def _clear_then_flush(base: type) -> type:
    class ClearFirst(base):  # type: ignore[misc, valid-type]
        def record_steal_time(self, k: Any, vcpu: Any) -> None:
            super().record_steal_time(k, vcpu)
            vcpu.st_preempted = False

        def record_steal_time_clear_preempted(self, k: Any, vcpu: Any) -> None:
            pass  # already cleared at the exchange

    return ClearFirst


@pytest.mark.parametrize(
    ("name", "clear_first", "flushed"),
    [("kvm-5.8", False, False), ("kvm-5.7", False, False), ("kvm-5.8", True, True)],
)
def test_steal_time_window_of_v5(name: str, clear_first: bool, flushed: bool) -> None:
    """The window the built-in pv-flush-preempted-target finds in v5.7/v5.8: the exchange reads 0;
    preempted before the flush step (reported: no at_instruction_boundary), the guest sets
    FLUSH_TLB; the flush step clears st.preempted; preempted again, kvm_steal_time_set_preempted's
    plain store of PREEMPTED wipes FLUSH_TLB, and no flush happens before the guest runs. With the
    clear moved before the flush (7e2175ebd695), the second store is skipped and the flush runs."""
    k, pol = in_host(name)
    if clear_first:
        pol = _clear_then_flush(type(pol))()
    vcpu = k.vcpus[0]
    kvm_make_request(vcpu, KVM_REQ_STEAL_UPDATE)
    pol.step(k, vcpu)  # the exchange reads 0
    assert vcpu.pc == "record_steal_time:flush" and vcpu.frame == (0,)
    preempt(k, pol, 0)
    assert vcpu.st_byte == KVM_VCPU_PREEMPTED
    vcpu.st_byte |= KVM_VCPU_FLUSH_TLB  # the guest's cmpxchg: no IPI
    pol.vcpu_load(k, vcpu, 0)
    pol.step(k, vcpu)  # the flush step: nothing was asked for at the exchange
    preempt(k, pol, 0)
    pol.vcpu_load(k, vcpu, 0)
    run_to_guest(k, pol, vcpu)
    assert bool(flushes(k)) is flushed


# -- the kick protocol ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_request_before_in_guest_mode_is_seen_at_recheck(version: str) -> None:
    """The requester finds the vCPU OUTSIDE_GUEST_MODE and sends no IPI; the vCPU then sets
    IN_GUEST_MODE, and its re-check (kvm_vcpu_exit_request) sees the request: it backs out and
    serves it before entering."""
    k, pol = in_host(version)
    vcpu = k.vcpus[0]
    pol.step(k, vcpu)  # vcpu_enter_guest: nothing pending
    assert vcpu.pc == "vcpu_enter_guest:mode"
    pol.kvm_make_vcpu_request(k, k.vcpus[0], KVM_REQ_TLB_FLUSH)
    assert pol.kvm_request_needs_ipi(k, vcpu, KVM_REQ_TLB_FLUSH) == -1
    pol.step(k, vcpu)
    assert (vcpu.pc, vcpu.mode) == ("vcpu_enter_guest:recheck", IN_GUEST_MODE)
    pol.step(k, vcpu)
    assert (vcpu.pc, vcpu.mode) == ("vcpu_enter_guest", OUTSIDE_GUEST_MODE)
    assert entries(k) == []
    assert "kvm_vcpu_exit_request: requests pending, cancel entry" in timeline_of(k, ("kvm_",))
    run_to_guest(k, pol, vcpu)
    flush = "INVEPT single-context" if version == "kvm-5.7" else "INVEPT all-context"
    assert timeline_of(k) == [flush, "VM entry VPID=1"]


def test_request_after_in_guest_mode_kicks_and_waits() -> None:
    """The vCPU already set IN_GUEST_MODE (interrupts off, at the re-check): the requester moves
    it to EXITING_GUEST_MODE and kicks its pCPU with wait; the re-check backs out anyway; the
    requester is done only once the pCPU took the IPI."""
    k, pol = in_host("kvm-6.18")
    vcpu = k.vcpus[0]
    pol.step(k, vcpu)
    pol.step(k, vcpu)
    assert (vcpu.pc, vcpu.mode) == ("vcpu_enter_guest:recheck", IN_GUEST_MODE)
    assert vcpu.pc in pol.IRQS_OFF and vcpu.pc in pol.NOT_PREEMPTIBLE
    pol.kvm_make_vcpu_request(k, k.vcpus[0], KVM_REQ_TLB_FLUSH)
    # The pCPU to kick is the one the scenario placed vCPU0 on (its home), not read back from
    # the vCPU record the function itself reads.
    home = k.host.home[0]
    assert pol.kvm_request_needs_ipi(k, vcpu, KVM_REQ_TLB_FLUSH) == home
    assert vcpu.mode == EXITING_GUEST_MODE
    assert pol.kvm_kick_many_cpus(k, 1 << 0, HOST_SENDER, wait=True)
    assert not pol.kvm_kick_done(k, 1 << 0, HOST_SENDER)
    pol.step(k, vcpu)  # the re-check: requests pending, cancel the entry
    assert (vcpu.pc, vcpu.mode) == ("vcpu_enter_guest", OUTSIDE_GUEST_MODE)
    assert not pol.kvm_kick_done(k, 1 << 0, HOST_SENDER)
    pol.ack_kicks(k, 0)  # interrupts on again: the IPI is taken
    assert pol.kvm_kick_done(k, 1 << 0, HOST_SENDER)
    run_to_guest(k, pol, vcpu)
    assert timeline_of(k) == ["INVEPT all-context", "VM entry VPID=1"]


def test_pending_kick_at_entry_exits_at_once() -> None:
    """A kick that arrived while interrupts were off (no request pending at the re-check) is
    taken right after the VM entry: an immediate exit, and the kick is acknowledged."""
    k, pol = in_host("kvm-6.18")
    vcpu = k.vcpus[0]
    pol.step(k, vcpu)
    pol.step(k, vcpu)
    k.pcpus[0].kicks |= HOST_SENDER
    pol.step(k, vcpu)
    assert timeline_of(k) == ["VM entry VPID=1"]
    assert (vcpu.pc, vcpu.mode) == ("vcpu_enter_guest", OUTSIDE_GUEST_MODE)
    assert k.pcpus[0].kicks == 0


# kvm_main.c:kvm_request_needs_ipi @ v6.18: IN_GUEST_MODE always moves to EXITING_GUEST_MODE; a
# request with KVM_REQUEST_WAIT needs the IPI unless the vCPU is OUTSIDE_GUEST_MODE, one without
# it only if the vCPU was IN_GUEST_MODE.
NEEDS_IPI = [
    # (mode before, request, IPI to pCPU0?, mode after)
    (IN_GUEST_MODE, KVM_REQ_TLB_FLUSH, True, EXITING_GUEST_MODE),
    (EXITING_GUEST_MODE, KVM_REQ_TLB_FLUSH, True, EXITING_GUEST_MODE),
    (OUTSIDE_GUEST_MODE, KVM_REQ_TLB_FLUSH, False, OUTSIDE_GUEST_MODE),
    (IN_GUEST_MODE, KVM_REQ_TLB_FLUSH_GUEST, True, EXITING_GUEST_MODE),
    (EXITING_GUEST_MODE, KVM_REQ_TLB_FLUSH_GUEST, True, EXITING_GUEST_MODE),
    (OUTSIDE_GUEST_MODE, KVM_REQ_TLB_FLUSH_GUEST, False, OUTSIDE_GUEST_MODE),
    (IN_GUEST_MODE, KVM_REQ_TLB_FLUSH_CURRENT, True, EXITING_GUEST_MODE),
    (EXITING_GUEST_MODE, KVM_REQ_TLB_FLUSH_CURRENT, False, EXITING_GUEST_MODE),
    (OUTSIDE_GUEST_MODE, KVM_REQ_TLB_FLUSH_CURRENT, False, OUTSIDE_GUEST_MODE),
    (IN_GUEST_MODE, KVM_REQ_STEAL_UPDATE, True, EXITING_GUEST_MODE),
    (EXITING_GUEST_MODE, KVM_REQ_STEAL_UPDATE, False, EXITING_GUEST_MODE),
]


@pytest.mark.parametrize(("mode", "req", "ipi", "after"), NEEDS_IPI)
def test_kvm_request_needs_ipi(mode: int, req: int, ipi: bool, after: int) -> None:
    k, pol = in_host("kvm-6.18")
    vcpu = k.vcpus[0]
    vcpu.mode = mode
    assert pol.kvm_request_needs_ipi(k, vcpu, req) == (0 if ipi else -1)
    assert vcpu.mode == after


def test_wait_requests() -> None:
    """KVM_REQ_TLB_FLUSH and KVM_REQ_TLB_FLUSH_GUEST carry KVM_REQUEST_WAIT, and so do the root
    reloads of a fast zap (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS; v5.x's KVM_REQ_MMU_RELOAD), and PML's
    KVM_REQ_UPDATE_CPU_DIRTY_LOGGING; CURRENT does not."""
    assert WAIT_REQUESTS == (
        KVM_REQ_TLB_FLUSH
        | KVM_REQ_TLB_FLUSH_GUEST
        | KVM_REQ_MMU_FREE_OBSOLETE_ROOTS
        | KVM_REQ_UPDATE_CPU_DIRTY_LOGGING
        | KVM_REQ_MMU_RELOAD
    )


def test_unloaded_vcpu_is_not_kicked() -> None:
    k, pol = in_host("kvm-6.18")
    vcpu = k.vcpus[0]
    preempt(k, pol, 0)
    assert pol.kvm_request_needs_ipi(k, vcpu, KVM_REQ_TLB_FLUSH) == -1


@pytest.mark.parametrize(
    ("name", "waits"), [("kvm-6.18", True), ("bug-remote-flush-no-wait", False)]
)
def test_requester_waits_for_acknowledgement(name: str, waits: bool) -> None:
    """kvm_kick_many_cpus @ v6.18 with wait: not done until each kicked pCPU took the IPI."""
    k, _ = in_host(name)
    pol = policy(name)
    pol.kvm_kick_many_cpus(k, 0b11, HOST_SENDER, wait=True)
    assert pol.kvm_kick_done(k, 0b11, HOST_SENDER) is not waits
    pol.ack_kicks(k, 0)
    assert pol.kvm_kick_done(k, 0b11, HOST_SENDER) is not waits
    pol.ack_kicks(k, 1)
    assert pol.kvm_kick_done(k, 0b11, HOST_SENDER)


def test_remote_flush_through_the_explorer_actions() -> None:
    """kvm_flush_remote_tlbs as the host thread runs it (the policy's HOST_STEPS, called from
    kvmtlb/host/thread.py): set the request, read the mode (IN_GUEST_MODE: kick pCPU0), kick,
    then blocked until pCPU0 takes the IPI; it
    returns only after that, and the vCPU serves KVM_REQ_TLB_FLUSH before it re-enters."""
    sys_ = system("kvm-6.18", "intel", vcpus=1, pcpus=1, host="flush_remote_tlbs")
    w = sys_.initial
    host = actions.Action("host", "host")
    ipi = actions.Action("pcpu0", "ipi")
    for phase in (
        "kvm_flush_remote_tlbs:mode",
        "kvm_flush_remote_tlbs:kick",
        "kvm_flush_remote_tlbs:wait",
    ):
        assert host in actions.enabled(sys_, w)
        w = actions.apply(sys_, w, host).world
        assert w.host.phase == phase
    assert host not in actions.enabled(sys_, w)  # waiting for the acknowledgement
    assert ipi in actions.enabled(sys_, w)
    out = actions.apply(sys_, w, ipi)
    w = out.world
    assert [r.action for r in out.records][-1] == "pCPU0 takes the IPI (ack_kick)"
    assert host in actions.enabled(sys_, w)
    out = actions.apply(sys_, w, host)
    assert [r.action for r in out.records] == ["kvm_flush_remote_tlbs returns"]
    w = out.world
    vcpu0 = actions.Action("vcpu0", "kvm")
    seen = []
    while vcpu0 in actions.enabled(sys_, w):
        out = actions.apply(sys_, w, vcpu0)
        seen += [r.action for r in out.records]
        w = out.world
    invept = [a for a in seen if a.startswith("INVEPT")]
    assert invept == ["INVEPT all-context EPTP 0x0 (ept_sync_global)"]
    assert seen.index(invept[0]) < seen.index("VMRESUME (vmx_vcpu_enter_exit)")
