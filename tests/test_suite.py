"""The built-in suite as checked-in expectations (style.md, rule 10).

1. Every built-in scenario's verdict under every upstream version equals its [expect].
2. The bug zoo: every bug policy is caught on each scenario docs/bug-zoo.md lists for it, with the
   property and the trace length the table gives, and the trace replays to the same property.
   The table is parsed here, so the doc and the code cannot drift apart.
3. Golden state counts: tests/data/golden_states.toml holds the verdict, the number of states and
   the trace length of every (built-in scenario, upstream version); compared exactly. After an
   intended change to the explored space, regenerate it with `python tests/regen_golden.py`.

Everything runs in-process with explore() (no subprocess); results are cached per worker.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from regen_golden import (
    BUG_ZOO,
    GOLDEN,
    bug_policies,
    golden_entry,
    parse_zoo,
    read_golden,
    run,
    scenario,
    upstream_names,
)

from kvmtlb.check.explorer import Result, replay
from kvmtlb.check.runner import builtin_scenarios
from kvmtlb.kvm.policy import registry
from kvmtlb.model.actions import apply, enabled
from kvmtlb.model.properties import check, check_observations
from kvmtlb.model.system import build

PATHS = {p.stem: p for p in builtin_scenarios()}
UPSTREAM = upstream_names()
REGEN = "regenerate with `python tests/regen_golden.py` if the change is intended"


@functools.cache
def result(stem: str, policy: str) -> Result:
    return run(PATHS[stem], policy)


def replayed_property(stem: str, policy: str, path: list[int]) -> str | None:
    """Re-run `path` from the initial world and evaluate the properties at its end, as the
    explorer does: first the accesses completed on the last step, then the world it reached."""
    system = build(scenario(PATHS[stem]), registry()[policy]())
    w = system.initial
    out = None
    for ai in path:
        out = apply(system, w, enabled(system, w)[ai])
        w = out.world
    v = None
    if out is not None and out.observations:
        v = check_observations(system, out.world, out.observations)
    if v is None:
        v = check(system, w)
    return v.prop if v is not None else None


def assert_replays(stem: str, policy: str, r: Result) -> None:
    assert r.trace, "a violation comes with a non-empty trace"
    assert len(r.path) == len(r.trace)
    again = replay(build(scenario(PATHS[stem]), registry()[policy]()), r.path)
    assert [(t.actor, t.action) for t in again] == [(t.actor, t.action) for t in r.trace]
    assert replayed_property(stem, policy, r.path) == r.prop


# -- 1. the suite's expectations ------------------------------------------------------------------
def test_suite_is_not_empty() -> None:
    assert len(PATHS) >= 38
    assert UPSTREAM == ["kvm-6.18", "kvm-5.8", "kvm-5.7"]


@pytest.mark.parametrize("stem", sorted(PATHS))
def test_expect_names_every_upstream_version(stem: str) -> None:
    s = scenario(PATHS[stem])
    assert set(UPSTREAM) <= set(s.expect), f"{stem}: [expect] should state every upstream version"


@pytest.mark.parametrize("policy", UPSTREAM)
@pytest.mark.parametrize("stem", sorted(PATHS))
def test_verdict_equals_expect(stem: str, policy: str) -> None:
    r = result(stem, policy)
    assert r.label == scenario(PATHS[stem]).expect.get(policy, "safe"), r.detail
    if r.verdict == "violation":
        assert_replays(stem, policy, r)


# -- 2. the bug zoo -------------------------------------------------------------------------------
ZOO = parse_zoo(BUG_ZOO.read_text())
CATCHES = [
    pytest.param(name, stem, prop, length, id=f"{name}-{stem}")
    for name, row in ZOO.items()
    for stem, prop, length in row["catches"]
]


def test_bug_zoo_lists_every_bug_policy() -> None:
    assert list(ZOO) == [c.name for c in bug_policies()]
    # issue 5's list, ASID wrap, CR4.SMEP, make_spte, notifier flush; six of shadow paging, #8;
    # kvm_mmu_load's flush, a zap yielding with a flush pending, WAIT kicks, the flush of
    # KVM_CLEAR_DIRTY_LOG (issue 15); nested VMX's bugs #1, #2, #9, #10, #11 and nested SVM's
    # transition flush (issue 11); mmu_sync_children's write-protect flush (issue 10); the
    # second VM's ASID reuse and memslot deletion (issue 15); CR0.WP under shadow paging (issue 10);
    # nested EPT's bug #3 and bug #1 with EPT on (issue 11); bug #15's two range-flush sites
    # (issue 15); nested NPT's missing MMU sync and NPT02 rmap zap (issue 11); NX huge page
    # recovery's bug #13 half (issue 15); an L2 on EPT01 and guest_mmu's roots per EPTP (issue 11)
    assert len(ZOO) == 54


@pytest.mark.parametrize("name", [c.name for c in bug_policies()])
def test_bug_zoo_fix_and_cve_are_the_class_attributes(name: str) -> None:
    cls = registry()[name]
    assert cls.kind == "bug" and cls.based_on in UPSTREAM
    assert ZOO[name]["fix"] == cls.fix
    assert ZOO[name]["cve"] == cls.cve
    assert ZOO[name]["catches"], f"{name} is caught by no built-in scenario"


@pytest.mark.parametrize(("name", "stem", "prop", "length"), CATCHES)
def test_bug_is_caught(name: str, stem: str, prop: str, length: int) -> None:
    assert stem in PATHS, f"docs/bug-zoo.md names {stem!r}, which is not a built-in scenario"
    base = registry()[name].based_on
    assert scenario(PATHS[stem]).expect.get(base, "safe") == "safe", (
        f"{stem} is not safe under {base}, so it does not show that {name} is the cause"
    )
    r = result(stem, name)
    assert r.verdict == "violation", f"{name} is no longer caught by {stem}: {r.label}"
    assert (r.prop, len(r.trace)) == (prop, length), (
        f"{name} on {stem}: {r.prop} in {len(r.trace)} steps; the table says {prop} in {length} "
        "(regenerate it with `python tests/regen_golden.py --bug-zoo`)"
    )
    assert_replays(stem, name, r)


def test_bug_zoo_names_the_policies_in_its_prose() -> None:
    """The hand-written part of the doc mentions no policy that does not exist."""
    text = BUG_ZOO.read_text()
    for name in re.findall(r"`(bug-[a-z0-9-]+)`", text):
        assert name in registry(), name


# -- 3. golden state counts ------------------------------------------------------------------------
GOLDEN_DATA = read_golden()


def test_golden_file_covers_the_suite() -> None:
    names = {scenario(p).name for p in PATHS.values()}
    assert set(GOLDEN_DATA) == names, f"{GOLDEN}: {REGEN}"
    for name, per in GOLDEN_DATA.items():
        assert list(per) == UPSTREAM, f"{GOLDEN}: [{name}]: {REGEN}"


@pytest.mark.parametrize("policy", UPSTREAM)
@pytest.mark.parametrize("stem", sorted(PATHS))
def test_golden_states(stem: str, policy: str) -> None:
    want = GOLDEN_DATA[scenario(PATHS[stem]).name][policy]
    got = golden_entry(result(stem, policy))
    assert got == want, f"{stem} / {policy}: {got} != {want} in {Path(GOLDEN).name}; {REGEN}"
