"""The explorer's two non-property verdicts, each produced by a scenario (docs/checker.md):

- deadlock: a state where no step is enabled but a thread has work left. The host preempts vCPU1
  and never resumes it while vCPU0 shoots it down without the PV flush: vCPU0 waits for an
  acknowledgement that vCPU1 can never send;
- livelock (verdict "deadlock", detail "livelock: ..."): no state is stuck, but no interleaving
  lets every thread finish. With pCPUs that never take an IPI, KVM's remote flush waits for
  ever while the vCPUs keep running and exiting.
"""

from __future__ import annotations

from pathlib import Path

from kvmtlb.check.explorer import explore
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.versions import Kvm618
from kvmtlb.model.scenario import load
from kvmtlb.model.system import build

SCENARIOS = Path(__file__).parent.parent / "kvmtlb" / "scenarios"


class KicksNeverTaken(Kvm618):
    """The pCPUs never take the IPIs: a waiting sender is never released."""

    name = "kicks-never-taken"

    def ack_kicks(self, k: Step, cpu: int) -> None:
        pass


NEVER_RESUMED = """
name = "never-resumed"
doc = "vCPU1 is preempted for good while vCPU0 shoots it down with an IPI."

[config]
vendor = "intel"
pv_tlb_flush = false

[guest]
"0x1000" = "0x10000 w"

[host]
"0x10000" = "0x80000 rwx"
"0x12000" = "0x82000 rwx"

[threads]
vcpu0 = \"\"\"
map 0x1000 -> 0x12000 w
flush_tlb 0x1000 others
\"\"\"
vcpu1 = \"\"\"
read 0x1000
\"\"\"
host = \"\"\"
preempt vcpu1
\"\"\"
"""


def test_a_shootdown_of_a_vcpu_never_resumed_deadlocks(tmp_path: Path) -> None:
    path = tmp_path / "never-resumed.toml"
    path.write_text(NEVER_RESUMED)
    r = explore(build(load(path), Kvm618()))
    assert r.verdict == "deadlock", (r.verdict, r.detail)
    assert r.detail.startswith("no step is enabled"), r.detail


def test_ipis_never_taken_livelock() -> None:
    r = explore(build(load(SCENARIOS / "flush-remote-tlbs.toml"), KicksNeverTaken()))
    assert r.verdict == "deadlock", (r.verdict, r.detail)
    assert r.detail.startswith("livelock"), r.detail
