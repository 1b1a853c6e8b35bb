"""The explorer's speed and memory targets (issue 5), measured in one run.

1. States per second on the largest built-in scenario (the one with the most states under
   kvm-6.18), wall clock and CPU time, one core. Target: at least 20,000.
2. Bytes per visited state in the explorer's store (the packed fingerprint table: fingerprint,
   parent index and action index per state, plus the table's free slots). Target: at most 64.
3. The whole built-in suite under every upstream version, as `kvmtlb check` runs it (one job per
   scenario and version, on every core). Target: at most 120 s on this 2-core machine.
4. bench/scenarios/pv-flush-3vcpu.toml: 3 vCPUs on 2 pCPUs; vCPU0 remaps a page and shoots down
   the others with the PV flush; vCPU1 and vCPU2 each read the page twice. They time-share pCPU1,
   so the scheduler may preempt and resume each of them at every step, any number of times (more
   than the twice the issue asks for). Target: verified exhaustively in at most 60 s.

5. Issue 12's PV-flush protocol (bench/gen_pvflush.py) at N = 2, 3 and 4, under kvm-6.18 (safe)
   and the CVE-2019-3016 double-preempted bug, each search in a fresh process: the plain
   breadth-first search (the reference) and each reduction on (--por: sleep sets), with states,
   transitions, steps pruned, seconds to the verdict, states per second, bytes per state of the
   store and of peak RSS. N = 3 and 4 are capped (--cap SECONDS, default 60): a capped search
   prints `stopped:timeout` and the rate it reached.

Machines here are shared and noisy: the script also prints CPU seconds next to wall seconds, and
the ratio of (4) to (1) in states per second, which is the part that does not depend on the
neighbours. Run: python bench/explorer.py [--quick] [--cap SECONDS] [--only-pvflush]
(--quick skips 3 and runs 4 under kvm-6.18 only, and 5 at N = 2 only).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvmtlb.check.explorer import Result, explore
from kvmtlb.check.runner import Job, builtin_scenarios, run_all
from kvmtlb.kvm.policy import registry, upstream
from kvmtlb.model.scenario import load
from kvmtlb.model.system import build

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from explorer_scale import fresh  # noqa: E402
from gen_pvflush import scenario as pvflush  # noqa: E402

THREE_VCPUS = HERE / "scenarios" / "pv-flush-3vcpu.toml"


def timed(path: Path, policy: str) -> tuple[Result, float, float]:
    scenario = load(str(path), set(registry()))
    system = build(scenario, registry()[policy]())
    wall, cpu = time.perf_counter(), time.process_time()
    result = explore(system)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def line(name: str, r: Result, wall: float, cpu: float) -> str:
    return (
        f"  {name:34s} {r.label:28s} {r.states:>9,} states  {wall:6.2f} s wall  {cpu:6.2f} s cpu  "
        f"{r.states / wall:>8,.0f} states/s  {r.store_bytes / max(r.states, 1):5.1f} B/state"
    )


# The reductions measured in (5): name -> options of explore (the first is the reference).
REDUCTIONS: dict[str, dict[str, Any]] = {"plain BFS": {}, "--por (sleep sets)": {"por": True}}
PVFLUSH_POLICIES = ("kvm-6.18", "bug-cve-2019-3016-double-preempted")


def _pvflush_run(n: int, policy: str, options: dict[str, Any], cap: float) -> dict[str, Any]:
    path = Path(tempfile.gettempdir()) / f"kvmtlb-pvflush-{n}.toml"
    path.write_text(pvflush(n))
    system = build(load(str(path), set(registry())), registry()[policy]())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    r = explore(
        system, progress=lambda p: "timeout" if cap and p.seconds >= cap else None, **options
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    return {
        "label": r.label,
        "states": r.states,
        "transitions": r.transitions,
        "pruned": r.pruned,
        "wall": wall,
        "cpu": cpu,
        "store": r.store_bytes / max(r.states, 1),
        "rss": rss / max(r.states, 1),
        "trace": len(r.path),
    }


def pvflush_table(sizes: list[int], cap: float) -> None:
    print(f"5. PV-flush protocol (bench/gen_pvflush.py); N > 2 capped at {cap:.0f} s")
    for n in sizes:
        for policy in PVFLUSH_POLICIES:
            for name, options in REDUCTIONS.items():
                r = fresh(_pvflush_run, n, policy, options, cap if n > 2 else 0.0)
                print(
                    f"  N={n} {policy:36s} {name:20s} {r['label']:22s} {r['states']:>10,} states "
                    f"{r['transitions']:>10,} trans {r['pruned']:>7,} pruned "
                    f"{r['wall']:6.1f} s wall {r['cpu']:6.1f} s cpu "
                    f"{r['states'] / r['cpu']:>7,.0f} st/s(cpu) store {r['store']:4.1f} B/st "
                    f"RSS {r['rss']:4.0f} B/st trace {r['trace']}",
                    flush=True,
                )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds per search at N = 3, 4")
    ap.add_argument("--only-pvflush", action="store_true", help="only (5)")
    opts = ap.parse_args()
    quick = opts.quick
    if not opts.only_pvflush:
        suite_figures(quick)
    pvflush_table([2] if quick else [2, 3, 4], opts.cap)


def suite_figures(quick: bool) -> None:
    print("1-2. the largest built-in scenario (kvm-6.18), one core")
    sizes = []
    for path in builtin_scenarios():
        r, wall, cpu = timed(path, "kvm-6.18")
        sizes.append((r.states, path, r, wall, cpu))
    _, path, r, wall, cpu = max(sizes, key=lambda s: s[0])
    print(line(path.stem, r, wall, cpu))
    largest_rate = r.states / cpu

    if not quick:
        print(f"3. the built-in suite under every upstream version, {os.cpu_count()} workers")
        jobs = [Job(str(p), cls.name) for p in builtin_scenarios() for cls in upstream()]
        t0 = time.perf_counter()
        results, _ = run_all(jobs, os.cpu_count() or 1)
        secs = time.perf_counter() - t0
        total = sum(int(res.get("states", 0)) for res in results)
        print(f"  {len(jobs)} runs, {total:,} states in {secs:.1f} s (target 120 s)")

    print("4. PV flush, 3 vCPUs on 2 pCPUs, targets preempted and resumed at any step")
    for cls in upstream() if not quick else [registry()["kvm-6.18"]]:
        r, wall, cpu = timed(THREE_VCPUS, cls.name)
        print(line(cls.name, r, wall, cpu) + "  (target 60 s)")
        if cls.name == "kvm-6.18":
            print(
                f"  states/s of (4) relative to (1), CPU time: {r.states / cpu / largest_rate:.2f}"
            )


if __name__ == "__main__":
    main()
