"""The CLI contract of scenario-format.md ("CLI contract", "Verdicts and properties"):
`kvmtlb check` (JSON records, exit codes, --matrix, --policy NAME and PATH.py:Class, --exact),
`kvmtlb replay` and `kvmtlb policies`, and determinism (design.md; style rules 4 and 9).

Most runs go through typer's CliRunner in this process (the same `app` the `kvmtlb` script runs),
with `--jobs 1` where several jobs would otherwise start a process pool; a few run the installed
`kvmtlb` script in separate processes, for the exit codes of the real entry point, the process
pool, and determinism across interpreters with different hash seeds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from kvmtlb.cli import app
from kvmtlb.kvm import bugs, nested_bugs, versions
from kvmtlb.kvm.policy import registry

BUILTIN = Path(__file__).parent.parent / "kvmtlb" / "scenarios"
UPSTREAM = ["kvm-6.18", "kvm-5.8", "kvm-5.7"]
VERDICTS = {"safe", "deadlock", "violation"}
PROPERTIES = {"guest-transparency", "host-isolation", "dirty-logging", "vm-isolation"}
# The keys scenario-format.md requires of every --json record.
KEYS = {
    "scenario",
    "policy",
    "config",
    "verdict",
    "property",
    "expected",
    "trace",
    "states",
    "transitions",
    "depth",
    "seconds",
}
KVMTLB = Path(sys.executable).parent / "kvmtlb"


def scenario_path(name: str) -> str:
    return str(BUILTIN / f"{name}.toml")


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def records(result: Result) -> list[dict[str, Any]]:
    """Every stdout line of a --json run is one JSON object."""
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    out = []
    for ln in lines:
        rec = json.loads(ln)
        assert isinstance(rec, dict), ln
        out.append(rec)
    return out


def check_json(*args: str) -> tuple[int, list[dict[str, Any]]]:
    r = cli("check", *args, "--json")
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r.exit_code, records(r)


def run_kvmtlb(*args: str, seed: str = "0") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    return subprocess.run(
        [str(KVMTLB), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def assert_record(rec: dict[str, Any]) -> None:
    assert set(rec) >= KEYS, KEYS - set(rec)
    assert rec["verdict"] in VERDICTS
    if rec["verdict"] == "violation":
        assert rec["property"] in PROPERTIES
        assert rec["trace"], "a violation comes with its trace"
    else:
        assert rec["property"] is None
    if rec["verdict"] == "safe":
        assert rec["trace"] == []
    for n, step in enumerate(rec["trace"], 1):
        assert {"actor", "action", "detail"} <= set(step), step
        assert isinstance(step["actor"], str) and step["actor"]
        assert isinstance(step["action"], str) and step["action"]
        assert isinstance(step["detail"], str)
        assert step.get("step", n) == n
    assert isinstance(rec["config"], dict) and rec["config"]["vendor"] in ("intel", "amd")
    for key in ("states", "transitions", "depth"):
        assert isinstance(rec[key], int) and rec[key] >= 0
    assert rec["states"] >= 1
    assert isinstance(rec["seconds"], int | float) and rec["seconds"] >= 0


def without_time(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k != "seconds"}


# -- --json records -------------------------------------------------------------------------------
def test_json_one_record_per_scenario_and_policy() -> None:
    files = [scenario_path("stale-until-invlpg"), scenario_path("amd-pcid-noflush")]
    code, recs = check_json(*files, "--jobs", "1")
    assert code == 0
    assert [(r["scenario"], r["policy"]) for r in recs] == [
        (s, p) for s in ("stale-until-invlpg", "amd-pcid-noflush") for p in UPSTREAM
    ], "with no --policy, every upstream version, in registry order"
    for r in recs:
        assert_record(r)
        assert r["verdict"] == "safe" and r["expected"] == "safe"


def test_json_violation_record() -> None:
    code, [rec] = check_json(scenario_path("emulated-read-pv-flush"), "--policy", "kvm-5.8")
    assert code == 0, "the verdict equals the file's [expect]"
    assert_record(rec)
    assert rec["verdict"] == "violation" and rec["property"] == "guest-transparency"
    assert rec["expected"] == "violation:guest-transparency"
    assert rec["depth"] >= 1 and len(rec["trace"]) >= 1
    assert rec["config"]["pv_tlb_flush"] is True
    # Actors: a vCPU's guest thread (guestN), KVM on that vCPU (vcpuN), the host.
    actors = {s["actor"] for s in rec["trace"]}
    assert all(re.fullmatch(r"(guest|vcpu)[01]|host", a) for a in actors), actors
    assert {"guest0", "guest1", "host"} <= actors


def test_json_default_suite_is_the_builtin_scenarios() -> None:
    code, recs = check_json("--policy", "kvm-6.18", "--jobs", "1")
    assert code == 0
    names = sorted(p.stem for p in BUILTIN.glob("*.toml"))
    assert len(recs) == len(names)
    assert {r["policy"] for r in recs} == {"kvm-6.18"}
    for r in recs:
        assert_record(r)
        assert r["label"] == r["expected"]


def test_json_stdout_has_only_records_when_a_search_is_interrupted() -> None:
    r = cli(
        "check",
        scenario_path("zap-two-vcpus"),
        "--policy",
        "kvm-6.18",
        "--json",
        "--max-states",
        "50",
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert json.loads(lines[0])["states"] >= 50  # not a progress or "interrupted" line


# -- exit codes ----------------------------------------------------------------------------------
def test_exit_0_when_every_verdict_matches() -> None:
    r = cli(
        "check", scenario_path("ipi-shootdown-page"), scenario_path("pcide-clear"), "--jobs", "1"
    )
    assert r.exit_code == 0, r.stdout
    assert "as expected" in r.stdout


def test_exit_1_when_a_bug_is_caught_where_safe_is_expected() -> None:
    code, [rec] = check_json(
        scenario_path("pcide-clear"), "--policy", "bug-flush-tlb-guest-skips-invvpid"
    )
    assert code == 1
    assert rec["expected"] == "safe" and rec["verdict"] == "violation"


def test_exit_1_when_an_expected_violation_is_not_found(tmp_path: Path) -> None:
    text = (BUILTIN / "zap-race-access.toml").read_text()
    text = re.sub(r'"kvm-6.18" = "safe"', '"kvm-6.18" = "violation:host-isolation"', text)
    path = tmp_path / "wrong-expect.toml"
    path.write_text(text)
    r = cli("check", str(path), "--policy", "kvm-6.18")
    assert r.exit_code == 1
    assert "expected violation:host-isolation" in r.stdout


def test_exit_2_on_input_error_even_with_good_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[config]\nvendor = "via"\n')
    r = cli("check", scenario_path("stale-until-invlpg"), str(bad), "--json")
    assert r.exit_code == 2
    assert r.stdout.strip() == "", "no run starts when an input is bad"
    assert f"{bad}:3:" in r.stderr and "fix:" in r.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["check", scenario_path("stale-until-invlpg")], 0),
        (
            [
                "check",
                scenario_path("pcide-clear"),
                "--policy",
                "bug-flush-tlb-guest-skips-invvpid",
            ],
            1,
        ),
        (["check", "/nonexistent/scenario.toml"], 2),
        (["check", scenario_path("stale-until-invlpg"), "--policy", "kvm-0.1"], 2),
    ],
    ids=["match", "differs", "missing-file", "unknown-policy"],
)
def test_exit_codes_of_the_installed_script(args: list[str], code: int) -> None:
    p = run_kvmtlb(*args)
    assert p.returncode == code, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr


def test_unknown_policy_names_the_choices() -> None:
    r = cli("check", scenario_path("stale-until-invlpg"), "--policy", "kvm-0.1")
    assert r.exit_code == 2
    assert "unknown policy 'kvm-0.1'" in r.stderr and "kvm-6.18" in r.stderr


# -- --matrix ------------------------------------------------------------------------------------
def test_matrix_runs_other_configurations_without_comparing_them() -> None:
    # kvm-5.8 reports a vCPU preempted mid-emulation: a violation with the PV flush, which the
    # file expects; the other configurations differ (no PV flush: safe) but are not compared.
    code, recs = check_json(
        scenario_path("emulated-read-pv-flush"), "--policy", "kvm-5.8", "--matrix", "--jobs", "1"
    )
    assert code == 0
    own = [r for r in recs if r["expected"] is not None]
    others = [r for r in recs if r["expected"] is None]
    assert len(own) == 1 and own[0]["label"] == own[0]["expected"]
    assert len(others) == 15, "vendor x vpid/flush_by_asid x pcid x pv, minus the file's own"
    for r in recs:
        assert_record(r)
    keys = set()
    for r in others:
        c = r["config"]
        flag = c["vpid"] if c["vendor"] == "intel" else c["flush_by_asid"]
        keys.add((c["vendor"], flag, c["pcid"], c["pv_tlb_flush"]))
        assert r.get("config_label"), "matrix runs are labelled with their configuration"
    own_cfg = own[0]["config"]
    assert (
        own_cfg["vendor"],
        own_cfg["vpid"],
        own_cfg["pcid"],
        own_cfg["pv_tlb_flush"],
    ) not in keys
    assert len(keys) == 15
    assert {r["verdict"] for r in others} == {"safe", "violation"}
    assert all(r["verdict"] == "safe" for r in others if not r["config"]["pv_tlb_flush"])


def test_matrix_skips_configurations_the_ops_forbid() -> None:
    # mov_cr3 noflush needs CR4.PCIDE: only configurations with pcid = true are allowed.
    code, recs = check_json(
        scenario_path("pcid-switch-noflush"), "--policy", "kvm-6.18", "--matrix", "--jobs", "1"
    )
    assert code == 0
    assert len(recs) == 8
    assert all(r["config"]["pcid"] for r in recs)


def test_matrix_table_names_each_configuration() -> None:
    # The row label "[intel/tdp/...]" looks like rich markup; it must be printed, not swallowed.
    r = cli("check", scenario_path("pcid-switch-noflush"), "--policy", "kvm-6.18", "--matrix")
    assert r.exit_code == 0, r.stdout
    assert "pcid-switch-noflush [amd/tdp/flushbyasid/pcid/nopv]" in r.stdout
    assert "pcid-switch-noflush [intel/tdp/novpid/pcid/pv]" in r.stdout


def test_matrix_runs_in_a_process_pool() -> None:
    p = run_kvmtlb("check", scenario_path("ipi-shootdown-mm"), "--matrix", "--json", "--jobs", "2")
    assert p.returncode == 0, p.stderr
    recs = [json.loads(ln) for ln in p.stdout.splitlines() if ln.strip()]
    assert len(recs) == 3 * 16
    assert sum(r["expected"] is not None for r in recs) == 3


# -- --policy PATH.py:Class ----------------------------------------------------------------------
def policy_file(tmp_path: Path, body: str, name: str = "mypolicy.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


OK_POLICY = """
    from kvmtlb.kvm.versions import Kvm618


    class Same(Kvm618):
        \"\"\"kvm-6.18, with vmx_flush_tlb_guest overridden by an equivalent method.\"\"\"

        def vmx_flush_tlb_guest(self, k, vcpu):
            super().vmx_flush_tlb_guest(k, vcpu)


    class NoGuestFlush(Kvm618):
        summary = "vmx_flush_tlb_guest does nothing"

        def vmx_flush_tlb_guest(self, k, vcpu):
            k.note("vmx_flush_tlb_guest: nothing")
"""


def test_policy_by_name_and_by_path(tmp_path: Path) -> None:
    path = policy_file(tmp_path, OK_POLICY)
    code, recs = check_json(
        scenario_path("pcide-clear"),
        "--policy",
        "kvm-6.18",
        "--policy",
        f"{path}:Same",
        "--policy",
        f"{path}:NoGuestFlush",
        "--jobs",
        "1",
    )
    assert code == 1, "NoGuestFlush is caught where the file expects safe"
    by = {r["policy"]: r for r in recs}
    assert by["kvm-6.18"]["label"] == "safe"
    assert by[f"{path}:Same"]["label"] == "safe"
    assert by[f"{path}:Same"]["states"] == by["kvm-6.18"]["states"]
    assert by[f"{path}:NoGuestFlush"]["label"] == "violation:guest-transparency"
    assert by[f"{path}:NoGuestFlush"]["expected"] == "safe"


def test_user_policy_in_worker_processes(tmp_path: Path) -> None:
    path = policy_file(tmp_path, OK_POLICY)
    p = run_kvmtlb(
        "check",
        scenario_path("pcide-clear"),
        scenario_path("stale-until-invlpg"),
        "--policy",
        f"{path}:NoGuestFlush",
        "--json",
        "--jobs",
        "2",
    )
    assert p.returncode == 1, p.stderr
    recs = [json.loads(ln) for ln in p.stdout.splitlines() if ln.strip()]
    assert [r["label"] for r in recs] == ["violation:guest-transparency", "safe"]


POLICY_ERRORS = [
    pytest.param(None, "X", r"no such file", id="file-missing"),
    pytest.param("import kvmtlb_no_such_module\n", "X", r"ModuleNotFoundError", id="import-error"),
    pytest.param("raise RuntimeError('boom')\n", "X", r"RuntimeError: boom", id="raises-on-import"),
    pytest.param("def f(:\n    pass\n", "X", r":1: syntax error", id="syntax-error"),
    pytest.param(OK_POLICY, "Missing", r"defines no class 'Missing'.*Same", id="class-missing"),
    pytest.param("class X:\n    pass\n", "X", r"X is not a policy", id="not-a-subclass"),
    pytest.param("X = 5\n", "X", r"X is not a policy", id="not-a-class"),
    pytest.param(
        """
        from kvmtlb.kvm.versions import Kvm618

        class X(Kvm618):
            def vmx_flush_tlb_guest(self, vcpu):
                pass
        """,
        "X",
        r"X\.vmx_flush_tlb_guest\(self, vcpu\) has the wrong signature.*"
        r"vmx_flush_tlb_guest\(self, k, vcpu\)",
        id="wrong-signature",
    ),
    pytest.param(
        """
        from kvmtlb.kvm.versions import Kvm618

        class X(Kvm618):
            STEPS = {**Kvm618.STEPS, "vcpu_enter_guest:extra": "no_such_method"}
        """,
        "X",
        r"STEPS maps 'vcpu_enter_guest:extra' to 'no_such_method'",
        id="steps-without-method",
    ),
]


@pytest.mark.parametrize(("body", "cls", "message"), POLICY_ERRORS)
def test_policy_file_errors(tmp_path: Path, body: str | None, cls: str, message: str) -> None:
    path = tmp_path / "badpolicy.py"
    if body is not None:
        path.write_text(textwrap.dedent(body))
    r = cli("check", scenario_path("stale-until-invlpg"), "--policy", f"{path}:{cls}")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {path}"), r.stderr
    assert re.search(message, r.stderr, re.S), r.stderr


def test_policy_file_must_be_python(tmp_path: Path) -> None:
    path = tmp_path / "policy.txt"
    path.write_text("")
    r = cli("check", scenario_path("stale-until-invlpg"), "--policy", f"{path}:X")
    assert r.exit_code == 2
    assert ".py" in r.stderr


def test_not_a_policy_message_names_the_class(tmp_path: Path) -> None:
    path = policy_file(tmp_path, "class Mine:\n    pass\n", "notpolicy.py")
    r = cli("check", scenario_path("stale-until-invlpg"), "--policy", f"{path}:Mine")
    assert r.exit_code == 2
    assert "class Mine(Kvm618)" in r.stderr


def test_policy_step_that_raises_is_exit_2_with_its_path(tmp_path: Path) -> None:
    path = policy_file(
        tmp_path,
        """
        from kvmtlb.kvm.versions import Kvm618

        class Crash(Kvm618):
            def vmx_flush_tlb_guest(self, k, vcpu):
                raise RuntimeError("policy bug")
        """,
        "crash.py",
    )
    r = cli("check", scenario_path("pcide-clear"), "--policy", f"{path}:Crash", "--json")
    assert r.exit_code == 2
    [rec] = records(r)
    assert rec["verdict"] == "error"
    assert "RuntimeError: policy bug" in rec["detail"]
    assert "pcide-clear" in r.stderr and "policy bug" in r.stderr


# -- replay ---------------------------------------------------------------------------------------
def saved(tmp_path: Path, *args: str) -> tuple[Path, list[dict[str, Any]]]:
    _, recs = check_json(*args)
    path = tmp_path / "trace.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path, recs


@pytest.mark.parametrize(
    ("scenario", "policy"),
    [
        ("pcide-clear", "bug-flush-tlb-guest-skips-invvpid"),
        ("wrprotect-race-write", "bug-dirty-log-no-flush"),
        ("zap-while-away", "bug-vmx-no-migration-flush"),
        ("amd-migration-round-trip", "bug-svm-keep-asid-on-migration"),
        ("ipi-shootdown-page", "kvm-6.18"),
        ("emulated-read-pv-flush", "kvm-5.8"),
    ],
)
def test_replay_reports_the_same_outcome(tmp_path: Path, scenario: str, policy: str) -> None:
    path, [rec] = saved(tmp_path, scenario_path(scenario), "--policy", policy)
    r = cli("replay", str(path))
    assert "replayed: the same outcome" in r.stdout, r.stdout
    assert r.exit_code == 0
    for step in rec["trace"]:
        assert step["action"] in r.stdout


def test_replay_of_a_matrix_record(tmp_path: Path) -> None:
    _, recs = check_json(
        scenario_path("zap-race-access"),
        "--policy",
        "bug-remote-flush-no-wait",
        "--matrix",
        "--jobs",
        "1",
    )
    amd = next(r for r in recs if r["expected"] is None and r["config"]["vendor"] == "amd")
    assert amd["label"] == "violation:host-isolation"
    path = tmp_path / "amd.json"
    path.write_text(json.dumps(amd) + "\n")
    r = cli("replay", str(path))
    assert r.exit_code == 0 and "replayed: the same outcome" in r.stdout


def test_replay_of_a_different_outcome_is_exit_1(tmp_path: Path) -> None:
    path, [rec] = saved(
        tmp_path, scenario_path("pcide-clear"), "--policy", "bug-flush-tlb-guest-skips-invvpid"
    )
    rec["property"] = "host-isolation"
    path.write_text(json.dumps(rec) + "\n")
    r = cli("replay", str(path))
    assert r.exit_code == 1
    assert "different outcome" in r.stdout


GARBAGE = [
    pytest.param("this is not json\n", id="not-json"),
    pytest.param('{"scenario": "x"}\n', id="missing-keys"),
    pytest.param("[1, 2]\n", id="json-list"),
    pytest.param(None, id="file-missing"),
    pytest.param("5\n", id="json-number"),
    pytest.param("", id="empty-file"),
]


@pytest.mark.parametrize("text", GARBAGE)
def test_replay_of_garbage_is_exit_2(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "garbage.json"
    if text is not None:
        path.write_text(text)
    r = cli("replay", str(path))
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.exception)
    assert str(path) in r.stderr


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("path", [99, 99]),
        ("file", "/nonexistent/scenario.toml"),
        ("policy_spec", "kvm-0.1"),
        ("path", "abc"),
    ],
    ids=["path-mismatch", "file-missing", "policy-unknown", "path-not-a-list"],
)
def test_replay_of_a_corrupted_record_is_exit_2(tmp_path: Path, field: str, value: object) -> None:
    path, [rec] = saved(tmp_path, scenario_path("ipi-shootdown-page"), "--policy", "kvm-6.18")
    rec[field] = value
    path.write_text(json.dumps(rec) + "\n")
    r = cli("replay", str(path))
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.exception)
    assert str(path) in r.stderr


# -- policies -------------------------------------------------------------------------------------
def test_policies_json() -> None:
    r = cli("policies", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    for row in rows:
        assert {"name", "kind", "based_on", "fix", "cve", "summary"} <= set(row)
        assert row["summary"] and "\n" not in row["summary"]
    upstream = [row for row in rows if row["kind"] == "upstream"]
    assert [row["name"] for row in upstream] == UPSTREAM
    assert all(row["fix"] is None and row["cve"] is None for row in upstream)
    bug_rows = [row for row in rows if row["kind"] == "bug"]
    assert len(bug_rows) == 54
    assert {row["kind"] for row in rows} == {"upstream", "bug"}
    for row in bug_rows:
        cls = registry()[row["name"]]
        # (hugepage_bugs, pml_bugs and nested_npt_bugs by name: importing them here would change
        # the order)
        assert cls.__module__ in (
            bugs.__name__,
            nested_bugs.__name__,
            "kvmtlb.kvm.hugepage_bugs",
            "kvmtlb.kvm.pml_bugs",
            "kvmtlb.kvm.nested_npt_bugs",
        )
        assert row["based_on"] in UPSTREAM
        assert row["fix"] == (cls.fix or None)
        assert row["cve"] == (cls.cve or None)
        if row["fix"] is not None:
            assert re.fullmatch(r"[0-9a-f]{12}", row["fix"]), row
        if row["cve"] is not None:
            assert re.fullmatch(r"CVE-\d{4}-\d{4,}", row["cve"]), row
            assert row["fix"] is not None, "a known bug names the commit that fixed it"
    assert {row["cve"] for row in bug_rows} >= {"CVE-2019-3016", "CVE-2022-39189"}


def test_policies_table() -> None:
    r = cli("policies")
    assert r.exit_code == 0
    for name in [*UPSTREAM, "bug-dirty-log-no-flush"]:
        assert name in r.stdout
    assert versions.Kvm618.name == "kvm-6.18"


# -- --exact ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scenario", "policy"),
    [
        ("zap-race-access", "kvm-6.18"),
        ("amd-zap-race-access", "kvm-5.7"),
        ("pcide-clear", "bug-flush-tlb-guest-skips-invvpid"),
        ("zap-while-away", "bug-flush-tlb-all-invvpid"),
        ("emulated-read-pv-flush", "kvm-5.8"),
    ],
)
def test_exact_agrees_with_fingerprints(scenario: str, policy: str) -> None:
    _, [fp] = check_json(scenario_path(scenario), "--policy", policy)
    _, [ex] = check_json(scenario_path(scenario), "--policy", policy, "--exact")
    assert ex["exact"] is True and fp["exact"] is False
    assert ex["collision_bound"] == 0.0
    for key in ("verdict", "property", "states", "transitions", "depth"):
        assert ex[key] == fp[key], key
    assert ex["trace"] == fp["trace"]


# -- determinism ---------------------------------------------------------------------------------
DETERMINISM = [
    ("zap-while-away", "bug-vmx-no-migration-flush"),
    ("time-sharing-shootdown", "kvm-5.7"),
    ("amd-pv-flush-no-flushbyasid", "bug-svm-flush-keeps-asid"),
]


@pytest.mark.parametrize(("scenario", "policy"), DETERMINISM)
def test_deterministic_in_one_process(scenario: str, policy: str) -> None:
    _, [a] = check_json(scenario_path(scenario), "--policy", policy)
    _, [b] = check_json(scenario_path(scenario), "--policy", policy)
    assert without_time(a) == without_time(b)


def test_deterministic_across_processes_and_hash_seeds() -> None:
    args = ["check", "--json", "--jobs", "2"]
    files = [scenario_path(s) for s, _ in DETERMINISM]
    pols = sorted({p for _, p in DETERMINISM})
    args += files + [a for p in pols for a in ("--policy", p)]
    runs = []
    for seed in ("1", "4242"):
        p = run_kvmtlb(*args, seed=seed)
        assert p.returncode in (0, 1), p.stderr
        runs.append([without_time(json.loads(ln)) for ln in p.stdout.splitlines() if ln.strip()])
    assert len(runs[0]) == len(files) * len(pols)
    assert runs[0] == runs[1]
    _, here = check_json(*files, *[a for p in pols for a in ("--policy", p)], "--jobs", "1")
    assert [without_time(r) for r in here] == runs[0]


def test_por_gives_the_same_verdicts_states_and_trace_lengths() -> None:
    """`check --por` (sleep sets) against the plain search, on a violation and a safe run: the
    same verdict, states and trace length, no more transitions; `--no-por` is the plain search."""
    files = [scenario_path("emulated-read-pv-flush"), scenario_path("pv-flush-preempted-twice")]
    args = [*files, "--policy", "kvm-5.8", "--jobs", "1"]
    code0, plain = check_json(*args)
    code1, reduced = check_json(*args, "--por")
    code2, off = check_json(*args, "--no-por")
    assert code0 == code1 == code2 == 0
    key = [(r["verdict"], r["property"], r["states"], len(r["trace"])) for r in plain]
    assert key == [(r["verdict"], r["property"], r["states"], len(r["trace"])) for r in reduced]
    assert key == [(r["verdict"], r["property"], r["states"], len(r["trace"])) for r in off]
    assert [r["transitions"] for r in off] == [r["transitions"] for r in plain]
    assert all(a["transitions"] >= b["transitions"] for a, b in zip(plain, reduced, strict=True))
    assert any(a["transitions"] > b["transitions"] for a, b in zip(plain, reduced, strict=True))


def test_suites() -> None:
    """--suite extended runs kvmtlb/scenarios/extended (not in the default run); names reach
    both; --suite goes without files and takes one of three names."""
    from kvmtlb.check.inputs import builtin_names, builtin_scenarios

    default = {p.stem for p in builtin_scenarios()}
    extended = {p.stem for p in builtin_scenarios("extended")}
    assert "nested-vmxoff-vpid-reuse" in extended and not extended & default
    assert {p.stem for p in builtin_scenarios("all")} == default | extended
    assert set(builtin_names()) == default | extended
    r = CliRunner().invoke(app, ["check", "--suite", "extended", "--policy", "kvm-5.8", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert {row["scenario"] for row in rows} == extended
    assert all(row["label"] == row["expected"] for row in rows)
    r = CliRunner().invoke(app, ["check", "zap-race-access", "--suite", "all"])
    assert r.exit_code == 2 and "--suite goes without" in r.output
    r = CliRunner().invoke(app, ["check", "--suite", "quick"])
    assert r.exit_code == 2 and "give one of default, extended, all" in r.output
