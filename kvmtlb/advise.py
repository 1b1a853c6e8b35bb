"""`kvmtlb advise`: at every flush site, the weakest operation no scenario refutes, and its price.

Built on `kvmtlb mutate` (check/mutation.py): the mutants of a site are its operation's weaker
replacements in the architecture's order (`mutate.WEAKER`), ending with nothing. The advice for a
site is the weakest replacement that survived the whole suite and whose stronger replacements
survived too; the first one after it that a run kills is the counterexample that stops the
weakening (its scenario, property and trace length, and the command that prints the trace).

What the advice saves is measured by the cost model: every built-in workload under the policy and
under the advised mutant (`kvmtlb cost`'s own simulation), their flushes, TLB misses and
estimated cycles side by side.

Advice is only as good as the suite: a weakening is advised because no scenario the suite has
(in every configuration it allows) refutes it, not because it is proven unnecessary. The report
says which runs exercised each advised site.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kvmtlb import jobs
from kvmtlb.check import mutate
from kvmtlb.check.mutation import MutantResult, Report, run_campaign, suite_or_exit

# What a weakening saves, as sums of the cost model's counters (by name prefix).
COST_KEYS = (
    (
        "flushes (INVEPT, INVVPID, INVLPGA, TLB_CONTROL, new ASIDs)",
        ("op.invept", "op.invvpid", "op.invlpga", "op.tlb-control-", "op.new-asid"),
    ),
    ("guest-physical / nested misses", ("tlb.misses.guest-physical", "tlb.misses.nested")),
    (
        "linear / combined / ASID misses",
        ("tlb.misses.combined", "tlb.misses.linear", "tlb.misses.asid"),
    ),
)


@dataclass
class Advice:
    site: mutate.Site
    advised: MutantResult | None  # the weakest surviving replacement, None: keep the operation
    stopped_by: MutantResult | None  # the first weakening a run kills after it
    runs: list[str]  # the runs that exercised the site
    saved: dict[str, tuple[int, int]] = field(default_factory=dict)  # what: (policy, advised)


def advise(report: Report) -> list[Advice]:
    by_site: dict[mutate.Site, list[MutantResult]] = {}
    for m in report.mutants:
        by_site.setdefault(m.mutation.site, []).append(m)
    out = []
    for site, ms in sorted(by_site.items()):
        order = {c: i for i, c in enumerate(mutate.WEAKER[site.op])}
        ms.sort(key=lambda m: order[m.mutation.change])
        advised, stopped = None, None
        for m in ms:
            if m.status == "survived":
                advised = m
                continue
            if m.status == "killed":
                stopped = m
            break
        labels = sorted(
            {
                r.path.rsplit("/", 1)[-1] + (f" [{r.config.label()}]" if r.config else "")
                for m in ms
                for r in m.runs
            }
        )
        out.append(Advice(site, advised, stopped, labels))
    return out


def measure(policy: str, advice: list[Advice], accesses: int) -> None:
    """The cost of the policy and of each advised mutant on every built-in workload."""
    from kvmtlb.check.runner import load_policy
    from kvmtlb.cost.simulate import run
    from kvmtlb.cost.workload import builtin_workloads, resolve

    workloads = [resolve(str(p)).with_overrides(accesses=accesses) for p in builtin_workloads()]
    base = load_policy(policy)

    def totals(cls: type) -> dict[str, int]:
        t: dict[str, int] = {}
        for w in workloads:
            for c in w.configs:
                r = run(w, c, cls())
                for label, prefixes in COST_KEYS:
                    n = sum(v for k, v in r.counts.items() if k.startswith(prefixes))
                    t[label] = t.get(label, 0) + n
                t["estimated cycles"] = t.get("estimated cycles", 0) + r.total_cycles
        return t

    before = totals(base)
    for a in advice:
        if a.advised is None:
            continue
        after = totals(mutate.make_mutant(base, a.advised.mutation))
        a.saved = {k: (before[k], after[k]) for k in before}


def advise_command(
    policy: Annotated[
        str, typer.Argument(metavar="NAME|PATH.py:Class", help="The policy to advise on.")
    ],
    files: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="FILE|DIR|NAME", help="The suite (default: the built-in scenarios)."
        ),
    ] = None,
    accesses: Annotated[
        int,
        typer.Option(metavar="N", help="Guest accesses per cost-model run (the workloads')."),
    ] = 20_000,
    json_out: Annotated[
        bool, typer.Option("--json", help="The advice as one JSON object.")
    ] = False,
    jobs_: Annotated[
        int, typer.Option("--jobs", metavar="N", help="Worker processes (default: CPU count).")
    ] = 0,
) -> None:
    """The weakest flush at every site that no scenario refutes, with what it saves.

    Runs `kvmtlb mutate` over the suite (every configuration the scenarios allow), then prices
    each advised weakening on the built-in cost workloads. Advice is only as good as the suite.
    Exit 0 with the advice, 2 on an input error, 3 when stopped.
    """
    import json
    import os

    if accesses <= 0:
        typer.echo("error: --accesses takes a number > 0", err=True)
        raise typer.Exit(jobs.EXIT_INPUT)
    paths = suite_or_exit(policy, files, jobs_)
    err = Console(stderr=True)
    report = run_campaign(
        policy,
        paths,
        workers=jobs_ or (os.cpu_count() or 1),
        progress=lambda what, d, t: (
            err.print(f"advise: {what}: {d}/{t}", highlight=False) if d == t else None
        ),
    )
    if report.interrupted:
        typer.echo("interrupted before the mutants finished: no advice", err=True)
        raise typer.Exit(jobs.EXIT_STOPPED)
    advice = advise(report)
    err.print("advise: pricing the advised weakenings on the built-in workloads", highlight=False)
    measure(policy, advice, accesses)
    if json_out:
        typer.echo(json.dumps(to_json(report, advice)))
        return
    print_advice(report, advice)


def to_json(report: Report, advice: list[Advice]) -> dict[str, Any]:
    return {
        "policy": report.policy,
        "runs": report.runs,
        "mutation_score": round(report.score, 4),
        "sites": [
            {
                "site": " > ".join(a.site.path),
                "op": a.site.op,
                "advice": a.advised.mutation.change if a.advised else "keep",
                "mutant": (mutate.PREFIX + report.policy + "|" + a.advised.mutation.id)
                if a.advised
                else None,
                "stopped_by": {
                    "change": a.stopped_by.mutation.change,
                    "scenario": a.stopped_by.killed_by,
                    "property": a.stopped_by.prop,
                    "trace": a.stopped_by.trace,
                }
                if a.stopped_by
                else None,
                "saved": {k: {"policy": b, "advised": v} for k, (b, v) in a.saved.items()},
                "exercised_by": a.runs,
            }
            for a in advice
        ],
        "caveat": "advice is only as good as the suite: no scenario refutes it, nothing proves it",
    }


def print_advice(report: Report, advice: list[Advice]) -> None:
    console = Console() if Console().is_terminal else Console(width=240)
    table = Table(title=f"kvmtlb advise {report.policy}")
    for col in ("site", "operation", "advice", "what stops a weaker one", "saves"):
        table.add_column(col, overflow="fold")
    for a in advice:
        change = a.advised.mutation.change if a.advised else "keep"
        stop = (
            f"{a.stopped_by.mutation.change}: {a.stopped_by.killed_by}, "
            f"{a.stopped_by.prop} ({a.stopped_by.trace} steps)"
            if a.stopped_by
            else ""
        )
        saves = "; ".join(f"{k} {b:,} -> {v:,}" for k, (b, v) in a.saved.items() if b != v) or (
            "nothing measurable" if a.advised else ""
        )
        table.add_row(escape(" > ".join(a.site.path)), a.site.op, change, escape(stop), saves)
    console.print(table)
    for a in advice:
        if a.advised is not None:
            console.print(
                f"[bold]{escape(a.site.describe())} -> {a.advised.mutation.change}[/bold]: "
                f"exercised by {len(a.runs)} runs ({escape(', '.join(a.runs[:6]))}"
                f"{', ...' if len(a.runs) > 6 else ''})"
            )
    console.print(
        f"{report.runs} runs; advice is only as good as the suite: no scenario refutes an advised "
        "weakening, nothing proves it. Check a mutant yourself with "
        "kvmtlb check --policy 'mutant:POLICY|SITE: OP -> CHANGE' (ids in --json).",
        highlight=False,
    )


__all__ = ["Advice", "advise", "advise_command", "measure", "to_json"]
