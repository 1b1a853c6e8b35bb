"""Nested NPT (kvm/nested_npt.py): the shadow NPT02 MMU per version, the native reference's
vmcb12 with nested paging, the [npt12] table's and NPT12 ops' static checks, and the bug-zoo
variants on the built-in amd-nested-npt-* scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.check.explorer import explore
from kvmtlb.cli import app
from kvmtlb.hw.paging import pte_addr
from kvmtlb.hw.walk import _npt_rights
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.state import Kvm, Vcpu
from kvmtlb.model.actions import apply, enabled, unfinished
from kvmtlb.model.scenario import ScenarioError, load, parse
from kvmtlb.model.system import World, build

SCEN = Path(__file__).resolve().parents[1] / "kvmtlb" / "scenarios"

NPT_HEAD = """name = "n"
[config]
vendor = "amd"
tdp = true
vcpus = 1
pcpus = 1
[guest]
"0x1000" = "0x10000 w"
[guest.l2]
"0x1000" = "0x40000 w"
[npt12]
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

L2_RUN = "vmrun l2 asid=1\nread 0x1000\nvmcall"


def npt_scenario(ops: str) -> str:
    """A nested-NPT scenario running `ops` on vcpu0."""
    return NPT_HEAD.replace("OPS", ops.strip())


def _run(policy: str, ops: str) -> tuple[Vcpu, Kvm, list[int], World, object]:
    """vcpu0 in guest mode after running `ops` (the first interleaving): its record, KVM's, the
    NPT02 leaf of L2 GPA 0x40000 as (host page, rights), the world and the system."""
    system = build(parse(npt_scenario(ops), "n.toml"), registry()[policy]())
    w = system.initial
    for _ in range(400):
        if not unfinished(system, w) and w.vcpus[0][1] == "guest":
            break
        acts = [a for a in enabled(system, w) if a.actor in ("vcpu0", "guest0")]
        w = apply(system, w, acts[0]).world
    cfg = system.kvm
    spte = w.machine.memory.values[cfg.layout.slot(cfg.npt02_root, 0x40000)]
    return Vcpu(*w.vcpus[0]), Kvm(*w.kvm), [pte_addr(spte), _npt_rights(spte)], w, system


@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_npt02_spte_is_npt12_then_npt01(policy: str) -> None:
    """FNAME(fetch) over NPT12: L2 GPA 0x40000 -> NPT12 -> L1 GPA 0x11000 -> host page
    0x81000, with NPT12's rights cut by the memslot's."""
    _, _, spte, _, _ = _run(policy, "vmrun l2 asid=1\nread 0x1000")
    assert spte == [0x81000, 7]


def test_vmcb02_runs_on_npt02_and_vmcb01_on_npt01() -> None:
    """svm_load_mmu_pgd: nCR3 is NPT02's root while L2 runs, NPT01's once L1 runs again; the
    native reference's vmcb12 has nested paging on, with nCR3 = NPT12."""
    vcpu, _, _, w, system = _run("kvm-6.18", "vmrun l2 asid=1\nread 0x1000")
    cfg = system.kvm  # type: ignore[attr-defined]
    assert vcpu.guest_mode and vcpu.vmcb is not None
    assert vcpu.vmcb.ncr3 == cfg.npt02_root
    native = w.native.cpus[0].vmcb
    assert native.np_enable and native.ncr3 == cfg.npt12_root
    vcpu, _, _, _, _ = _run("kvm-6.18", f"{L2_RUN}\nread 0x1000")
    assert not vcpu.guest_mode and vcpu.vmcb is not None
    assert vcpu.vmcb.ncr3 == cfg.tdp_root


@pytest.mark.parametrize(
    ("policy", "kept"), [("kvm-6.18", True), ("kvm-5.8", False), ("kvm-5.7", False)]
)
def test_vmexit_keeps_the_npt02_root_only_in_618(policy: str, kept: bool) -> None:
    """nested_svm_uninit_mmu_context @ v6.18 leaves guest_mmu's root for the next VMRUN; v5.x's
    nested_svm_vmexit unloads every root (kvm_mmu_reset_context)."""
    vcpu, _, _, _, _ = _run(policy, f"{L2_RUN}\nread 0x1000")
    assert vcpu.parked_root_valid is kept


def test_npt12_store_unsyncs_then_lands() -> None:
    """L1's first store to NPT12 exits (a #NPF on the write-tracked table) and unsyncs the NPT02
    page; the retried store lands, and NPT02 keeps the old SPTE until a sync."""
    _, kvm, spte, _, _ = _run("kvm-6.18", f"{L2_RUN}\nnpt_map 0x40000 -> 0x12000 rwx\nread 0x1000")
    assert kvm.ept02_unsync == 1
    assert spte == [0x81000, 7]


@pytest.mark.parametrize("policy", ["kvm-6.18", "kvm-5.8", "kvm-5.7"])
def test_every_vmrun_syncs_npt02(policy: str) -> None:
    """v6.18: KVM_REQ_MMU_SYNC of nested_svm_transition_tlb_flush; v5.x: the reload after
    kvm_mmu_reset_context. Either drops the SPTE of the remapped L2 GPA, whatever vmcb12's
    TLB_CONTROL."""
    ops = f"{L2_RUN}\nnpt_map 0x40000 -> 0x12000 rwx\nvmrun l2 asid=1"
    _, kvm, spte, _, _ = _run(policy, ops)
    assert kvm.ept02_unsync == 0
    assert spte == [0, 0]


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ("npt_map 0x40000 -> 0x13000 rwx", "not mapped in [host]"),
        ("npt_map 0x40000 -> 0x12000 w", "npt_map takes"),
        ("npt_map 0x40000 0x12000", "npt_map takes"),
        ("npt_unmap", "npt_unmap takes"),
        ("vmrun l2 asid=1\nnpt_unmap 0x40000", "while L2 runs"),
        ("vmxon", "is a VMX instruction"),
    ],
)
def test_bad_npt_ops_are_input_errors(ops: str, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(npt_scenario(ops), "n.toml")
    assert message in str(e.value)
    assert e.value.line > 0 and e.value.fix


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('"0x40000" = "0x11000 rwx"', '"0x40000" = "0x13000 rwx"', "not mapped in [host]"),
        ('"0x40000" = "0x11000 rwx"', '"0x10000" = "0x11000 rwx"', "also an L1 GPA"),
        ('"0x40000" = "0x11000 rwx"', '"0x40000" = "0x11000 wx"', "bad NPT12 entry"),
        ('"0x40000" = "0x11000 rwx"', '"0x40000" = "0x11000 x"', "bad NPT12 entry"),
        ("tdp = true", "tdp = false", "needs an AMD L0 with NPT"),
        ('vendor = "amd"', 'vendor = "intel"', "needs an AMD L0 with NPT"),
    ],
)
def test_bad_npt12_tables_are_input_errors(old: str, new: str, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(npt_scenario(L2_RUN).replace(old, new), "n.toml")
    assert message in str(e.value)


def test_nested_svm_on_npt_without_npt12_parses_and_npt_ops_need_it() -> None:
    """Without [npt12] an NPT L0 runs L2 with nested paging off (tests/test_nested_npt_off.py);
    NPT12 ops still need the table."""
    text = npt_scenario(L2_RUN).replace('[npt12]\n"0x40000" = "0x11000 rwx"\n', "")
    parse(text.replace('"0x1000" = "0x40000 w"', '"0x1000" = "0x11000 w"'), "n.toml")
    text = npt_scenario("npt_unmap 0x40000").replace("tdp = true", "tdp = false")
    text = text.replace('[npt12]\n"0x40000" = "0x11000 rwx"\n', "")
    with pytest.raises(ScenarioError) as e:
        parse(text.replace('"0x1000" = "0x40000 w"', '"0x1000" = "0x11000 w"'), "n.toml")
    assert "needs nested NPT" in str(e.value)


def test_host_ops_outside_zap_are_input_errors() -> None:
    text = npt_scenario(L2_RUN).replace("[threads]\n", '[threads]\nhost = "wrprotect 0x11000"\n')
    with pytest.raises(ScenarioError) as e:
        parse(text, "n.toml")
    assert "not modelled with nested EPT or NPT" in str(e.value)


def test_check_names_file_and_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(npt_scenario(f"{L2_RUN}\nnpt_map 0x40000 -> 0x12000 w"))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:" in result.output and "npt_map takes" in result.output


@pytest.mark.parametrize(
    ("scenario", "bug", "label"),
    [
        (
            "amd-nested-npt-edit-tlb-control",
            "bug-nsvm-npt-transition-no-sync",
            "violation:guest-transparency",
        ),
        (
            "amd-nested-npt-unmap-npf",
            "bug-nsvm-npt-transition-no-sync",
            "violation:guest-transparency",
        ),
        (
            "amd-nested-npt-remote-flush-in-l2",
            "bug-nsvm-npt-zap-skips-npt02",
            "violation:host-isolation",
        ),
    ],
)
def test_bugs_are_caught_where_upstream_is_safe(scenario: str, bug: str, label: str) -> None:
    s = load(SCEN / f"{scenario}.toml")
    assert explore(build(s, registry()[bug]())).label == label
    for version in ("kvm-6.18", "kvm-5.8", "kvm-5.7"):
        assert explore(build(s, registry()[version]())).label == "safe"


def test_no_sync_bug_is_safe_without_a_flush_request() -> None:
    """Without TLB_CONTROL L1 may see either page natively: the missing sync shows L2 only what
    a stale nested translation could, so the variant is caught only when L1 asks for a flush."""
    s = load(SCEN / "amd-nested-npt-edit-no-flush.toml")
    assert explore(build(s, registry()["bug-nsvm-npt-transition-no-sync"]())).label == "safe"


def test_lint_warns_of_an_npt12_store_no_l2_table_uses() -> None:
    from kvmtlb.check.lint import warnings

    s = parse(npt_scenario(f"{L2_RUN}\nnpt_map 0x50000 -> 0x12000 rwx"), "n.toml")
    assert [w.kind for w in warnings(s)] == ["npt12-unused-gpa"]
    s = parse(npt_scenario(f"{L2_RUN}\nnpt_map 0x40000 -> 0x12000 rwx"), "n.toml")
    assert [w.kind for w in warnings(s)] == []
