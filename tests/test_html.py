"""The HTML viewer without a browser: what the pages say (the explanation, the culprit step,
the decoded entries), that they are self-contained, and the --html options' input errors.
tests/test_html_browser.py loads the pages in Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.check import html
from kvmtlb.check.explorer import explore
from kvmtlb.check.runner import load_policy
from kvmtlb.cli import app
from kvmtlb.model.scenario import load
from kvmtlb.model.system import build

ROOT = Path(__file__).parent.parent
SCENARIOS = ROOT / "kvmtlb" / "scenarios"


def _trace(scenario: str, policy: str) -> tuple[html.Trace, html.Explanation]:
    system = build(load(str(SCENARIOS / f"{scenario}.toml")), load_policy(policy)())
    result = explore(system)
    assert result.verdict == "violation"
    trace = html.run_trace(system, result.path)
    return trace, html.explain(trace, str(result.prop), result.detail)


# (scenario, policy, culprit step, why): one per kind of culprit (docs/html-viewer.md)
CULPRITS = [
    ("zap-while-away", "bug-vmx-migration-flush-guest-only", 15, "INVVPID single-context"),
    ("zap-while-away", "bug-vmx-no-migration-flush", 17, "KVM entered vcpu0's guest"),
    ("zap-race-access", "bug-notifier-flush-at-range-end", 2, "became forbidden here"),
    ("wrprotect-then-zap", "bug-make-spte-no-dirty-log", 16, "last step that wrote them"),
    ("shadow-pv-flush-unsync", "kvm-5.8", 3, "KVM's shadow page table maps 0x1000"),
]


@pytest.mark.parametrize(("scenario", "policy", "step", "why"), CULPRITS)
def test_culprit(scenario: str, policy: str, step: int, why: str) -> None:
    trace, ex = _trace(scenario, policy)
    assert ex.culprit == step
    assert why in ex.culprit_why
    html.trace_page(trace, {"policy": policy, "verdict": "violation", "property": ex.prop})
    survived = [r for s in trace.steps for t in s.tables for r in t.rows if "survived" in r.marks]
    # only an invalidation that left the stale entry in place marks it "survived"
    assert len(survived) == (ex.culprit_kind == "invalidation")


def test_zap_while_away_explained() -> None:
    trace, ex = _trace("zap-while-away", "bug-vmx-migration-flush-guest-only")
    assert len(trace.steps) == 18
    assert ex.access == "vcpu0 read 0x1000 on pCPU0"
    assert ex.forbidden_since == 11  # the host frees 0x80000 (mm:unmap)
    root, born = ex.stale[0]
    assert (root.kind, root.address, root.hpa, born) == (
        "guest-physical",
        "GPA 0x10000",
        "0x80000",
        0,
    )
    assert [r.id for r in ex.culprit_rules] == [
        "intel.invvpid.single",
        "intel.invvpid.no-guest-physical",
    ]
    assert ex.native == ["0x1000 -> GPA 0x10000 [w--]"]
    # the culprit step removed four combined entries of VPID 1, each with its rules
    step = trace.steps[15]
    pcpu0 = step.tables[0]
    removed = [r for r in pcpu0.rows if r.status == "removed"]
    assert len(removed) == pcpu0.removed == 4
    assert all(r.kind.startswith("combined") and "VPID 1" in r.tags for r in removed)
    assert all("intel.invvpid.single" in [x.id for x in r.rules] for r in removed)
    assert [op.action for op in step.hw["pcpu0"]] == [
        "INVVPID single-context VPID 0x1 (vpid_sync_vcpu_single)"
    ]
    assert step.lanes["pcpu0"].text == "vcpu0 OUTSIDE_GUEST_MODE"


def test_stale_entries_are_minimal() -> None:
    """Each stale entry is needed: putting any one back brings the outcome back."""
    trace, ex = _trace("zap-while-away", "bug-vmx-migration-flush-guest-only")
    last = trace.worlds[-1].machine
    bits = [r.bit for r, _ in ex.stale]
    assert len(bits) == 2  # the guest-physical entry and the combined one refilled through it
    for keep in bits:
        others = sum(1 << b for b in bits if b != keep)
        outs = html._outcomes_without(last, 0, others, 0x1000, "read")
        assert any(getattr(o, "frame", 0) == 0x80000 for o in outs)


def test_page_is_self_contained(tmp_path: Path) -> None:
    trace, _ = _trace("zap-while-away", "bug-vmx-migration-flush-guest-only")
    rec = {
        "policy": "bug-vmx-migration-flush-guest-only",
        "property": "host-isolation",
        "verdict": "violation",
        "detail": "d",
    }
    page = html.trace_page(trace, rec)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert 'id="culprit-link" href="#step-15"' in page


def test_check_html_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "pages"
    target.write_text("")
    res = CliRunner().invoke(
        app, ["check", str(SCENARIOS / "zap-while-away.toml"), "--html", str(target)]
    )
    assert res.exit_code == 2
    assert "--html" in res.stderr and "directory" in res.stderr


def test_replay_and_cost_html_need_a_directory(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["check", str(SCENARIOS / "zap-while-away.toml"), "--policy", "kvm-6.18", "--json"],
    )
    (tmp_path / "t.json").write_text(res.stdout)
    missing = tmp_path / "no" / "page.html"
    res = runner.invoke(app, ["replay", str(tmp_path / "t.json"), "--html", str(missing)])
    assert res.exit_code == 2 and "--html" in res.stderr
    res = runner.invoke(app, ["cost", "pv-flush-heavy", "--html", str(missing)])
    assert res.exit_code == 2 and "--html" in res.stderr


def test_replay_html_pages_per_record(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["check", str(SCENARIOS / "zap-while-away.toml"), "--json",
         "--policy", "kvm-6.18", "--policy", "bug-vmx-migration-flush-guest-only"],
    )  # fmt: skip
    (tmp_path / "t.json").write_text(res.stdout)
    res = runner.invoke(
        app, ["replay", str(tmp_path / "t.json"), "--html", str(tmp_path / "r.html")]
    )
    assert res.exit_code == 0, res.output
    first = (tmp_path / "r-1.html").read_text()
    second = (tmp_path / "r-2.html").read_text()
    assert "KVM functions reached" in first  # kvm-6.18: safe, a summary page
    assert 'id="culprit-link"' in second
    recs = [json.loads(line) for line in (tmp_path / "t.json").read_text().splitlines()]
    assert [r["verdict"] for r in recs] == ["safe", "violation"]


def test_check_json_html_keeps_stdout_for_records(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        ["check", str(SCENARIOS / "zap-while-away.toml"), "--policy", "kvm-6.18", "--json",
         "--html", str(tmp_path / "pages")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["verdict"] for line in res.stdout.splitlines()] == ["safe"]
    assert "HTML: 1 page in" in res.stderr
    assert (tmp_path / "pages" / "zap-while-away--kvm-6.18.html").is_file()
