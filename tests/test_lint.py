"""`kvmtlb lint` (kvmtlb/check/lint.py) and how commands name scenarios (kvmtlb/check/inputs.py).

lint validates without exploring: exit 2 with the parser's file:line error, else exit 0, with
a warning per likely mistake, each naming file and line. `check` and `lint` take files,
directories (their .toml files) and built-in scenario names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.check.inputs import builtin_names, builtin_scenarios, scenario_paths
from kvmtlb.check.lint import lint
from kvmtlb.cli import app
from kvmtlb.model.scenario import ScenarioError

BASE = """name = "l"
[config]
vendor = "intel"
CONFIG
[guest]
"0x1000" = "0x10000 w"
[host]
"0x10000" = "0x80000 rwx"
[threads]
vcpu0 = \"\"\"
VCPU0
\"\"\"
HOST
"""


def case(vcpu0: str = "read 0x1000", host: str = "", config: str = "") -> str:
    text = BASE.replace("CONFIG", config).replace("VCPU0", vcpu0)
    return text.replace("HOST", f'host = """\n{host}\n"""' if host else "")


WARNINGS = {
    "flush-no-target": case("flush_tlb 0x1000 others  # W", config="vcpus = 1\npcpus = 1"),
    "never-mapped": case("read 0x5000  # W"),
    "resume-without-preempt": case(host="resume vcpu1  # W\nzap 0x10000  # U"),
    "preempt-twice": case(host="preempt vcpu1\npreempt vcpu1  # W\nresume vcpu1  # U"),
    "never-resumed": case(host="preempt vcpu0  # W"),
    "knob-vpids": case(config="vpids = 1  # W"),
    "root-never-loaded": case().replace("[host]", '[guest.b]  # W\n"0x1000" = "0x10000 w"\n[host]'),
    "knob-max-asid": case(config="max_asid = 4  # W").replace('"intel"', '"amd"'),
    "huge-knob": case(config="tdp_mmu = false  # W"),
    "sregs-held": case(host="preempt vcpu1\nset_sregs vcpu1 pge=0  # W\nresume vcpu1  # U"),
    "collapse-without-log": case(host="collapse 0x200000  # W").replace(
        "[host]", '[host]\n"0x200000" = "0x400000 rwx 2m"'
    ),
}


def marked(text: str, mark: str) -> list[int]:
    return [n for n, ln in enumerate(text.split("\n"), 1) if ln.rstrip().endswith(mark)]


@pytest.mark.parametrize("name", sorted(WARNINGS))
def test_each_warning_names_its_line(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.toml"
    path.write_text(WARNINGS[name])
    kind = "knob" if name.startswith("knob") else name
    got = [(w.line, w.kind) for w in lint(path)]
    want = [(n, kind) for n in marked(WARNINGS[name], "# W")]
    want += [(n, "unreachable") for n in marked(WARNINGS[name], "# U")]
    assert sorted(got) == sorted(want)
    result = CliRunner().invoke(app, ["lint", str(path)])
    assert result.exit_code == 0, result.output
    for line, k in want:
        assert f"{path}:{line}: warning[{k}]" in result.stdout


def test_a_linked_page_table_is_reached(tmp_path: Path) -> None:
    """root-never-loaded: a `link` from a walked page table reaches the target's tables (and a
    link from a table nothing reaches does not)."""
    tables = '[guest.b]\n"0x1000" = "0x10000 w"\n[guest.c]  # W\n"0x1000" = "0x10000 w"\n[host]'
    text = case("link 0x1000 -> b level=3\nlink 0x1000 -> c root=d\nread 0x1000")
    text = text.replace(
        "[host]", tables.replace("[host]", '[guest.d]  # W\n"0x2000" = "0x10000"\n[host]')
    )
    path = tmp_path / "linked.toml"
    path.write_text(text)
    got = sorted(w.line for w in lint(path) if w.kind == "root-never-loaded")
    assert got == marked(text, "# W")


def test_clean_file_has_no_warning() -> None:
    assert lint(builtin_names()["zap-while-away"]) == []


def test_errors_exit_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(case("frob 0x1000"))
    good = tmp_path / "good.toml"
    good.write_text(case())
    result = CliRunner().invoke(app, ["lint", str(good), str(bad)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {bad}:11: unknown guest op 'frob'")
    assert "2 files: 1 with errors" in result.stdout
    with pytest.raises(ScenarioError):
        lint(bad)


def test_seventeen_zaps_are_an_error_for_lint_too(tmp_path: Path) -> None:
    path = tmp_path / "zaps.toml"
    path.write_text(case(host="zap 0x10000\n" * 17))
    result = CliRunner().invoke(app, ["lint", str(path)])
    assert result.exit_code == 2 and "more than 16 zaps" in result.stderr


def test_builtin_suite_lints_without_errors() -> None:
    """Both suites: the default one's directory, and the extended one's."""
    for suite in ("default", "extended"):
        paths = builtin_scenarios(suite)
        result = CliRunner().invoke(app, ["lint", str(paths[0].parent)])
        assert result.exit_code == 0, result.output
        files = "file" if len(paths) == 1 else "files"
        assert f"{len(paths)} {files}: 0 with errors" in result.stdout
    assert len(builtin_names()) == len(builtin_scenarios("all"))


def test_names_directories_and_files(tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text(case())
    (tmp_path / "a.toml").write_text(case())
    (tmp_path / "notes.txt").write_text("not a scenario")
    got = scenario_paths(["zap-while-away", str(tmp_path), str(tmp_path / "b.toml")])
    assert got == [
        str(builtin_names()["zap-while-away"]),
        str(tmp_path / "a.toml"),
        str(tmp_path / "b.toml"),
        str(tmp_path / "b.toml"),
    ]


def test_check_by_builtin_name() -> None:
    result = CliRunner().invoke(app, ["check", "zap-while-away", "--policy", "kvm-6.18"])
    assert result.exit_code == 0, result.output
    assert "zap-while-away" in result.stdout


@pytest.mark.parametrize("arg", ["no-such-scenario", "EMPTY_DIR"])
def test_unknown_name_or_empty_directory_is_an_input_error(arg: str, tmp_path: Path) -> None:
    if arg == "EMPTY_DIR":
        arg = str(tmp_path)
    for command in ("check", "lint"):
        result = CliRunner().invoke(app, [command, arg])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"error: {arg}: ") and "fix: " in result.stderr
        assert "Traceback" not in result.output
