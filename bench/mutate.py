"""`kvmtlb mutate` over the built-in suite (issue 13's target: kvm-6.18 in at most 10 minutes on
two cores), and what the mutation overhead is.

Prints, for the policy (default kvm-6.18): the runs (scenarios x configurations), the number of
mutants and their statuses, the mutation score, wall and CPU seconds of the whole campaign, and,
as a ratio that does not depend on the neighbours, the time of the recording pass (every run with
the policy's methods wrapped) against the same runs without the wrappers.

Run: python bench/mutate.py [POLICY] [--no-matrix] [--jobs N]
"""

from __future__ import annotations

import os
import sys
import time

from kvmtlb.check import mutate
from kvmtlb.check.explorer import explore
from kvmtlb.check.mutation import run_campaign, suite_runs
from kvmtlb.check.runner import builtin_scenarios, load_policy
from kvmtlb.kvm.policy import registry
from kvmtlb.model.scenario import load
from kvmtlb.model.system import build


def overhead(policy: str, sample: int = 12) -> float:
    """Wrapped / plain exploration time over the first `sample` own-configuration runs."""
    base = load_policy(policy)
    plain = wrapped = 0.0
    for path in builtin_scenarios()[:sample]:
        s = load(path, set(registry()))
        t = time.perf_counter()
        explore(build(s, base()))
        plain += time.perf_counter() - t
        t = time.perf_counter()
        explore(build(s, mutate.recorder(base, mutate.Recording())()))
        wrapped += time.perf_counter() - t
    return wrapped / plain


def main() -> None:
    args = sys.argv[1:]
    matrix = "--no-matrix" not in args
    jobs = int(args[args.index("--jobs") + 1]) if "--jobs" in args else (os.cpu_count() or 1)
    names = [
        a
        for i, a in enumerate(args)
        if not a.startswith("--") and (i == 0 or args[i - 1] != "--jobs")
    ]
    policy = names[0] if names else "kvm-6.18"
    paths = [str(p) for p in builtin_scenarios()]
    print(f"policy {policy}; {len(suite_runs(paths, matrix))} runs; {jobs} workers")
    w0, c0 = time.perf_counter(), time.process_time()
    report = run_campaign(policy, paths, matrix=matrix, workers=jobs)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    counts: dict[str, int] = {}
    for m in report.mutants:
        counts[m.status] = counts.get(m.status, 0) + 1
    print(f"mutants: {len(report.mutants)} {counts}")
    print(f"mutation score: {report.score:.1%}")
    print(f"campaign: {wall:.0f} s wall, {cpu:.0f} s CPU in this process (target: 600 s wall)")
    print(f"wrapped / plain exploration time: {overhead(policy):.2f}")


if __name__ == "__main__":
    main()
