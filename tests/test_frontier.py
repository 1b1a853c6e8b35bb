"""Packed frontiers (kvmtlb.check.frontier): worlds come back equal, in order, with the run's
constant objects by reference; a search that packs every level (in memory or in a file) gives
the plain search's verdict, counts and trace, over the whole built-in suite, in the plain and
the partitioned search."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from test_parallel import same

from kvmtlb.check import frontier as frontier_mod
from kvmtlb.check.explorer import explore
from kvmtlb.check.frontier import Frontier, constants_of
from kvmtlb.check.inputs import builtin_scenarios
from kvmtlb.check.parallel import LocalGroup, Options, _search
from kvmtlb.kvm.policy import registry
from kvmtlb.model.actions import apply, enabled
from kvmtlb.model.scenario import load
from kvmtlb.model.system import System, build

BUILTIN = Path(__file__).parent.parent / "kvmtlb" / "scenarios"
SUITE = sorted(builtin_scenarios("default"))


def system(path: Path | str, policy: str) -> System:
    return build(load(str(path), set(registry())), registry()[policy]())


def some_worlds(s: System, n: int) -> list[object]:
    """The first `n` worlds of a breadth-first walk of `s` (duplicates kept)."""
    out, level = [s.initial], [s.initial]
    while len(out) < n and level:
        level = [apply(s, w, a, tracing=False).world for w in level for a in enabled(s, w)]
        out += level
    return out[:n]


@pytest.mark.parametrize("directory", [False, True])
def test_items_come_back_equal_in_order_with_constants_by_reference(
    tmp_path: Path, directory: bool
) -> None:
    s = system(BUILTIN / "pv-flush-preempted-target.toml", "kvm-6.18")
    worlds = some_worlds(s, 300)
    f = Frontier(
        constants_of(s.initial),
        threshold=7,
        batch=16,
        directory=str(tmp_path) if directory else None,
    )
    for i, w in enumerate(worlds):
        f.append((w, i))
    assert len(f) == 300 and f
    assert f.packed_bytes > 0
    if directory:
        assert f.file is not None and not f.packed
    else:
        assert f.packed and f.file is None
    back = list(f)
    assert [i for _, i in back] == list(range(300))
    assert [w for w, _ in back] == worlds
    for w, _ in back[7:]:  # packed ones: the same constant objects, not copies
        assert w.machine.config is s.initial.machine.config
        assert w.native.config is s.initial.native.config
    assert f.file is None  # the file is closed once read back
    assert os.listdir(tmp_path) == []  # and was never a named file


@pytest.mark.parametrize("directory", [False, True])
def test_get_reads_any_position_without_consuming(tmp_path: Path, directory: bool) -> None:
    s = system(BUILTIN / "pv-flush-preempted-target.toml", "kvm-6.18")
    worlds = some_worlds(s, 200)
    f = Frontier(
        constants_of(s.initial),
        threshold=5,
        batch=8,
        directory=str(tmp_path) if directory else None,
    )
    assert [f.add(w) for w in worlds] == list(range(200))
    order = list(range(200))
    random.Random(1).shuffle(order)
    for i in [*order, *range(200), 199, 0, 100]:
        assert f.get(i) == worlds[i]
    assert list(f) == worlds  # reading in order after `get` still works


def test_packing_costs_far_less_than_the_live_worlds() -> None:
    s = system(BUILTIN / "pv-flush-preempted-target.toml", "kvm-6.18")
    worlds = some_worlds(s, 2000)
    f = Frontier(constants_of(s.initial), threshold=0)
    for w in worlds:
        f.append(w)
    assert f.packed_bytes / len(worlds) < 200  # ~1 KB as live objects


def test_a_world_of_another_run_is_refused() -> None:
    a = system(BUILTIN / "pv-flush-preempted-target.toml", "kvm-6.18")
    b = system(BUILTIN / "pv-flush-preempted-target.toml", "kvm-6.18")
    f = Frontier(constants_of(a.initial), threshold=0, batch=1)
    with pytest.raises(Exception, match="not this run's"):
        f.append(b.initial)


@pytest.mark.parametrize("path", SUITE, ids=lambda p: Path(p).stem)
def test_a_search_packing_every_level_is_the_plain_search(path: Path) -> None:
    policy = "kvm-5.7"  # violations too, so traces are compared
    same(explore(system(path, policy)), explore(system(path, policy), frontier_threshold=0))


def test_packed_levels_in_a_file_are_the_plain_search(tmp_path: Path) -> None:
    p = BUILTIN / "pv-flush-preempted-target.toml"
    a = explore(system(p, "bug-cve-2019-3016-double-preempted"))
    b = explore(
        system(p, "bug-cve-2019-3016-double-preempted"),
        frontier_threshold=0,
        frontier_dir=str(tmp_path),
    )
    assert (b.label, b.states, b.transitions, b.path) == (a.label, a.states, a.transitions, a.path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "policy"),
    [("emulated-read-pv-flush", "kvm-5.7"), ("amd-migration-round-trip", "kvm-6.18")],
)
def test_partitions_packing_every_level_are_the_plain_search(
    monkeypatch: pytest.MonkeyPatch, name: str, policy: str
) -> None:
    a = explore(system(BUILTIN / f"{name}.toml", policy))
    monkeypatch.setattr(frontier_mod, "THRESHOLD", 0)
    s = system(BUILTIN / f"{name}.toml", policy)
    same(a, _search(s, LocalGroup(s, 2), Options(), None))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pack-after", "-1"], "--pack-after -1: give a number of worlds >= 0"),
        (["--frontier-dir", "MISSING"], "not a directory; give an existing directory"),
        (["--frontier-dir", "TMP", "--workers", "2"], "--frontier-dir goes with the plain search"),
        (["--pack-after", "5", "--workers", "2"], "--pack-after goes with the plain search"),
        (["--pack-after", "5", "--por"], "do not go with --por"),
    ],
)
def test_bad_packing_options_are_input_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from kvmtlb.cli import app

    args = [
        str(tmp_path / "missing") if a == "MISSING" else str(tmp_path) if a == "TMP" else a
        for a in args
    ]
    r = CliRunner().invoke(app, ["check", "emulated-read-pv-flush", "--policy", "kvm-6.18", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_check_packs_every_level_in_a_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kvmtlb.cli import app

    base = ["check", "amd-migration-round-trip", "--policy", "kvm-6.18"]
    plain = CliRunner().invoke(app, base)
    packed = CliRunner().invoke(app, [*base, "--pack-after", "0", "--frontier-dir", str(tmp_path)])
    assert plain.exit_code == packed.exit_code == 0, packed.output
    assert "6,325 states" in plain.output and "6,325 states" in packed.output
