"""`kvmtlb replay` never runs code a trace file names, finds the scenario from another directory,
and refuses records it does not understand (exit 2); a different outcome is exit 1."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from kvmtlb.cli import app

BUILTIN = Path(__file__).parent.parent / "kvmtlb" / "scenarios"
SMALL = str(BUILTIN / "pcide-clear.toml")

# A policy file that leaves a mark when it is imported.
MARKING = """
    from pathlib import Path

    from kvmtlb.kvm.versions import Kvm618

    Path(__file__).with_name("imported").write_text("the trace ran my code")


    class NoGuestFlush(Kvm618):
        def vmx_flush_tlb_guest(self, k, vcpu):
            pass
"""


def cli(*args: str) -> Result:
    r = CliRunner().invoke(app, list(args))
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def save(tmp_path: Path, *args: str) -> tuple[Path, dict[str, Any]]:
    r = cli("check", *args, "--json")
    [rec] = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(rec) + "\n")
    return path, rec


def user_trace(tmp_path: Path) -> tuple[Path, Path]:
    pol = tmp_path / "mine.py"
    pol.write_text(textwrap.dedent(MARKING))
    trace, _ = save(tmp_path, SMALL, "--policy", f"{pol}:NoGuestFlush")
    (tmp_path / "imported").unlink()  # check imported it; replay must not
    return trace, pol


def test_replay_does_not_import_a_policy_file_the_trace_names(tmp_path: Path) -> None:
    trace, pol = user_trace(tmp_path)
    r = cli("replay", str(trace))
    assert r.exit_code == 2
    assert not (tmp_path / "imported").exists(), "replay ran code named by a data file"
    assert "never imports code" in r.stderr
    assert f"--policy {pol}:NoGuestFlush" in r.stderr


def test_replay_of_a_user_policy_named_again(tmp_path: Path) -> None:
    trace, pol = user_trace(tmp_path)
    r = cli("replay", str(trace), "--policy", f"{pol}:NoGuestFlush")
    assert r.exit_code == 0, r.stderr
    assert "replayed: the same outcome" in r.stdout


def test_replay_from_another_directory_with_a_relative_scenario_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trace shipped next to its scenario, with a relative `file`, replays from anywhere."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "s.toml").write_text(Path(SMALL).read_text())
    trace, rec = save(
        bundle, str(bundle / "s.toml"), "--policy", "bug-flush-tlb-guest-skips-invvpid"
    )
    assert Path(rec["file"]).is_absolute(), "check stores a path that works from anywhere"
    rec["file"] = "s.toml"
    trace.write_text(json.dumps(rec) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = cli("replay", os.path.relpath(trace, elsewhere))
    assert r.exit_code == 0, r.stderr
    assert "replayed: the same outcome" in r.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"surprise": 1}, "unknown keys 'surprise'"),
        ({"states": "many"}, "'states' is 'many', not int"),
        ({"exact": 1}, "'exact' is 1, not bool"),
        ({"property": 5}, "'property' is 5"),
        ({"config": {"vendor": "intel", "colour": "red"}}, "unknown key 'colour'"),
        ({"config": {"vendor": "intel", "pcid": "yes"}}, "config.pcid is 'yes'"),
        ({"config": {"vendor": "via"}}, "config.vendor"),
        ({"path": [0, True]}, "list of action indices"),
        ({"verdict": "stopped"}, "only a finished search"),
        ({"verdict": "error"}, "only a finished search"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_replay_refuses_unknown_or_ill_typed_keys(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    trace, rec = save(tmp_path, SMALL, "--policy", "kvm-6.18")
    rec.update(change)
    trace.write_text(json.dumps(rec) + "\n")
    r = cli("replay", str(trace))
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"error: {trace}: record 1:"), r.stderr
    assert message in r.stderr, r.stderr


def test_replay_of_a_different_outcome_is_exit_1(tmp_path: Path) -> None:
    trace, rec = save(tmp_path, SMALL, "--policy", "bug-flush-tlb-guest-skips-invvpid")
    rec["property"] = None
    trace.write_text(json.dumps(rec) + "\n")
    r = cli("replay", str(trace))
    assert r.exit_code == 1
    assert "different outcome" in r.stdout
