"""Breadth-first search with sleep sets: partial-order reduction that keeps every state and every
shortest trace (issue 12).

Steps of different actors that touch disjoint parts of the world commute: from a world where
`a` and `b` are both enabled and independent, `a` then `b` and `b` then `a` end in the same world.
The explorer would take both orders; with sleep sets it takes one. After a step `b` from world
`s`, the sleep set of the world it reaches holds the steps taken from `s` before `b` (in successor
order) and the steps asleep in `s`, those of them independent of `b` in `s`; a step asleep in a
world is not taken from it, because the other order already reached what it would reach.

Independence is measured, not declared: every step runs on a tracking view of the world
(kvmtlb.model.footprint) that records what it reads, and what it writes is the difference between
the world before and after it; what an actor's steps depend on to be enabled is recorded the same
way while `enabled` lists them. Two steps are independent when neither writes what the other
reads or writes. A sleeping step keeps the footprint it had where it was taken: it is independent
of every step taken since, so nothing it reads has changed.

Properties are checked on every world, and sleep sets only prune steps that lead to worlds reached
another way, so every world is still visited and checked. A step whose observations a property
looks at (an access KVM's emulator completed) is visible: it is treated as dependent on every step,
so it is never asleep and wakes every sleeping step.

Breadth first, a world reached again within the level being built gets the intersection of the
sleep sets it was reached with (fewer sleeping steps: more steps taken), so each world is expanded
at least as fully as along any of its shortest paths. A world reached again at a deeper level is
not expanded again: a shortest path to any world has only shortest prefixes, and the steps along a
representative of its class of equivalent interleavings are never asleep (the sleep-set theorem).
So every world is found at its true depth: the state count, the depth of the first violation and
the length of the trace are those of the plain search; only the number of transitions drops, and
when several traces are equally short the one printed may be another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from kvmtlb.check.explorer import (
    INTERRUPTED,
    MAX_DEPTH,
    Progress,
    Result,
    _crash,
    _Found,
    _result,
    _Stop,
    _tag,
    livelock_result,
    observed_violation,
    safe_result,
    search_store,
    stopped_result,
    stuck_detail,
    tick,
)
from kvmtlb.errors import where
from kvmtlb.kvm.context import World
from kvmtlb.model.actions import Action, Outcome, all_done, apply, enabled, run, unfinished
from kvmtlb.model.footprint import Locations, TrackingStep, independent, sections
from kvmtlb.model.properties import PRECEDENCE, Violation, check
from kvmtlb.model.system import System

# A sleep set: each sleeping step with its (reads, writes) where it was taken.
Sleep = dict[Action, tuple[int, int]]

# Footprint of a visible step: dependent on every step.
VISIBLE = -1

# The empty sleep set, shared by every world that has one (most do): never modified.
AWAKE: Sleep = {}


class Stepper:
    """Enabled steps and successors of one system's worlds, with their footprints."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.loc = Locations.of(system.initial)

    def enabled(self, w: World) -> tuple[list[Action], list[int]]:
        """The enabled steps of `w` (as `actions.enabled` lists them) and, per step, what its
        being enabled read."""
        system = self.system

        def listing(tw: Any, mark: Callable[[int], None]) -> list[Any]:
            return enabled(system, cast(World, tw), mark)

        acts, reads = sections(listing, w, self.loc)
        return cast(list[Action], acts), reads

    def apply(self, w: World, a: Action) -> tuple[Outcome, int, int]:
        """`actions.apply(system, w, a, tracing=False)`, and what the step read and wrote."""
        k = TrackingStep.thaw_tracking(self.system.kvm, w, self.loc, a.actor)
        run(self.system, k, a)
        after = k.freeze()
        reads, writes = k.footprint(w, after)
        return Outcome(after, k.log, k.observations), reads, writes


def explore_por(
    system: System,
    *,
    exact: bool = False,
    max_states: int = 0,
    max_depth: int = 0,
    progress: Callable[[Progress], str | None] | None = None,
    explain: Callable[[BaseException], str] = where,
    dependent: Callable[[Action, int, int, Action, int, int], bool] | None = None,
) -> Result:
    """`explorer.explore` with sleep sets (same options, same verdicts, state counts and trace
    lengths). `dependent`, for tests, replaces the measured independence: given two steps with
    their reads and writes, whether they must both be taken."""
    table, keyf = search_store(system, exact)
    stepper = Stepper(system)

    def indep(a: Action, ar: int, aw: int, b: Action, br: int, bw: int) -> bool:
        if a.actor == b.actor or ar == VISIBLE or br == VISIBLE:
            return False
        if dependent is not None:
            return not dependent(a, ar, aw, b, br, bw)
        return independent(ar, aw, br, bw)

    t0 = time.perf_counter()
    w0 = system.initial
    table.add(keyf(w0), -1, 0)
    first = check(system, w0)
    transitions = 0
    pruned = 0
    depth = 0
    if first is not None:
        return _result(system, table, "violation", first, 0, 0, 0, t0, exact)
    frontier: list[tuple[World, int, Sleep]] = [(w0, 0, AWAKE)]
    finished = not unfinished(system, w0)
    last_report = t0
    try:
        while frontier:
            nxt: list[tuple[World, int, Sleep]] = []
            at: dict[Any, int] = {}  # key of a world of the next level -> its place in nxt
            found: list[tuple[int, int, _Found]] = []
            deadlock: tuple[int, Violation] | None = None
            order = 0
            for w, idx, sleep in frontier:
                acts = enabled(system, w)
                # one actor and nothing asleep: no step can fall asleep, no footprint is needed
                plain = not sleep and all(a.actor == acts[0].actor for a in acts)
                enab: list[int] = []
                if not plain and acts:
                    listed, enab = stepper.enabled(w)
                    assert listed == acts, "enabled() listed other steps on a tracking view"
                if not acts:
                    stuck = stuck_detail(system, w)
                    if stuck and deadlock is None:
                        deadlock = (idx, Violation("deadlock", stuck))
                    continue
                taken: list[tuple[Action, int, int]] = []
                for ai, a in enumerate(acts):
                    if a in sleep:
                        pruned += 1
                        continue
                    try:
                        if plain:
                            out, reads, writes = apply(system, w, a, tracing=False), VISIBLE, 0
                        else:
                            out, reads, writes = stepper.apply(w, a)
                            reads |= enab[ai]
                    except Exception as e:
                        return _crash(system, table, w, idx, a, e, explain, transitions, depth, t0)
                    transitions += 1
                    order += 1
                    if out.observations:
                        reads = writes = VISIBLE
                    # the sleep set of the world reached: what sleeps here or was taken before,
                    # if independent of `a`
                    z: Sleep = {}
                    if reads != VISIBLE:
                        for c, (cr, cw) in sleep.items():
                            if indep(c, cr, cw, a, reads, writes):
                                z[c] = (cr, cw)
                        for c, cr, cw in taken:
                            if indep(c, cr, cw, a, reads, writes):
                                z[c] = (cr, cw)
                        taken.append((a, reads, writes))
                    if out.observations:
                        seen = observed_violation(system, table, out, idx, ai, transitions, exact)
                        if seen is not None:
                            found.append((seen[0], order, seen[1]))
                            continue
                    key = keyf(out.world)
                    new = table.add(key, idx, ai)
                    if new < 0:
                        place = at.get(key)
                        if place is not None:  # reached again in this level: intersect
                            old = nxt[place][2]
                            if old:
                                nxt[place] = (
                                    nxt[place][0],
                                    nxt[place][1],
                                    {c: f for c, f in old.items() if c in z},
                                )
                        continue
                    v = check(system, out.world)
                    if v is not None:
                        found.append((PRECEDENCE.index(v.prop), order, _tag(v, new)))
                        continue
                    at[key] = len(nxt)
                    nxt.append((out.world, new, z or AWAKE))
                    if not finished:
                        finished = all_done(system, out.world)
                last_report = tick(progress, last_report, table, transitions, depth, t0, max_states)
            depth += 1
            if found:
                _, _, hit = min(found, key=lambda f: (f[0], f[1]))
                res = _result(
                    system, table, "violation", hit, transitions, depth, hit.index, t0, exact
                )
                res.pruned = pruned
                return res
            if deadlock is not None:
                didx, dv = deadlock
                res = _result(
                    system, table, "deadlock", dv, transitions, depth - 1, didx, t0, exact
                )
                res.pruned = pruned
                return res
            frontier = nxt
            if max_depth and depth >= max_depth and frontier:
                raise _Stop(MAX_DEPTH)
    except (KeyboardInterrupt, _Stop) as e:
        reason = e.reason if isinstance(e, _Stop) else INTERRUPTED
        res = stopped_result(table, reason, transitions, depth, t0, exact)
        res.pruned = pruned
        return res
    if not finished:
        res = livelock_result(system, table, transitions, depth, t0, exact)
        res.pruned = pruned
        return res
    res = safe_result(table, transitions, depth, t0, exact)
    res.pruned = pruned
    return res
