"""Workload files: malformed input is an error naming the file, the line and the fix (exit code
2, no traceback); the same seed gives the same result; the built-in workloads load."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.cli import app
from kvmtlb.cost.simulate import Simulation
from kvmtlb.cost.workload import WorkloadError, builtin_workloads, load, parse, resolve
from kvmtlb.kvm.policy import registry

GOOD = """\
name = "small"
[config]
vendor = ["intel", "amd"]
vpid = [true, false]
vcpus = 3
pcpus = 2
[workload]
accesses = 4000
seed = 7
working_set = 32
guest_frames = 48
locality = 1.0
preempted_for = 300
[rates]
pte_change = 5
full_flush = 1
preempt = 4
migrate = 2
zap = 2
remap = 2
"""

# (what is wrong, the text, the line the error must name, a phrase of the message)
BAD = [
    ("toml syntax", GOOD.replace("seed = 7", "seed = = 7"), 9, "not valid TOML"),
    ("unknown key", GOOD.replace("seed = 7", "sed = 7"), 9, "unknown key 'sed'"),
    ("unknown rate", GOOD.replace("zap = 2", "zapp = 2"), 19, "unknown key 'zapp'"),
    ("bad vendor", GOOD.replace('["intel", "amd"]', '"arm"'), 3, 'vendor must be "intel"'),
    ("string count", GOOD.replace("working_set = 32", 'working_set = "32"'), 10, "integer"),
    ("negative rate", GOOD.replace("preempt = 4", "preempt = -4"), 17, "out of range"),
    ("frames", GOOD.replace("guest_frames = 48", "guest_frames = 16"), 11, "smaller than"),
    ("fraction", GOOD.replace("[rates]", "write_fraction = 2\n[rates]"), 14, "fraction"),
    ("vcpus", GOOD.replace("vcpus = 3", "vcpus = 0"), 5, "out of range"),
    ("migrate", GOOD.replace("pcpus = 2", "pcpus = 1"), 18, "at least two pCPUs"),
    ("top level", GOOD + "[extra]\nx = 1\n", 21, "unknown top-level"),
    ("tlb kind", GOOD + "[tlb]\ncombo = 4\n", 22, "unknown key 'combo'"),
    ("tlb size", GOOD + "[tlb]\ncombined = 0\n", 22, "at least 1"),
    ("name", GOOD.replace('name = "small"', 'name = "Small One"'), 1, "bad or missing name"),
    ("caps", GOOD.replace("pcpus = 2", 'pcpus = 2\nept_vpid_cap = ["invept-single"]'), 7, "INVEPT"),
]


def test_good_workload_and_configurations() -> None:
    w = parse(GOOD, "small.toml")
    assert [c.label() for c in w.configs] == [
        "intel/vpid/nopcid/pv",
        "intel/novpid/nopcid/pv",
        "amd/flushbyasid/nopcid/pv",
    ]
    assert w.rates.pte_change == 5.0 and w.locality == 1.0


@pytest.mark.parametrize(("what", "text", "line", "phrase"), BAD, ids=[b[0] for b in BAD])
def test_malformed_workload_names_file_line_and_fix(
    tmp_path: Path, what: str, text: str, line: int, phrase: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(WorkloadError) as e:
        load(path)
    assert e.value.line == line, (what, str(e.value))
    assert phrase in e.value.message, (what, str(e.value))
    assert e.value.fix
    r = CliRunner().invoke(app, ["cost", str(path), "--accesses", "10"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stderr.startswith(f"error: {path}:{line}: "), r.stderr
    assert "fix:" in r.stderr


def test_unknown_workload_and_unreadable_file(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["cost", "no-such-workload"])
    assert r.exit_code == 2 and "pv-flush-heavy" in r.stderr and "fix:" in r.stderr
    r = CliRunner().invoke(app, ["cost", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "cannot read" in r.stderr


def test_builtin_workloads_cover_both_vendors() -> None:
    names = {p.stem for p in builtin_workloads()}
    assert {"pv-flush-heavy", "migration-heavy", "ept-churn"} <= names
    for p in builtin_workloads():
        w = load(p)
        # dirty logging is modelled with EPT only (docs/cost-model.md), and nesting on a TDP L0
        # is nested EPT (nested NPT is not modelled): such a workload is Intel's
        intel_only = w.rates.dirty_log or any(c.nested and c.tdp for c in w.configs)
        vendors = {"intel"} if intel_only else {"intel", "amd"}
        assert {c.vendor for c in w.configs} == vendors, p
        assert w.doc.strip(), p
    assert resolve("pv-flush-heavy").name == "pv-flush-heavy"


def run(text: str, seed: int, policy: str = "kvm-6.18") -> list[dict[str, object]]:
    w = parse(text).with_overrides(seed=seed)
    out = []
    for c in w.configs:
        r = Simulation(w, c, registry()[policy]()).run().as_dict()
        del r["cpu_seconds"], r["accesses_per_second"]
        out.append(r)
    return out


def test_same_seed_same_result() -> None:
    a, b = run(GOOD, 7), run(GOOD, 7)
    assert a == b
    c = run(GOOD, 8)
    assert [r["counts"] for r in c] != [r["counts"] for r in a]


def test_policies_are_costed_on_the_same_schedule() -> None:
    """The schedule does not depend on the policy: the guest's and the host's events are the same
    under every policy (a paired comparison)."""
    same = ("accesses", "guest.pte-changes", "guest.shootdowns", "host.preemptions", "host.zaps")
    runs = [run(GOOD, 7, p) for p in ("kvm-5.7", "kvm-5.8", "kvm-6.18")]
    for key in same:
        values = {str([r["counts"].get(key) for r in rs]) for rs in runs}  # type: ignore[attr-defined]
        assert len(values) == 1, key


HV = GOOD.replace('vendor = ["intel", "amd"]', 'vendor = "intel"\nhv_range_flush = [false, true]')
HV = HV.replace("remap = 2", "remap = 2\ndirty_log = 3")


def test_hyperv_flushes_replace_the_kicks() -> None:
    """KVM on Hyper-V (kvm/hyperv.py): no kick; the zaps' and remaps' flushes are
    HvFlushGuestPhysicalAddressSpace and the dirty-log enables' HvFlushGuestPhysicalAddressList,
    which removes fewer valid entries than bare metal's flushes."""
    runs = {r["config"]: r["counts"] for r in run(HV, 7)}
    b, h = runs["intel/vpid/nopcid/pv"], runs["intel/vpid/nopcid/pv/hv"]
    assert b["host.dirty-logs"] == h["host.dirty-logs"] > 0  # type: ignore[index]
    assert b["host.kicks"] > 0 and "host.kicks" not in h  # type: ignore[index, operator]
    assert h["op.hv-flush-list"] == 2 * h["host.dirty-logs"]  # type: ignore[index]
    zaps = h["host.zaps"] + h["host.remaps"]  # type: ignore[index]
    assert h["op.hv-flush-space"] == 2 * zaps  # type: ignore[index]
    assert h["overflush"] < b["overflush"]  # type: ignore[index, operator]


def test_dirty_log_needs_ept() -> None:
    with pytest.raises(WorkloadError) as e:
        parse(GOOD.replace("remap = 2", "remap = 2\ndirty_log = 1"), "amd.toml")
    assert "dirty_log" in str(e.value) and e.value.line > 0
