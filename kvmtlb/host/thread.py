"""The host: its thread of operations (scheduling, MMU-notifier zaps, page migration, dirty
logging) and the remote TLB flush each of them ends with.

Models the host kernel and KVM's host-side paths at the granularity of their race windows:

- `zap GPA` follows the MMU notifier (virt/kvm/kvm_main.c @ v6.18): invalidate_range_start
  (kvm_mmu_invalidate_begin, then KVM zaps the SPTE: kvm_unmap_gfn_range), kvm_flush_remote_tlbs,
  the primary MMU drops its mapping, invalidate_range_end (kvm_mmu_invalidate_end), and the old
  page is freed. A fault meanwhile retries (mmu_invalidate_retry_gfn) and then maps a fresh page.
- `remap GPA -> HPA` is page migration: the same window, the copy to the new page, then the SPTE
  of the new page.
- `wrprotect GPA` is dirty logging: the SPTE loses write permission, then the remote flush.
- `flush_remote_tlbs` is kvm_flush_remote_tlbs alone.

kvm_flush_remote_tlbs is taken in its steps (kvm/kvm_main.py): set the request on every vCPU, read
each vCPU's mode, send the kicks, wait for them. A host change counts as complete when its flush
returns: from then on the checker requires every guest access to the GPA to use its current page
and rights (ept-coherence: `changed` and `protected`).

`preempt` and `resume` schedule a vCPU out and in (vcpu_put, vcpu_load); a vCPU preempted by a
host op stays out (`held`) until a `resume`.
"""

from __future__ import annotations

from typing import NamedTuple

from kvmtlb.host.ops import (
    FlushRemoteOp,
    HostOp,
    PreemptOp,
    RemapOp,
    ResumeOp,
    WrprotectOp,
    ZapOp,
)
from kvmtlb.hw.svm import SvmExitEvent
from kvmtlb.hw.vmx import VmExitEvent
from kvmtlb.kvm.context import Step, World
from kvmtlb.kvm.policy import KvmPolicy
from kvmtlb.kvm.requests import KVM_REQ_TLB_FLUSH
from kvmtlb.kvm.state import Vcpu
from kvmtlb.kvm.x86 import EXIT_EXTERNAL_INTERRUPT

HOST_SENDER = 1  # the host thread's bit in Pcpu.kicks


class HostThread(NamedTuple):
    op: int = 0  # index of the op it runs or will run next
    phase: str = ""  # progress within that op ("" before it starts)
    frame: tuple[int, ...] = ()  # locals across the op's steps
    changed: int = 0  # guest frames (by index) whose zap or migration has completed
    protected: int = 0  # guest frames whose write protection has completed
    held: int = 0  # vCPUs a host op preempted and no resume has brought back
    home: tuple[int, ...] = ()  # the pCPU each vCPU runs on when the scheduler picks it


def preemptible(pol: KvmPolicy, vcpu_state: tuple[object, ...]) -> bool:
    pc = vcpu_state[1]
    return pc not in pol.NOT_PREEMPTIBLE


def host_actions(w: World, pol: KvmPolicy, program: tuple[HostOp, ...]) -> list[str]:
    """The host's next step, if it is enabled now ([] when finished or blocked)."""
    h: HostThread = w.host
    if h.op >= len(program):
        return []
    op = program[h.op]
    if isinstance(op, PreemptOp):
        v = Vcpu(*w.vcpus[op.vcpu])
        return ["step"] if v.loaded and preemptible(pol, w.vcpus[op.vcpu]) else []
    if isinstance(op, ResumeOp):
        v = Vcpu(*w.vcpus[op.vcpu])
        if v.loaded:
            return []
        target = op.pcpu if op.pcpu >= 0 else h.home[op.vcpu]
        occupant = w.pcpus[target][1]
        if occupant >= 0 and not preemptible(pol, w.vcpus[occupant]):
            return []
        return ["step"]
    if h.phase == "flush:wait":
        mask = h.frame[0]
        pending = any(w.pcpus[p][2] & HOST_SENDER for p in range(len(w.pcpus)) if mask >> p & 1)
        return [] if pending else ["step"]
    return ["step"]


def describe(w: World, program: tuple[HostOp, ...]) -> str:
    h: HostThread = w.host
    op = program[h.op]
    return op.describe() + (f" [{h.phase}]" if h.phase else "")


def host_step(k: Step, pol: KvmPolicy, program: tuple[HostOp, ...]) -> None:
    h: HostThread = k.host
    op = program[h.op]
    if isinstance(op, PreemptOp):
        preempt(k, pol, op.vcpu)
        k.host = h._replace(op=h.op + 1, held=h.held | (1 << op.vcpu))
        return
    if isinstance(op, ResumeOp):
        target = op.pcpu if op.pcpu >= 0 else h.home[op.vcpu]
        occupant = k.pcpus[target].running
        if occupant >= 0:
            preempt(k, pol, occupant)
        pol.vcpu_load(k, k.vcpus[op.vcpu], target)
        home = list(h.home)
        home[op.vcpu] = target
        k.host = h._replace(op=h.op + 1, held=h.held & ~(1 << op.vcpu), home=tuple(home))
        return
    if h.phase.startswith("flush:"):
        _flush_step(k, pol, op, h)
        return
    k.host = _mm_step(k, pol, op, h)


def preempt(k: Step, pol: KvmPolicy, v: int) -> None:
    """Schedule vCPU `v` out: in guest mode a host-interrupt VM exit first, then vcpu_put."""
    vcpu = k.vcpus[v]
    if vcpu.pc == "guest":
        event = VmExitEvent("host interrupt") if k.config.vmx else SvmExitEvent("host interrupt")
        k.hw(vcpu.cpu, event)
        pol.vcpu_exit(k, vcpu, EXIT_EXTERNAL_INTERRUPT, (), cause="host interrupt")
    pol.vcpu_put(k, vcpu)


def _mm_step(k: Step, pol: KvmPolicy, op: HostOp, h: HostThread) -> HostThread:
    if isinstance(op, ZapOp | RemapOp):
        i = k.config.gpa_index(op.gpa)
        if h.phase == "":
            pol.kvm_mmu_invalidate_begin(k)
            pol.kvm_unmap_gfn_range(k, op.gpa)
            return h._replace(phase="flush:req", frame=())
        if h.phase == "after-flush":
            if isinstance(op, RemapOp):
                k.kvm.set_backing(i, op.hpa)
                k.note(f"migrate_pages: copy to {op.hpa:#x}; the primary MMU maps it")
            else:
                k.kvm.set_backing(i, -1)
                k.note(f"the primary MMU drops its mapping of {op.gpa:#x}")
            return h._replace(phase="end")
        if h.phase == "end":
            old = h.frame[0] if h.frame else -1
            pol.kvm_mmu_invalidate_end(k)
            if old >= 0:
                k.note(f"free the old host page {old:#x}")
            if isinstance(op, RemapOp):
                return h._replace(phase="map", frame=())
            return _op_done(h)
        if h.phase == "map":
            assert isinstance(op, RemapOp)
            pol.kvm_tdp_mmu_map_page(k, op.gpa, op.hpa)
            return _op_done(h)
    if isinstance(op, WrprotectOp):
        if pol.kvm_tdp_mmu_write_protect(k, op.gpa):
            return h._replace(phase="flush:req", frame=())
        k.note("no remote TLB flush after write protection")
        protected = h.protected | 1 << k.config.gpa_index(op.gpa)
        return _op_done(h._replace(protected=protected))
    if isinstance(op, FlushRemoteOp):
        return h._replace(phase="flush:req", frame=())
    raise AssertionError(f"host op {op!r} in phase {h.phase!r}")


def _op_done(h: HostThread) -> HostThread:
    return h._replace(op=h.op + 1, phase="", frame=())


def _flush_step(k: Step, pol: KvmPolicy, op: HostOp, h: HostThread) -> None:
    """kvm_main.c:kvm_flush_remote_tlbs @ v6.18, one step at a time."""
    if h.phase == "flush:req":
        # kvm_make_vcpu_request for vCPU i: first its request bit (one step), then its mode
        i, mask, old = h.frame if h.frame else (0, 0, -1)
        if i == 0 and isinstance(op, ZapOp | RemapOp):
            old = _old_page(k, op.gpa)
        pol.kvm_make_vcpu_request(k, k.vcpus[i], KVM_REQ_TLB_FLUSH)
        k.host = h._replace(phase="flush:ipi", frame=(i, mask, old))
        return
    if h.phase == "flush:ipi":
        i, mask, old = h.frame
        target = pol.kvm_request_needs_ipi(k, k.vcpus[i], KVM_REQ_TLB_FLUSH)
        if target >= 0:
            mask |= 1 << target
        nxt = "flush:req" if i + 1 < len(k.vcpus) else "flush:kick"
        k.host = h._replace(phase=nxt, frame=(i + 1, mask, old))
        return
    if h.phase == "flush:kick":
        _, mask, old = h.frame
        pol.kvm_kick_many_cpus(k, mask, HOST_SENDER, wait=True)
        k.host = h._replace(phase="flush:wait", frame=(mask, old))
        return
    # flush:wait, with every kick taken: kvm_flush_remote_tlbs returns
    mask, old = h.frame
    k.note("kvm_flush_remote_tlbs returns")
    changed, protected = h.changed, h.protected
    if isinstance(op, ZapOp | RemapOp):
        changed |= 1 << k.config.gpa_index(op.gpa)
        k.host = h._replace(phase="after-flush", frame=(old,), changed=changed)
    elif isinstance(op, WrprotectOp):
        protected |= 1 << k.config.gpa_index(op.gpa)
        k.host = _op_done(h._replace(protected=protected))
    else:
        k.host = _op_done(h)


def _old_page(k: Step, gpa: int) -> int:
    return k.kvm.backing[k.config.gpa_index(gpa)]
