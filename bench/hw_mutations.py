"""Mutation testing of the hardware model: which tests kill each one-line rule mutation.

Each mutation changes the effect of one rule of kvmtlb/hw by one source edit (an invalidation
that keeps what it must remove or removes what it may keep, a transition that forgets its flush,
a tag check or an access check left out, a walk that ignores stale paging-structure caches). For
each, the script copies the project to a temporary directory, applies the edit there, runs the
selected tests with shrinking off, and reports the tests that fail. Tests of the hand-written
invalidation tables (test_intel_table.py, test_amd_table.py) are reported apart: every mutation
must be killed by at least one other test. Exit status 1 if one is not.

    python bench/hw_mutations.py [--jobs N] [--only ID]... [--list]

It takes about a minute per mutation on two cores; it is a bench, not part of CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("tests/test_intel_table.py", "tests/test_amd_table.py")
TESTS = (
    "tests/test_oracle_property.py",
    "tests/test_concrete_property.py",
    "tests/test_intel_corners.py",
    "tests/test_amd_corners.py",
    "tests/test_seed_claim.py",
    "tests/test_hw_api.py",
    "tests/test_vmx_failures.py",
    "tests/test_universe.py",
    "tests/test_access_check.py",
    "tests/test_suite.py",
    *TABLES,
)


class Mutation(NamedTuple):
    id: str
    path: str
    old: str
    new: str


X86, VMX, SVM, WALK = (
    "kvmtlb/hw/x86.py",
    "kvmtlb/hw/vmx.py",
    "kvmtlb/hw/svm.py",
    "kvmtlb/hw/walk.py",
)
INVLPG_TR = "scope.translations(pcid=pcid, or_global=True, addr=addr, whole_page=True),\n"
MUTATIONS = (
    Mutation(
        "invlpg-keeps-globals",
        X86,
        INVLPG_TR + "        scope.pscs(pcid=pcid),\n",
        INVLPG_TR.replace("or_global=True", "glob=False") + "        scope.pscs(pcid=pcid),\n",
    ),
    Mutation(
        "invlpg-keeps-psc",
        X86,
        INVLPG_TR + "        scope.pscs(pcid=pcid),\n",
        INVLPG_TR + "        scope.pscs(pcid=pcid + 0x1000),\n",
    ),
    Mutation(
        "invlpg-keeps-split-pieces",
        X86,
        INVLPG_TR + "        scope.pscs(pcid=pcid),\n",
        INVLPG_TR.replace("whole_page=True", "whole_page=False")
        + "        scope.pscs(pcid=pcid),\n",
    ),
    Mutation(
        "pf-keeps-psc",
        X86,
        "scope.pscs(pcid=pcid, addr=addr),",
        "scope.pscs(pcid=pcid + 0x1000, addr=addr),",
    ),
    Mutation(
        "pf-keeps-translation",
        X86,
        INVLPG_TR + "        scope.pscs(pcid=pcid, addr=addr),",
        INVLPG_TR.replace("pcid=pcid, or_global=True", "pcid=pcid + 0x1000")
        + "        scope.pscs(pcid=pcid, addr=addr),",
    ),
    Mutation(
        "invpcid-0-removes-globals",
        X86,
        "s.translations(pcid=self.pcid, glob=False, addr=self.addr)",
        "s.translations(pcid=self.pcid, addr=self.addr)",
    ),
    Mutation(
        "invpcid-1-any-pcid",
        X86,
        "s.translations(pcid=self.pcid, glob=False),",
        "s.translations(glob=False),",
    ),
    Mutation(
        "invpcid-2-keeps-globals",
        X86,
        '_inv(("intel.invpcid.all-globals", s.rule), s.everything())',
        '_inv(("intel.invpcid.all-globals", s.rule), s.everything(glob=False))',
    ),
    Mutation(
        "invpcid-3-removes-globals",
        X86,
        "s.translations(glob=False), s.pscs())",
        "s.translations(), s.pscs())",
    ),
    Mutation(
        "mov-cr3-removes-globals",
        X86,
        "scope.translations(pcid=pcid, glob=False),",
        "scope.translations(pcid=pcid),",
    ),
    Mutation(
        "mov-cr3-noflush-flushes",
        X86,
        'return Effect(new, Done(), _inv(("intel.mov-cr3.noflush",)))',
        "return Effect(new, Done(), mov_cr3_invalidation(native_scope(cpu), stored & PCID_MASK))",
    ),
    Mutation(
        "mov-cr4-pge-keeps-globals",
        X86,
        "return _inv((rule, scope.rule), scope.everything())",
        "return _inv((rule, scope.rule), scope.everything(glob=False))",
    ),
    Mutation(
        "mov-cr4-smep-no-flush",
        X86,
        "if changed & CR4_PAE or (changed & CR4_SMEP and value & CR4_SMEP):",
        "if changed & CR4_PAE:",
    ),
    Mutation(
        "mov-cr0-pg-clear-no-flush",
        X86,
        "return Effect(new, Done(), all_pcids_invalidation(s, rule))",
        "return Effect(new, Done(), NOTHING)",
    ),
    Mutation(
        "vmentry-novpid-keeps-linear",
        VMX,
        'transition_invalidation(v.enable_vpid, "intel.vmentry.no-vpid")',
        'transition_invalidation(True, "intel.vmentry.no-vpid")',
    ),
    Mutation(
        "vmexit-novpid-no-flush",
        "kvmtlb/hw/vmexit.py",
        'transition_invalidation(v.enable_vpid, "intel.vmexit.no-vpid")',
        'transition_invalidation(True, "intel.vmexit.no-vpid")',
    ),
    Mutation(
        "invept-single-ignores-ep4ta",
        VMX,
        "Select(GUEST_PHYSICAL + COMBINED, ep4ta=ep4ta)",
        "Select(GUEST_PHYSICAL + COMBINED)",
    ),
    Mutation(
        "invept-single-keeps-combined",
        VMX,
        "Select(GUEST_PHYSICAL + COMBINED, ep4ta=ep4ta)",
        "Select(GUEST_PHYSICAL, ep4ta=ep4ta)",
    ),
    Mutation(
        "invept-all-keeps-guest-physical",
        VMX,
        '_inv(("intel.invept.all",), Select(GUEST_PHYSICAL + COMBINED))',
        '_inv(("intel.invept.all",), Select(COMBINED))',
    ),
    Mutation(
        "invvpid-single-removes-guest-physical",
        VMX,
        '_inv(("intel.invvpid.single", no_g), Select(L_AND_C, vpid=vpid))',
        '_inv(("intel.invvpid.single", no_g), Select(L_AND_C, vpid=vpid), Select(GUEST_PHYSICAL))',
    ),
    Mutation(
        "invvpid-addr-keeps-psc",
        VMX,
        "Select(L_AND_C_PSC, vpid=vpid, addr=addr),",
        "Select(L_AND_C_PSC, vpid=vpid + 0x10000, addr=addr),",
    ),
    Mutation(
        "invvpid-all-includes-vpid-0", VMX, "Select(L_AND_C, vpid_nonzero=True)", "Select(L_AND_C)"
    ),
    Mutation(
        "invvpid-3-removes-globals",
        VMX,
        "(Select(L_AND_C_TLB, vpid=vpid, glob=False), Select(L_AND_C_PSC, vpid=vpid)),",
        "(Select(L_AND_C_TLB, vpid=vpid), Select(L_AND_C_PSC, vpid=vpid)),",
    ),
    Mutation(
        "vmfunc-novpid-no-flush",
        VMX,
        'return Effect(new, Done(), _inv(("intel.vmfunc.eptp-switch",), Select(COMBINED, vpid=0)))',
        'return Effect(new, Done(), _inv(("intel.vmfunc.eptp-switch",)))',
    ),
    Mutation(
        "ept-violation-no-invalidate",
        VMX,
        "clauses = [Select(GUEST_PHYSICAL, ep4ta=ep4ta, addr=gpa)]",
        "clauses = [Select(GUEST_PHYSICAL, ep4ta=ep4ta + 1, addr=gpa)]",
    ),
    Mutation(
        "tlb-control-1-keeps-host",
        SVM,
        '("amd.tlb-control.flush-all", "amd.tlb-control.persists"), Select(ASID_KINDS))',
        '("amd.tlb-control.flush-all", "amd.tlb-control.persists"), '
        "Select(ASID_KINDS, asid_nonzero=True))",
    ),
    Mutation(
        "tlb-control-3-keeps-nested",
        SVM,
        "Select(ASID_KINDS, asid=asid),",
        "Select((AsidTranslation, AsidPsc), asid=asid),",
    ),
    Mutation(
        "tlb-control-7-removes-globals",
        SVM,
        "Select((AsidTranslation,), asid=asid, glob=False),",
        "Select((AsidTranslation,), asid=asid),",
    ),
    Mutation(
        "invlpga-any-asid",
        SVM,
        "Select((AsidTranslation,), asid=asid, addr=self.addr, glob=glob),",
        "Select((AsidTranslation,), addr=self.addr, glob=glob),",
    ),
    Mutation(
        "invlpga-keeps-psc",
        SVM,
        "            Select((AsidPsc,), asid=asid, addr=self.addr),\n",
        "",
    ),
    Mutation(
        "invlpga-removes-globals",
        SVM,
        "glob = None if readings.invlpga_removes_globals else False",
        "glob = None",
    ),
    Mutation(
        "vmrun-ignores-tlb-control",
        SVM,
        "inv = tlb_control_invalidation(v.tlb_control, v.asid, caps)",
        "inv = tlb_control_invalidation(0, v.asid, caps)",
    ),
    Mutation(
        "tlb-control-3-7-without-flush-by-asid",
        SVM,
        "by_asid = caps.flush_by_asid",
        "by_asid = True",
    ),
    Mutation(
        "tlb-control-7-keeps-nested",
        SVM,
        "Select((AsidPsc, NestedTranslation, NestedPsc), asid=asid),",
        "Select((AsidPsc,), asid=asid),",
    ),
    Mutation(
        "flush-all-asids-nothing",
        SVM,
        '_inv(("amd.flush-all-asids",), Select(ASID_KINDS))',
        '_inv(("amd.flush-all-asids",))',
    ),
    Mutation(
        "access-smep-ignored",
        WALK,
        "return not t.rights & G_X or (smep and user)",
        "return not t.rights & G_X",
    ),
    Mutation(
        "access-smap-ignored",
        WALK,
        "    if smap and user and access != EXEC:\n",
        "    if False:\n",
    ),
    Mutation(
        "access-smap-denies-fetch",
        WALK,
        "    if smap and user and access != EXEC:\n",
        "    if smap and user:\n",
    ),
    Mutation(
        "access-write-ignores-rw",
        WALK,
        "        return not t.rights & G_W\n",
        "        return False\n",
    ),
    Mutation(
        "combined-usable-any-ep4ta",
        "kvmtlb/hw/tags.py",
        "and entry.ep4ta == self.ep4ta\n",
        "and True\n",
    ),
    Mutation(
        "walk-ignores-stale-psc",
        WALK,
        "for e in self.held(self._psc_kind, (level, region(gva, level))):",
        "for e in self.held(self._psc_kind, (level, -1)):",
    ),
)

FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+?)(?:\[| - |$)", re.M)


def run(m: Mutation, jobs: int) -> tuple[list[str], float]:
    with tempfile.TemporaryDirectory(prefix="hwmut-") as tmp:
        dst = Path(tmp)
        for part in ("kvmtlb", "tests", "docs", "bench", "README.md", "pyproject.toml"):
            src = ROOT / part
            if src.is_dir():
                shutil.copytree(src, dst / part, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, dst / part)
        target = dst / m.path
        text = target.read_text()
        if text.count(m.old) != 1:
            raise SystemExit(f"{m.id}: the text to mutate occurs {text.count(m.old)} times")
        target.write_text(text.replace(m.old, m.new))
        env = dict(os.environ, PYTHONPATH=str(dst), KVMTLB_HYPOTHESIS_PROFILE="mutation")
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rf",
            "-n",
            str(jobs),
            *TESTS,
        ]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=dst, env=env, capture_output=True, text=True).stdout
        return sorted(set(FAILED.findall(out))), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id:40} {m.path}")
        return 0
    survivors = []
    for m in chosen:
        killers, secs = run(m, args.jobs)
        other = [k for k in killers if not k.startswith(TABLES)]
        table = [k for k in killers if k.startswith(TABLES)]
        print(f"{m.id} ({secs:.0f}s): {len(other)} non-table, {len(table)} table")
        for k in other:
            print(f"    {k}")
        if table:
            print(f"    + {len(table)} table rows")
        if not other:
            survivors.append(m.id)
        sys.stdout.flush()
    print(f"{len(chosen) - len(survivors)}/{len(chosen)} killed by a non-table test")
    if survivors:
        print("not killed outside the tables: " + ", ".join(survivors))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
