"""NX huge pages and their recovery (kvmtlb/kvm/hugepage.py, `recover_nx`; issue 15): the format,
the split a fault keeps while an NX table is linked, what each version's recovery zaps and
flushes, and historical bug #13's NX half (048f49809c52, 33a3164161fc)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmtlb.check.explorer import explore
from kvmtlb.kvm.context import Record
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.state import Kvm
from kvmtlb.model.actions import all_done, apply, enabled
from kvmtlb.model.scenario import ScenarioError, load, parse
from kvmtlb.model.system import System, build

SCENARIOS = Path(__file__).parent.parent / "kvmtlb" / "scenarios"

BASE = """
name = "t"

[config]
vendor = "VENDOR"
vcpus = 1
pcpus = 1
KNOBS

[guest]
"0x1000" = "0x200000 w"
"0x2000" = "0x201000 w"

[host]
HOST

[threads]
vcpu0 = \"\"\"
GUEST
\"\"\"
host = \"\"\"
OPS
\"\"\"
"""

NX = '"0x200000" = "0x400000 rwx 2m nx"'


def text(
    host: str = NX,
    ops: str = "recover_nx",
    guest: str = "read 0x2000",
    knobs: str = "",
    vendor: str = "intel",
) -> str:
    return (
        BASE.replace("HOST", host)
        .replace("OPS", ops)
        .replace("GUEST", guest)
        .replace("KNOBS", knobs)
        .replace("VENDOR", vendor)
    )


def _drive(system: System, first: str) -> list[Record]:
    """Run the world to its end, `first`'s steps whenever it has one (its first outcome), and
    return the trace's records."""
    w = system.initial
    log: list[Record] = []
    while not all_done(system, w):
        acts = enabled(system, w)
        assert acts, "stuck"
        pick = next((a for a in acts if a.actor.startswith(first)), None)
        if pick is None:
            pick = next((a for a in acts if a.actor in ("vcpu0", "guest0")), acts[0])
        out = apply(system, w, pick)
        log.extend(out.records)
        w = out.world
    return log


def _text(log: list[Record]) -> str:
    return "\n".join(f"{r.action} {r.detail}" for r in log)


# -- the format -----------------------------------------------------------------------------------
def test_an_nx_region_starts_split_with_its_first_frame_mapped() -> None:
    s = parse(text())
    assert s.nx_huge == frozenset({0x200000}) and s.huge == {0x200000: (0x400000, "rwx")}
    system = build(s, registry()["kvm-6.18"]())
    assert system.kvm.nx_huge == 1
    assert Kvm(*system.initial.kvm).nx_huge == 1
    plain_text = text(host='"0x200000" = "0x400000 rwx 2m"', ops="zap 0x201000")
    plain = build(parse(plain_text), registry()["kvm-6.18"]())
    assert plain.kvm.nx_huge == 0 and Kvm(*plain.initial.kvm).nx_huge == 0


@pytest.mark.parametrize(
    ("host", "ops", "guest", "message"),
    [
        ('"0x200000" = "0x400000 rwx 2m"', "recover_nx", "read 0x2000", "nothing"),
        ('"0x200000" = "0x400000 rwx 2m"', "spawn recover_nx", "read 0x2000", "nothing"),
        (NX, "collapse 0x200000", "read 0x2000", "collapse"),
        (NX, "recover_nx", "exec 0x2000", "exec"),
        ('"0x200000" = "0x400000 rwx 2m nx x"', "", "read 0x2000", "bad host mapping"),
        ('"0x200000" = "0x400000 rwx nx"', "", "read 0x2000", "bad host mapping"),
        ('"0x200000" = "0x400000 rwx 2m NX"', "", "read 0x2000", "bad host mapping"),
        (NX, "recover_nx 0x200000", "read 0x2000", "unknown or malformed host op"),
    ],
)
def test_bad_nx_input_is_an_input_error(host: str, ops: str, guest: str, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(text(host, ops, guest), "bad.toml")
    assert message in str(e.value)
    assert e.value.line > 0 and e.value.fix


# -- faults and recovery, per version ------------------------------------------------------------
@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_a_fault_maps_4k_while_the_nx_table_is_linked(policy: str) -> None:
    system = build(parse(text(guest="read 0x2000")), registry()[policy]())
    trace = _text(_drive(system, "guest0"))
    assert "disallowed_hugepage_adjust(0x201000)" in trace
    assert "map 4 KiB" in trace and "2 MiB SPTE" not in trace


@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_after_recovery_the_next_fault_maps_2m(policy: str) -> None:
    system = build(parse(text(guest="read 0x2000")), registry()[policy]())
    trace = _text(_drive(system, "host"))
    zap = trace.index("zap the NX-split table")
    assert "kvm_tdp_page_fault(0x201000): 2 MiB" in trace[zap:]
    assert "disallowed_hugepage_adjust" not in trace


def test_v618_leaves_a_dirty_logged_table_and_v5x_zaps_it() -> None:
    src = text(ops="wrprotect 0x200000\nrecover_nx", guest="write 0x1000")
    new = _text(_drive(build(parse(src), registry()["kvm-6.18"]()), "host"))
    assert "logs dirty pages" in new and "zap the NX-split table" not in new
    old = _text(_drive(build(parse(src), registry()["kvm-5.8"]()), "host"))
    assert "zap the NX-split table" in old and "logs dirty pages" not in old


@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_the_recovery_flushes_before_it_yields_and_holds_mmu_lock(policy: str) -> None:
    two = NX + '\n"0x600000" = "0x800000 rwx 2m nx"'
    system = build(parse(text(host=two)), registry()[policy]())
    trace = _text(_drive(system, "host"))
    first = trace.index("zap the NX-split table")
    yielded = trace.index("mmu_lock yielded")
    assert trace.index("flush before yielding") < yielded
    assert trace.index("kvm_flush_remote_tlbs", first) < yielded
    assert trace.count("zap the NX-split table") == 2


def test_a_notifier_zap_waits_while_the_recovery_holds_mmu_lock() -> None:
    system = build(load(SCENARIOS / "nx-recovery-yield-race.toml"), registry()["kvm-6.18"]())
    w = system.initial
    for actor in ("host", "host2"):  # the spawn; host2 takes mmu_lock and zaps the first table
        act = next(a for a in enabled(system, w) if a.actor == actor)
        w = apply(system, w, act).world
    kvm = Kvm(*w.kvm)
    assert kvm.mmu_lock and kvm.nx_huge == 0b10
    assert not any(a.actor == "host" for a in enabled(system, w))  # the zap waits


# -- the variants ---------------------------------------------------------------------------------
def _verdict(name: str, policy: str) -> tuple[str | None, int]:
    r = explore(build(load(SCENARIOS / f"{name}.toml", set(registry())), registry()[policy]()))
    return r.prop, len(r.trace)


@pytest.mark.parametrize(
    ("scenario", "policy", "caught"),
    [
        ("nx-recovery-zap", "bug-nx-recovery-tdp-no-flush", True),
        ("amd-nx-recovery-zap", "bug-nx-recovery-tdp-no-flush", True),
        ("nx-recovery-zap", "bug-nx-recovery-yield-pending-flush", False),  # one table: no yield
        ("nx-recovery-yield-race", "bug-nx-recovery-yield-pending-flush", True),
        ("nx-recovery-yield-race", "bug-nx-recovery-tdp-no-flush", True),
    ],
)
def test_bug_13s_nx_half_is_caught_where_it_can_show(
    scenario: str, policy: str, caught: bool
) -> None:
    prop, length = _verdict(scenario, policy)
    assert (prop == "host-isolation") is caught
    if caught:
        assert 0 < length <= 8  # a short trace
    assert _verdict(scenario, "kvm-6.18")[0] is None
