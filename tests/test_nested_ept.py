"""Nested EPT (kvm/nested_ept.py): the shadow EPT02 MMU, handle_invept per version, the EPT12
ops' static checks, and what the built-in scenarios do not pin."""

from __future__ import annotations

import pytest

from kvmtlb.check.explorer import explore
from kvmtlb.hw.paging import ept_rights, pte_addr
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.state import Kvm, Vcpu
from kvmtlb.model.actions import apply, enabled, unfinished
from kvmtlb.model.scenario import ScenarioError, parse
from kvmtlb.model.system import build
from tests.test_nested import ept_scenario, scenario


def _run(policy: str, ops: str) -> tuple[Vcpu, Kvm, list[int]]:
    """vcpu0 back in guest mode after running `ops` (the first interleaving): its record, KVM's,
    and the EPT02 leaf of L2 GPA 0x40000 as (host page, rights)."""
    system = build(parse(ept_scenario(ops), "e.toml"), registry()[policy]())
    w = system.initial
    for _ in range(400):
        if not unfinished(system, w) and w.vcpus[0][1] == "guest":
            break
        acts = [a for a in enabled(system, w) if a.actor in ("vcpu0", "guest0")]
        w = apply(system, w, acts[0]).world
    cfg = system.kvm
    spte = w.machine.memory.values[cfg.layout.slot(cfg.ept02_root, 0x40000)]
    return Vcpu(*w.vcpus[0]), Kvm(*w.kvm), [pte_addr(spte), ept_rights(spte)]


L2_RUN = "vmxon\nvmlaunch l2 vpid=1\nread 0x1000\nvmcall"


def test_ept02_spte_is_ept12_then_ept01() -> None:
    """FNAME(fetch) of the EPT walker: L2 GPA 0x40000 -> EPT12 -> L1 GPA 0x11000 -> EPT01 ->
    host page 0x81000, with EPT12's rights cut by the memslot's."""
    _, _, spte = _run("kvm-6.18", L2_RUN)
    assert spte == [0x81000, 7]


@pytest.mark.parametrize(
    ("policy", "freed"), [("kvm-6.18", True), ("kvm-5.8", True), ("kvm-5.7", False)]
)
@pytest.mark.parametrize("kind", [1, 2])
def test_handle_invept_frees_guest_mmu_roots(policy: str, freed: bool, kind: int) -> None:
    """handle_invept @ v6.18 / v5.8.18 frees the EPT02 root (single context: the matching EPTP);
    v5.7 does nothing (bug #3's pre-image)."""
    vcpu, _, _ = _run(policy, f"{L2_RUN}\ninvept {kind}")
    assert not vcpu.guest_mode
    assert vcpu.parked_root_valid is not freed


def test_ept12_store_unsyncs_then_lands() -> None:
    """L1's first store to EPT12 exits and unsyncs the EPT02 page; the retried store lands, and
    EPT02 keeps the old SPTE (no sync until a sync point)."""
    _, kvm, spte = _run("kvm-6.18", f"{L2_RUN}\nept_map 0x40000 -> 0x12000 rwx")
    assert kvm.ept02_unsync == 1
    assert spte == [0x81000, 7]


@pytest.mark.parametrize(
    ("policy", "synced"), [("kvm-6.18", False), ("kvm-5.8", False), ("kvm-5.7", True)]
)
def test_nested_vmenter_syncs_ept02_only_in_57(policy: str, synced: bool) -> None:
    """kvm_init_shadow_ept_mmu @ v5.7: __kvm_mmu_new_cr3(.., false) syncs (KVM_REQ_MMU_SYNC) and
    flushes the reused EPT02 root; v5.8 and v6.18 skip both."""
    ops = f"{L2_RUN}\nept_map 0x40000 -> 0x12000 rwx\nvmresume\nvmcall"
    _, kvm, spte = _run(policy, ops)
    assert (kvm.ept02_unsync == 0) is synced
    assert (spte == [0, 0]) is synced  # the sync drops the SPTE of a remapped L2 GPA


@pytest.mark.parametrize(
    ("ops", "config", "message"),
    [
        ("vmxon\ninvept 3", {}, "invept takes TYPE"),
        ("vmxon\nept_map 0x40000 -> 0x13000 rwx", {}, "not mapped in [host]"),
        ("vmxon\nept_map 0x40000 -> 0x12000 w", {}, "misconfiguration"),
        ("vmxon\nept_map 0x40000 0x12000", {}, "ept_map takes"),
    ],
)
def test_bad_ept_ops_are_input_errors(ops: str, config: dict[str, str], message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(ept_scenario(ops), "e.toml")
    assert message in str(e.value)


def test_ept_ops_need_nested_ept() -> None:
    with pytest.raises(ScenarioError) as e:
        parse(scenario("vmxon\ninvept 1"), "n.toml")
    assert "needs nested EPT" in str(e.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('"0x40000" = "0x11000 rwx"', '"0x40000" = "0x13000 rwx"', "not mapped in [host]"),
        ('"0x40000" = "0x11000 rwx"', '"0x10000" = "0x11000 rwx"', "also an L1 GPA"),
        ('"0x40000" = "0x11000 rwx"', '"0x40000" = "0x11000 wx"', "bad EPT12 entry"),
        ("tdp = true", "tdp = false", "needs an Intel L0 with EPT"),
    ],
)
def test_bad_ept12_tables_are_input_errors(old: str, new: str, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(ept_scenario("vmxon").replace(old, new), "e.toml")
    assert message in str(e.value)


def test_host_ops_outside_zap_are_input_errors() -> None:
    text = ept_scenario("vmxon").replace("[threads]\n", '[threads]\nhost = "wrprotect 0x11000"\n')
    with pytest.raises(ScenarioError) as e:
        parse(text, "e.toml")
    assert "not modelled with nested EPT" in str(e.value)


def test_invept_noop_bug_is_caught_and_57_is_not() -> None:
    """Bug #3: kvm-6.18 without handle_invept's frees shows L2 the L1 page L1 remapped away
    from; kvm-5.7, whose handle_invept did the same nothing, is safe: its nested VM-Enter
    synced and flushed EPT02."""
    ops = f"{L2_RUN}\nept_map 0x40000 -> 0x12000 rwx\ninvept 1\nvmresume\nread 0x1000"
    s = parse(ept_scenario(ops), "e.toml")
    bug = explore(build(s, registry()["bug-nested-invept-noop"]()))
    assert bug.label == "violation:guest-transparency"
    assert explore(build(s, registry()["kvm-5.7"]())).label == "safe"


def test_lint_warns_of_an_ept12_store_no_l2_table_uses() -> None:
    from kvmtlb.check.lint import warnings

    s = parse(ept_scenario("vmxon\nvmlaunch l2\nvmcall\nept_map 0x50000 -> 0x12000 rwx"), "e.toml")
    assert [w.kind for w in warnings(s)] == ["ept12-unused-gpa"]
    s = parse(ept_scenario("vmxon\nvmlaunch l2\nvmcall\nept_map 0x40000 -> 0x12000 rwx"), "e.toml")
    assert [w.kind for w in warnings(s)] == []
