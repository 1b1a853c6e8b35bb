"""The cost model's concrete TLB and walker against the hardware model's own rules.

- Invalidation: `Tlb.invalidate` removes exactly `[e for e in held if inv.removes(e, held)]`, the
  predicate the MAY-set machine uses (hw/invalidation.py), for invalidations built by the
  hardware model's own functions (INVVPID, INVEPT, INVLPG, MOV to CR3/CR4, #PF, EPT violation,
  VM entry/exit without VPID, TLB_CONTROL, INVLPGA).
- Lookup: a context finds a translation exactly when a held one covers the address and
  `Tags.usable` accepts it.
- Walks: every walk the cost model makes ends in a result the MAY-set walker (hw/walk.py) lists
  for the same held entries and memory, and fills only entries that walker may fill.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmtlb.cost.simulate import Simulation
from kvmtlb.cost.tlb import KeySpace, Tlb
from kvmtlb.cost.walk import Context
from kvmtlb.cost.workload import parse
from kvmtlb.hw.invalidation import Invalidation, union
from kvmtlb.hw.layout import Format
from kvmtlb.hw.mappings import (
    AsidPsc,
    AsidTranslation,
    CombinedPsc,
    CombinedTranslation,
    Entry,
    GuestPhysicalPsc,
    GuestPhysicalTranslation,
    NestedPsc,
    NestedTranslation,
)
from kvmtlb.hw.scope import amd_scope, intel_scope
from kvmtlb.hw.svm import tlb_control_invalidation
from kvmtlb.hw.tags import AmdTags, IntelEptTags
from kvmtlb.hw.vmcb import SvmCapabilities
from kvmtlb.hw.vmexit import transition_invalidation
from kvmtlb.hw.vmx import (
    ept_violation_invalidation,
    invept_all_invalidation,
    invept_single_invalidation,
    invvpid_invalidation,
)
from kvmtlb.hw.walk import NotPresent, Stage2Fault, Translated, WalkContext, Walker
from kvmtlb.hw.x86 import (
    all_pcids_invalidation,
    invlpg_invalidation,
    mov_cr3_invalidation,
    page_fault_invalidation,
)
from kvmtlb.kvm.policy import registry

K, M = 0x1000, 0x20_0000
PAGES = (0x1000, 0x2000, 0x20_0000, 0x20_1000, 0x40_0000)
EP4TAS = (0x10_0000, 0x20_0000)
KINDS = (
    CombinedTranslation,
    CombinedPsc,
    GuestPhysicalTranslation,
    GuestPhysicalPsc,
    AsidTranslation,
    AsidPsc,
    NestedTranslation,
    NestedPsc,
)
CAPACITY = dict.fromkeys(KINDS, 1000)

small = st.integers(0, 2)


@st.composite
def entries(draw: Any) -> Entry:
    kind = draw(st.sampled_from(KINDS))
    page = draw(st.sampled_from(PAGES))
    large = page % M == 0 and draw(st.booleans())
    size = M if large else K
    span = M if large or draw(st.booleans()) else K
    frame, rights, glob = draw(small) * M, draw(st.integers(0, 7)), draw(st.booleans())
    level = draw(st.integers(2, 4))
    region = page >> (12 + 9 * (level - 1))
    ep4ta = draw(st.sampled_from(EP4TAS))
    vpid, pcid, asid = draw(small), draw(st.integers(0, 1)), draw(st.integers(1, 2))
    if kind is CombinedTranslation:
        return CombinedTranslation(
            vpid, pcid, ep4ta, page, size, span, frame, rights, 7, glob, page
        )
    if kind is CombinedPsc:
        return CombinedPsc(vpid, pcid, ep4ta, level, region, frame, rights)
    if kind is GuestPhysicalTranslation:
        return GuestPhysicalTranslation(ep4ta, page, size, frame, rights)
    if kind is GuestPhysicalPsc:
        return GuestPhysicalPsc(ep4ta, level, region, frame, rights)
    if kind is AsidTranslation:
        return AsidTranslation(asid, pcid, page, size, span, frame, rights, 7, glob, page)
    if kind is AsidPsc:
        return AsidPsc(asid, pcid, level, region, frame, rights)
    if kind is NestedTranslation:
        return NestedTranslation(asid, page, size, frame, rights)
    return NestedPsc(asid, level, region, frame, rights)


@st.composite
def invalidations(draw: Any) -> Invalidation:
    vpid, pcid, asid = draw(st.integers(1, 2)), draw(st.integers(0, 1)), draw(st.integers(1, 2))
    addr = draw(st.sampled_from(PAGES)) + draw(st.sampled_from((0, 0x800)))
    ep4ta = draw(st.sampled_from(EP4TAS))
    scope = draw(st.sampled_from((intel_scope(vpid), intel_scope(0), amd_scope(asid))))
    choices = [
        invvpid_invalidation(draw(st.integers(0, 3)), vpid, addr),
        invvpid_invalidation(3, vpid, addr, keep_global_paths=False),
        invept_single_invalidation(ep4ta),
        invept_all_invalidation(),
        invlpg_invalidation(scope, pcid, addr),
        mov_cr3_invalidation(scope, pcid),
        page_fault_invalidation(scope, pcid, addr),
        all_pcids_invalidation(scope, "intel.mov-cr4.pge"),
        ept_violation_invalidation(vpid, pcid, ep4ta, addr, draw(st.sampled_from((-1, addr)))),
        transition_invalidation(False, "intel.vmexit.no-vpid"),
        tlb_control_invalidation(draw(st.sampled_from((1, 3, 7))), asid, SvmCapabilities()),
    ]
    first = draw(st.sampled_from(choices))
    return union(first, draw(st.sampled_from(choices))) if draw(st.booleans()) else first


def filled(es: list[Entry]) -> Tlb:
    tlb = Tlb(KeySpace(), CAPACITY)
    for e in es:
        tlb.insert(e)
    tlb.check()
    return tlb


@settings(max_examples=400, deadline=None)
@given(st.lists(entries(), max_size=40), st.lists(invalidations(), min_size=1, max_size=4))
def test_invalidate_is_the_shared_predicate(es: list[Entry], invs: list[Invalidation]) -> None:
    tlb = filled(es)
    for inv in invs:
        held = tlb.held()
        want = [e for e in held if inv.removes(e, held)]
        got = tlb.invalidate(inv)
        assert sorted(map(repr, got)) == sorted(map(repr, want))
        assert set(tlb.held()) == set(held) - set(want)
        tlb.check()


def test_lru_capacity_per_kind() -> None:
    tlb = Tlb(KeySpace(), {GuestPhysicalTranslation: 2, GuestPhysicalPsc: 1})
    a, b, c = (GuestPhysicalTranslation(EP4TAS[0], p, K, 0, 7) for p in PAGES[:3])
    assert tlb.insert(a) is None and tlb.insert(b) is None
    tlb.check()
    assert tlb.insert(c) == a  # the least recently used of its kind goes
    assert tlb.insert(GuestPhysicalPsc(EP4TAS[0], 2, 0, 0, 7)) is None
    assert set(tlb.held()) == {b, c, GuestPhysicalPsc(EP4TAS[0], 2, 0, 0, 7)}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(entries(), max_size=40),
    st.sampled_from(
        [IntelEptTags(v, p, e) for v in (0, 1, 2) for p in (0, 1) for e in EP4TAS]
        + [AmdTags(a, p, True) for a in (1, 2) for p in (0, 1)]
    ),
    st.sampled_from(PAGES),
)
def test_lookup_finds_what_tags_make_usable(es: list[Entry], tags: Any, gva: int) -> None:
    tlb = filled(es)
    s2 = EP4TAS[0] if isinstance(tags, IntelEptTags) else 0x30_0000
    if isinstance(tags, IntelEptTags):
        s2 = tags.ep4ta
    fmt = Format.EPT if isinstance(tags, IntelEptTags) else Format.NPT
    c = Context(WalkContext(tags, 0x5000, s2, fmt, True, True), tlb)
    kind = tags.kinds[0]
    usable = [
        e
        for e in tlb.held()
        if type(e) is kind and tags.usable(e) and (gva & ~(e.size - 1)) == e.page  # type: ignore[union-attr]
    ]
    found = c.lookup(gva)
    if usable:
        assert found in usable
    else:
        assert found is None


def held_view(tlb: Tlb, tags: Any) -> Any:
    """The MAY-set walker's view of a concrete TLB: the usable held entries under a key."""
    by_key: dict[tuple[type, tuple[int, int]], list[Entry]] = {}
    for e in tlb.held():
        if not tags.usable(e):
            continue
        if isinstance(e, CombinedPsc | GuestPhysicalPsc | AsidPsc | NestedPsc):
            key = (e.level, e.region)
        else:
            key = (e.page, e.size)  # type: ignore[union-attr]
        by_key.setdefault((type(e), key), []).append(e)
    return lambda kind, key: by_key.get((kind, key), [])


WORKLOAD = """
name = "churn"
[config]
vendor = "{vendor}"
vcpus = 3
pcpus = 2
[workload]
accesses = 3000
seed = {seed}
working_set = 24
guest_frames = 40
write_fraction = 0.3
preempted_for = 200
[rates]
pte_change = 20
zap = 10
remap = 10
preempt = 10
migrate = 5
full_flush = 2
[tlb]
combined = 12
guest-physical = 16
asid = 12
nested = 16
combined-psc = 2
asid-psc = 2
"""


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(("intel", "amd")), st.integers(1, 10_000))
def test_walks_are_walks_the_may_set_allows(vendor: str, seed: int) -> None:
    w = parse(WORKLOAD.format(vendor=vendor, seed=seed))
    sim = Simulation(w, w.configs[0], registry()["kvm-6.18"]())
    walker = sim.cm.walker
    original = walker.miss
    checked = 0

    def miss(c: Context, gva: int) -> Any:
        nonlocal checked
        tlb = c.tlb
        before = set(tlb.held())
        ctx = c.ctx
        may = Walker(ctx, sim.cm.memory.reader, held_view(tlb, ctx.tags), None)
        results = may.translate(gva)
        got = original(c, gva)
        if isinstance(got, NotPresent | Stage2Fault):
            assert got in results
        else:
            t = Translated(got.gpa, got.frame, got.rights, got.erights, got.glob)
            assert t in results, (t, results)
        assert set(tlb.held()) - before <= may.fills
        checked += 1
        return got

    walker.miss = miss  # type: ignore[method-assign]
    sim.run()
    assert checked > 50
