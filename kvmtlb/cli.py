"""The `kvmtlb` command line."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kvmtlb.hw.rules import all_rules

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
) -> None:
    """Print the hardware rules the model implements, with their manual sections."""
    if vendor is not None and vendor not in ("intel", "amd"):
        typer.echo(f"error: --vendor must be 'intel' or 'amd', not {vendor!r}", err=True)
        raise typer.Exit(2)
    selected = all_rules(vendor)
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
    Console().print(table)


def main() -> None:
    app()
