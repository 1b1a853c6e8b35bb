"""The partitioned breadth-first search (kvmtlb.check.parallel) on Ray actors.

`pip install 'kvmtlb[ray]'`. Each partition is a Ray actor (one CPU) that rebuilds the system
from a `SystemSpec` (the scenario's and a user policy's file contents travel with it, so the
nodes of a cluster need kvmtlb installed, not the files) and runs parallel.Partition; actors
send their offers to each other directly (`receive`, in batches of bytes), and the driver
(`kvmtlb check --backend ray`) coordinates the levels as parallel._search does for worker
processes: verdicts, counts and traces are the same. Without --ray-address, ray.init() starts
a Ray on this machine; with one (`auto`, `HOST:6379`, `ray://HOST:10001`), the search joins
that cluster. The driver writes checkpoints on its own disk.
"""

from __future__ import annotations

import gc
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from kvmtlb.check.parallel import POLL_SECONDS, Expanded, Partition, Settled
from kvmtlb.model.scenario import Config
from kvmtlb.model.system import System

INSTALL = "the Ray backend needs Ray: pip install 'kvmtlb[ray]'"


class RayError(Exception):
    """Ray is not installed, or the cluster cannot be joined (an input error: exit 2)."""


@dataclass(frozen=True)
class SystemSpec:
    """What an actor needs to build the driver's system on any node."""

    scenario_name: str  # the file's name, for messages
    scenario_text: str
    policy_spec: str  # a registered name, or PATH.py:Class
    policy_text: str | None  # a user policy's file, when the spec names one
    config: Config | None  # --matrix: another configuration


def spec_of(scenario_path: str, policy_spec: str, config: Config | None) -> SystemSpec:
    from kvmtlb.check.runner import is_user_spec

    with open(scenario_path) as f:
        text = f.read()
    policy_text = None
    if is_user_spec(policy_spec):
        with open(policy_spec.rsplit(":", 1)[0]) as f:
            policy_text = f.read()
    return SystemSpec(os.path.basename(scenario_path), text, policy_spec, policy_text, config)


def build_system(spec: SystemSpec) -> System:
    """The system of `spec`, on whatever node this runs (files written to a temporary
    directory first, under their own names, so that messages name them alike)."""
    from kvmtlb.check.runner import _reconfigure, known_policies, load_policy
    from kvmtlb.model.scenario import load
    from kvmtlb.model.system import build

    d = tempfile.mkdtemp(prefix="kvmtlb-ray-")
    policy = spec.policy_spec
    if spec.policy_text is not None:
        path, cls_name = policy.rsplit(":", 1)
        local = os.path.join(d, os.path.basename(path))
        with open(local, "w") as f:
            f.write(spec.policy_text)
        policy = f"{local}:{cls_name}"
    cls = load_policy(policy)
    scenario_path = os.path.join(d, spec.scenario_name)
    with open(scenario_path, "w") as f:
        f.write(spec.scenario_text)
    scenario = load(scenario_path, known_policies([policy]) | {cls.name})
    if spec.config is not None:
        scenario = _reconfigure(scenario, spec.config)
    return build(scenario, cls())


class PartitionActor:
    """One partition in a Ray actor."""

    def __init__(self, spec: SystemSpec, part: int, parts: int) -> None:
        gc.disable()  # as explorer.explore does: worlds are trees of tuples
        self.p = Partition(build_system(spec), part, parts)
        self.peers: list[Any] = []

    def set_peers(self, peers: list[Any]) -> None:
        self.peers = peers

    def seed(self) -> None:
        self.p.seed()

    def expand(self, limit: int) -> tuple[Expanded, list[Any]]:
        """Expand; the offers to other partitions are calls of their `receive`, whose
        references the driver waits for before it settles the level."""
        refs: list[Any] = []

        def send(o: int, data: bytes) -> None:
            refs.append(self.peers[o].receive.remote(data))

        res = self.p.expand(send, lambda: None, lambda _s, _t: False, limit)
        return res, refs

    def receive(self, data: bytes) -> None:
        self.p.receive(data)

    def abort(self) -> None:
        self.p.abort()

    def settle(self) -> Settled:
        return self.p.settle()

    def commit(self, ranks: bytes) -> None:
        self.p.commit(ranks)

    def link(self, ref: int) -> tuple[int, int]:
        return self.p.link(ref)

    def dump(self) -> dict[str, Any]:
        return self.p.dump()

    def load(self, data: dict[str, Any], plan: list[list[tuple[int, int, int]]]) -> None:
        self.p.load(data, plan)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayError(INSTALL) from None
    return ray


class RayGroup:
    """parallel.Group on Ray actors."""

    def __init__(self, system: System, parts: int, address: str | None, spec: SystemSpec) -> None:
        ray = _ray()
        self.ray = ray
        self.parts = parts
        self.stop_reason: str | None = None
        self.started = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(parts, 1), include_dashboard=False, log_to_driver=False)
            except Exception as e:
                where_ = f"--ray-address {address}" if address else "a local Ray"
                raise RayError(
                    f"{where_}: cannot start or join Ray ({type(e).__name__}: {e}); check the "
                    "address (`ray status` on the head node prints it)"
                ) from None
            self.started = True
        actor = ray.remote(num_cpus=1)(PartitionActor)
        self.actors = [actor.remote(spec, p, parts) for p in range(parts)]
        ray.get([a.set_peers.remote(self.actors) for a in self.actors])

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def _all(self, method: str, args: list[Any] | None = None) -> list[Any]:
        calls = [
            getattr(a, method).remote(*([] if args is None else [args[i]]))
            for i, a in enumerate(self.actors)
        ]
        return list(self.ray.get(calls))

    def seed(self, part: int) -> None:
        self.ray.get(self.actors[part].seed.remote())

    def expand(self, tick: Any, limit: int) -> list[Expanded]:
        ray = self.ray
        pending = [a.expand.remote(limit) for a in self.actors]
        while True:
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
            if len(ready) == len(pending):
                break
            reason = tick(0, 0)
            if reason:
                self.request_stop(reason)
        out = ray.get(pending)
        ray.get([r for _, refs in out for r in refs])  # every offer is in
        results = [res for res, _ in out]
        if self.stop_reason:
            for res in results:
                res.aborted = True
        return results

    def abort(self) -> None:
        self._all("abort")

    def settle(self) -> list[Settled]:
        return self._all("settle")

    def commit(self, ranks: list[bytes]) -> None:
        self._all("commit", ranks)

    def link(self, ref: int) -> tuple[int, int]:
        parent, action = self.ray.get(self.actors[ref % self.parts].link.remote(ref))
        return int(parent), int(action)

    def dump(self) -> list[dict[str, Any]]:
        return self._all("dump")

    def load(
        self, data: list[dict[str, Any]], plans: list[list[list[tuple[int, int, int]]]]
    ) -> None:
        ray = self.ray
        try:
            ray.get([a.load.remote(d, p) for a, d, p in zip(self.actors, data, plans, strict=True)])
        except ray.exceptions.RayTaskError as e:
            raise ValueError(str(e.cause) if e.cause is not None else str(e)) from None

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()
