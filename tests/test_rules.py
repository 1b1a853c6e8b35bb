"""The rule registry: stable IDs with sections, used by the code, printed by `kvmtlb rules`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from kvmtlb.cli import app
from kvmtlb.hw.rules import all_rules, rule

PKG = Path(__file__).parent.parent / "kvmtlb"
ID = re.compile(r'"((?:intel|amd)\.[a-z0-9.-]+)"')


def test_at_least_40_intel_rules_each_with_sections() -> None:
    intel = all_rules("intel")
    assert len(intel) >= 40
    for r in intel:
        assert r.section and r.section_current and r.summary, r.id
        assert r.section.startswith(("§", "Vol.")), r.id


def test_every_rule_id_in_the_code_is_registered() -> None:
    known = {r.id for r in all_rules()}
    for path in PKG.rglob("*.py"):
        for m in ID.finditer(path.read_text()):
            if path.name == "rules.py":
                continue
            assert m.group(1) in known, f"{path.name} cites unregistered rule {m.group(1)}"


def test_every_rule_is_used_by_the_model() -> None:
    """A rule counts as implemented only where the hardware model's code names it (a test or
    another layer citing it does not implement it)."""
    hw = "\n".join(p.read_text() for p in (PKG / "hw").rglob("*.py") if p.name != "rules.py")
    missing = [r.id for r in all_rules() if r.id not in hw]
    assert not missing, f"rules the model's code does not use: {missing}"


def test_rules_json_schema() -> None:
    result = CliRunner().invoke(app, ["rules", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"id", "vendor", "section", "summary"} <= set(data[0])
    assert len({d["id"] for d in data}) == len(data)
    assert rule(data[0]["id"]).summary == data[0]["summary"]


def test_rules_table_and_bad_vendor() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["rules"]).exit_code == 0
    bad = runner.invoke(app, ["rules", "--vendor", "arm"])
    assert bad.exit_code == 2


def test_docs_rules_md_is_generated_from_the_registry() -> None:
    result = CliRunner().invoke(app, ["rules", "--markdown"])
    assert result.exit_code == 0
    doc = (Path(__file__).parent.parent / "docs" / "rules.md").read_text()
    assert doc == result.output, (
        "docs/rules.md is stale: run `kvmtlb rules --markdown > docs/rules.md`"
    )
