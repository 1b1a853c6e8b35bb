"""[schedule]: a scheduler that may put listed vCPUs and load them again on any pCPU, at most
`moves` times each (issue 12's nondeterministic scheduler)."""

from __future__ import annotations

import pytest

from kvmtlb.check.explorer import explore
from kvmtlb.kvm.policy import registry
from kvmtlb.model import actions
from kvmtlb.model.scenario import ScenarioError, parse
from kvmtlb.model.system import build

TEXT = """
name = "schedule-unit"
[config]
vendor = "intel"
vcpus = 2
pcpus = 2
[guest]
"0x1000" = "0x10000 w"
[host]
"0x10000" = "0x80000 rwx"
"0x12000" = "0x82000 rwx"
[schedule]
moves = 1
vcpus = ["vcpu1"]
[threads]
vcpu0 = '''
map 0x1000 -> 0x12000 w
flush_tlb 0x1000 others
'''
"""


def sched(sys_: object, w: object) -> list[tuple[str, tuple[int, ...]]]:
    return [(a.kind, a.args) for a in actions.enabled(sys_, w) if a.actor == "sched"]  # type: ignore[arg-type]


def test_parse() -> None:
    assert parse(TEXT, "<unit>").schedule == (0, 1)
    every = parse(TEXT.replace('vcpus = ["vcpu1"]\n', "").replace("moves = 1", "moves = 2"))
    assert every.schedule == (2, 2)
    assert parse(TEXT.replace('[schedule]\nmoves = 1\nvcpus = ["vcpu1"]\n', "")).schedule == ()


def test_put_then_move_anywhere_then_no_more() -> None:
    sys_ = build(parse(TEXT, "<unit>"), registry()["kvm-6.18"]())
    w = sys_.initial
    assert sched(sys_, w) == [("put", (1,))]  # only vCPU1 is listed
    w = actions.apply(sys_, w, actions.Action("sched", "put", (1,))).world
    assert w.vcpus[1][actions.V_CPU] < 0
    # parked: not loaded by time-sharing; may go to either pCPU (pCPU0's vCPU is preemptible)
    assert sched(sys_, w) == [("move", (0, 1)), ("move", (1, 1))]
    w = actions.apply(sys_, w, actions.Action("sched", "move", (0, 1))).world
    assert w.vcpus[1][actions.V_CPU] == 0 and w.vcpus[0][actions.V_CPU] < 0
    assert w.host.home[1] == 0 and w.host.moves == (0, 0) and not w.host.parked
    # its one move is used: the scheduler never puts it again
    assert not [s for s in sched(sys_, w) if s[0] in ("put", "move")]


def test_without_schedule_there_are_no_such_steps() -> None:
    text = TEXT.replace('[schedule]\nmoves = 1\nvcpus = ["vcpu1"]\n', "")
    sys_ = build(parse(text, "<unit>"), registry()["kvm-6.18"]())
    assert sched(sys_, sys_.initial) == []


def test_the_scheduler_finds_what_a_script_finds() -> None:
    """The v5.8 steal-time window of pv-flush-preempted-target, with no host script."""
    text = TEXT.replace("[config]\n", "[config]\npv_tlb_flush = true\n")
    scenario = parse(text, "<unit>")
    bad = explore(build(scenario, registry()["kvm-5.8"]()))
    assert bad.verdict == "violation" and bad.prop == "guest-transparency"
    assert explore(build(scenario, registry()["kvm-6.18"]())).verdict == "safe"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("moves = 1", "moves = 0"), "moves must be a number from 1 to 4"),
        (("moves = 1", "moves = 5"), "moves must be a number from 1 to 4"),
        (("moves = 1", 'moves = "1"'), "moves must be a number"),
        (("moves = 1", "moves = true"), "moves must be a number"),
        (("moves = 1\n", ""), "moves must be a number"),
        (('vcpus = ["vcpu1"]', 'vcpus = ["vcpu2"]'), "unknown vCPU 'vcpu2'"),
        (('vcpus = ["vcpu1"]', 'vcpus = ["vcpu1", "vcpu1"]'), "listed twice"),
        (('vcpus = ["vcpu1"]', "vcpus = []"), "non-empty list"),
        (('vcpus = ["vcpu1"]', 'vcpus = "vcpu1"'), "non-empty list"),
        (('vcpus = ["vcpu1"]', "times = 2"), "unknown key 'times' in [schedule]"),
    ],
)
def test_format_errors(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(TEXT.replace(*edit), "<unit>")
    assert message in str(e.value)
    assert e.value.line > 0
