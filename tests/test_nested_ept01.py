"""An L2 without nested EPT on an EPT L0 (kvm/nested_ept01.py): L2's own direct root of role
guest_mode, the PGD switch of nested transitions per version, the scenario checks, and the
bug-zoo variants of this mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.check.explorer import explore
from kvmtlb.cli import app
from kvmtlb.hw.vmx import make_eptp
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.requests import KVM_REQ_LOAD_MMU_PGD, KVM_REQ_TLB_FLUSH
from kvmtlb.kvm.state import Vcpu
from kvmtlb.model.actions import apply, enabled, unfinished
from kvmtlb.model.scenario import ScenarioError, load, parse
from kvmtlb.model.system import System, build
from tests.test_nested import SCEN, scenario

L2_RUN = "vmxon\nread 0x1000\nvmlaunch l2 vpid=1\nread 0x1000\nvmcall"


def _ept01(ops: str) -> str:
    return scenario(ops, tdp="true")


def _system(policy: str, ops: str) -> System:
    return build(parse(_ept01(ops), "e.toml"), registry()[policy]())


def _walk(system: System, until: int) -> list[tuple[Vcpu, str]]:
    """vcpu0's record after each step of the first interleaving, with the step's notes, until
    `until` steps or the end."""
    w = system.initial
    out = []
    for _ in range(until):
        if not unfinished(system, w) and w.vcpus[0][1] == "guest":
            break
        acts = [a for a in enabled(system, w) if a.actor in ("vcpu0", "guest0")]
        if not acts:
            break
        r = apply(system, w, acts[0])
        w = r.world
        out.append((Vcpu(*w.vcpus[0]), " | ".join(f"{n.action} -- {n.detail}" for n in r.records)))
    return out


def test_config_has_l2_root_of_its_own() -> None:
    system = _system("kvm-6.18", L2_RUN)
    cfg = system.kvm
    assert cfg.l2_on_ept01 and not cfg.nested_ept
    assert cfg.l2_tdp_root not in (cfg.tdp_root, *cfg.tdp_roots)


@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_l2_runs_on_another_eptp_and_l1_gets_its_root_back(policy: str) -> None:
    """role.guest_mode gives L2 a root of its own (EPTP02 != EPTP01) in every version; at the
    nested VM-Exit L1's root comes back from prev_roots (no reload)."""
    system = _system(policy, L2_RUN)
    cfg = system.kvm
    l2_eptp = make_eptp(cfg.l2_tdp_root)
    steps = _walk(system, 200)
    in_l2 = [v for v, _ in steps if v.guest_mode and v.root_valid]
    assert in_l2 and all(v.tdp_root == 1 for v in in_l2)
    assert any(f"EPTP {l2_eptp:#x}" in n or f"eptp = {l2_eptp:#x}" in n for _, n in steps)
    last, _ = steps[-1]
    assert not last.guest_mode and last.root_valid and last.tdp_root == 0
    assert last.parked_root_valid  # L2's root stays cached


@pytest.mark.parametrize(
    ("policy", "requests"),
    [
        ("kvm-6.18", KVM_REQ_LOAD_MMU_PGD),
        ("kvm-5.8", KVM_REQ_LOAD_MMU_PGD),
        ("kvm-5.7", KVM_REQ_LOAD_MMU_PGD | KVM_REQ_TLB_FLUSH),
    ],
)
def test_fast_switch_requests_per_version(policy: str, requests: int) -> None:
    """kvm_mmu_new_pgd @ v6.18 and __kvm_mmu_new_pgd(skip_tlb_flush) @ v5.8 only load the cached
    root; v5.7's kvm_mmu_new_cr3(vcpu, cr3, false) also asks for a flush of it."""
    system = _system(policy, L2_RUN)
    pol = registry()[policy]()
    steps = _walk(system, 200)
    exit_notes = [n for _, n in steps if "load_vmcs12_host_state: nested_vmx_load_cr3" in n]
    assert exit_notes
    assert "cached root of role L1's" in exit_notes[0]
    if requests & KVM_REQ_TLB_FLUSH:
        assert "KVM_REQ_TLB_FLUSH" in exit_notes[0]
    else:
        assert "no sync, no flush" in exit_notes[0]
    assert pol.name == policy


@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_invvpid_frees_no_root_with_ept(policy: str) -> None:
    """handle_invvpid frees roots only without EPT in L0 (v5.8, v6.18; v5.7 never)."""
    steps = _walk(_system(policy, f"{L2_RUN}\ninvvpid 1 vpid=1"), 200)
    last, _ = steps[-1]
    assert last.root_valid and last.parked_root_valid
    assert not any("free_guest_mode_roots" in n or "kvm_mmu_unload" in n for _, n in steps)


@pytest.mark.parametrize(
    ("ops", "host", "message"),
    [
        ("vmxon\nvmlaunch l2\nmov_cr3 l2", "", "only through vmcs12"),
        ("vmxon\nvmlaunch l2\nflush_tlb 0x1000 others", "", "EPT L0 without nested EPT"),
        ("vmxon\nvmlaunch l2", "remap 0x11000 -> 0x83000", "not modelled with nested EPT"),
    ],
)
def test_bad_input_is_an_error_with_a_line(ops: str, host: str, message: str) -> None:
    text = _ept01(ops)
    if host:
        text = text.replace('vcpu0 = """', f'host = """\n{host}\n"""\nvcpu0 = """')
    with pytest.raises(ScenarioError) as e:
        parse(text, "e.toml")
    assert message in str(e.value)
    assert e.value.line > 0


def test_cli_exit_code_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(_ept01("vmxon\nvmlaunch l2\nmov_cr3 l2"))
    result = CliRunner().invoke(app, ["check", str(f)])
    assert result.exit_code == 2
    assert "bad.toml:18" in result.output  # the mov_cr3 line


@pytest.mark.parametrize(
    ("scen", "bug", "prop", "most"),
    [
        ("nested-ept01-remote-flush-in-l2", "bug-nested-ept-remote-flush-current-only", "host", 35),
        ("nested-ept01-remote-flush-in-l2", "bug-nested-ept01-zap-skips-l2-root", "host", 25),
        ("nested-ept01-invvpid-1", "bug-nested-ept01-invvpid-vpid01", "guest", 40),
        ("nested-ept01-vmptrld-switch", "bug-nested-vmptrld-sets-last-vpid", "guest", 45),
    ],
)
def test_bugs_are_caught_with_short_traces(scen: str, bug: str, prop: str, most: int) -> None:
    s = load(SCEN / f"{scen}.toml")
    for version in ("kvm-6.18", "kvm-5.8", "kvm-5.7"):
        assert explore(build(s, registry()[version]())).label == "safe"
    r = explore(build(s, registry()[bug]()))
    assert r.label.startswith(f"violation:{prop}")
    assert r.trace is not None and len(r.trace) <= most


# -- several EPT12 tables (kvm/nested_ept.py: guest_mmu's cached roots) -------------------------
TWO_EPT12 = """name = "t"
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
[ept12.b]
"0x40000" = "0x12000 rwx"
EXTRA[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"
"0x12000" = "0x82000 rwx"
"0x13000" = "0x83000 rwx"
[threads]
vcpu0 = \"\"\"
OPS
\"\"\"
"""
SWITCH = "vmxon\nvmlaunch l2 vpid=1\nread 0x1000\nvmcall\nvmresume ept=b\nread 0x1000\nvmcall"


def _two(ops: str, extra: str = "") -> str:
    return TWO_EPT12.replace("OPS", ops).replace("EXTRA", extra)


def _after(policy: str, ops: str) -> Vcpu:
    system = build(parse(_two(ops), "t.toml"), registry()[policy]())
    steps = _walk(system, 400)
    return steps[-1][0]


def test_two_ept12_tables_have_their_own_roots() -> None:
    system = build(parse(_two("vmxon"), "t.toml"), registry()["kvm-6.18"]())
    cfg = system.kvm
    assert len(cfg.ept12_roots) == 2 and len(cfg.ept02_roots) == 2
    assert len(set(cfg.ept12_roots + cfg.ept02_roots)) == 4


@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_guest_mmu_caches_the_root_of_the_other_eptp(policy: str) -> None:
    """After L2 ran under both EPTPs, guest_mmu's current root is [ept12.b]'s and [ept12]'s is
    in prev_roots (the fast switch keeps the old current root)."""
    vcpu = _after(policy, SWITCH)
    assert vcpu.eptp12 == 1 and vcpu.ept02_cur == 1 and vcpu.parked_root_valid
    assert vcpu.ept02_prev == 0b01


@pytest.mark.parametrize(
    ("policy", "invept", "current", "cached"),
    [
        ("kvm-6.18", "invept 1 ept=default", True, 0b00),
        ("kvm-6.18", "invept 1", False, 0b01),
        ("kvm-6.18", "invept 2", False, 0b00),
        ("kvm-5.8", "invept 1 ept=default", True, 0b00),
        ("kvm-5.8", "invept 1", False, 0b01),
        ("kvm-5.7", "invept 1 ept=default", True, 0b01),
        ("kvm-5.7", "invept 2", True, 0b01),
    ],
)
def test_handle_invept_frees_the_roots_of_the_operand(
    policy: str, invept: str, current: bool, cached: int
) -> None:
    """handle_invept @ v5.8 / v6.18: single-context frees the roots whose EPTP matches (an
    unnamed operand is vmcs12's current EPTP, [ept12.b]'s), all-context every root; v5.7 none."""
    vcpu = _after(policy, f"{SWITCH}\n{invept}")
    assert vcpu.parked_root_valid is current
    assert vcpu.ept02_prev == cached


@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_vmptrld_frees_every_guest_mmu_root(policy: str) -> None:
    """nested_release_vmcs12 (handle_vmptrld of another vmcs12) frees KVM_MMU_ROOTS_ALL."""
    tables = '[guest.a]\n"0x1000" = "0x40000 w"\n'
    ops = "vmxon\nvmlaunch a vpid=1\nvmcall\nvmlaunch l2 vpid=2 ept=b\nread 0x1000\nvmcall"
    ops += "\nvmptrld a"
    system = build(parse(_two(ops, tables), "t.toml"), registry()[policy]())
    vcpu = _walk(system, 400)[-1][0]
    assert not vcpu.parked_root_valid and vcpu.ept02_prev == 0 and vcpu.eptp12 == 0


@pytest.mark.parametrize(
    ("ops", "extra", "message"),
    [
        ("vmxon\nvmlaunch l2 ept=nosuch", "", "no EPT12 table named 'nosuch'"),
        ("vmxon\ninvept 2 ept=b", "", "names no EPTP"),
        ("vmxon ept=b", "", "takes no ept=NAME"),
        ("vmxon", '[ept12.default]\n"0x40000" = "0x12000 rwx"\n', "names [ept12] itself"),
        (
            "vmxon",
            '[ept12.c]\n"0x40000" = "0x12000 rwx"\n[ept12.d]\n"0x40000" = "0x12000 rwx"\n',
            "a fourth EPT12 table",
        ),
    ],
)
def test_bad_ept12_input(ops: str, extra: str, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(_two(ops, extra), "t.toml")
    assert message in str(e.value)
    assert e.value.line > 0


def test_ept_name_without_ept12_is_an_error() -> None:
    with pytest.raises(ScenarioError) as e:
        parse(_ept01("vmxon\nvmlaunch l2 ept=b"), "e.toml")
    assert "no EPT12 table named 'b'" in str(e.value)


@pytest.mark.parametrize(
    ("scen", "bug"),
    [
        ("nested-ept-eptp-switch-invept-cached", "bug-nested-invept-frees-current-root"),
        ("nested-ept-eptp-switch-invept-cached", "bug-nested-invept-noop"),
        ("nested-ept-eptp-switch-invept-current", "bug-nested-invept-noop"),
    ],
)
def test_invept_bugs_are_caught_on_two_eptps(scen: str, bug: str) -> None:
    s = load(SCEN / f"{scen}.toml")
    for version in ("kvm-6.18", "kvm-5.8", "kvm-5.7"):
        assert explore(build(s, registry()[version]())).label == "safe"
    r = explore(build(s, registry()[bug]()))
    assert r.label == "violation:guest-transparency"
    assert r.trace is not None and len(r.trace) <= 60
