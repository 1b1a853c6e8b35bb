"""The cost model's counters on small workloads, against counts worked out by hand.

The VM of every test is built the same way (kvmtlb/cost/simulate.py): the guest's page tables are
four pages at GPAs 0x1_0000_0000.. (root, PDPT, PD, PT: one 2 MiB region, one 1 GiB region), its
data frames start at GPA 0x10_0000 (another 1 GiB region, the same 512 GiB one), and the working
set's pages start at GVA 0x4000_0000, page i on frame i. Events are applied one by one through
`Simulation.apply`, so every count below follows from the SDM's rules and KVM's code paths.
"""

from __future__ import annotations

from collections import Counter

from kvmtlb.cost.schedule import Accesses, Load, Preempt, PteChange, Zap
from kvmtlb.cost.simulate import Simulation
from kvmtlb.cost.walk import MAX_REFS_2D
from kvmtlb.cost.workload import GPA_BASE, GVA_BASE, parse
from kvmtlb.kvm.policy import registry

PAGE = 0x1000
P = [GVA_BASE + i * PAGE for i in range(4)]  # the working set's pages


def sim(
    policy: str, *, vendor: str = "intel", vcpus: int = 1, pcpus: int = 1, **cfg: object
) -> Simulation:
    extra = "\n".join(f"{k} = {str(v).lower()}" for k, v in cfg.items())
    w = parse(
        f"""
name = "hand"
[config]
vendor = "{vendor}"
vcpus = {vcpus}
pcpus = {pcpus}
{extra}
[workload]
accesses = 1
working_set = 4
guest_frames = 8
"""
    )
    return Simulation(w, w.configs[0], registry()[policy]())


def reads(*pages: int, vcpu: int = 0) -> Accesses:
    return Accesses([(vcpu, p, False) for p in pages])


def counts(s: Simulation) -> Counter[str]:
    return s.cm.counts()


def test_cold_walks_and_hits() -> None:
    """The first access walks everything the TLB lacks: the guest root's GPA through EPT (4 EPT
    reads; it fills the EPT PML4, PDPTE and PDE caches for the tables' region), then each guest
    level (4 reads), each next table's GPA through the EPT PDE cache (1 EPT read each, 3), and the
    leaf GPA through the EPT PML4 cache (3 EPT reads: the data frames are in another 1 GiB
    region): 14 memory references, not 24, because the walk reuses what it cached on the way.
    Each further page hits the combined PDE cache (1 guest read) and the EPT PDE cache of the
    data region (1 EPT read): 2. Repeated pages are TLB hits."""
    s = sim("kvm-6.18", vpid=True)
    s.apply(reads(P[0], P[1], P[2], P[3], P[0], P[1]))
    n = counts(s)
    assert n["accesses"] == 6
    assert n["tlb.lookups.combined"] == 6
    assert n["tlb.misses.combined"] == 4
    assert n["walk.refs.guest"] == 4 + 3 * 1
    assert n["walk.refs.stage2"] == (4 + 3 * 1 + 3) + 3 * 1
    assert n["tlb.lookups.guest-physical"] == 5 + 3
    assert n["tlb.misses.guest-physical"] == 5 + 3
    assert n["psc.hits.combined-psc"] == 3
    assert n["psc.hits.guest-physical-psc"] == 4 + 3
    # What is cached: 4 combined translations, 3 combined PSC entries (PML4E, PDPTE, PDE), the 8
    # guest-physical translations (4 tables, 4 data frames) and 5 EPT PSC entries.
    tlb = s.cm.tlbs[0]
    tlb.check()
    kinds = Counter(type(e).__name__ for e in tlb.held())
    assert kinds == {
        "CombinedTranslation": 4,
        "CombinedPsc": 3,
        "GuestPhysicalTranslation": 8,
        "GuestPhysicalPsc": 5,
    }
    assert MAX_REFS_2D == 24


def pv_flush(policy: str, vpid: bool) -> Counter[str]:
    """Two vCPUs on one pCPU: vCPU 0 touches 4 pages, changes page 0's PTE and shoots it down;
    vCPU 1 is preempted, so the PV TLB flush sets FLUSH_TLB in its steal-time byte; then the host
    switches the pCPU to vCPU 1, whose entry path (record_steal_time) flushes its TLB."""
    s = sim(policy, vcpus=2, pcpus=1, vpid=vpid, pv_tlb_flush=True)
    s.apply(reads(*P))
    s.apply(PteChange(0, P[0], GPA_BASE + 4 * PAGE))
    s.apply(Preempt(0))
    s.apply(Load(1, 0, False))
    s.apply(reads(*P, vcpu=1))
    return counts(s)


def test_pv_flush_vpid_off_kvm57_issues_invept() -> None:
    """VPID off: kvm-5.7's kvm_vcpu_flush_tlb(vcpu, false) takes __vmx_flush_tlb's INVEPT branch
    (enable_vpid = 0). By then the VM exit has removed VPID 0's combined entries, so INVEPT
    removes the 8 guest-physical translations and 5 EPT PSC entries, all still valid (the host
    changed no EPT entry): 13 entries over-flushed. vCPU 1's first walk then starts cold (14
    references), and each further page costs 2."""
    n = pv_flush("kvm-5.7", vpid=False)
    assert n["guest.pv-flushes"] == 1 and n["guest.ipis"] == 0
    assert n["op.invept-single"] == 1
    assert n["overflush.invept-single"] == 13
    assert n["removed.valid.guest-physical"] == 8
    assert n["removed.valid.guest-physical-psc"] == 5
    # The INVLPG of the shootdown removed page 0's combined translation and, as INVLPG does, every
    # combined PSC entry of the PCID (3); the VM exit for the preemption removed the other 3
    # translations (VPID 0), and the entry found nothing left.
    assert n["op.invlpg"] == 1 and n["overflush.invlpg"] == 3 and n["needed.invlpg"] == 1
    assert n["op.vm-exit-vpid-off"] == 1 and n["overflush.vm-exit-vpid-off"] == 3
    assert n["op.vm-entry-vpid-off"] == 1 and n["overflush.vm-entry-vpid-off"] == 0
    # vCPU 0's 4 cold misses (14 + 3 * 2), then vCPU 1's: 14 + 3 * 2 again.
    assert n["walk.refs.guest"] + n["walk.refs.stage2"] == 2 * (14 + 3 * 2)
    assert n["tlb.misses.guest-physical"] == 2 * 8


def test_pv_flush_vpid_off_kvm58_issues_nothing() -> None:
    """The seed commit: kvm-5.8's vmx_flush_tlb_guest is vpid_sync_context(0), a no-op; VM
    entry already flushed VPID 0's linear and combined mappings. The guest-physical entries
    survive: vCPU 1's walks read only guest entries, and EPT entries for page 0's new frame (1)."""
    n = pv_flush("kvm-5.8", vpid=False)
    assert n["guest.pv-flushes"] == 1
    assert n["op.invept-single"] == 0 and n["op.invept-all"] == 0
    assert n["op.invvpid-single"] == 0
    assert n["removed.valid.guest-physical"] == 0
    # vCPU 1: page 0 walks 4 guest levels with every GPA a guest-physical hit except its new leaf
    # frame (EPT PDE cache of the data region: 1 read); pages 1-3: combined PDE cache, 1 read.
    assert n["walk.refs.guest"] == (4 + 3) + (4 + 3)
    assert n["walk.refs.stage2"] == (4 + 3 + 3 + 3) + 1
    assert n["tlb.misses.guest-physical"] == 8 + 1


def test_pv_flush_vpid_on_same_in_both_versions() -> None:
    """VPID on: both versions flush vCPU 1's VPID with INVVPID single-context (it holds nothing
    yet), and nothing else differs."""
    a, b = pv_flush("kvm-5.7", vpid=True), pv_flush("kvm-5.8", vpid=True)
    assert a["op.invvpid-single"] == b["op.invvpid-single"] == 1
    assert a["op.invept-single"] == b["op.invept-single"] == 0
    assert a == b


def test_zap_flushes_remote_tlbs_and_faults_back_in() -> None:
    """Two vCPUs on two pCPUs both touch page 0; the host zaps its frame. kvm_flush_remote_tlbs
    kicks both (they are in the guest): each exits and serves KVM_REQ_TLB_FLUSH with
    flush_tlb_all, INVEPT all-context in kvm-6.18 (single-context in kvm-5.7), removing on each
    pCPU the now stale combined translation and guest-physical translation of the frame, and the
    still valid rest. vCPU 0's next access of page 0 takes an EPT violation; KVM maps a fresh host
    page and the access completes."""
    for policy, op in (("kvm-6.18", "op.invept-all"), ("kvm-5.7", "op.invept-single")):
        s = sim(policy, vcpus=2, pcpus=2, vpid=True)
        s.apply(reads(P[0]))
        s.apply(reads(P[0], vcpu=1))
        before = counts(s).copy()
        s.apply(Zap(GPA_BASE))
        n = counts(s)
        assert n["host.zaps"] == 1 and n["host.kicks"] == 2
        assert n[op] == 2
        assert n["op.vm-exit"] - before["op.vm-exit"] == 2
        assert n["removed.stale.combined"] == 2
        assert n["removed.stale.guest-physical"] == 2
        # Per pCPU: 4 table translations, 5 EPT PSC entries and 3 combined PSC entries, valid.
        assert n["removed.valid.guest-physical"] == 2 * 4
        assert n["removed.valid.guest-physical-psc"] == 2 * 5
        assert n["removed.valid.combined-psc"] == 2 * 3
        s.apply(reads(P[0]))
        n = counts(s)
        assert n["op.ept-violation"] == 1 and n["kvm.tdp-faults"] == 1
        assert n["accesses"] == 3
        hpa = s.k.kvm.backing[0]
        assert hpa == s.k.config.fresh_page(GPA_BASE, 1)


def test_new_asid_abandons_entries() -> None:
    """AMD without FlushByAsid: a flush of the vCPU's ASID is a new ASID at the next VMRUN.
    vCPU 0's entries under its old ASID stay cached but unreachable: counted as abandoned, and as
    over-flush when still valid. The PV flush of vCPU 1 makes it take a new ASID too."""
    s = sim("kvm-6.18", vendor="amd", vcpus=2, pcpus=1, flush_by_asid=False, pv_tlb_flush=True)
    s.apply(reads(*P, vcpu=0))
    s.apply(Preempt(0))
    s.apply(Load(1, 0, False))
    s.apply(reads(*P, vcpu=1))
    s.apply(PteChange(1, P[3], GPA_BASE + 4 * PAGE))
    s.apply(Preempt(1))
    s.apply(Load(0, 0, False))
    n = counts(s)
    # vCPU 1 runs when it shoots down page 3, vCPU 0 is preempted and gets FLUSH_TLB: its entry
    # path flushes, and a new ASID abandons vCPU 0's entries under the old one: 4 ASID
    # translations (page 3's is stale: its PTE changed), 3 PSC entries, 8 nested translations
    # and 5 nested PSC entries.
    assert n["guest.pv-flushes"] == 1
    assert n["op.new-asid"] == 1
    assert n["abandoned.valid.asid"] == 3 and n["abandoned.stale.asid"] == 1
    assert n["abandoned.valid.asid-psc"] == 3
    assert n["abandoned.valid.nested"] == 8
    assert n["abandoned.valid.nested-psc"] == 5
    assert n["overflush.new-asid"] == 19


def test_cr0_wp_window_per_version_and_vendor() -> None:
    """A W^X window (rate cr0_wp_toggle): two MOV to CR0. With EPT, kvm-6.18 lets the guest own
    WP, so neither exits and nothing is flushed; kvm-5.8 takes both exits and resets the MMU on
    each, whose root load flushes the context (INVEPT single-context). On SVM every version exits
    (no per-bit CR0 ownership) and only kvm-5.8 resets (a TLB_CONTROL flush of the ASID)."""
    from kvmtlb.cost.schedule import Cr0WpToggle

    got = {}
    for vendor in ("intel", "amd"):
        for policy in ("kvm-6.18", "kvm-5.8"):
            s = sim(policy, vendor=vendor)
            s.apply(reads(P[0], P[1]))
            s.cm.reset_counts()
            s.n.clear()
            s.apply(Cr0WpToggle(0))
            c = counts(s)
            got[vendor, policy] = (
                s.n["guest.cr0-wp-windows"],
                s.n["kvm.exits.mov-cr0"],
                c["op.invept-single"] + c["op.tlb-control-3"],
            )
    assert got == {
        ("intel", "kvm-6.18"): (1, 0, 0),
        ("intel", "kvm-5.8"): (1, 2, 2),
        ("amd", "kvm-6.18"): (1, 2, 0),
        ("amd", "kvm-5.8"): (1, 2, 2),
    }
