"""Architectural events per second of the hardware model (issue: target >= 100,000 on one core).

A 2-pCPU Intel machine with 8 guest pages (each GVA may be remapped to either of two GPAs, each
GPA to either of two host pages, writable or not), VPIDs 1 and 2, PCIDs 0 and 1. A seeded random
stream of events from a fixed alphabet runs on it: guest INVLPG, INVPCID, MOV to CR3 (PCID,
no-flush), reads and writes (one successor chosen among the outcomes, faults included), guest
page-table writes, EPT writes, VM exits and entries, INVVPID and INVEPT. Every event is one step of
the model: invalidation, then the fill rule on every affected processor.

Prints events per second for a cold pass (memo tables empty) and a warm pass over the same
stream, the universe size and the memo sizes. Run: python bench/hw_events.py [events]
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from kvmtlb.hw.cpu import CR4_PCIDE, VMX_NONROOT
from kvmtlb.hw.machine import Machine
from kvmtlb.hw.paging import E_R, E_W, E_X, make_ept, make_pte
from kvmtlb.hw.testbed import IntelSpec, build_intel
from kvmtlb.hw.vmx import Invept, Invvpid, VmEntry, VmExitEvent
from kvmtlb.hw.x86 import Invlpg, Invpcid, MovToCr3, MovToCr4

GVAS = [0x1000 * (i + 1) for i in range(8)]
GPAS = [0x10000 + 0x1000 * i for i in range(16)]


def build() -> Any:
    ept_values = {
        g: [
            make_ept(0x80000 + 0x1000 * n + 0x100000 * k, r)
            for k in range(2)
            for r in (E_R | E_W | E_X, E_R | E_X)
        ]
        for n, g in enumerate(GPAS)
    }
    spec = IntelSpec(
        guest={v: make_pte(GPAS[i]) for i, v in enumerate(GVAS)},
        ept={g: ept_values[g][0] for g in GPAS},
        guest_values={
            v: [make_pte(GPAS[i]), make_pte(GPAS[i + 8]), make_pte(GPAS[i], writable=False)]
            for i, v in enumerate(GVAS)
        },
        ept_values=ept_values,
        vpids=(1, 2),
        pcids=(0, 1),
        cpus=2,
    )
    return build_intel(spec)


def stream(tb: Any, n: int, seed: int) -> list[tuple[str, int, int, int]]:
    rng = random.Random(seed)
    kinds = [
        "read",
        "write",
        "invlpg",
        "invpcid",
        "mov_cr3",
        "pte",
        "ept",
        "exit",
        "invvpid",
        "invept",
        "read",
        "read",
    ]
    return [
        (rng.choice(kinds), rng.randrange(2), rng.randrange(8), rng.randrange(16)) for _ in range(n)
    ]


def run(tb: Any, events: list[tuple[str, int, int, int]]) -> tuple[int, float]:
    m: Machine = tb.machine
    m = m.step(0, VmEntry(True)).machine
    m = m.step(1, VmEntry(True)).machine
    m = m.step(0, MovToCr4(m.cpus[0].regs.cr4 | CR4_PCIDE)).machine
    done = 0
    t0 = time.perf_counter()
    for kind, i, a, b in events:
        cpu = m.cpus[i]
        guest = cpu.mode == VMX_NONROOT
        gva = GVAS[a]
        if kind in ("read", "write") and guest:
            succ = m.access(i, gva, kind)
            m = succ[b % len(succ)][1]
        elif kind == "invlpg" and guest:
            m = m.step(i, Invlpg(gva)).machine
        elif kind == "invpcid" and guest:
            m = m.step(i, Invpcid(b % 4, b % 2 if cpu.regs.cr4 & CR4_PCIDE else 0, gva)).machine
        elif kind == "mov_cr3" and guest:
            pcid = (b % 2) if cpu.regs.cr4 & CR4_PCIDE else 0
            noflush = (1 << 63) if pcid and b & 4 else 0
            m = m.step(i, MovToCr3(tb.guest_root | pcid | noflush)).machine
        elif kind == "pte":
            slot = tb.pte_slot(gva)
            m = m.write(slot, m.memory.layout.domains[slot][b % 3])
        elif kind == "ept":
            g = GPAS[b]
            slot = tb.ept_slot(g)
            m = m.write(slot, m.memory.layout.domains[slot][a % 4])
        elif kind == "exit" or not guest:
            if guest:
                m = m.step(i, VmExitEvent()).machine
            elif kind == "invvpid":
                m = m.step(i, Invvpid(b % 4, 0 if b % 4 == 2 else 1 + i, gva)).machine
            elif kind == "invept":
                m = m.step(i, Invept(1 + b % 2, tb.eptp())).machine
            else:
                m = m.step(i, VmEntry(False)).machine
        else:
            m = m.step(i, Invlpg(gva)).machine
        done += 1
    return done, time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    t0 = time.perf_counter()
    tb = build()
    build_s = time.perf_counter() - t0
    events = stream(tb, n, seed=1)
    cold_n, cold_s = run(tb, events)
    warm_n, warm_s = run(tb, events)
    u = tb.machine.universe
    print(f"universe: {len(u)} entries, built in {build_s:.2f} s")
    print(f"cold pass: {cold_n} events in {cold_s:.2f} s = {cold_n / cold_s:,.0f} events/s")
    print(f"warm pass: {warm_n} events in {warm_s:.2f} s = {warm_n / warm_s:,.0f} events/s")
    infos = list(u._infos.values())
    fills = sum(len(i.fill_memo) for i in infos)
    per_addr = sum(len(p.memo) for i in infos for p in i.plans)
    print(
        f"memo: {len(infos)} contexts, {fills} fills, {per_addr} per-address fills, "
        f"{len(tb.machine.config._effects)} event effects"
    )
    print(f"warm/cold speed ratio: {cold_s / warm_s:.2f}")


if __name__ == "__main__":
    main()
