"""The cost model's nested EPT (kvmtlb/cost/nested.py with `tdp = true`): L1's EPT12, KVM's
shadow EPT02 on an EPT L0. Counts of single events worked out from each version's code
(kvm/nested_ept.py), the audit catching bug #3's variant, the built-in workload's table
(docs/cost-model.md, "Nested EPT") and the workload file's errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kvmtlb.cost.schedule import Accesses, NestedExit
from kvmtlb.cost.simulate import Simulation, run
from kvmtlb.cost.workload import AS_STRIDE, GPA_BASE, GVA_BASE, parse, resolve
from kvmtlb.kvm.policy import registry

DOC = Path(__file__).parent.parent / "docs" / "cost-model.md"
PAGE = 0x1000
WS = 4
L2 = [GVA_BASE + AS_STRIDE + i * PAGE for i in range(WS)]  # L2's working set (address space 1)
L2GPA = [GPA_BASE + (WS + i) * PAGE for i in range(WS)]  # their L2 GPAs (= L1 GPAs, EPT12)
VERSIONS = ("kvm-5.7", "kvm-5.8", "kvm-6.18")


def nsim(policy: str, vmcs12_vpid: bool = True, audit: bool = False) -> Simulation:
    w = parse(
        f"""
name = "hand"
[config]
vendor = "intel"
vcpus = 2
pcpus = 2
nested = true
pv_tlb_flush = false
vmcs12_vpid = {str(vmcs12_vpid).lower()}
[workload]
accesses = 1
working_set = {WS}
address_spaces = 2
guest_frames = 16
"""
    )
    return Simulation(w, w.configs[0], registry()[policy](), audit=audit)


def warm(s: Simulation, write: bool = False) -> None:
    """Both vCPUs' L2 touch every page of L2's working set; the counters start again."""
    s.apply(Accesses([(v, p, write) for v in (0, 1) for p in L2]))
    s.cm.reset_counts()


def combined_removed(c: Counter[str]) -> int:
    return c["removed.valid.combined"] + c["removed.valid.combined-psc"]


def test_the_layout_is_nested_ept() -> None:
    """vmcs02's EPTP is EPT02's root while L2 runs, and L2's translations are tagged with it."""
    s = nsim("kvm-6.18")
    warm(s)
    cfg = s.k.config
    assert cfg.nested_ept and cfg.l2_gpas[WS] == L2GPA[0]
    tr = [e for kc in s.cm.tlbs[0].caches.values() for e in kc.entries.values()]
    assert {e.ep4ta for e in tr if hasattr(e, "ep4ta")} == {cfg.ept02_root}


def test_l2_exit_and_resume_per_version() -> None:
    """L2 exits to L1, L1 resumes it. kvm-5.7 loads each MMU's root with
    __kvm_mmu_new_cr3(skip_tlb_flush = false): a KVM_REQ_TLB_FLUSH (vmx_flush_tlb: INVEPT
    single-context of the current EPTP) at the exit (EPT01: nothing of L2's) and at the entry
    (EPTP02: vCPU 0's 4 combined translations and 3 paging-structure entries of L2); kvm-5.8
    and kvm-6.18 switch back to the usable EPT02 root without a flush."""
    got = {}
    for policy in VERSIONS:
        s = nsim(policy)
        warm(s)
        s.apply(NestedExit(0, "l2_exit", 0))
        c = s.cm.counts()
        assert c["op.vm-exit"] == 2 and c["op.vm-entry"] == 2
        got[policy] = (c["op.invept-single"], c["op.invept-all"], combined_removed(c))
    assert got == {"kvm-5.7": (2, 0, 7), "kvm-5.8": (0, 0, 0), "kvm-6.18": (0, 0, 0)}


def test_l1_invept_per_version() -> None:
    """L1's INVEPT, single-context or all-context: kvm-5.7's handle_invept does nothing (its two
    transition flushes stay: 2 INVEPTs, the EPTP02 one removing L2's 7 entries); kvm-5.8 and
    kvm-6.18 free the EPT02 root (kvm_mmu_free_roots of guest_mmu), and the VMRESUME's
    kvm_mmu_load loads it again: one INVEPT single-context of EPTP02 (flush_tlb_current)."""
    for kind in ("l1_invept", "l1_invept_all"):
        got = {}
        for policy in VERSIONS:
            s = nsim(policy)
            warm(s)
            s.apply(NestedExit(0, kind, 0))
            c = s.cm.counts()
            assert s.n["l1.invept"] == 1
            got[policy] = (
                c["op.invept-single"],
                c["nested.ept02-roots-freed"],
                c["nested.ept02-root-loads"],
                combined_removed(c),
            )
        assert got == {
            "kvm-5.7": (2, 0, 0, 7),
            "kvm-5.8": (1, 1, 1, 7),
            "kvm-6.18": (1, 1, 1, 7),
        }, kind


def test_l1_write_protects_an_ept12_leaf() -> None:
    """Both vCPUs' L2 wrote every page. L1 on vCPU 0 write-protects the EPT12 leaf of page 1's
    L2 GPA (the store exits: KVM's EPT02 page is synced, so it goes unsync), runs INVEPT, and
    by IPI vCPU 1's L1 runs INVEPT too. vCPU 1's L2 then writes page 1: in every version its
    TLB no longer holds the writable translation and EPT02 was synced (read-only), so the write
    is an EPT02 fault reflected to L1, which makes the leaf writable again. The bug-zoo variant
    of bug #3 (v5.7's do-nothing handle_invept in kvm-6.18) neither syncs nor flushes: vCPU 1
    writes through its stale writable entry (a stale hit, no fault)."""
    got = {}
    for policy in (*VERSIONS, "bug-nested-invept-noop"):
        s = nsim(policy, audit=True)
        warm(s, write=True)
        s.apply(NestedExit(0, "l1_ept_wrprotect", 0, L2GPA[1]))
        s.apply(Accesses([(1, L2[1], True)]))
        c = s.cm.counts()
        got[policy] = (
            c["l1.ept-wrprotects"],
            c["l1.invept"],
            c["l1.ept12-write-exits"],
            c["l1.ept-violations"],
            c["tlb.stale-hits"],
        )
    assert got == {
        "kvm-5.7": (1, 2, 2, 1, 0),
        "kvm-5.8": (1, 2, 2, 1, 0),
        "kvm-6.18": (1, 2, 2, 1, 0),
        "bug-nested-invept-noop": (1, 2, 1, 0, 1),
    }


def doc_rows(header: str, labels: tuple[str, ...]) -> dict[str, list[str]]:
    """The cells of the rows `labels` of the docs table whose header row starts `header`."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header}"))
    out = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        for label in labels:
            if line.startswith(f"| {label} |"):
                out[label] = [c.strip() for c in line.strip("|").split("|")[1:]]
    return out


def test_nested_ept_workload_table() -> None:
    """The built-in nested-ept workload (docs/cost-model.md, "Nested EPT"), vmcs12 with VPID:
    kvm-5.7 flushes EPT02 at every nested VM-Enter, kvm-5.8 and kvm-6.18 where L1 asked; no
    upstream version has a stale hit."""
    w = resolve("nested-ept")
    config = next(c for c in w.configs if c.vmcs12_vpid)
    got = []
    for policy in VERSIONS:
        c = run(w, config, registry()[policy](), audit=True).counts
        got.append(
            (
                f"{c.get('op.invept-single', 0):,} / {c.get('op.invept-all', 0):,}",
                f"{c['overflush']:,}",
                f"{c.get('tlb.misses.combined', 0):,} / {c.get('tlb.misses.guest-physical', 0):,}",
                f"{c.get('tlb.stale-hits', 0):,}",
            )
        )
    labels = (
        "KVM's INVEPTs, single- / all-context",
        "over-flush (valid entries removed)",
        "misses, combined / guest-physical",
        "audit: stale hits",
    )
    doc = doc_rows("Intel, nested EPT", labels)
    assert [tuple(doc[label][i] for label in labels) for i in range(3)] == got
    assert got[0][0] == "164 / 0" and got[2][3] == "0"
