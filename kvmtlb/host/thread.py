"""The host: its thread of operations (scheduling, MMU-notifier zaps, page migration, dirty
logging) as the host kernel runs them, calling into KVM.

The host kernel's side is fixed here; KVM's side is the policy's (`KvmPolicy.HOST_STEPS`): each
call into KVM is a `HostTask` whose steps are policy methods with labels, as a vCPU's are, so a
variant may override, reorder or split them. `HostThread.phase` holds either a KVM label or one
of the kernel's own (`mm:...`); `HostThread.ret` is the task's return stack.

- `zap GPA` (an MMU-notifier invalidation: munmap, MADV_DONTNEED, reclaim): the primary MMU calls
  KVM's invalidate_range_start (kvm_main.c @ v6.18: invalidate_begin, zap the SPTE,
  kvm_flush_remote_tlbs), then clears its own mapping and frees the page (`mm:unmap`: the page
  may be freed before invalidate_range_end, as a full mmu_gather batch is), then calls KVM's
  invalidate_range_end (`mm:end`). A fault meanwhile retries (mmu_invalidate_retry_gfn) and then
  maps a fresh page.
- `remap GPA -> HPA` (page migration): the same window; `mm:migrate` copies the page to HPA and
  maps it in the primary MMU, and from then on the old page is no longer the guest's; after
  invalidate_range_end, KVM maps the new page (`mm:map`: kvm_set_spte_gfn).
- `wrprotect GPA` (dirty logging switched on, or the log cleared: an ioctl): KVM write-protects
  the frame and flushes (kvm_mmu_slot_remove_write_access); when the ioctl returns, userspace
  relies on the log.
- `flush_remote_tlbs`: kvm_flush_remote_tlbs alone.
- `clear_dirty_log GPA` (KVM_CLEAR_DIRTY_LOG for the frame, under dirty logging): if its dirty
  bit was set, KVM clears it, write-protects the frame and flushes (kvm_flush_remote_tlbs_memslot);
  when the ioctl returns, userspace relies on the log again.
- `age GPA` (page aging by reclaim: the MMU notifier's clear_young): KVM ages the frame's SPTEs
  without a TLB flush; without EPT A/D bits that is access tracking (the SPTE is made not
  present, and restored by the next fault).
- `delete_memslot GPA` (KVM_SET_USER_MEMORY_REGION deleting the frame's slot; kvm/memslot.py):
  KVM marks the slot invalid, waits for faults that read it, zaps all roots
  (kvm_arch_flush_shadow_memslot: kvm_mmu_zap_all_fast) and deletes it; when the ioctl returns,
  userspace frees the memory (`mm:free`: from then on no guest access may reach the old page)
  and creates the slot again on new memory (`mm:recreate`).
- `move_memslot GPA -> GPA` (KVM_SET_USER_MEMORY_REGION with a new guest_phys_addr;
  kvm/memslot.py): the same steps up to the fast zap, then KVM moves the slot (same host page,
  new GPA); when the ioctl returns, the old GPA has no memory (`moved`: from then on no guest
  access may reach a host page through it: host-isolation).
- `zap_all_fast`: kvm_mmu_zap_all_fast (a memslot deletion's, or a write of the nx_huge_pages
  parameter's): every EPT/NPT root becomes obsolete, every vCPU must drop it before it enters
  again, and the obsolete roots are zapped.

What the checker holds the host to (model/properties.py): a host page the kernel freed, or whose
data it migrated away, is `released`, and no guest access may reach it from that step on
(host-isolation: a use after free); a frame whose write protection for dirty logging returned to
userspace is `protected` (dirty-logging). Both are set by the kernel's steps, never by KVM's, so a
policy cannot switch them off; a policy whose flush comes too late (after the free) is caught.

`recover_nx` is one run of KVM's NX huge page recovery worker (kvm_recover_nx_huge_pages:
kvm/hugepage.py), which zaps the tables of the regions an exec fault split, yielding mmu_lock
between them.

`spawn OP` starts OP (`flush_remote_tlbs`; `zap_gfn_range GPA GPA`: kvm_zap_gfn_range over two
frames, yielding mmu_lock between them; `recover_nx`, as the worker thread it is in KVM) in a
second host thread, `host2`, and goes on with the next op at once: the two threads' steps
interleave (two remote flushes at once; a notifier zap while a zap has yielded mmu_lock). `host2`
runs one spawned op at a time; a second `spawn` waits for it. Its kicks carry their own bit
(HOST2_SENDER), so each thread waits for its own.

`set_sregs vcpuN ...` is KVM_SET_SREGS from the vCPU's own thread (kvm/sregs.py): it waits until
the vCPU is loaded and where KVM_RUN can return to userspace (in guest mode, or at the top of the
run loop), kicks it out of guest mode, makes the ioctl and re-enters KVM_RUN, in one step.

`preempt` and `resume` schedule a vCPU out and in (vcpu_put, vcpu_load); a vCPU preempted by a
host op stays out (`held`) until a `resume`.

With a second VM (kvm/vm.py): `create vcpuN [on pcpuM]` creates a vCPU of it during the run and
loads it (a vCPU a `create` names is `held` from the start: it does not exist yet); `destroy vmN`
waits until that VM's guest threads are done, schedules its loaded vCPUs out and destroys the VM
(kvm_destroy_vm); its vCPUs stay `held` for good.
"""

from __future__ import annotations

from typing import NamedTuple

from kvmtlb.host.ops import (
    AgeOp,
    ClearDirtyLogOp,
    CollapseOp,
    CreateVcpuOp,
    DeleteMemslotOp,
    DestroyVmOp,
    FlushRemoteOp,
    HostOp,
    MoveMemslotOp,
    PreemptOp,
    RecoverNxOp,
    RemapOp,
    ResumeOp,
    SetSregsOp,
    SpawnOp,
    WrprotectOp,
    ZapAllFastOp,
    ZapGfnRangeOp,
    ZapOp,
)
from kvmtlb.hw.cpu import CR4_PGE, CR4_SMEP
from kvmtlb.kvm.context import Step, World, vm_exit_event
from kvmtlb.kvm.kvm_main import HOST2_SENDER, HOST_SENDER
from kvmtlb.kvm.policy import KvmPolicy
from kvmtlb.kvm.state import HostTask, Vcpu
from kvmtlb.kvm.x86 import EXIT_EXTERNAL_INTERRUPT

DONE = "mm:done"  # the continuation that ends the op (a KVM task returning to it ends it at once)


class HostThread(NamedTuple):
    op: int = 0  # index of the op it runs or will run next
    phase: str = ""  # progress within that op: "" before it starts, a KVM label or an mm: label
    ret: tuple[str, ...] = ()  # the KVM task's return stack
    frame: tuple[int, ...] = ()  # the KVM task's locals across its steps
    page: int = -1  # the host page the op takes away from the guest (zap, remap)
    released: tuple[int, ...] = ()  # host pages freed or migrated away, sorted
    protected: int = 0  # guest frames (by index) whose write protection returned to userspace
    held: int = 0  # vCPUs a host op preempted and no resume has brought back
    home: tuple[int, ...] = ()  # the pCPU each vCPU runs on when the scheduler picks it
    # The second host thread (`host2`): the `spawn` op (its index) whose op it runs, -1 when
    # idle, and its KVM task's label, return stack and locals.
    bg_op: int = -1
    bg_phase: str = ""
    bg_ret: tuple[str, ...] = ()
    bg_frame: tuple[int, ...] = ()
    # [schedule]: the moves each vCPU has left, and the vCPUs the scheduler put and has not
    # loaded again (neither the host program nor time-sharing loads them)
    moves: tuple[int, ...] = ()
    parked: int = 0
    # guest frames (by index) whose memslot a move_memslot moved away, once the ioctl returned
    moved: int = 0


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
    if isinstance(op, SpawnOp):
        return ["step"] if h.bg_op < 0 else []
    if isinstance(op, SetSregsOp):
        v = Vcpu(*w.vcpus[op.vcpu])
        return ["step"] if v.loaded and v.pc in KVM_RUN_RETURNS else []
    if isinstance(op, CreateVcpuOp):
        target = op.pcpu if op.pcpu >= 0 else h.home[op.vcpu]
        occupant = w.pcpus[target][1]
        return ["step"] if occupant < 0 or preemptible(pol, w.vcpus[occupant]) else []
    if isinstance(op, DestroyVmOp):
        for u, n in zip(op.vcpus, op.ops, strict=True):
            g = w.guests[u]
            if g.op < n or g.inbox or g.handler:  # its vCPU thread still runs guest code
                return []
            if Vcpu(*w.vcpus[u]).loaded and not preemptible(pol, w.vcpus[u]):
                return []
        return ["step"]
    if h.phase in pol.HOST_STEPS:
        return ["step"] if pol.host_step_enabled(w, h.phase, h.frame) else []
    if h.phase == "" and isinstance(op, ZapOp | RemapOp | ZapGfnRangeOp | RecoverNxOp):
        return ["step"] if pol.host_step_enabled(w, _first_label(op), ()) else []  # KVM's first
    return ["step"]


def host2_enabled(w: World, pol: KvmPolicy, program: tuple[HostOp, ...]) -> bool:
    """Whether the second host thread (a `spawn`ed op) may step now."""
    h: HostThread = w.host
    if h.bg_op < 0:
        return False
    if h.bg_phase == "":
        return pol.host_step_enabled(w, _spawned_label(program, h.bg_op), (), HOST2_SENDER)
    return pol.host_step_enabled(w, h.bg_phase, h.bg_frame, HOST2_SENDER)


def _first_label(op: HostOp) -> str:
    """The KVM label a host op that starts by taking a lock calls first."""
    if isinstance(op, ZapGfnRangeOp):
        return "kvm_zap_gfn_range"
    if isinstance(op, RecoverNxOp):
        return "kvm_recover_nx_huge_pages"
    if isinstance(op, FlushRemoteOp):
        return "kvm_flush_remote_tlbs"
    return "kvm_mmu_notifier_invalidate_range_start"


def _spawned_label(program: tuple[HostOp, ...], index: int) -> str:
    op = program[index]
    assert isinstance(op, SpawnOp)
    return _first_label(op.op)


def host2_step(k: Step, pol: KvmPolicy, program: tuple[HostOp, ...]) -> None:
    """One step of the second host thread: the spawned op's KVM task (kvm_flush_remote_tlbs, or
    kvm_zap_gfn_range over its two frames), with its own kick bit."""
    h: HostThread = k.host
    spawn = program[h.bg_op]
    assert isinstance(spawn, SpawnOp)
    inner = spawn.op
    gpa, hpa = (inner.first, inner.second) if isinstance(inner, ZapGfnRangeOp) else (-1, -1)
    if h.bg_phase == "":
        label = _spawned_label(program, h.bg_op)
        task = HostTask(label, (), (DONE,), gpa, hpa, sender=HOST2_SENDER)
    else:
        task = HostTask(h.bg_phase, h.bg_frame, h.bg_ret, gpa, hpa, sender=HOST2_SENDER)
    pol.host_step(k, task)
    h = k.host
    if task.pc == DONE:
        k.host = h._replace(bg_op=-1, bg_phase="", bg_ret=(), bg_frame=())
    else:
        k.host = h._replace(bg_phase=task.pc, bg_ret=task.ret, bg_frame=task.frame)


def host2_describe(w: World, program: tuple[HostOp, ...]) -> str:
    h: HostThread = w.host
    spawn = program[h.bg_op]
    assert isinstance(spawn, SpawnOp)
    return spawn.op.describe() + (f" [{h.bg_phase}]" if h.bg_phase else "")


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
    if isinstance(op, CreateVcpuOp):
        target = op.pcpu if op.pcpu >= 0 else h.home[op.vcpu]
        vcpu = k.vcpus[op.vcpu]
        pol.kvm_vm_ioctl_create_vcpu(k, vcpu)
        occupant = k.pcpus[target].running
        if occupant >= 0:
            preempt(k, pol, occupant)
        pol.vcpu_load(k, vcpu, target)
        home = list(h.home)
        home[op.vcpu] = target
        k.host = h._replace(op=h.op + 1, held=h.held & ~(1 << op.vcpu), home=tuple(home))
        return
    if isinstance(op, DestroyVmOp):
        held = h.held
        for u in op.vcpus:
            if k.vcpus[u].loaded:
                preempt(k, pol, u)
            held |= 1 << u
        pol.kvm_destroy_vm(k, op.vm)
        k.host = h._replace(op=h.op + 1, held=held)
        return
    if isinstance(op, SetSregsOp):
        set_sregs(k, pol, op)
        k.host = h._replace(op=h.op + 1)
        return
    if isinstance(op, SpawnOp):
        k.note(f"host2 starts {op.op.describe()}", "it runs concurrently with the next host ops")
        k.host = h._replace(op=h.op + 1, bg_op=h.op, bg_phase="", bg_ret=(), bg_frame=())
        return
    k.host = _op_step(k, pol, op, h)


def preempt(k: Step, pol: KvmPolicy, v: int) -> None:
    """Schedule vCPU `v` out: in guest mode a host-interrupt VM exit first, then vcpu_put."""
    vcpu = k.vcpus[v]
    if vcpu.pc == "guest":
        event = vm_exit_event(k.config.vmx, "host interrupt")
        k.hw(vcpu.cpu, event)
        pol.vcpu_exit(k, vcpu, EXIT_EXTERNAL_INTERRUPT, (), cause="host interrupt")
    pol.vcpu_put(k, vcpu)


# Where KVM_RUN can return to userspace: in guest mode (a signal kicks the vCPU out: an exit
# for an external interrupt, then vcpu_run's pending-work check) or at the top of the run loop.
KVM_RUN_RETURNS = ("guest", "vcpu_enter_guest")


def set_sregs(k: Step, pol: KvmPolicy, op: SetSregsOp) -> None:
    """`set_sregs`: the vCPU's thread leaves KVM_RUN (a signal: in guest mode, an exit for an
    external interrupt), makes the KVM_SET_SREGS ioctl on the same pCPU, and calls KVM_RUN
    again (vcpu_load). The vCPU's native reference takes the new registers
    (`NativeMachine.load_state`: a change leaves it with nothing cached)."""
    vcpu = k.vcpus[op.vcpu]
    cfg = k.config
    cpu = vcpu.cpu
    if vcpu.pc == "guest":
        k.hw(cpu, vm_exit_event(cfg.vmx, "signal"))
        pol.vcpu_exit(k, vcpu, EXIT_EXTERNAL_INTERRUPT, (), cause="signal to the vCPU thread")
    k.note(f"KVM_RUN returns to userspace on vcpu{op.vcpu}'s thread")
    pol.vcpu_put(k, vcpu, preempted=False)
    old_cr3 = pol.kvm_read_cr3(k, vcpu)
    old_cr4 = pol.kvm_read_cr4(k, vcpu)
    cr3 = cfg.roots[cfg.root_names.index(op.root)] | max(op.pcid, 0) if op.root else old_cr3
    cr4 = _bit(_bit(old_cr4, CR4_PGE, op.pge), CR4_SMEP, op.smep)
    pol.kvm_arch_vcpu_ioctl_set_sregs(k, vcpu, cpu, cr3, cr4)
    # the guest's view: the same registers, written into its native processor's own values
    regs = k.native.cpus[op.vcpu].regs
    native_cr4 = _bit(_bit(regs.cr4, CR4_PGE, op.pge), CR4_SMEP, op.smep)
    k.native = k.native.load_state(op.vcpu, cr3 if op.root else regs.cr3, native_cr4)
    k.note(f"vcpu{op.vcpu}'s thread calls KVM_RUN again")
    pol.vcpu_load(k, vcpu, cpu)


def _bit(value: int, bit: int, setting: int) -> int:
    if setting < 0:
        return value
    return value | bit if setting else value & ~bit


def _op_step(k: Step, pol: KvmPolicy, op: HostOp, h: HostThread) -> HostThread:
    """One step of a zap, remap, wrprotect, flush_remote_tlbs or zap_all_fast: a step of KVM's
    task, or one of the host kernel's own."""
    if h.phase in pol.HOST_STEPS:
        return _kvm_step(k, pol, op, h)
    if h.phase == "":
        if isinstance(op, ZapOp | RemapOp):
            page = k.kvm.backing[k.config.gpa_index(op.gpa)]
            then = "mm:unmap" if isinstance(op, ZapOp) else "mm:migrate"
            return _call(
                k, pol, op, h._replace(page=page), "kvm_mmu_notifier_invalidate_range_start", then
            )
        if isinstance(op, WrprotectOp):
            return _call(k, pol, op, h, "kvm_mmu_slot_remove_write_access", DONE)
        if isinstance(op, CollapseOp):
            # dirty logging is off for the region's memslot from the ioctl's start: userspace
            # no longer relies on the log
            h = h._replace(protected=h.protected & ~_slot_bits(k, op.gpa))
            return _call(k, pol, op, h, "kvm_mmu_slot_apply_flags:log_off", DONE)
        if isinstance(op, ZapAllFastOp):
            return _call(k, pol, op, h, "kvm_mmu_zap_all_fast", DONE)
        if isinstance(op, AgeOp):
            return _call(k, pol, op, h, "kvm_mmu_notifier_clear_young", DONE)
        if isinstance(op, ClearDirtyLogOp):
            # userspace relies on the log again only when the ioctl returns (`page` remembers
            # whether the frame was protected before)
            bit = 1 << k.config.gpa_index(op.gpa)
            h = h._replace(protected=h.protected & ~bit, page=int(bool(h.protected & bit)))
            return _call(k, pol, op, h, "kvm_clear_dirty_log_protect", DONE)
        if isinstance(op, ZapGfnRangeOp):
            return _call(k, pol, op, h, "kvm_zap_gfn_range", DONE)
        if isinstance(op, RecoverNxOp):
            return _call(k, pol, op, h, "kvm_recover_nx_huge_pages", DONE)
        if isinstance(op, DeleteMemslotOp):
            page = k.kvm.backing[k.config.gpa_index(op.gpa)]
            return _call(k, pol, op, h._replace(page=page), "kvm_set_memslot", "mm:free")
        if isinstance(op, MoveMemslotOp):
            return _call(k, pol, op, h, "kvm_set_memslot", DONE)
        assert isinstance(op, FlushRemoteOp)
        return _call(k, pol, op, h, "kvm_flush_remote_tlbs", DONE)
    if isinstance(op, DeleteMemslotOp):
        i = k.config.gpa_index(op.gpa)
        if h.phase == "mm:free":
            k.kvm.set_backing(i, -1)
            k.note(f"userspace unmaps the deleted slot's memory at {op.gpa:#x}")
            return _release(k, h, "mm:recreate", "is freed")
        assert h.phase == "mm:recreate", f"host op {op!r} in phase {h.phase!r}"
        pol.kvm_create_memslot(k, op.gpa)
        return h._replace(op=h.op + 1, phase="", ret=(), frame=(), page=-1)
    assert isinstance(op, ZapOp | RemapOp), f"host op {op!r} in phase {h.phase!r}"
    i = k.config.gpa_index(op.gpa)
    if h.phase == "mm:unmap":
        k.kvm.set_backing(i, -1)
        k.note(f"the primary MMU drops its mapping of {op.gpa:#x}")
        return _release(k, h, "mm:end", "is freed")
    if h.phase == "mm:migrate":
        assert isinstance(op, RemapOp)
        k.kvm.set_backing(i, op.hpa)
        k.note(f"migrate_pages: copy to {op.hpa:#x}; the primary MMU maps it")
        return _release(k, h, "mm:end", "no longer holds the guest's data")
    if h.phase == "mm:end":
        then = "mm:map" if isinstance(op, RemapOp) else DONE
        return _call(k, pol, op, h, "kvm_mmu_notifier_invalidate_range_end", then)
    if h.phase == "mm:map":
        return _call(k, pol, op, h, "kvm_set_spte_gfn", DONE)
    raise AssertionError(f"host op {op!r} in phase {h.phase!r}")


def _call(k: Step, pol: KvmPolicy, op: HostOp, h: HostThread, label: str, then: str) -> HostThread:
    """The kernel calls into KVM at `label`, to continue at `then`; KVM's first step runs now."""
    return _kvm_step(k, pol, op, h._replace(phase=label, ret=(*h.ret, then), frame=()))


def _kvm_step(k: Step, pol: KvmPolicy, op: HostOp, h: HostThread) -> HostThread:
    if isinstance(op, ZapGfnRangeOp):
        gpa, hpa = op.first, op.second
    elif isinstance(op, MoveMemslotOp):
        gpa, hpa = op.gpa, op.to  # the task's second operand: the destination GPA
    else:
        gpa, hpa = getattr(op, "gpa", -1), getattr(op, "hpa", -1)
    task = HostTask(h.phase, h.frame, h.ret, gpa, hpa)
    pol.host_step(k, task)
    h = h._replace(phase=task.pc, frame=task.frame, ret=task.ret)
    if h.phase != DONE:
        return h
    if isinstance(op, WrprotectOp):
        h = h._replace(protected=h.protected | _slot_bits(k, gpa))
    elif isinstance(op, ClearDirtyLogOp) and h.page == 1:
        h = h._replace(protected=h.protected | 1 << k.config.gpa_index(gpa))
    elif isinstance(op, MoveMemslotOp):
        # the ioctl returned: userspace treats the old GPA as having no memory
        k.note(f"the move returned: GPA {gpa:#x} has no memory", "no access may reach a page")
        h = h._replace(moved=h.moved | 1 << k.config.gpa_index(gpa))
    return h._replace(op=h.op + 1, phase="", ret=(), frame=(), page=-1)


def _slot_bits(k: Step, gpa: int) -> int:
    """The guest frames (by index) of the memslot holding `gpa`: the frame itself, or every
    frame of its 2 MiB region (the region is one memslot)."""
    n = k.config.huge_region(gpa) if k.config.huge else -1
    if n < 0:
        return 1 << k.config.gpa_index(gpa)
    base = k.config.huge[n][0]
    return sum(1 << i for i, g in enumerate(k.config.gpas) if base <= g < base + (1 << 21))


def _release(k: Step, h: HostThread, then: str, what: str) -> HostThread:
    """The kernel lets go of the op's old page: from now on no guest access may reach it."""
    if h.page < 0:
        return h._replace(phase=then)
    k.note(f"the old host page {h.page:#x} {what}", "no guest access may reach it from now on")
    return h._replace(phase=then, released=tuple(sorted({*h.released, h.page})))


__all__ = [
    "DONE",
    "HOST_SENDER",
    "HostThread",
    "describe",
    "host2_describe",
    "host2_enabled",
    "host2_step",
    "host_actions",
    "host_step",
    "preempt",
]
