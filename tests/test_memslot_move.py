"""Memslot moves (KVM_MR_MOVE, the host op `move_memslot`; kvmtlb/kvm/memslot.py), issue 15: the
parser's checks, a GPA without memory ([host] "none") and its MMIO faults, the steps of a move, the
property that covers the old GPA once the move returned, and the verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvmsetups import thaw
from typer.testing import CliRunner

from kvmtlb.check.explorer import explore
from kvmtlb.check.lint import lint
from kvmtlb.check.runner import builtin_scenarios
from kvmtlb.cli import app
from kvmtlb.guest.thread import MMIO_DONE, guest_actions, guest_step
from kvmtlb.host.ops import MoveMemslotOp
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.state import HostTask
from kvmtlb.model.properties import check
from kvmtlb.model.scenario import NO_MEMORY, ScenarioError, parse
from kvmtlb.model.system import build

BUILTIN = {p.stem: p for p in builtin_scenarios("all")}
MOVES = (
    "memslot-move-race-access",
    "amd-memslot-move-race-access",
    "memslot-move-while-preempted",
)
TEXT = """name = "move"
[config]
vendor = "intel"
[guest]
"0x1000" = "0x10000 w"
"0x2000" = "0x20000 w"
[host]
"0x10000" = "0x80000 rx"
"0x20000" = "none"
[threads]
vcpu0 = \"\"\"
read 0x1000
read 0x2000
\"\"\"
host = \"\"\"
move_memslot 0x10000 -> 0x20000
\"\"\"
"""


def _parse(text: str = TEXT) -> object:
    return parse(text, "m.toml")


# -- the parser ------------------------------------------------------------------------------------
def test_the_destination_takes_the_source_rights_and_has_no_page() -> None:
    s = parse(TEXT, "m.toml")
    assert s.host_program == (MoveMemslotOp(0x10000, 0x20000, 16),)
    assert s.host_program[0].describe() == "move_memslot 0x10000 -> 0x20000"
    assert s.host[0x20000] == (NO_MEMORY, "rx")
    assert s.host[0x10000] == (0x80000, "rx")


@pytest.mark.parametrize(
    ("old", "new", "message", "line"),
    [
        # the destination must be a "none" GPA of [host]
        ("0x10000 -> 0x20000", "0x10000 -> 0x30000", "destination 0x30000 is not a GPA", 16),
        ('"0x20000" = "none"', '"0x20000" = "0x90000 rwx"', "0x20000 is not a GPA without", 16),
        # the source must have memory and be in [host]
        ("0x10000 -> 0x20000", "0x30000 -> 0x20000", "GPA 0x30000 is not mapped in", 16),
        ("0x10000 -> 0x20000", "0x20000 -> 0x20000", "there is no memslot to move", 16),
        # a "none" GPA nothing moves to
        ("move_memslot 0x10000 -> 0x20000", "zap 0x10000", "no move_memslot moves a memslot", 9),
        # each slot moved once, each destination used once
        (
            "move_memslot 0x10000 -> 0x20000",
            "move_memslot 0x10000 -> 0x20000\nmove_memslot 0x10000 -> 0x20000",
            "was already moved",
            17,
        ),
        # no other host op on a moved GPA
        (
            "move_memslot 0x10000 -> 0x20000",
            "move_memslot 0x10000 -> 0x20000\nzap 0x20000",
            "a GPA a memslot move changes",
            17,
        ),
        ("[config]", "[config]\ntdp = false", "move_memslot needs tdp = true", 17),
        ("0x10000 -> 0x20000", "0x10000 0x20000", "unknown or malformed host op", 16),
    ],
)
def test_bad_moves_name_the_line_and_the_fix(old: str, new: str, message: str, line: int) -> None:
    assert old in TEXT
    with pytest.raises(ScenarioError, match=message) as e:
        parse(TEXT.replace(old, new, 1), "m.toml")
    assert e.value.line == line
    assert e.value.fix


def test_a_destination_used_twice_is_refused() -> None:
    text = TEXT.replace('"0x20000" = "none"', '"0x20000" = "none"\n"0x11000" = "0x81000 rwx"')
    text = text.replace(
        "move_memslot 0x10000 -> 0x20000",
        "move_memslot 0x10000 -> 0x20000\nmove_memslot 0x11000 -> 0x20000",
    )
    with pytest.raises(ScenarioError, match="already receives the memslot of 0x10000"):
        parse(text, "m.toml")


def test_a_bad_move_exits_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TEXT.replace("0x10000 -> 0x20000", "0x10000 -> 0x30000"))
    r = CliRunner().invoke(app, ["check", str(bad)])
    assert r.exit_code == 2, r.output
    assert "bad.toml:16" in r.output and "none" in r.output


def test_lint_warns_of_a_move_no_access_can_watch(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text(TEXT.replace('"0x1000" = "0x10000 w"\n', ""))
    assert [w.kind for w in lint(f)] == ["never-mapped", "move-unwatched"]
    g = tmp_path / "ok.toml"
    g.write_text(TEXT)
    assert lint(g) == []


# -- the model -------------------------------------------------------------------------------------
def test_a_gpa_without_memslot_faults_as_mmio_and_the_access_completes() -> None:
    sys_ = build(_parse(), registry()["kvm-6.18"]())  # type: ignore[arg-type]
    pol = sys_.policy
    k = thaw(sys_)
    vcpu = k.vcpus[0]
    pol.kvm_mmu_page_fault(k, vcpu, 0x20000, False)
    assert vcpu.mmio_exit == 0x20000
    assert pol.spte(k, 0x20000)[0] < 0  # nothing mapped
    # the guest's access to the GVA of the destination completes once the vCPU runs again
    k.guests[0] = k.guests[0]._replace(op=1)
    w = k.freeze()
    program = sys_.scenario.programs[0]
    assert guest_actions(w, 0, program, 0, False) == [("access", (MMIO_DONE,))]
    k = type(k).thaw(sys_.kvm, w, "test", True)
    guest_step(k, pol, 0, program, "access", (MMIO_DONE,))
    assert k.guests[0].op == 2
    assert k.vcpus[0].mmio_exit == -1


def test_kvm_move_memslot_moves_the_page_and_leaves_the_old_gpa_without_memory() -> None:
    sys_ = build(_parse(), registry()["kvm-6.18"]())  # type: ignore[arg-type]
    pol = sys_.policy
    k = thaw(sys_)
    pol.kvm_invalidate_memslot(k, 0x10000)
    task = HostTask("kvm_set_memslot:move", (), ("mm:done",), 0x10000, 0x20000)
    pol.host_step(k, task)
    assert task.pc == "mm:done"
    i, j = k.config.gpa_index(0x10000), k.config.gpa_index(0x20000)
    assert k.kvm.backing[j] == 0x80000 and k.kvm.backing[i] == -1
    assert k.kvm.slot_absent == 1 << i and not k.kvm.slot_invalid
    vcpu = k.vcpus[0]
    pol.kvm_mmu_page_fault(k, vcpu, 0x20000, False)  # the new GPA faults in the moved page
    assert vcpu.mmio_exit == -1 and vcpu.frame[3] == 0x80000
    vcpu.frame, vcpu.pc = (), "guest"
    pol.kvm_unmap_gfn_range(k, 0x10000)  # (the move's fast zap, in the real order)
    pol.kvm_mmu_page_fault(k, vcpu, 0x10000, False)  # the old GPA is MMIO now
    assert vcpu.mmio_exit == 0x10000


def test_a_translation_through_the_old_gpa_breaks_host_isolation_once_moved() -> None:
    sys_ = build(_parse(), registry()["kvm-6.18"]())  # type: ignore[arg-type]
    w = sys_.initial
    assert check(sys_, w) is None  # the boot root maps the old GPA: fine before the move
    moved = w._replace(host=w.host._replace(moved=1 << sys_.kvm.gpa_index(0x10000)))
    v = check(sys_, moved)
    assert v is not None and v.prop == "host-isolation"
    assert "0x10000, whose memslot moved away" in v.detail


# -- verdicts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MOVES)
@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_upstream_is_safe(name: str, policy: str) -> None:
    s = parse(BUILTIN[name].read_text(), str(BUILTIN[name]))
    assert explore(build(s, registry()[policy]())).label == "safe"


@pytest.mark.parametrize("name", MOVES)
def test_skipping_the_flush_of_the_old_range_is_caught(name: str) -> None:
    s = parse(BUILTIN[name].read_text(), str(BUILTIN[name]))
    r = explore(build(s, registry()["bug-memslot-move-no-flush"]()))
    assert r.label == "violation:host-isolation"
    assert "whose memslot moved away" in r.detail


def test_the_no_flush_bug_leaves_deletion_alone() -> None:
    s = parse(BUILTIN["delete-memslot-race-access"].read_text(), "d.toml")
    assert explore(build(s, registry()["bug-memslot-move-no-flush"]())).label == "safe"
