"""Reported line numbers are the file's lines, however the TOML is written (kvmtlb/tomlfile.py).

Only a line feed ends a line (TOML, editors, `grep -n`): a U+2028, a NEL or a form feed inside a
string does not. An op's line is the line its first character stands on, through `\\n` escapes
in one-line strings, the newline TOML trims after an opening `\"\"\"`, and line-ending backslashes.
Keys of inline tables and dotted keys have lines too. Each case marks the expected line with
`HERE` (in a TOML comment, or as the bad op itself), so the numbers are computed, not written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.cli import app
from kvmtlb.cost.workload import WorkloadError
from kvmtlb.cost.workload import parse as parse_workload
from kvmtlb.model.scenario import ScenarioError, parse

HEAD = 'name = "lines"\ndoc = "DOC"\n'
BODY = """
[config]
vendor = "intel"

[guest]
"0x1000" = "0x10000 w"

[host]
"0x10000" = "0x80000 rwx"

[threads]
"""


def scenario(threads: str, doc: str = "plain") -> str:
    return HEAD.replace("DOC", doc) + BODY + threads


def marked(text: str) -> int:
    lines = text.split("\n")
    hits = [i for i, ln in enumerate(lines, 1) if "HERE" in ln]
    assert len(hits) == 1, text
    return hits[0]


CASES = {
    "line-separator-in-doc": scenario('vcpu0 = """\nread 0x1000\nHERE 0x1000\n"""', "a\u2028b"),
    "paragraph-separator-in-doc": scenario('vcpu0 = """\nHERE\n"""', "a\u2029b\u2029c"),
    "nel-in-doc": scenario('vcpu0 = """\nread 0x1000\nHERE\n"""', "a\x85b"),
    "form-feed-escape-and-separator": scenario(
        'vcpu0 = """\nread 0x1000 # a\u2028b\nHERE\n"""', "a\\fb\u2028c"
    ),
    "separator-in-an-op-comment": scenario('vcpu0 = """\nread 0x1000 # x\u2028y\x85z\nHERE\n"""'),
    "escapes-in-one-line-string": scenario('vcpu0 = "read 0x1000\\nread 0x1000\\nHERE"'),
    "one-line-string-then-more": scenario(
        'vcpu0 = "read 0x1000\\nread 0x1000"\nvcpu1 = """\nread 0x1000\nHERE\n"""'
    ),
    "continuation-after-opening-quotes": scenario('vcpu0 = """\\\n    read 0x1000\n    HERE\n"""'),
    "continuation-inside": scenario('vcpu0 = """read 0x1000\\n\\\n\n\n   HERE 0x1000\n"""'),
    "text-on-the-opening-line": scenario('vcpu0 = """read 0x1000\nHERE\n"""'),
    "literal-string": scenario("vcpu0 = '''\nread 0x1000\u2028\nHERE\n'''"),
    "crlf-line-ends": scenario('vcpu0 = """\nread 0x1000\nHERE\n"""').replace("\n", "\r\n"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_errors_name_the_line_the_op_stands_on(name: str) -> None:
    text = CASES[name]
    with pytest.raises(ScenarioError) as info:
        parse(text, "t.toml")
    assert "HERE" in info.value.message, info.value
    assert info.value.line == marked(text), info.value


def test_op_lines_after_separators_and_continuations() -> None:
    """Valid ops remember their own lines too (traces point into the file)."""
    text = scenario(
        'vcpu0 = """\\\n  read 0x1000\n  write 0x1000\n"""\nvcpu1 = "read 0x1000\\nwrite 0x1000"',
        "x\u2028y\x85z",
    )
    s = parse(text, "t.toml")
    lines = text.split("\n")
    for op in (*s.programs[0], *s.programs[1]):
        assert op.describe().split()[0] in lines[op.line - 1], (op, lines[op.line - 1])
    assert [op.line for op in s.programs[1]] == [
        lines.index(ln) + 1 for ln in lines if "vcpu1" in ln
    ] * 2


CONFIG_FORMS = {
    "inline-table": 'name = "t"\nconfig = { vendor = "intel", vcpus = 9 }  # HERE\n',
    "dotted-keys": 'name = "t"\nconfig.vendor = "intel"\nconfig.vcpus = 9  # HERE\n',
    "multi-line-array-before": 'name = "t"\n[config]\nept_vpid_cap = [\n  "invept-all",\n'
    '  "invvpid-single",\n]\nvendor = "intel"\nvcpus = 9  # HERE\n',
    "quoted-key": 'name = "t"\n[config]\nvendor = "intel"\n"vcpus" = 9  # HERE\n',
}


@pytest.mark.parametrize("name", sorted(CONFIG_FORMS))
def test_config_errors_name_the_key_in_any_toml_form(name: str) -> None:
    text = CONFIG_FORMS[name] + '\n[host]\n"0x10000" = "0x80000 rwx"\n'
    with pytest.raises(ScenarioError) as info:
        parse(text, "t.toml")
    assert "vcpus above 8" in info.value.message
    assert info.value.line == marked(text)


def test_workload_line_after_a_line_separator() -> None:
    text = (
        'name = "w"\ndoc = "a\u2028b\x85c"\n[config]\nvendor = "intel"\n[workload]\n'
        "accesses = 100\nworking_set = 0  # HERE\n"
    )
    with pytest.raises(WorkloadError) as info:
        parse_workload(text, "w.toml")
    assert info.value.line == marked(text)


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    text = scenario('vcpu0 = """\nread 0x1000\n"""', "caf\u00e9").encode("latin-1")
    path = tmp_path / "latin1.toml"
    path.write_bytes(text)
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}:2: not UTF-8"), result.stderr
    assert "fix: save the file as UTF-8" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("depth", [40, 2000])
def test_deeply_nested_arrays_are_an_input_error(tmp_path: Path, depth: int) -> None:
    text = scenario('vcpu0 = """\nread 0x1000\n"""').replace(
        'vendor = "intel"', 'vendor = "intel"\nept_vpid_cap = ' + "[" * depth + "]" * depth
    )
    path = tmp_path / "deep.toml"
    path.write_text(text)
    line = text.split("\n").index(next(ln for ln in text.split("\n") if "ept_vpid_cap" in ln)) + 1
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}:{line}: "), result.stderr
    assert "nested more than" in result.stderr and "Traceback" not in result.stderr
