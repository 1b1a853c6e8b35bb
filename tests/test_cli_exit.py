"""How every command ends (kvmtlb/jobs.py, README.md "Exit codes"): 0 as expected, 1 a verdict
other than expected, 2 an input error, 3 stopped by Ctrl-C or a limit, 4 an internal error; the
limits (--max-states, --timeout, --max-memory), progress lines, Ctrl-C with worker processes,
error records, user-policy errors, --version and the help text.

Runs go through typer's CliRunner in this process with one job (or --jobs 1), except the Ctrl-C
tests, which need a real process to signal. No test measures speed: the Ctrl-C tests only bound
how long a stop may take, generously.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from kvmtlb.check.runner import RECORD_KEYS
from kvmtlb.cli import app

BUILTIN = Path(__file__).parent.parent / "kvmtlb" / "scenarios"
KVMTLB = Path(sys.executable).parent / "kvmtlb"
BIG = str(BUILTIN / "pv-flush-preempted-target.toml")  # about 49k states: seconds, not minutes
SMALL = str(BUILTIN / "pcide-clear.toml")


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    r = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def json_records(r: Result | subprocess.CompletedProcess[str] | str) -> list[dict[str, Any]]:
    text = r if isinstance(r, str) else r.stdout
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def policy_file(tmp_path: Path, body: str, name: str = "pol.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# -- 3: stopped by a limit ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--max-states", "200", "max-states"),
        ("--timeout", "0.2", "timeout"),
        ("--max-memory", "1", "max-memory"),
    ],
)
def test_a_limit_stops_the_search_with_exit_3(option: str, value: str, reason: str) -> None:
    r = cli("check", BIG, "--policy", "kvm-6.18", option, value, "--json")
    assert r.exit_code == 3, (r.stdout, r.stderr)
    [rec] = json_records(r)
    assert rec["verdict"] == "stopped" and rec["stopped"] == reason
    assert rec["label"] == f"stopped:{reason}"
    assert rec["states"] > 0 and rec["property"] is None and rec["trace"] == []
    assert set(rec) == set(RECORD_KEYS)
    assert f"1 stopped ({reason})" in r.stderr


def test_a_stopped_run_is_shown_in_the_matrix_with_its_partial_counts() -> None:
    r = cli("check", BIG, "--policy", "kvm-6.18", "--max-states", "200")
    assert r.exit_code == 3
    assert "stopped:max-states" in r.stdout and "nothing is proven" in r.stdout
    assert "1 stopped" in r.stdout


def test_a_violation_found_before_a_stop_still_exits_3() -> None:
    """3 outranks 1: a run that was stopped leaves the verdicts incomplete."""
    r = cli(
        "check",
        SMALL,
        BIG,
        "--policy",
        "bug-flush-tlb-guest-skips-invvpid",
        "--max-states",
        "200",
        "--jobs",
        "1",
        "--json",
    )
    labels = [rec["label"] for rec in json_records(r)]
    assert labels == ["violation:guest-transparency", "stopped:max-states"]
    assert r.exit_code == 3


@pytest.mark.parametrize("option", ["--max-states", "--jobs", "--timeout", "--max-memory"])
def test_negative_limits_are_refused(option: str) -> None:
    r = cli("check", SMALL, option, "-1")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {option} -1: give a number >= 0")
    assert r.stdout == ""


# -- progress -------------------------------------------------------------------------------------
def test_progress_lines_on_stderr_when_not_a_terminal() -> None:
    r = cli(
        "check",
        BIG,
        "--policy",
        "kvm-6.18",
        "--timeout",
        "0.8",
        "--json",
        env={"KVMTLB_PROGRESS_SECONDS": "0"},
    )
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("progress:")]
    assert lines, r.stderr
    assert re.search(r"[\d,]+ states, [\d,]+ states/s, depth \d+, [\d,]+ MB", lines[-1])
    [rec] = json_records(r)  # stdout holds the record and nothing else
    assert rec["stopped"] == "timeout"


# -- 4: internal errors ---------------------------------------------------------------------------
def test_a_builtin_policy_that_raises_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmtlb.kvm.versions import Kvm618

    def broken(self: Any, k: Any, vcpu: Any) -> None:
        raise ZeroDivisionError("model bug")

    monkeypatch.setattr(Kvm618, "vmx_flush_tlb_guest", broken)
    r = cli("check", SMALL, "--policy", "kvm-6.18", "--json")
    assert r.exit_code == 4, (r.stdout, r.stderr)
    [rec] = json_records(r)
    assert rec["verdict"] == "error" and rec["cause"] == "internal"
    assert set(rec) == set(RECORD_KEYS)
    path = Path(rec["traceback_file"])
    assert "ZeroDivisionError: model bug" in path.read_text()
    assert "Traceback" in path.read_text()
    assert f"traceback is in {path}" in r.stderr
    assert "bug in kvmtlb" in r.stderr
    path.unlink()


def test_an_exception_escaping_a_command_is_exit_4_with_a_traceback_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kvmtlb.check import report

    def broken(*_a: object) -> None:
        raise RuntimeError("report bug")

    monkeypatch.setattr(report, "matrix", broken)
    r = cli("check", SMALL, "--policy", "kvm-6.18")
    assert r.exit_code == 4
    m = re.search(r"traceback is in (\S+?);", r.stderr)
    assert m, r.stderr
    assert "RuntimeError: report bug" in Path(m.group(1)).read_text()
    Path(m.group(1)).unlink()


def test_internal_errors_outrank_input_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmtlb.kvm.versions import Kvm618

    def broken(self: Any, k: Any, vcpu: Any) -> None:
        raise ZeroDivisionError("model bug")

    monkeypatch.setattr(Kvm618, "vmx_flush_tlb_guest", broken)
    r = cli("check", SMALL, BIG, "--policy", "kvm-6.18", "--max-states", "100", "--jobs", "1")
    assert r.exit_code == 4
    for m in re.finditer(r"traceback is in (\S+?);", r.stderr):
        Path(m.group(1)).unlink()


# -- 2: a user policy's errors --------------------------------------------------------------------
RAISES = """
    from kvmtlb.kvm.versions import Kvm618


    class Crash(Kvm618):
        def vmx_flush_tlb_guest(self, k, vcpu):
            raise RuntimeError("policy bug")
"""


def test_a_user_policy_that_raises_is_exit_2_naming_its_line(tmp_path: Path) -> None:
    path = policy_file(tmp_path, RAISES)
    r = cli("check", SMALL, "--policy", f"{path}:Crash", "--json")
    assert r.exit_code == 2
    [rec] = json_records(r)
    assert rec["verdict"] == "error" and rec["cause"] == "policy"
    assert rec["traceback_file"] is None
    assert set(rec) == set(RECORD_KEYS)
    assert f"{path}:7 in vmx_flush_tlb_guest" in r.stderr


BAD_ATTRIBUTES = [
    pytest.param("STEPS = None", r":6: Bad\.STEPS is None, not a dict", id="steps-none"),
    pytest.param("STEPS = {1: 'x'}", r":6: Bad\.STEPS maps 1 to 'x'", id="steps-not-str"),
    pytest.param("name = 5", r":6: Bad\.name is 5, not a string", id="name-int"),
    pytest.param("summary = None", r":6: Bad\.summary is None", id="summary-none"),
    pytest.param("IRQS_OFF = ['x']", r":6: Bad\.IRQS_OFF is \['x'\]", id="irqs-off-list"),
]


@pytest.mark.parametrize(("line", "message"), BAD_ATTRIBUTES)
def test_ill_typed_policy_attributes_are_input_errors(
    tmp_path: Path, line: str, message: str
) -> None:
    path = policy_file(
        tmp_path,
        f"""
        from kvmtlb.kvm.versions import Kvm618


        class Bad(Kvm618):
            {line}
        """,
    )
    r = cli("check", SMALL, "--policy", f"{path}:Bad")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"error: {path}"), r.stderr
    assert re.search(message, r.stderr), r.stderr


@pytest.mark.parametrize(
    ("value", "what"),
    [("('x',)", r"frame = \('x',\)"), ("[1]", r"frame = \[1\]"), ("None", "frame = None")],
)
def test_a_policy_that_stores_a_non_int_frame_is_reported_at_its_method(
    tmp_path: Path, value: str, what: str
) -> None:
    path = policy_file(
        tmp_path,
        f"""
        from kvmtlb.kvm.versions import Kvm618


        class BadFrame(Kvm618):
            def record_steal_time(self, k, vcpu):
                super().record_steal_time(k, vcpu)
                vcpu.frame = {value}
        """,
    )
    r = cli(
        "check",
        str(BUILTIN / "pv-flush-preempted-target.toml"),
        "--policy",
        f"{path}:BadFrame",
        "--json",
    )
    assert r.exit_code == 2, (r.stdout, r.stderr)
    [rec] = json_records(r)
    assert rec["cause"] == "policy"
    assert f"{path}:6: BadFrame.record_steal_time left vcpu" in rec["message"]
    assert re.search(what, rec["message"])
    assert "tuple of ints" in rec["message"] or "immutable" in rec["message"]


def test_a_policy_that_raises_while_booting_is_exit_2(tmp_path: Path) -> None:
    path = policy_file(
        tmp_path,
        """
        from kvmtlb.kvm.versions import Kvm618


        class NoBoot(Kvm618):
            def vmx_vcpu_create(self, k, vcpu):
                raise ValueError("no boot")
        """,
    )
    r = cli("check", SMALL, "--policy", f"{path}:NoBoot", "--json")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    [rec] = json_records(r)
    assert set(rec) == set(RECORD_KEYS)
    assert rec["verdict"] == "error" and rec["cause"] == "policy"
    assert isinstance(rec["config"], dict) and rec["config"]["vendor"] == "intel"
    assert rec["expected"] == "safe" and "no boot" in rec["message"]


SAME_NAME = """
    from kvmtlb.kvm.versions import Kvm618


    class Mine(Kvm618):
        name = "mine"
"""


def test_two_policies_with_one_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = policy_file(tmp_path / "a", SAME_NAME)
    b = policy_file(tmp_path / "b", SAME_NAME)
    r = cli("check", SMALL, "--policy", f"{a}:Mine", "--policy", f"{b}:Mine")
    assert r.exit_code == 2
    assert "are both named 'mine'" in r.stderr
    assert r.stdout == ""


def test_policies_from_two_files_keep_their_own_cells(tmp_path: Path) -> None:
    """Classes of one name in two files are two columns, each with its own verdict; the
    PATH.py:Class label is printed as written (rich would turn ':A' into an emoji)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    same = "from kvmtlb.kvm.versions import Kvm618\n\n\nclass A(Kvm618):\n    pass\n"
    skip = same + "\n    def vmx_flush_tlb_guest(self, k, vcpu):\n        pass\n"
    a = policy_file(tmp_path / "a", same)
    b = policy_file(tmp_path / "b", skip)
    r = cli("check", SMALL, "--policy", f"{a}:A", "--policy", f"{b}:A", "--jobs", "1", "--json")
    by = {rec["policy"]: rec["label"] for rec in json_records(r)}
    assert by == {f"{a}:A": "safe", f"{b}:A": "violation:guest-transparency"}
    r = cli("check", SMALL, "--policy", f"{a}:A", "--policy", f"{b}:A", "--jobs", "1")
    assert f"pcide-clear / {b}:A: violation:guest-transparency" in r.stdout


# -- check --json: every record has the same keys --------------------------------------------------
def test_every_record_has_the_same_keys() -> None:
    r = cli(
        "check",
        SMALL,
        str(BUILTIN / "emulated-read-pv-flush.toml"),
        "--policy",
        "kvm-5.8",
        "--matrix",
        "--jobs",
        "1",
        "--json",
    )
    recs = json_records(r)
    assert len(recs) > 2
    for rec in recs:
        assert set(rec) == set(RECORD_KEYS)
        assert Path(rec["file"]).is_absolute()


# -- 3: Ctrl-C ------------------------------------------------------------------------------------
@pytest.mark.parametrize("jobs", ["2", "1"])
def test_ctrl_c_stops_within_seconds_and_prints_what_finished(jobs: str) -> None:
    env = {**os.environ, "KVMTLB_PROGRESS_SECONDS": "0"}
    p = subprocess.Popen(
        [str(KVMTLB), "check", "--json", "--jobs", jobs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    try:
        assert p.stderr is not None
        first = p.stderr.readline()  # a run is in progress
        assert first.startswith("progress:"), first
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
        out, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 3, err
    assert took < 15, took  # the issue asks for 2 s; this bound only catches a hang
    assert "Traceback" not in err
    recs = json_records(out)
    total = len(list(BUILTIN.glob("*.toml"))) * 3
    assert 1 <= len(recs) < total
    assert {r["verdict"] for r in recs} <= {"safe", "violation", "deadlock", "stopped"}
    assert "interrupted by the user" in err and "not started" in err


def test_cost_ctrl_c_stops_and_reports_what_finished() -> None:
    env = {**os.environ, "KVMTLB_PROGRESS_SECONDS": "0"}
    p = subprocess.Popen(
        [str(KVMTLB), "cost", "--json", "--jobs", "2", "--accesses", "20000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert p.stderr is not None
        first = p.stderr.readline()
        assert first.startswith("progress:"), first
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 3, err
    assert "Traceback" not in err
    assert "interrupted by the user" in err
    for rec in json_records(out):
        assert "counts" in rec


# -- cost -----------------------------------------------------------------------------------------
def test_cost_plot_into_a_missing_directory_is_refused_before_running(tmp_path: Path) -> None:
    r = cli("cost", "pv-flush-heavy", "--plot", str(tmp_path / "nope" / "c.svg"))
    assert r.exit_code == 2
    assert "does not exist" in r.stderr and r.stdout == ""


def test_cost_negative_jobs_is_refused() -> None:
    r = cli("cost", "pv-flush-heavy", "--jobs", "-2")
    assert r.exit_code == 2 and "--jobs -2" in r.stderr


def test_cost_builtin_policy_that_raises_is_exit_4(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmtlb.kvm.versions import Kvm618

    def broken(self: Any, k: Any, vcpu: Any) -> None:
        raise ZeroDivisionError("model bug")

    monkeypatch.setattr(Kvm618, "vmx_vcpu_create", broken)
    r = cli("cost", "pv-flush-heavy", "--policy", "kvm-6.18", "--accesses", "500", "--jobs", "1")
    assert r.exit_code == 4, (r.stdout, r.stderr)
    paths = re.findall(r"traceback is in (\S+?);", r.stderr)
    assert paths
    for p in set(paths):
        assert "ZeroDivisionError" in Path(p).read_text()
        Path(p).unlink()


# -- --version and help ---------------------------------------------------------------------------
def test_version() -> None:
    from importlib.metadata import version

    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"kvmtlb {version('kvmtlb')}"


@pytest.mark.parametrize("command", [[], ["check"], ["replay"], ["cost"], ["rules"], ["policies"]])
def test_help_has_no_type_labels(command: list[str]) -> None:
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0
    assert not re.search(r"<(bool|int|float|str|path|list\[[^\]]*\])>", r.stdout), r.stdout
    assert "Exit codes:" in r.stdout
    if command == ["check"]:
        for label in ("FILE", "NAME|PATH.py:Class", " N ", "SECONDS", "MB"):
            assert label in r.stdout, label


# -- the README says what the tool does ------------------------------------------------------------
README = Path(__file__).parent.parent / "README.md"


def test_readme_exit_codes_are_the_tools() -> None:
    from kvmtlb import jobs

    text = README.read_text().split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d) \| (.*)$", text, re.M)}
    assert sorted(rows) == [
        jobs.EXIT_OK,
        jobs.EXIT_DIFFERS,
        jobs.EXIT_INPUT,
        jobs.EXIT_STOPPED,
        jobs.EXIT_INTERNAL,
    ]
    assert "stopped" in rows[jobs.EXIT_STOPPED] and "traceback" in rows[jobs.EXIT_INTERNAL]


def test_readme_zap_while_away_trace_is_what_check_prints() -> None:
    text = README.read_text()
    assert "with a 17-step trace" in text and "at step 15" in text and "step 17" in text
    r = cli(
        "check",
        str(BUILTIN / "zap-while-away.toml"),
        "--policy",
        "bug-vmx-migration-flush-guest-only",
        "--json",
    )
    [rec] = json_records(r)
    assert rec["label"] == "violation:host-isolation"
    assert len(rec["trace"]) == 17
    step15 = rec["trace"][14]["detail"]
    assert "INVVPID single-context" in step15
    assert "[intel.invvpid.single, intel.invvpid.no-guest-physical]" in step15
    assert "KVM_REQ_TLB_FLUSH_GUEST" in step15
    assert "VMRESUME" in rec["trace"][16]["detail"]
    assert "0x80000" in rec["detail"]
