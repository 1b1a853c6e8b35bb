"""Bug hunting (kvmtlb.check.hunt, `kvmtlb check --hunt`): swarm walks find violations, the
shrunk trace is a real trace of the system, never shorter than the breadth-first shortest one,
and equal to it when the hunt says it is proven shortest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.check.explorer import MAX_DEPTH, explore, walk
from kvmtlb.check.hunt import hunt, shrink, walk_until
from kvmtlb.cli import app
from kvmtlb.kvm.policy import registry
from kvmtlb.model.properties import check
from kvmtlb.model.scenario import load
from kvmtlb.model.system import System, build

BUILTIN = Path(__file__).parent.parent / "kvmtlb" / "scenarios"


def system(name: str, policy: str) -> System:
    return build(load(str(BUILTIN / f"{name}.toml"), set(registry())), registry()[policy]())


def breaks(s: System, path: list[int]) -> bool:
    """The path replays and its last world breaks a property."""
    last = None
    for *_, out in walk(s, path):
        last = out.world
    return last is not None and check(s, last) is not None


@pytest.mark.parametrize(
    ("scenario", "policy"),
    [
        ("pv-flush-preempted-twice", "bug-cve-2019-3016-double-preempted"),
        ("pv-flush-preempted-twice", "bug-cve-2019-3016-nonatomic-clear"),
        ("zap-while-away", "bug-vmx-migration-flush-guest-only"),
    ],
)
def test_hunt_finds_and_proves_shortest(scenario: str, policy: str) -> None:
    s = system(scenario, policy)
    bfs = explore(s)
    assert bfs.verdict == "violation"
    r = hunt(s, seconds=60, workers=1, prove_seconds=600)
    assert r is not None
    assert r.search == "hunt"
    assert r.shortest, "a small scenario's bounded search finishes"
    assert len(r.path) == len(bfs.path)
    assert r.prop == bfs.prop
    assert breaks(s, r.path)
    assert len(r.trace) == len(r.path)


def test_shrink_keeps_a_violation_and_never_beats_bfs() -> None:
    s = system("pv-flush-preempted-twice", "bug-cve-2019-3016-double-preempted")
    found = walk_until(s, seed=1, deadline=time.perf_counter() + 60)
    assert found is not None
    assert breaks(s, found.path)
    path, _v = shrink(s, found.path)
    assert len(path) <= len(found.path)
    assert breaks(s, path)
    assert len(path) >= len(explore(s).path)


def test_unproven_when_the_bounded_search_is_cut_short() -> None:
    s = system("pv-flush-preempted-twice", "bug-cve-2019-3016-nonatomic-clear")
    r = hunt(s, seconds=60, workers=1, prove_states=50)
    assert r is not None and r.verdict == "violation"
    assert not r.shortest
    assert 0 <= r.proved_depth < len(r.path) - 1


def test_walks_are_deterministic_per_seed() -> None:
    s = system("pv-flush-preempted-twice", "bug-cve-2019-3016-double-preempted")
    a = walk_until(s, seed=7, deadline=time.perf_counter() + 60)
    b = walk_until(s, seed=7, deadline=time.perf_counter() + 60)
    assert a is not None and b is not None and a.path == b.path


def test_no_find_on_a_safe_scenario() -> None:
    s = system("pv-flush-preempted-target", "kvm-6.18")
    assert hunt(s, seconds=0.3, workers=2) is None


def test_portfolio_search_proves_a_small_space_safe() -> None:
    s = system("vpid-off-pv-flush", "kvm-6.18")
    r = hunt(s, seconds=120, workers=2)
    assert r is not None and r.verdict == "safe" and r.search == "bfs"
    assert r.states == explore(s).states


def test_portfolio_search_gives_the_shortest_trace() -> None:
    s = system("pv-flush-preempted-target", "kvm-5.8")
    r = hunt(s, seconds=120, workers=2, seed=5)
    assert r is not None and r.verdict == "violation" and r.shortest
    assert len(r.path) == len(explore(s).path)


def test_max_depth_bounds_the_breadth_first_search() -> None:
    s = system("pv-flush-preempted-target", "kvm-5.8")
    r = explore(s, max_depth=5)
    assert r.verdict == "stopped" and r.stopped == MAX_DEPTH and r.depth == 5
    assert r.states < explore(s, max_depth=6).states


def test_cli_hunt_record_and_fallback() -> None:
    res = CliRunner().invoke(
        app,
        [
            "check",
            "pv-flush-preempted-twice",
            "--policy",
            "bug-cve-2019-3016-double-preempted",
            "--policy",
            "kvm-6.18",
            "--hunt",
            "--hunt-seconds",
            "2",
            "--jobs",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 1, res.output  # the bug's violation is not the expected "safe"
    recs = {r["policy"]: r for r in map(json.loads, res.stdout.splitlines())}
    bug = recs["bug-cve-2019-3016-double-preempted"]
    assert bug["verdict"] == "violation" and bug["hunt"]["shortest"] in (True, False)
    assert bug["hunt"]["walk_length"] >= len(bug["path"])
    safe = recs["kvm-6.18"]
    assert safe["verdict"] == "safe" and safe["hunt"] is None  # the full search proved it


@pytest.mark.parametrize(
    "args",
    [
        ["--seed", "3"],
        ["--hunt-seconds", "3"],
        ["--hunt", "--exact"],
        ["--hunt", "--hunt-seconds", "-1"],
    ],
)
def test_cli_hunt_bad_options(args: list[str]) -> None:
    res = CliRunner().invoke(app, ["check", "pv-flush-preempted-twice", *args])
    assert res.exit_code == 2, res.output
