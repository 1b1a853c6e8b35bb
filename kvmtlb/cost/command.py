"""`kvmtlb cost`: run workloads under policies and report what each policy pays.

The command is built by `make_cost_command(resolve)`, where `resolve` turns a policy spec (a
registry name or PATH.py:Class) into a policy class; the CLI passes the checker's
`load_policy`, so user policies are loaded, checked and named the same way for `check` and
`cost`. Runs (workload x configuration x policy) are independent and run in worker processes.

Exit codes: 0 after a report; 2 on an input error (a malformed or unknown workload, an unknown
policy, a bad --plot file name, a policy that raises or never lets a vCPU into the guest), with
the message on stderr and never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

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
    """One run; a JSON-ready record, or one with an "error"."""
    from kvmtlb.cost.costs import CostTableError
    from kvmtlb.cost.simulate import CostError, Simulation
    from kvmtlb.cost.workload import WorkloadError, resolve

    try:
        w = resolve(job.workload).with_overrides(job.accesses, job.seed)
        cls = job.resolve(job.policy)
        sim = Simulation(w, w.configs[job.config], cls(), audit=job.audit)
        return sim.run().as_dict()
    except (WorkloadError, CostError, CostTableError) as e:
        return {"workload": job.workload, "policy": job.policy, "error": str(e)}
    except Exception as e:  # a user's policy raised: report it, no traceback
        return {
            "workload": job.workload,
            "policy": job.policy,
            "error": f"{job.policy} raised {where(e)}",
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
                help="Workload files or built-in names (default: every built-in workload)."
            ),
        ] = None,
        policy: Annotated[
            list[str] | None,
            typer.Option(
                "--policy",
                help="A policy name or PATH.py:Class (repeatable; default: every upstream "
                "version).",
            ),
        ] = None,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print one JSON object per run instead.")
        ] = False,
        plot: Annotated[
            Path | None,
            typer.Option("--plot", help="Also draw the comparison to FILE.svg or FILE.png."),
        ] = None,
        accesses: Annotated[
            int | None, typer.Option(help="Override every workload's length (guest accesses).")
        ] = None,
        seed: Annotated[int | None, typer.Option(help="Override every workload's seed.")] = None,
        audit: Annotated[
            bool,
            typer.Option(
                "--audit",
                help="Check every TLB hit against current memory (tlb.stale-hits; slower).",
            ),
        ] = False,
        jobs: Annotated[int, typer.Option(help="Worker processes (default: CPU count).")] = 0,
    ) -> None:
        """Run workloads under flush policies and report what each pays: flushes by type, entries
        removed while still valid, TLB misses, page-walk memory references, estimated cycles.

        Exit 0 after the report, 2 on an input error.
        """
        from kvmtlb.cost import report
        from kvmtlb.cost.workload import WorkloadError, builtin_workloads, resolve

        console = _console()

        def fail(message: str) -> None:
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2)

        if plot is not None and plot.suffix.lower() not in report.PLOT_SUFFIXES:
            fail(f"{plot}: the plot is written as SVG or PNG; name it FILE.svg or FILE.png")
        if accesses is not None and accesses < 1:
            fail(f"--accesses {accesses}: give a positive number of guest accesses")
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
        try:
            if workers <= 1 or len(job_list) <= 1:
                records = [run_job(j) for j in job_list]
            else:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    records = list(pool.map(run_job, job_list, chunksize=1))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(1) from None
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
        for r in errors:
            typer.echo(f"error: {r['workload']} / {r['policy']}: {r['error']}", err=True)
        if errors:
            raise typer.Exit(2)

    return cost


def _console() -> Console:
    """Wide when the output is not a terminal (a log file or a pipe), as `kvmtlb check`."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


__all__ = ["Job", "default_policies", "make_cost_command", "run_job"]
