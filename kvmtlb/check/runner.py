"""Running checks: policies by name or from files, (scenario, policy, configuration) jobs in
parallel worker processes, and results as JSON-ready records.

A user policy is `PATH.py:Class`: the file is imported, the class must subclass a KVM policy
(e.g. kvmtlb.kvm.versions.Kvm618), and every method it overrides must keep the signature of the
method it replaces. Any failure is an `InputError` naming the file and the fix (exit code 2).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kvmtlb.check.explorer import Result, TraceStep, explore, replay
from kvmtlb.kvm.policy import KvmPolicy, registry
from kvmtlb.model.scenario import Config, Scenario, ScenarioError, load, reconfigure
from kvmtlb.model.system import BootError, build

BUILTIN = Path(__file__).parent.parent / "scenarios"


class InputError(Exception):
    """Bad input other than a scenario file (a policy, a trace file): message names the fix."""


_USER: dict[str, type[KvmPolicy]] = {}


def load_policy(spec: str) -> type[KvmPolicy]:
    """A policy class by registry name or `PATH.py:Class`."""
    reg = registry()
    if spec in reg:
        return reg[spec]
    if spec in _USER:
        return _USER[spec]
    if ":" not in spec:
        raise InputError(
            f"unknown policy {spec!r}; use one of {', '.join(reg)} "
            "(kvmtlb policies lists them) or PATH.py:Class"
        )
    path, cls_name = spec.rsplit(":", 1)
    if not path.endswith(".py"):
        raise InputError(f"{spec}: a policy file must be a .py file; write PATH.py:Class")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file; give the path of the policy's .py file")
    mod_name = f"kvmtlb_user_policy_{len(_USER)}_{p.stem}"
    mspec = importlib.util.spec_from_file_location(mod_name, p)
    if mspec is None or mspec.loader is None:
        raise InputError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mod_name] = module
    try:
        mspec.loader.exec_module(module)
    except SyntaxError as e:
        raise InputError(
            f"{path}:{e.lineno}: syntax error: {e.msg}; fix the Python syntax"
        ) from None
    except Exception as e:  # the user's module raised while importing
        raise InputError(
            f"{path}: importing it raised {type(e).__name__}: {e}; fix the "
            "module so that it imports"
        ) from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        found = [
            n
            for n, v in vars(module).items()
            if inspect.isclass(v) and issubclass(v, KvmPolicy) and v.__module__ == mod_name
        ]
        raise InputError(
            f"{path}: defines no class {cls_name!r}"
            + (
                f"; policies in it: {', '.join(found)}"
                if found
                else "; define a subclass of kvmtlb.kvm.versions.Kvm618"
            )
        )
    if not inspect.isclass(cls) or not issubclass(cls, KvmPolicy):
        raise InputError(
            f"{path}: {cls_name} is not a policy; make it a subclass of a KVM "
            f"version, e.g. `class {cls_name}(Kvm618)` from kvmtlb.kvm.versions"
        )
    _check_signatures(path, cls)
    if not cls.name or cls.name in reg:
        cls.name = spec
    cls.kind = "user" if cls.kind == "upstream" else cls.kind
    if not cls.based_on:
        base = next((b for b in cls.__mro__[1:] if issubclass(b, KvmPolicy) and b.name), None)
        cls.based_on = base.name if base is not None else ""
    _USER[spec] = cls
    return cls


def _check_signatures(path: str, cls: type[KvmPolicy]) -> None:
    for name, member in vars(cls).items():
        if name.startswith("__") or not callable(member):
            continue
        base = next((getattr(b, name) for b in cls.__mro__[1:] if name in vars(b)), None)
        if base is None or not callable(base):
            continue
        got = list(inspect.signature(member).parameters)
        want = list(inspect.signature(base).parameters)
        if got != want:
            raise InputError(
                f"{path}: {cls.__name__}.{name}({', '.join(got)}) has the wrong "
                f"signature; it overrides {name}({', '.join(want)})"
            )
    for label, method in cls.STEPS.items():
        if not callable(getattr(cls, method, None)):
            raise InputError(
                f"{path}: STEPS maps {label!r} to {method!r}, which {cls.__name__} does not define"
            )


def builtin_scenarios() -> list[Path]:
    return sorted(BUILTIN.glob("*.toml"))


def known_policies(extra: list[str] = ()) -> set[str]:  # type: ignore[assignment]
    return set(registry()) | set(extra)


@dataclass(frozen=True)
class Job:
    scenario: str  # path
    policy: str  # spec
    config: Config | None = None  # another configuration (--matrix), not compared to [expect]
    exact: bool = False
    max_states: int = 0


def configurations(s: Scenario) -> list[Config]:
    """Every other configuration of vendor x vpid/flush_by_asid x pcid x pv that the ops allow."""
    out = []
    for vendor, flag, pcid, pv in itertools.product(
        ("intel", "amd"), (True, False), (False, True), (False, True)
    ):
        base = Config(vendor=vendor, pge=s.config.pge, pcpus=s.config.pcpus, vcpus=s.config.vcpus)
        c = replace(base, pcid=pcid, pv_tlb_flush=pv)
        c = replace(c, vpid=flag) if vendor == "intel" else replace(c, flush_by_asid=flag)
        if vendor == s.config.vendor:
            c = replace(
                c,
                vpids=s.config.vpids,
                ept_vpid_cap=s.config.ept_vpid_cap,
                unrestricted_guest=s.config.unrestricted_guest,
                max_asid=s.config.max_asid,
            )
        if c.label() == s.config.label() or c in out:
            continue
        try:
            _reconfigure(s, c)
        except ScenarioError:
            continue  # the scenario's ops are not valid in this configuration
        out.append(c)
    return out


def run(job: Job) -> dict[str, Any]:
    """Run one job; returns a JSON-ready record (or one with an "error")."""
    extra = [job.policy] if job.policy not in registry() else []
    try:
        cls = load_policy(job.policy)
        scenario = load(job.scenario, known_policies(extra) | {cls.name})
        if job.config is not None:
            scenario = _reconfigure(scenario, job.config)
        system = build(scenario, cls())
    except (ScenarioError, InputError, BootError) as e:
        return {"scenario": job.scenario, "policy": job.policy, "error": str(e)}
    result = explore(system, exact=job.exact, max_states=job.max_states)
    expected = None if job.config is not None else scenario.expect.get(cls.name, "safe")
    return record(scenario, cls.name, job.policy, result, expected)


def _reconfigure(s: Scenario, c: Config) -> Scenario:
    """The scenario under configuration `c`; its ops are re-validated there."""
    return reconfigure(s, c)


def record(
    scenario: Scenario, policy: str, spec: str, r: Result, expected: str | None
) -> dict[str, Any]:
    return {
        "scenario": scenario.name,
        "file": scenario.path,
        "policy": policy,
        "policy_spec": spec,
        "config": scenario.config.as_dict(),
        "verdict": r.verdict,
        "property": r.prop,
        "label": r.label,
        "expected": expected,
        "detail": r.detail,
        "trace": [
            {
                "step": t.step,
                "actor": t.actor,
                "action": t.action,
                "detail": "; ".join(
                    f"{rec.action}: {rec.detail}" if rec.detail else rec.action for rec in t.records
                ),
            }
            for t in r.trace
        ],
        "records": [
            [{"actor": rec.actor, "action": rec.action, "detail": rec.detail} for rec in t.records]
            for t in r.trace
        ],
        "path": r.path,
        "states": r.states,
        "transitions": r.transitions,
        "depth": r.depth,
        "seconds": round(r.seconds, 3),
        "exact": r.exact,
        "collision_bound": r.collision_bound,
        "store_bytes": r.store_bytes,
    }


def run_all(
    jobs: list[Job], workers: int, done: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Run `jobs` on `workers` processes; the results come back in job order. `done` is called
    with each result as it completes (for a progress bar)."""
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for j in jobs:
            out.append(run(j))
            if done is not None:
                done(out[-1])
        return out
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run, j): i for i, j in enumerate(jobs)}
        for f in as_completed(futures):
            results[futures[f]] = f.result()
            if done is not None:
                done(f.result())
    return [r for r in results if r is not None]


def replay_record(rec: dict[str, Any]) -> tuple[list[TraceStep], str | None]:
    """Re-run a saved result's path; returns the trace and the violation the last state shows."""
    from kvmtlb.model.properties import check

    if not isinstance(rec, dict):
        raise InputError(
            f"a line holds {type(rec).__name__} {rec!r}, not a trace record; save traces with "
            "`kvmtlb check --json`"
        )
    for key in ("file", "policy_spec", "path", "config"):
        if key not in rec:
            raise InputError(
                f"the trace record has no {key!r}; save traces with `kvmtlb check --json`"
            )
    path = rec["path"]
    if not isinstance(path, list) or not all(isinstance(a, int) and a >= 0 for a in path):
        raise InputError(
            "the trace record's 'path' must be a list of action indices; save traces with "
            "`kvmtlb check --json`"
        )
    if not isinstance(rec["config"], dict):
        raise InputError("the trace record's 'config' must be an object")
    cls = load_policy(rec["policy_spec"])
    scenario = load(rec["file"], known_policies() | {cls.name})
    if scenario.config.as_dict() != rec["config"]:
        scenario = _reconfigure(
            scenario,
            Config(
                **{
                    **rec["config"],
                    "ept_vpid_cap": tuple(rec["config"].get("ept_vpid_cap", ()))
                    or Config("intel").ept_vpid_cap,
                }
            ),
        )
    system = build(scenario, cls())
    trace = replay(system, path)
    from kvmtlb.model.actions import apply, enabled
    from kvmtlb.model.properties import check_observations

    w = system.initial
    v = check(system, w)
    for ai in path:
        out = apply(system, w, enabled(system, w)[ai])
        w = out.world
        # the explorer checks accesses KVM's emulator completed on the step that completed them
        v = (out.observations and check_observations(system, w, out.observations)) or check(
            system, w
        )
    return trace, (v.prop if v is not None else None)
