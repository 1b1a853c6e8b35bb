"""The `kvmtlb` command line.

Every command ends with one of the exit codes of kvmtlb/jobs.py (README.md, "Exit codes"):
0 as expected, 1 a verdict other than expected, 2 an input error, 3 stopped by Ctrl-C or a limit
(what finished is printed), 4 an internal error (a one-line message; the traceback in a file it
names). `_Command` gives every command the last two: Ctrl-C outside a search is 3, and an
exception that escapes a command is 4, never a traceback on the terminal.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from kvmtlb import jobs
from kvmtlb.check.frontier import THRESHOLD as FRONTIER_THRESHOLD
from kvmtlb.hw.rules import Rule, all_rules

if TYPE_CHECKING:
    from kvmtlb.check.explorer import Progress

EXIT_CODES_HELP = (
    "Exit codes: 0 every verdict as expected; 1 a verdict other than expected (a violation or a "
    "deadlock where safe is expected); 2 an input error (a file, an option, or a step of a "
    "PATH.py:Class policy that raised); 3 stopped by Ctrl-C, --max-states, --timeout or "
    "--max-memory (what finished is printed); 4 an internal error (the traceback is written to "
    "a file the message names)."
)


def _no_type(ctx: object) -> None:
    return None


def _plain_labels(params: list[Any]) -> list[Any]:
    """Help labels a user reads (FILE, N, SECONDS) instead of typer's `<list[str]>`/`<bool>`:
    flags show none, arguments and options their metavar."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
        if getattr(p, "param_type_name", "") == "argument" and p.metavar is not None:
            setattr(p, "display_type_rich", _no_type)  # noqa: B010 (typer ignores an argument's metavar)
    return params


def _stopped_or_crashed(e: BaseException, where: str) -> typer.Exit:
    """Ctrl-C outside a search (exit 3), the reader of stdout gone (exit 3, quietly), or an
    exception no command handled (exit 4)."""
    if isinstance(e, KeyboardInterrupt):
        typer.echo("stopped: interrupted by the user", err=True)
        return typer.Exit(jobs.EXIT_STOPPED)
    if isinstance(e, BrokenPipeError):  # `kvmtlb check --json | head`: the reader had enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return typer.Exit(jobs.EXIT_STOPPED)
    path = jobs.crash_report(e, where)
    typer.echo(f"error: {jobs.internal_error_message(e, path)}", err=True)
    return typer.Exit(jobs.EXIT_INTERNAL)


def _control_flow(e: BaseException) -> bool:
    """click's and typer's own exceptions (Exit, Abort, usage errors) pass through."""
    return type(e).__module__.split(".")[0] in ("click", "typer")


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_labels(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (Exception, KeyboardInterrupt) as e:
            if _control_flow(e):
                raise
            raise _stopped_or_crashed(e, f"kvmtlb {self.name}") from None


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_labels(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="An executable model of KVM's x86 TLB-flush machinery on SDM/APM-exact TLBs.",
    epilog="Exit codes: 0 as expected; 1 a verdict other than expected; 2 an input error; "
    "3 stopped by Ctrl-C or a limit; 4 an internal error. Each command's --help says more.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kvmtlb {version()}")
        raise typer.Exit(0)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("kvmtlb")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """An executable model of KVM's x86 TLB-flush machinery on SDM/APM-exact TLBs."""


SIMPLE_EXIT_CODES = "Exit codes: 0 done; 2 an input error; 4 an internal error."


@app.command(cls=_Command, epilog=SIMPLE_EXIT_CODES)
def rules(
    json_out: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
    vendor: Annotated[
        str | None,
        typer.Option(metavar="intel|amd", help="Only rules of this vendor: intel or amd."),
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the registry as a Markdown table.")
    ] = False,
) -> None:
    """Print the hardware rules the model implements, with their manual sections."""
    if vendor is not None and vendor not in ("intel", "amd"):
        typer.echo(f"error: --vendor must be 'intel' or 'amd', not {vendor!r}", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)
    selected = all_rules(vendor)
    if markdown:
        typer.echo(rules_markdown(selected), nl=False)
        return
    if json_out:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "vendor": r.vendor,
                        "section": r.section,
                        "section_current": r.section_current,
                        "summary": r.summary,
                    }
                    for r in selected
                ],
                indent=2,
            )
        )
        return
    table = Table(title=f"kvmtlb hardware rules ({len(selected)})", show_lines=False)
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("section (pinned)")
    table.add_column("section (current)")
    table.add_column("summary")
    for r in selected:
        table.add_row(r.id, r.section, r.section_current, r.summary)
    _wide_console().print(table)


@app.command(
    cls=_Command,
    help="Explore every interleaving of scenarios under policies; print verdicts and traces.",
    epilog=EXIT_CODES_HELP,
)
def check(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="FILE|DIR|NAME",
            help="Scenario files, directories or built-in names (default: the built-in suite).",
        ),
    ] = None,
    suite: Annotated[
        str,
        typer.Option(
            metavar="default|extended|all",
            help="Without FILE: which built-in suite (extended: scenarios too slow for the "
            "default run).",
        ),
    ] = "default",
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            metavar="NAME|PATH.py:Class",
            help="A policy name or PATH.py:Class (repeatable; default: every upstream version).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
    matrix: Annotated[
        bool, typer.Option("--matrix", help="Also run every other configuration the ops allow.")
    ] = False,
    exact: Annotated[
        bool, typer.Option("--exact", help="Store full states instead of fingerprints.")
    ] = False,
    max_states: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Stop each search after N states: verdict stopped:max-states (0: no limit).",
            show_default=False,
        ),
    ] = 0,
    timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="Stop each search after SECONDS: verdict stopped:timeout (0: no limit).",
            show_default=False,
        ),
    ] = 0.0,
    max_memory: Annotated[
        int,
        typer.Option(
            metavar="MB",
            help="Stop a search when the process running it holds more than MB MiB of resident "
            "memory: verdict stopped:max-memory (0: no limit).",
            show_default=False,
        ),
    ] = 0,
    jobs_: Annotated[
        int,
        typer.Option(
            "--jobs",
            metavar="N",
            help="Worker processes (0, the default: one per core).",
            show_default=False,
        ),
    ] = 0,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            metavar="DIR",
            help="Also write an HTML page per run to DIR (created if missing): the trace "
            "viewer for a counterexample, a summary for a safe run; DIR/index.html lists them.",
        ),
    ] = None,
    hunt: Annotated[
        bool,
        typer.Option(
            "--hunt",
            help="Hunt bugs first: random swarm walks on --jobs cores, the trace found shrunk "
            "and, within a bounded search, proven shortest; without a find, the full search.",
        ),
    ] = False,
    hunt_seconds: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="With --hunt: how long the walks look before the full search (default 30).",
            show_default=False,
        ),
    ] = 30.0,
    seed: Annotated[
        int,
        typer.Option(metavar="N", help="With --hunt: the walks' seed.", show_default=False),
    ] = 0,
    workers: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Processes per search: one search split over N partitioned workers (0, the "
            "default: --jobs N given and fewer runs than N share its N cores; else 1).",
            show_default=False,
        ),
    ] = 0,
    backend: Annotated[
        str,
        typer.Option(
            metavar="local|ray",
            help="Where a partitioned search runs: local worker processes, or Ray actors "
            "(the ray extra: pip install 'kvmtlb\\[ray]').",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDR",
            help="With --backend ray: join this Ray cluster (auto, HOST:6379, ray://HOST:10001); "
            "default: start Ray on this machine.",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Checkpoint the search to DIR (one run only) every --checkpoint-every seconds "
            "and when it stops; continue it with --resume DIR.",
            show_default=False,
        ),
    ] = None,
    checkpoint_every: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Seconds between checkpoints."),
    ] = 300.0,
    resume: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Continue the search checkpointed in DIR (the same scenario and policy); it "
            "goes on checkpointing there.",
            show_default=False,
        ),
    ] = None,
    por: Annotated[
        bool,
        typer.Option(
            "--por/--no-por",
            help="Partial-order reduction by sleep sets: steps of different actors that touch "
            "disjoint state are taken in one order only (same verdicts, states and shortest "
            "traces; fewer transitions). Off by default: it costs more than it saves on the "
            "built-in suite (docs/performance.md).",
        ),
    ] = False,
    pack_after: Annotated[
        int,
        typer.Option(
            metavar="WORLDS",
            help="Keep the first WORLDS worlds of each level of a search as they are and pack "
            "the rest (pickled in batches and compressed: about 20-25 bytes a world instead of "
            "about 1 KB, for about a third more time per packed world; docs/performance.md). "
            "0: pack every level whole.",
        ),
    ] = FRONTIER_THRESHOLD,
    frontier_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Keep the packed worlds in an unnamed temporary file in DIR instead of memory: "
            "for a search whose levels outgrow RAM (the plain search only).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Explore every interleaving of scenarios under policies; print verdicts and traces (the
    exit codes: EXIT_CODES_HELP)."""
    from dataclasses import replace

    from kvmtlb.check import report
    from kvmtlb.check.runner import (
        InputError,
        Job,
        configurations,
        distinct_names,
        known_policies,
        load_policy,
        run_all,
    )
    from kvmtlb.kvm.policy import upstream
    from kvmtlb.model.scenario import ScenarioError, load

    _check_limits(
        max_states=max_states,
        jobs=jobs_,
        timeout=timeout,
        max_memory=max_memory,
        hunt_seconds=hunt_seconds,
        seed=seed,
        workers=workers,
    )
    _check_scale_options(
        exact, hunt, por, workers, backend, ray_address, checkpoint, checkpoint_every, resume
    )
    _check_frontier_options(pack_after, frontier_dir, por, workers, backend, checkpoint, resume)
    if (hunt_seconds != 30.0 or seed) and not hunt:
        typer.echo("error: --hunt-seconds and --seed go with --hunt", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)
    if hunt and exact:
        typer.echo(
            "error: --hunt and --exact do not go together: a hunt's walks keep no states", err=True
        )
        raise typer.Exit(jobs.EXIT_INPUT)
    if html is not None and html.exists() and not html.is_dir():
        typer.echo(f"error: --html {html}: is a file; give a directory for the pages", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)
    console = _wide_console()
    from kvmtlb.check.inputs import (  # files, directories, names; the suites
        SUITES,
        builtin_scenarios,
        scenario_paths_or_exit,
    )

    if suite not in SUITES:
        typer.echo(f"error: --suite {suite}: give one of {', '.join(SUITES)}", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)
    if files and suite != "default":
        typer.echo("error: --suite goes without FILE|DIR|NAME arguments", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)
    paths = scenario_paths_or_exit(files) if files else [str(p) for p in builtin_scenarios(suite)]
    specs = list(dict.fromkeys(policy or [c.name for c in upstream()]))
    try:
        classes = [load_policy(sp) for sp in specs]
        distinct_names(specs, classes)
        names = [c.name for c in classes]
        known = known_policies(names)
        scenarios = [load(p, known) for p in paths]
    except (InputError, ScenarioError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(jobs.EXIT_INPUT) from None
    job_list: list[Job] = []
    hunting = functools.partial(
        Job,
        hunt=hunt_seconds if hunt else 0.0,
        hunt_workers=jobs_,
        seed=seed,
        por=por,
        pack_after=pack_after,
        frontier_dir=str(frontier_dir) if frontier_dir is not None else None,
    )
    for path, sc in zip(paths, scenarios, strict=True):
        for sp in specs:
            job_list.append(hunting(path, sp, None, exact, max_states, timeout, max_memory))
            if matrix:
                for cfg in configurations(sc):
                    job_list.append(hunting(path, sp, cfg, exact, max_states, timeout, max_memory))
    if (checkpoint is not None or resume is not None) and len(job_list) != 1:
        typer.echo(
            f"error: --checkpoint and --resume go with one run, not {len(job_list)}: give one "
            "scenario and one --policy, without --matrix",
            err=True,
        )
        raise typer.Exit(jobs.EXIT_INPUT)
    per_run = search_workers(workers, jobs_, len(job_list), exact or hunt or por, backend)
    if per_run > 1 or backend == "ray" or checkpoint is not None or resume is not None:
        where_ = resume if resume is not None else checkpoint
        job_list = [
            replace(
                j,
                workers=per_run,
                backend=backend,
                ray_address=ray_address,
                checkpoint=str(where_) if where_ is not None else None,
                checkpoint_every=checkpoint_every,
                resume=resume is not None,
            )
            for j in job_list
        ]
    # a hunt uses every core for one run's walks: runs go one after the other; a partitioned
    # search uses per_run cores, so fewer runs go at once
    cores = jobs_ or os.cpu_count() or 1
    workers = 1 if hunt else max(1, min(len(job_list), cores // per_run))
    t0 = time.perf_counter()
    with _Ticker(len(job_list)) as ticker:
        results, interrupted = run_all(
            job_list,
            workers,
            done=ticker.done,
            tick=ticker.many,
            show=ticker.one if workers <= 1 or len(job_list) <= 1 else None,
        )
    seconds = time.perf_counter() - t0
    if json_out:
        for r in results:
            typer.echo(json.dumps(r))
    else:
        report.matrix(console, results, names)
        explicit = files is not None
        for r in results:
            if r["verdict"] == "error":
                continue
            if not report.matches(r) or (explicit and r["verdict"] != "safe"):
                report.trace(console, r)
        console.print(report.summary(results, seconds))
    if html is not None:  # with --json, stdout holds only the records: say it on stderr
        say = Console(stderr=True) if json_out else console
        _write_html(lambda: _html_pages(results, html, specs, classes), html, say)
    for r in results:
        if r["verdict"] == "error":
            typer.echo(f"error: {r['message']}", err=True)
    stopped = [r for r in results if r["verdict"] == "stopped"]
    if interrupted or stopped:
        typer.echo(
            f"stopped: {report.stopped_summary(results, len(job_list), interrupted)}; "
            "what finished is printed",
            err=True,
        )
    raise typer.Exit(report.exit_code(results, interrupted))


def _html_pages(
    results: list[dict[str, Any]], html: Path, specs: list[str], classes: list[Any]
) -> str:
    from kvmtlb.check.html import write_check_pages
    from kvmtlb.check.runner import is_user_spec

    given = [(sp, c) for sp, c in zip(specs, classes, strict=True) if is_user_spec(sp)]
    pages = write_check_pages(results, html, given)
    n = len(pages) - 1
    return f"HTML: {n} page{'' if n == 1 else 's'} in {html}, listed in {pages[0]}"


def _write_html(write: Any, target: Path, console: Console) -> None:
    """Write the --html output; a file system error is an input error naming the option."""
    try:
        console.print(write(), markup=False, highlight=False)
    except OSError as e:
        typer.echo(
            f"error: --html {target}: cannot write the pages ({e.strerror or e}); give a "
            "writable location",
            err=True,
        )
        raise typer.Exit(jobs.EXIT_INPUT) from None


def _check_limits(**limits: float) -> None:
    """Refuse a negative --max-states, --jobs, --timeout or --max-memory (exit 2)."""
    for name, value in limits.items():
        if value < 0:
            flag = "--" + name.replace("_", "-")
            typer.echo(
                f"error: {flag} {value:g}: give a number >= 0 (0: "
                + {"jobs": "one worker per core", "workers": "automatic"}.get(name, "no limit")
                + ")",
                err=True,
            )
            raise typer.Exit(jobs.EXIT_INPUT)


def search_workers(workers: int, jobs_: int, runs: int, single_only: bool, backend: str) -> int:
    """Processes per search (docs/checker.md, "All cores"): --workers if given; else with
    --jobs N and fewer runs than N, the runs share the N cores (N // runs each: one run, N);
    else 1. --exact and --hunt searches are single-process; Ray needs at least 2 actors
    unless --workers 1 says otherwise."""
    if single_only:
        return 1
    if workers:
        return workers
    if jobs_ and runs < jobs_:
        return max(1, jobs_ // max(runs, 1))
    if backend == "ray":
        return max(2, jobs_ or os.cpu_count() or 1)
    return 1


def _check_scale_options(
    exact: bool,
    hunt: bool,
    por: bool,
    workers: int,
    backend: str,
    ray_address: str | None,
    checkpoint: Path | None,
    checkpoint_every: float,
    resume: Path | None,
) -> None:
    """Refuse the combinations of --workers, --backend, --checkpoint and --resume that make no
    sense (exit 2)."""

    def fail(text: str) -> None:
        typer.echo(f"error: {text}", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)

    if backend not in ("local", "ray"):
        fail(f"--backend {backend}: give local or ray")
    if ray_address is not None and backend != "ray":
        fail("--ray-address goes with --backend ray")
    scale = workers > 1 or backend == "ray" or checkpoint is not None or resume is not None
    if scale and exact:
        fail(
            "--exact keeps full states in one process: it does not go with --workers, "
            "--backend ray, --checkpoint or --resume"
        )
    if scale and hunt:
        fail("--hunt does not go with --workers, --backend ray, --checkpoint or --resume")
    if scale and por:
        fail(
            "--por prunes the plain search only: it does not go with --workers, --backend ray, "
            "--checkpoint or --resume"
        )
    if checkpoint_every <= 0:
        fail(f"--checkpoint-every {checkpoint_every:g}: give a number of seconds > 0")
    if checkpoint is not None and resume is not None and checkpoint != resume:
        fail(
            f"--checkpoint {checkpoint} and --resume {resume}: a resumed search goes on "
            "checkpointing where it was; give --resume DIR alone"
        )


def _check_frontier_options(
    pack_after: int,
    frontier_dir: Path | None,
    por: bool,
    workers: int,
    backend: str,
    checkpoint: Path | None,
    resume: Path | None,
) -> None:
    """Refuse a negative --pack-after, a --frontier-dir that is no directory, and either with a
    search that does not pack (--por) or packs in memory only (the partitioned ones) (exit 2)."""

    def fail(text: str) -> None:
        typer.echo(f"error: {text}", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)

    if pack_after < 0:
        fail(f"--pack-after {pack_after}: give a number of worlds >= 0")
    if por and (pack_after != FRONTIER_THRESHOLD or frontier_dir is not None):
        fail("--pack-after and --frontier-dir do not go with --por: its search keeps levels whole")
    partitioned = workers > 1 or backend == "ray" or checkpoint is not None or resume is not None
    if partitioned and pack_after != FRONTIER_THRESHOLD:
        fail(
            f"--pack-after goes with the plain search: the partitioned one (--workers, --backend "
            f"ray, --checkpoint, --resume) packs past {FRONTIER_THRESHOLD} worlds of a partition"
        )
    if frontier_dir is None:
        return
    if not frontier_dir.is_dir():
        fail(f"--frontier-dir {frontier_dir}: not a directory; give an existing directory")
    if not os.access(frontier_dir, os.W_OK | os.X_OK):
        fail(f"--frontier-dir {frontier_dir}: not writable; give a directory you can write to")
    if partitioned:
        fail(
            "--frontier-dir goes with the plain search: the partitioned one (--workers, "
            "--backend ray, --checkpoint, --resume) packs its levels in memory"
        )


class _Ticker:
    """Progress on stderr for long runs: on a terminal a live line (rich), elsewhere (a log, a
    pipe, CI) one line every KVMTLB_PROGRESS_SECONDS (default 5) seconds, once a run has taken
    that long. `one` is the hook of a search in this process, `many` the pool's tick."""

    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.err = Console(stderr=True)
        self.live = self.err.is_terminal
        self.every = float(os.environ.get("KVMTLB_PROGRESS_SECONDS", "5"))
        self.total = total
        self.finished = 0
        self.t0 = time.monotonic()
        self.last_line = self.t0
        columns: list[Any] = [TextColumn("{task.description}")]
        if total > 1:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        self.bar = Progress(*columns, console=self.err, transient=True, disable=not self.live)
        self.task = self.bar.add_task("", total=total)

    def __enter__(self) -> _Ticker:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def _say(self, text: str) -> None:
        now = time.monotonic()
        if self.live:
            self.bar.update(self.task, description=text)
        elif now - self.last_line >= self.every and now - self.t0 >= self.every:
            self.last_line = now
            elapsed = int(now - self.t0)
            runs = f"{self.finished}/{self.total} runs done; " if self.total > 1 else ""
            print(f"progress: {runs}{text}; {elapsed}s", file=sys.stderr, flush=True)

    def done(self, _r: dict[str, Any]) -> None:
        self.finished += 1
        self.bar.advance(self.task)

    def one(self, p: Progress, rss: float) -> None:
        rate = p.states / p.seconds if p.seconds > 0 else 0.0
        self._say(f"{p.states:,} states, {rate:,.0f} states/s, depth {p.depth}, {rss:,.0f} MB")

    def many(self, t: jobs.Tick) -> None:
        self.finished = t.done
        states = sum(int(i["states"]) for i in t.running.values())
        rate = sum(i["states"] / i["seconds"] for i in t.running.values() if i["seconds"] > 0)
        depth = max((int(i["depth"]) for i in t.running.values()), default=0)
        self._say(
            f"running: {states:,} states, {rate:,.0f} states/s, depth {depth}; "
            f"{t.workers_rss_mb:,.0f} MB in workers"
        )


def _wide_console() -> Console:
    """Rich assumes 80 columns when the output is not a terminal, which squeezes the matrix to
    nothing in a log file or a pipe: there, be wide and let the reader's pager wrap."""
    console = Console(emoji=False)
    return console if console.is_terminal else Console(width=240, emoji=False)


@app.command(
    cls=_Command,
    help="Re-run a saved trace deterministically and print it.",
    epilog="Exit codes: 0 every record gives the same outcome; 1 one gives another; 2 an input "
    "error (an unreadable or malformed trace, a missing scenario file, a policy file not named "
    "with --policy); 3 stopped by Ctrl-C; 4 an internal error.",
)
def replay(
    trace_file: Annotated[
        Path,
        typer.Argument(metavar="TRACE.json", help="A result saved by `kvmtlb check --json`."),
    ],
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            metavar="PATH.py:Class",
            help="The policy file a trace was made with (repeatable). A trace names its policy "
            "file, but replay never imports code because a data file names it: name it again.",
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            metavar="FILE",
            help="Also write the trace viewer page to FILE (FILE-1.html, FILE-2.html, ... "
            "when the trace file holds several records).",
        ),
    ] = None,
) -> None:
    """Re-run a saved trace deterministically and print it."""
    from kvmtlb.check import report
    from kvmtlb.check.runner import InputError, load_policy, replay_record
    from kvmtlb.model.scenario import ScenarioError
    from kvmtlb.model.system import BootError

    console = _wide_console()

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)
        return typer.Exit(jobs.EXIT_INPUT)

    try:
        given = [(sp, load_policy(sp)) for sp in policy or ()]
    except InputError as e:
        raise fail(str(e)) from None
    try:
        lines = [ln for ln in trace_file.read_text().splitlines() if ln.strip()]
        recs = [json.loads(ln) for ln in lines]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(
            f"{trace_file}: not a `kvmtlb check --json` output ({e}); save one "
            "with `kvmtlb check FILE --json > trace.json`"
        ) from None
    if not recs:
        raise fail(
            f"{trace_file}: holds no trace record; save one with "
            "`kvmtlb check FILE --json > trace.json`"
        )
    base = trace_file.resolve().parent
    if html is not None and not html.resolve().parent.is_dir():
        raise fail(f"--html {html}: the directory {html.parent} does not exist; create it first")
    status = jobs.EXIT_OK
    for n, rec in enumerate(recs, 1):
        try:
            trace, prop = replay_record(rec, base, given)
        except (InputError, ScenarioError, BootError, ValueError) as e:
            raise fail(f"{trace_file}: record {n}: {e}") from None
        shown = dict(rec)
        shown["trace"] = [{"step": t.step, "actor": t.actor, "action": t.action} for t in trace]
        shown["records"] = [
            [{"actor": r.actor, "action": r.action, "detail": r.detail} for r in t.records]
            for t in trace
        ]
        shown.setdefault("states", 0)
        shown.setdefault("transitions", 0)
        shown.setdefault("depth", len(trace))
        shown.setdefault("seconds", 0.0)
        shown.setdefault("label", str(rec.get("verdict")))
        shown.setdefault("scenario", Path(str(rec["file"])).stem)
        report.trace(console, shown)
        same = prop == rec.get("property")
        console.print(
            "replayed: "
            + (
                "the same outcome"
                if same
                else f"different outcome ({prop} instead of {rec.get('property')})"
            ),
            markup=False,
        )
        if not same:
            status = jobs.EXIT_DIFFERS
    if html is not None:
        _write_html(lambda: _replay_html(recs, html, base, given), html, console)
    raise typer.Exit(status)


def _replay_html(recs: list[Any], html: Path, base: Path, given: list[Any]) -> str:
    from kvmtlb.check.html import page_for, replay_page_paths
    from kvmtlb.check.runner import record_system

    paths = replay_page_paths(html, len(recs))
    for rec, path in zip(recs, paths, strict=True):
        path.write_text(page_for(record_system(rec, base, given), rec), encoding="utf-8")
    return "HTML: " + ", ".join(str(p) for p in paths)


@app.command(cls=_Command, epilog=SIMPLE_EXIT_CODES)
def policies(
    json_out: Annotated[bool, typer.Option("--json", help="Print the policies as JSON.")] = False,
) -> None:
    """List every policy: the upstream versions and the bug zoo."""
    import json

    from kvmtlb.kvm.policy import registry

    reg = registry()
    rows = [
        {
            "name": c.name,
            "kind": c.kind,
            "based_on": c.based_on or None,
            "fix": c.fix or None,
            "cve": c.cve or None,
            "summary": c.summary,
        }
        for c in reg.values()
    ]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"kvmtlb policies ({len(rows)})")
    for col in ("name", "kind", "based_on", "fix", "cve", "summary"):
        table.add_column(col, no_wrap=col != "summary")
    for r in rows:
        table.add_row(
            *(str(r[c] or "") for c in ("name", "kind", "based_on", "fix", "cve", "summary"))
        )
    _wide_console().print(table)


def rules_markdown(selected: list[Rule]) -> str:
    """docs/rules.md: the registry as a table, one section per vendor."""
    out = [
        "# Hardware rules",
        "",
        "Generated by `kvmtlb rules --markdown` from `kvmtlb/hw/rules.py`; do not edit by hand.",
        "Intel sections: pinned = SDM June 2016 (325384-059US), current = the 2019-2024 "
        "editions. AMD: APM Vol. 2 (24593), chapter 15.",
        "",
    ]
    for vendor in ("intel", "amd"):
        rows = [r for r in selected if r.vendor == vendor]
        if not rows:
            continue
        out += [
            f"## {vendor.upper()} ({len(rows)} rules)",
            "",
            "| id | section | current | summary |",
            "|---|---|---|---|",
        ]
        out += [f"| `{r.id}` | {r.section} | {r.section_current} | {r.summary} |" for r in rows]
        out.append("")
    return "\n".join(out)


def main() -> None:
    app()


from kvmtlb.check.lint import lint_command as _lint_command  # noqa: E402

app.command(name="lint", cls=_Command)(_lint_command)

from kvmtlb.check.mutation import mutate_command as _mutate_command  # noqa: E402

app.command(name="mutate", cls=_Command)(_mutate_command)

from kvmtlb.advise import advise_command as _advise_command  # noqa: E402

app.command(name="advise", cls=_Command)(_advise_command)


# -- kvmtlb cost (kvmtlb/cost/command.py) ----------------------------------------------------------
def _cost_policy(spec: str) -> type:
    """Policies for `kvmtlb cost` load as for `kvmtlb check` (a name or PATH.py:Class)."""
    from kvmtlb.check.runner import load_policy

    return load_policy(spec)


from kvmtlb.cost.command import COST_EXIT_CODES, COST_HELP  # noqa: E402
from kvmtlb.cost.command import make_cost_command as _make_cost_command  # noqa: E402

app.command(name="cost", cls=_Command, help=COST_HELP, epilog=COST_EXIT_CODES)(
    _make_cost_command(_cost_policy)
)
