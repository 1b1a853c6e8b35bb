"""`kvmtlb cost`: the table, JSON, the plot, user policies, errors; and the cost table's data."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner, Result

from kvmtlb.cli import app
from kvmtlb.cost.costs import CATEGORIES, default_costs, parse_costs
from kvmtlb.cost.operations import ALL_OPS
from kvmtlb.cost.tlb import KIND_NAMES

TINY = """\
name = "tiny"
[config]
vendor = ["intel", "amd"]
vpid = [true, false]
vcpus = 3
pcpus = 2
[workload]
accesses = 3000
working_set = 24
guest_frames = 40
locality = 1.0
preempted_for = 200
[rates]
pte_change = 8
full_flush = 1
preempt = 6
migrate = 2
zap = 2
remap = 2
"""

POLICIES = '''
from kvmtlb.kvm.versions import Kvm618


class AlwaysInvept(Kvm618):
    """Flushes the guest's TLB with INVEPT, like kvm-5.7 without VPID."""

    def vmx_flush_tlb_guest(self, k, vcpu):
        self.ept_sync_context(k, vcpu, self.construct_eptp(k, vcpu))


class Broken(Kvm618):
    def vmx_flush_tlb_guest(self, k, vcpu):
        raise RuntimeError("boom")
'''


def cost(*args: str) -> Result:
    r = CliRunner().invoke(app, ["cost", *args])
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def tiny(tmp_path: Path) -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return str(path)


def records(r: Result) -> list[dict[str, object]]:
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_table_json_and_plots(tmp_path: Path) -> None:
    w = tiny(tmp_path)
    r = cost(w, "--jobs", "1")
    assert r.exit_code == 0, r.stderr
    for word in ("tiny", "kvm-5.7", "kvm-5.8", "kvm-6.18", "intel/novpid/nopcid/pv", "INVEPT"):
        assert word in r.stdout
    png, svg = tmp_path / "c.png", tmp_path / "c.svg"
    r = cost(w, "--json", "--plot", str(png), "--policy", "kvm-5.7", "--policy", "kvm-5.8")
    assert r.exit_code == 0, r.stderr
    recs = records(r)
    assert len(recs) == 3 * 2
    for rec in recs:
        assert {"workload", "config", "policy", "counts", "cycles", "total_cycles"} <= set(rec)
        assert rec["total_cycles"] == sum(rec["cycles"].values())  # type: ignore[attr-defined]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cost(w, "--plot", str(svg), "--policy", "kvm-6.18", "--accesses", "500")
    assert r.exit_code == 0 and "<svg" in svg.read_text()


def test_defaults_run_every_builtin_workload_under_every_upstream_version() -> None:
    r = cost("--accesses", "200", "--json")
    assert r.exit_code == 0, r.stderr
    recs = records(r)
    got = {(rec["workload"], rec["policy"]) for rec in recs}
    for name in ("pv-flush-heavy", "migration-heavy", "ept-churn"):
        for policy in ("kvm-5.7", "kvm-5.8", "kvm-6.18"):
            assert (name, policy) in got


def test_user_policy_is_costed_by_its_own_code(tmp_path: Path) -> None:
    pol = tmp_path / "mine.py"
    pol.write_text(POLICIES)
    r = cost(tiny(tmp_path), "--json", "--policy", "kvm-6.18", "--policy", f"{pol}:AlwaysInvept")
    assert r.exit_code == 0, r.stderr
    by = {(rec["config"], rec["policy"]): rec["counts"] for rec in records(r)}
    mine = f"{pol}:AlwaysInvept"
    for config in ("intel/vpid/nopcid/pv", "intel/novpid/nopcid/pv"):
        base, user = by[(config, "kvm-6.18")], by[(config, mine)]
        assert user.get("op.invept-single", 0) > base.get("op.invept-single", 0)  # type: ignore[union-attr]


def test_input_errors_exit_2(tmp_path: Path) -> None:
    w = tiny(tmp_path)
    r = cost(w, "--plot", str(tmp_path / "c.pdf"))
    assert r.exit_code == 2 and "FILE.svg or FILE.png" in r.stderr
    r = cost(w, "--policy", "kvm-0.1")
    assert r.exit_code == 2 and "unknown policy" in r.stderr
    pol = tmp_path / "mine.py"
    pol.write_text(POLICIES)
    r = cost(w, "--policy", f"{pol}:Broken", "--accesses", "500")
    assert r.exit_code == 2 and "raised RuntimeError: boom" in r.stderr


def test_audit_finds_stale_hits_only_for_a_missing_flush(tmp_path: Path) -> None:
    """With --audit every TLB hit is checked against current memory: upstream versions never
    use a stale entry; a variant that skips the guest flush with VPID on does."""
    r = cost(
        "pv-flush-heavy",
        "--accesses",
        "20000",
        "--audit",
        "--json",
        "--policy",
        "kvm-6.18",
        "--policy",
        "bug-flush-tlb-guest-skips-invvpid",
    )
    assert r.exit_code == 0, r.stderr
    stale = {
        (rec["config"], rec["policy"]): rec["counts"].get("tlb.stale-hits", 0) for rec in records(r)
    }  # type: ignore[attr-defined]
    assert all(v == 0 for (c, p), v in stale.items() if p == "kvm-6.18")
    assert stale[("intel/vpid/nopcid/pv", "bug-flush-tlb-guest-skips-invvpid")] > 0


def test_cost_table_has_a_basis_for_every_figure() -> None:
    table = default_costs()
    for vendor in ("intel", "amd"):
        figures = table.cycles[vendor]
        assert figures
        for f in figures:
            assert f.source or f.assumption, f
            assert not (f.source and f.assumption), f
            assert f.category in CATEGORIES
        for c in table.capacity[vendor]:
            assert c.entries > 0 and (c.source or c.assumption)
        counters = {f.counter for f in figures}
        ops = {
            "intel": [
                o
                for o in ALL_OPS
                if not o.startswith(("tlb-control", "new-asid", "npf", "invlpga"))
            ],
            "amd": [
                o
                for o in ALL_OPS
                if not o.startswith(("inv", "vm-entry-", "vm-exit-", "vm", "ept"))
            ]
            + ["invlpg", "invlpga", "invpcid", "vm-exit"],
        }[vendor]
        missing = [o for o in ops if f"op.{o}" not in counters and o != "vm-entry"]
        assert not missing, (vendor, missing)
    intel_kinds = {"combined", "combined-psc", "guest-physical", "guest-physical-psc"}
    intel_kinds |= {"linear", "linear-psc"}  # shadow paging
    amd_kinds = {"asid", "asid-psc", "nested", "nested-psc"}
    assert set(table.capacities("intel")) == intel_kinds
    assert set(table.capacities("amd")) == amd_kinds
    assert (intel_kinds | amd_kinds) <= set(KIND_NAMES.values())


def test_cost_table_rejects_a_figure_without_basis() -> None:
    import pytest

    from kvmtlb.cost.costs import CostTableError

    text = (
        '[intel.cycles.x]\ncounter = "op.x"\ncycles = 1\ncategory = "flush"\n'
        '[amd.cycles.y]\ncounter = "op.y"\ncycles = 1\ncategory = "flush"\nsource = "s"\n'
    )
    with pytest.raises(CostTableError, match="exactly one of"):
        parse_costs(text)
