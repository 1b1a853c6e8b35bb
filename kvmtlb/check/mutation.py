"""`kvmtlb mutate`: run every mutant of a policy over a suite, and say which ones it kills.

1. Record: the policy runs every (scenario, configuration) of the suite with its methods wrapped
   (`mutate.recorder`); each run gives its verdict, its state and transition counts, and the
   flush sites it reached.
2. Mutants: every site yields the mutants of `mutate.WEAKER`. A mutant runs only where its site
   was reached and the policy itself was safe (elsewhere it cannot differ, or the run says
   nothing), smallest runs first, in rounds of 1, 2, 4, ... runs per mutant, and stops at the
   first run it fails: a violation, a deadlock, or a boot that never reaches the guest. That run
   kills it.
3. A mutant that no run kills either never changed an operation on any run it took
   (`equivalent`: the same hardware operations on every path), or `survived`: a flush the suite
   does not need, or a gap in the suite. A survivor whose every run explored exactly as many
   states and transitions as the policy left no trace in the state space at all (`same space`):
   what the dropped operation removed was refilled, or was never there.

The score is killed / (killed + survived). Sites the code has but no run reached are listed from
the policy's source (`unreached_sites`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kvmtlb import jobs
from kvmtlb.check import mutate
from kvmtlb.check.explorer import explore
from kvmtlb.kvm.policy import KvmPolicy, registry
from kvmtlb.model.scenario import Config, Scenario, load, reconfigure
from kvmtlb.model.system import BootError, build


@dataclass(frozen=True)
class Run:
    """A scenario file under its own configuration (config None) or another (--matrix)."""

    path: str
    config: Config | None = None

    def label(self, scenario: str) -> str:
        return scenario + (f" [{self.config.label()}]" if self.config is not None else "")


@dataclass(frozen=True)
class RecordJob:
    policy: str
    run: Run
    max_states: int


@dataclass(frozen=True)
class MutantJob:
    policy: str
    mutation: mutate.Mutation
    run: Run
    max_states: int


def _scenario(policy: str, run: Run) -> Scenario:
    names = set(registry()) | {policy}
    s = load(run.path, names)
    return reconfigure(s, run.config) if run.config is not None else s


def record_run(job: RecordJob) -> dict[str, Any]:
    """Worker: the policy itself on one run, recording the sites it reaches."""
    from kvmtlb.check.runner import load_policy

    base = load_policy(job.policy)
    rec = mutate.Recording()
    s = _scenario(base.name, job.run)
    try:
        system = build(s, mutate.recorder(base, rec)())
    except BootError as e:
        return {"scenario": s.name, "verdict": "boot-failure", "detail": str(e), "sites": []}
    r = explore(system, max_states=job.max_states)
    return {
        "scenario": s.name,
        "verdict": r.label,
        "states": r.states,
        "transitions": r.transitions,
        "sites": sorted((site.path, site.op) for site in rec.sites),
    }


def mutant_run(job: MutantJob) -> dict[str, Any]:
    """Worker: one mutant on one run."""
    from kvmtlb.check.runner import load_policy

    base = load_policy(job.policy)
    cls = mutate.make_mutant(base, job.mutation)
    s = _scenario(cls.name, job.run)
    before = mutate.FIRED.get(job.mutation.id, 0)
    try:
        system = build(s, cls())
    except BootError as e:  # a mutant that never lets a vCPU enter is dead; anything else is ours
        if "reach guest mode" in str(e):
            return {"verdict": "boot-failure", "property": "livelock at boot", "trace": 0}
        return {"verdict": "error", "detail": str(e)}
    r = explore(system, max_states=job.max_states)
    return {
        "fired": mutate.FIRED.get(job.mutation.id, 0) - before,
        "verdict": r.label,
        "property": r.prop or ("deadlock" if r.verdict == "deadlock" else None),
        "trace": len(r.trace),
        "states": r.states,
        "transitions": r.transitions,
        "stopped": r.verdict == "stopped",
    }


@dataclass
class MutantResult:
    mutation: mutate.Mutation
    runs: list[Run]  # where its site was reached and the policy was safe
    status: str = "survived"  # killed | survived | equivalent | inconclusive | error | unfinished
    killed_by: str = ""  # "scenario [config]"
    prop: str = ""
    trace: int = 0
    tried: int = 0
    same_counts: bool = True  # every run explored as many states and transitions as the policy
    fired: int = 0  # how often the change took effect


@dataclass
class Report:
    policy: str
    runs: int
    mutants: list[MutantResult] = field(default_factory=list)
    unreached: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def killed(self) -> int:
        return sum(m.status == "killed" for m in self.mutants)

    @property
    def survived(self) -> int:
        return sum(m.status == "survived" for m in self.mutants)

    @property
    def score(self) -> float:
        n = self.killed + self.survived
        return self.killed / n if n else 1.0


def suite_runs(paths: list[str], matrix: bool) -> list[Run]:
    from kvmtlb.check.runner import configurations

    out = []
    for p in paths:
        out.append(Run(p))
        if matrix:
            s = load(p, set(registry()))
            out.extend(Run(p, c) for c in configurations(s))
    return out


def run_campaign(
    policy: str,
    paths: list[str],
    *,
    matrix: bool = True,
    workers: int = 1,
    max_states: int = 200_000,
    progress: Callable[[str, int, int], None] | None = None,
) -> Report:
    """Record, then run every mutant (see the module's docstring)."""
    from kvmtlb.check.runner import load_policy

    base = load_policy(policy)
    runs = suite_runs(paths, matrix)
    report = Report(policy=base.name, runs=len(runs))
    done = [0]

    def tick(what: str, total: int) -> Callable[[int, Any], None]:
        done[0] = 0

        def f(_i: int, _r: Any) -> None:
            done[0] += 1
            if progress is not None:
                progress(what, done[0], total)

        return f

    rec_jobs = [RecordJob(policy, r, max_states) for r in runs]
    out = jobs.run_pool(
        record_run,
        rec_jobs,
        workers,
        failed=lambda _i, e: {"verdict": "error", "detail": str(e), "sites": []},
        done=tick("record", len(rec_jobs)),
    )
    if out.interrupted:
        report.interrupted = True
        return report
    base_runs: dict[Run, dict[str, Any]] = {}
    reached: dict[mutate.Site, list[Run]] = {}
    for run, res in zip(runs, out.results, strict=True):
        assert res is not None
        base_runs[run] = res
        for path, op in res["sites"]:
            reached.setdefault(mutate.Site(tuple(path), op), []).append(run)
    used = frozenset(site.op for site in reached)
    for site in sorted(reached):
        safe = [r for r in reached[site] if base_runs[r]["verdict"] == "safe"]
        safe.sort(key=lambda r: base_runs[r]["states"])
        for m in mutate.mutations(site, used):
            report.mutants.append(MutantResult(m, safe))
    report.unreached = unreached_sites(base, set(reached))
    _run_mutants(policy, report, base_runs, workers, max_states, tick)
    return report


def _run_mutants(
    policy: str,
    report: Report,
    base_runs: dict[Run, dict[str, Any]],
    workers: int,
    max_states: int,
    tick: Callable[[str, int], Callable[[int, Any], None]],
) -> None:
    alive = [m for m in report.mutants if m.runs]
    for m in report.mutants:
        if not m.runs:
            m.status = "inconclusive"  # reached only where the policy itself is not safe
    chunk = 1
    while alive:
        batch: list[tuple[MutantResult, Run]] = []
        for m in alive:
            batch += [(m, r) for r in m.runs[m.tried : m.tried + chunk]]
        mjobs = [MutantJob(policy, m.mutation, r, max_states) for m, r in batch]
        out = jobs.run_pool(
            mutant_run,
            mjobs,
            workers,
            failed=lambda _i, e: {"verdict": "error", "detail": str(e)},
            done=tick(f"mutants (batch of {len(mjobs)})", len(mjobs)),
        )
        for (m, run), res in zip(batch, out.results, strict=True):
            if res is None or m.status in ("killed", "error"):
                continue
            m.tried += 1
            m.fired += int(res.get("fired", 0))
            base = base_runs[run]
            if res["verdict"] not in ("safe", "error") and not res.get("stopped"):
                m.status = "killed"
                m.killed_by = run.label(base["scenario"])
                m.prop = str(res.get("property") or res["verdict"])
                m.trace = int(res.get("trace", 0))
            elif res["verdict"] == "error":
                m.status = "error"
                m.killed_by = f"{run.label(base['scenario'])}: {res.get('detail', '')}"
            elif res.get("stopped") or (res["states"], res["transitions"]) != (
                base["states"],
                base["transitions"],
            ):
                m.same_counts = False
        if out.interrupted:
            report.interrupted = True
            for m in alive:
                if m.status not in ("killed", "error"):
                    m.status = "unfinished"  # stopped before every run it needed
            return
        still = []
        for m in alive:
            if m.status in ("killed", "error"):
                continue
            if m.tried >= len(m.runs):
                m.status = "survived" if m.fired else "equivalent"
                continue
            still.append(m)
        alive = still
        chunk *= 2


# -- sites the code has but no run reached ---------------------------------------------------------
_SOURCE_SITES = (
    (re.compile(r"\bInvept\("), "INVEPT"),
    (re.compile(r"\bInvvpid\("), "INVVPID"),
    (re.compile(r"\bInvlpga\("), "INVLPGA"),
    (re.compile(r"kvm_make(_vcpu)?_request\([^)]*KVM_REQ_TLB_FLUSH"), "flush request"),
    (re.compile(r"tlb_control=TLB_CONTROL_FLUSH"), "TLB_CONTROL"),
    (re.compile(r"asid_generation -= 1"), "new ASID"),
    (re.compile(r"kvm_kick_many_cpus\("), "kick"),
)


def unreached_sites(cls: type[KvmPolicy], reached: set[mutate.Site]) -> list[str]:
    """Methods of the policy whose source makes a flush operation, on no reached site's path.
    A static look at the source: it names where to write a scenario, not proof of a gap."""
    on_paths = {name for site in reached for name in site.path}
    out = []
    for name in mutate.policy_methods(cls):
        fn = getattr(cls, name)
        try:
            src = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        body = src.split('"""', 2)[-1] if src.count('"""') >= 2 else src
        kinds = sorted({what for rx, what in _SOURCE_SITES if rx.search(body)})
        if kinds and name not in on_paths:
            where = Path(inspect.getsourcefile(fn) or "?").name
            out.append(f"{where}:{name} ({', '.join(kinds)})")
    return out


def to_json(report: Report) -> dict[str, Any]:
    return {
        "policy": report.policy,
        "runs": report.runs,
        "killed": report.killed,
        "survived": report.survived,
        "equivalent": sum(m.status == "equivalent" for m in report.mutants),
        "inconclusive": sum(m.status == "inconclusive" for m in report.mutants),
        "errors": sum(m.status == "error" for m in report.mutants),
        "score": round(report.score, 4),
        "interrupted": report.interrupted,
        "mutants": [
            {
                "id": m.mutation.id,
                "policy": mutate.PREFIX + report.policy + "|" + m.mutation.id,
                "site": " > ".join(m.mutation.site.path),
                "op": m.mutation.site.op,
                "change": m.mutation.change,
                "status": m.status,
                "killed_by": m.killed_by or None,
                "property": m.prop or None,
                "trace": m.trace or None,
                "runs_reaching_site": len(m.runs),
                "runs_tried": m.tried,
                "same_space": m.status == "survived" and m.same_counts,
            }
            for m in report.mutants
        ],
        "unreached": report.unreached,
    }


# -- the command -----------------------------------------------------------------------------------
def mutate_command(
    policy: Annotated[
        str, typer.Argument(metavar="NAME|PATH.py:Class", help="The policy to mutate.")
    ],
    files: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="FILE|DIR|NAME",
            help="Scenarios to run the mutants over (default: the built-in suite).",
        ),
    ] = None,
    matrix: Annotated[
        bool,
        typer.Option(
            "--matrix/--no-matrix",
            help="Also run every other configuration each scenario allows (default: yes).",
        ),
    ] = True,
    json_out: Annotated[
        bool, typer.Option("--json", help="The report as one JSON object.")
    ] = False,
    max_states: Annotated[
        int,
        typer.Option(metavar="N", help="Stop each search after N states (inconclusive there)."),
    ] = 200_000,
    jobs_: Annotated[
        int,
        typer.Option("--jobs", metavar="N", help="Worker processes (default: CPU count)."),
    ] = 0,
) -> None:
    """Mutate a policy at every flush site its code reaches; run the mutants over a suite.

    A mutant drops or weakens one operation at one site (a hardware invalidation, a flush
    request, a TLB_CONTROL value, a new ASID, a kick or its wait). Killed: some run fails where
    the policy passes. Survived: an unnecessary operation, or a gap in the suite. Exit 0 with
    the report, 2 on an input error, 3 when stopped.
    """
    import json
    import os

    if max_states < 0:
        typer.echo("error: --max-states takes a number >= 0", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)
    paths = suite_or_exit(policy, files, jobs_)
    workers = jobs_ or (os.cpu_count() or 1)
    err = Console(stderr=True)
    last = [0.0]

    def show(what: str, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if now - last[0] > 2 or done == total:
            last[0] = now
            err.print(f"mutate: {what}: {done}/{total}", highlight=False)

    report = run_campaign(
        policy, paths, matrix=matrix, workers=workers, max_states=max_states, progress=show
    )
    if json_out:
        typer.echo(json.dumps(to_json(report)))
    else:
        print_report(report)
    if report.interrupted:
        typer.echo("interrupted: the report covers what finished", err=True)
        raise typer.Exit(jobs.EXIT_STOPPED)


def suite_or_exit(policy: str, files: list[str] | None, jobs_: int) -> list[str]:
    """The command-line prologue of mutate and advise: the policy must load and --jobs be >= 0
    (else exit 2); the scenario paths (default: the built-in suite)."""
    from kvmtlb.check.inputs import scenario_paths_or_exit
    from kvmtlb.check.runner import InputError, builtin_scenarios, load_policy

    if jobs_ < 0:
        typer.echo("error: --jobs takes a number >= 0", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)
    try:
        load_policy(policy)
    except InputError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(jobs.EXIT_INPUT) from None
    return scenario_paths_or_exit(files) if files else [str(p) for p in builtin_scenarios()]


def print_report(report: Report) -> None:
    console = Console() if Console().is_terminal else Console(width=240)
    table = Table(title=f"kvmtlb mutate {report.policy}: {len(report.mutants)} mutants")
    for col in ("mutant", "status", "killed by", "property (trace)"):
        table.add_column(col, overflow="fold")
    for m in report.mutants:
        table.add_row(
            escape(m.mutation.id),
            m.status + (" (same space)" if m.status == "survived" and m.same_counts else ""),
            escape(m.killed_by),
            f"{m.prop} ({m.trace})" if m.status == "killed" else "",
        )
    console.print(table)
    if report.unreached:
        console.print("Flush sites in the code that no run reached:")
        for u in report.unreached:
            console.print(f"  {escape(u)}")
    equivalent = sum(m.status == "equivalent" for m in report.mutants)
    console.print(
        f"{report.runs} runs; {report.killed} killed, {report.survived} survived, "
        f"{equivalent} equivalent (no change in any run), "
        f"{sum(m.status == 'inconclusive' for m in report.mutants)} inconclusive; "
        f"mutation score {report.score:.0%}",
        highlight=False,
    )


__all__ = [
    "Report",
    "Run",
    "mutate_command",
    "run_campaign",
    "suite_or_exit",
    "suite_runs",
    "to_json",
]
