"""KVM_SET_SREGS as a host op (`set_sregs`, kvm/sregs.py, host/thread.py:set_sregs).

- __set_sregs @ every version: a changed CR3 or CR4 resets the MMU context (the roots are
  unloaded; kvm_mmu_load flushes the current context before the next entry); v6.18 also requests
  KVM_REQ_TLB_FLUSH_GUEST (4346db6e6e7a, v6.7), v5.7/v5.8 do not; an unchanged write does neither.
- The native reference (model/native.py:load_state): a change leaves the vCPU's native processor
  with nothing cached but what the fill rule takes from the current tables; no change is no event.
- The host op waits until its vCPU is loaded and where KVM_RUN can return to userspace, and
  leaves it loaded on the same pCPU at the top of the run loop.
- The bug-zoo variant that ignores a CR3 change is caught with TDP on both vendors and with
  shadow paging; the write-back of unchanged registers raises no alarm.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kvmsetups import RecStep

from kvmtlb.check.explorer import explore
from kvmtlb.check.lint import warnings
from kvmtlb.host.ops import SetSregsOp
from kvmtlb.host.thread import host_actions, host_step
from kvmtlb.hw.cpu import CR4_PGE, CR4_SMEP
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.requests import KVM_REQ_TLB_FLUSH_GUEST
from kvmtlb.model.scenario import ScenarioError, load, parse
from kvmtlb.model.system import System, build

VERSIONS = ("kvm-6.18", "kvm-5.8", "kvm-5.7")
SCENARIOS = Path(__file__).parent.parent / "kvmtlb" / "scenarios"


def text(vendor: str = "intel", host: str = "set_sregs vcpu0 cr3=b", **config: str) -> str:
    knobs = "".join(f"{k} = {v}\n" for k, v in config.items())
    return (
        'name = "sregs-test"\n'
        f'[config]\nvendor = "{vendor}"\nvcpus = 1\npcpus = 1\n{knobs}\n'
        '[guest]\n"0x1000" = "0x10000 w"\n\n[guest.b]\n"0x1000" = "0x11000 w"\n\n'
        '[host]\n"0x10000" = "0x80000 rwx"\n"0x11000" = "0x81000 rwx"\n\n'
        f'[threads]\nvcpu0 = """\nread 0x1000\n"""\nhost = """\n{host}\n"""\n'
    )


def booted(policy: str, vendor: str = "intel", host: str = "set_sregs vcpu0 cr3=b", **config: str):  # type: ignore[no-untyped-def]
    sys_: System = build(parse(text(vendor, host, **config), "<sregs>"), registry()[policy]())
    k = RecStep.thaw(sys_.kvm, sys_.initial, "test", True)
    assert isinstance(k, RecStep)
    return sys_, k


# -- parsing ------------------------------------------------------------------------------------
def test_parse_and_describe() -> None:
    s = parse(text(host="set_sregs vcpu0 cr3=b pcid=1 pge=0 smep=1", pcid="true"), "<t>")
    (op,) = s.host_program
    assert op == SetSregsOp(0, "b", 1, 0, 1, op.line)
    assert op.describe() == "set_sregs vcpu0 cr3=b pcid=1 pge=0 smep=1"
    (cr4_only,) = parse(text(host="set_sregs vcpu0 smep=1"), "<t>").host_program
    assert cr4_only == SetSregsOp(0, "", -1, -1, 1, cr4_only.line)


@pytest.mark.parametrize(
    ("host", "config", "message"),
    [
        ("set_sregs vcpu0 pcide=0", {}, "CR4.PCIDE stays"),
        ("set_sregs vcpu0 efer=0", {}, "CR0 and EFER are not written"),
        ("set_sregs vcpu0 cr3=nosuch", {}, "no guest page table named"),
        ("set_sregs vcpu0 pcid=1", {"pcid": "true"}, "without cr3=ROOT"),
        ("set_sregs vcpu0 cr3=b pcid=1", {}, "needs CR4.PCIDE"),
        ("set_sregs vcpu0 pge=2", {}, "out of range"),
        ("set_sregs vcpu0 pge=1 pge=0", {}, "twice"),
        ("set_sregs vcpu0", {}, "writes no register"),
        ("set_sregs vcpu7 pge=0", {}, "vcpu7"),
    ],
)
def test_parse_errors(host: str, config: dict[str, str], message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(text(host=host, **config), "<t>")
    assert message in str(e.value)
    assert e.value.line > 0


def test_lint_set_sregs_on_a_held_vcpu_and_loaded_root() -> None:
    s = parse(text(host="preempt vcpu0\nset_sregs vcpu0 cr3=b\nresume vcpu0"), "<t>")
    kinds = [w.kind for w in warnings(s)]
    assert "sregs-held" in kinds
    assert "root-never-loaded" not in kinds  # set_sregs loads [guest.b]


# -- KVM's side -----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize("tdp", ["true", "false"])
def test_changed_cr3_resets_the_mmu(version: str, vendor: str, tdp: str) -> None:
    sys_, k = booted(version, vendor, tdp=tdp)
    pol, vcpu = sys_.policy, k.vcpus[0]
    assert vcpu.pc == "guest" and vcpu.root_valid
    cpu = vcpu.cpu
    host_step(k, pol, sys_.scenario.host_program)
    assert vcpu.loaded and vcpu.cpu == cpu and vcpu.pc == "vcpu_enter_guest"
    assert not vcpu.root_valid  # kvm_mmu_reset_context unloaded the roots
    assert pol.kvm_read_cr3(k, vcpu) & ~0xFFF == sys_.kvm.roots[1]
    assert bool(vcpu.requests & KVM_REQ_TLB_FLUSH_GUEST) is (version == "kvm-6.18")
    # the native reference has the new CR3
    assert k.native.cpus[0].regs.cr3 == sys_.kvm.roots[1]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize("tdp", ["true", "false"])
def test_unchanged_registers_change_nothing(version: str, vendor: str, tdp: str) -> None:
    sys_, k = booted(version, vendor, host="set_sregs vcpu0 cr3=default pge=1", tdp=tdp)
    pol, vcpu = sys_.policy, k.vcpus[0]
    native = k.native
    host_step(k, pol, sys_.scenario.host_program)
    assert vcpu.root_valid
    assert not vcpu.requests & KVM_REQ_TLB_FLUSH_GUEST
    assert k.native is native  # no event on the native reference
    assert "mmu_reset_needed" not in " ".join(str(t) for t in k.timeline)


@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_cr4_bits(vendor: str) -> None:
    sys_, k = booted("kvm-6.18", vendor, host="set_sregs vcpu0 pge=0 smep=1")
    pol, vcpu = sys_.policy, k.vcpus[0]
    old = pol.kvm_read_cr4(k, vcpu)
    assert old & CR4_PGE and not old & CR4_SMEP
    host_step(k, pol, sys_.scenario.host_program)
    new = pol.kvm_read_cr4(k, vcpu)
    assert new == (old & ~CR4_PGE) | CR4_SMEP
    assert k.native.cpus[0].regs.cr4 == new
    assert not vcpu.root_valid


def test_native_load_state_empties_then_refills() -> None:
    sys_, k = booted("kvm-6.18")
    native = k.native
    before = native.cpus[0].may
    assert before
    same = native.load_state(0, native.cpus[0].regs.cr3, native.cpus[0].regs.cr4)
    assert same is native
    moved = native.load_state(0, sys_.kvm.roots[1], native.cpus[0].regs.cr4)
    held = native.config.universe.members(moved.cpus[0].may)
    # only what a walk of the new table makes: no entry of the old table's leaf for 0x1000
    outcomes = moved.outcomes(0, 0x1000, "read")
    assert {o.gpa for o in outcomes if hasattr(o, "gpa")} == {0x11000}
    assert held


# -- the host op's enabling -----------------------------------------------------------------------
def test_waits_for_a_held_vcpu_and_runs_in_guest_mode() -> None:
    sys_ = build(
        parse(text(host="preempt vcpu0\nset_sregs vcpu0 cr3=b\nresume vcpu0"), "<t>"),
        registry()["kvm-6.18"](),
    )
    program = sys_.scenario.host_program
    k = RecStep.thaw(sys_.kvm, sys_.initial, "test", True)
    assert host_actions(sys_.initial, sys_.policy, program) == ["step"]
    host_step(k, sys_.policy, program)  # preempt
    w = k.freeze()
    assert host_actions(w, sys_.policy, program) == []  # the vCPU is not loaded


@pytest.mark.parametrize("pc", ["handle_exit", "vcpu_enter_guest:mode", "vcpu_enter_guest:recheck"])
def test_not_enabled_inside_kvm_run(pc: str) -> None:
    sys_, k = booted("kvm-6.18")
    k.vcpus[0].pc = pc
    w = k.freeze()
    assert host_actions(w, sys_.policy, sys_.scenario.host_program) == []


# -- verdicts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["set-sregs-cr3", "amd-set-sregs-cr3", "shadow-set-sregs-cached-root"]
)
def test_the_variant_is_caught(name: str) -> None:
    scenario = load(SCENARIOS / f"{name}.toml", set(registry()))
    r = explore(build(scenario, registry()["bug-set-sregs-cr3-no-reset"]()))
    assert r.label == "violation:guest-transparency"
    for version in VERSIONS:
        assert explore(build(scenario, registry()[version]())).verdict == "safe"


def test_write_back_is_no_false_alarm() -> None:
    """The guest's unflushed remap may be seen across a write-back of unchanged registers, on
    the native reference as well: safe under the variant too (it only concerns CR3 changes)."""
    scenario = load(SCENARIOS / "set-sregs-unchanged.toml", set(registry()))
    for name in (*VERSIONS, "bug-set-sregs-cr3-no-reset"):
        assert explore(build(scenario, registry()[name]())).verdict == "safe"
