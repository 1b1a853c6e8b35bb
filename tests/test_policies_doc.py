"""docs/policies.md stays true.

- Every step label the code defines (every value `Vcpu.pc` can take, every phase of the host
  thread and of the guest's shootdown, every kind of step the explorer interleaves) is in one of
  the page's tables; each vCPU label has a row whose method, preemptibility and IRQ columns match
  the policy class that defines it. The labels are read from the code (the policies' STEPS and
  their NOT_PREEMPTIBLE / IRQS_OFF sets, and the string literals the code assigns to or compares
  with `pc`, `phase` and `sub`), never from a list kept here.
- Every example policy on the page (a ```python block whose first line is `# FILE.py`) is written
  to a temporary file and checked with the page's `kvmtlb check ... --policy FILE.py:Class`
  command, which must give the verdict, the expectation and the trace steps the page's output
  block shows.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.cli import app
from kvmtlb.kvm.policy import KvmPolicy, registry
from kvmtlb.kvm.state import Vcpu

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "policies.md"
PKG = ROOT / "kvmtlb"


# -- what the code defines ------------------------------------------------------------------------
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _strings(node: ast.AST) -> list[str]:
    """The string constants of `node`, or of the tuple/list/set it is."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for e in node.elts for s in _strings(e)]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def _names(node: ast.AST) -> list[str]:
    """The bare names in `node`, or in the tuple/list/set it is."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [n for e in node.elts for n in _names(e)]
    if isinstance(node, ast.IfExp):
        return _names(node.body) + _names(node.orelse)
    return []


def _is_field(node: ast.AST, attr: str, index: str) -> bool:
    """`x.<attr>`, or `x[<index>]` (the frozen tuples are indexed by V_PC-style constants)."""
    if isinstance(node, ast.Attribute):
        return node.attr == attr
    return isinstance(node, ast.Subscript) and _names(node.slice) == [index]


def _field_values(tree: ast.AST, attr: str, index: str, pick: type = str) -> set[str]:
    """What the code assigns to, passes as, or compares with the field `attr`: string constants
    (pick=str) or the names of constants (pick=ast.Name)."""
    get = _strings if pick is str else _names
    found: set[str] = set()
    for node in ast.walk(tree):
        assigned = isinstance(node, ast.Assign) and any(
            _is_field(t, attr, index) for t in node.targets
        )
        if assigned or (isinstance(node, ast.keyword) and node.arg == attr):
            found.update(get(node.value))  # type: ignore[attr-defined]
        elif isinstance(node, ast.Compare) and _is_field(node.left, attr, index):
            for c in node.comparators:
                found.update(get(c))
    return found


def policies() -> list[type[KvmPolicy]]:
    return [KvmPolicy, *registry().values()]


def vcpu_labels() -> dict[str, type[KvmPolicy]]:
    """Every value Vcpu.pc can take, with the first policy class whose STEPS maps it (KvmPolicy
    for a label no STEPS maps, such as "guest")."""
    found: dict[str, type[KvmPolicy]] = {}
    for cls in policies():
        for label in cls.STEPS:
            found.setdefault(label, cls)
    extra = {Vcpu(0).pc}
    for cls in policies():
        extra |= set(cls.NOT_PREEMPTIBLE) | set(cls.IRQS_OFF)
    for path in sorted(PKG.rglob("*.py")):
        extra |= _field_values(_tree(path), "pc", "V_PC")
    for label in extra:
        found.setdefault(label, KvmPolicy)
    return found


def host_phases() -> set[str]:
    """The host kernel's own phases of the host thread's ops (HostThread.phase; "" is an op's
    start), and the continuations it calls KVM with."""
    tree = _tree(PKG / "host" / "thread.py")
    found = _field_values(tree, "phase", "")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _names(node.func) == ["_call"] and len(node.args) > 5:
            found.update(_strings(node.args[5]))
    return {p for p in found if p.startswith("mm:")} - {"mm:done"}


def host_labels() -> dict[str, type[KvmPolicy]]:
    """Every KVM host-task label, with the first policy class whose HOST_STEPS maps it."""
    found: dict[str, type[KvmPolicy]] = {}
    for cls in policies():
        for label in cls.HOST_STEPS:
            found.setdefault(label, cls)
    return found


def guest_flush_phases() -> set[str]:
    """The constants the guest's flush_tlb op keeps in GuestThread.sub."""
    return _field_values(_tree(PKG / "guest" / "thread.py"), "sub", "", ast.Name)


def explorer_kinds() -> set[str]:
    """The kinds of step the explorer interleaves: Action kinds, and the guest step names."""
    kinds = set()
    for node in ast.walk(_tree(PKG / "model" / "actions.py")):
        if isinstance(node, ast.Call) and _names(node.func) == ["Action"] and len(node.args) > 1:
            kinds.update(_strings(node.args[1]))
    tree = _tree(PKG / "guest" / "thread.py")
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "guest_actions")
    for node in ast.walk(fn):
        if isinstance(node, ast.Tuple) and node.elts:
            kinds.update(_strings(node.elts[0]))
    return kinds


# -- what the page says ---------------------------------------------------------------------------
def table_rows() -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in DOC.read_text().splitlines()
        if line.startswith("|")
    ]


def in_a_table(name: str) -> bool:
    return any(f"`{name}`" in cell for row in table_rows() for cell in row)


def label_table() -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by label) of the vCPU label table."""
    rows = table_rows()
    start = next(i for i, r in enumerate(rows) if r[0] == "label" and "preemptible" in r)
    header, out = rows[start], {}
    for r in rows[start + 2 :]:
        m = re.fullmatch(r"`([^`]+)`", r[0])
        if m is None or len(r) != len(header):
            break
        out[m.group(1)] = r
    return header, out


def test_every_vcpu_label_has_a_row_that_matches_the_code() -> None:
    header, rows = label_table()
    method, preempt, irqs = (header.index(h) for h in ("method", "preemptible", "IRQs"))
    labels = vcpu_labels()
    assert {"guest", "vcpu_enter_guest", "vcpu_enter_guest:recheck"} <= set(labels)
    for label, cls in labels.items():
        assert label in rows, f"docs/policies.md: no row for step label {label!r} ({cls.__name__})"
        row = rows[label]
        if label in cls.STEPS:
            assert row[method] == f"`{cls.STEPS[label]}`", f"{label}: method column"
        want = "no" if label in cls.NOT_PREEMPTIBLE else "yes"
        assert row[preempt].split()[0].strip(":,") == want, f"{label}: preemptible should be {want}"
        want = "off" if label in cls.IRQS_OFF else "on"
        assert row[irqs].split()[0].strip(":,") == want, f"{label}: IRQs should be {want}"
    stale = set(rows) - set(labels)
    assert not stale, f"docs/policies.md: rows for labels the code no longer has: {stale}"


def test_every_host_label_has_a_row_that_matches_the_code() -> None:
    rows = table_rows()
    start = next(
        i
        for i, r in enumerate(rows)
        if r[:2] == ["label", "method"] and "next label" in r and "preemptible" not in r
    )
    documented = {}
    for r in rows[start + 2 :]:
        m = re.fullmatch(r"`([^`]+)`", r[0])
        if m is None or len(r) != len(rows[start]):
            break
        documented[m.group(1)] = r
    labels = host_labels()
    assert {"kvm_flush_remote_tlbs", "kvm_mmu_notifier_invalidate_range_start"} <= set(labels)
    for label, cls in labels.items():
        assert label in documented, f"docs/policies.md: no row for host label {label!r}"
        assert documented[label][1] == f"`{cls.HOST_STEPS[label]}`", f"{label}: method column"
    stale = set(documented) - set(labels)
    assert not stale, f"docs/policies.md: rows for host labels the code no longer has: {stale}"


@pytest.mark.parametrize(
    "what,names",
    [
        ("host-thread phase", host_phases),
        ("flush_tlb phase", guest_flush_phases),
        ("explorer step kind", explorer_kinds),
    ],
)
def test_every_other_step_is_in_a_table(what: str, names: object) -> None:
    found = names()  # type: ignore[operator]
    assert len(found) >= 3, f"found too few {what}s in the code: {found}"
    missing = sorted(n for n in found if not in_a_table(n))
    assert not missing, f"docs/policies.md: no table names the {what}(s) {missing}"


# -- the example policies -------------------------------------------------------------------------
@dataclass
class Example:
    command: str
    output: str


def fenced_blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", DOC.read_text(), re.S | re.M)


def example_files() -> dict[str, str]:
    """The example policies: ```python blocks whose first line is `# FILE.py`."""
    out = {}
    for lang, body in fenced_blocks():
        m = re.match(r"# (\w+\.py)\n", body)
        if lang == "python" and m:
            out[m.group(1)] = body
    return out


def examples() -> list[Example]:
    """Each `kvmtlb check ... --policy FILE.py:Class` block followed by its output block."""
    blocks = fenced_blocks()
    out = []
    for (lang, body), (next_lang, output) in itertools.pairwise(blocks):
        if lang == "sh" and next_lang == "text" and ".py:" in body:
            command = body.strip()
            assert "\n" not in command, f"one command per block: {command}"
            out.append(Example(command, output))
    return out


def claimed(output: str) -> tuple[str, str, str, str | None]:
    """(scenario, policy, label, expected) as the output block's matrix shows them."""
    head = re.search(r"^┃ scenario\s+┃ (\S+)\s+┃$", output, re.M)
    row = re.search(r"^│ (\S+)\s+│ (\S+) [\d.]+s(?: \(expected (\S+)\))?\s+│$", output, re.M)
    assert head and row, f"no matrix in the output block:\n{output}"
    return row.group(1), head.group(1), row.group(2), row.group(3)


def test_the_page_has_its_examples() -> None:
    files, runs = example_files(), examples()
    assert len(runs) >= 2 and any(claimed(e.output)[2].startswith("violation") for e in runs)
    used = {m.group(1) for e in runs if (m := re.search(r"--policy (\S+\.py):", e.command))}
    assert used == set(files), f"example files {set(files)} vs files the commands check {used}"


@pytest.mark.parametrize("example", examples(), ids=lambda e: e.command.split()[2])
def test_example_gives_the_verdict_the_page_shows(example: Example, tmp_path: Path) -> None:
    files = example_files()
    argv = shlex.split(example.command)
    assert argv[:2] == ["kvmtlb", "check"] and "--json" not in argv
    args = argv[2:]
    for i, arg in enumerate(args):
        if i > 0 and args[i - 1] == "--policy":
            file, cls = arg.rsplit(":", 1)
            (tmp_path / file).write_text(files[file])
            args[i] = f"{tmp_path / file}:{cls}"
        elif arg.endswith(".toml"):
            args[i] = str(ROOT / arg)
    result = CliRunner().invoke(app, ["check", *args, "--json"])
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1 and "error" not in records[0], result.output
    rec = records[0]
    scenario, policy, label, expected = claimed(example.output)
    got = (rec["scenario"], rec["policy"], rec["label"], rec["expected"])
    want = (scenario, policy, label, expected or label)
    assert got == want, f"`{example.command}` now gives {got}; the page shows {want}"
    assert result.exit_code == (0 if rec["label"] == rec["expected"] else 1)
    for m in re.finditer(r"^\s+(\d+)\. (\S+): (.*)$", example.output, re.M):
        step = rec["trace"][int(m.group(1)) - 1]
        assert (step["actor"], step["action"]) == (m.group(2), m.group(3)), (
            f"`{example.command}`: trace step {m.group(1)} is now "
            f"{step['actor']}: {step['action']}; re-run it and paste the output into the page"
        )
