"""docs/scenarios.md and the parser agree (kvmtlb/model/scenario.py's tables, kvmtlb/check/lint.py).

Every top-level key, config key, guest op and host op the parser accepts has its row in the
guide, and every row names one it accepts; every example parses: the ```toml blocks as whole
files, each op's example inside a small scenario. Every lint warning kind is documented. The
README and docs/checker.md point to the guide.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmtlb.check.lint import KINDS
from kvmtlb.kvm.policy import registry
from kvmtlb.model.scenario import CONFIG_KEYS, GUEST_OPS, HOST_OPS, TOP_LEVEL, parse

ROOT = Path(__file__).parent.parent
DOC = (ROOT / "docs" / "scenarios.md").read_text()


def section(title: str) -> str:
    """The text under heading `title`, up to the next heading of the same or a higher level."""
    m = re.search(rf"^(#+) {re.escape(title)}$", DOC, re.M)
    assert m, f"no section {title!r} in docs/scenarios.md"
    body = DOC[m.end() :]
    end = re.search(rf"^#{{1,{len(m.group(1))}}} ", body, re.M)
    return body[: end.start()] if end else body


def rows(text: str) -> list[list[str]]:
    """The cells of each table row of `text` (without the header and the rule)."""
    out = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            out.append([c.strip() for c in line.strip("|").split("|")])
    return out[1:] if out else out


def first_cells(title: str) -> list[str]:
    return [re.sub(r"`", "", r[0]) for r in rows(section(title))]


def test_top_level_keys_are_documented() -> None:
    assert sorted(first_cells("Top-level keys and tables")) == sorted(TOP_LEVEL)


def test_config_keys_are_documented() -> None:
    assert first_cells("`[config]`") == list(CONFIG_KEYS)
    for r in rows(section("`[config]`")):
        kind = CONFIG_KEYS[r[0].strip("`")]
        assert r[1] == {bool: "bool", int: "int", str: "string", list: "list"}[kind], r


def test_guest_ops_are_documented() -> None:
    assert first_cells("Guest ops") == list(GUEST_OPS)


def test_host_ops_are_documented() -> None:
    assert first_cells("Host ops") == list(HOST_OPS)


def test_lint_warnings_are_documented() -> None:
    assert first_cells("Lint") == list(KINDS)


BLOCKS = re.findall(r"```toml\n(.*?)```", DOC, re.S)


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_every_toml_example_parses(n: int) -> None:
    s = parse(BLOCKS[n], f"docs/scenarios.md example {n + 1}", set(registry()))
    assert s.name


OP_SCENARIO = """name = "op-example"
[config]
vendor = "intel"
pcid = true
[guest]
"0x1000" = "0x10000 w"
"0x2000" = "0x11000 w x"
[guest.b]
"0x1000" = "0x11000 w"
[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"
[threads]
THREAD = \"\"\"
OP
\"\"\"
"""


@pytest.mark.parametrize(
    ("thread", "example"),
    [("vcpu0", r[1]) for r in rows(section("Guest ops"))]
    + [("host", r[1]) for r in rows(section("Host ops"))],
)
def test_every_op_example_parses(thread: str, example: str) -> None:
    op = example.strip("`")
    text = OP_SCENARIO.replace("THREAD", thread).replace("OP", op)
    if op.split()[0] in ("create", "destroy"):  # ops of a second VM
        text = text.replace(
            '[guest.b]\n"0x1000" = "0x11000 w"',
            '[vm1]\nvcpus = ["vcpu1"]\n[vm1.guest]\n"0x1000" = "0x20000 w"',
        )
        text = text.replace("[host]", '[vm1.host]\n"0x20000" = "0x90000 rwx"\n[host]')
    if op.split()[0] == "collapse":  # a frame of a 2 MiB region
        text = text.replace("[host]", '[host]\n"0x200000" = "0x400000 rwx 2m"')
    if op.split()[0] == "recover_nx":  # a 2 MiB region split for NX
        text = text.replace("[host]", '[host]\n"0x200000" = "0x400000 rwx 2m nx"')
    if op.split()[0] == "move_memslot":  # its destination: a GPA without memory
        text = text.replace("[host]", '[host]\n"0x20000" = "none"')
    s = parse(text, "example.toml")
    ops = s.programs[0] if thread == "vcpu0" else s.host_program
    assert len(ops) == 1 and ops[0].describe().split()[0] == op.split()[0]


@pytest.mark.parametrize("doc", ["README.md", "docs/checker.md"])
def test_docs_point_to_the_guide(doc: str) -> None:
    assert "docs/scenarios.md" in (ROOT / doc).read_text()
