"""Reporting cost runs: a table per workload, JSON records, and a plot comparing policies.

The table shows, per configuration and policy, the flushes KVM issued by type, the VM exits, the
entries removed while still valid (over-flush), the TLB misses of both stages, the memory
references of the walks that refilled them, and the estimated cycles with their difference from
the first policy of the same configuration. The JSON records hold every count (docs/cost-model.md
lists them). The plot (matplotlib, imported only when asked for) stacks each run's cycles by
category (flush, transition, refill, guest), one panel per workload.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kvmtlb.cost.costs import CATEGORIES

# (column header, count names summed) for the flush columns.
FLUSH_COLUMNS = (
    ("INVEPT\nsingle", ("op.invept-single",)),
    ("INVEPT\nall", ("op.invept-all",)),
    ("INVVPID", tuple(f"op.invvpid-{t}" for t in ("addr", "single", "all", "single-globals"))),
    ("VPID-off\nentry+exit", ("op.vm-entry-vpid-off", "op.vm-exit-vpid-off")),
    ("TLB_CTL\n1 / 3", ("op.tlb-control-1", "op.tlb-control-3")),
    ("new\nASID", ("op.new-asid",)),
)
PLOT_SUFFIXES = (".svg", ".png")


def count(rec: dict[str, Any], *names: str) -> int:
    counts: dict[str, int] = rec["counts"]
    return sum(counts.get(n, 0) for n in names)


def _tlb_control(rec: dict[str, Any]) -> str:
    one, three = count(rec, "op.tlb-control-1"), count(rec, "op.tlb-control-3")
    return f"{one:,} / {three:,}" if one or three else "0"


def _misses(rec: dict[str, Any]) -> str:
    first = count(rec, "tlb.misses.combined", "tlb.misses.asid", "tlb.misses.linear")
    second = count(rec, "tlb.misses.guest-physical", "tlb.misses.nested")
    return f"{first:,} / {second:,}"


HEADERS = (
    "configuration",
    "policy",
    "VM\nexits",
    *(header for header, _ in FLUSH_COLUMNS),
    "over-flush\n(valid entries)",
    "TLB misses\nlinear / GPA",
    "walk\nrefs",
    "Mcycles\n(est.)",
    "vs first\npolicy",
)


# The shadow-paging table (runs with tdp = false): KVM's exits and shadow-MMU work.
SHADOW_HEADERS = (
    "configuration",
    "policy",
    "#PF\nexits",
    "PT-write\nexits",
    "unsyncs",
    "INVLPG\nexits",
    "MOV CR3\nexits",
    "syncs\npages / SPTEs",
    "rmap\nzaps",
    "KVM\nflushes",
    "Mcycles\n(est.)",
)
# The flushes KVM issues (the flush columns, without the VPID-off transitions), and INVLPGA.
KVM_FLUSHES = (
    *(n for header, names in FLUSH_COLUMNS if not header.startswith("VPID-off") for n in names),
    "op.invlpga",
)


def is_shadow(rec: dict[str, Any]) -> bool:
    return rec.get("config_detail", {}).get("tdp", True) is False


def shadow_rows(recs: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The cells of one workload's shadow-paging table, in SHADOW_HEADERS order."""
    out = []
    for r in recs:
        if not is_shadow(r):
            continue
        pages, sptes = count(r, "shadow.sync-pages"), count(r, "shadow.sync-sptes")
        out.append(
            [
                r["config"],
                r["policy"],
                f"{count(r, 'kvm.shadow-faults'):,}",
                f"{count(r, 'kvm.exits.pt-write'):,}",
                f"{count(r, 'shadow.unsyncs'):,}",
                f"{count(r, 'kvm.exits.invlpg'):,}",
                f"{count(r, 'kvm.exits.mov-cr3'):,}",
                f"{pages:,} / {sptes:,}",
                f"{count(r, 'shadow.rmap-zaps'):,}",
                f"{count(r, *KVM_FLUSHES):,}",
                f"{r['total_cycles'] / 1e6:,.2f}",
            ]
        )
    return out


# The nested-EPT table (nested runs with tdp = true): L1's INVEPTs and KVM's EPT02 work.
NESTED_EPT_HEADERS = (
    "configuration",
    "policy",
    "L1\nINVEPT",
    "EPT12 stores\n/ exits",
    "EPT02 roots\nfreed / loaded",
    "EPT02\nfaults",
    "EPT viol.\nto L1",
    "INVEPT\nsingle / all",
    "stale hits\n(--audit)",
    "Mcycles\n(est.)",
)


def is_nested_ept(rec: dict[str, Any]) -> bool:
    d = rec.get("config_detail", {})
    return bool(d.get("nested")) and d.get("tdp", True) is True


def nested_ept_rows(recs: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The cells of one workload's nested-EPT table, in NESTED_EPT_HEADERS order."""
    out = []
    for r in recs:
        if not is_nested_ept(r):
            continue
        stores = count(r, "l1.ept-wrprotects", "l1.ept-violations")
        out.append(
            [
                r["config"],
                r["policy"],
                f"{count(r, 'l1.invept'):,}",
                f"{stores:,} / {count(r, 'l1.ept12-write-exits'):,}",
                f"{count(r, 'nested.ept02-roots-freed'):,} / "
                f"{count(r, 'nested.ept02-root-loads'):,}",
                f"{count(r, 'nested.ept02-faults'):,}",
                f"{count(r, 'l1.ept-violations'):,}",
                f"{count(r, 'op.invept-single'):,} / {count(r, 'op.invept-all'):,}",
                f"{count(r, 'tlb.stale-hits'):,}",
                f"{r['total_cycles'] / 1e6:,.2f}",
            ]
        )
    return out


# The huge-page table (runs with huge_pages): KVM's 2 MiB SPTE changes and their flushes.
HUGE_HEADERS = (
    "configuration",
    "policy",
    "splits /\ncollapses",
    "huge SPTEs\ndropped",
    "range flushes\n(pages)",
    "kicks",
    "INVEPT",
    "HvFlush list\n/ space",
    "EPT\nviolations",
    "stale hits\n(--audit)",
    "Mcycles\n(est.)",
)


def huge_rows(recs: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The cells of one workload's huge-page table, in HUGE_HEADERS order."""
    out = []
    for r in recs:
        if not r.get("config_detail", {}).get("huge_pages"):
            continue
        out.append(
            [
                r["config"],
                r["policy"],
                f"{count(r, 'huge.huge-to-table'):,} / {count(r, 'huge.table-to-huge'):,}",
                f"{count(r, 'huge.huge-to-none'):,}",
                f"{count(r, 'kvm.range-flushes'):,} ({count(r, 'kvm.range-flush-pages'):,})",
                f"{count(r, 'host.kicks'):,}",
                f"{count(r, 'op.invept-single', 'op.invept-all'):,}",
                f"{count(r, 'op.hv-flush-list'):,} / {count(r, 'op.hv-flush-space'):,}",
                f"{count(r, 'op.ept-violation'):,}",
                f"{count(r, 'tlb.stale-hits'):,}",
                f"{r['total_cycles'] / 1e6:,.2f}",
            ]
        )
    return out


def _by_workload(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_workload.setdefault(r["workload"], []).append(r)
    return by_workload


def _title(name: str, first: dict[str, Any]) -> str:
    return f"{name}: {first['accesses']:,} guest accesses, seed {first['seed']} ({first['file']})"


def rows(recs: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The cells of one workload's table, one row per (configuration, policy), in HEADERS order."""
    out = []
    base: dict[str, int] = {}
    for r in recs:
        config = r["config"]
        first_of_config = config not in base
        if first_of_config:
            base[config] = r["total_cycles"]
        cells = [f"{count(r, *names):,}" for header, names in FLUSH_COLUMNS]
        cells[4] = _tlb_control(r)
        delta = r["total_cycles"] - base[config]
        pct = 100.0 * delta / base[config] if base[config] else 0.0
        out.append(
            [
                config,
                r["policy"],
                f"{count(r, 'op.vm-exit'):,}",
                *cells,
                f"{count(r, 'overflush'):,}",
                _misses(r),
                f"{count(r, 'walk.refs'):,}",
                f"{r['total_cycles'] / 1e6:,.2f}",
                "" if first_of_config else f"{pct:+.1f}%",
            ]
        )
    return out


def table(console: Console, records: Sequence[dict[str, Any]]) -> None:
    """One table per workload: rows are (configuration, policy)."""
    for name, recs in _by_workload(records).items():
        t = Table(title=_title(name, recs[0]), title_justify="left")
        for n, header in enumerate(HEADERS):
            if n < 2:
                t.add_column(header, no_wrap=True)
            else:
                t.add_column(header, justify="right")
        last_config = ""
        for row in rows(recs):
            if last_config and row[0] != last_config:
                t.add_section()
            last_config = row[0]
            t.add_row(*row)
        console.print(t)
        for title, headers, extra in (
            ("shadow paging, KVM's side", SHADOW_HEADERS, shadow_rows(recs)),
            ("nested EPT, L1's and KVM's side", NESTED_EPT_HEADERS, nested_ept_rows(recs)),
            ("2 MiB pages, KVM's side", HUGE_HEADERS, huge_rows(recs)),
        ):
            if not extra:
                continue
            t = Table(title=f"{name}: {title}", title_justify="left")
            for n, header in enumerate(headers):
                t.add_column(header, no_wrap=n < 2, justify="left" if n < 2 else "right")
            last_config = ""
            for row in extra:
                if last_config and row[0] != last_config:
                    t.add_section()
                last_config = row[0]
                t.add_row(*row)
            console.print(t)


def html(records: Sequence[dict[str, Any]], path: Path, seconds: float) -> None:
    """`kvmtlb cost --html FILE`: the tables and the plot (inline SVG) in one self-contained
    page."""
    import tempfile

    import jinja2

    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "plot.svg"
        plot(records, svg)
        drawing = svg.read_text()
    drawing = drawing[drawing.find("<svg") :]  # drop the XML prolog and DOCTYPE
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    tables = [(_title(name, recs[0]), rows(recs)) for name, recs in _by_workload(records).items()]
    page = env.get_template("cost.html.j2").render(
        headers=HEADERS, tables=tables, svg=drawing, summary=summary(records, seconds)
    )
    path.write_text(page, encoding="utf-8")


def summary(records: Sequence[dict[str, Any]], seconds: float) -> str:
    accesses = sum(r["accesses"] for r in records)
    cpu = sum(r["cpu_seconds"] for r in records)
    rate = accesses / cpu if cpu else 0.0
    return (
        f"{len(records)} runs, {accesses:,} simulated guest accesses in {seconds:.1f}s "
        f"({rate:,.0f} accesses per CPU-second); counts are measured, cycles estimated from "
        "kvmtlb/cost/costs.toml"
    )


def plot(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Stacked bars of estimated cycles by category: one panel per workload, one group of bars per
    configuration, one bar per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_workload: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_workload.setdefault(r["workload"], []).append(r)
    n = len(by_workload)
    width = max(8.0, 0.45 * _widest(by_workload) + 2.0)
    fig, axes = plt.subplots(n, 1, figsize=(width, 3.4 * n + 0.6), squeeze=False)
    colors = {"flush": "#c0392b", "transition": "#e67e22", "refill": "#2980b9", "guest": "#95a5a6"}
    for ax, (name, recs) in zip(axes[:, 0], by_workload.items(), strict=True):
        xs: list[float] = []
        groups: dict[str, list[float]] = {}
        x = 0.0
        for r in recs:
            if groups and r["config"] not in groups:
                x += 0.7
            groups.setdefault(r["config"], []).append(x)
            xs.append(x)
            x += 1.0
        bottom = [0.0] * len(recs)
        for cat in CATEGORIES:
            heights = [r["cycles_by_category"].get(cat, 0) / 1e6 for r in recs]
            ax.bar(xs, heights, 0.8, bottom=bottom, label=cat, color=colors[cat])
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_xticks(xs)
        ax.set_xticklabels([r["policy"] for r in recs], fontsize=7, rotation=60, ha="right")
        for config, positions in groups.items():
            ax.text(
                sum(positions) / len(positions),
                1.01,
                config,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_ylabel("estimated Mcycles")
        ax.set_title(f"{name} ({recs[0]['accesses']:,} guest accesses)", fontsize=10, pad=16)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(CATEGORIES), fontsize=8)
    fig.suptitle("kvmtlb cost: what each flush policy pays", fontsize=11, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)


def _widest(by_workload: dict[str, list[dict[str, Any]]]) -> int:
    return max(len(v) for v in by_workload.values())


__all__ = [
    "FLUSH_COLUMNS",
    "HEADERS",
    "HUGE_HEADERS",
    "NESTED_EPT_HEADERS",
    "PLOT_SUFFIXES",
    "SHADOW_HEADERS",
    "html",
    "huge_rows",
    "nested_ept_rows",
    "plot",
    "rows",
    "shadow_rows",
    "summary",
    "table",
]
