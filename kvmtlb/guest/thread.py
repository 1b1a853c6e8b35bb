"""The guest kernel on each vCPU: its thread of operations, shootdowns, the PV flush, IPIs.

Models what a Linux guest does for a scenario's ops, on the vCPU's processor in guest mode:

- accesses (one successor per outcome the hardware model gives: a translation, a #PF that the
  guest takes, or an EPT violation / #NPF that exits to KVM and is retried);
- page-table writes (a store to the PTE; the page table is shared by all vCPUs). With shadow
  paging and a `[tables]` frame that the vCPU's page table maps writable, the store is a write
  access through that mapping, with one successor per outcome (a stale writable translation lets
  it land without KVM seeing it); else KVM's write protection is modelled as a trap;
- INVLPG, MOV to CR3, MOV to CR4 and INVPCID, each run on the hardware (where KVM intercepts one,
  the VM exit hands it to KVM's emulation) and on the vCPU's native reference;
- `flush_tlb`, the kernel's shootdown (arch/x86/mm/tlb.c:flush_tlb_mm_range): the local flush, then
  for each target either the PV path of arch/x86/kernel/kvm.c:kvm_flush_tlb_multi @ v6.18 (read the
  target's steal-time byte; if it says PREEMPTED, cmpxchg FLUSH_TLB in, and no IPI) or an IPI whose
  handler runs the same local flush on the target; the op completes when every IPI'd target has
  acknowledged. A shootdown counts as done on a PV-flagged target at the cmpxchg: the target's
  native reference is invalidated there. That is flush order "local-first" (Linux before
  4ce94eabac16, v5.13); with "concurrent" (flush_tlb_multi since) the PV checks and IPIs go out
  first and the local flush runs while the targets run theirs;
- `emulated_read`, an access KVM emulates (see kvm/x86.py).

The guest handles IPIs at instruction boundaries (between ops, and while it spins in a shootdown),
never inside an emulated instruction or a CR4.PGE toggle (interrupts are off there).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, NamedTuple

from kvmtlb.guest.l1 import l1_step
from kvmtlb.guest.l1_ops import L1_OPS
from kvmtlb.guest.ops import (
    FLUSH_MM,
    FLUSH_NAMES,
    FLUSH_PAGE,
    AccessOp,
    EmulatedReadOp,
    FlushTlbOp,
    GuestOp,
    InvlpgOp,
    InvpcidOp,
    LinkOp,
    MapOp,
    MovCr3Op,
    SetCr0Op,
    SetCr4Op,
    UnlinkOp,
    UnmapOp,
    link_value,
)
from kvmtlb.hw.addr import ENTRY_NAMES
from kvmtlb.hw.cpu import CR0_DEFAULT, CR0_WP, CR3_NOFLUSH, CR4_PCIDE, CR4_PGE, CR4_SMEP
from kvmtlb.hw.outcomes import Access, EptViolation, NestedPageFault, PageFault, VmExit
from kvmtlb.hw.paging import make_pte
from kvmtlb.hw.walk import ACCESS_KINDS
from kvmtlb.hw.x86 import Invlpg, Invpcid, MovToCr0, MovToCr3, MovToCr4
from kvmtlb.kvm.context import KvmConfig, Step, World, vm_exit_event
from kvmtlb.kvm.policy import KvmPolicy
from kvmtlb.kvm.shadow import self_map_gva
from kvmtlb.kvm.state import KVM_VCPU_FLUSH_TLB, KVM_VCPU_PREEMPTED, Vcpu
from kvmtlb.kvm.x86 import (
    EXIT_CR0_WRITE,
    EXIT_CR3_WRITE,
    EXIT_CR4_WRITE,
    EXIT_EMULATION,
    EXIT_INVLPG,
    EXIT_INVPCID,
    EXIT_PDE_WRITE,
    EXIT_PT_WRITE,
    EXIT_PTE_WRITE,
    EXIT_SHADOW_PF,
    EXIT_TDP_FAULT,
)

# The position of Vcpu.pf_injected in the frozen vCPU tuple.
V_PF_INJECTED = [f.name for f in fields(Vcpu)].index("pf_injected")
V_MMIO_EXIT = [f.name for f in fields(Vcpu)].index("mmio_exit")
MMIO_DONE = -2  # the `access` step that completes an access userspace emulated as MMIO
V_GUEST_MODE = [f.name for f in fields(Vcpu)].index("guest_mode")
V_CR3 = [f.name for f in fields(Vcpu)].index("cr3")

# flush_tlb phases (GuestThread.sub while the op runs)
_LOCAL_1, _LOCAL_2, _TARGETS, _CMPXCHG, _SEND, _WAIT = 1, 2, 3, 4, 5, 6
_LATE_1, _LATE_2 = 7, 8  # the local flush after the IPIs went out (flush order "concurrent")


class GuestThread(NamedTuple):
    """One vCPU's guest thread."""

    op: int = 0  # index of the op it runs or will run next
    sub: int = 0  # progress within that op (0: not started)
    target: int = 0  # flush_tlb: index of the next target to consider
    seen: int = 0  # flush_tlb (PV): the steal-time byte just read from that target
    mask: int = 0  # flush_tlb: the targets to IPI
    awaiting: int = 0  # the targets whose IPI handler has not acknowledged yet
    inbox: tuple[tuple[int, int, int], ...] = ()  # IPIs to handle: (sender, scope, gva)
    handler: tuple[int, ...] = ()  # the IPI being handled: (sender, scope, gva, progress)


def in_guest(w: World, v: int) -> bool:
    return bool(w.vcpus[v][1] == "guest")


def finished(g: GuestThread, program: tuple[GuestOp, ...]) -> bool:
    return g.op >= len(program) and not g.handler and not g.inbox


def store_gva(cfg: KvmConfig, values: Any, cr3: int, op: GuestOp) -> int:
    """The GVA a `map`/`unmap` stores through (kvm/shadow.py:self_map_gva), or -1."""
    if cfg.tdp or not isinstance(op, MapOp | UnmapOp) or op.emulated:
        return -1
    return self_map_gva(cfg, values, cfg.root_index(cr3), cfg.root_names.index(op.root), op.gva)


def guest_actions(
    w: World,
    v: int,
    program: tuple[GuestOp, ...],
    pcpu: int,
    pv: bool,
    cfg: KvmConfig | None = None,
) -> list[tuple[str, tuple[int, ...]]]:
    """The guest steps vCPU `v` may take now (it must be in guest mode on `pcpu`)."""
    g: GuestThread = w.guests[v]
    acts: list[tuple[str, tuple[int, ...]]] = []
    if g.handler:
        return [("ipi", ())]
    in_toggle = g.sub in (_LOCAL_2, _LATE_2)
    # L2's IPIs (KvmConfig.l2_ipis) wait while the target runs L1: L1 delivers them to L2 at
    # its next VM entry
    l2_away = cfg is not None and cfg.l2_ipis and not w.vcpus[v][V_GUEST_MODE]
    if g.inbox and not in_toggle and not l2_away:
        acts.append(("ipi", ()))
    if g.op >= len(program):
        return acts
    op = program[g.op]
    if isinstance(op, AccessOp):
        if w.vcpus[v][V_PF_INJECTED] >= 0:
            return [("access", (-1,))]  # the #PF KVM injected is delivered first
        if w.vcpus[v][V_MMIO_EXIT] >= 0:
            return [("access", (MMIO_DONE,))]  # userspace completed it (KVM_EXIT_MMIO)
        outcomes = w.machine.outcomes(pcpu, op.gva, op.kind)
        acts.extend(("access", (i,)) for i in range(len(outcomes)))
    elif isinstance(op, FlushTlbOp) and g.sub == _WAIT:
        if not g.awaiting:
            acts.append(("op", ()))
    elif cfg is not None and cfg.table_frame and isinstance(op, MapOp | UnmapOp):
        via = store_gva(cfg, w.machine.memory.values, w.vcpus[v][V_CR3], op)
        if w.vcpus[v][V_PF_INJECTED] >= 0:
            acts.append(("store", (-1,)))
        elif via >= 0:
            outcomes = w.machine.outcomes(pcpu, via, "write")
            acts.extend(("store", (i,)) for i in range(len(outcomes)))
        else:
            acts.append(("op", ()))
    else:
        acts.append(("op", ()))
    return acts


def describe(
    w: World, v: int, program: tuple[GuestOp, ...], name: str, args: tuple[int, ...]
) -> str:
    g: GuestThread = w.guests[v]
    if name == "ipi":
        h = g.handler or (g.inbox[0] if g.inbox else ())
        return f"IPI handler from vcpu{h[0]}: flush {FLUSH_NAMES[h[1]]}" if h else "IPI handler"
    op = program[g.op]
    if name == "access" and args == (-1,):
        return f"{op.describe()}: takes the #PF KVM injected"
    if name == "access" and args == (MMIO_DONE,):
        return f"{op.describe()}: completes as MMIO (userspace handled KVM_EXIT_MMIO)"
    return op.describe()


# -- running the guest's instructions ------------------------------------------------------------
def _insn(
    k: Step, pol: KvmPolicy, v: int, event: Any, exit_reason: int, exit_frame: tuple[int, ...]
) -> bool:
    """Run one guest instruction on the vCPU's processor and on its native reference. Returns
    whether it exited to KVM (which then emulates it)."""
    vcpu = k.vcpus[v]
    out = k.hw(vcpu.cpu, event)
    k.native = k.native.step(v, event).machine
    if isinstance(out, VmExit):
        pol.vcpu_exit(k, vcpu, exit_reason, exit_frame)
        return True
    return False


def _guest_regs(k: Step, v: int) -> Any:
    return k.machine.cpus[k.vcpus[v].cpu].regs


def guest_cr3(k: Step, v: int) -> int:
    """The CR3 the guest sees: the hardware's with TDP; with shadow paging KVM's vcpu->arch.cr3
    (the hardware holds the shadow root, and CR3 reads exit)."""
    if k.config.tdp:
        return int(_guest_regs(k, v).cr3)
    return k.vcpus[v].cr3


def _local_flush(k: Step, pol: KvmPolicy, v: int, scope: int, gva: int, step: int) -> bool:
    """One instruction of the local flush of `scope` (step 1 or 2); returns whether another
    instruction follows (the second CR4 write of a PGE toggle)."""
    if scope == FLUSH_PAGE:
        _insn(k, pol, v, Invlpg(gva), EXIT_INVLPG, (gva,))
        return False
    regs = _guest_regs(k, v)
    if scope == FLUSH_MM:
        cr3 = guest_cr3(k, v) & ~CR3_NOFLUSH
        _insn(k, pol, v, MovToCr3(cr3), EXIT_CR3_WRITE, (cr3,))
        return False
    if regs.cr4 & CR4_PCIDE and k.config.caps.invpcid and step == 1:
        _insn(k, pol, v, Invpcid(2), EXIT_INVPCID, (2, 0, 0))
        return False
    value = regs.cr4 ^ CR4_PGE  # native_flush_tlb_global: toggle CR4.PGE twice
    _insn(k, pol, v, MovToCr4(value), EXIT_CR4_WRITE, (value,))
    return step == 1


def guest_step(
    k: Step, pol: KvmPolicy, v: int, program: tuple[GuestOp, ...], name: str, args: tuple[int, ...]
) -> None:
    """Run guest step `name` of vCPU `v` (one of `guest_actions`)."""
    g: GuestThread = k.guests[v]
    if name == "ipi":
        k.guests[v] = _ipi(k, pol, v, g)
        return
    op = program[g.op]
    if isinstance(op, AccessOp):
        k.guests[v] = _access(k, pol, v, g, op, args[0])
    elif name == "store":
        assert isinstance(op, MapOp | UnmapOp)
        k.guests[v] = _store(k, pol, v, g, op, args[0])
    elif isinstance(op, FlushTlbOp):
        k.guests[v] = _flush_tlb(k, pol, v, g, op)
    elif _simple(k, pol, v, op):
        k.guests[v] = g._replace(op=g.op + 1, sub=0)


def _done(g: GuestThread) -> GuestThread:
    return g._replace(op=g.op + 1, sub=0, target=0, seen=0, mask=0)


def _hw_access(k: Step, vcpu: Vcpu, gva: int, kind: str, choice: int, what: str) -> Any:
    """Outcome `choice` of an access on the vCPU's processor (the machine moves on with it)."""
    outcome, succ = k.machine.access(vcpu.cpu, gva, kind)[choice]
    k.machine = succ
    k.sync_control(vcpu.cpu)
    k.note(what, f"pCPU{vcpu.cpu}: {outcome.describe()}")
    return outcome


def _access(
    k: Step, pol: KvmPolicy, v: int, g: GuestThread, op: AccessOp, choice: int
) -> GuestThread:
    vcpu = k.vcpus[v]
    if choice == MMIO_DONE:
        gpa, vcpu.mmio_exit = vcpu.mmio_exit, -1
        k.note(
            f"{op.kind} {op.gva:#x}",
            f"completes as MMIO: no memslot at {gpa:#x}, userspace handled KVM_EXIT_MMIO",
        )
        return _done(g)
    if choice < 0:
        vcpu.pf_injected = -1
        k.note(f"{op.kind} {op.gva:#x}", "the guest takes the #PF KVM injected")
        return _done(g)
    outcome = _hw_access(k, vcpu, op.gva, op.kind, choice, f"{op.kind} {op.gva:#x}")
    if isinstance(outcome, EptViolation | NestedPageFault):
        pol.vcpu_exit(k, vcpu, EXIT_TDP_FAULT, (outcome.gpa, int(op.kind == "write")))
        return g  # retried once KVM has handled the fault
    if isinstance(outcome, PageFault) and not k.config.tdp:
        # with shadow paging every #PF exits (the fault effect above was the VM exit): KVM
        # fixes its shadow table (the access is retried) or injects the fault
        pol.vcpu_exit(k, vcpu, EXIT_SHADOW_PF, (op.gva, ACCESS_KINDS.index(op.kind)))
        return g
    if isinstance(outcome, PageFault):
        k.note("the guest takes the #PF", "the access completes as faulted")
    return _done(g)


def _store(
    k: Step, pol: KvmPolicy, v: int, g: GuestThread, op: MapOp | UnmapOp, choice: int
) -> GuestThread:
    """A PTE store through the guest's own writable mapping of the table's frame: a write
    access on the vCPU's processor. A #PF (KVM write-protects the mappings of a synced table)
    exits, and KVM unsyncs the table (FNAME(fetch)); the store is retried. A translation to the
    table's frame writes the PTE, without KVM seeing it; one to another frame (a stale
    translation) leaves the table as it was."""
    vcpu = k.vcpus[v]
    cfg = k.config
    if choice < 0:
        vcpu.pf_injected = -1
        k.note(op.describe(), "the store takes the #PF KVM injected; the PTE is unchanged")
        return _done(g)
    via = store_gva(cfg, k.machine.memory.values, vcpu.cr3, op)
    outcome = _hw_access(
        k, vcpu, via, "write", choice, f"{op.describe()}: a store through {via:#x}"
    )
    if isinstance(outcome, PageFault):
        pol.vcpu_exit(k, vcpu, EXIT_SHADOW_PF, (via, ACCESS_KINDS.index("write")))
        return g
    root = cfg.root_names.index(op.root)
    assert isinstance(outcome, Access)
    if cfg.frame_of_page(outcome.frame) != cfg.table_frame[root]:
        k.note(f"the store lands in host page {outcome.frame:#x}", "the page table is unchanged")
        return _done(g)
    _write_pte(k, op, root)
    return _done(g)


def _pte_value(op: MapOp | UnmapOp) -> int:
    if isinstance(op, UnmapOp):
        return 0
    return make_pte(
        op.gpa,
        writable="w" in op.flags,
        user="u" in op.flags,
        executable="x" in op.flags,
        glob="g" in op.flags,
        large=op.huge,
    )


def _write_pte(k: Step, op: MapOp | UnmapOp, root: int) -> None:
    """The store itself: the guest PTE of `op.gva` in page table `root` takes its new value
    (for a 2 MiB page, `op.huge`, the PDE of its region)."""
    level = 2 if op.huge else 1
    slot = k.config.layout.slot(k.config.roots[root], op.gva, level)
    where = "" if root == 0 else f" (page table {op.root})"
    entry = "PDE (2 MiB page)" if op.huge else "PTE"
    if isinstance(op, MapOp):
        k.write_slot(
            slot, _pte_value(op), f"guest {entry} {op.gva:#x} = {op.gpa:#x} {op.flags}{where}"
        )
    else:
        k.write_slot(slot, 0, f"guest {entry} {op.gva:#x}: not present{where}")


def _pt_write_traps(k: Step, pol: KvmPolicy, v: int, root: int, gva: int) -> bool:
    """With shadow paging, a store to a guest page table whose shadow page is synced (the table
    is write-protected) exits to KVM instead; the guest retries it. Returns whether it exited."""
    if k.config.tdp or pol.sp_unsync(k, root, gva):
        return False
    vcpu = k.vcpus[v]
    k.hw(
        vcpu.cpu, vm_exit_event(k.config.vmx, "#PF"), "store to a write-protected guest page table"
    )
    pol.vcpu_exit(k, vcpu, EXIT_PT_WRITE, (root, gva))
    return True


def _simple(k: Step, pol: KvmPolicy, v: int, op: GuestOp) -> bool:
    """Run a one-step op; returns False when it must be retried (a store that exited)."""
    cfg = k.config
    if isinstance(op, MapOp | UnmapOp):
        root = cfg.root_names.index(op.root)
        pte = _pte_value(op)
        if op.emulated:
            # KVM's emulator does the store (an instruction it emulates); the page-track
            # notifier follows it (kvm_mmu_track_write)
            vcpu = k.vcpus[v]
            k.hw(vcpu.cpu, vm_exit_event(cfg.vmx, "emulation"))
            pol.vcpu_exit(k, vcpu, EXIT_PTE_WRITE, (root, op.gva, pte))
            return True
        if op.huge and not cfg.tdp:
            # a 2 MiB page's PDE: KVM write-protects every guest table it shadows above the last
            # level (those never go unsync), so the store exits and KVM emulates it, as `link`
            vcpu = k.vcpus[v]
            k.hw(vcpu.cpu, vm_exit_event(cfg.vmx, "#PF"), "store to a write-protected guest PDE")
            pol.vcpu_exit(k, vcpu, EXIT_PDE_WRITE, (root, op.gva, pte, 2))
            return True
        if _pt_write_traps(k, pol, v, root, op.gva):
            return False
        _write_pte(k, op, root)
    elif isinstance(op, LinkOp | UnlinkOp):
        root = cfg.root_names.index(op.root)
        value = link_value(cfg.guest_ptr, cfg.root_names, op)
        if cfg.tdp:
            slot = cfg.layout.slot(cfg.roots[root], op.gva, op.level)
            k.write_slot(slot, value, f"guest {ENTRY_NAMES[op.level]} of {op.gva:#x} = {value:#x}")
        else:
            # an upper-level table is write-protected (only last-level shadow pages go unsync):
            # the store exits and KVM emulates it; the op is done when KVM's handler has run
            vcpu = k.vcpus[v]
            k.hw(
                vcpu.cpu,
                vm_exit_event(cfg.vmx, "#PF"),
                f"store to a write-protected guest {ENTRY_NAMES[op.level]}",
            )
            pol.vcpu_exit(k, vcpu, EXIT_PDE_WRITE, (root, op.gva, value, op.level))
    elif isinstance(op, InvlpgOp):
        _insn(k, pol, v, Invlpg(op.gva), EXIT_INVLPG, (op.gva,))
    elif isinstance(op, MovCr3Op):
        regs = _guest_regs(k, v)
        cur = guest_cr3(k, v)
        pcid = op.pcid if op.pcid >= 0 else (cur & 0xFFF if regs.cr4 & CR4_PCIDE else 0)
        root = cfg.roots[cfg.root_names.index(op.root)] if op.root else cur & ~0xFFF & ~CR3_NOFLUSH
        value = root | pcid | (CR3_NOFLUSH if op.noflush else 0)
        if op.emulated:
            # an instruction KVM emulates (after an MMIO exit, or without unrestricted guest):
            # the CPU exits, KVM's emulator runs the MOV (x86.c:kvm_set_cr3)
            vcpu = k.vcpus[v]
            k.hw(vcpu.cpu, vm_exit_event(cfg.vmx, "emulation"))
            k.native = k.native.step(v, MovToCr3(value)).machine
            pol.vcpu_exit(k, vcpu, EXIT_CR3_WRITE, (value,))
        else:
            _insn(k, pol, v, MovToCr3(value), EXIT_CR3_WRITE, (value,))
    elif isinstance(op, SetCr4Op):
        bit = {"pge": CR4_PGE, "pcide": CR4_PCIDE, "smep": CR4_SMEP}[op.bit]
        cr4 = _guest_regs(k, v).cr4
        value = cr4 | bit if op.value else cr4 & ~bit
        _insn(k, pol, v, MovToCr4(value), EXIT_CR4_WRITE, (value,))
    elif isinstance(op, SetCr0Op):
        value = CR0_DEFAULT | CR0_WP if op.value else CR0_DEFAULT & ~CR0_WP
        _insn(k, pol, v, MovToCr0(value), EXIT_CR0_WRITE, (value,))
    elif isinstance(op, InvpcidOp):
        _insn(
            k, pol, v, Invpcid(op.type, op.pcid, op.gva), EXIT_INVPCID, (op.type, op.pcid, op.gva)
        )
    elif isinstance(op, EmulatedReadOp):
        vcpu = k.vcpus[v]
        exit_event = vm_exit_event(cfg.vmx, "emulation")
        k.hw(vcpu.cpu, exit_event)
        pol.vcpu_exit(k, vcpu, EXIT_EMULATION, (op.gva,))
    elif isinstance(op, L1_OPS):
        return l1_step(k, pol, v, op)
    else:
        raise AssertionError(f"unknown guest op {op!r}")
    return True


def _flush_tlb(k: Step, pol: KvmPolicy, v: int, g: GuestThread, op: FlushTlbOp) -> GuestThread:
    cfg = k.config
    if g.sub == 0 and cfg.flush_order == "concurrent":
        # x86/mm/tlb.c:flush_tlb_multi since 4ce94eabac16: the PV check and the IPIs first,
        # the local flush while the targets run theirs
        return g._replace(
            sub=_TARGETS if cfg.pv_tlb_flush and op.targets else _SEND,
            mask=0 if cfg.pv_tlb_flush else _bits(op.targets),
        )
    if g.sub in (_LATE_1, _LATE_2):
        more = _local_flush(k, pol, v, op.scope, op.gva, 2 if g.sub == _LATE_2 else 1)
        return g._replace(sub=_LATE_2 if more else _WAIT)
    if g.sub in (0, _LOCAL_1, _LOCAL_2):
        step = 2 if g.sub == _LOCAL_2 else 1
        more = _local_flush(k, pol, v, op.scope, op.gva, step)
        if more:
            return g._replace(sub=_LOCAL_2)
        return g._replace(
            # with no target (a single vCPU), kvm_flush_tlb_multi has no byte to read
            sub=_TARGETS if cfg.pv_tlb_flush and op.targets else _SEND,
            mask=0 if cfg.pv_tlb_flush else _bits(op.targets),
        )
    if g.sub == _TARGETS:
        # kvm_flush_tlb_multi: READ_ONCE(st->preempted) of the next target
        t = op.targets[g.target]
        seen = k.vcpus[t].st_byte
        k.note(f"kvm_flush_tlb_multi: read vcpu{t}'s steal-time preempted", _byte(seen))
        if seen & KVM_VCPU_PREEMPTED:
            return g._replace(sub=_CMPXCHG, seen=seen)
        return _next_target(g._replace(mask=g.mask | (1 << t)), op)
    if g.sub == _CMPXCHG:
        t = op.targets[g.target]
        target = k.vcpus[t]
        if target.st_byte == g.seen:
            target.st_byte = g.seen | KVM_VCPU_FLUSH_TLB
            k.note(
                f"kvm_flush_tlb_multi: cmpxchg vcpu{t}'s byte to PREEMPTED | FLUSH_TLB",
                "no IPI: the host flushes before it runs again",
            )
            _native_flush(k, t, op.scope, op.gva)
            return _next_target(g, op)
        k.note(f"kvm_flush_tlb_multi: cmpxchg on vcpu{t} failed", _byte(target.st_byte))
        return _next_target(g._replace(mask=g.mask | (1 << t)), op)
    if g.sub == _SEND:
        for t in op.targets:
            if g.mask & (1 << t):
                k.guests[t] = k.guests[t]._replace(
                    inbox=(*k.guests[t].inbox, (v, op.scope, op.gva))
                )
        sent = ",".join(f"vcpu{t}" for t in op.targets if g.mask & (1 << t)) or "nobody"
        k.note("native_flush_tlb_multi: send IPIs", sent)
        late = cfg.flush_order == "concurrent"
        return g._replace(sub=_LATE_1 if late else _WAIT, awaiting=g.mask)
    # _WAIT, with every IPI acknowledged
    k.note("flush_tlb: every target acknowledged")
    return _done(g)


def _next_target(g: GuestThread, op: FlushTlbOp) -> GuestThread:
    nxt = g.target + 1
    if nxt >= len(op.targets):
        return g._replace(sub=_SEND, target=0, seen=0)
    return g._replace(sub=_TARGETS, target=nxt, seen=0)


def _ipi(k: Step, pol: KvmPolicy, v: int, g: GuestThread) -> GuestThread:
    """The guest's flush IPI handler (flush_tlb_func) on vCPU `v`: the sender's local flush, then
    the acknowledgement."""
    if g.handler:
        sender, scope, gva, progress = g.handler
    else:
        (sender, scope, gva), *rest = g.inbox
        g = g._replace(inbox=tuple(rest))
        progress = 1
    more = _local_flush(k, pol, v, scope, gva, progress)
    if more:
        return g._replace(handler=(sender, scope, gva, 2))
    s = k.guests[sender]
    k.guests[sender] = s._replace(awaiting=s.awaiting & ~(1 << v))
    k.note(f"flush_tlb_func done: acknowledge vcpu{sender}")
    return g._replace(handler=())


def _native_flush(k: Step, t: int, scope: int, gva: int) -> None:
    """The invalidation target `t`'s IPI handler would have run, on its native reference."""
    cpu = k.native.cpus[t]
    if scope == FLUSH_PAGE:
        event: Any = Invlpg(gva)
    elif scope == FLUSH_MM:
        event = MovToCr3(cpu.regs.cr3 & ~CR3_NOFLUSH)
    else:
        event = Invpcid(2)
    k.native = k.native.step(t, event).machine


def _bits(ids: tuple[int, ...]) -> int:
    m = 0
    for i in ids:
        m |= 1 << i
    return m


def _byte(b: int) -> str:
    names = [
        n
        for bit, n in ((KVM_VCPU_PREEMPTED, "PREEMPTED"), (KVM_VCPU_FLUSH_TLB, "FLUSH_TLB"))
        if b & bit
    ]
    return " | ".join(names) if names else "0"
