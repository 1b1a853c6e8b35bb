"""The AMD invalidation table, as data (tests/data/amd_invalidations.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from amdsetups import KINDS, probe, relations, run_op, setup
from test_intel_table import expected, outcome_name

from kvmtlb.hw.rules import rule
from kvmtlb.hw.vmcb import SvmCapabilities

TABLE = tomllib.loads((Path(__file__).parent / "data" / "amd_invalidations.toml").read_text())
EVENTS: list[dict[str, Any]] = TABLE["event"]

# Every AMD event of issue "AMD SVM TLB model per the APM" and x86-tlb-architecture.md §4.
AMD_EVENTS = [
    "VMRUN",
    "#VMEXIT",
    "TLB_CONTROL 0",
    "TLB_CONTROL 1",
    "TLB_CONTROL 3",
    "TLB_CONTROL 7",
    "TLB_CONTROL without FlushByAsid",
    "INVLPG",
    "MOV CR3",
    "MOV CR4 PGE",
    "MOV CR4 PAE",
    "MOV CR4 PSE",
    "CR0.PG change",
    "INVPCID",
    "INVLPGA",
    "SMI, RSM, MSR writes",
    "#PF",
    "#NPF",
    "intercepted operation",
]


def test_every_amd_event_is_covered() -> None:
    covered = {c for e in EVENTS for c in e["covers"]}
    assert not [e for e in AMD_EVENTS if e not in covered]


@pytest.mark.parametrize("event", EVENTS, ids=[e["name"] for e in EVENTS])
def test_event(event: dict[str, Any]) -> None:
    caps = SvmCapabilities(**event.get("caps", {}))
    eff = run_op(setup(event["setup"]), event["op"], caps)
    assert outcome_name(eff.outcome) == event["outcome"], eff.outcome
    for r in event.get("rules", []):
        assert r in eff.invalidation.rules
    for r in eff.invalidation.rules:
        assert rule(r)
    wrong = []
    for kind in KINDS:
        for rel in relations(kind, event["subject"]["asid"]):
            entry = probe(kind, rel, event["subject"])
            want = expected(event["rows"], kind, rel) == "removed"
            got = eff.invalidation.removes(entry, [entry])
            if want != got:
                wrong.append(f"{kind} {rel}: expected {'removed' if want else 'kept'}")
    assert not wrong, f"{event['name']} ({', '.join(eff.invalidation.rules)}):\n" + "\n".join(wrong)
