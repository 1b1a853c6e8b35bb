"""What compiling part of the typed core with mypyc buys the explorer (issue 12), measured.

Copies the kvmtlb package into a temporary directory, compiles the given modules there with mypyc
(default: the canonicalizer and the explorer, which are typed, self-contained and not subclassed;
kvmtlb/hw's Machine and kvm/context.py's Step are subclassed by interpreted classes, which mypyc
forbids without giving up most of the gain), and runs the same search in fresh interpreters on the
pure-Python tree and on the compiled copy, alternating, ROUNDS times each: issue 12's PV-flush
protocol at N = 3 under kvm-6.18, stopped at STATES states. Prints CPU seconds and states per
second of each run. The pure-Python tree is not touched: the compiled copy is thrown away.

Run: python bench/mypyc.py [--states N] [--rounds R] [MODULE.py ...]
(needs mypyc, which comes with mypy: pip install -e '.[test]' has it, and a C compiler).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parent.parent
DEFAULT = ["kvmtlb/model/canonical.py", "kvmtlb/check/explorer.py"]

RUN = """
import sys, time
sys.path.insert(0, {bench!r})
from gen_pvflush import scenario
from kvmtlb.check.explorer import explore
from kvmtlb.kvm.policy import registry
from kvmtlb.model.scenario import load
from kvmtlb.model import canonical
from kvmtlb.model.system import build
open({toml!r}, "w").write(scenario(3))
s = build(load({toml!r}, set(registry())), registry()["kvm-6.18"]())
t = time.process_time()
r = explore(s, max_states={states})
c = time.process_time() - t
compiled = canonical.__file__.endswith(".so")
print(f"{{r.states}} {{c:.3f}} {{compiled}}")
"""


def measure(tree: Path, states: int, toml: Path) -> tuple[int, float, bool]:
    code = RUN.format(bench=str(ROOT / "bench"), toml=str(toml), states=states)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tempfile.gettempdir(),
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), float(out[1]), out[2] == "True"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--states", type=int, default=150_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("modules", nargs="*", default=DEFAULT)
    opts = ap.parse_args()
    mypyc = shutil.which("mypyc") or str(Path(sys.executable).parent / "mypyc")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "tree"
        shutil.copytree(ROOT / "kvmtlb", copy / "kvmtlb")
        shutil.copy(ROOT / "pyproject.toml", copy)
        print(f"compiling {' '.join(opts.modules)} with mypyc ...", flush=True)
        subprocess.run([mypyc, *opts.modules], cwd=copy, check=True, capture_output=True, text=True)
        toml = Path(tmp) / "pvflush-3.toml"
        for rnd in range(opts.rounds):
            for name, tree in (("pure Python", ROOT), ("mypyc", copy)):
                n, cpu, compiled = measure(tree, opts.states, toml)
                assert compiled == (name == "mypyc"), f"{name}: compiled={compiled}"
                print(
                    f"  round {rnd + 1} {name:12s} {n:,} states {cpu:6.2f} s cpu "
                    f"{n / cpu:>8,.0f} states/s",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
