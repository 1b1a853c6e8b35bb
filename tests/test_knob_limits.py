"""Every knob of the input files has a limit its error message names, and realistic values run
fast (issue "Verdicts users can trust", item 3).

- `max_asid`: the universe held entries of every ASID 1..max_asid, although a run can only reach
  the few its vCPUs allocate (model/system.py:reachable_asids); 32767 took half a minute and a
  million, minutes and gigabytes. The explored states do not change (tests/data/golden_states.toml
  pins the built-in ones; here, the same count at 16 and 32767).
- Workloads: `nan`/`inf` passed every range check; `preempted_for = 1e9` never finished (the
  schedule draws events one by one while every vCPU is out); `working_set` at its maximum spent
  minutes in the layout builder (a list membership test per page).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.check.explorer import explore
from kvmtlb.check.runner import builtin_scenarios
from kvmtlb.cli import app
from kvmtlb.cost.workload import MAX_FRAMES, WorkloadError
from kvmtlb.cost.workload import parse as parse_workload
from kvmtlb.hw.layout import LayoutBuilder
from kvmtlb.hw.paging import make_pte
from kvmtlb.kvm.versions import Kvm618
from kvmtlb.model.scenario import ScenarioError, load, parse, reconfigure
from kvmtlb.model.system import build, reachable_asids


def builtin(name: str) -> Path:
    return next(p for p in builtin_scenarios() if p.stem == name)


@pytest.mark.parametrize("name", ["amd-zap-no-flushbyasid", "amd-pv-flush-no-flushbyasid"])
def test_realistic_max_asid_is_fast_and_explores_the_same_states(name: str) -> None:
    s = load(builtin(name))
    counts = []
    for max_asid in (16, 32767, 1 << 20):
        t0 = time.perf_counter()
        r = explore(build(reconfigure(s, replace(s.config, max_asid=max_asid)), Kvm618()))
        assert time.perf_counter() - t0 < 5, max_asid
        assert r.verdict == "safe"
        counts.append(r.states)
    assert counts[0] == counts[1] == counts[2]


def test_reachable_asids_follow_allocations_not_max_asid() -> None:
    s = load(builtin("amd-migration-round-trip"))
    big = reconfigure(s, replace(s.config, max_asid=32767))
    assert reachable_asids(big) < 16
    assert reachable_asids(reconfigure(s, replace(s.config, max_asid=1))) == 1


SCENARIO = """name = "k"
[config]
vendor = "VENDOR"
KNOB  # HERE
[host]
"0x10000" = "0x80000 rwx"
[threads]
vcpu0 = "read 0x1000"
"""


@pytest.mark.parametrize(
    ("vendor", "knob", "limit"),
    [
        ("amd", "max_asid = 1048577", "1,048,576"),
        ("intel", "vpids = 65537", "65,536"),
        ("intel", "vcpus = 9", "8"),
        ("intel", "pcpus = 100", "8"),
    ],
)
def test_scenario_knob_above_its_limit(vendor: str, knob: str, limit: str) -> None:
    text = SCENARIO.replace("VENDOR", vendor).replace("KNOB", knob)
    with pytest.raises(ScenarioError) as info:
        parse(text, "k.toml")
    assert info.value.line == 4
    assert limit in str(info.value)


def test_seventeenth_zap_names_its_line() -> None:
    text = SCENARIO.replace("VENDOR", "intel").replace("KNOB  # HERE", "")
    text += 'host = """\n' + "zap 0x10000\n" * 17 + '"""\n'
    with pytest.raises(ScenarioError, match="more than 16 zaps") as info:
        parse(text, "k.toml")
    assert info.value.line == len(text.split("\n")) - 2


def workload(workload: str = "", rates: str = "preempt = 1.0", tlb: str = "") -> str:
    """A small workload with extra lines in [workload], [rates] and [tlb]."""
    text = (
        'name = "w"\n[config]\nvendor = "intel"\nvcpus = 4\n'
        f"[workload]\naccesses = 1000\nworking_set = 16\n{workload}\n[rates]\n{rates}\n"
    )
    return text + (f"[tlb]\n{tlb}\n" if tlb else "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (workload(rates="pte_change = nan  # HERE"), "not a finite number"),
        (workload(rates="zap = inf  # HERE"), "not a finite number"),
        (workload("locality = -inf  # HERE"), "not a finite number"),
        (workload("preempted_for = 1e9  # HERE"), "preempted_for <= 1,000,000"),
        (workload("preempted_for = nan  # HERE"), "not a finite number"),
        (
            workload("preempted_for = 1e6  # HERE", rates="preempt = 100.0\nzap = 100.0"),
            "limit is 2,000,000",
        ),
        (workload("seed = -1  # HERE"), "0 <= seed"),
        (workload(tlb="combined = 100000000  # HERE"), "1,048,576"),
    ],
)
def test_workload_knob_limits(text: str, message: str, tmp_path: Path) -> None:
    expected = next(n for n, ln in enumerate(text.split("\n"), 1) if "HERE" in ln)
    path = tmp_path / "w.toml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["cost", str(path), "--policy", "kvm-6.18"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}:{expected}: "), result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_largest_working_set_loads_with_its_default_frames() -> None:
    big = workload().replace("working_set = 16", f"working_set = {MAX_FRAMES}")
    assert parse_workload(big).guest_frames == MAX_FRAMES
    with pytest.raises(WorkloadError, match="there are none"):
        parse_workload(big.replace("preempt = 1.0", "pte_change = 1.0"))


def test_layout_of_a_large_working_set_builds_in_linear_time() -> None:
    """2^16 guest pages: about 1 s; with the quadratic builder, about 40 s."""
    t0 = time.perf_counter()
    b = LayoutBuilder()
    root = b.guest_root([b.ept_root()])
    for i in range(1 << 16):
        b.map(root, 0x4000_0000 + i * 0x1000, make_pte(0x10_0000 + i * 0x1000))
    b.build()
    assert time.perf_counter() - t0 < 8
