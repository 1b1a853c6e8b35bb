"""host-isolation is a use-after-free property: it is armed by the host kernel's step that frees
the old page (or migrates its data away), not by KVM's flush returning, so a policy that flushes
after the free is caught; and the host's KVM side is the policy's (HOST_STEPS)."""

from __future__ import annotations

from kvmsetups import system

from kvmtlb.check.explorer import explore
from kvmtlb.kvm.policy import registry
from kvmtlb.model import actions
from kvmtlb.model.scenario import load
from kvmtlb.model.system import build

HOST = actions.Action("host", "host")


def host_phases(policy: str, op: str) -> list[tuple[str, tuple[int, ...]]]:
    """The host thread's phase and released pages after each of its steps, run alone (a vCPU
    outside guest mode takes no kick, so the flush never waits)."""
    sys_ = system(policy, "intel", vcpus=1, pcpus=1, host=op)
    w = sys_.initial
    out = []
    while HOST in actions.enabled(sys_, w):
        w = actions.apply(sys_, w, HOST).world
        out.append((w.host.phase, w.host.released))
        if not w.host.phase:
            break
        if w.host.phase == "kvm_flush_remote_tlbs:wait" and HOST not in actions.enabled(sys_, w):
            w = actions.apply(sys_, w, actions.Action("pcpu0", "ipi")).world
    return out


def test_zap_releases_the_page_at_the_free_not_at_the_flush() -> None:
    steps = host_phases("kvm-6.18", "zap 0x10000")
    phases = [p for p, _ in steps]
    assert phases == [
        "kvm_flush_remote_tlbs",
        "kvm_flush_remote_tlbs:mode",
        "kvm_flush_remote_tlbs:kick",
        "kvm_flush_remote_tlbs:wait",
        "mm:unmap",
        "mm:end",
        "",
    ]
    released = dict(steps)
    assert released["mm:unmap"] == ()  # kvm_flush_remote_tlbs returned: nothing freed yet
    assert released["mm:end"] == (0x80000,)  # the primary MMU freed it


def test_remap_releases_the_old_page_when_the_data_moves() -> None:
    steps = host_phases("kvm-6.18", "remap 0x10000 -> 0x90000")
    assert [p for p, _ in steps][-4:] == ["mm:migrate", "mm:end", "mm:map", ""]
    assert dict(steps)["mm:end"] == (0x80000,)


def test_a_flush_after_the_free_is_caught() -> None:
    """bug-notifier-flush-at-range-end flushes in invalidate_range_end: the primary MMU freed the
    page before, while the vCPU's TLB still mapped it. Armed at the flush's return (as before),
    host-isolation could not see it: by then the entry is gone."""
    from pathlib import Path

    path = Path(__file__).parent.parent / "kvmtlb" / "scenarios" / "zap-race-access.toml"
    for name, verdict in (
        ("kvm-6.18", None),
        ("bug-notifier-flush-at-range-end", "host-isolation"),
    ):
        r = explore(build(load(path, set(registry())), registry()[name]()))
        assert r.prop == verdict, name
        if verdict:
            assert any("[mm:unmap]" in t.action for t in r.trace)
            assert "freed or migrated away" in r.detail


def test_recheck_parts_can_be_overridden_alone() -> None:
    """vcpu_enter_guest_recheck is kvm_vcpu_exit_request, vcpu_enter_guest_run and
    vcpu_enter_guest_pending_kick: a variant that only drops the re-check of requests loses the
    remote flush that raced with the entry."""
    from pathlib import Path

    from kvmtlb.kvm.versions import Kvm618

    class NoRecheck(Kvm618):
        name = "test-no-recheck"

        def kvm_vcpu_exit_request(self, k: object, vcpu: object) -> bool:
            return False

    path = Path(__file__).parent.parent / "kvmtlb" / "scenarios" / "amd-zap-race-access.toml"
    r = explore(build(load(path, set(registry()) | {"test-no-recheck"}), NoRecheck()))
    assert r.prop == "host-isolation"
    assert any("vcpu_enter_guest_recheck" in t.action for t in r.trace)
