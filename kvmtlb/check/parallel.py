"""One breadth-first search on every core: the visited set partitioned by fingerprint.

The search of kvmtlb.check.explorer, level by level, with the states split among P partitions
(worker processes here, Ray actors in kvmtlb.check.ray_backend) by their fingerprint: partition
`(fp >> 32) % P` owns a state, keeps it in its own fingerprint table with a link to its parent
(the parent's partition and index there, and the action index) and expands it when its level
comes. A successor's fingerprint is computed by the partition that generated it, which sends the
world to the owner in batches (pickled together, so the parts worlds share are sent once, with
the run's constant configuration objects replaced by references; `Codec`).

Results are those of the single-process search, state for state:

- every state has a global rank within its level: its position in the order in which the
  single-process search first reaches it (the parent's rank, then the action's index). An owner
  offered one state by several parents keeps the offer with the smallest (rank, action), which
  is the parent the single-process search records; after each level a coordinator merges the
  partitions' sorted keys and hands out the new ranks;
- a level is always expanded whole, as explorer.py does, so state and transition counts at a
  verdict are the same; the violation reported is the first by (property precedence, rank,
  action), the deadlock the first by rank, as there;
- the trace is rebuilt by following parent links across partitions and replayed from the
  initial world (explorer.replay), so it is the same trace.

A search can be checkpointed at level boundaries (kvmtlb.check.checkpoint) and resumed. A stop
(Ctrl-C, --max-states, --timeout, --max-memory) discards the level in progress: the counts are
those of the last complete level, which is also what a checkpoint then holds.
--exact is not supported here (fingerprints only).
"""

from __future__ import annotations

import contextlib
import gc
import io
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvmtlb.check.explorer import (
    INTERRUPTED,
    MAX_DEPTH,
    MAX_STATES,
    STOP_WHY,
    FingerprintTable,
    Progress,
    Result,
    canonicalizer,
    replay,
    stuck_detail,
)
from kvmtlb.check.frontier import Frontier, by_reference, constants_of
from kvmtlb.errors import where
from kvmtlb.kvm.context import World
from kvmtlb.model.actions import apply, describe, enabled, unfinished
from kvmtlb.model.properties import PRECEDENCE, Violation, check, check_observations
from kvmtlb.model.system import System

ACTIONS = 1 << 16  # a key is rank * ACTIONS + action index
BATCH = 512  # successors per message to another partition
SENT_LIMIT = 1 << 20  # fingerprints a partition remembers having sent (cleared when full)
POLL_SECONDS = 0.25


def owner(fp: int, parts: int) -> int:
    """The partition that owns fingerprint `fp` (high bits: the tables index by the low ones)."""
    return (fp >> 32) % parts


# -- serialising worlds between partitions --------------------------------------------------------
_CONSTANTS: list[Any] = []  # this process's registered constants (Codec)


def _constant(i: int) -> Any:
    return _CONSTANTS[i]


class Codec:
    """Worlds to bytes and back, between processes that built the same system. A world holds
    its run's constant configuration objects (the machine's and the native reference's, with
    their memo tables and closures): those are sent as their index in this process's list, which
    every process builds alike from the initial world. Only for messages between the processes
    of one search, never for files (checkpoints are plain data: kvmtlb.check.checkpoint)."""

    def __init__(self, system: System) -> None:
        consts = constants_of(system.initial)
        _CONSTANTS[:] = consts
        self.table = by_reference(consts, _constant)

    def dumps(self, obj: Any) -> bytes:
        buf = io.BytesIO()
        p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
        p.dispatch_table = self.table
        p.dump(obj)
        return buf.getvalue()

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)


class _Outbox:
    """Offers from one partition to another, batched. The machine and the native reference of
    a world (about 10 KB pickled, and shared by many worlds) are sent once per channel and then
    named by a number the receiver remembers (a channel is first in, first out); both sides
    forget them all every SENT_LIMIT objects, and when a level is dropped."""

    def __init__(self, src: int, codec: Codec) -> None:
        self.src = src
        self.codec = codec
        self.ids: dict[Any, int] = {}  # machines: 0, 1, ...
        self.nids: dict[Any, int] = {}  # native references: -1, -2, ...
        self.reset = False
        self.new: list[tuple[int, Any]] = []
        self.items: list[tuple[Any, ...]] = []

    def add(self, fp: int, key: int, ref: int, ai: int, w: World) -> int:
        # by value: Partition._intern made equal machines one object, so this hits by identity
        ids = self.ids
        m, n = w.machine, w.native
        mi = ids.get(m)
        if mi is None:
            if len(ids) >= SENT_LIMIT // 16:
                ids.clear()
                self.nids.clear()
                self.new = []
                self.reset = True
            mi = ids[m] = len(ids)
            self.new.append((mi, m))
        ni = self.nids.get(n)
        if ni is None:
            ni = self.nids[n] = -1 - len(self.nids)
            self.new.append((ni, n))
        self.items.append((fp, key, ref, ai, w.kvm, w.vcpus, w.pcpus, mi, ni, w.guests, w.host))
        return len(self.items)

    def flush(self) -> bytes:
        data = self.codec.dumps((self.src, self.reset, self.new, [], self.items))
        self.reset = False
        self.new = []
        self.items = []
        return data


# -- one partition ---------------------------------------------------------------------------------
class PartTable(FingerprintTable):
    """explorer.FingerprintTable with 64-bit parent references (index * P + partition), in one
    key table (a checkpoint holds it as one array, `mask` and `keys`)."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        super().__init__(capacity, shards=1)
        self.parent = array("q")

    @property
    def mask(self) -> int:
        return self.masks[0]

    @property
    def keys(self) -> array[int]:
        return self.shards[0]

    def load_keys(self, keys: bytes, states: int) -> None:
        """The key table of a checkpoint, which holds `states` keys."""
        self.shards[0] = array("Q")
        self.shards[0].frombytes(keys)
        self.masks[0] = len(self.shards[0]) - 1
        self.counts[0] = states


@dataclass
class Expanded:
    """What a partition's expansion of its part of a level found."""

    transitions: int = 0
    obs_states: int = 0  # violations found on a step's accesses (each is a state, as there)
    found: list[tuple[int, int, str, str, int, int]] = field(default_factory=list)
    # (precedence, key, property, detail, parent reference, action)
    deadlock: tuple[int, int, str] | None = None  # (rank, reference, detail)
    error: tuple[int, int, int] | None = None  # (rank, action, parent reference): a step raised
    aborted: bool = False


@dataclass
class Settled:
    """A partition's new states of a level, once every offer was in."""

    keys: bytes  # array('q') of the new frontier's keys, sorted
    added: int
    found: list[tuple[int, int, str, str, int]]  # (precedence, key, property, detail, reference)
    finished: bool
    last: tuple[int, int] | None  # (key, reference) of the last new state in search order


class Partition:
    """The states one partition owns: its table, its frontier of the current level (world,
    index, rank, in rank order), and the offers of the level being built."""

    def __init__(self, system: System, part: int, parts: int) -> None:
        self.system = system
        self.part = part
        self.parts = parts
        self.fingerprint = canonicalizer(system).fingerprint
        self.codec = Codec(system)
        self.table = PartTable()
        # the current level: its worlds (packed past a threshold, kvmtlb.check.frontier), their
        # indices in the table and their global ranks, in rank order
        self.constants = constants_of(system.initial)
        self.frontier = Frontier(self.constants)
        self.front = array("q")
        self.ranks = array("q")
        self._pending: tuple[Frontier, array[int]] = (Frontier(self.constants), array("q"))
        # the level being built: fp -> (key, parent, action, position of the world in `offered`,
        # which packs them past a threshold as the frontier does)
        self.offers: dict[int, tuple[int, int, int, int]] = {}
        self.offered = Frontier(self.constants)
        self.sent: set[int] = set()
        self.known: list[dict[int, Any]] = [{} for _ in range(parts)]  # per sender: id -> object
        self.local: dict[Any, Any] = {}  # machines and native references received, interned
        self.outboxes = [_Outbox(part, self.codec) for _ in range(parts)]

    def ref(self, index: int) -> int:
        return index * self.parts + self.part

    def seed(self) -> None:
        """This partition owns the initial world."""
        self.table.add(self.fingerprint(self.system.initial), -1, 0)
        self.frontier = Frontier(self.constants)
        self.frontier.append(self.system.initial)
        self.front, self.ranks = array("q", [0]), array("q", [0])

    def _intern(self, w: World) -> World:
        """`w` with the machine and native reference this partition holds for their values:
        the ones received from other partitions and the ones made here are then one object
        each, and the memo tables of the hardware model and the canonicalizer hit by identity."""
        local = self.local
        if len(local) >= SENT_LIMIT // 8:
            local.clear()
        m = local.setdefault((False, w.machine), w.machine)
        n = local.setdefault((True, w.native), w.native)
        if m is w.machine and n is w.native:
            return w
        return w._replace(machine=m, native=n)

    def offer(self, fp: int, key: int, parent: int, action: int, w: World) -> None:
        if self.table.contains(fp):
            return
        old = self.offers.get(fp)
        if old is None or key < old[0]:
            self.offers[fp] = (key, parent, action, self.offered.add(w))

    def receive(self, data: bytes) -> None:
        """Take in a batch of offers from another partition (`_Outbox`)."""
        src, reset, machines, _natives, items = self.codec.loads(data)
        known = self.known[src]
        if reset:
            known.clear()
        local = self.local
        if len(local) >= SENT_LIMIT // 8:
            local.clear()
        for i, obj in machines:
            # the equal object this partition already holds, if any: memo tables (of the
            # canonicalizer, of the hardware model) then hit by identity
            known[i] = local.setdefault((i < 0, obj), obj)
        offer = self.offer
        for fp, key, ref, ai, kvm, vcpus, pcpus, mi, ni, guests, host in items:
            offer(fp, key, ref, ai, World(known[mi], kvm, vcpus, pcpus, known[ni], guests, host))

    def expand(
        self,
        send: Callable[[int, bytes], None],
        poll: Callable[[], None],
        check_stop: Callable[[int, int], bool],
        limit: int = 0,
    ) -> Expanded:
        """Expand this partition's frontier: offers to owners through `send(partition, data)`,
        `poll()` now and then to take in offers received, `check_stop(states, transitions)`
        about four times a second (true: abort the level). `limit`: abort once this partition
        holds that many states with the offers."""
        system, parts, part = self.system, self.parts, self.part
        fingerprint = self.fingerprint
        sent = self.sent
        outboxes = self.outboxes
        res = Expanded()
        last = time.perf_counter()
        for w, idx, rank in zip(self.frontier, self.front, self.ranks, strict=True):
            ref = idx * parts + part
            acts = enabled(system, w)
            if not acts:
                stuck = stuck_detail(system, w)
                if stuck and res.deadlock is None:
                    res.deadlock = (rank, ref, stuck)
                continue
            base = rank * ACTIONS
            for ai, a in enumerate(acts):
                try:
                    o = apply(system, w, a, tracing=False)
                except Exception:  # reproduced by the coordinator, which reports it
                    res.error = (rank, ai, ref)
                    return res
                res.transitions += 1
                if o.observations:
                    v = check_observations(system, o.world, o.observations)
                    if v is not None:
                        res.obs_states += 1
                        res.found.append(
                            (PRECEDENCE.index(v.prop), base + ai, v.prop, v.detail, ref, ai)
                        )
                        continue
                nw = o.world
                if parts > 1 and (nw.machine is not w.machine or nw.native is not w.native):
                    nw = self._intern(nw)
                fp = fingerprint(nw)
                if fp in sent:
                    continue  # offered before by this partition, with a smaller key
                if len(sent) >= SENT_LIMIT:
                    sent.clear()
                sent.add(fp)
                dest = (fp >> 32) % parts
                if dest == part:
                    self.offer(fp, base + ai, ref, ai, nw)
                else:
                    box = outboxes[dest]
                    if box.add(fp, base + ai, ref, ai, nw) >= BATCH:
                        send(dest, box.flush())
            now = time.perf_counter()
            if now - last > POLL_SECONDS:
                last = now
                poll()
                if check_stop(len(self.table) + len(self.offers), res.transitions):
                    res.aborted = True
                    break
            if limit and len(self.table) + len(self.offers) >= limit:
                res.aborted = True
                break
        for dest, box in enumerate(outboxes):
            if box.items and not res.aborted:
                send(dest, box.flush())
        return res

    def abort(self) -> None:
        """Drop the level in progress (the table and frontier are those at its start)."""
        self.offers = {}
        self.offered = Frontier(self.constants)
        self.sent.clear()
        for known in self.known:
            known.clear()
        self.outboxes = [_Outbox(self.part, self.codec) for _ in range(self.parts)]

    def settle(self) -> Settled:
        """Insert the level's offers into the table, in search order; check the properties of
        each new state; keep the others as the pending frontier."""
        system = self.system
        items = sorted(self.offers.items(), key=lambda kv: kv[1][0])
        self.offers = {}
        offered, self.offered = self.offered, Frontier(self.constants)
        found: list[tuple[int, int, str, str, int]] = []
        pending = Frontier(self.constants)
        idxs, keys = array("q"), array("q")
        finished = False
        last = None
        for fp, (key, parent, action, at) in items:
            idx = self.table.add(fp, parent, action)
            last = (key, self.ref(idx))
            w = offered.get(at)
            v = check(system, w)
            if v is not None:
                found.append((PRECEDENCE.index(v.prop), key, v.prop, v.detail, self.ref(idx)))
                continue
            pending.append(w)
            idxs.append(idx)
            keys.append(key)
            if not finished:
                finished = not unfinished(system, w)
        self._pending = pending, idxs
        return Settled(keys.tobytes(), len(items), found, finished, last)

    def commit(self, ranks: bytes) -> None:
        """The new frontier, with the global ranks the coordinator gave its states."""
        r = array("q")
        r.frombytes(ranks)
        self.frontier, self.front = self._pending
        if len(r) != len(self.front):
            raise ValueError(f"{len(r)} ranks for {len(self.front)} new states")
        self.ranks = r
        self._pending = Frontier(self.constants), array("q")

    def link(self, ref: int) -> tuple[int, int]:
        """The parent reference and action index of the state `ref` (owned here)."""
        idx = ref // self.parts
        return self.table.parent[idx], self.table.action[idx]

    def dump(self) -> dict[str, Any]:
        """This partition as plain data, for a checkpoint."""
        t = self.table
        return {
            "mask": t.mask,
            "keys": t.keys.tobytes(),
            "parent": t.parent.tobytes(),
            "action": t.action.tobytes(),
            "frontier": self.front.tobytes(),
            "ranks": self.ranks.tobytes(),
        }

    def load(self, data: dict[str, Any], plan: list[list[tuple[int, int, int]]]) -> None:
        """Restore a dumped partition; its frontier's worlds are rebuilt by replaying `plan`:
        per level from the first, the (reference, parent reference, action) of the ancestors of
        this partition's frontier. Raises ValueError if the plan does not fit the system."""
        t = PartTable()
        t.parent.frombytes(data["parent"])
        t.action.frombytes(data["action"])
        t.load_keys(data["keys"], len(t.parent))
        self.table = t
        idxs, ranks = array("q"), array("q")
        idxs.frombytes(data["frontier"])
        ranks.frombytes(data["ranks"])
        system = self.system
        root = system.initial
        worlds = {owner(self.fingerprint(root), self.parts): root}  # index 0 of its owner
        for level in plan:
            nxt = {}
            for ref, parent, action in level:
                w = worlds.get(parent)
                if w is None:
                    raise ValueError(f"state {ref}: its parent {parent} is not in the level above")
                acts = enabled(system, w)
                if not 0 <= action < len(acts):
                    raise ValueError(f"state {ref}: action {action} of {len(acts)}")
                nxt[ref] = apply(system, w, acts[action], tracing=False).world
            worlds = nxt
        if len(idxs) != len(ranks):
            raise ValueError(f"{len(ranks)} ranks for {len(idxs)} frontier states")
        frontier = Frontier(self.constants)
        for idx in idxs:
            w = worlds.get(self.ref(idx)) if plan else root
            if w is None or not self.table.contains(self.fingerprint(w)):
                raise ValueError(f"state {self.ref(idx)} does not rebuild to the state recorded")
            frontier.append(w)
        self.frontier, self.front, self.ranks = frontier, idxs, ranks

    def sizes(self) -> tuple[int, int]:
        return len(self.table), len(self.front)


# -- the coordinator ------------------------------------------------------------------------------
class Group(Protocol):
    """P partitions somewhere (this process, worker processes, Ray actors)."""

    parts: int
    stop_reason: str | None  # set by request_stop: the level in progress is dropped

    def request_stop(self, reason: str) -> None: ...

    def seed(self, part: int) -> None: ...

    def expand(self, tick: Callable[[int, int], str | None], limit: int) -> list[Expanded]: ...

    def abort(self) -> None: ...

    def settle(self) -> list[Settled]: ...

    def commit(self, ranks: list[bytes]) -> None: ...

    def link(self, ref: int) -> tuple[int, int]: ...

    def dump(self) -> list[dict[str, Any]]: ...

    def load(
        self, data: list[dict[str, Any]], plans: list[list[list[tuple[int, int, int]]]]
    ) -> None: ...

    def close(self) -> None: ...


class LocalGroup:
    """P partitions in this process, one after the other (one partition: a plain search that
    can be checkpointed; more: the partitioned protocol, for tests)."""

    def __init__(self, system: System, parts: int) -> None:
        self.parts = parts
        self.members = [Partition(system, p, parts) for p in range(parts)]
        self.stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def seed(self, part: int) -> None:
        self.members[part].seed()

    def expand(self, tick: Callable[[int, int], str | None], limit: int) -> list[Expanded]:
        done_states = 0
        done_transitions = 0

        def check_stop(states: int, transitions: int) -> bool:
            reason = tick(done_states + states, done_transitions + transitions)
            if reason:
                self.request_stop(reason)
            return self.stop_reason is not None

        out = []
        for p in self.members:
            e = p.expand(
                lambda o, data: self.members[o].receive(data), lambda: None, check_stop, limit
            )
            out.append(e)
            done_states += len(p.table) + len(p.offers)
            done_transitions += e.transitions
            if e.aborted:
                break
        return out

    def abort(self) -> None:
        for p in self.members:
            p.abort()

    def settle(self) -> list[Settled]:
        return [p.settle() for p in self.members]

    def commit(self, ranks: list[bytes]) -> None:
        for p, r in zip(self.members, ranks, strict=True):
            p.commit(r)

    def link(self, ref: int) -> tuple[int, int]:
        return self.members[ref % self.parts].link(ref)

    def dump(self) -> list[dict[str, Any]]:
        return [p.dump() for p in self.members]

    def load(
        self, data: list[dict[str, Any]], plans: list[list[list[tuple[int, int, int]]]]
    ) -> None:
        for p, d, plan in zip(self.members, data, plans, strict=True):
            p.load(d, plan)

    def close(self) -> None:
        pass


class WorkerDied(RuntimeError):
    pass


_WORKER_PIDS: set[int] = set()  # the worker processes of the searches running in this process


def workers_rss_mb() -> float:
    """The resident memory of this process's search workers (for --max-memory and progress)."""
    from kvmtlb.jobs import rss_mb

    return sum(rss_mb(pid) for pid in list(_WORKER_PIDS))


def _serve(
    system: System,
    part: int,
    parts: int,
    commands: Any,
    inboxes: Sequence[Any],
    replies: Any,
    stop: Any,
) -> None:
    """A worker process: one partition, driven by the coordinator's commands."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C
    gc.disable()
    p = Partition(system, part, parts)
    inbox = inboxes[part]
    while True:
        op, arg = commands.get()
        try:
            if op == "quit":
                return
            if op == "expand":
                done = 0

                def take(block: bool) -> None:
                    nonlocal done
                    while True:
                        try:
                            data = inbox.get(timeout=1.0) if block else inbox.get_nowait()
                        except queue.Empty:
                            return
                        if data is None:
                            done += 1
                        else:
                            p.receive(data)
                        if block:
                            return

                def check_stop(states: int, transitions: int) -> bool:
                    with contextlib.suppress(Exception):
                        replies.put_nowait(("progress", part, (states, transitions)))
                    return bool(stop.is_set())

                res = p.expand(
                    lambda o, data: inboxes[o].put(data), lambda: take(False), check_stop, arg
                )
                for o in range(parts):
                    if o != part:
                        inboxes[o].put(None)  # the end of this partition's offers
                while done < parts - 1:
                    take(True)
                if res.aborted or res.error is not None:
                    p.abort()
                replies.put(("expand", part, res))
            elif op == "seed":
                p.seed()
                replies.put(("seed", part, None))
            elif op == "abort":
                p.abort()
                replies.put(("abort", part, None))
            elif op == "settle":
                replies.put(("settle", part, p.settle()))
            elif op == "commit":
                p.commit(arg)
                replies.put(("commit", part, None))
            elif op == "link":
                replies.put(("link", part, p.link(arg)))
            elif op == "dump":
                replies.put(("dump", part, p.dump()))
            elif op == "load":
                p.load(*arg)
                replies.put(("load", part, None))
        except Exception as e:
            replies.put(("crash", part, (type(e).__name__, str(e), traceback.format_exc())))


class ProcessGroup:
    """P partitions in P worker processes (forked: they inherit the system), which exchange
    offers directly through one inbox queue each."""

    def __init__(self, system: System, parts: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.parts = parts
        self.stop = ctx.Event()
        self.replies = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(parts)]
        self.commands = [ctx.Queue() for _ in range(parts)]
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.procs = [
                ctx.Process(
                    target=_serve,
                    args=(
                        system,
                        p,
                        parts,
                        self.commands[p],
                        self.inboxes,
                        self.replies,
                        self.stop,
                    ),
                    daemon=True,
                )
                for p in range(parts)
            ]
            for proc in self.procs:
                proc.start()
                if proc.pid is not None:
                    _WORKER_PIDS.add(proc.pid)
        finally:
            signal.signal(signal.SIGINT, old)
        self.progress: dict[int, tuple[int, int]] = {}
        self.stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop.set()

    def _ask(
        self,
        op: str,
        args: Sequence[Any] | None = None,
        who: Sequence[int] | None = None,
        tick: Callable[[], None] = lambda: None,
    ) -> list[Any]:
        who = list(range(self.parts)) if who is None else list(who)
        for i, p in enumerate(who):
            self.commands[p].put((op, None if args is None else args[i]))
        got: dict[int, Any] = {}
        while len(got) < len(who):
            try:
                kind, part, value = self.replies.get(timeout=POLL_SECONDS)
            except queue.Empty:
                tick()
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise WorkerDied(
                        f"a search worker process died (exit code {dead[0].exitcode})"
                    ) from None
                continue
            if kind == "progress":
                self.progress[part] = value
                continue
            if kind == "crash":
                name, text, tb = value
                raise WorkerDied(f"search worker {part}: {name}: {text}\n{tb}")
            assert kind == op, (kind, op)
            got[part] = value
        return [got[p] for p in who]

    def seed(self, part: int) -> None:
        self._ask("seed", [None], [part])

    def expand(self, tick: Callable[[int, int], str | None], limit: int) -> list[Expanded]:
        self.progress = {}

        def poll() -> None:
            states = sum(s for s, _ in self.progress.values())
            transitions = sum(t for _, t in self.progress.values())
            reason = tick(states, transitions)
            if reason:
                self.request_stop(reason)

        out: list[Expanded] = self._ask("expand", [limit] * self.parts, tick=poll)
        return out

    def abort(self) -> None:
        self._ask("abort")

    def settle(self) -> list[Settled]:
        return self._ask("settle")

    def commit(self, ranks: list[bytes]) -> None:
        self._ask("commit", ranks)

    def link(self, ref: int) -> tuple[int, int]:
        p = ref % self.parts
        parent, action = self._ask("link", [ref], [p])[0]
        return int(parent), int(action)

    def dump(self) -> list[dict[str, Any]]:
        return self._ask("dump")

    def load(
        self, data: list[dict[str, Any]], plans: list[list[list[tuple[int, int, int]]]]
    ) -> None:
        self._ask("load", list(zip(data, plans, strict=True)))

    def close(self) -> None:
        for q in self.commands:
            with contextlib.suppress(Exception):
                q.put(("quit", None))
        for proc in self.procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
            _WORKER_PIDS.discard(proc.pid or 0)
        for q in [*self.commands, *self.inboxes, self.replies]:
            q.cancel_join_thread()
            q.close()


def rank(settled: Sequence[Settled]) -> list[bytes]:
    """The global ranks of the partitions' new frontier states: their positions when every
    partition's (sorted) keys are merged."""
    import heapq

    lists = []
    for s in settled:
        a = array("q")
        a.frombytes(s.keys)
        lists.append(a)
    out = [array("q", bytes(8 * len(a))) for a in lists]
    merged = heapq.merge(
        *[zip(a, range(len(a)), [p] * len(a), strict=True) for p, a in enumerate(lists)]
    )
    for r, (_, i, p) in enumerate(merged):
        out[p][i] = r
    return [a.tobytes() for a in out]


@dataclass
class Options:
    """How a partitioned search runs (the explorer's options, and the checkpoint's)."""

    max_states: int = 0
    max_depth: int = 0
    progress: Callable[[Progress], str | None] | None = None
    explain: Callable[[BaseException], str] = where
    checkpoint: str | None = None  # a directory: write a checkpoint there
    checkpoint_every: float = 300.0  # seconds between checkpoints
    resume: bool = False  # continue from the checkpoint in `checkpoint`
    identity: dict[str, Any] = field(default_factory=dict)  # what the checkpoint is of


def explore_partitioned(
    system: System,
    workers: int = 2,
    backend: str = "local",
    ray_address: str | None = None,
    spec: Any = None,
    **options: Any,
) -> Result:
    """The breadth-first search of explorer.explore on `workers` partitions: worker processes
    (backend "local"; one worker: in this process), or Ray actors (backend "ray",
    kvmtlb.check.ray_backend; `spec`: its SystemSpec, from which the actors build the system;
    `ray_address`: a cluster's, or None for a local Ray). Options: those of `Options`. Raises
    checkpoint.CheckpointError for a bad checkpoint, ray_backend.RayError without Ray."""
    from kvmtlb.check import checkpoint as ck

    opts = Options(**options)
    state = ck.load(opts.checkpoint, system, opts.identity) if opts.resume else None
    if opts.checkpoint and not opts.resume:
        ck.prepare(opts.checkpoint)
    parts = state.parts if state is not None else max(1, workers)
    was = gc.isenabled()
    gc.disable()
    group: Group
    if backend == "ray":
        from kvmtlb.check.ray_backend import RayGroup

        group = RayGroup(system, parts, ray_address, spec)
    elif parts == 1:
        group = LocalGroup(system, 1)
    else:
        group = ProcessGroup(system, parts)
    try:
        return _search(system, group, opts, state)
    finally:
        group.close()
        if was:
            gc.enable()


def _search(system: System, group: Group, opts: Options, state: Any) -> Result:
    from kvmtlb.check import checkpoint as ck

    parts = group.parts
    t0 = time.perf_counter()
    fingerprint = canonicalizer(system).fingerprint
    if state is None:
        first = check(system, system.initial)
        if first is not None:
            return _done(system, group, "violation", first.prop, first.detail, 1, 0, 0, t0, [])
        root_fp = fingerprint(system.initial)
        group.seed(owner(root_fp, parts))
        states, transitions, depth = 1, 0, 0
        frontier = 1
        finished = not unfinished(system, system.initial)
        last: tuple[int, int] | None = None  # (key, reference) of the last state found
        earlier = 0.0
    else:
        try:
            group.load(state.data, state.plans)
        except (ValueError, WorkerDied) as e:
            raise ck.CheckpointError(
                f"--resume {opts.checkpoint}: the checkpoint does not replay on this scenario "
                f"and policy ({str(e).splitlines()[0]}); start again without --resume"
            ) from None
        states, transitions, depth = state.states, state.transitions, state.depth
        frontier, finished, earlier = state.frontier, state.finished, state.seconds
        last = state.last
        t0 -= earlier
    last_ckpt = time.perf_counter()
    stopped: str | None = None
    last_tick = 0.0

    def tick(extra_states: int, extra_transitions: int) -> str | None:
        nonlocal last_tick
        now = time.perf_counter()
        if opts.progress is None or now - last_tick < POLL_SECONDS:
            return None
        last_tick = now
        p = Progress(states + extra_states, transitions + extra_transitions, depth + 1, now - t0)
        return opts.progress(p)

    def save() -> None:
        if opts.checkpoint:
            ck.save(
                opts.checkpoint,
                opts.identity,
                group.dump(),
                ck.Meta(
                    parts,
                    states,
                    transitions,
                    depth,
                    frontier,
                    finished,
                    time.perf_counter() - t0,
                    last,
                    fingerprint(system.initial),
                ),
            )

    limit = -(-opts.max_states // parts) if opts.max_states else 0
    with _FirstCtrlC(group):
        while frontier:
            if group.stop_reason:
                stopped = group.stop_reason
                break
            expanded = group.expand(tick, limit)
            err = min((e.error for e in expanded if e.error is not None), default=None)
            if err is not None:
                group.abort()
                return _crash(system, group, err, opts, states, transitions, depth, t0)
            if any(e.aborted for e in expanded):
                group.abort()
                stopped = group.stop_reason or MAX_STATES  # no reason: the partition's limit
                break
            settled = group.settle()
            depth += 1
            transitions += sum(e.transitions for e in expanded)
            states += sum(e.obs_states for e in expanded) + sum(s.added for s in settled)
            found: list[tuple[int, int, str, str, int, int]] = [
                f for e in expanded for f in e.found
            ]
            found += [
                (pr, key, prop, det, ref, -1)
                for s in settled
                for pr, key, prop, det, ref in s.found
            ]
            if found:
                _pr, _key, prop, det, ref, ai = min(found, key=lambda f: (f[0], f[1]))
                path = _path(group, ref) + ([ai] if ai >= 0 else [])
                return _done(
                    system, group, "violation", prop, det, states, transitions, depth, t0, path
                )
            dls = [e.deadlock for e in expanded if e.deadlock is not None]
            if dls:
                _, ref, det = min(dls)
                return _done(
                    system,
                    group,
                    "deadlock",
                    None,
                    det,
                    states,
                    transitions,
                    depth - 1,
                    t0,
                    _path(group, ref),
                )
            lasts = [s.last for s in settled if s.last is not None]
            if lasts:
                last = max(lasts)
            finished = finished or any(s.finished for s in settled)
            group.commit(rank(settled))
            frontier = sum(len(s.keys) // 8 for s in settled)
            if opts.max_depth and depth >= opts.max_depth and frontier:
                stopped = MAX_DEPTH
                break
            if opts.max_states and states >= opts.max_states and frontier:
                stopped = MAX_STATES
                break
            if opts.checkpoint and time.perf_counter() - last_ckpt >= opts.checkpoint_every:
                save()
                last_ckpt = time.perf_counter()
    if stopped is not None:
        save()
        where_ = (
            f"; checkpoint in {opts.checkpoint}: continue with --resume {opts.checkpoint}"
            if opts.checkpoint
            else ""
        )
        return Result(
            "stopped",
            None,
            f"stopped ({STOP_WHY.get(stopped, stopped)}): the search did not finish, nothing is "
            f"proven{where_}",
            states,
            transitions,
            depth,
            time.perf_counter() - t0,
            stopped=stopped,
        )
    if not finished:
        assert last is not None
        path = _path(group, last[1])
        w = system.initial
        for ai in path:
            w = apply(system, w, enabled(system, w)[ai], tracing=False).world
        busy = ", ".join(unfinished(system, w))
        detail = (
            f"livelock: no interleaving lets every thread finish (left with work: {busy}); "
            "the trace leads to the last state found"
        )
        return _done(system, group, "deadlock", None, detail, states, transitions, depth, t0, path)
    return _done(system, group, "safe", None, "", states, transitions, depth, t0, [])


class _FirstCtrlC:
    """During a search, the first Ctrl-C asks the partitions to stop (the level in progress is
    dropped, a checkpoint written if asked for); a second one raises KeyboardInterrupt."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.old: Any = None

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, self.old)
        self.group.request_stop(INTERRUPTED)

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _path(group: Group, ref: int) -> list[int]:
    out: list[int] = []
    while True:
        parent, action = group.link(ref)
        if parent < 0:
            return out[::-1]
        out.append(action)
        ref = parent


def _done(
    system: System,
    group: Group,
    verdict: str,
    prop: str | None,
    detail: str,
    states: int,
    transitions: int,
    depth: int,
    t0: float,
    path: list[int],
) -> Result:
    res = Result(verdict, prop, detail, states, transitions, depth, time.perf_counter() - t0, path)
    res.trace = replay(system, path)
    return res


def _crash(
    system: System,
    group: Group,
    err: tuple[int, int, int],
    opts: Options,
    states: int,
    transitions: int,
    depth: int,
    t0: float,
) -> Result:
    """A step raised in a partition: re-run it here, to report it as explorer.explore does."""
    _, ai, ref = err
    path = _path(group, ref)
    w = system.initial
    for i in path:
        w = apply(system, w, enabled(system, w)[i], tracing=False).world
    a = enabled(system, w)[ai]
    try:
        apply(system, w, a, tracing=False)
    except Exception as e:
        res = Result(
            "error",
            None,
            f"step {len(path) + 1}, {a.actor}: {describe(system, w, a)} raised {opts.explain(e)}",
            states,
            transitions,
            depth,
            time.perf_counter() - t0,
            path,
            error=e,
        )
        res.trace = replay(system, path)
        return res
    raise RuntimeError(f"a step raised in a search worker but not when re-run (path {path})")


def default_workers() -> int:
    return os.cpu_count() or 1


__all__ = ["Violation", "explore_partitioned"]
