"""The `kvmtlb` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kvmtlb.hw.rules import Rule, all_rules

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="An executable model of KVM's x86 TLB-flush machinery on SDM/APM-exact TLBs.",
)


@app.callback()
def _root() -> None:
    """An executable model of KVM's x86 TLB-flush machinery on SDM/APM-exact TLBs."""


@app.command()
def rules(
    json_out: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
    vendor: Annotated[
        str | None, typer.Option(help="Only rules of this vendor: intel or amd.")
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the registry as a Markdown table.")
    ] = False,
) -> None:
    """Print the hardware rules the model implements, with their manual sections."""
    if vendor is not None and vendor not in ("intel", "amd"):
        typer.echo(f"error: --vendor must be 'intel' or 'amd', not {vendor!r}", err=True)
        raise typer.Exit(2)
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


@app.command()
def check(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Scenario files, directories or built-in names (default: the built-in suite)."
        ),
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
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
    max_states: Annotated[int, typer.Option(help="Stop a search after this many states.")] = 0,
    jobs: Annotated[int, typer.Option(help="Worker processes (default: CPU count).")] = 0,
) -> None:
    """Explore every interleaving of scenarios under policies; print verdicts and traces.

    Exit 0 when every verdict equals its expectation, 1 when one differs, 2 on an input error
    (including a policy whose step raises an exception: verdict "error", with the path to it).
    """
    import json
    import os
    import time

    from kvmtlb.check import report
    from kvmtlb.check.runner import (
        InputError,
        Job,
        builtin_scenarios,
        configurations,
        known_policies,
        load_policy,
    )
    from kvmtlb.kvm.policy import upstream
    from kvmtlb.model.scenario import ScenarioError, load

    console = _wide_console()
    from kvmtlb.check.inputs import scenario_paths_or_exit  # files, directories, names

    paths = scenario_paths_or_exit(files) if files else [str(p) for p in builtin_scenarios()]
    specs = policy or [c.name for c in upstream()]
    try:
        classes = [load_policy(sp) for sp in specs]
        names = [c.name for c in classes]
        known = known_policies(names)
        scenarios = [load(p, known) for p in paths]
    except (InputError, ScenarioError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    job_list: list[Job] = []
    labels: dict[int, str] = {}
    for path, sc in zip(paths, scenarios, strict=True):
        for sp in specs:
            job_list.append(Job(path, sp, None, exact, max_states))
            if matrix:
                for cfg in configurations(sc):
                    labels[len(job_list)] = cfg.label()
                    job_list.append(Job(path, sp, cfg, exact, max_states))
    workers = jobs or min(len(job_list), os.cpu_count() or 1)
    t0 = time.perf_counter()
    try:
        if len(job_list) == 1:
            results = [_run_one_with_progress(job_list[0], console, json_out)]
        else:
            results = _run_all_with_progress(job_list, workers)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(1) from None
    spec_name = dict(zip(specs, names, strict=True))
    for i, r in enumerate(results):
        if i in labels:
            r["config_label"] = labels[i]
        if "error" in r:
            r["policy"] = spec_name.get(str(r["policy"]), r["policy"])
    seconds = time.perf_counter() - t0
    errors = [r for r in results if "error" in r]
    if json_out:
        for r in results:
            typer.echo(json.dumps(r))
    else:
        report.matrix(console, results, names)
        explicit = files is not None
        for r in results:
            if "error" in r:
                continue
            if not report.matches(r) or (explicit and r["verdict"] != "safe"):
                report.trace(console, r)
        console.print(report.summary(results, seconds))
    for r in errors:
        typer.echo(f"error: {r['error']}", err=True)
    crashed = [r for r in results if r.get("verdict") == "error"]
    for r in crashed:
        typer.echo(f"error: {r['scenario']} / {r['policy']}: {r['detail']}", err=True)
    if errors or crashed:
        raise typer.Exit(2)
    if not all(report.matches(r) for r in results):
        raise typer.Exit(1)


def _run_all_with_progress(job_list: list[Any], workers: int) -> list[dict[str, Any]]:
    """Many jobs on `workers` processes, with a progress bar on stderr when it is a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from kvmtlb.check.runner import run_all

    err = Console(stderr=True)
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("runs", total=len(job_list))
        return run_all(job_list, workers, done=lambda _r: bar.advance(task))


def _wide_console() -> Console:
    """Rich assumes 80 columns when the output is not a terminal, which squeezes the matrix to
    nothing in a log file or a pipe: there, be wide and let the reader's pager wrap."""
    console = Console()
    return console if console.is_terminal else Console(width=240)


def _run_one_with_progress(job: object, console: Console, quiet: bool) -> dict[str, object]:
    """One job in this process, with a progress line when it runs for more than a second."""
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from kvmtlb.check.explorer import explore
    from kvmtlb.check.runner import InputError, Job, known_policies, load_policy, record
    from kvmtlb.model.scenario import ScenarioError, load
    from kvmtlb.model.system import BootError, build

    assert isinstance(job, Job)
    try:
        cls = load_policy(job.policy)
        scenario = load(job.scenario, known_policies([cls.name]))
        system = build(scenario, cls())
    except (ScenarioError, InputError, BootError) as e:
        return {"scenario": job.scenario, "policy": job.policy, "error": str(e)}
    columns = (TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("exploring", start=True, visible=False)

        def show(states: int, transitions: int, depth: int, secs: float) -> None:
            if secs > 1.0:
                bar.update(
                    task,
                    visible=True,
                    description=(
                        f"{scenario.name} / {cls.name}: {states:,} states, {transitions:,} "
                        f"transitions, depth {depth}, {states / secs:,.0f} states/s"
                    ),
                )

        result = explore(system, exact=job.exact, max_states=job.max_states, progress=show)
    if result.verdict == "interrupted":
        # on stderr: with --json, stdout holds one JSON object per run and nothing else
        typer.echo(
            f"interrupted after {result.states:,} states, {result.transitions:,} "
            f"transitions, depth {result.depth}, {result.seconds:.1f}s",
            err=True,
        )
    return record(scenario, cls.name, job.policy, result, scenario.expect.get(cls.name, "safe"))


@app.command()
def replay(
    trace_file: Annotated[Path, typer.Argument(help="A result saved by `kvmtlb check --json`.")],
) -> None:
    """Re-run a saved trace deterministically and print it."""
    import json

    from kvmtlb.check import report
    from kvmtlb.check.runner import InputError, replay_record
    from kvmtlb.model.scenario import ScenarioError
    from kvmtlb.model.system import BootError

    console = _wide_console()
    try:
        lines = [ln for ln in trace_file.read_text().splitlines() if ln.strip()]
        recs = [json.loads(ln) for ln in lines]
    except (OSError, json.JSONDecodeError) as e:
        typer.echo(
            f"error: {trace_file}: not a `kvmtlb check --json` output ({e}); save one "
            "with `kvmtlb check FILE --json > trace.json`",
            err=True,
        )
        raise typer.Exit(2) from None
    if not recs:
        typer.echo(
            f"error: {trace_file}: holds no trace record; save one with "
            "`kvmtlb check FILE --json > trace.json`",
            err=True,
        )
        raise typer.Exit(2)
    status = 0
    for rec in recs:
        try:
            trace, prop = replay_record(rec)
        except (InputError, ScenarioError, BootError, ValueError) as e:
            typer.echo(f"error: {trace_file}: {e}", err=True)
            raise typer.Exit(2) from None
        shown = dict(rec)
        shown["trace"] = [{"step": t.step, "actor": t.actor, "action": t.action} for t in trace]
        shown["records"] = [
            [{"actor": r.actor, "action": r.action, "detail": r.detail} for r in t.records]
            for t in trace
        ]
        report.trace(console, shown)
        same = prop == rec.get("property")
        console.print(
            "replayed: "
            + (
                "the same outcome"
                if same
                else f"different outcome ({prop} instead of {rec.get('property')})"
            )
        )
        if not same:
            status = 1
    raise typer.Exit(status)


@app.command()
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

app.command(name="lint")(_lint_command)


# -- kvmtlb cost (kvmtlb/cost/command.py) ----------------------------------------------------------
def _cost_policy(spec: str) -> type:
    """Policies for `kvmtlb cost` load as for `kvmtlb check` (a name or PATH.py:Class)."""
    from kvmtlb.check.runner import load_policy

    return load_policy(spec)


from kvmtlb.cost.command import make_cost_command as _make_cost_command  # noqa: E402

app.command(name="cost")(_make_cost_command(_cost_policy))
