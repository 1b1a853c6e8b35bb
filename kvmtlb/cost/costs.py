"""The cost table (costs.toml): TLB capacities and cycles per counted event, for each vendor.

Loaded and checked once: every figure must carry a `source` or an `assumption` (never neither,
never both), a non-negative integer, and, for cycles, the counter it multiplies and the category
it is plotted in. `estimate` turns a run's counts into cycles, figure by figure.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from kvmtlb.cost.tlb import KIND_BY_NAME

DEFAULT = Path(__file__).parent / "costs.toml"
CATEGORIES = ("flush", "transition", "refill", "guest")
VENDORS = ("intel", "amd")


class CostTableError(Exception):
    """The cost table is malformed (a packaging error, or a user's edited copy)."""


@dataclass(frozen=True)
class Figure:
    name: str
    counter: str  # the count it multiplies
    cycles: int
    category: str
    source: str  # where the number comes from, or ""
    assumption: str  # why this number, when there is no source, or ""

    @property
    def basis(self) -> str:
        return self.source or f"assumption: {self.assumption}"


@dataclass(frozen=True)
class Capacity:
    kind: str
    entries: int
    source: str
    assumption: str


@dataclass(frozen=True)
class CostTable:
    path: str
    capacity: dict[str, tuple[Capacity, ...]]  # vendor -> capacities per kind
    cycles: dict[str, tuple[Figure, ...]]  # vendor -> cycle figures

    def capacities(self, vendor: str) -> dict[str, int]:
        return {c.kind: c.entries for c in self.capacity[vendor]}

    def figure(self, vendor: str, name: str) -> Figure:
        for f in self.cycles[vendor]:
            if f.name == name:
                return f
        raise KeyError(name)


def _basis(path: str, where: str, t: Mapping[str, Any]) -> tuple[str, str]:
    source = t.get("source", "")
    assumption = t.get("assumption", "")
    if not isinstance(source, str) or not isinstance(assumption, str):
        raise CostTableError(f"{path}: {where}: source and assumption must be strings")
    if bool(source.strip()) == bool(assumption.strip()):
        raise CostTableError(
            f"{path}: {where}: give exactly one of `source` (where the number comes from) and "
            "`assumption` (why this number)"
        )
    return source.strip(), assumption.strip()


def _count(path: str, where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CostTableError(f"{path}: {where}: must be a non-negative integer, not {value!r}")
    return value


def parse_costs(text: str, path: str = "<costs>") -> CostTable:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CostTableError(f"{path}: not valid TOML: {e}") from None
    capacity: dict[str, tuple[Capacity, ...]] = {}
    cycles: dict[str, tuple[Figure, ...]] = {}
    for vendor in VENDORS:
        v = data.get(vendor)
        if not isinstance(v, dict):
            raise CostTableError(f"{path}: no [{vendor}] tables")
        caps = []
        for kind, t in v.get("capacity", {}).items():
            where = f"[{vendor}.capacity.{kind}]"
            if kind not in KIND_BY_NAME:
                raise CostTableError(f"{path}: {where}: unknown mapping kind {kind!r}")
            caps.append(
                Capacity(kind, _count(path, where, t.get("entries")), *_basis(path, where, t))
            )
        capacity[vendor] = tuple(caps)
        figs = []
        for name, t in v.get("cycles", {}).items():
            where = f"[{vendor}.cycles.{name}]"
            counter = t.get("counter")
            category = t.get("category")
            if not isinstance(counter, str) or not counter:
                raise CostTableError(f'{path}: {where}: needs counter = "NAME"')
            if category not in CATEGORIES:
                raise CostTableError(f"{path}: {where}: category must be one of {CATEGORIES}")
            figs.append(
                Figure(
                    name,
                    counter,
                    _count(path, where, t.get("cycles")),
                    category,
                    *_basis(path, where, t),
                )
            )
        cycles[vendor] = tuple(figs)
    return CostTable(path, capacity, cycles)


@cache
def default_costs() -> CostTable:
    return parse_costs(DEFAULT.read_text(), str(DEFAULT))


def estimate(table: CostTable, vendor: str, counts: Mapping[str, int]) -> dict[str, int]:
    """Cycles per figure: its counter's count times its cycles (figures with no count left out)."""
    out: dict[str, int] = {}
    for f in table.cycles[vendor]:
        n = counts.get(f.counter, 0)
        if n:
            out[f.name] = n * f.cycles
    return out


def by_category(table: CostTable, vendor: str, cycles: Mapping[str, int]) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    for f in table.cycles[vendor]:
        out[f.category] += cycles.get(f.name, 0)
    return out


__all__ = [
    "CATEGORIES",
    "CostTable",
    "CostTableError",
    "Figure",
    "by_category",
    "default_costs",
    "estimate",
    "parse_costs",
]
