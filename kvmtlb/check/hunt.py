"""Bug hunting: find a violation fast with swarm random walks, then shrink its trace.

Breadth-first search proves, but a bug deep in a big space costs the whole space below it. The
hunt runs randomized walks from the initial world instead: each walk draws a weight per actor
(swarm testing: some walks almost never let the scheduler act, others mostly schedule) and a
length bound, follows enabled steps at random by those weights, and checks the properties after
every step. Walkers run on every core, with different seeds (walker i of a hunt with seed s uses
seed s * 1000 + i), so a hunt is reproducible for a given seed and worker count up to which
walker finds first.

With two workers or more, the first runs the plain breadth-first search instead of walks (a
portfolio): on a space small enough for it to finish within the hunt's time, its verdict (a
proven shortest trace, or safe) is taken as it is.

A found trace is then shrunk by replay, which keeps it a real trace of the system:

1. loops are cut: when a world repeats along the path (equal fingerprints), the steps between
   its two visits are dropped;
2. chunks of 16, 8, 4, 2 and 1 steps are deleted while the rest still reaches a violation when
   replayed (each step is identified by actor, kind and arguments, not by its index, and a step
   not enabled where it comes is skipped); a violation reached earlier truncates the path;
3. both again, until neither shortens the path.

Whether the result is a shortest trace is decided by a breadth-first search bounded to one step
less than its length (and to the states the caller allows): if that search finishes without a
violation the trace is proven shortest; if it finds one, that one is reported instead (shortest
by construction); if it runs out of states, the trace is reported as not proven shortest, with
the depth up to which no shorter one exists.

A hunt that finds nothing within its time budget (and whose breadth-first search did not
finish) proves nothing; the caller then runs the full
breadth-first search (kvmtlb check --hunt does).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvmtlb.check.explorer import (
    MAX_DEPTH,
    Progress,
    Result,
    canonicalizer,
    explore,
    replay,
)
from kvmtlb.kvm.context import World
from kvmtlb.model.actions import Action, apply, enabled
from kvmtlb.model.canonical import Canonicalizer
from kvmtlb.model.properties import Violation, check, check_observations
from kvmtlb.model.system import System

WEIGHTS = (0.05, 0.3, 1.0, 3.0)  # the per-actor weights a walk draws from
LENGTHS = (50, 100, 200)  # the walk length bounds a walk draws from
PROVE_STATES = 1_000_000  # default state budget of the search that proves a trace shortest
PROVE_SECONDS = 5.0  # default time budget of that search


@dataclass
class Found:
    """A violation found by a walk: the path of action indices and the property broken."""

    path: list[int]
    prop: str
    detail: str
    steps: int  # steps taken by the walker that found it, over all its walks
    walker: int


def _step(system: System, w: World, a: Action) -> tuple[World, Violation | None]:
    out = apply(system, w, a, tracing=False)
    v = None
    if out.observations:
        v = check_observations(system, out.world, out.observations)
    if v is None:
        v = check(system, out.world)
    return out.world, v


def walk_until(
    system: System,
    seed: int,
    deadline: float,
    stop: Callable[[], bool] = lambda: False,
    walker: int = 0,
) -> Found | None:
    """Random swarm walks from the initial world until one breaks a property (its path) or
    `deadline` (time.perf_counter()) passes or `stop()` is true (polled between walks)."""
    was = gc.isenabled()
    gc.disable()  # as explore does: worlds are trees of tuples
    try:
        return _walks(system, seed, deadline, stop, walker)
    finally:
        if was:
            gc.enable()


def _walks(
    system: System, seed: int, deadline: float, stop: Callable[[], bool], walker: int
) -> Found | None:
    rng = random.Random(seed)
    steps = 0
    first = check(system, system.initial)
    if first is not None:
        return Found([], first.prop, first.detail, 0, walker)
    while time.perf_counter() < deadline and not stop():
        w = system.initial
        weights: dict[str, float] = {}
        path: list[int] = []
        for _ in range(rng.choice(LENGTHS)):
            acts = enabled(system, w)
            if not acts:
                break
            ws = []
            for a in acts:
                wt = weights.get(a.actor)
                if wt is None:
                    wt = weights[a.actor] = rng.choice(WEIGHTS)
                ws.append(wt)
            ai = rng.choices(range(len(acts)), ws)[0]
            path.append(ai)
            w, v = _step(system, w, acts[ai])
            steps += 1
            if v is not None:
                return Found(path, v.prop, v.detail, steps, walker)
    return None


def _walker(
    system: System, seed: int, deadline: float, walker: int, out: queue.Queue[object]
) -> None:
    try:
        out.put(walk_until(system, seed, deadline, walker=walker))
    except Exception:  # a step raised: the breadth-first search that follows reports it
        out.put(None)


@dataclass
class Searched:
    """The verdict of the breadth-first search run beside the walkers."""

    verdict: str
    prop: str | None
    detail: str
    path: list[int]
    states: int
    transitions: int
    depth: int
    store_bytes: int


def _searcher(system: System, deadline: float, out: queue.Queue[object]) -> None:
    try:
        r = explore(
            system,
            progress=lambda _p: "timeout" if time.perf_counter() >= deadline else None,
        )
    except Exception:
        out.put(None)
        return
    if r.verdict in ("safe", "violation", "deadlock"):
        out.put(
            Searched(
                r.verdict,
                r.prop,
                r.detail,
                r.path,
                r.states,
                r.transitions,
                r.depth,
                r.store_bytes,
            )
        )
    else:
        out.put(None)


def swarm(
    system: System,
    *,
    seconds: float,
    workers: int = 0,
    seed: int = 0,
    stop: Callable[[], bool] = lambda: False,
    bfs: bool = True,
) -> Found | Searched | None:
    """Walk on `workers` processes (0: one per core; 1: in this process) for at most `seconds`;
    the first violation found, or None. With `bfs` and two workers or more, the first worker
    runs the breadth-first search instead (a portfolio: on a small space it finishes first, with
    a proven verdict), and its verdict is returned if it finishes in time."""
    workers = workers or os.cpu_count() or 1
    deadline = time.perf_counter() + seconds
    if workers <= 1:
        return walk_until(system, seed * 1000, deadline, stop)
    ctx = multiprocessing.get_context("fork")  # the system (and a user policy) is inherited
    q: multiprocessing.Queue[object] = ctx.Queue()
    procs = [
        ctx.Process(target=_walker, args=(system, seed * 1000 + i, deadline, i, q), daemon=True)
        for i in range(1 if bfs else 0, workers)
    ]
    if bfs:
        procs.append(ctx.Process(target=_searcher, args=(system, deadline, q), daemon=True))
    for p in procs:
        p.start()
    found: Found | Searched | None = None
    try:
        pending = len(procs)
        while pending and found is None:
            try:
                got = q.get(timeout=0.1)
            except queue.Empty:
                if stop():
                    break
                continue
            pending -= 1
            if isinstance(got, (Found, Searched)):
                found = got
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        q.close()
    return found


def _replay_actions(
    system: System, actions: list[Action]
) -> tuple[list[Action], list[int], Violation] | None:
    """Replay steps identified by (actor, kind, args), skipping those not enabled where they
    come; the steps taken and their indices up to the first violation, or None if no violation
    is reached."""
    w = system.initial
    taken: list[Action] = []
    path: list[int] = []
    for a in actions:
        acts = enabled(system, w)
        try:
            ai = acts.index(a)
        except ValueError:
            continue
        taken.append(a)
        path.append(ai)
        w, v = _step(system, w, a)
        if v is not None:
            return taken, path, v
    return None


def _cut_loops(system: System, canon: Canonicalizer, actions: list[Action]) -> list[Action]:
    """The steps without the loops: from each world, jump past its last visit."""
    w = system.initial
    fps = []
    for a in actions:
        fps.append(canon.fingerprint(w))
        w = apply(system, w, a, tracing=False).world
    last = {fp: i for i, fp in enumerate(fps)}
    out: list[Action] = []
    i = 0
    while i < len(actions):
        j = last[fps[i]]
        out.append(actions[j])
        i = j + 1
    return out


def shrink(system: System, path: list[int]) -> tuple[list[int], Violation]:
    """A shorter path to a violation from a path to one (loop cutting, then chunk deletion by
    replay, until neither shortens it); the path's own violation if nothing shrinks."""
    canon = canonicalizer(system)
    w = system.initial
    actions: list[Action] = []
    for ai in path:
        a = enabled(system, w)[ai]
        actions.append(a)
        w = apply(system, w, a, tracing=False).world
    best = _replay_actions(system, actions)
    assert best is not None, "the path does not reach a violation"
    while True:
        length = len(best[0])
        got = _replay_actions(system, _cut_loops(system, canon, best[0]))
        if got is not None and len(got[0]) < len(best[0]):
            best = got
        for size in (16, 8, 4, 2, 1):
            i = len(best[0]) - size
            while i >= 0:
                cur = best[0]
                got = _replay_actions(system, cur[:i] + cur[i + size :])
                if got is not None and len(got[0]) < len(cur):
                    best = got
                    i = min(i, len(got[0])) - size
                else:
                    i -= 1
        if len(best[0]) >= length:
            return best[1], best[2]


def hunt(
    system: System,
    *,
    seconds: float = 10.0,
    workers: int = 0,
    seed: int = 0,
    prove_states: int = PROVE_STATES,
    prove_seconds: float = PROVE_SECONDS,
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[Progress], str | None] | None = None,
) -> Result | None:
    """Swarm walks for at most `seconds`, then shrink the trace and try to prove it shortest by
    a breadth-first search of at most `prove_states` states and `prove_seconds` seconds. The
    result (its `shortest` says whether it is proven shortest, `proved_depth` up to which depth
    no shorter trace exists), or None when no walk found a violation."""
    t0 = time.perf_counter()
    found = swarm(system, seconds=seconds, workers=workers, seed=seed, stop=stop)
    if found is None:
        return None
    found_at = time.perf_counter() - t0
    if isinstance(found, Searched):  # the breadth-first search beside the walkers finished
        res = Result(
            found.verdict,
            found.prop,
            found.detail,
            found.states,
            found.transitions,
            found.depth,
            found_at,
            found.path,
            store_bytes=found.store_bytes,
        )
        res.trace = replay(system, found.path)
        if res.verdict != "safe":
            res.search = "hunt"
            res.proved_depth = max(len(found.path) - 1, 0)
            res.found_seconds = found_at
            res.found_length = len(found.path)
        return res
    path, v = shrink(system, found.path)
    if len(path) <= 1:  # nothing shorter but the initial world, which was checked
        bounded = Result("stopped", None, "", 1, 0, 0, 0.0, stopped=MAX_DEPTH)
    else:
        t1 = time.perf_counter()

        def budget(p: Progress) -> str | None:
            if time.perf_counter() - t1 >= prove_seconds:
                return "timeout"
            return progress(p) if progress is not None else None

        bounded = explore(system, max_states=prove_states, max_depth=len(path) - 1, progress=budget)
    if bounded.verdict in ("violation", "deadlock") and len(bounded.path) < len(path):
        res = bounded
        shortest = True
        proved = len(bounded.path) - 1
    else:
        shortest = bounded.stopped == MAX_DEPTH or bounded.verdict == "safe"
        proved = len(path) - 1 if shortest else max(bounded.depth - 1, 0)
        res = Result(
            "violation",
            v.prop,
            v.detail,
            bounded.states,
            bounded.transitions + found.steps,
            len(path),
            0.0,
            path,
            store_bytes=bounded.store_bytes,
        )
        res.trace = replay(system, path)
    res.search = "hunt"
    res.shortest = shortest
    res.proved_depth = proved
    res.found_seconds = found_at
    res.found_length = len(found.path)
    res.seconds = time.perf_counter() - t0
    return res
