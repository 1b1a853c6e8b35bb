"""A second VM ([vm1], kvmtlb/kvm/vm.py) and memslot deletion (kvmtlb/kvm/memslot.py), issue 15:
the parser's checks, the world at boot, what kvm_destroy_vm hands back to the shared pools, the
vm-isolation property, and the steps of a memslot deletion."""

from __future__ import annotations

import pytest
from kvmsetups import thaw

from kvmtlb.check.explorer import explore
from kvmtlb.check.runner import builtin_scenarios
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.state import ROOT_FREE, ROOT_VALID
from kvmtlb.model.scenario import ScenarioError, load, parse
from kvmtlb.model.system import build

BUILTIN = {p.stem: p for p in builtin_scenarios()}
TWO_VMS = """name = "two"
[config]
vendor = "VENDOR"
[guest]
"0x1000" = "0x10000 w"
[host]
"0x10000" = "0x80000 rwx"
[vm1]
vcpus = ["vcpu1"]
[vm1.guest]
"0x1000" = "0x20000 w"
[vm1.host]
"0x20000" = "0x90000 rwx"
[threads]
vcpu0 = \"\"\"
read 0x1000
\"\"\"
vcpu1 = \"\"\"
read 0x1000
\"\"\"
host = \"\"\"
HOST
\"\"\"
"""


def two_vms(vendor: str = "intel", host: str = "preempt vcpu0") -> str:
    return TWO_VMS.replace("VENDOR", vendor).replace("HOST", host)


@pytest.mark.parametrize(
    ("edit", "message", "line"),
    [
        (("[config]", "[config]\ntdp = false"), "needs tdp = true", 9),
        (('"0x20000" = "0x90000 rwx"', '"0x10000" = "0x90000 rwx"'), "is a frame of both VMs", 13),
        (('"0x20000" = "0x90000 rwx"', '"0x20000" = "0x80000 rwx"'), "backs two GPAs", 13),
        (('vcpus = ["vcpu1"]', 'vcpus = ["vcpu0", "vcpu1"]'), "the first VM has none", 9),
        (('vcpus = ["vcpu1"]', 'vcpus = ["vcpu5"]'), "unknown vCPU", 9),
        (('vcpus = ["vcpu1"]', "vcpus = 1"), "needs vcpus", 9),
        (("preempt vcpu0", "zap 0x10000"), "not supported in a scenario with two VMs", 22),
        (("preempt vcpu0", "destroy vm0\nresume vcpu0"), "after its VM was destroyed", 23),
        (("preempt vcpu0", "destroy vm1\ndestroy vm1"), "destroyed twice", 23),
        (("preempt vcpu0", "destroy vm2"), "unknown VM", 22),
        (("preempt vcpu0", "create vcpu0"), "belongs to the first VM", 22),
        (("preempt vcpu0", "preempt vcpu1\ncreate vcpu1"), "before vcpu1 is created", 22),
        (('vcpu1 = """\nread', 'vcpu1 = """\nmov_cr3 default\nread'), "mov_cr3 is not", 19),
    ],
)
def test_bad_two_vm_files_name_the_line(edit: tuple[str, str], message: str, line: int) -> None:
    text = two_vms().replace(*edit)
    assert text != two_vms()
    with pytest.raises(ScenarioError) as e:
        parse(text, "two.toml", set(registry()))
    assert message in str(e.value), str(e.value)
    if line:
        assert f"two.toml:{line}:" in str(e.value), str(e.value)


def test_create_and_destroy_need_a_second_vm() -> None:
    text = two_vms()
    one = text[: text.index("[vm1]")] + text[text.index("[threads]") :]
    one = one.replace('vcpu1 = """\nread 0x1000\n"""\n', "")
    for op in ("destroy vm0", "create vcpu1"):
        with pytest.raises(ScenarioError, match="needs a second VM"):
            parse(one.replace("preempt vcpu0", op), "one.toml")


@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_boot_gives_each_vm_its_page_table_and_root(vendor: str) -> None:
    sys_ = build(parse(two_vms(vendor)), registry()["kvm-6.18"]())
    k = thaw(sys_)
    cfg = k.config
    assert cfg.vm_of == (0, 1) and cfg.gpa_vm == (0, 1)
    assert cfg.start_root(0) != cfg.start_root(1)
    assert k.kvm.root_state == (ROOT_VALID, ROOT_VALID) and k.kvm.root_vm == (0, 1)
    assert [v.tdp_root for v in k.vcpus] == [0, 1]
    assert [v.cr3 for v in k.vcpus] == [cfg.start_root(0), cfg.start_root(1)]
    assert cfg.page_vm(0x80000) == 0 and cfg.page_vm(0x90000) == 1


def test_a_created_vcpu_does_not_exist_at_boot() -> None:
    sys_ = build(parse(two_vms(host="destroy vm0\ncreate vcpu1")), registry()["kvm-6.18"]())
    k = thaw(sys_)
    assert k.vcpus[1].vmcs is None and not k.vcpus[1].loaded
    assert k.host.held == 0b10
    assert k.kvm.vpid_bitmap == 0b11  # only vcpu0's VPID 1
    assert k.kvm.root_state == (ROOT_VALID, ROOT_FREE)


def test_destroy_hands_back_the_vpid_and_the_root_page_without_a_flush() -> None:
    sys_ = build(parse(two_vms(host="destroy vm0\ncreate vcpu1")), registry()["kvm-6.18"]())
    pol = sys_.policy
    k = thaw(sys_)
    for v in k.vcpus:
        if v.loaded:
            pol.vcpu_put(k, v)
    k.ops.clear()
    pol.kvm_destroy_vm(k, 0)
    assert k.kvm.vpid_bitmap == 0b1 and k.kvm.root_state[0] == ROOT_FREE
    assert not any("INV" in type(op.event).__name__.upper() for op in k.ops)
    pol.kvm_vm_ioctl_create_vcpu(k, k.vcpus[1])
    assert k.vcpus[1].vpid == 1 and k.vcpus[1].tdp_root == -1 and not k.vcpus[1].root_valid


@pytest.mark.parametrize(
    ("name", "policy", "prop"),
    [
        ("vm2-asid-migrate", "bug-svm-keep-asid-on-migration", "vm-isolation"),
        ("vm2-vpid-reuse-migrate", "bug-vmx-no-migration-flush", "vm-isolation"),
        ("vm2-asid-destroy-reuse", "bug-svm-free-asid-reuse", "vm-isolation"),
        ("delete-memslot-race-access", "bug-memslot-delete-still-valid", "host-isolation"),
    ],
)
def test_the_bug_is_caught_and_upstream_is_safe(name: str, policy: str, prop: str) -> None:
    s = load(BUILTIN[name])
    bad = explore(build(s, registry()[policy]()))
    assert bad.label == f"violation:{prop}"
    assert explore(build(s, registry()["kvm-6.18"]())).label == "safe"


def test_delete_memslot_retries_faults_until_the_slot_is_back() -> None:
    s = load(BUILTIN["delete-memslot-race-access"])
    sys_ = build(s, registry()["kvm-6.18"]())
    pol = sys_.policy
    k = thaw(sys_)
    pol.kvm_invalidate_memslot(k, 0x10000)
    assert pol.kvm_faultin_memslot_invalid(k, 0x10000)
    pol.kvm_create_memslot(k, 0x10000)
    assert not pol.kvm_faultin_memslot_invalid(k, 0x10000)


def test_delete_memslot_needs_tdp() -> None:
    text = load(BUILTIN["delete-memslot-race-access"]).text
    with pytest.raises(ScenarioError, match="delete_memslot needs tdp = true"):
        parse(text.replace("[config]", "[config]\ntdp = false"), "d.toml")
