"""Partial-order reduction (kvmtlb/check/reduce.py, issue 12): with sleep sets the explorer must
give, on every built-in scenario under every upstream version and on every bug-zoo catch, the
verdict, state count and shortest-trace length of the plain search (tests/data/golden_states.toml
and docs/bug-zoo.md hold the plain search's), with a trace that replays. An unsound independence
relation must be caught by the same comparison."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from regen_golden import read_golden, scenario
from test_suite import CATCHES, PATHS, UPSTREAM, assert_replays

from kvmtlb.check.explorer import Result, explore
from kvmtlb.check.reduce import Stepper, explore_por
from kvmtlb.kvm.policy import registry
from kvmtlb.model.footprint import independent
from kvmtlb.model.system import System, build

GOLDEN = read_golden()


def system(stem: str, policy: str) -> System:
    return build(scenario(PATHS[stem]), registry()[policy]())


def reduced(
    stem: str, policy: str, dependent: Callable[..., bool] | None = None
) -> tuple[Result, dict[str, Any]]:
    r = explore_por(system(stem, policy), dependent=dependent)
    return r, {"verdict": r.label, "states": r.states, "trace": len(r.trace)}


@pytest.mark.parametrize("policy", UPSTREAM)
@pytest.mark.parametrize("stem", sorted(PATHS))
def test_sleep_sets_keep_verdict_states_and_trace_length(stem: str, policy: str) -> None:
    r, got = reduced(stem, policy)
    assert got == GOLDEN[scenario(PATHS[stem]).name][policy]
    if r.verdict == "violation":
        assert_replays(stem, policy, r)


@pytest.mark.parametrize(("name", "stem", "prop", "length"), CATCHES)
def test_sleep_sets_keep_every_bug_zoo_catch(name: str, stem: str, prop: str, length: int) -> None:
    r, _ = reduced(stem, name)
    assert (r.verdict, r.prop, len(r.trace)) == ("violation", prop, length)
    assert_replays(stem, name, r)


def test_sleep_sets_prune_something() -> None:
    """The measured relation is not 'everything depends on everything': steps are pruned, and
    fewer transitions are taken than by the plain search."""
    plain = explore(system("pv-flush-preempted-twice", "kvm-6.18"))
    r, _ = reduced("pv-flush-preempted-twice", "kvm-6.18")
    assert r.pruned > 0
    assert r.transitions + r.pruned == plain.transitions
    assert r.states == plain.states


def test_an_unsound_independence_relation_is_caught() -> None:
    """Declaring all steps of different actors independent (as a hand-written relation that forgot
    a shared location would) loses states or verdicts: the comparison above must fail."""
    everything_commutes = lambda *_: False  # noqa: E731
    stems = ["pv-flush-preempted-twice", "pv-flush-preempted-target", "amd-migration-round-trip"]
    differ = []
    for stem in stems:
        for policy in UPSTREAM:
            _, got = reduced(stem, policy, everything_commutes)
            if got != GOLDEN[scenario(PATHS[stem]).name][policy]:
                differ.append((stem, policy))
    assert differ


def test_footprints_are_measured() -> None:
    """In pv-flush-preempted-target, two guest reads on different pCPUs touch disjoint state,
    a guest store to a page table (which every processor's cached entries follow) depends on
    every other guest step, and the scheduler's switch of a pCPU depends on the step of the vCPU
    it preempts."""
    s = system("pv-flush-preempted-target", "kvm-6.18")
    st = Stepper(s)
    frontier, seen = [s.initial], {s.initial}
    reads = stores = switches = 0
    for _ in range(12):
        nxt = []
        for w in frontier:
            acts, enab = st.enabled(w)
            fp = []
            for i, a in enumerate(acts):
                out, r, wr = st.apply(w, a)
                assert wr & ~r == 0, f"{a}: what a step writes counts as read too"
                fp.append((a, r | enab[i], wr))
                if out.world not in seen:
                    seen.add(out.world)
                    nxt.append(out.world)
            for a, ar, aw in fp:
                for b, br, bw in fp:
                    if a.actor == b.actor or not b.actor.startswith("guest"):
                        continue
                    if a.kind == b.kind == "access":
                        cpu = {w.vcpus[int(x.actor[5:])][5] for x in (a, b)}
                        if len(cpu) == 2:
                            assert independent(ar, aw, br, bw)
                            reads += 1
                    elif a.kind == "op" and aw & st.loc.mem:
                        assert not independent(ar, aw, br, bw)
                        stores += 1
                    elif a.kind == "switch" and w.pcpus[a.args[0]][1] == int(b.actor[5:]):
                        assert not independent(ar, aw, br, bw)
                        switches += 1
        frontier = nxt
    assert reads and stores and switches


@pytest.mark.parametrize("stem", ["pv-flush-preempted-twice", "emulated-read-pv-flush"])
def test_sleep_sets_in_exact_mode(stem: str) -> None:
    """With full canonical states (--exact) the reduced search keeps the plain search's too."""
    plain = explore(system(stem, "kvm-5.8"), exact=True)
    r = explore(system(stem, "kvm-5.8"), exact=True, por=True)
    assert (r.label, r.states, len(r.path)) == (plain.label, plain.states, len(plain.path))
    assert r.transitions + r.pruned == plain.transitions
