"""Issue 12's figures in one run: the PV-flush protocol of bench/gen_pvflush.py at N = 2, 3 (4
with --n4), breadth-first (the proof) and --hunt (the bug finder), each measured in its own
fresh process for RSS.

For each N and policy it prints: the verdict, states, seconds to the verdict, states per CPU
second, bytes of the visited-state store per state and bytes of peak RSS per state (the whole
process, frontier included); for the BFS with the frontier packed past 32,768 worlds a level
(the default, kvmtlb.check.frontier), kept live, and kept live with the cyclic GC on (as before
issue 12). For the hunt: the seconds to the first find, the walk's length, the shrunk length,
whether it is proven shortest, and the seconds with the bounded proof search.

Run: python bench/explorer_scale.py [--budget SECONDS] [--n4] [--quick] [--full N]
(--budget caps each breadth-first search, default 120 s; --quick: the searches at N = 2 and the
hunts at N = 2 and 3; --hunt-only: the hunts only; --full N: only the BFS of N under kvm-6.18,
packed, to its end.)
Machines here are shared and noisy: repeat before quoting a factor.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from gen_pvflush import scenario

from kvmtlb.check import explorer
from kvmtlb.check.explorer import Progress
from kvmtlb.check.frontier import THRESHOLD
from kvmtlb.check.hunt import hunt
from kvmtlb.kvm.policy import registry
from kvmtlb.model.scenario import load
from kvmtlb.model.system import build

SAFE = "kvm-6.18"
BUGS = ("bug-cve-2019-3016-nonatomic-clear", "bug-cve-2019-3016-double-preempted")


def _system(n: int, policy: str) -> Any:
    path = Path(tempfile.gettempdir()) / f"kvmtlb-pvflush-{n}.toml"
    path.write_text(scenario(n))
    return build(load(str(path), set(registry())), registry()[policy]())


UNPACKED = 1 << 62  # --pack-after that never packs


def _bfs(n: int, policy: str, gc_on: bool, budget: float, pack: int = THRESHOLD) -> dict[str, Any]:
    s = _system(n, policy)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    said = [0.0]

    def stop(p: Progress) -> str | None:
        if p.seconds - said[0] >= 60:  # a line a minute on long runs
            said[0] = p.seconds
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
            print(
                f"    {p.states:,} states, depth {p.depth}, {p.seconds:.0f} s, "
                f"peak RSS {rss / max(p.states, 1):.0f} B/st",
                file=sys.stderr,
                flush=True,
            )
        return "timeout" if p.seconds >= budget else None

    t, cpu = time.perf_counter(), time.process_time()
    run = explorer._explore if gc_on else explorer.explore
    r = run(s, progress=stop, frontier_threshold=pack)
    secs = time.perf_counter() - t
    cpu = time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    return {
        "label": r.label,
        "states": r.states,
        "seconds": secs,
        "cpu": cpu,
        "rate": r.states / cpu,
        "store": r.store_bytes / max(r.states, 1),
        "rss": rss / max(r.states, 1),
        "length": len(r.path),
        "depth": r.depth,
    }


def _hunt(n: int, policy: str, seed: int) -> dict[str, Any]:
    s = _system(n, policy)
    t = time.perf_counter()
    r = hunt(s, seconds=60, seed=seed)
    secs = time.perf_counter() - t
    if r is None:
        return {"label": "not found in 60 s"}
    return {
        "label": r.label,
        "found": r.found_seconds,
        "walk": r.found_length,
        "length": len(r.path),
        "shortest": r.shortest,
        "proved": r.proved_depth,
        "seconds": secs,
    }


def _child(conn: Any, fn: Any, args: tuple[Any, ...]) -> None:
    conn.send(fn(*args))


def fresh(fn: Any, *args: Any) -> dict[str, Any]:
    """`fn(*args)` in a fresh child process (for a clean peak RSS; not a daemon, so a hunt in it
    may start its walkers)."""
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    p = ctx.Process(target=_child, args=(there, fn, args))
    p.start()
    out = dict(here.recv())
    p.join()
    return out


# (label, GC on, --pack-after): the default, the frontier kept live, and the cyclic GC on too
VARIANTS = (
    ("packed", False, THRESHOLD),
    ("unpacked", False, UNPACKED),
    ("unpacked, gc on", True, UNPACKED),
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--n4", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hunt-only", action="store_true")
    ap.add_argument("--full", type=int, metavar="N", help="one BFS of N under kvm-6.18, no cap")
    opts = ap.parse_args()
    if opts.full:
        r = fresh(_bfs, opts.full, SAFE, False, float("inf"))
        print(
            f"N={opts.full} {SAFE} packed: {r['label']} {r['states']:,} states, depth "
            f"{r['depth']}, {r['seconds']:.0f} s (CPU {r['cpu']:.0f} s, "
            f"{r['rate']:,.0f} st/CPU-s), "
            f"store {r['store']:.1f} B/st, peak RSS {r['rss']:.0f} B/st"
        )
        return
    sizes = [2] if opts.quick else [2, 3, 4] if opts.n4 else [2, 3]
    print(f"breadth-first search (each capped at {opts.budget:.0f} s)")
    for n in [] if opts.hunt_only else sizes:
        for policy in (SAFE, *BUGS):
            for how, gc_on, pack in VARIANTS:
                r = fresh(_bfs, n, policy, gc_on, opts.budget, pack)
                print(
                    f"  N={n} {policy:36s} {how:16s} {r['label']:28s} "
                    f"{r['states']:>10,} states {r['seconds']:7.1f} s (CPU {r['cpu']:6.1f} s) "
                    f"{r['rate']:>7,.0f} st/CPU-s store {r['store']:5.1f} B/st  "
                    f"RSS {r['rss']:6.0f} B/st  trace {r['length']}",
                    flush=True,
                )
    print("--hunt (BFS + swarm walks on the other cores, shrinking, a 5 s bounded proof search)")
    for n in [*sizes, 3] if opts.quick else sizes:
        for policy in BUGS:
            for seed in range(3):
                r = fresh(_hunt, n, policy, seed)
                if "found" not in r:
                    print(f"  N={n} {policy:36s} seed {seed}: {r['label']}")
                    continue
                proof = "proven shortest" if r["shortest"] else f"none within {r['proved']}"
                print(
                    f"  N={n} {policy:36s} seed {seed}: found in {r['found']:5.2f} s "
                    f"(walk {r['walk']:3d} -> {r['length']:3d} steps, "
                    f"{proof}) "
                    f"{r['seconds']:5.2f} s with the proof search",
                    flush=True,
                )


if __name__ == "__main__":
    main()
