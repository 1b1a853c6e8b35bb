"""`kvmtlb cost`: run workloads under policies and report what each policy pays.

The command is built by `make_cost_command(resolve)`, where `resolve` turns a policy spec (a
registry name or PATH.py:Class) into a policy class; the CLI passes the checker's
`load_policy`, so user policies are loaded, checked and named the same way for `check` and
`cost`. Runs (workload x configuration x policy) are independent and run in worker processes.

Exit codes (kvmtlb/jobs.py): 0 after a report; 2 on an input error (a malformed or unknown
workload, an unknown policy, a bad --plot file name or directory, a negative --jobs, a PATH.py:Class
policy that raises or never lets a vCPU into the guest), with the message on stderr and never a
traceback; 3 when Ctrl-C stopped the runs (the ones that finished are reported); 4 when a
built-in policy or the simulator raised (a bug in kvmtlb: the traceback goes to a file).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from kvmtlb import jobs as pool
from kvmtlb.errors import where

if TYPE_CHECKING:
    from kvmtlb.cost.workload import Workload
    from kvmtlb.kvm.policy import KvmPolicy

# The simulator, the workloads and the KVM port are imported where a run needs them: this module
# is imported by every `kvmtlb` command (to register `cost`), and they were half its start-up.
Resolver = Callable[[str], "type[KvmPolicy]"]


@dataclass(frozen=True)
class Job:
    workload: str  # a path (built-ins resolved to their file)
    config: int  # index into the workload's configurations
    policy: str  # spec, resolved again in the worker
    accesses: int | None
    seed: int | None
    audit: bool
    resolve: Resolver


def run_job(job: Job) -> dict[str, Any]:
    """One run; a JSON-ready record, or one with an "error" (and "cause": "input", "policy" for
    a PATH.py:Class policy that raised, "internal" for a bug in kvmtlb, whose traceback is
    written to "traceback_file")."""
    from kvmtlb.cost.costs import CostTableError
    from kvmtlb.cost.simulate import CostError, Simulation
    from kvmtlb.cost.workload import WorkloadError, resolve
    from kvmtlb.kvm.policy import registry

    try:
        w = resolve(job.workload).with_overrides(job.accesses, job.seed)
        cls = job.resolve(job.policy)
        sim = Simulation(w, w.configs[job.config], cls(), audit=job.audit)
        return sim.run().as_dict()
    except (WorkloadError, CostError, CostTableError) as e:
        return {"workload": job.workload, "policy": job.policy, "error": str(e), "cause": "input"}
    except Exception as e:
        if job.policy not in registry():  # a user's policy raised: report it, no traceback
            return {
                "workload": job.workload,
                "policy": job.policy,
                "error": f"{job.policy} raised {where(e)}",
                "cause": "policy",
            }
        path = pool.crash_report(e, f"kvmtlb cost {job.workload} / {job.policy}")
        return {
            "workload": job.workload,
            "policy": job.policy,
            "error": pool.internal_error_message(e, path),
            "cause": "internal",
            "traceback_file": path,
        }


def _version_key(cls: type[KvmPolicy]) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", cls.name)) or (0,)


def default_policies() -> list[str]:
    """Every upstream version, oldest first."""
    from kvmtlb.kvm.policy import upstream

    return [c.name for c in sorted(upstream(), key=_version_key)]


def make_cost_command(resolve_policy: Resolver) -> Callable[..., None]:
    def cost(
        workloads: Annotated[
            list[str] | None,
            typer.Argument(
                metavar="WORKLOAD",
                help="Workload files or built-in names (default: every built-in workload).",
            ),
        ] = None,
        policy: Annotated[
            list[str] | None,
            typer.Option(
                "--policy",
                metavar="NAME|PATH.py:Class",
                help="A policy name or PATH.py:Class (repeatable; default: every upstream "
                "version).",
            ),
        ] = None,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print one JSON object per run instead.")
        ] = False,
        plot: Annotated[
            Path | None,
            typer.Option(
                "--plot",
                metavar="FILE",
                help="Also draw the comparison to FILE.svg or FILE.png.",
            ),
        ] = None,
        html: Annotated[
            Path | None,
            typer.Option(
                "--html",
                metavar="FILE",
                help="Also write the tables and the plot as one self-contained HTML page.",
            ),
        ] = None,
        accesses: Annotated[
            int | None,
            typer.Option(metavar="N", help="Override every workload's length (guest accesses)."),
        ] = None,
        seed: Annotated[
            int | None, typer.Option(metavar="N", help="Override every workload's seed.")
        ] = None,
        audit: Annotated[
            bool,
            typer.Option(
                "--audit",
                help="Check every TLB hit against current memory (tlb.stale-hits; slower).",
            ),
        ] = False,
        jobs: Annotated[
            int,
            typer.Option(
                metavar="N",
                help="Worker processes (0, the default: one per core).",
                show_default=False,
            ),
        ] = 0,
    ) -> None:
        """Run workloads under flush policies and report what each pays (COST_HELP)."""
        from kvmtlb.cost import report
        from kvmtlb.cost.workload import WorkloadError, builtin_workloads, resolve

        console = _console()

        def fail(message: str) -> None:
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2)

        if plot is not None and plot.suffix.lower() not in report.PLOT_SUFFIXES:
            fail(f"{plot}: the plot is written as SVG or PNG; name it FILE.svg or FILE.png")
        if plot is not None and not plot.resolve().parent.is_dir():
            fail(
                f"{plot}: the directory {plot.parent} does not exist; create it first, or "
                "write the plot elsewhere"
            )
        if html is not None and not html.resolve().parent.is_dir():
            fail(
                f"--html {html}: the directory {html.parent} does not exist; create it first, "
                "or write the page elsewhere"
            )
        if accesses is not None and accesses < 1:
            fail(f"--accesses {accesses}: give a positive number of guest accesses")
        if jobs < 0:
            fail(f"--jobs {jobs}: give a number >= 0 (0: one worker per core)")
        specs = policy or default_policies()
        try:
            loaded: list[Workload] = [resolve(a) for a in workloads or ()] or [
                resolve(str(p)) for p in builtin_workloads()
            ]
            for spec in specs:
                resolve_policy(spec)
        except WorkloadError as e:
            fail(str(e))
        except Exception as e:  # the resolver's input errors (unknown policy, bad PATH.py:Class)
            fail(str(e))
        job_list = [
            Job(w.path, i, spec, accesses, seed, audit, resolve_policy)
            for w in loaded
            for i in range(len(w.configs))
            for spec in specs
        ]
        workers = jobs or min(len(job_list), os.cpu_count() or 1)
        t0 = time.perf_counter()
        progress = _Progress(len(job_list))

        def failed(i: int, e: BaseException) -> dict[str, Any]:
            path = pool.crash_report(e, "kvmtlb cost: a worker process died")
            return {
                "workload": job_list[i].workload,
                "policy": job_list[i].policy,
                "error": pool.internal_error_message(e, path),
                "cause": "internal",
                "traceback_file": path,
            }

        outcome = pool.run_pool(
            run_job, job_list, workers, failed=failed, done=progress.done, tick=progress.tick
        )
        records = [r for r in outcome.results if r is not None]
        seconds = time.perf_counter() - t0
        errors = [r for r in records if "error" in r]
        done = [r for r in records if "error" not in r]
        if json_out:
            for r in done:
                typer.echo(json.dumps(r))
        elif done:
            report.table(console, done)
            console.print(report.summary(done, seconds))
        if plot is not None and done:
            report.plot(done, plot)
            if not json_out:
                console.print(f"plot written to {plot}")
        if html is not None and done:
            report.html(done, html, seconds)
            if not json_out:
                console.print(f"HTML page written to {html}")
        for r in errors:
            typer.echo(f"error: {r['workload']} / {r['policy']}: {r['error']}", err=True)
        if any(r.get("cause") == "internal" for r in errors):
            raise typer.Exit(pool.EXIT_INTERNAL)
        if errors:
            raise typer.Exit(pool.EXIT_INPUT)
        if outcome.interrupted:
            typer.echo(
                f"stopped: interrupted by the user: {len(records)} of {len(job_list)} runs "
                "finished (reported above)",
                err=True,
            )
            raise typer.Exit(pool.EXIT_STOPPED)

    return cost


COST_HELP = (
    "Run workloads under flush policies and report what each pays: flushes by type, entries "
    "removed while still valid, TLB misses, page-walk memory references, estimated cycles."
)
COST_EXIT_CODES = (
    "Exit codes: 0 a report; 2 an input error (a workload, a policy, an option, or a "
    "PATH.py:Class policy that raised); 3 stopped by Ctrl-C (the runs that finished are "
    "reported); 4 an internal error (the traceback is written to a file the message names)."
)


class _Progress:
    """Runs done, on stderr: a bar on a terminal; elsewhere a line every KVMTLB_PROGRESS_SECONDS
    (default 5) seconds once the runs have taken that long."""

    def __init__(self, total: int) -> None:
        self.err = Console(stderr=True)
        self.every = float(os.environ.get("KVMTLB_PROGRESS_SECONDS", "5"))
        self.total = total
        self.finished = 0
        self.t0 = time.monotonic()
        self.last = self.t0

    def done(self, _i: int, _r: dict[str, Any]) -> None:
        self.finished += 1
        self._say(pool.rss_mb())

    def tick(self, t: pool.Tick) -> None:
        self.finished = t.done
        self._say(t.workers_rss_mb)

    def _say(self, rss: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every or now - self.t0 < self.every:
            return
        self.last = now
        text = (
            f"progress: {self.finished}/{self.total} runs done; {rss:,.0f} MB; "
            f"{int(now - self.t0)}s"
        )
        if self.err.is_terminal:
            self.err.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)


def _console() -> Console:
    """Wide when the output is not a terminal (a log file or a pipe), as `kvmtlb check`."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


__all__ = [
    "COST_EXIT_CODES",
    "COST_HELP",
    "Job",
    "default_policies",
    "make_cost_command",
    "run_job",
]
