"""Printing results: the scenario x policy matrix, the summary line, and traces in KVM's and the
SDM's words."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kvmtlb.jobs import EXIT_DIFFERS, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_STOPPED


def matrix(console: Console, results: list[dict[str, Any]], policies: list[str]) -> None:
    table = Table(title="kvmtlb check", show_lines=False)
    table.add_column("scenario", style="bold", no_wrap=True)
    for p in policies:
        table.add_column(escape(p), no_wrap=True)
    rows: dict[str, dict[str, str]] = {}
    for r in results:
        row = rows.setdefault(_row_name(r), {})
        row[r["policy"]] = cell(r)
    for name, cells in rows.items():
        table.add_row(escape(name), *(cells.get(p, "") for p in policies))
    console.print(table)


def _row_name(r: dict[str, Any]) -> str:
    cfg = r.get("config_label")
    return f"{r['scenario']} [{cfg}]" if cfg else str(r["scenario"])


def cell(r: dict[str, Any]) -> str:
    if r["verdict"] == "error":
        return "[red]internal error[/red]" if r["cause"] == "internal" else "[red]error[/red]"
    if r["verdict"] == "stopped":
        return f"[yellow]{r['label']}[/yellow] {r['states']:,} states {r['seconds']:.1f}s"
    label = r["label"]
    secs = f"{r['seconds']:.1f}s"
    if r.get("expected") is None:
        style = "cyan"
    elif label == r["expected"]:
        style = "green"
    else:
        style = "red"
    mark = "" if r.get("expected") in (None, label) else " (expected " + str(r["expected"]) + ")"
    return f"[{style}]{label}[/{style}] {secs}{mark}"


def finished(r: dict[str, Any]) -> bool:
    """A run that gave a verdict on its scenario (not stopped early, not an error)."""
    return r["verdict"] in ("safe", "violation", "deadlock")


def matches(r: dict[str, Any]) -> bool:
    return finished(r) and (r.get("expected") is None or r["label"] == r["expected"])


def exit_code(results: list[dict[str, Any]], interrupted: bool) -> int:
    """The exit code of `kvmtlb check` (README.md, "Exit codes"): the first that applies of
    4 (an internal error), 2 (an input error, or a user policy's step raised), 3 (a search was
    stopped, or runs were not started), 1 (a verdict other than expected), 0."""
    if any(r["verdict"] == "error" and r["cause"] == "internal" for r in results):
        return EXIT_INTERNAL
    if any(r["verdict"] == "error" for r in results):
        return EXIT_INPUT
    if interrupted or any(r["verdict"] == "stopped" for r in results):
        return EXIT_STOPPED
    if not all(matches(r) for r in results):
        return EXIT_DIFFERS
    return EXIT_OK


def stopped_summary(results: list[dict[str, Any]], total: int, interrupted: bool) -> str:
    reasons: dict[str, int] = {}
    for r in results:
        if r["verdict"] == "stopped":
            reasons[r["stopped"]] = reasons.get(r["stopped"], 0) + 1
    parts = [f"{sum(1 for r in results if finished(r))} of {total} runs finished"]
    parts += [f"{n} stopped ({why})" for why, n in reasons.items()]
    if total > len(results):
        parts.append(f"{total - len(results)} not started")
    return (
        ("interrupted by the user: " if interrupted else "")
        + ", ".join(parts)
        + "; a stopped run proves nothing"
    )


def summary(results: list[dict[str, Any]], seconds: float) -> str:
    compared = [r for r in results if finished(r) and r.get("expected") is not None]
    ok = sum(1 for r in compared if r["label"] == r["expected"])
    other = len([r for r in results if finished(r)]) - len(compared)
    stopped = sum(1 for r in results if r["verdict"] == "stopped")
    errors = sum(1 for r in results if r["verdict"] == "error")
    states = sum(r.get("states", 0) for r in results)
    text = (
        f"{len(results)} runs: {ok}/{len(compared)} as expected"
        + (f", {other} other configurations" if other else "")
        + (f", {stopped} stopped" if stopped else "")
        + (f", {errors} errors" if errors else "")
        + f"; {states:,} states in {seconds:.1f}s"
    )
    bounds = [r["collision_bound"] for r in results if finished(r) and not r.get("exact")]
    if bounds:
        # a 'safe' from a fingerprint search can be wrong only if two states shared a fingerprint
        text += f"; fingerprint collision probability <= {sum(bounds):.1e} (--exact to rule out)"
    return text


def trace(console: Console, r: dict[str, Any]) -> None:
    head = f"{r['scenario']} / {r['policy']}: {r['label']}"
    if r.get("expected") not in (None, r["label"]):
        head += f" (expected {r['expected']})"
    console.print(head, style="bold", markup=False, emoji=False, soft_wrap=True)
    if r.get("detail"):
        console.print(f"  {r['detail']}", markup=False, emoji=False, soft_wrap=True)
    for step, recs in zip(r["trace"], r["records"], strict=True):
        console.print(
            f"  {step['step']:>3}. {step['actor']}: {step['action']}",
            markup=False,
            emoji=False,
            soft_wrap=True,
            highlight=False,
        )
        for rec in recs:
            d = f" -- {rec['detail']}" if rec["detail"] else ""
            console.print(
                f"         {rec['action']}{d}",
                markup=False,
                emoji=False,
                soft_wrap=True,
                highlight=False,
            )
    console.print(
        f"  ({r['states']:,} states, {r['transitions']:,} transitions, depth "
        f"{r['depth']}, {r['seconds']:.2f}s)"
    )
    h = r.get("hunt")
    if h:
        console.print(
            f"  found by --hunt in {h['found_seconds']:.2f}s (a walk of {h['walk_length']} "
            f"steps, shrunk to {len(r['path'])}); "
            + (
                "proven shortest"
                if h["shortest"]
                else f"not proven shortest: no trace of at most {h['proved_depth']} steps "
                "breaks a property (bounded search)"
            ),
            markup=False,
            emoji=False,
            highlight=False,
        )
