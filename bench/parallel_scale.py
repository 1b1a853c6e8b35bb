"""One search on every core (issue 12): the plain search against the partitioned one.

    python bench/parallel_scale.py [--depth3 D] [--ray] [--policy NAME]

On the PV-flush protocol of bench/gen_pvflush.py: N = 2 searched to the end, and N = 3 (which no
search here finishes in minutes) to every state within D steps (the same states for every
search, so times compare). For each: explorer.explore, the partitioned search with one partition
in this process (what --checkpoint runs), with 2 worker processes (--jobs 2 on one run), and
with --ray 2 Ray actors on a local Ray (its start-up timed apart). Every search must give the
same counts; the speed-up is the plain search's time over the partitioned one's, and the CPU
seconds (this process and its worker processes; Ray's actors are not counted) say what the
partitioning costs in total. The machine is shared: the load average is printed with the
figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from gen_pvflush import scenario

from kvmtlb.check.explorer import explore
from kvmtlb.check.parallel import explore_partitioned
from kvmtlb.kvm.policy import registry
from kvmtlb.model.scenario import load
from kvmtlb.model.system import System, build


def cpu() -> float:
    """CPU seconds of this process and of its children that ended (the worker processes)."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth3", type=int, default=16, help="N = 3: search every state within D")
    ap.add_argument("--ray", action="store_true", help="also on 2 Ray actors (local Ray)")
    ap.add_argument("--policy", default="kvm-6.18")
    ap.add_argument("--only", choices=("2", "3"), help="only this N")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kvmtlb-parallel-"))
    ray_started = False
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
    for n, depth in ((2, 0), (3, args.depth3)):
        if args.only and str(n) != args.only:
            continue
        path = tmp / f"pv{n}.toml"
        path.write_text(scenario(n))

        def system(path: Path = path) -> System:
            return build(load(str(path), set(registry())), registry()[args.policy]())

        label = f"N={n} {args.policy}" + (f", within {depth} steps" if depth else "")
        runs = [
            ("plain explore", lambda s, depth=depth: explore(s, max_depth=depth)),
            (
                "partitioned, 1 in-process",
                lambda s, depth=depth: explore_partitioned(s, 1, max_depth=depth),
            ),
            (
                "partitioned, 2 processes",
                lambda s, depth=depth: explore_partitioned(s, 2, max_depth=depth),
            ),
        ]
        if args.ray:
            from kvmtlb.check.ray_backend import spec_of

            def on_ray(s: System, path: Path = path, depth: int = depth) -> object:
                return explore_partitioned(
                    s,
                    2,
                    backend="ray",
                    spec=spec_of(str(path), args.policy, None),
                    max_depth=depth,
                )

            if not ray_started:
                import ray

                t = time.perf_counter()
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                print(f"ray.init(): {time.perf_counter() - t:.1f} s")
                ray_started = True
            runs.append(("Ray, 2 actors", on_ray))
        base = None
        for name, run in runs:
            s = system()
            t = time.perf_counter()
            c = cpu()
            r = run(s)
            secs = time.perf_counter() - t
            used = "    -" if name.startswith("Ray") else f"{cpu() - c:5.1f}"
            base = base or secs
            print(
                f"{label:32} {name:27} {r.label:22} {r.states:>9,} states "  # type: ignore[attr-defined]
                f"{r.transitions:>10,} transitions {secs:7.1f} s, CPU {used} s "  # type: ignore[attr-defined]
                f"{r.states / secs:>8,.0f} st/s  x{base / secs:.2f}  "  # type: ignore[attr-defined]
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
