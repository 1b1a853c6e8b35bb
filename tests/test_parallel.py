"""One search on every core (kvmtlb.check.parallel): the partitioned breadth-first search gives
the single-process search's verdict, state and transition counts, depth and trace (the same
path of actions), in this process with several partitions and on worker processes; `--jobs N`
on one run splits it; checkpoints resume to the uninterrupted result and are refused when
corrupt or of another run."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_verdicts import NEVER_RESUMED, KicksNeverTaken
from typer.testing import CliRunner

from kvmtlb.check.explorer import Result, explore
from kvmtlb.check.parallel import LocalGroup, Options, _search, explore_partitioned
from kvmtlb.cli import app, search_workers
from kvmtlb.kvm.policy import registry
from kvmtlb.model.scenario import load
from kvmtlb.model.system import System, build

BUILTIN = Path(__file__).parent.parent / "kvmtlb" / "scenarios"
PV = str(BUILTIN / "pv-flush-preempted-target.toml")

CASES = [
    ("emulated-read-pv-flush", "kvm-5.7"),  # a violation at depth 9
    ("emulated-read-pv-flush", "kvm-6.18"),
    ("amd-migration-round-trip", "kvm-6.18"),  # 6,325 states
    ("clear-dirty-log-race-write", "bug-mmu-load-no-flush"),
    ("amd-ipi-shootdown-all-global", "kvm-5.8"),
]


def system(name: str, policy: str) -> System:
    return build(load(str(BUILTIN / f"{name}.toml"), set(registry())), registry()[policy]())


def same(a: Result, b: Result) -> None:
    assert (b.label, b.states, b.transitions, b.depth, b.path, b.detail) == (
        a.label,
        a.states,
        a.transitions,
        a.depth,
        a.path,
        a.detail,
    )
    assert [(t.actor, t.action) for t in b.trace] == [(t.actor, t.action) for t in a.trace]


@pytest.mark.parametrize(("name", "policy"), CASES)
def test_partitions_in_this_process_equal_the_plain_search(name: str, policy: str) -> None:
    a = explore(system(name, policy))
    for parts in (1, 3):
        s = system(name, policy)
        same(a, _search(s, LocalGroup(s, parts), Options(), None))


def test_worker_processes_equal_the_plain_search() -> None:
    for name, policy in CASES[:3]:
        a = explore(system(name, policy))
        same(a, explore_partitioned(system(name, policy), workers=2))


def test_deadlock_and_livelock_are_the_plain_searchs(tmp_path: Path) -> None:
    path = tmp_path / "never-resumed.toml"
    path.write_text(NEVER_RESUMED)
    for make in (
        lambda: build(load(path), registry()["kvm-6.18"]()),
        lambda: build(load(BUILTIN / "flush-remote-tlbs.toml"), KicksNeverTaken()),
    ):
        a = explore(make())
        assert a.verdict == "deadlock"
        s = make()
        same(a, _search(s, LocalGroup(s, 3), Options(), None))
        same(a, explore_partitioned(make(), workers=2))


def test_a_step_that_raises_is_reported_with_its_path() -> None:
    class Raises(registry()["kvm-6.18"]):  # type: ignore[misc, valid-type]
        name = "raises"

        def ack_kicks(self, k: Any, cpu: int) -> None:
            raise RuntimeError("boom")

    a = explore(build(load(BUILTIN / "flush-remote-tlbs.toml"), Raises()))
    assert a.verdict == "error"
    b = explore_partitioned(build(load(BUILTIN / "flush-remote-tlbs.toml"), Raises()), workers=2)
    assert b.verdict == "error" and "boom" in b.detail and isinstance(b.error, RuntimeError)
    assert (b.detail, b.path) == (a.detail, a.path)


def test_search_workers_splits_jobs_between_runs() -> None:
    assert search_workers(0, 0, 1, False, "local") == 1  # default: one process per run
    assert search_workers(0, 4, 1, False, "local") == 4  # --jobs 4, one run: 4 workers
    assert search_workers(0, 4, 2, False, "local") == 2  # two runs share the 4 cores
    assert search_workers(0, 4, 9, False, "local") == 1  # many runs: one per core
    assert search_workers(3, 0, 9, False, "local") == 3  # --workers says
    assert search_workers(0, 4, 1, True, "local") == 1  # --exact or --hunt


def records(args: list[str]) -> tuple[int, list[dict[str, Any]]]:
    r = CliRunner().invoke(app, ["check", *args, "--json"])
    return r.exit_code, [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]


KEYS = ("label", "states", "transitions", "depth", "path", "trace")


def test_jobs_on_one_run_splits_it() -> None:
    code1, (one,) = records([str(BUILTIN / "emulated-read-pv-flush.toml"), "--policy", "kvm-5.7"])
    code2, (two,) = records(
        [str(BUILTIN / "emulated-read-pv-flush.toml"), "--policy", "kvm-5.7", "--jobs", "2"]
    )
    assert code1 == code2 == 0
    assert {k: two[k] for k in KEYS} == {k: one[k] for k in KEYS}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_run_stopped_by_max_states_resumes_to_the_same_result(
    tmp_path: Path, workers: str
) -> None:
    scenario = str(BUILTIN / "amd-migration-round-trip.toml")
    base = [scenario, "--policy", "kvm-6.18"]
    code, (whole,) = records(base)
    assert code == 0 and whole["label"] == "safe"
    ck = str(tmp_path / "ck")
    code, (part,) = records(
        [*base, "--workers", workers, "--checkpoint", ck, "--max-states", "2000"]
    )
    assert code == 3 and part["label"] == "stopped:max-states", part
    assert part["states"] < whole["states"]
    assert sorted(p.suffix for p in Path(ck).iterdir()) == [".bin"] * int(workers) + [".json"]
    code, (resumed,) = records([*base, "--resume", ck])
    assert code == 0
    assert {k: resumed[k] for k in KEYS} == {k: whole[k] for k in KEYS}


def test_a_violation_is_found_after_resuming(tmp_path: Path) -> None:
    base = [str(BUILTIN / "emulated-read-pv-flush.toml"), "--policy", "kvm-5.7"]
    code, (whole,) = records(base)
    ck = str(tmp_path / "ck")
    code, _ = records([*base, "--checkpoint", ck, "--max-states", "100"])
    assert code == 3
    code, (resumed,) = records([*base, "--resume", ck, "--workers", "2"])
    assert {k: resumed[k] for k in KEYS} == {k: whole[k] for k in KEYS}
    assert resumed["label"] == "violation:guest-transparency"


def test_resuming_reads_no_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint is data: resuming in this process never unpickles anything."""
    s = system("amd-migration-round-trip", "kvm-6.18")
    ck = str(tmp_path / "ck")
    stopped = explore_partitioned(s, workers=1, checkpoint=ck, max_states=1500)
    assert stopped.stopped == "max-states"

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    r = explore_partitioned(s, workers=1, checkpoint=ck, resume=True)
    assert r.verdict == "safe" and r.states == 6325


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_ctrl_c_or_a_crash_then_resume_finishes_alike(tmp_path: Path, sig: int) -> None:
    """A real Ctrl-C (SIGINT to the process group) in the middle of a search on two workers
    writes a checkpoint and exits 3; a crash (SIGKILL) leaves the last periodic one. Resuming
    either gives the uninterrupted result."""
    base = [PV, "--policy", "kvm-6.18"]
    code, (whole,) = records(base)
    assert code == 0
    ck = tmp_path / "ck"
    env = {**os.environ, "KVMTLB_PROGRESS_SECONDS": "1000"}
    cmd = [sys.executable, "-c", "from kvmtlb.cli import main; main()", "check", *base]
    cmd += ["--workers", "2", "--json", "--checkpoint", str(ck), "--checkpoint-every", "0.2"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (ck / "manifest.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 3, (out, err)
        rec = json.loads(out.splitlines()[0])
        assert rec["label"] == "stopped:interrupted" and "--resume" in rec["detail"]
    else:
        assert proc.returncode == -signal.SIGKILL, (out, err)
    code, (resumed,) = records([*base, "--resume", str(ck)])
    assert code == 0
    assert {k: resumed[k] for k in KEYS} == {k: whole[k] for k in KEYS}


def stopped_checkpoint(tmp_path: Path) -> tuple[list[str], Path]:
    base = [str(BUILTIN / "amd-migration-round-trip.toml"), "--policy", "kvm-6.18"]
    ck = tmp_path / "ck"
    code, _ = records([*base, "--workers", "2", "--checkpoint", str(ck), "--max-states", "1500"])
    assert code == 3
    return base, ck


def test_a_corrupt_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    base, ck = stopped_checkpoint(tmp_path)
    part = sorted(ck.glob("part-*.bin"))[0]
    blob = bytearray(part.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    part.write_bytes(bytes(blob))
    r = CliRunner().invoke(app, ["check", *base, "--resume", str(ck)])
    assert r.exit_code == 2, r.output
    assert "corrupt" in r.output and "SHA-256" in r.output
    (ck / "manifest.json").write_text("{not json")
    r = CliRunner().invoke(app, ["check", *base, "--resume", str(ck)])
    assert r.exit_code == 2 and "not a kvmtlb checkpoint" in r.output, r.output
    r = CliRunner().invoke(app, ["check", *base, "--resume", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no checkpoint there" in r.output, r.output


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    base, ck = stopped_checkpoint(tmp_path)
    r = CliRunner().invoke(
        app,
        [
            "check",
            str(BUILTIN / "amd-migration-round-trip.toml"),
            "--policy",
            "kvm-5.7",
            "--resume",
            str(ck),
        ],
    )
    assert r.exit_code == 2 and "another run" in r.output and "kvm-5.7" in r.output, r.output
    r = CliRunner().invoke(
        app,
        [
            "check",
            str(BUILTIN / "emulated-read-pv-flush.toml"),
            "--policy",
            "kvm-6.18",
            "--resume",
            str(ck),
        ],
    )
    assert r.exit_code == 2 and "another run" in r.output, r.output
    manifest = json.loads((ck / "manifest.json").read_text())
    manifest["version"] = 99
    (ck / "manifest.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(app, ["check", *base, "--resume", str(ck)])
    assert r.exit_code == 2 and "format version 99" in r.output, r.output
    r = CliRunner().invoke(app, ["check", *base, "--checkpoint", str(ck)])
    assert r.exit_code == 2 and "holds a checkpoint already" in r.output, r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "2", "--exact"], "--exact keeps full states"),
        (["--backend", "spark"], "give local or ray"),
        (["--ray-address", "auto"], "goes with --backend ray"),
        (["--checkpoint-every", "0", "--checkpoint", "x"], "--checkpoint-every 0"),
        (["--workers", "-1"], "--workers -1"),
        (["--hunt", "--workers", "2"], "--hunt does not go with"),
    ],
)
def test_bad_scale_options_are_input_errors(args: list[str], message: str) -> None:
    r = CliRunner().invoke(app, ["check", PV, "--policy", "kvm-6.18", *args])
    assert r.exit_code == 2 and message in r.output, r.output


def test_checkpoint_needs_one_run(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["check", PV, "--checkpoint", str(tmp_path / "ck")])
    assert r.exit_code == 2 and "go with one run" in r.output, r.output


def test_backend_ray_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    r = CliRunner().invoke(
        app,
        [
            "check",
            str(BUILTIN / "emulated-read-pv-flush.toml"),
            "--policy",
            "kvm-6.18",
            "--backend",
            "ray",
        ],
    )
    assert r.exit_code == 2, r.output
    assert "pip install 'kvmtlb[ray]'" in r.output
