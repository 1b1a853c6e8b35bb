"""Write issue 12's PV-flush protocol benchmark for any N:
python bench/gen_pvflush.py N [OUT] [--schedule K].

vCPU0 reads a page, remaps it and PV-flushes the other N-1 vCPUs (`flush_tlb ... others`), each
of which reads the page twice. vCPU v's home is pCPU v mod 2; vCPUs sharing a home time-share it
(the scheduler may switch them at any preemptible step). The host migrates vCPU1 to pCPU0 and
back. Intel, EPT, VPID. kvm-6.18 is expected safe; kvm-5.7 and kvm-5.8 break guest-transparency
(record_steal_time clears the preempted byte only after its flush: the overwrite that
7e2175ebd695 closed, as in the built-in pv-flush-preempted-target), as do the two CVE-2019-3016
variants of the bug zoo.

With --schedule K the host script is replaced by SPIN's scheduler: `[schedule] moves = K`, so
any vCPU may be put and loaded again on any pCPU, at most K times each.

Without OUT the scenario is written to standard output.
"""

from __future__ import annotations

import sys
from pathlib import Path


def scenario(n: int, schedule: int = 0) -> str:
    if n < 2:
        raise ValueError("N must be at least 2 (one sender, one target)")
    pcpus = min(n, 2)
    placement = "\n".join(f'vcpu{v} = "pcpu{v % pcpus}"' for v in range(n))
    targets = "".join(f'vcpu{v} = """\nread 0x1000\nread 0x1000\n"""\n' for v in range(1, n))
    moved = (
        f"the scheduler may put any vCPU and load it on any pCPU, {schedule} time(s) each"
        if schedule
        else "the host migrates vCPU1 to pCPU0 and back"
    )
    doc = (
        f"Issue 12's PV-flush protocol, N = {n}: vCPU0 remaps a page and PV-flushes {n - 1} "
        f"target(s) that read it twice; vCPU v's home is pCPU v mod 2; {moved}."
    )
    host = (
        f"[schedule]\nmoves = {schedule}\n"
        if schedule
        else 'host = """\npreempt vcpu1\nresume vcpu1 on pcpu0\n'
        'preempt vcpu1\nresume vcpu1 on pcpu1\n"""\n'
    )
    return f'''name = "pvflush-{n}"
doc = "{doc}"

[config]
vendor = "intel"
tdp = true
vpid = true
pv_tlb_flush = true
vcpus = {n}
pcpus = {pcpus}

[placement]
{placement}

[guest]
"0x1000" = "0x10000 w"

[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"

[threads]
vcpu0 = """
read 0x1000
map 0x1000 -> 0x11000 w
flush_tlb 0x1000 others
"""
{targets}{host}
[expect]
"kvm-6.18" = "safe"
"kvm-5.8" = "violation:guest-transparency"  # record_steal_time's late clear (7e2175ebd695)
"kvm-5.7" = "violation:guest-transparency"  # record_steal_time's late clear (7e2175ebd695)
"bug-cve-2019-3016-nonatomic-clear" = "violation:guest-transparency"
"bug-cve-2019-3016-double-preempted" = "violation:guest-transparency"
'''


def main(argv: list[str]) -> int:
    schedule = 0
    if "--schedule" in argv:
        i = argv.index("--schedule")
        if i + 1 >= len(argv) or not argv[i + 1].isdigit() or not 1 <= int(argv[i + 1]) <= 4:
            print("gen_pvflush: --schedule takes a number from 1 to 4", file=sys.stderr)
            return 2
        schedule = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    if not 1 <= len(argv) <= 2 or not argv[0].isdigit():
        print("usage: python bench/gen_pvflush.py N [OUT.toml] [--schedule K]", file=sys.stderr)
        return 2
    try:
        text = scenario(int(argv[0]), schedule)
    except ValueError as e:
        print(f"gen_pvflush: {e}", file=sys.stderr)
        return 2
    if len(argv) == 2:
        Path(argv[1]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
