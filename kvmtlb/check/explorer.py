"""The explorer: breadth-first search of every interleaving, shortest counterexample first.

Level by level from the initial world, every enabled action of every world (in the deterministic
order of kvmtlb.model.actions) is applied; a world whose canonical fingerprint was seen before is
not expanded again. The properties are checked on every new world (and the emulator's completed
accesses on every transition). The first level with a violation ends the search; among its
violations the first in property precedence, then in successor order, is reported. A world with
unfinished threads and no enabled step is a deadlock.

The visited set is a packed open-addressing table of 64-bit fingerprints with, per state, the
index of its parent and of the action that reached it (about 30 bytes per state); a trace is
rebuilt by replaying those actions, which is deterministic. With fingerprints only, two distinct
states collide with probability at most n^2 / 2^65 for n states (reported); `exact=True` keeps
every canonical state instead.
"""

from __future__ import annotations

import gc
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kvmtlb.check.frontier import THRESHOLD, Frontier, constants_of
from kvmtlb.errors import where
from kvmtlb.kvm.context import Record, World
from kvmtlb.model.actions import Action, all_done, apply, describe, enabled, unfinished
from kvmtlb.model.actions import Outcome as ActionOutcome
from kvmtlb.model.canonical import Canonicalizer
from kvmtlb.model.properties import PRECEDENCE, Violation, check, check_observations
from kvmtlb.model.system import System

EMPTY = 0
SHARDS = 64  # key tables of a FingerprintTable


class FingerprintTable:
    """The visited set: 64-bit fingerprints in open-addressing arrays('Q') (load factor at most
    0.6), and per state, numbered in insertion order, its parent's index (array('i')) and the
    index of the action that reached it (array('H')): a trace is the chain of parents, re-run.
    About 14 to 27 bytes of keys plus 6 bytes of links per state.

    The keys are split into `shards` tables by their top bits, each doubled on its own when it
    fills: a doubling allocates the new array while the old one is alive, so with one table the
    peak memory at a doubling was three times the keys' (issue 12's bytes per state at 10 M
    states); with 64 it is 1/64 more."""

    def __init__(self, capacity: int = 1 << 12, shards: int = SHARDS) -> None:
        assert shards & (shards - 1) == 0 and capacity % shards == 0
        self.shift = 64 - (shards.bit_length() - 1)  # fp >> shift: the shard (64: shard 0)
        size = capacity // shards
        self.masks = [size - 1] * shards
        self.shards = [array("Q", bytes(8 * size)) for _ in range(shards)]
        self.counts = [0] * shards
        self.parent = array("i")
        self.action = array("H")

    def __len__(self) -> int:
        return len(self.parent)

    def add(self, fp: Any, parent: int, action: int) -> int:
        """Insert `fp`; returns its new state index, or -1 if it was already there."""
        if fp == EMPTY:
            fp = 1
        s = fp >> self.shift
        keys = self.shards[s]
        mask = self.masks[s]
        i = fp & mask
        while True:
            k = keys[i]
            if k == EMPTY:
                break
            if k == fp:
                return -1
            i = (i + 1) & mask
        keys[i] = fp
        index = len(self.parent)
        self.parent.append(parent)
        self.action.append(action)
        n = self.counts[s] = self.counts[s] + 1
        if 10 * n > 6 * (mask + 1):
            self._grow(s)
        return index

    def contains(self, fp: int) -> bool:
        if fp == EMPTY:
            fp = 1
        s = fp >> self.shift
        keys = self.shards[s]
        mask = self.masks[s]
        i = fp & mask
        while True:
            k = keys[i]
            if k == EMPTY:
                return False
            if k == fp:
                return True
            i = (i + 1) & mask

    def _grow(self, s: int) -> None:
        old = self.shards[s]
        mask = self.masks[s] = 2 * len(old) - 1
        keys = self.shards[s] = array("Q", bytes(8 * (mask + 1)))
        for k in old:
            if k != EMPTY:
                i = k & mask
                while keys[i] != EMPTY:
                    i = (i + 1) & mask
                keys[i] = k

    def bytes_used(self) -> int:
        return (
            sum(8 * len(keys) for keys in self.shards)
            + self.parent.itemsize * len(self.parent)
            + self.action.itemsize * len(self.action)
        )

    def path(self, index: int) -> list[int]:
        out = []
        while index > 0:
            out.append(self.action[index])
            index = self.parent[index]
        return out[::-1]


class ExactTable(FingerprintTable):
    """Every canonical state, exactly (for --exact)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[Any, int] = {}

    def add(self, fp: Any, parent: int, action: int) -> int:  # fp: the canonical key
        if fp in self.seen:
            return -1
        index = len(self.parent)
        self.seen[fp] = index
        self.parent.append(parent)
        self.action.append(action)
        return index

    def bytes_used(self) -> int:
        return 0


@dataclass
class TraceStep:
    step: int
    actor: str
    action: str
    records: list[Record]


class Progress(NamedTuple):
    """How far a search got, for a progress hook (called about four times a second)."""

    states: int
    transitions: int
    depth: int  # the level being expanded
    seconds: float


# Why a search stopped before it finished (Result.stopped): Ctrl-C, --max-states, or whatever
# reason string a progress hook returned ("timeout", "max-memory" from the runner).
INTERRUPTED = "interrupted"
MAX_STATES = "max-states"
MAX_DEPTH = "max-depth"


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Result:
    verdict: str  # "safe" | "deadlock" | "violation" | "stopped" | "error"
    prop: str | None
    detail: str
    states: int
    transitions: int
    depth: int
    seconds: float
    path: list[int] = field(default_factory=list)
    trace: list[TraceStep] = field(default_factory=list)
    exact: bool = False
    store_bytes: int = 0
    stopped: str = ""  # verdict "stopped": why (INTERRUPTED, MAX_STATES, or a hook's reason)
    error: BaseException | None = field(default=None, repr=False, compare=False)  # "error"
    search: str = "bfs"  # "bfs", or "hunt" (kvmtlb.check.hunt: swarm walks, then shrinking)
    shortest: bool = True  # the trace is proven shortest (always so for "bfs")
    proved_depth: int = -1  # hunt: no violation within this many steps (-1: not applicable)
    found_seconds: float = 0.0  # hunt: seconds until a walk found a violation
    found_length: int = 0  # hunt: the length of the walk's trace before shrinking
    pruned: int = 0  # steps not taken because they were asleep (partial-order reduction)

    @property
    def label(self) -> str:
        if self.verdict == "violation":
            return f"violation:{self.prop}"
        if self.verdict == "stopped":
            return f"stopped:{self.stopped}"
        return self.verdict

    @property
    def collision_bound(self) -> float:
        return 0.0 if self.exact else self.states**2 / 2.0**65


def explore(system: System, *, por: bool = False, **options: Any) -> Result:
    """Explore every interleaving of `system` (the options of `_explore`), with Python's cyclic
    garbage collector off: worlds are trees of tuples that reference counting frees, and the
    collector's passes over millions of live frontier objects cost 10 to 25 % of a big search
    (issue 12). It is turned back on afterwards if it was on. With `por`, partial-order
    reduction by sleep sets (kvmtlb.check.reduce): the same verdict, states and trace length,
    fewer transitions."""
    was = gc.isenabled()
    gc.disable()
    try:
        if por:
            from kvmtlb.check.reduce import explore_por

            return explore_por(system, **options)
        return _explore(system, **options)
    finally:
        if was:
            gc.enable()


def _explore(
    system: System,
    *,
    exact: bool = False,
    max_states: int = 0,
    max_depth: int = 0,
    progress: Callable[[Progress], str | None] | None = None,
    explain: Callable[[BaseException], str] = where,
    frontier_threshold: int = THRESHOLD,
    frontier_dir: str | None = None,
) -> Result:
    """Explore every interleaving of `system`; returns the verdict and, for a violation or a
    deadlock, the shortest path to it.

    A level's worlds past `frontier_threshold` are packed (kvmtlb.check.frontier), in memory or,
    with `frontier_dir`, in a temporary file there; the results are the same either way.

    The search stops early, with verdict "stopped" and the counts so far, on Ctrl-C
    (KeyboardInterrupt), after `max_states` states, or when `progress` (called about every
    0.25 s) returns a reason, or with reason MAX_DEPTH once every state within `max_depth`
    steps (0: no limit) was checked without a violation or deadlock. A step that raises gives
    verdict "error": the path to the state it was taken from, `explain(exception)` in the
    detail, and the exception in `Result.error`."""
    table, keyf = search_store(system, exact)
    t0 = time.perf_counter()
    w0 = system.initial
    table.add(keyf(w0), -1, 0)
    first = check(system, w0)
    transitions = 0
    depth = 0
    if first is not None:
        return _result(system, table, "violation", first, 0, 0, 0, t0, exact)
    constants = constants_of(w0)

    def level() -> Frontier:
        return Frontier(constants, threshold=frontier_threshold, directory=frontier_dir)

    frontier = level()
    frontier.append((w0, 0))
    finished = not unfinished(system, w0)  # some state where every thread is done was seen
    last_report = t0
    try:
        while frontier:
            nxt = level()
            found: list[tuple[int, int, _Found]] = []  # (precedence, order, violation)
            deadlock: tuple[int, Violation] | None = None
            order = 0
            for w, idx in frontier:
                acts = enabled(system, w)
                if not acts:
                    stuck = stuck_detail(system, w)
                    if stuck and deadlock is None:
                        deadlock = (idx, Violation("deadlock", stuck))
                    continue
                for ai, a in enumerate(acts):
                    try:
                        out = apply(system, w, a, tracing=False)
                    except Exception as e:  # a policy or model bug: reported with its path
                        return _crash(system, table, w, idx, a, e, explain, transitions, depth, t0)
                    transitions += 1
                    order += 1
                    if out.observations:
                        seen = observed_violation(system, table, out, idx, ai, transitions, exact)
                        if seen is not None:
                            found.append((seen[0], order, seen[1]))
                            continue
                    new = table.add(keyf(out.world), idx, ai)
                    if new < 0:
                        continue
                    v = check(system, out.world)
                    if v is not None:
                        found.append((PRECEDENCE.index(v.prop), order, _tag(v, new)))
                        continue
                    nxt.append((out.world, new))
                    if not finished:
                        finished = all_done(system, out.world)
                last_report = tick(progress, last_report, table, transitions, depth, t0, max_states)
            depth += 1
            if found:
                _, _, hit = min(found, key=lambda f: (f[0], f[1]))
                return _result(
                    system, table, "violation", hit, transitions, depth, hit.index, t0, exact
                )
            if deadlock is not None:
                idx, dv = deadlock
                return _result(
                    system, table, "deadlock", dv, transitions, depth - 1, idx, t0, exact
                )
            frontier = nxt
            if max_depth and depth >= max_depth and frontier:
                raise _Stop(MAX_DEPTH)
    except (KeyboardInterrupt, _Stop) as e:
        reason = e.reason if isinstance(e, _Stop) else INTERRUPTED
        return stopped_result(table, reason, transitions, depth, t0, exact)
    if not finished:
        return livelock_result(system, table, transitions, depth, t0, exact)
    return safe_result(table, transitions, depth, t0, exact)


def canonicalizer(system: System) -> Canonicalizer:
    """The canonicalizer every search of `system` uses: the universes' entries that vary."""
    u = system.kvm.universe
    return Canonicalizer(
        u.full & ~u.static_mask(),
        system.native.universe.full & ~system.native.universe.static_mask(),
    )


def search_store(system: System, exact: bool) -> tuple[FingerprintTable, Callable[[World], Any]]:
    """The visited-state table of a search and the key it stores a world under: the full
    canonical state with `exact`, else its fingerprint."""
    canon = canonicalizer(system)
    table: FingerprintTable = ExactTable() if exact else FingerprintTable()
    keyf: Callable[[World], Any] = (
        (lambda w: canon.key(w, exact=True)) if exact else canon.fingerprint
    )
    return table, keyf


def stuck_detail(system: System, w: World) -> str:
    """Why a world with no enabled step is a deadlock ("" when every thread is done)."""
    left = unfinished(system, w)
    return "no step is enabled, but " + ", ".join(left) + " have work left" if left else ""


def observed_violation(
    system: System,
    table: FingerprintTable,
    out: ActionOutcome,
    idx: int,
    ai: int,
    transitions: int,
    exact: bool,
) -> tuple[int, _Found] | None:
    """A step whose observations violate a property: its precedence and the violation, tagged
    with the table entry (a key of its own, as the step's world may be reached safely too)
    that records the path to it; None when they violate nothing."""
    v = check_observations(system, out.world, out.observations)
    if v is None:
        return None
    key = (
        ("obs", transitions)
        if exact
        else (hash((idx, ai, transitions)) & 0xFFFF_FFFF_FFFF_FFFF) | 1
    )
    return PRECEDENCE.index(v.prop), _tag(v, table.add(key, idx, ai))


def tick(
    progress: Callable[[Progress], str | None] | None,
    last_report: float,
    table: FingerprintTable,
    transitions: int,
    depth: int,
    t0: float,
    max_states: int,
) -> float:
    """After a state is expanded: report progress at most four times a second (a reason the
    hook returns stops the search) and stop at --max-states. Returns the last report's time."""
    if progress is not None:
        now = time.perf_counter()
        if now - last_report > 0.25:
            last_report = now
            reason = progress(Progress(len(table), transitions, depth + 1, now - t0))
            if reason:
                raise _Stop(reason)
    if max_states and len(table) >= max_states:
        raise _Stop(MAX_STATES)
    return last_report


def _finished_result(
    table: FingerprintTable,
    verdict: str,
    detail: str,
    transitions: int,
    depth: int,
    t0: float,
    exact: bool,
    stopped: str = "",
) -> Result:
    """A result without a trace: the search's counts."""
    return Result(
        verdict,
        None,
        detail,
        len(table),
        transitions,
        depth,
        time.perf_counter() - t0,
        exact=exact,
        store_bytes=table.bytes_used(),
        stopped=stopped,
    )


def safe_result(
    table: FingerprintTable, transitions: int, depth: int, t0: float, exact: bool
) -> Result:
    """Every reachable state explored, every thread finished somewhere, no violation."""
    return _finished_result(table, "safe", "", transitions, depth, t0, exact)


def stopped_result(
    table: FingerprintTable, reason: str, transitions: int, depth: int, t0: float, exact: bool
) -> Result:
    """A search that stopped before it finished (Ctrl-C or a limit): nothing is proven."""
    detail = (
        f"stopped ({STOP_WHY.get(reason, reason)}): the search did not finish, nothing is proven"
    )
    return _finished_result(table, "stopped", detail, transitions, depth, t0, exact, reason)


def livelock_result(
    system: System, table: FingerprintTable, transitions: int, depth: int, t0: float, exact: bool
) -> Result:
    """Every execution cycles before all threads are done (e.g. a policy that never serves a
    request it makes keeps backing out of VM entry): no state is stuck, so it is no deadlock in
    the contract's sense, but calling it safe would hide it. The trace leads to the last state
    found."""
    last = len(table) - 1
    busy = ", ".join(unfinished(system, _world_at(system, table, last)))
    livelock = Violation(
        "deadlock",
        f"livelock: no interleaving lets every thread finish (left with work: {busy}); "
        "the trace leads to the last state found",
    )
    return _result(system, table, "deadlock", livelock, transitions, depth, last, t0, exact)


@dataclass
class _Found:
    """A violation and the state (index in the table) it was found in."""

    prop: str
    detail: str
    index: int


def _tag(v: Violation, index: int) -> _Found:
    return _Found(v.prop, v.detail, index)


def _result(
    system: System,
    table: FingerprintTable,
    verdict: str,
    v: Any,
    transitions: int,
    depth: int,
    index: int,
    t0: float,
    exact: bool,
) -> Result:
    path = table.path(index) if index > 0 else []
    res = Result(
        verdict,
        v.prop if verdict == "violation" else None,
        v.detail,
        len(table),
        transitions,
        depth,
        time.perf_counter() - t0,
        path,
        exact=exact,
        store_bytes=table.bytes_used(),
    )
    res.trace = replay(system, path)
    return res


STOP_WHY = {
    INTERRUPTED: "interrupted by the user",
    MAX_STATES: "--max-states reached",
    MAX_DEPTH: "the depth bound was reached",
    "timeout": "--timeout reached",
    "max-memory": "--max-memory reached",
}


def _crash(
    system: System,
    table: FingerprintTable,
    w: World,
    index: int,
    a: Action,
    e: Exception,
    explain: Callable[[BaseException], str],
    transitions: int,
    depth: int,
    t0: float,
) -> Result:
    """A step raised: a bug in the policy or the model, not a verdict on the scenario. Return the
    path to the state it was taken from and the step itself, so that it can be debugged."""
    path = table.path(index) if index > 0 else []
    res = Result(
        "error",
        None,
        f"step {len(path) + 1}, {a.actor}: {describe(system, w, a)} raised {explain(e)}",
        len(table),
        transitions,
        depth,
        time.perf_counter() - t0,
        path,
        store_bytes=table.bytes_used(),
        error=e,
    )
    res.trace = replay(system, path)
    return res


def _world_at(system: System, table: FingerprintTable, index: int) -> World:
    w = system.initial
    for ai in table.path(index):
        w = apply(system, w, enabled(system, w)[ai], tracing=False).world
    return w


def walk(
    system: System, path: Sequence[int]
) -> Iterator[tuple[int, Action, str, World, ActionOutcome]]:
    """Re-run a path of action indices from the initial world, deterministically: for each step,
    its number, the action, its description, the world before it and what it produced. A path
    that does not fit the system raises ValueError."""
    w = system.initial
    for n, ai in enumerate(path, 1):
        acts = enabled(system, w)
        if not 0 <= ai < len(acts):
            raise ValueError(
                f"step {n}: the trace does not match this scenario and policy "
                f"(action {ai} of {len(acts)})"
            )
        a: Action = acts[ai]
        text = describe(system, w, a)
        out = apply(system, w, a)
        yield n, a, text, w, out
        w = out.world


def replay(system: System, path: list[int]) -> list[TraceStep]:
    """Re-run a path of action indices from the initial world; deterministic."""
    return [TraceStep(n, a.actor, text, out.records) for n, a, text, _w, out in walk(system, path)]
