"""The reference of kvmtlb/oracle is independent: it imports nothing from kvmtlb.hw, so no
predicate, constructor or decoder of the model under test can be wrong on both sides."""

from __future__ import annotations

import ast
from pathlib import Path

ORACLE = Path(__file__).parent.parent / "kvmtlb" / "oracle"


def test_oracle_imports_nothing_from_the_model() -> None:
    found = []
    for path in ORACLE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                if n.startswith("kvmtlb") and not n.startswith("kvmtlb.oracle"):
                    found.append(f"{path.name} imports {n}")
    assert not found, found
