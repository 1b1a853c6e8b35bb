"""The Intel invalidation table, as data (tests/data/intel_invalidations.toml).

For each event: its architectural outcome, then for every mapping kind and every tag relation to
the event's subject, "must be removed" or "may be kept" -- and the model must remove exactly the
former. Every Intel row of x86-tlb-architecture.md §2.2 is covered.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hwsetups import KINDS, probe, relations, run_op, setup

from kvmtlb.hw.effect import Readings
from kvmtlb.hw.rules import rule

TABLE = tomllib.loads((Path(__file__).parent / "data" / "intel_invalidations.toml").read_text())
EVENTS: list[dict[str, Any]] = TABLE["event"]

# Every Intel row of x86-tlb-architecture.md §2.2, by the name the table gives it.
SECTION_2_2_ROWS = [
    "INVLPG addr",
    "INVPCID type 0",
    "INVPCID type 1",
    "INVPCID type 2",
    "INVPCID type 3",
    "INVPCID with CR4.PCIDE = 0",
    "MOV to CR3, CR4.PCIDE = 0",
    "MOV to CR3, PCIDE = 1, src bit 63 = 0",
    "MOV to CR3, PCIDE = 1, src bit 63 = 1",
    "MOV to CR4 changing PGE (0→1 or 1→0)",
    "MOV to CR4 changing PCIDE 1→0",
    "MOV to CR4 changing PCIDE 0→1",
    "MOV to CR4 changing PAE, or SMEP 0→1",
    "MOV to CR4 changing PSE, or SMEP 1→0",
    "MOV to CR4 changing SMAP, PKE, other bits",
    "MOV to CR0 with PG 1→0",
    "MOV to CR0 with PG 0→1, WP change, CD/NW change",
    "Task switch that changes CR3",
    "#PF (page fault) on linear address A",
    "EPT violation at GPA X (from linear address A)",
    "EPT misconfiguration",
    'VM entry, "enable VPID" = 0',
    'VM exit, "enable VPID" = 0',
    'VM entry / VM exit, "enable VPID" = 1',
    "(CR0/CR3/CR4 loads done by VM entry/exit)",
    "INVVPID type 0",
    "INVVPID type 1",
    "INVVPID type 2",
    "INVVPID type 3",
    "INVEPT type 1",
    "INVEPT type 2",
    "EPTP-switching VMFUNC",
    "VMXON / VMXOFF",
    "SMI, default treatment",
    "RSM, default treatment",
    "SMM VM exit (dual-monitor treatment)",
    "VM entry returning from SMM (dual-monitor treatment)",
    "GETSEC[ENTERACCS] / [EXITAC] / [SENTER] / [WAKEUP] (SMX)",
    "Power-up / RESET",
    "INIT",
    "VMCLEAR / VMPTRLD / VMWRITE of EPTP or VPID",
]


def expected(rows: list[dict[str, Any]], kind: str, rel: dict[str, str]) -> str:
    for row in rows:
        if "kinds" in row and kind not in row["kinds"]:
            continue
        if all(row[k] == rel[k] for k in rel if k in row):
            return str(row["expect"])
    raise AssertionError(f"no row matches {kind} {rel}")


def outcome_name(o: Any) -> str:
    name = type(o).__name__
    if name == "Fault":
        return f"Fault:{o.vector}"
    if name == "VmFailValid":
        return f"VmFailValid({o.error})"
    return name


def test_every_section_2_2_row_is_covered() -> None:
    covered = {c for e in EVENTS for c in e["covers"]}
    missing = [r for r in SECTION_2_2_ROWS if r not in covered]
    assert not missing, f"rows of §2.2 without a table event: {missing}"


@pytest.mark.parametrize("event", EVENTS, ids=[e["name"] for e in EVENTS])
def test_event(event: dict[str, Any]) -> None:
    cpu = setup(event["setup"])
    eff = run_op(cpu, event["op"], Readings())
    assert outcome_name(eff.outcome) == event["outcome"], eff.outcome
    for r in eff.invalidation.rules:
        assert rule(r).vendor == "intel"
    wrong = []
    n = 0
    for kind in KINDS:
        for rel in relations(kind, event["subject"]["vpid"]):
            entry = probe(kind, rel, event["subject"])
            want = expected(event["rows"], kind, rel) == "removed"
            got = eff.invalidation.removes(entry, [entry])
            n += 1
            if want != got:
                wrong.append(f"{kind} {rel}: expected {'removed' if want else 'kept'}")
    assert n > 0
    assert not wrong, f"{event['name']} ({', '.join(eff.invalidation.rules)}):\n" + "\n".join(wrong)
