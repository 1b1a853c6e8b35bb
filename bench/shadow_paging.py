"""Shadow paging against TDP in the explorer (issue 10's performance target), in one run.

For each pair, the same scenario file is explored twice under kvm-6.18: as written (TDP: EPT on
Intel, NPT on AMD) and re-configured with `tdp = false` (shadow paging: the processor walks KVM's
shadow tables, every first access is a #PF exit, the first store to a guest page table an exit
too). It prints states, transitions and states per CPU-second of each, and the ratio of the two
rates. Target: shadow paging within 2x of TDP in states/s on scenarios of similar size. The same
run also times the built-in shadow-paging scenarios under every upstream version (the suite's
share; the whole suite must stay within 60 s on two cores).

Ratios come from one process, one after the other, so a noisy neighbour moves both sides alike.
Run: python bench/shadow_paging.py
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from kvmtlb.check.explorer import Result, explore
from kvmtlb.kvm.policy import registry, upstream
from kvmtlb.model.scenario import Scenario, load, reconfigure
from kvmtlb.model.system import build

SCENARIOS = Path(__file__).resolve().parent.parent / "kvmtlb" / "scenarios"
# TDP scenarios whose ops are valid under shadow paging too (the shadow run re-validates them).
PAIRS = (
    "stale-until-invlpg",
    "shootdown-read-only",
    "ipi-shootdown-page",
    "zap-race-access",
    "remap-race-access",
    "pv-flush-preempted-target",
    "amd-pv-flush-preempted-target",
    "amd-zap-race-access",
)


def timed(s: Scenario, policy: str = "kvm-6.18") -> tuple[Result, float]:
    system = build(s, registry()[policy]())
    cpu = time.process_time()
    result = explore(system)
    return result, time.process_time() - cpu


def rate(r: Result, cpu: float) -> float:
    return r.states / cpu if cpu > 0 else 0.0


def main() -> int:
    known = set(registry())
    print("TDP against shadow paging, the same scenario under kvm-6.18 (states per CPU-second):")
    print(
        f"  {'scenario':32s} {'TDP states':>11s} {'st/s':>8s} {'shadow states':>14s} "
        f"{'st/s':>8s} {'TDP/shadow':>10s}"
    )
    worst = 0.0
    for stem in PAIRS:
        tdp = load(str(SCENARIOS / f"{stem}.toml"), known)
        shadow = reconfigure(tdp, dataclasses.replace(tdp.config, tdp=False))
        r1, c1 = timed(tdp)
        r2, c2 = timed(shadow)
        ratio = rate(r1, c1) / max(rate(r2, c2), 1e-9)
        worst = max(worst, ratio)
        print(
            f"  {stem:32s} {r1.states:>11,} {rate(r1, c1):>8,.0f} {r2.states:>14,} "
            f"{rate(r2, c2):>8,.0f} {ratio:>9.2f}x   ({r1.label} / {r2.label})"
        )
    print(f"  worst ratio: {worst:.2f}x (target: at most 2x)")
    print()
    print("The built-in shadow-paging scenarios, every upstream version (CPU seconds, one core):")
    total = 0.0
    states = 0
    for path in sorted(SCENARIOS.glob("*.toml")):
        s = load(str(path), known)
        if s.config.tdp:
            continue
        for cls in upstream():
            r, c = timed(s, cls.name)
            total += c
            states += r.states
    print(f"  {states:,} states in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
