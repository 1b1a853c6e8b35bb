"""Nested VMX (kvm/nested_vmx.py, guest/l1.py, model/nested_native.py, model/nested_scenario.py).

The README's nested claim (the series' first patch) as a checked command; the ops' static
checks and lint; the docs' op table; the port's per-version details that the scenarios do not
pin (last_vpid at VMXON: bug #12; the vpid02 half of vmx_flush_tlb_all).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.check.explorer import explore
from kvmtlb.check.lint import warnings
from kvmtlb.cli import app
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.state import Vcpu
from kvmtlb.kvm.versions import Kvm618
from kvmtlb.model.nested_scenario import NESTED_OPS
from kvmtlb.model.scenario import ScenarioError, load, parse
from kvmtlb.model.system import build

ROOT = Path(__file__).parent.parent
SCEN = ROOT / "kvmtlb" / "scenarios"

HEAD = """name = "n"
[config]
vendor = "intel"
tdp = false
vcpus = 1
pcpus = 1
[guest]
"0x1000" = "0x10000 w"
[guest.l2]
"0x1000" = "0x11000 w"
[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"
[threads]
vcpu0 = \"\"\"
OPS
\"\"\"
"""


def scenario(ops: str, **config: str) -> str:
    text = HEAD.replace("OPS", ops)
    for k, v in config.items():
        text = re.sub(rf"^{k} = .*\n", "", text, flags=re.M)
        text = text.replace("[config]\n", f"[config]\n{k} = {v}\n")
    return text


EPT_HEAD = """name = "e"
[config]
vendor = "intel"
tdp = true
vcpus = 1
pcpus = 1
[guest]
"0x1000" = "0x10000 w"
[guest.l2]
"0x1000" = "0x40000 w"
[ept12]
"0x40000" = "0x11000 rwx"
[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"
"0x12000" = "0x82000 rwx"
[threads]
vcpu0 = \"\"\"
OPS
\"\"\"
"""


def ept_scenario(ops: str) -> str:
    """A nested-EPT scenario (kvm/nested_ept.py) running `ops` on vcpu0."""
    return EPT_HEAD.replace("OPS", ops.strip())


# -- the README's claim ------------------------------------------------------------------------
def test_readme_nested_claim() -> None:
    text = (ROOT / "README.md").read_text()
    part = text.split("## Checking a claim: the series' first patch", 1)[1].split("\n## ", 1)[0]
    (command,) = re.findall(r"```sh\n(.*?)\n```", part, re.S)
    args = command.split()[1:]
    args[1] = str(ROOT / args[1])
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output  # both as [expect] says
    recs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by = {r["policy"]: r for r in recs}
    assert by["kvm-5.7"]["label"] == "violation:host-isolation"
    assert by["kvm-5.8"]["label"] == "safe"
    steps = re.search(r"with a (\d+)-step trace", part)
    assert steps and len(by["kvm-5.7"]["trace"]) == int(steps.group(1))
    trace = json.dumps(by["kvm-5.7"]["trace"])
    assert "VMWRITE vpid = 0x2 (prepare_vmcs02_early_rare: VIRTUAL_PROCESSOR_ID)" in trace
    assert "INVVPID single-context VPID 0x1 (vpid_sync_vcpu_single)" in trace


def test_kvm_618_is_safe_on_the_claim() -> None:
    s = load(SCEN / "nested-remote-flush-in-l2.toml")
    assert explore(build(s, registry()["kvm-6.18"]())).label == "safe"


# -- static checks ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ops", "config", "message"),
    [
        ("vmresume", {}, "outside VMX operation"),
        ("vmxon\nvmresume", {}, "never launched"),
        ("vmxon\nvmcall", {}, "vmcall outside L2"),
        ("vmxon\nvmlaunch l2\nvmxoff", {}, "while L2 runs"),
        ("vmxon\nvmlaunch default", {}, "no guest page table named 'default'"),
        ("vmxon\ninvvpid 1 vpid=0", {}, "fails"),
        ("vmxon\ninvvpid 0 vpid=1", {}, "needs a GVA"),
        ("vmxon\nvmlaunch l2 vpid=70000", {}, "out of range"),
        ("vmxon\nvmlaunch l2\nset_cr4 pge=0", {}, "not modelled"),
        ("vmxon\nvmlaunch l2\nmap 0x1000 -> 0x10000 w", {}, "L1's page table"),
        ("vmxon\nvmxon", {}, "vmxon in VMX operation"),
        ("vmxon\nvmlaunch l2\nmov_cr3 l2", {"tdp": "true"}, "only through vmcs12"),
        ("vmxon", {"vpid": "false"}, "VPID in L0"),
        ("vmxon\nvmlaunch l2\nflush_tlb 0x1000 others", {"pv_tlb_flush": "true"}, "PV TLB flush"),
        ("vmxon\nvmlaunch l2\nflush_tlb all others", {}, "full flush toggles CR4.PGE"),
        ("vmxon\nvmptrld l2", {}, "no vmcs12 was launched on l2"),
        ("vmxon\nvmlaunch l2\nvmptrld l2", {}, "while L2 runs"),
        ("vmxon\nvmlaunch l2\nmov_cr3 l2\nvmcall\nvmptrld l2", {}, "mov_cr3 in a thread"),
        ("vmxon\nvmlaunch l2\nvmcall\nvmxoff\nvmxon\nvmptrld l2", {}, "since the last vmxon"),
        (
            "vmxon\nflush_tlb 0x1000 others\nvmlaunch l2\nflush_tlb 0x1000 others",
            {},
            "in L1 while L2 also shoots down",
        ),
    ],
)
def test_bad_nested_ops_are_input_errors(ops: str, config: dict[str, str], message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(scenario(ops, **config), "n.toml")
    assert message in str(e.value)
    assert e.value.line > 0 or "L0" in message


def test_cli_exit_code_2_on_a_bad_nested_op(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(scenario("vmxon\nvmcall"))
    result = CliRunner().invoke(app, ["check", str(f)])
    assert result.exit_code == 2
    assert "bad.toml:17" in result.output and "vmcall outside L2" in result.output


def test_vmptrld_takes_the_vpid_l1_left_in_that_vmcs12() -> None:
    """vmptrld's VPID is the vmcs12's: its vmlaunch's, then any vmresume vpid=N while current."""
    ops = "vmxon\nvmlaunch l2 vpid=3\nvmcall\nvmresume vpid=5\nvmcall\nvmlaunch l2 vpid=7\nvmcall"
    s = parse(scenario(ops + "\nvmptrld l2"), "n.toml")
    assert s.programs[0][-1].vpid == 7
    ops = "vmxon\nvmlaunch l2 vpid=3\nvmcall\nvmresume vpid=5\nvmcall\nvmptrld l2"
    s = parse(scenario(ops), "n.toml")
    assert s.programs[0][-1].vpid == 5


def test_l2_shootdown_ipi_waits_for_l2() -> None:
    """An IPI of L2's shootdown is handled by its target only while the target runs L2: a target
    that leaves L2 for good with the IPI pending deadlocks the sender (as on a real machine), and
    one that runs L2 to its end handles it."""
    text = (SCEN / "nested-l2-shootdown.toml").read_text()
    ok = explore(build(parse(text, "ok.toml"), registry()["kvm-6.18"]()))
    assert ok.label == "safe", ok.label
    gone = text.replace('vmlaunch l2 vpid=2\nread 0x1000\n"""', 'vmlaunch l2 vpid=2\nvmcall\n"""')
    assert gone != text
    r = explore(build(parse(gone, "gone.toml"), registry()["kvm-6.18"]()))
    assert r.label == "deadlock", r.label


def test_lint_nested() -> None:
    s = parse(scenario("vmxon\nvmlaunch l2 vpid=1\nvmcall\ninvvpid 1 vpid=5"), "n.toml")
    kinds = [w.kind for w in warnings(s)]
    assert kinds == ["invvpid-unused-vpid"]  # and no root-never-loaded for L2's table


# -- docs ---------------------------------------------------------------------------------------
def _nested_rows() -> list[list[str]]:
    doc = (ROOT / "docs" / "scenarios.md").read_text()
    body = doc.split("## Nested VMX", 1)[1].split("\n## ", 1)[0]
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in body.splitlines()
        if line.startswith("| `")
    ]


def test_nested_ops_are_documented() -> None:
    assert [r[0].strip("`") for r in _nested_rows()] == list(NESTED_OPS)


@pytest.mark.parametrize("example", [r[1].strip("`") for r in _nested_rows()])
def test_nested_op_examples_parse(example: str) -> None:
    before = {
        "vmxon": "",
        "vmxoff": "vmxon",
        "vmlaunch": "vmxon",
        "vmresume": "vmxon\nvmlaunch l2\nvmcall",
        "vmptrld": "vmxon\nvmlaunch l2\nvmcall",
        "invvpid": "vmxon\nvmlaunch l2\nvmcall",
        "vmcall": "vmxon\nvmlaunch l2",
        "vmrun": "",
        "invlpga": "",
        "invept": "vmxon",
        "ept_map": "vmxon",
        "ept_unmap": "vmxon",
        "npt_map": "vmrun l2\nvmcall",
        "npt_unmap": "vmrun l2\nvmcall",
    }[example.split()[0]]
    amd = example.split()[0] in ("vmrun", "invlpga")
    if example.split()[0] in ("invept", "ept_map", "ept_unmap"):
        text = ept_scenario(f"{before}\n{example}")
    elif example.split()[0] in ("npt_map", "npt_unmap"):
        text = ept_scenario(f"{before}\n{example}").replace('vendor = "intel"', 'vendor = "amd"')
        text = text.replace("[ept12]", "[npt12]")
    else:
        text = scenario(f"{before}\n{example}".strip(), **({"vendor": '"amd"'} if amd else {}))
    s = parse(text, "n.toml")
    assert s.programs[0][-1].describe().split()[0] == example.split()[0]


# -- the port's details -------------------------------------------------------------------------
def _after(policy: type[Kvm618], ops: str) -> Vcpu:
    """vcpu0 back in guest mode after running `ops` (the first interleaving, vCPU steps only)."""
    from kvmtlb.model.actions import apply, enabled, unfinished

    system = build(parse(scenario(ops), "n.toml"), policy())
    w = system.initial
    for _ in range(200):
        if not unfinished(system, w) and w.vcpus[0][1] == "guest":
            break
        acts = [a for a in enabled(system, w) if a.actor in ("vcpu0", "guest0")]
        w = apply(system, w, acts[0]).world
    return Vcpu(*w.vcpus[0])


class FixedLastVpid(Kvm618):
    """kvm-6.18 with Yosry Ahmed's fix of bug #12 (June 2026): last_vpid = 0 at VMXON."""

    name = "test-fixed-last-vpid"

    def enter_vmx_operation(self, k: Step, vcpu: Vcpu) -> None:
        super().enter_vmx_operation(k, vcpu)
        vcpu.last_vpid = 0


def test_vmxon_keeps_last_vpid_in_618_and_the_fix_resets_it() -> None:
    ops = "vmxon\nvmlaunch l2 vpid=1\nvmcall\nvmxoff\nvmxon"
    assert _after(Kvm618, ops).last_vpid == 1  # bug #12 as shipped
    assert _after(FixedLastVpid, ops).last_vpid == 0
    v = _after(Kvm618, ops)
    assert v.nested_vmxon and v.vpid02 == 2 and not v.guest_mode


def test_vmcs02_vpid_follows_vmcs12() -> None:
    on = _after(Kvm618, "vmxon\nvmlaunch l2 vpid=1")
    assert on.guest_mode and on.vmcs is not None and on.vmcs.vpid == on.vpid02 == 2
    off = _after(Kvm618, "vmxon\nvmlaunch l2 vpid=0")
    assert off.vmcs is not None and off.vmcs.vpid == off.vpid == 1
    back = _after(Kvm618, "vmxon\nvmlaunch l2 vpid=1\nvmcall")
    assert back.vmcs is not None and back.vmcs.vpid == 1 and not back.guest_mode


def test_bug_12_fix_makes_the_reuse_scenario_safe() -> None:
    """nested-vmxoff-vpid-reuse (extended suite): kvm-6.18 as released is unsafe there (its
    [expect]); with Yosry Ahmed's fix (last_vpid = 0 at VMXON) every interleaving is safe."""
    s = load(ROOT / "kvmtlb" / "scenarios" / "extended" / "nested-vmxoff-vpid-reuse.toml")
    assert s.expect["kvm-6.18"] == "violation:guest-transparency"
    assert explore(build(s, FixedLastVpid())).label == "safe"
