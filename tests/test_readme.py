"""The README's two set-up commands stay true, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", quick, re.S)


def test_two_setup_commands() -> None:
    cmds = commands()
    assert len(cmds) == 2
    assert all("\n" not in c for c in cmds)
    assert "pip install" in cmds[0] and cmds[0].split("&&")[-1].strip() == "kvmtlb check"
    assert "[test]" in cmds[1] and "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = commands()[1].split("&&", 2)[-1].strip()
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
