"""The cost model's 2 MiB pages (huge_pages, kvmtlb/kvm/hugepage.py through the policy): counts of
single events worked out from each version's code, bug #15's wrong range caught by --audit on
Hyper-V, the built-in workload's table (docs/cost-model.md, "2 MiB pages and range flushes") and
the workload file's errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.cli import app
from kvmtlb.cost.schedule import Accesses, DirtyLog, DirtyLogOff
from kvmtlb.cost.simulate import Simulation, run
from kvmtlb.cost.workload import GPA_BASE, GVA_BASE, WorkloadError, load, parse, resolve
from kvmtlb.hw.addr import LARGE_PAGE_SIZE
from kvmtlb.kvm.policy import registry

DOC = Path(__file__).parent.parent / "docs" / "cost-model.md"
PAGE = 0x1000
# pages 256.. of the working set map the frames of the 2 MiB region at 0x200000 (region 1; the
# frames start at GPA_BASE = 0x100000, so region 0 holds pages 0..255)
R1 = [GVA_BASE + (256 + i) * PAGE for i in range(4)]
R1GPA = [GPA_BASE + (256 + i) * PAGE for i in range(4)]
VERSIONS = ("kvm-5.7", "kvm-5.8", "kvm-6.18")


def hsim(policy: str, hv: bool = False, tdp_mmu: bool = True, audit: bool = False) -> Simulation:
    w = parse(
        f"""
name = "hand"
[config]
vendor = "intel"
vcpus = 2
pcpus = 2
huge_pages = true
hv_range_flush = {str(hv).lower()}
tdp_mmu = {str(tdp_mmu).lower()}
[workload]
accesses = 1
working_set = 260
guest_frames = 520
"""
    )
    return Simulation(w, w.configs[0], registry()[policy](), audit=audit)


def warm(s: Simulation) -> None:
    """Both vCPUs read R1's four pages; the counters start again."""
    s.apply(Accesses([(v, p, False) for v in (0, 1) for p in R1]))
    s.cm.reset_counts()


def huge(c: Counter[str]) -> tuple[int, int, int, int, int]:
    """(splits, huge SPTEs dropped, range flushes, EPT violations, INVEPTs)."""
    return (
        c["huge.huge-to-table"],
        c["huge.huge-to-none"],
        c["kvm.range-flushes"],
        c["op.ept-violation"],
        c["op.invept-single"] + c["op.invept-all"],
    )


def test_a_region_is_one_2mib_spte() -> None:
    """The guest-physical translation of a region is one 2 MiB entry; the combined ones are the
    guest's 4 KiB pages (the smaller of the two sizes, SDM 29.4.2)."""
    s = hsim("kvm-6.18")
    warm(s)
    held = [e for kc in s.cm.tlbs[0].caches.values() for e in kc.entries.values()]
    gp = [e for e in held if type(e).__name__ == "GuestPhysicalTranslation"]
    comb = [e for e in held if type(e).__name__ == "CombinedTranslation"]
    assert {e.size for e in comb} == {PAGE} and len(comb) == 4
    assert [e.page for e in gp if e.size == LARGE_PAGE_SIZE] == [0x200000]


def test_dirty_logging_then_a_write_per_version() -> None:
    """Dirty logging on for region 1, then vCPU 0 writes its first page and vCPU 1 reads the
    second. Enabling flushes the memslot in every version (kvm_flush_remote_tlbs: INVEPT on both
    vCPUs). kvm-6.18 splits the huge SPTE first (eager page split, no flush) and write-protects
    the 4 KiB SPTEs: the write is one EPT violation fast_page_fault fixes in place, the read hits
    its 4 KiB SPTE after a walk. kvm-5.x write-protects the huge SPTE: the write drops it
    (drop_large_spte) and flushes its range (a full remote flush on bare metal: 2 more
    INVEPTs), then maps 4 KiB; the read finds an empty table: a second EPT violation. kvm-6.18
    with tdp_mmu = false drops it as v5.x does, but eager splitting already left a table."""
    got = {}
    for policy, tdp_mmu in [(p, True) for p in VERSIONS] + [("kvm-6.18", False)]:
        s = hsim(policy, tdp_mmu=tdp_mmu)
        warm(s)
        s.apply(DirtyLog(R1GPA[0]))
        s.apply(Accesses([(0, R1[0], True), (1, R1[1], False)]))
        got[(policy, tdp_mmu)] = huge(s.cm.counts())
    assert got == {
        ("kvm-5.7", True): (0, 1, 1, 2, 4),
        ("kvm-5.8", True): (0, 1, 1, 2, 4),
        ("kvm-6.18", True): (1, 0, 0, 1, 2),
        ("kvm-6.18", False): (1, 0, 0, 1, 2),
    }


def test_collapse_per_version() -> None:
    """After the write above, dirty logging goes off for region 1. kvm-6.18's TDP MMU puts the
    huge SPTE back in place and flushes the memslot (2 INVEPTs); the rmap MMU (v5.x; kvm-6.18
    with tdp_mmu = false) zaps the collapsible 4 KiB SPTEs and flushes the memslot once at the
    end on bare metal; on Hyper-V it flushes each zapped SPTE's page at once (a list hypercall
    per SPTE and pCPU): v5.x has 2 SPTEs (the two faults after the drop), kvm-6.18 with
    tdp_mmu = false one per frame of the region (its eager split made them: 264 frames of the
    workload lie in 0x200000-0x3fffff), 528 hypercall landings against one memslot flush."""
    got = {}
    for hv in (False, True):
        for policy, tdp_mmu in [(p, True) for p in VERSIONS] + [("kvm-6.18", False)]:
            s = hsim(policy, hv=hv, tdp_mmu=tdp_mmu)
            warm(s)
            s.apply(DirtyLog(R1GPA[0]))
            s.apply(Accesses([(0, R1[0], True), (1, R1[1], False)]))
            s.cm.reset_counts()
            s.apply(DirtyLogOff(R1GPA[0]))
            c = s.cm.counts()
            got[(hv, policy, tdp_mmu)] = (
                c["huge.table-to-huge"],
                c["op.invept-single"] + c["op.invept-all"],
                c["op.hv-flush-list"],
            )
    assert got == {
        (False, "kvm-5.7", True): (0, 2, 0),
        (False, "kvm-5.8", True): (0, 2, 0),
        (False, "kvm-6.18", True): (1, 2, 0),
        (False, "kvm-6.18", False): (0, 2, 0),
        (True, "kvm-5.7", True): (0, 0, 4),
        (True, "kvm-5.8", True): (0, 0, 4),
        (True, "kvm-6.18", True): (1, 0, 2),
        (True, "kvm-6.18", False): (0, 0, 528),
    }


def test_bug_15_on_hyper_v() -> None:
    """On Hyper-V, v5.x's drop_large_spte flushes the range of the page directory's base GFN
    (0x0, the 1 GiB region) instead of the dropped SPTE's (0x200000): vCPU 1 keeps its
    translation of region 1's second page through the dropped read-only huge SPTE, and its read
    hits it though EPT maps nothing there any more (--audit). v6.18 names the right range
    (1b2dc7360463, v6.3); on bare metal every range flush is a full one."""
    got = {}
    for hv in (False, True):
        for policy in VERSIONS:
            s = hsim(policy, hv=hv, audit=True)
            s.apply(DirtyLog(R1GPA[0]))
            s.apply(Accesses([(1, R1[1], False), (0, R1[0], True), (1, R1[1], False)]))
            got[(hv, policy)] = s.cm.counts()["tlb.stale-hits"]
    assert got == {
        (False, "kvm-5.7"): 0,
        (False, "kvm-5.8"): 0,
        (False, "kvm-6.18"): 0,
        (True, "kvm-5.7"): 1,
        (True, "kvm-5.8"): 1,
        (True, "kvm-6.18"): 0,
    }


BASE = """name = "bad"
[config]
vendor = "intel"
huge_pages = true
[workload]
accesses = 100
working_set = 8
guest_frames = 32
[rates]
dirty_log = 1
"""
BAD = [
    ("shadow", BASE.replace("huge_pages = true", "huge_pages = true\ntdp = false"), 4, "shadow"),
    (
        "nested",
        BASE.replace("huge_pages = true", "huge_pages = true\nnested = true\npv_tlb_flush = false"),
        4,
        "4 KiB",
    ),
    ("tdp_mmu", BASE.replace("huge_pages = true", "tdp_mmu = false"), 4, "tdp_mmu only"),
    (
        "off without huge",
        BASE.replace("huge_pages = true", "") + "dirty_log_off = 1\n",
        11,
        "no huge",
    ),
    ("off without log", BASE.replace("dirty_log = 1", "dirty_log_off = 1"), 10, "dirty_log is 0"),
    ("remap", BASE + "remap = 1\n", 11, "remap"),
    ("huge type", BASE.replace("huge_pages = true", 'huge_pages = "yes"'), 4, "boolean"),
]


@pytest.mark.parametrize(("what", "text", "line", "phrase"), BAD, ids=[b[0] for b in BAD])
def test_huge_workload_errors(tmp_path: Path, what: str, text: str, line: int, phrase: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(WorkloadError) as e:
        load(path)
    assert e.value.line == line, (what, str(e.value))
    assert phrase in e.value.message, (what, str(e.value))
    r = CliRunner().invoke(app, ["cost", str(path), "--accesses", "10"])
    assert r.exit_code == 2 and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert f"bad.toml:{line}" in r.stderr, r.stderr


def test_huge_range_flush_workload_table() -> None:
    """The built-in huge-range-flush workload (docs/cost-model.md, "2 MiB pages and range
    flushes"), its Hyper-V columns of kvm-5.8 and kvm-6.18 (TDP MMU and rmap MMU): v5.x's range
    hypercalls name the wrong range (bug #15), kvm-6.18's do not."""
    w = resolve("huge-range-flush")
    got = []
    for policy, tdp_mmu in (("kvm-5.8", True), ("kvm-6.18", True), ("kvm-6.18", False)):
        config = next(c for c in w.configs if c.hv_range_flush and c.tdp_mmu == tdp_mmu)
        r = run(w, config, registry()[policy](), audit=True)
        c = r.counts
        got.append(
            (
                f"{c['overflush']:,}",
                f"{c.get('tlb.stale-hits', 0):,}",
                f"{r.total_cycles / 1e6:.2f}",
            )
        )
    labels = ("over-flush (valid entries removed)", "audit: stale hits", "cycles (estimated), M")
    lines = DOC.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| Intel, EPT 2 MiB"))
    doc = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        for label in labels:
            if line.startswith(f"| {label} |"):
                doc[label] = [c.strip() for c in line.strip("|").split("|")[1:]]
    # the Hyper-V columns: kvm-5.8 (6th), kvm-6.18 (7th), kvm-6.18 tdp_mmu=N (8th)
    assert [tuple(doc[label][i] for label in labels) for i in (5, 6, 7)] == got
    assert int(got[0][1]) > 0 and got[1][1] == "0" and got[2][1] == "0"


def test_guest_2mib_pages_are_cached_at_the_smaller_size() -> None:
    """guest_huge_pages: the guest maps its working set with 2 MiB PDEs. vCPU 0 reads 4 pages of
    one 2 MiB guest page: with 2 MiB EPT SPTEs too, one 2 MiB combined translation serves all
    four (1 miss); with 4 KiB SPTEs each page is a 4 KiB combined entry (4 misses: the smaller
    of the two sizes, SDM 29.4.2). After dirty logging goes on, kvm-6.18 has split the SPTE
    (eager page split) and the reads make 4 KiB entries again; kvm-5.8 only write-protected the
    huge SPTE, so one read-only 2 MiB entry serves them."""
    pages = [GVA_BASE + GPA_BASE + i * PAGE for i in range(4)]
    got = {}
    for huge_pages in (True, False):
        for policy in ("kvm-5.8", "kvm-6.18"):
            w = parse(
                f"""
name = "h"
[config]
vendor = "intel"
huge_pages = {str(huge_pages).lower()}
[workload]
accesses = 1
working_set = 4
guest_frames = 8
guest_huge_pages = true
"""
            )
            s = Simulation(w, w.configs[0], registry()[policy](), audit=True)
            s.apply(Accesses([(0, p, False) for p in pages]))
            row = [s.cm.counts()["tlb.misses.combined"], _combined_sizes(s)]
            if huge_pages:
                s.cm.reset_counts()
                s.apply(DirtyLog(GPA_BASE))
                s.apply(Accesses([(0, p, False) for p in pages]))
                c = s.cm.counts()
                row += [c["tlb.misses.combined"], c["tlb.stale-hits"], _combined_sizes(s)]
            got[(huge_pages, policy)] = tuple(row)
    big, small = LARGE_PAGE_SIZE, PAGE
    assert got == {
        (True, "kvm-5.8"): (1, [big], 1, 0, [big]),
        (True, "kvm-6.18"): (1, [big], 4, 0, [small] * 4),
        (False, "kvm-5.8"): (4, [small] * 4),
        (False, "kvm-6.18"): (4, [small] * 4),
    }


def _combined_sizes(s: Simulation) -> list[int]:
    return sorted(
        e.size
        for kc in s.cm.tlbs[0].caches.values()
        for e in kc.entries.values()
        if type(e).__name__ == "CombinedTranslation"
    )


def test_guest_huge_pages_errors(tmp_path: Path) -> None:
    text = BASE.replace("guest_frames = 32", "guest_frames = 32\nguest_huge_pages = true")
    for extra, phrase in (("pte_change = 1\n", "2 MiB PDEs"), ("", "")):
        path = tmp_path / "g.toml"
        path.write_text(text + extra)
        if not phrase:
            assert load(path).guest_huge_pages
            continue
        with pytest.raises(WorkloadError) as e:
            load(path)
        assert e.value.line == 9 and phrase in e.value.message, str(e.value)
        r = CliRunner().invoke(app, ["cost", str(path), "--accesses", "10"])
        assert r.exit_code == 2 and "g.toml:9" in r.stderr, r.stderr
