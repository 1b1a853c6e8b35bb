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


def test_the_readme_variant_is_caught(tmp_path: Path) -> None:
    """The README's example policy, run with the README's command, is caught as it says."""
    import json

    from typer.testing import CliRunner

    from kvmtlb.cli import app

    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n# my_policy.py\n(.*?)```", text, re.S)
    command = re.search(r"```sh\n(kvmtlb check \S+ --policy my_policy.py:\w+)\n```", text)
    assert code and command
    (tmp_path / "my_policy.py").write_text(code.group(1))
    args = command.group(1).split()[1:]
    args[args.index("--policy") + 1] = args[args.index("--policy") + 1].replace(
        "my_policy.py", str(tmp_path / "my_policy.py")
    )
    args[1] = str(ROOT / args[1])
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    rec = json.loads(result.stdout.splitlines()[0])
    assert rec["label"] == "violation:guest-transparency"
    assert "violation:guest-transparency" in text


def test_the_readme_counts_the_bug_zoo() -> None:
    from regen_golden import bug_policies

    said = re.search(r"^(\d+) policies reintroduce", (ROOT / "README.md").read_text(), re.M)
    assert said is not None and int(said.group(1)) == len(bug_policies())


def test_the_readme_counts_the_built_in_scenarios() -> None:
    text = (ROOT / "README.md").read_text()
    said = re.search(r"The (\d+) built-in scenarios of the default suite", text)
    slow = re.search(r"and (\d+) slower ones in `kvmtlb/scenarios/extended/`", text)
    assert said is not None and slow is not None
    assert int(said.group(1)) == len(list((ROOT / "kvmtlb" / "scenarios").glob("*.toml")))
    assert int(slow.group(1)) == len(
        list((ROOT / "kvmtlb" / "scenarios" / "extended").glob("*.toml"))
    )
