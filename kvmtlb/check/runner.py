"""Running checks: policies by name or from files, (scenario, policy, configuration) jobs in
parallel worker processes, and results as JSON-ready records.

A user policy is `PATH.py:Class`: the file is imported, the class must subclass a KVM policy
(e.g. kvmtlb.kvm.versions.Kvm618), its class attributes must have the types the API gives them
(`name` a string, `STEPS` a dict of label to method name, ...), and every method it overrides must
keep the signature of the method it replaces. Any failure is an `InputError` naming the file, the
line and the fix (exit code 2). Its methods are wrapped so that a step that leaves a vCPU in a
state the explorer cannot store (a `frame` that is not a tuple of ints) is reported at the method
that did it, as the user's error.

Every run gives one record with the same keys (`RECORD_KEYS`): verdict `safe`, `violation`,
`deadlock`, `stopped` (Ctrl-C, --max-states, --timeout, --max-memory: `stopped` says which) or
`error` (`cause`: `input` when the run could not be built, `policy` when a user policy raised,
`internal` for a bug in kvmtlb, whose traceback is written to `traceback_file`).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import itertools
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from kvmtlb import jobs
from kvmtlb.check.checkpoint import CheckpointError
from kvmtlb.check.explorer import INTERRUPTED, Progress, Result, TraceStep, explore, replay
from kvmtlb.check.frontier import THRESHOLD as FRONTIER_THRESHOLD
from kvmtlb.check.hunt import PROVE_STATES, hunt
from kvmtlb.check.inputs import builtin_scenarios as builtin_scenarios  # the suites
from kvmtlb.check.parallel import workers_rss_mb
from kvmtlb.check.ray_backend import RayError
from kvmtlb.errors import where
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import KvmPolicy, registry
from kvmtlb.kvm.state import Vcpu
from kvmtlb.model.scenario import Config, Scenario, ScenarioError, load, reconfigure
from kvmtlb.model.system import BootError, System, build

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
    if spec.startswith("mutant:"):
        return _USER.setdefault(spec, _mutant(spec))
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
    _check_attributes(cls)
    _check_signatures(path, cls)
    _guard(mod_name, cls)
    if not cls.name or cls.name in reg:
        cls.name = spec
    cls.kind = "user" if cls.kind == "upstream" else cls.kind
    if not cls.based_on:
        base = next((b for b in cls.__mro__[1:] if issubclass(b, KvmPolicy) and b.name), None)
        cls.based_on = base.name if base is not None else ""
    _USER[spec] = cls
    return cls


def _mutant(spec: str) -> type[KvmPolicy]:
    """A mutant by its id (`kvmtlb mutate` prints them): the base policy with one change."""
    from kvmtlb.check.mutate import make_mutant, parse_id

    try:
        base, mutation = parse_id(spec)
    except ValueError as e:
        raise InputError(f"{e}; copy a mutant id from `kvmtlb mutate POLICY`'s report") from None
    return make_mutant(load_policy(base), mutation)


def is_user_spec(spec: str) -> bool:
    """A policy given as PATH.py:Class (not a registry name)."""
    return spec not in registry() and not spec.startswith("mutant:")


def distinct_names(specs: list[str], classes: list[type[KvmPolicy]]) -> None:
    """Refuse two different --policy whose policies have the same name: the report (and a
    scenario's [expect]) tells policies apart by name only."""
    seen: dict[str, str] = {}
    for spec, cls in zip(specs, classes, strict=True):
        other = seen.setdefault(cls.name, spec)
        if other != spec:
            raise InputError(
                f"--policy {other} and --policy {spec} are both named {cls.name!r}; give one of "
                "the classes another `name` (or none: a policy without one is named by its "
                "PATH.py:Class)"
            )


# Class attributes of the policy API and the type each must have (docs/policies.md).
_STRING_ATTRS = ("name", "kind", "based_on", "fix", "cve", "summary")
_LABEL_SET_ATTRS = ("NOT_PREEMPTIBLE", "IRQS_OFF")


def _source_line(cls: type, attr: str) -> tuple[str, int]:
    """The file and line where `attr` is set in the class that sets it (or its `class` line)."""
    owner = next((b for b in cls.__mro__ if attr in vars(b)), cls)
    try:
        path = inspect.getsourcefile(owner) or "?"
        lines, start = inspect.getsourcelines(owner)
    except (OSError, TypeError):
        return "?", 0
    pattern = re.compile(rf"\s*{re.escape(attr)}\s*(:[^=]*)?=")
    for n, text in enumerate(lines):
        if pattern.match(text):
            return path, start + n
    return path, start


def _check_attributes(cls: type[KvmPolicy]) -> None:
    def fail(attr: str, problem: str, fix: str) -> None:
        path, line = _source_line(cls, attr)
        raise InputError(f"{path}:{line}: {cls.__name__}.{attr} {problem}; {fix}")

    for attr in _STRING_ATTRS:
        value = getattr(cls, attr)
        if not isinstance(value, str):
            fail(attr, f"is {value!r}, not a string", f'write {attr} = "..." or leave it out')
    steps = cls.STEPS
    if not isinstance(steps, dict):
        fail(
            "STEPS",
            f"is {steps!r}, not a dict",
            "map each step label to the name of the method that runs it, e.g. "
            'STEPS = {**Kvm618.STEPS, "my_label": "my_method"}',
        )
    for label, method in steps.items():
        if not isinstance(label, str) or not isinstance(method, str):
            fail(
                "STEPS",
                f"maps {label!r} to {method!r}",
                'labels and method names are strings, e.g. "vcpu_enter_guest": "vcpu_enter_guest"',
            )
    for attr in _LABEL_SET_ATTRS:
        value = getattr(cls, attr)
        if not isinstance(value, frozenset | set) or not all(isinstance(x, str) for x in value):
            fail(attr, f"is {value!r}", f"make it a frozenset of step labels (strings), as {attr}")


def _guard(module: str, cls: type[KvmPolicy]) -> None:
    """Wrap every method the user's module defines (in `cls` and its bases from that module) so
    that a vCPU it leaves in a state the explorer cannot store is reported at that method."""
    for owner in cls.__mro__:
        if owner.__module__ != module:
            continue
        for name, fn in list(vars(owner).items()):
            if name.startswith("__") or not inspect.isfunction(fn):
                continue
            if getattr(fn, "_kvmtlb_guarded", False):
                continue
            setattr(owner, name, _guarded(owner.__name__, name, fn))


class PolicyStateError(Exception):
    """A user policy's method left a vCPU with a field the explorer cannot store."""


def _guarded(owner: str, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    where_ = f"{fn.__code__.co_filename}:{fn.__code__.co_firstlineno}"

    @functools.wraps(fn)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = fn(self, *args, **kwargs)
        for a in args:
            if isinstance(a, Vcpu):
                _check_vcpu(where_, owner, name, a)
            elif isinstance(a, Step):
                for v in getattr(a.vcpus, "_live", ()):
                    if v is not None:
                        _check_vcpu(where_, owner, name, v)
        return out

    guarded._kvmtlb_guarded = True  # type: ignore[attr-defined]
    return guarded


_VCPU_FIELDS = tuple(f.name for f in fields(Vcpu))


def _check_vcpu(where_: str, owner: str, method: str, v: Vcpu) -> None:
    frame = v.frame
    if type(frame) is tuple and all(type(x) is int for x in frame) and type(v.pc) is str:
        try:
            hash(tuple(getattr(v, name) for name in _VCPU_FIELDS))
            return  # the common case, checked cheaply: the wrapper runs on every call
        except TypeError:
            pass
    problem = ""
    if not isinstance(frame, tuple) or not all(isinstance(x, int) for x in frame):
        problem = f"vcpu{v.id}.frame = {frame!r}: `frame` holds a tuple of ints only"
    elif not isinstance(v.pc, str):
        problem = f"vcpu{v.id}.pc = {v.pc!r}: `pc` is a step label (a string)"
    else:
        for name in _VCPU_FIELDS:
            value = getattr(v, name)
            try:
                hash(value)
            except TypeError:
                problem = (
                    f"vcpu{v.id}.{name} = {value!r}: vCPU fields hold immutable values "
                    "(ints, bools, strings, tuples)"
                )
                break
    if problem:
        raise PolicyStateError(
            f'{where_}: {owner}.{method} left {problem} (docs/policies.md, "What must stay frozen")'
        )


def user_where(spec: str) -> Callable[[BaseException], str]:
    """How to say where a user policy's exception happened: its own message for a
    PolicyStateError, else the innermost line of the policy's file on the traceback."""
    path = os.path.abspath(spec.rsplit(":", 1)[0])

    def explain(e: BaseException) -> str:
        if isinstance(e, PolicyStateError):
            return str(e)
        text = where(e)
        frames = traceback.extract_tb(e.__traceback__)
        mine = [f for f in frames if os.path.abspath(f.filename) == path]
        if mine and mine[-1] is not frames[-1]:
            f = mine[-1]
            text += f"; called from your policy at {f.filename}:{f.lineno} in {f.name}"
        return text

    return explain


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


def known_policies(extra: list[str] = ()) -> set[str]:  # type: ignore[assignment]
    return set(registry()) | set(extra)


@dataclass(frozen=True)
class Job:
    scenario: str  # path
    policy: str  # spec
    config: Config | None = None  # another configuration (--matrix), not compared to [expect]
    exact: bool = False
    max_states: int = 0  # 0: no limit
    timeout: float = 0.0  # seconds of search; 0: no limit
    max_memory: int = 0  # MiB of resident memory of the process running the search; 0: none
    hunt: float = 0.0  # seconds of swarm walks before the breadth-first search; 0: no hunt
    hunt_workers: int = 0  # walker processes of a hunt (0: one per core)
    seed: int = 0  # the hunt's seed
    por: bool = False  # partial-order reduction by sleep sets (kvmtlb.check.reduce)
    workers: int = 1  # partitions of one search (kvmtlb.check.parallel); 1: explorer.explore
    backend: str = "local"  # "local": worker processes; "ray": Ray actors (kvmtlb[ray])
    ray_address: str | None = None  # a Ray cluster's address; None: a local Ray
    checkpoint: str | None = None  # a directory: checkpoint the search there
    checkpoint_every: float = 300.0  # seconds between checkpoints
    resume: bool = False  # continue the search checkpointed in `checkpoint`
    pack_after: int = FRONTIER_THRESHOLD  # worlds of a level kept unpacked (kvmtlb.check.frontier)
    frontier_dir: str | None = None  # packed levels in a temporary file there, not in memory

    @property
    def partitioned(self) -> bool:
        """The search runs as kvmtlb.check.parallel's partitioned one."""
        return self.workers > 1 or self.backend == "ray" or self.checkpoint is not None


def configurations(s: Scenario) -> list[Config]:
    """Every other configuration of vendor x vpid/flush_by_asid x pcid x pv that the ops allow."""
    out = []
    for vendor, flag, pcid, pv in itertools.product(
        ("intel", "amd"), (True, False), (False, True), (False, True)
    ):
        base = Config(
            vendor=vendor,
            tdp=s.config.tdp,
            flush_order=s.config.flush_order,
            pge=s.config.pge,
            pcpus=s.config.pcpus,
            vcpus=s.config.vcpus,
            hv_range_flush=s.config.hv_range_flush,
            tdp_mmu=s.config.tdp_mmu,
            eager_split=s.config.eager_split,
        )
        c = replace(base, pcid=pcid, pv_tlb_flush=pv)
        c = replace(c, vpid=flag) if vendor == "intel" else replace(c, flush_by_asid=flag)
        if vendor == s.config.vendor:
            c = replace(
                c,
                vpids=s.config.vpids,
                ept_vpid_cap=s.config.ept_vpid_cap,
                unrestricted_guest=s.config.unrestricted_guest,
                ept_ad=s.config.ept_ad,
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


def run(job: Job, show: Callable[[Progress, float], None] | None = None) -> dict[str, Any]:
    """Run one job; returns a JSON-ready record (`RECORD_KEYS`), never raises but for Ctrl-C
    outside the search. `show(progress, rss_mb)` is called about four times a second."""
    user = is_user_spec(job.policy)
    cls: type[KvmPolicy] | None = None
    scenario: Scenario | None = None
    try:
        cls = load_policy(job.policy)
        extra = [job.policy] if user else []
        scenario = load(job.scenario, known_policies(extra) | {cls.name})
        if job.config is not None:
            scenario = _reconfigure(scenario, job.config)
        system = build(scenario, cls())
        result = None
        if job.hunt:
            result = hunt(
                system,
                seconds=job.hunt,
                workers=job.hunt_workers,
                seed=job.seed,
                prove_states=job.max_states or PROVE_STATES,
                stop=jobs.stop_requested,
                progress=_watch(job, show),
            )
        if result is None and job.partitioned:
            result = _partitioned(job, scenario, cls, system, show)
        if result is None:
            packing = (
                {}
                if job.por
                else {
                    "frontier_threshold": job.pack_after,
                    "frontier_dir": job.frontier_dir,
                }
            )
            result = explore(
                system,
                por=job.por,
                exact=job.exact,
                max_states=job.max_states,
                progress=_watch(job, show),
                explain=user_where(job.policy) if user else where,
                **packing,
            )
    except (ScenarioError, InputError, CheckpointError, RayError) as e:
        return error_record(job, scenario, cls, "input", str(e))
    except Exception as e:  # BootError (the policy raised while booting) or a bug of ours
        return _exception_record(job, scenario, cls, e, user)
    if result.stopped == INTERRUPTED:
        jobs.request_stop()  # Ctrl-C in this process: the jobs after this one do not start
    expected = None if job.config is not None else scenario.expect.get(cls.name, "safe")
    rec = record(scenario, cls.name, job.policy, result, expected)
    rec["config_label"] = job.config.label() if job.config is not None else None
    if result.verdict == "error":
        if user:
            rec["cause"] = "policy"
            rec["message"] = f"{scenario.name} / {cls.name}: {result.detail}"
        else:
            assert result.error is not None
            rec.update(_internal(result.error, f"{job.scenario} / {job.policy}"))
    return rec


def _partitioned(
    job: Job,
    scenario: Scenario,
    cls: type[KvmPolicy],
    system: System,
    show: Callable[[Progress, float], None] | None,
) -> Result:
    """The search on `job.workers` partitions (kvmtlb.check.parallel), checkpointed if asked."""
    from kvmtlb.check import checkpoint
    from kvmtlb.check.parallel import explore_partitioned

    spec = None
    if job.backend == "ray":
        from kvmtlb.check.ray_backend import spec_of

        spec = spec_of(job.scenario, job.policy, job.config)
    ident = checkpoint.identity(
        scenario.name, job.scenario, cls.name, job.policy, scenario.config.as_dict()
    )
    return explore_partitioned(
        system,
        workers=job.workers,
        backend=job.backend,
        ray_address=job.ray_address,
        spec=spec,
        max_states=job.max_states,
        progress=_watch(job, show),
        explain=user_where(job.policy) if is_user_spec(job.policy) else where,
        checkpoint=job.checkpoint,
        checkpoint_every=job.checkpoint_every,
        resume=job.resume,
        identity=ident,
    )


def _watch(
    job: Job, show: Callable[[Progress, float], None] | None
) -> Callable[[Progress], str | None]:
    """The explorer's progress hook: reports progress, and stops the search on Ctrl-C (in a
    worker, through jobs.stop_requested), at --timeout and at --max-memory."""

    def hook(p: Progress) -> str | None:
        rss = jobs.rss_mb() + (workers_rss_mb() if job.partitioned else 0.0)
        jobs.report_progress(
            {
                "states": p.states,
                "transitions": p.transitions,
                "depth": p.depth,
                "seconds": p.seconds,
                "rss_mb": rss,
            }
        )
        if show is not None:
            show(p, rss)
        if jobs.stop_requested():
            return INTERRUPTED
        if job.timeout and p.seconds >= job.timeout:
            return "timeout"
        if job.max_memory and rss >= job.max_memory:
            return "max-memory"
        return None

    return hook


def _reconfigure(s: Scenario, c: Config) -> Scenario:
    """The scenario under configuration `c`; its ops are re-validated there."""
    return reconfigure(s, c)


RECORD_KEYS = (
    "scenario",
    "file",
    "policy",
    "policy_spec",
    "config",
    "config_label",
    "verdict",
    "property",
    "label",
    "expected",
    "detail",
    "trace",
    "records",
    "path",
    "states",
    "transitions",
    "depth",
    "seconds",
    "exact",
    "collision_bound",
    "store_bytes",
    "stopped",
    "hunt",
    "cause",
    "message",
    "traceback_file",
)


def record(
    scenario: Scenario, policy: str, spec: str, r: Result, expected: str | None
) -> dict[str, Any]:
    return {
        "scenario": scenario.name,
        "file": str(Path(scenario.path).resolve()),
        "policy": policy,
        "policy_spec": spec,
        "config": scenario.config.as_dict(),
        "config_label": None,
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
        "stopped": r.stopped or None,
        "hunt": None
        if r.search != "hunt"
        else {
            "found_seconds": round(r.found_seconds, 3),
            "walk_length": r.found_length,
            "shortest": r.shortest,
            "proved_depth": r.proved_depth,
        },
        "cause": None,
        "message": None,
        "traceback_file": None,
    }


def error_record(
    job: Job,
    scenario: Scenario | None,
    cls: type[KvmPolicy] | None,
    cause: str,
    message: str,
    traceback_file: str | None = None,
) -> dict[str, Any]:
    """A run that did not give a verdict: the same keys as every record, verdict "error"."""
    config = job.config or (scenario.config if scenario is not None else None)
    name = cls.name if cls is not None else job.policy
    expected = None
    if job.config is None and scenario is not None:
        expected = scenario.expect.get(name, "safe")
    return {
        "scenario": scenario.name if scenario is not None else Path(job.scenario).stem,
        "file": str(Path(job.scenario).resolve()),
        "policy": name,
        "policy_spec": job.policy,
        "config": config.as_dict() if config is not None else None,
        "config_label": job.config.label() if job.config is not None else None,
        "verdict": "error",
        "property": None,
        "label": "error",
        "expected": expected,
        "detail": message,
        "trace": [],
        "records": [],
        "path": [],
        "states": 0,
        "transitions": 0,
        "depth": 0,
        "seconds": 0.0,
        "exact": job.exact,
        "collision_bound": 0.0,
        "store_bytes": 0,
        "stopped": None,
        "hunt": None,
        "cause": cause,
        "message": message,
        "traceback_file": traceback_file,
    }


def _internal(e: BaseException, context: str) -> dict[str, Any]:
    """A bug in kvmtlb (a built-in policy or the model raised): the traceback goes to a file."""
    path = jobs.crash_report(e, context)
    return {
        "cause": "internal",
        "message": f"{context}: {jobs.internal_error_message(e, path)}",
        "traceback_file": path,
    }


def _exception_record(
    job: Job,
    scenario: Scenario | None,
    cls: type[KvmPolicy] | None,
    e: Exception,
    user: bool,
) -> dict[str, Any]:
    if user and (isinstance(e, BootError | PolicyStateError) or _in_file(e, job.policy)):
        text = str(e) if isinstance(e, BootError | PolicyStateError) else user_where(job.policy)(e)
        return error_record(job, scenario, cls, "policy", text)
    if isinstance(e, BootError) and e.__cause__ is not None:
        e = e.__cause__  # type: ignore[assignment]
    rec = error_record(job, scenario, cls, "internal", "")
    rec.update(_internal(e, f"{job.scenario} / {job.policy}"))
    rec["detail"] = rec["message"]
    return rec


def _in_file(e: BaseException, spec: str) -> bool:
    path = os.path.abspath(spec.rsplit(":", 1)[0])
    return any(os.path.abspath(f.filename) == path for f in traceback.extract_tb(e.__traceback__))


def run_all(
    job_list: list[Job],
    workers: int,
    done: Callable[[dict[str, Any]], None] | None = None,
    tick: Callable[[jobs.Tick], None] | None = None,
    show: Callable[[Progress, float], None] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Run `job_list` on `workers` processes. Returns the records of the jobs that ran, in job
    order, and whether the runs were interrupted (Ctrl-C: the jobs not started have no record,
    the ones in progress a "stopped" one). `done` is called with each record as it completes,
    `tick` about twice a second with the progress of the runs in worker processes, `show` with
    the progress of a search run in this process (one worker, or one job)."""

    def failed(i: int, e: BaseException) -> dict[str, Any]:
        job = job_list[i]
        rec = error_record(job, None, None, "internal", "")
        rec.update(_internal(e, f"{job.scenario} / {job.policy}: the worker process died"))
        rec["detail"] = rec["message"]
        return rec

    in_process = workers <= 1 or len(job_list) <= 1
    outcome = jobs.run_pool(
        functools.partial(run, show=show) if in_process else run,
        job_list,
        workers,
        failed=failed,
        done=(lambda _i, r: done(r)) if done is not None else None,
        tick=tick,
        halts=lambda r: r.get("stopped") == INTERRUPTED,
    )
    return [r for r in outcome.results if r is not None], outcome.interrupted


# -- replay ---------------------------------------------------------------------------------------
# The type of every key a record may carry; replay refuses a record with any other key.
_TYPES: dict[str, tuple[type, ...]] = {
    "scenario": (str,),
    "file": (str,),
    "policy": (str,),
    "policy_spec": (str,),
    "config": (dict,),
    "config_label": (str, type(None)),
    "verdict": (str,),
    "property": (str, type(None)),
    "label": (str,),
    "expected": (str, type(None)),
    "detail": (str,),
    "trace": (list,),
    "records": (list,),
    "path": (list,),
    "states": (int,),
    "transitions": (int,),
    "depth": (int,),
    "seconds": (int, float),
    "exact": (bool,),
    "collision_bound": (int, float),
    "store_bytes": (int,),
    "stopped": (str, type(None)),
    "hunt": (dict, type(None)),
    "cause": (str, type(None)),
    "message": (str, type(None)),
    "traceback_file": (str, type(None)),
}
_REQUIRED = ("file", "policy", "policy_spec", "config", "verdict", "property", "path")
_SAVE = "save traces with `kvmtlb check FILE --json > trace.json`"


def check_record(rec: Any) -> dict[str, Any]:
    """A saved record with the keys and types `kvmtlb check --json` writes, or InputError."""
    if not isinstance(rec, dict):
        raise InputError(f"holds {type(rec).__name__} {rec!r}, not a trace record; {_SAVE}")
    unknown = sorted(set(rec) - set(_TYPES))
    if unknown:
        raise InputError(f"the record has unknown keys {', '.join(map(repr, unknown))}; {_SAVE}")
    for key in _REQUIRED:
        if key not in rec:
            raise InputError(f"the record has no {key!r}; {_SAVE}")
    for key, value in rec.items():
        want = _TYPES[key]
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in want)
            raise InputError(f"the record's {key!r} is {value!r}, not {names}; {_SAVE}")
    if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in rec["path"]):
        raise InputError(f"the record's 'path' must be a list of action indices; {_SAVE}")
    if rec["verdict"] not in ("safe", "violation", "deadlock"):
        raise InputError(
            f"the record's verdict is {rec['verdict']!r}: only a finished search (safe, "
            "violation, deadlock) has an outcome to replay"
        )
    _check_config(rec["config"])
    return rec


def _check_config(cfg: dict[str, Any]) -> None:
    types = {f.name: f.type for f in fields(Config)}
    for key, value in cfg.items():
        if key not in types:
            raise InputError(f"the record's config has an unknown key {key!r}; {_SAVE}")
        want = str(types[key])
        ok = {
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
        }.get(want, isinstance(value, list) and all(isinstance(x, str) for x in value))
        if not ok:
            raise InputError(f"the record's config.{key} is {value!r}, not a {want}; {_SAVE}")
    if cfg.get("vendor") not in ("intel", "amd"):
        raise InputError(f"the record's config.vendor must be 'intel' or 'amd'; {_SAVE}")


def scenario_file(file: str, base: Path) -> Path:
    """A record's scenario file: absolute as written, or relative to the trace file's directory,
    then to the current directory."""
    p = Path(file)
    candidates = [p] if p.is_absolute() else [base / p, p]
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(
        f"the record's scenario file {file} is not found"
        + ("" if p.is_absolute() else f" (looked in {base} and in the current directory)")
        + "; keep the scenario where the trace names it, or next to the trace"
    )


def replay_policy(rec: dict[str, Any], given: list[tuple[str, type[KvmPolicy]]]) -> type[KvmPolicy]:
    """The policy to replay a record with. A registry name is looked up; a policy file is never
    imported because a trace names it: the user must name it with --policy."""
    spec = rec["policy_spec"]
    reg = registry()
    if spec in reg:
        return reg[spec]
    cls_name = spec.rsplit(":", 1)[-1]
    match = [c for s, c in given if c.name == rec["policy"] or s.rsplit(":", 1)[-1] == cls_name]
    user = [c for s, c in given if is_user_spec(s)]
    if len(match) == 1:
        return match[0]
    if not match and len(user) == 1:
        return user[0]
    if not given:
        raise InputError(
            f"the record was made with the policy file {spec}; replay never imports code a "
            "trace file names (a shared trace could run anything). If you trust that file, name "
            f"it again: kvmtlb replay TRACE.json --policy {spec}"
        )
    raise InputError(
        f"the record was made with {spec}, which matches none (or several) of the --policy "
        f"given ({', '.join(s for s, _ in given)}); give the one it was made with"
    )


def replay_record(
    rec: dict[str, Any],
    base: Path,
    given: list[tuple[str, type[KvmPolicy]]] = (),  # type: ignore[assignment]
) -> tuple[list[TraceStep], str | None]:
    """Re-run a saved result's path; returns the trace and the violation the last state shows.
    `base` is the trace file's directory; `given` the (spec, class) of each --policy."""
    from kvmtlb.model.properties import check

    rec = check_record(rec)
    path = rec["path"]
    system = record_system(rec, base, given)
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


def record_system(
    rec: dict[str, Any],
    base: Path,
    given: list[tuple[str, type[KvmPolicy]]] = (),  # type: ignore[assignment]
) -> System:
    """The system a checked record ran: its scenario (found as `scenario_file` says) in the
    record's configuration, under its policy (`replay_policy`)."""
    cls = replay_policy(rec, list(given))
    scenario = load(str(scenario_file(rec["file"], base)), known_policies() | {cls.name})
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
    return build(scenario, cls())
