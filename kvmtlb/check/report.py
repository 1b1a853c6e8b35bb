"""Printing results: the scenario x policy matrix, the summary line, and traces in KVM's and the
SDM's words."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def matrix(console: Console, results: list[dict[str, Any]], policies: list[str]) -> None:
    table = Table(title="kvmtlb check", show_lines=False)
    table.add_column("scenario", style="bold", no_wrap=True)
    for p in policies:
        table.add_column(p, no_wrap=True)
    rows: dict[str, dict[str, str]] = {}
    for r in results:
        row = rows.setdefault(_row_name(r), {})
        row[r.get("policy", r.get("policy_spec", "?"))] = cell(r)
    for name, cells in rows.items():
        table.add_row(escape(name), *(cells.get(p, "") for p in policies))
    console.print(table)


def _row_name(r: dict[str, Any]) -> str:
    if "error" in r:
        return str(r["scenario"])
    cfg = r.get("config_label")
    return f"{r['scenario']} [{cfg}]" if cfg else str(r["scenario"])


def cell(r: dict[str, Any]) -> str:
    if "error" in r:
        return "[red]input error[/red]"
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


def matches(r: dict[str, Any]) -> bool:
    return "error" not in r and (r.get("expected") is None or r["label"] == r["expected"])


def summary(results: list[dict[str, Any]], seconds: float) -> str:
    compared = [r for r in results if "error" not in r and r.get("expected") is not None]
    ok = sum(1 for r in compared if r["label"] == r["expected"])
    other = len([r for r in results if "error" not in r]) - len(compared)
    states = sum(r.get("states", 0) for r in results)
    text = (
        f"{len(results)} runs: {ok}/{len(compared)} as expected"
        + (f", {other} other configurations" if other else "")
        + f"; {states:,} states in {seconds:.1f}s"
    )
    bounds = [r["collision_bound"] for r in results if "error" not in r and not r.get("exact")]
    if bounds:
        # a 'safe' from a fingerprint search can be wrong only if two states shared a fingerprint
        text += f"; fingerprint collision probability <= {sum(bounds):.1e} (--exact to rule out)"
    return text


def trace(console: Console, r: dict[str, Any]) -> None:
    head = f"{r['scenario']} / {r['policy']}: {r['label']}"
    if r.get("expected") not in (None, r["label"]):
        head += f" (expected {r['expected']})"
    console.print(head, style="bold", markup=False, soft_wrap=True)
    if r.get("detail"):
        console.print(f"  {r['detail']}", markup=False, soft_wrap=True)
    for step, recs in zip(r["trace"], r["records"], strict=True):
        console.print(
            f"  {step['step']:>3}. {step['actor']}: {step['action']}",
            markup=False,
            soft_wrap=True,
            highlight=False,
        )
        for rec in recs:
            d = f" -- {rec['detail']}" if rec["detail"] else ""
            console.print(
                f"         {rec['action']}{d}", markup=False, soft_wrap=True, highlight=False
            )
    console.print(
        f"  ({r['states']:,} states, {r['transitions']:,} transitions, depth "
        f"{r['depth']}, {r['seconds']:.2f}s)"
    )
