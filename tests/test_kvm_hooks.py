"""The flush hooks of every ported KVM version, against a table of what real KVM issues.

tests/data/kvm_hooks.toml holds, per version x configuration x hook (plus the PV flush of
record_steal_time and the migration flush of vmx_vcpu_load_vmcs / svm_vcpu_load), the exact
hardware operations and the next VM entry, each row citing the KVM function that decides it. This
module runs each row on a booted system and compares. It also pins the seed's change
(e64419d991ea) and checks that bug-zoo variants change the row they are about.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from kvmsetups import GVA, check_succeeded, entries, exit_to_host, flushes, run_to_guest, system
from kvmsetups import thaw as thaw_system

from kvmtlb.host.thread import preempt
from kvmtlb.kvm.policy import KvmPolicy, registry
from kvmtlb.kvm.state import KVM_VCPU_FLUSH_TLB, KVM_VCPU_PREEMPTED
from kvmtlb.model.system import System

TABLE: dict[str, Any] = tomllib.loads(
    (Path(__file__).parent / "data" / "kvm_hooks.toml").read_text()
)
HOOKS: dict[str, list[str]] = TABLE["hooks"]
CONFIGS: dict[str, dict[str, Any]] = TABLE["config"]
MATRIX = ("intel-vpid", "intel-novpid", "amd-flushbyasid", "amd-noflushbyasid")
ROWS: list[dict[str, Any]] = [
    {"version": g["version"], "config": g["config"], **row}
    for g in TABLE["group"]
    for row in g["rows"]
]
BUGS: list[dict[str, Any]] = TABLE["bug"]

CITE = re.compile(
    r"^(x86\.c|mmu/mmu\.c|vmx/(vmx\.c|vmx\.h|ops\.h|vmx_ops\.h)|svm/svm\.c):\w+ @ v(\d+\.\d+)\b"
)


def booted(policy: str, config: str) -> System:
    knobs = dict(CONFIGS[config])
    vendor = knobs.pop("vendor")
    return system(policy, vendor, pv_tlb_flush=True, **knobs)


def trigger(k: Any, pol: KvmPolicy, hook: str) -> None:
    """Run `hook` (a name from [hooks]) on vCPU0, which is in host mode after a VM exit."""
    vcpu = k.vcpus[0]
    if hook == "pv_flush":
        preempt(k, pol, 0)  # vcpu_put: kvm_steal_time_set_preempted
        assert vcpu.st_byte == KVM_VCPU_PREEMPTED
        vcpu.st_byte |= KVM_VCPU_FLUSH_TLB  # the guest's cmpxchg in kvm_flush_tlb_multi
        pol.vcpu_load(k, vcpu, 0)
    elif hook == "migration":
        preempt(k, pol, 0)
        pol.vcpu_load(k, vcpu, 1)
    elif hook.startswith("tlb_flush(invalidate_gpa="):  # v5.7's kvm_x86_ops->tlb_flush
        vendor = "vmx" if k.config.vmx else "svm"
        getattr(pol, f"{vendor}_flush_tlb")(k, vcpu, hook.endswith("=true)"))
    else:  # v5.8's tlb_flush_* and v6.18's flush_tlb_* are the port's flush_tlb_* hooks
        name = hook.replace("tlb_flush_", "flush_tlb_")
        args = (GVA,) if name == "flush_tlb_gva" else ()
        pol.kvm_x86_call(k, name, vcpu, *args)


def observe(policy: str, config: str, hook: str, tracing: bool = True) -> tuple[list[str], str]:
    """(flush instructions, next VM entry) for `hook` under `policy` and `config`; `tracing`
    off runs the steps as the explorer does."""
    sys_ = booted(policy, config)
    pol = sys_.policy
    k = thaw_system(sys_, tracing=tracing)
    vcpu = k.vcpus[0]
    exit_to_host(k, pol, vcpu)
    k.ops.clear()
    trigger(k, pol, hook)
    run_to_guest(k, pol, vcpu)
    check_succeeded(k.ops)
    (entry,) = entries(k)
    return flushes(k), entry


def row(version: str, config: str, hook: str) -> dict[str, Any]:
    (r,) = [
        r for r in ROWS if r["version"] == version and r["config"] == config and r["hook"] == hook
    ]
    return r


@pytest.mark.parametrize("r", ROWS, ids=lambda r: f"{r['version']}/{r['config']}/{r['hook']}")
def test_hook_row(r: dict[str, Any]) -> None:
    for tracing in (True, False):
        ops, entry = observe(r["version"], r["config"], r["hook"], tracing)
        assert (ops, entry) == (r["ops"], r["entry"]), (tracing, r["cite"])


def test_table_covers_the_matrix_once() -> None:
    keys = [(r["version"], r["config"], r["hook"]) for r in ROWS]
    assert len(keys) == len(set(keys)), "duplicate rows"
    assert set(HOOKS) == {p.name for p in registry().values() if p.kind == "upstream"}
    for version, hooks in HOOKS.items():
        for config in MATRIX:
            for hook in hooks:
                assert (version, config, hook) in keys, f"no row for {version} {config} {hook}"
    for version, config, hook in keys:
        assert hook in HOOKS[version], f"{hook} is not a {version} hook"
        assert config in CONFIGS


def test_every_row_cites_its_version() -> None:
    for r in ROWS:
        m = CITE.match(r["cite"])
        assert m, f"{r['version']} {r['config']} {r['hook']}: cite {r['cite']!r}"
        assert f"kvm-{m.group(3)}" == r["version"], r["cite"]


def test_the_seed_row() -> None:
    """e64419d991ea: with EPT on and VPID off, the PV flush issued INVEPT in 5.7 and issues
    nothing from 5.8 on (VM entry with VPID 0 flushes linear and combined mappings); with VPID on,
    INVVPID single-context on the vCPU's VPID in both."""
    novpid = {v: row(v, "intel-novpid", "pv_flush") for v in HOOKS}
    assert novpid["kvm-5.7"]["ops"] == ["INVEPT single-context"]
    assert novpid["kvm-5.8"]["ops"] == novpid["kvm-6.18"]["ops"] == []
    assert {r["entry"] for r in novpid.values()} == {"VM entry VPID=0"}
    for v in HOOKS:
        assert row(v, "intel-vpid", "pv_flush")["ops"] == ["INVVPID single-context vpid=1"]
    # ... and the port agrees (the parametrized rows check the same, this names the claim).
    assert observe("kvm-5.7", "intel-novpid", "pv_flush")[0] == ["INVEPT single-context"]
    assert observe("kvm-5.8", "intel-novpid", "pv_flush")[0] == []


def test_the_seed_keeps_the_remote_flush() -> None:
    """The seed changed only the guest flush: 5.7's tlb_flush(invalidate_gpa=true) and 5.8's
    tlb_flush_current both flush the current EPTP, with VPID on or off."""
    for config in ("intel-vpid", "intel-novpid"):
        assert row("kvm-5.7", config, "tlb_flush(invalidate_gpa=true)")["ops"] == [
            "INVEPT single-context"
        ]
        assert row("kvm-5.8", config, "tlb_flush_current")["ops"] == ["INVEPT single-context"]


@pytest.mark.parametrize("b", BUGS, ids=lambda b: str(b["policy"]))
def test_bug_variant_changes_its_row(b: dict[str, Any]) -> None:
    cls = registry()[b["policy"]]
    assert cls.kind == "bug"
    upstream = row(cls.based_on, b["config"], b["hook"])
    got = observe(b["policy"], b["config"], b["hook"])
    assert got == (b["ops"], b["entry"])
    assert got != (upstream["ops"], upstream["entry"])


@pytest.mark.parametrize("name", ["amd-zap-all-fast", "amd-nested-tlb-control"])
def test_svm_flush_tlb_current_is_reached_and_needed(name: str) -> None:
    """docs/bug-zoo.md: svm_flush_tlb_current, reached through KVM_REQ_TLB_FLUSH_CURRENT under
    v6.18 (kvm_mmu_load's and nested_svm_transition_tlb_flush's requests), is needed there: a
    kvm-6.18 whose hook does nothing is caught."""
    from kvmtlb.check.explorer import explore
    from kvmtlb.model.scenario import load
    from kvmtlb.model.system import build

    base = registry()["kvm-6.18"]

    class NoCurrentFlush(base):  # type: ignore[misc, valid-type]
        name = "kvm-6.18-no-svm-flush-current"

        def svm_flush_tlb_current(self, k: Any, vcpu: Any) -> None:
            pass

    path = Path(__file__).parent.parent / "kvmtlb" / "scenarios" / f"{name}.toml"
    assert explore(build(load(path, set(registry())), base())).verdict == "safe"
    caught = explore(build(load(path, set(registry()) | {NoCurrentFlush.name}), NoCurrentFlush()))
    assert caught.verdict == "violation"
