"""Imports flow one way: hw -> kvm -> guest/host -> model -> check/cost -> cli (design.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).parent.parent / "kvmtlb"
ORDER = ["hw", "oracle", "kvm", "guest", "host", "model", "check", "cost", "reports", "fuzz", "cli"]
# oracle (the independent reference of the hardware rules) sits at the hw level: it knows
# nothing of KVM, and it may not import hw either (tests/test_oracle.py).
RANK = {
    "hw": 0,
    "oracle": 0,
    "kvm": 1,
    "guest": 2,
    "host": 2,
    "model": 3,
    "check": 4,
    "cost": 4,
    "reports": 5,
    "fuzz": 5,  # kvmtlb/fuzz.py drives both the checker and the cost model
    "advise": 5,  # kvmtlb/advise.py: the mutants of check, priced by the cost model
    "cli": 6,
}


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "kvmtlb" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK else None


def test_imports_flow_one_way() -> None:
    wrong = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        here = layer(".".join(rel.parts))
        if here is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                there = layer(name)
                if there is not None and RANK[there] > RANK[here]:
                    wrong.append(f"{rel} imports {name}")
                if there is not None and RANK[there] == RANK[here] and there != here:
                    wrong.append(f"{rel} imports sibling layer {name}")
    assert not wrong, "\n".join(wrong)


def test_hw_knows_nothing_of_kvm() -> None:
    for layer_ in ("hw", "oracle"):
        for path in (PKG / layer_).rglob("*.py"):
            assert "kvmtlb.kvm" not in path.read_text(), path
