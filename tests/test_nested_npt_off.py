"""Nested SVM on an NPT L0 with nested paging off in vmcb12 (kvm/nested_ept01.py's root
machinery on SVM, kvm/nested_svm.py): L2's guest_mode root @ v6.18, L1's root @ v5.x, the
transition flushes, the native reference's vmcb12, the scenario checks, and the bug-zoo
variants the amd-nested-npt-off-* scenarios catch."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.check.explorer import explore
from kvmtlb.cli import app
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.requests import KVM_REQ_LOAD_MMU_PGD, KVM_REQ_MMU_SYNC, KVM_REQ_TLB_FLUSH_CURRENT
from kvmtlb.kvm.state import Vcpu
from kvmtlb.model.actions import apply, enabled, unfinished
from kvmtlb.model.scenario import ScenarioError, load, parse
from kvmtlb.model.system import System, World, build

SCEN = Path(__file__).resolve().parents[1] / "kvmtlb" / "scenarios"
VERSIONS = ("kvm-6.18", "kvm-5.8", "kvm-5.7")

HEAD = """name = "o"
[config]
vendor = "amd"
tdp = true
vcpus = 1
pcpus = 1
[guest]
"0x1000" = "0x10000 w"
[guest.l2]
"0x1000" = "0x11000 w"
[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"
"0x12000" = "0x82000 rwx"
[threads]
HOSTvcpu0 = \"\"\"
OPS
\"\"\"
"""

L2_RUN = "read 0x1000\nvmrun l2 asid=1\nread 0x1000\nvmcall\nread 0x1000"


def _text(ops: str, host: str = "") -> str:
    return HEAD.replace("OPS", ops).replace("HOST", f'host = """\n{host}\n"""\n' if host else "")


def _system(policy: str, ops: str) -> System:
    return build(parse(_text(ops), "o.toml"), registry()[policy]())


def _walk(system: System, until: int = 300) -> list[tuple[Vcpu, World, str]]:
    """vcpu0's record after each step of the first interleaving, with the world and the
    step's notes."""
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
        notes = " | ".join(f"{n.action} -- {n.detail}" for n in r.records)
        out.append((Vcpu(*w.vcpus[0]), w, notes))
    return out


def test_config_gives_l2_an_npt_root_of_its_own() -> None:
    cfg = _system("kvm-6.18", L2_RUN).kvm
    assert cfg.l2_on_ept01 and not cfg.nested_npt and not cfg.nested_ept
    assert cfg.l2_tdp_root not in (cfg.tdp_root, *cfg.tdp_roots)


@pytest.mark.parametrize(("policy", "own_root"), [(v, v == "kvm-6.18") for v in VERSIONS])
def test_l2_runs_on_its_guest_mode_root_only_in_618(policy: str, own_root: bool) -> None:
    """v6.18: nested_svm_load_cr3 after enter_guest_mode, role.guest_mode set: vmcb02's nCR3 is
    L2's root. v5.x: kvm_mmu_reset_context before enter_guest_mode: L2 runs on L1's root. The
    VMCB's guest CR3 is vmcb12's (L2's table) in every version, L1's again after #VMEXIT."""
    system = _system(policy, L2_RUN)
    cfg = system.kvm
    steps = _walk(system)
    l2_table = cfg.roots[cfg.root_names.index("l2")]
    in_l2 = [v for v, _, _ in steps if v.guest_mode and v.root_valid]
    assert in_l2
    for v in in_l2:
        assert v.vmcb is not None and v.vmcb.guest.cr3 == l2_table
        assert v.vmcb.ncr3 == (cfg.l2_tdp_root if own_root else cfg.tdp_root)
    last, _, _ = steps[-1]
    assert not last.guest_mode and last.vmcb is not None
    assert last.vmcb.ncr3 == cfg.tdp_root and last.vmcb.guest.cr3 == cfg.roots[0]
    assert last.parked_root_valid is own_root  # v6.18 keeps L2's root cached


def test_618_second_vmrun_switches_to_the_cached_root_and_flushes_the_asid() -> None:
    """nested_svm_transition_tlb_flush (sync + flush of the shared ASID) and kvm_mmu_new_pgd's
    fast switch (KVM_REQ_LOAD_MMU_PGD, no flush of its own) on the second VMRUN."""
    steps = _walk(_system("kvm-6.18", f"{L2_RUN}\nvmrun l2 asid=1\nread 0x1000"))
    runs = [i for i, (_, _, n) in enumerate(steps) if "nested_vmcb02_prepare_save" in n]
    assert len(runs) == 2
    vcpu, _, notes = steps[runs[1]]
    assert "fast_pgd_switch: the cached root of role guest_mode" in notes
    want = KVM_REQ_LOAD_MMU_PGD | KVM_REQ_MMU_SYNC | KVM_REQ_TLB_FLUSH_CURRENT
    assert vcpu.requests & want == want


@pytest.mark.parametrize("policy", ["kvm-5.8", "kvm-5.7"])
def test_5x_resets_the_mmu_on_every_transition(policy: str) -> None:
    steps = _walk(_system(policy, L2_RUN))
    resets = [n for _, _, n in steps if "kvm_mmu_reset_context" in n]
    assert len(resets) == 2  # VMRUN and #VMEXIT
    assert not any("role.guest_mode" in n for _, _, n in steps)


def test_native_vmcb12_has_nested_paging_off() -> None:
    steps = _walk(_system("kvm-6.18", "vmrun l2 asid=3\nread 0x1000"))
    _, w, _ = steps[-1]
    native = w.native.cpus[0].vmcb
    assert native is not None and not native.np_enable and native.asid == 3


@pytest.mark.parametrize(
    ("ops", "host", "message"),
    [
        ("vmrun l2 asid=1\nmov_cr3 l2", "", "only through vmcb12"),
        ("vmrun l2 asid=1\nflush_tlb 0x1000 others", "", "NPT L0 without nested NPT"),
        ("vmrun l2 asid=1", "remap 0x11000 -> 0x83000", "not modelled with nested EPT or NPT"),
        ("vmrun l2 asid=1\nnpt_unmap 0x40000", "", "needs nested NPT"),
    ],
)
def test_bad_input_is_an_error_with_a_line(ops: str, host: str, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(_text(ops, host), "o.toml")
    assert message in str(e.value)
    assert e.value.line > 0 and e.value.fix


def test_cli_exit_code_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(_text("vmrun l2 asid=1\nmov_cr3 l2"))
    result = CliRunner().invoke(app, ["check", str(f)])
    assert result.exit_code == 2
    assert "bad.toml:18" in result.output  # the mov_cr3 line


@pytest.mark.parametrize(
    ("scen", "bug", "prop", "most"),
    [
        ("amd-nested-npt-off-remote-flush-in-l2", "bug-nested-ept01-zap-skips-l2-root", "host", 25),
        ("amd-nested-npt-off-l1-l2-same-gva", "bug-nested-svm-no-transition-flush", "guest", 25),
        ("amd-nested-npt-off-invlpga", "bug-nested-svm-no-transition-flush", "guest", 40),
    ],
)
def test_bugs_are_caught_with_short_traces(scen: str, bug: str, prop: str, most: int) -> None:
    s = load(SCEN / f"{scen}.toml")
    for version in VERSIONS:
        assert explore(build(s, registry()[version]())).label == "safe"
    r = explore(build(s, registry()[bug]()))
    assert r.label.startswith(f"violation:{prop}")
    assert r.trace is not None and len(r.trace) <= most


def _l2_spte_after_zap(policy: str) -> tuple[int, int]:
    """Run vcpu0 until L2 has faulted 0x11000 into its root, then the host's zap of 0x11000 to
    its end (vCPU steps only where the host waits): the SPTE of 0x11000 in L2's root and in
    L1's."""
    system = build(parse(_text(L2_RUN, "zap 0x11000"), "o.toml"), registry()[policy]())
    cfg = system.kvm
    l2_slot = cfg.layout.slot(cfg.l2_tdp_root, 0x11000)
    w = system.initial
    for _ in range(200):
        if w.machine.memory.values[l2_slot]:
            break
        acts = [a for a in enabled(system, w) if a.actor in ("vcpu0", "guest0")]
        w = apply(system, w, acts[0]).world
    assert w.machine.memory.values[l2_slot]
    for _ in range(200):
        if "host" not in unfinished(system, w):
            break
        acts = enabled(system, w)
        host = [a for a in acts if a.actor == "host"]
        others = [a for a in acts if a.actor != "guest0"]
        w = apply(system, w, (host or others or acts)[0]).world
    assert "host" not in unfinished(system, w)
    mem = w.machine.memory.values
    return int(mem[l2_slot]), int(mem[cfg.layout.slot(cfg.tdp_root, 0x11000)])


@pytest.mark.parametrize(
    ("policy", "zapped"), [("kvm-6.18", True), ("bug-nested-ept01-zap-skips-l2-root", False)]
)
def test_zap_reaches_l2s_root_in_618(policy: str, zapped: bool) -> None:
    """kvm_unmap_gfn_range walks every root (the TDP MMU's roots of both roles): the host's zap
    of 0x11000 while L2 runs leaves no SPTE of it in L2's root; the variant leaves one."""
    l2, l1 = _l2_spte_after_zap(policy)
    assert l1 == 0
    assert (l2 == 0) is zapped
