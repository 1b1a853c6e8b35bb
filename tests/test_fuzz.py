"""Mutation fuzz of the input files, bounded (kvmtlb/fuzz.py; bench/fuzz.py runs the large one).

Every mutant of a built-in scenario or workload either runs, or is an input error whose message
names the file, the line (or, for something missing, the file alone) and the fix: no exception
of any other type escapes loading, linting, the --matrix configurations, building and a short
exploration (scenarios), or loading and a short simulation (workloads). Seeded, so a failure
reproduces; the mutant's text is in the assertion message.

Then every config knob and every op keyword of the parser's own tables, given wrong values and
wrong arguments, must be an input error on the line it stands on; and `kvmtlb check` on a few
broken files exits 2 with FILE:LINE on stderr and no traceback.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb import fuzz
from kvmtlb.check.runner import builtin_scenarios
from kvmtlb.cli import app
from kvmtlb.cost.workload import BUILTIN as BUILTIN_WORKLOADS
from kvmtlb.cost.workload import builtin_workloads
from kvmtlb.model.scenario import CONFIG_KEYS, GUEST_OPS, HOST_OPS, ScenarioError, parse

SCENARIO_MUTANTS = 1000
WORKLOAD_MUTANTS = 300


def mutants(kind: str, n: int, seed: int) -> list[bytes]:
    files = builtin_scenarios() if kind == "scenario" else builtin_workloads()
    sources = [p.read_text() for p in files]
    g = fuzz.scenario_grammar() if kind == "scenario" else fuzz.workload_grammar()
    m = fuzz.Mutator(g, sources)
    rng = random.Random(f"{kind}-{seed}")
    return [m.mutate(rng.choice(sources), rng) for _ in range(n)]


@pytest.mark.parametrize("part", range(4))
def test_scenario_mutants(part: int, tmp_path: Path) -> None:
    n = SCENARIO_MUTANTS // 4
    kinds = []
    for i, data in enumerate(mutants("scenario", SCENARIO_MUTANTS, 1)[part * n : (part + 1) * n]):
        path = tmp_path / f"m{i}.toml"
        path.write_bytes(data)
        o = fuzz.try_scenario(path)
        assert o.kind in (fuzz.ACCEPTED, fuzz.INPUT_ERROR), (
            o.detail,
            data.decode(errors="replace"),
        )
        kinds.append(o.kind)
    assert fuzz.ACCEPTED in kinds and fuzz.INPUT_ERROR in kinds  # the mutator does both


def test_workload_mutants(tmp_path: Path) -> None:
    for i, data in enumerate(mutants("workload", WORKLOAD_MUTANTS, 1)):
        path = tmp_path / f"w{i}.toml"
        path.write_bytes(data)
        o = fuzz.try_workload(path, accesses=200)
        assert o.kind in (fuzz.ACCEPTED, fuzz.INPUT_ERROR), (
            o.detail,
            data.decode(errors="replace"),
        )


@pytest.mark.parametrize("name", ["nested-l2", "nested-ept", "huge-range-flush"])
def test_nested_workload_mutants(name: str, tmp_path: Path) -> None:
    """Mutants of the nested workloads (their keys nested, tdp, vmcs12_vpid, l2_exit, l1_flush,
    l1_flush_addr, l1_invept, l1_invept_all, l1_ept_wrprotect) and of the huge-page one
    (huge_pages, tdp_mmu, hv_range_flush, dirty_log, dirty_log_off), with the grammar's other
    keys put into them: each runs or is an input error, and some still run."""
    source = (BUILTIN_WORKLOADS / f"{name}.toml").read_text()
    m = fuzz.Mutator(fuzz.workload_grammar(), [source])
    rng = random.Random("nested-workload" if name == "nested-l2" else name)
    kinds = []
    for i in range(60):
        data = m.mutate(source, rng)
        path = tmp_path / f"n{i}.toml"
        path.write_bytes(data)
        o = fuzz.try_workload(path, accesses=100)
        assert o.kind in (fuzz.ACCEPTED, fuzz.INPUT_ERROR), (
            o.detail,
            data.decode(errors="replace"),
        )
        kinds.append(o.kind)
    assert fuzz.ACCEPTED in kinds and fuzz.INPUT_ERROR in kinds


def test_mutator_is_seeded() -> None:
    assert mutants("scenario", 20, 3) == mutants("scenario", 20, 3)
    assert mutants("scenario", 20, 3) != mutants("scenario", 20, 4)


# -- every knob and every op ---------------------------------------------------------------------
TEMPLATE = """name = "k"
[config]
vendor = "VENDOR"
pcid = true
CONFIG
[guest]
"0x1000" = "0x10000 w x"
[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"
[threads]
vcpu0 = \"\"\"
read 0x1000
VCPU0
\"\"\"
host = \"\"\"
HOST
\"\"\"
"""
BAD_VALUES = ['"x"', "1.5", "[1]", "{}", "-1", "99999999999999999999", "nan", "1979-05-27"]
BAD_ARGS = ["", "0x1001", "0x100000000", "-0x1000", "vcpu9", "pcpu9", "pcid=4096", "x y z w v"]


def knob_cases() -> list[tuple[str, str]]:
    """Each config key with each value of a wrong type or out of every key's range."""
    return [
        ("amd" if key in ("flush_by_asid", "max_asid") else "intel", f"{key} = {value}")
        for key in CONFIG_KEYS
        for value in BAD_VALUES
    ]


@pytest.mark.parametrize(("vendor", "line"), knob_cases())
def test_every_knob_with_a_bad_value_names_its_line(vendor: str, line: str) -> None:
    text = TEMPLATE.replace("VENDOR", vendor).replace("CONFIG", line).replace("VCPU0", "")
    text = text.replace("HOST", "")
    if line.startswith("vendor"):
        text = text.replace(f'vendor = "{vendor}"\n', "")
    with pytest.raises(ScenarioError) as info:
        parse(text, "k.toml")
    want = text.split("\n").index(line) + 1
    assert info.value.line == want, (line, str(info.value))
    assert str(info.value).startswith(f"k.toml:{want}: ") and info.value.fix


def op_cases() -> list[tuple[str, str]]:
    out = []
    for op in GUEST_OPS:
        out += [("VCPU0", f"{op} {a}".strip()) for a in BAD_ARGS]
    for op in HOST_OPS:
        out += [("HOST", f"{op} {a}".strip()) for a in BAD_ARGS]
    return out


@pytest.mark.parametrize(("where", "op"), op_cases())
def test_every_op_with_bad_arguments_names_its_line(where: str, op: str) -> None:
    text = TEMPLATE.replace("VENDOR", "intel").replace("CONFIG", "")
    text = text.replace(where, op).replace("VCPU0", "").replace("HOST", "")
    if op in ("mov_cr3", "flush_remote_tlbs", "zap_all_fast"):  # no argument: valid
        parse(text, "k.toml")
        return
    with pytest.raises(ScenarioError) as info:
        parse(text, "k.toml")
    assert info.value.line == text.split("\n").index(op) + 1, str(info.value)
    assert info.value.fix


BROKEN = {
    "binary": b'name = "b"\n[config]\nvendor = "intel"\n\xff\xfe\n',
    "nested": b'name = "n"\n[config]\nvendor = "intel"\nept_vpid_cap = '
    + b"[" * 3000
    + b"]" * 3000,
    "inline-config": b'name = "i"\nconfig = { vendor = "intel", vcpus = 99 }\n',
    "bad-op": b'name = "o"\n[config]\nvendor = "intel"\n[host]\n"0x10000" = "0x80000 rwx"\n'
    b'[threads]\nvcpu0 = "read 0x1000\\nflush_tlb 0x1000 vcpu7"\n',
    "huge-asid": b'name = "a"\n[config]\nvendor = "amd"\nmax_asid = 100000000000\n',
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_on_broken_files_exits_2_with_file_and_line(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.toml"
    path.write_bytes(BROKEN[name])
    result = CliRunner().invoke(app, ["check", str(path), "--policy", "kvm-6.18"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}:"), result.stderr
    assert result.stderr.split(":")[2].strip().isdigit(), result.stderr  # error: PATH:LINE: ...
    assert "Traceback" not in result.stderr + result.stdout
