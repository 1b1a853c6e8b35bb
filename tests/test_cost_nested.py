"""The cost model's nested guest (kvmtlb/cost/nested.py): L1 runs an L2 on every vCPU, on a
shadow-paging L0. Counts of single events worked out from each version's code, the audit catching
kvm-5.7's flushes that miss vpid02 (bugs #1 and #9), the built-in workload's per-version table
(docs/cost-model.md) and the workload file's nested errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.cli import app
from kvmtlb.cost.schedule import Accesses, NestedExit, PteChange
from kvmtlb.cost.simulate import Simulation, run
from kvmtlb.cost.workload import AS_STRIDE, GPA_BASE, GVA_BASE, WorkloadError, load, parse, resolve
from kvmtlb.kvm.policy import registry

DOC = Path(__file__).parent.parent / "docs" / "cost-model.md"
PAGE = 0x1000
L2 = [GVA_BASE + AS_STRIDE + i * PAGE for i in range(4)]  # L2's working set (address space 1)
VERSIONS = ("kvm-5.7", "kvm-5.8", "kvm-6.18")


def nsim(
    policy: str, vendor: str = "intel", vmcs12_vpid: bool = True, audit: bool = False
) -> Simulation:
    v12 = f"vmcs12_vpid = {str(vmcs12_vpid).lower()}" if vendor == "intel" else ""
    w = parse(
        f"""
name = "hand"
[config]
vendor = "{vendor}"
vcpus = 2
pcpus = 2
tdp = false
nested = true
pv_tlb_flush = false
{v12}
[workload]
accesses = 1
working_set = 4
address_spaces = 2
guest_frames = 16
"""
    )
    return Simulation(w, w.configs[0], registry()[policy](), audit=audit)


def warm(s: Simulation) -> None:
    """Both vCPUs' L2 read every page of L2's working set; the counters start again."""
    s.apply(Accesses([(v, p, False) for v in (0, 1) for p in L2]))
    s.cm.reset_counts()


def flushes(c: Counter[str]) -> tuple[int, int, int, int]:
    """(INVVPID individual-address, single-context, all-context, valid entries removed)."""
    removed = c["removed.valid.linear"] + c["removed.valid.linear-psc"]
    return c["op.invvpid-addr"], c["op.invvpid-single"], c["op.invvpid-all"], removed


def test_l2_exit_and_resume_per_version() -> None:
    """L2 exits to L1 and L1 resumes it (vmcs12 with VPID): kvm-5.7 loads each CR3 with
    kvm_mmu_new_cr3(skip_tlb_flush = false), a KVM_REQ_TLB_FLUSH on vpid01 at the exit and at
    the entry (nothing of L2's removed: L2 runs on vpid02); kvm-5.8 and kvm-6.18 flush nothing
    (the tags differ and vpid12 is the last one)."""
    got = {}
    for policy in VERSIONS:
        s = nsim(policy)
        warm(s)
        s.apply(NestedExit(0, "l2_exit", 0))
        c = s.cm.counts()
        assert c["op.vm-exit"] == 2 and c["op.vm-entry"] == 2 and s.n["l1.exits"] == 1
        got[policy] = flushes(c)
    assert got == {"kvm-5.7": (0, 2, 0, 0), "kvm-5.8": (0, 0, 0, 0), "kvm-6.18": (0, 0, 0, 0)}


def test_l2_exit_without_vpid12_flushes_l2() -> None:
    """vmcs12 without VPID: L2 runs on vpid01 and L1 expects a flush at each transition; vCPU
    0's 4 translations and 3 paging-structure entries go at the exit. kvm-5.7 and kvm-6.18 flush
    vpid01 single-context (KVM_REQ_TLB_FLUSH / KVM_REQ_TLB_FLUSH_GUEST), kvm-5.8 all contexts
    (its KVM_REQ_TLB_FLUSH is vmx_flush_tlb_all)."""
    got = {}
    for policy in VERSIONS:
        s = nsim(policy, vmcs12_vpid=False)
        warm(s)
        s.apply(NestedExit(0, "l2_exit", 0))
        got[policy] = flushes(s.cm.counts())
    assert got == {"kvm-5.7": (0, 2, 0, 7), "kvm-5.8": (0, 0, 2, 7), "kvm-6.18": (0, 2, 0, 7)}


def test_l1_invvpid_per_version() -> None:
    """L1 flushes L2's context with INVVPID single-context: every version INVVPIDs vpid02 (L2's
    7 entries of vCPU 0). kvm-5.7 adds its two transition flushes of vpid01; kvm-5.8 frees every
    root (kvm_mmu_unload), so L1's and then L2's roots are loaded again, each load flushing its
    VPID; kvm-6.18 frees L2's roots only, so one load flushes (vpid02)."""
    got = {}
    for policy in VERSIONS:
        s = nsim(policy)
        warm(s)
        s.apply(NestedExit(0, "l1_flush", 0))
        assert s.n["l1.invvpid"] == 1
        got[policy] = flushes(s.cm.counts())
    assert got == {"kvm-5.7": (0, 3, 0, 7), "kvm-5.8": (0, 3, 0, 7), "kvm-6.18": (0, 2, 0, 7)}


def test_l2_shootdown_and_the_seed_series_first_patch() -> None:
    """L2 on vCPU 0 remaps page 1 and shoots it down: its store to the write-protected table
    exits (unsync), its INVLPG exits and KVM syncs the SPTE, and the IPI's INVLPG on vCPU 1
    does the same. kvm-5.7's INVLPG emulation and its KVM_REQ_TLB_FLUSH both flush vpid01, L1's,
    so L2's translations stay: vCPU 1's next read of page 1 hits the stale one (--audit). kvm-5.8
    and kvm-6.18 flush every context (INVVPID all-context): 12 entries removed, no stale hit."""
    got = {}
    for policy in VERSIONS:
        s = nsim(policy, audit=True)
        warm(s)
        s.apply(PteChange(0, L2[1], GPA_BASE + 12 * PAGE))
        s.apply(Accesses([(1, L2[1], False)]))
        c = s.cm.counts()
        assert c["kvm.exits.pt-write"] == 1 and c["kvm.exits.invlpg"] == 2
        assert c["guest.ipis"] == 1 and c["guest.shootdowns"] == 1
        got[policy] = (*flushes(c), c["tlb.stale-hits"])
    assert got == {
        "kvm-5.7": (2, 2, 0, 0, 1),
        "kvm-5.8": (2, 0, 2, 12, 0),
        "kvm-6.18": (2, 0, 2, 12, 0),
    }


def test_amd_transitions_flush_the_asid_in_every_version() -> None:
    """Nested SVM: L2 runs on the vCPU's ASID; every version flushes it at VMRUN and #VMEXIT
    (TLB_CONTROL 3 in vmcb02; kvm-6.18's nested_svm_transition_tlb_flush, v5.x's svm_flush_tlb and
    kvm_mmu_reset_context), whatever TLB_CONTROL L1 writes in vmcb12."""
    for policy in VERSIONS:
        for kind in ("l2_exit", "l1_flush"):
            s = nsim(policy, vendor="amd")
            warm(s)
            s.apply(NestedExit(0, kind, 0))
            c = s.cm.counts()
            assert c["op.tlb-control-3"] == 2, (policy, kind)
            assert c["removed.valid.asid"] + c["removed.valid.asid-psc"] == 7, (policy, kind)


def test_nested_l2_workload_table() -> None:
    """The built-in nested-l2 workload (docs/cost-model.md, "Nested guests"), Intel with VPID in
    vmcs12: kvm-5.7 is the cheapest and the only one with stale hits (its flushes miss vpid02);
    kvm-5.8 and kvm-6.18 remove L2's entries on every remote flush (INVVPID all-context)."""
    w = resolve("nested-l2")
    config = next(c for c in w.configs if c.vendor == "intel" and c.vmcs12_vpid)
    rows = {}
    for policy in VERSIONS:
        r = run(w, config, registry()[policy](), audit=True)
        c = r.counts
        rows[policy] = (
            c.get("op.invvpid-single", 0),
            c.get("op.invvpid-all", 0),
            c["overflush"],
            c.get("tlb.misses.linear", 0),
            c.get("tlb.stale-hits", 0),
        )
    assert rows == TABLE, rows
    # the documented table's rows (docs/cost-model.md, "Nested guests"), first three columns
    doc = {}
    for line in DOC.read_text().splitlines():
        for label in ("valid entries removed (over-flush)", "linear TLB misses", "stale hits"):
            if line.startswith(f"| {label}") and line.count("|") == 8:
                cells = [c.strip().strip("*") for c in line.strip("|").split("|")[1:4]]
                doc[label] = [int(c.replace(",", "")) for c in cells]
    assert doc == {
        "valid entries removed (over-flush)": [TABLE[p][2] for p in VERSIONS],
        "linear TLB misses": [TABLE[p][3] for p in VERSIONS],
        "stale hits": [TABLE[p][4] for p in VERSIONS],
    }


# (INVVPID single-context, all-context, over-flush, linear TLB misses, stale hits): the table of
# docs/cost-model.md, "Nested guests"
TABLE = {
    "kvm-5.7": (186, 0, 440, 889, 1474),
    "kvm-5.8": (29, 87, 5033, 4883, 0),
    "kvm-6.18": (21, 87, 5033, 4883, 0),
}


BASE = """\
name = "n"
[config]
vendor = "intel"
tdp = false
nested = true
pv_tlb_flush = false
[workload]
accesses = 100
working_set = 8
address_spaces = 2
guest_frames = 32
[rates]
l2_exit = 1
"""
BAD = [
    (
        "nested npt",
        BASE.replace("tdp = false", "tdp = true").replace('vendor = "intel"', 'vendor = "amd"'),
        5,
        "nested NPT",
    ),
    ("invept shadow", BASE + "l1_invept = 1\n", 14, "needs nested EPT"),
    ("remap nested ept", BASE.replace("tdp = false", "tdp = true") + "remap = 1\n", 14, "EPT02"),
    ("pv", BASE.replace("pv_tlb_flush = false", "pv_tlb_flush = true"), 5, "PV-less"),
    ("vpid", BASE.replace("tdp = false", "tdp = false\nvpid = false"), 6, "VPID in L0"),
    ("spaces", BASE.replace("address_spaces = 2", "address_spaces = 1"), 10, "two page tables"),
    ("full flush", BASE + "full_flush = 1\n", 14, "not modelled in a nested"),
    ("not nested", BASE.replace("nested = true", "nested = false"), 13, "nested guest"),
    (
        "vmcs12_vpid",
        BASE.replace("nested = true", "nested = false\nvmcs12_vpid = true"),
        6,
        "not nested",
    ),
    ("nested type", BASE.replace("nested = true", 'nested = "yes"'), 5, "boolean"),
]


@pytest.mark.parametrize(("what", "text", "line", "phrase"), BAD, ids=[b[0] for b in BAD])
def test_nested_workload_errors(
    tmp_path: Path, what: str, text: str, line: int, phrase: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(WorkloadError) as e:
        load(path)
    assert e.value.line == line, (what, str(e.value))
    assert phrase in e.value.message, (what, str(e.value))
    r = CliRunner().invoke(app, ["cost", str(path), "--accesses", "10"])
    assert r.exit_code == 2 and "Traceback" not in r.stdout + r.stderr, r.stderr


def test_good_nested_workload_configurations() -> None:
    w = parse(
        BASE.replace('vendor = "intel"', 'vendor = ["intel", "amd"]\nvmcs12_vpid = [true, false]')
    )
    assert [c.label() for c in w.configs] == [
        "intel/vpid/nopcid/nopv/shadow/nested",
        "intel/vpid/nopcid/nopv/shadow/nested-novpid12",
        "amd/flushbyasid/nopcid/nopv/shadow/nested",
    ]
