"""The cost model with shadow paging (tdp = false): 1-D walks of the shadow tables, KVM's exits
and shadow-MMU work counted per policy, the audit of stale translations, and the shadow headline
of docs/cost-model.md re-measured."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kvmtlb.cost.schedule import Accesses, Cr3Switch, Load, Preempt, PteChange
from kvmtlb.cost.simulate import Simulation
from kvmtlb.cost.workload import AS_STRIDE, GPA_BASE, GVA_BASE, WorkloadError, parse, resolve
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.state import Vcpu
from kvmtlb.kvm.versions import Kvm618

PAGE = 0x1000
P = [GVA_BASE + i * PAGE for i in range(4)]
DOC = Path(__file__).parent.parent / "docs" / "cost-model.md"


def sim(
    policy: Any, *, vendor: str = "intel", vcpus: int = 1, pcpus: int = 1, **cfg: object
) -> Simulation:
    extra = "\n".join(f"{k} = {str(v).lower()}" for k, v in cfg.items())
    w = parse(
        f"""
name = "hand"
[config]
vendor = "{vendor}"
tdp = false
vcpus = {vcpus}
pcpus = {pcpus}
{extra}
[workload]
accesses = 1
working_set = 4
guest_frames = 16
address_spaces = 2
"""
    )
    pol = registry()[policy]() if isinstance(policy, str) else policy
    return Simulation(w, w.configs[0], pol, audit=True)


def reads(*pages: int, vcpu: int = 0) -> Accesses:
    return Accesses([(vcpu, p, False) for p in pages])


def counts(s: Simulation) -> Counter[str]:
    return s.cm.counts()


@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_shadow_walks_are_one_dimensional(vendor: str) -> None:
    """A cold access walks the 4 levels of the shadow table (prefaulted: no exit); the next page
    starts from the PDE cache (1 reference). Nothing guest-physical is cached."""
    s = sim("kvm-6.18", vendor=vendor)
    s.apply(reads(P[0], P[1], P[0]))
    n = counts(s)
    kind = "linear" if vendor == "intel" else "asid"
    assert n[f"tlb.misses.{kind}"] == 2
    assert n["walk.refs.guest"] == 4 + 1 and n["walk.refs.stage2"] == 0
    assert n["kvm.shadow-faults"] == 0
    held = Counter(type(e).__name__ for e in s.cm.tlbs[0].held())
    prefix = "Linear" if vendor == "intel" else "Asid"
    assert held == {f"{prefix}Translation": 2, f"{prefix}Psc": 3}


def test_pte_write_unsyncs_once_and_invlpg_syncs_the_spte() -> None:
    """The first store to a synced guest table exits and unsyncs the shadow page; the
    shootdown's INVLPG exits and syncs (drops) the SPTE; the next access takes a shadow #PF and
    maps the new frame. A second store to the same (still unsync) table does not exit."""
    s = sim("kvm-6.18", vpid=True)
    s.apply(reads(*P))
    s.apply(PteChange(0, P[0], GPA_BASE + 12 * PAGE))
    s.apply(reads(P[0]))
    s.apply(PteChange(0, P[1], GPA_BASE + 13 * PAGE))
    n = counts(s)
    assert n["kvm.exits.pt-write"] == 1 and n["shadow.unsyncs"] == 1
    assert n["kvm.exits.invlpg"] == 2 and n["shadow.sync-sptes"] == 2
    assert n["kvm.shadow-faults"] == 1
    assert n["tlb.stale-hits"] == 0


def pv_flush_syncs(policy: str) -> Counter[str]:
    """Two vCPUs on one pCPU: vCPU 0 changes a PTE (its table goes unsync) and shoots it down;
    vCPU 1 is preempted, so the guest sets FLUSH_TLB; the host runs vCPU 1, whose entry path
    serves the guest's flush (record_steal_time -> kvm_vcpu_flush_tlb_guest)."""
    s = sim(policy, vcpus=2, pcpus=1, vpid=True, pv_tlb_flush=True)
    s.apply(reads(*P))
    s.apply(PteChange(0, P[0], GPA_BASE + 12 * PAGE))
    before = counts(s)["shadow.sync-pages"]
    s.apply(Preempt(0))
    s.apply(Load(1, 0, False))
    s.apply(reads(*P, vcpu=1))
    n = counts(s)
    n["sync-pages-at-pv-flush"] = n["shadow.sync-pages"] - before
    return n


def test_guest_flush_syncs_in_kvm618_not_in_kvm58() -> None:
    """kvm-6.18's kvm_vcpu_flush_tlb_guest syncs the unsync shadow pages (b53e84eed08b,
    61b05a9fd4ae); kvm-5.8 and kvm-5.7 only flush the hardware TLB."""
    assert pv_flush_syncs("kvm-6.18")["sync-pages-at-pv-flush"] == 1
    assert pv_flush_syncs("kvm-5.8")["sync-pages-at-pv-flush"] == 0
    assert pv_flush_syncs("kvm-5.7")["sync-pages-at-pv-flush"] == 0
    for p in ("kvm-6.18", "kvm-5.8", "kvm-5.7"):
        assert pv_flush_syncs(p)["guest.pv-flushes"] == 1
        assert pv_flush_syncs(p)["tlb.stale-hits"] == 0


@pytest.mark.parametrize("pcid", [False, True])
def test_context_switch_exits_and_pcid_noflush(pcid: bool) -> None:
    """MOV CR3 to the other address space exits; with PCIDs the switch back carries the no-flush
    bit (nothing changed there) and KVM issues no flush for it. The first switch's flush is
    KVM_REQ_TLB_FLUSH_CURRENT, which without EPT flushes the whole VPID (vmx_flush_tlb_current:
    vpid_sync_context), so the first address space's entries are gone either way."""
    s = sim("kvm-6.18", vpid=True, pcid=pcid)
    other = [p + AS_STRIDE for p in P]
    s.apply(reads(*P))
    s.apply(Cr3Switch(0, 1))
    s.apply(reads(*other))
    s.apply(Cr3Switch(0, 0))
    s.apply(reads(*P))
    n = counts(s)
    assert n["kvm.exits.mov-cr3"] == 2
    assert n["guest.cr3-switches-noflush"] == (1 if pcid else 0)
    assert n["op.invvpid-single"] == (1 if pcid else 2)
    assert n["tlb.misses.linear"] == 12
    assert n["tlb.stale-hits"] == 0


class SkipInvlpgSync(Kvm618):
    """INVLPG flushes the hardware TLB but leaves an unsync SPTE stale."""

    name = "test-skip-invlpg-sync"

    def kvm_mmu_invalidate_addr(self, k: Step, vcpu: Vcpu, gva: int, roots: list[int]) -> None:
        self.kvm_x86_call(k, "flush_tlb_gva", vcpu, gva)


def test_audit_flags_a_stale_shadow_translation() -> None:
    s = sim(SkipInvlpgSync(), vpid=True)
    s.apply(reads(*P))
    s.apply(PteChange(0, P[0], GPA_BASE + 12 * PAGE))
    s.apply(reads(P[0], P[0]))
    assert counts(s)["tlb.stale-hits"] == 1  # the refill from the stale SPTE, then its hit
    ok = sim("kvm-6.18", vpid=True)
    ok.apply(reads(*P))
    ok.apply(PteChange(0, P[0], GPA_BASE + 12 * PAGE))
    ok.apply(reads(P[0], P[0]))
    assert counts(ok)["tlb.stale-hits"] == 0


def test_shadow_churn_audit_clean_under_kvm618() -> None:
    w = resolve("shadow-churn").with_overrides(accesses=5000)
    assert len(w.configs) == 8 and all(not c.tdp for c in w.configs)
    for c in w.configs:
        r = Simulation(w, c, registry()["kvm-6.18"](), audit=True).run()
        assert r.counts.get("tlb.stale-hits", 0) == 0, c.label()
        assert r.counts["kvm.exits.invlpg"] > 0 and r.counts["kvm.exits.mov-cr3"] > 0


def test_shadow_churn_audit_flags_the_variant() -> None:
    w = resolve("shadow-churn").with_overrides(accesses=5000)
    c = w.configs[0]
    r = Simulation(w, c, SkipInvlpgSync(), audit=True).run()
    assert r.counts["tlb.stale-hits"] > 0


def test_workload_keys() -> None:
    base = """
name = "w"
[config]
vendor = "intel"
{config}
[workload]
accesses = 10
working_set = 4
{workload}
[rates]
{rates}
"""
    with pytest.raises(WorkloadError, match="only one"):
        parse(base.format(config="", workload="", rates="cr3_switch = 1.0"))
    with pytest.raises(WorkloadError, match="invept-all"):
        parse(base.format(config='ept_vpid_cap = ["invvpid-single"]', workload="", rates=""))
    w = parse(
        base.format(
            config='tdp = false\nept_vpid_cap = ["invvpid-single"]',
            workload="address_spaces = 3",
            rates="cr3_switch = 1.0",
        )
    )
    assert w.address_spaces == 3 and w.guest_frames == 24
    assert w.configs[0].label() == "intel/vpid/nopcid/pv/shadow"


# -- the shadow headline of docs/cost-model.md ------------------------------------------------
COLUMNS = tuple(
    ("intel/vpid/pcid/pv/shadow", p) for p in ("kvm-5.7", "kvm-5.8", "kvm-6.18")
) + tuple(("intel/vpid/nopcid/pv/shadow", p) for p in ("kvm-5.7", "kvm-5.8", "kvm-6.18"))
ROWS = {
    "shadow #PF exits": ("kvm.shadow-faults",),
    "page-table write exits (unsync)": ("kvm.exits.pt-write",),
    "INVLPG exits": ("kvm.exits.invlpg",),
    "MOV CR3 exits": ("kvm.exits.mov-cr3",),
    "shadow pages synced": ("shadow.sync-pages",),
    "SPTEs changed by syncs": ("shadow.sync-sptes",),
    "SPTEs zapped through the rmap": ("shadow.rmap-zaps",),
    "INVVPID, every type": ("op.invvpid-addr", "op.invvpid-single", "op.invvpid-all"),
    "cycles, estimated": ("total_cycles",),
}


def documented() -> dict[str, list[int]]:
    out = {}
    for line in DOC.read_text().splitlines():
        for label in ROWS:
            if line.startswith(f"| {label} |"):
                cells = [c.strip() for c in line.strip("|").split("|")[1:]]
                out[label] = [int(re.sub(r"[,\s]", "", c)) for c in cells]
    return out


def measured() -> dict[str, list[int]]:
    w = resolve("shadow-churn")
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for c in w.configs:
        if c.label() in {col[0] for col in COLUMNS}:
            for policy in ("kvm-5.7", "kvm-5.8", "kvm-6.18"):
                r = Simulation(w, c, registry()[policy]()).run()
                runs[(c.label(), policy)] = {**r.counts, "total_cycles": r.total_cycles}
    return {
        label: [sum(runs[col].get(k, 0) for k in keys) for col in COLUMNS]
        for label, keys in ROWS.items()
    }


def test_docs_shadow_headline_is_measured() -> None:
    doc = documented()
    assert set(doc) == set(ROWS), "the shadow headline table lost a row"
    got = measured()
    assert doc == got
    syncs = got["shadow pages synced"]
    assert syncs[2] > syncs[1] == syncs[0]  # kvm-6.18 also syncs on the guest's flushes
    assert got["INVLPG exits"][0] == got["INVLPG exits"][2]  # the guest does the same
