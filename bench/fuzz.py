"""Mutation fuzz of the input files (issue "Verdicts users can trust", item 1).

Mutates the built-in scenarios (kvmtlb/scenarios/) and workloads (kvmtlb/cost/workloads/) with
kvmtlb.fuzz.Mutator, runs each mutant as the tool would (scenario: load, lint, the --matrix
configurations, build, a short exploration; workload: load and a short cost simulation of each
configuration) and prints, per file kind: the number of mutants, of input errors naming the file
and the line (exit code 2), of input errors naming only the file (something missing), of accepted
mutants, of input errors whose message lacks the file, the line or the fix, and of uncaught
exceptions (any other exception, or an `error` verdict), with the first tracebacks and the
slowest mutants. Failing mutants are saved under --keep (default: a temporary directory).

Run: python bench/fuzz.py [--scenarios 10000] [--workloads 3000] [--seed 1] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from kvmtlb import fuzz
from kvmtlb.check.runner import builtin_scenarios
from kvmtlb.cost.workload import builtin_workloads

TIMEOUT = 120  # seconds per mutant before it counts as hanging


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Hang()


def run_one(args: tuple[str, int, bytes, str]) -> tuple[int, str, str, float, bool]:
    kind, i, data, workdir = args
    path = Path(workdir) / f"{kind}-{i}.toml"
    path.write_bytes(data)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT)
    try:
        o = fuzz.try_scenario(path) if kind == "scenario" else fuzz.try_workload(path)
    except _Hang:
        return i, "hang", f"more than {TIMEOUT} s", float(TIMEOUT), True
    finally:
        signal.alarm(0)
    keep = o.kind in (fuzz.UNCAUGHT, fuzz.BAD_MESSAGE) or o.seconds > 10
    if not keep:
        path.unlink()
    line = o.kind == fuzz.INPUT_ERROR and re.match(rf"{re.escape(str(path))}:\d+: ", o.detail)
    kind_out = (
        ("input-error-line" if line else "input-error-file") if o.kind == "input-error" else o.kind
    )
    return i, kind_out, o.detail, o.seconds, keep


def campaign(kind: str, n: int, seed: int, jobs: int, workdir: str) -> bool:
    files = builtin_scenarios() if kind == "scenario" else builtin_workloads()
    sources = [p.read_text() for p in files]
    grammar = fuzz.scenario_grammar() if kind == "scenario" else fuzz.workload_grammar()
    mutator = fuzz.Mutator(grammar, sources)
    rng = random.Random(f"{kind}-{seed}")
    mutants = [(kind, i, mutator.mutate(rng.choice(sources), rng), workdir) for i in range(n)]
    t0 = time.perf_counter()
    counts: Counter[str] = Counter()
    failures: list[tuple[int, str, str]] = []
    slow: list[tuple[float, int]] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for i, k, detail, seconds, _ in pool.map(run_one, mutants, chunksize=8):
            counts[k] += 1
            slow.append((seconds, i))
            if k in ("uncaught", "bad-message", "hang"):
                failures.append((i, k, detail))
    wall = time.perf_counter() - t0
    print(f"== {kind} mutants: {n} (seed {seed}, {wall:.0f} s on {jobs} processes)")
    print(f"  input errors with file:line  {counts['input-error-line']:6}")
    print(f"  input errors with file only  {counts['input-error-file']:6}  (something missing)")
    print(f"  accepted                     {counts['accepted']:6}")
    print(f"  input errors, bad message    {counts['bad-message']:6}")
    print(f"  hanging (> {TIMEOUT} s)           {counts['hang']:6}")
    print(f"  uncaught exceptions          {counts['uncaught']:6}")
    slow.sort(reverse=True)
    print("  slowest: " + ", ".join(f"#{i} {s:.1f}s" for s, i in slow[:5]))
    for i, k, detail in failures[:5]:
        print(f"  --- {k} #{i} ({workdir}/{kind}-{i}.toml)")
        print("    " + detail.strip().replace("\n", "\n    "))
    return not failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", type=int, default=10000)
    ap.add_argument("--workloads", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", default="")
    a = ap.parse_args()
    workdir = a.keep or tempfile.mkdtemp(prefix="kvmtlb-fuzz-")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    ok = campaign("scenario", a.scenarios, a.seed, a.jobs, workdir)
    ok = campaign("workload", a.workloads, a.seed, a.jobs, workdir) and ok
    print(f"failing and slow mutants kept in {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
