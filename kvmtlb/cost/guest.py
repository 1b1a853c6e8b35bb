"""The guest kernel of a cost run: its page-table writes, TLB flushes and shootdowns.

The same behaviour as the checker's guest thread (kvmtlb.guest.thread), taken atomically since a
cost run explores no interleavings:

- a local flush is what arch/x86/mm/tlb.c issues for its scope: INVLPG for a page, a CR3 reload
  for the mm, and for everything INVPCID all-context with PCIDs (native_flush_tlb_global),
  otherwise a CR4.PGE toggle (two CR4 writes). Each runs on the vCPU's processor; when KVM
  intercepts it, the VM exit hands it to the policy's emulation and the vCPU re-enters;
- a shootdown (flush_tlb_mm_range) flushes locally, then, for every other vCPU, follows
  arch/x86/kernel/kvm.c:kvm_flush_tlb_multi @ v6.18 when the PV TLB flush is on: a target whose
  steal-time byte says PREEMPTED gets FLUSH_TLB set instead of an IPI (KVM flushes it before it
  runs again: the policy's record_steal_time); every other target gets an IPI, whose handler runs
  the same local flush on the target, at once if it runs, else when it next enters the guest
  (the sender waits: counted as `guest.ipis-to-preempted`).

IPIs are delivered without VM exits (posted interrupts), as in the checker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmtlb.guest.ops import FLUSH_MM, FLUSH_PAGE
from kvmtlb.hw.cpu import CR3_NOFLUSH, CR4_PCIDE, CR4_PGE
from kvmtlb.hw.outcomes import VmExit
from kvmtlb.hw.paging import make_pte
from kvmtlb.hw.x86 import Invlpg, Invpcid, MovToCr3, MovToCr4
from kvmtlb.kvm.state import KVM_VCPU_FLUSH_TLB, KVM_VCPU_PREEMPTED
from kvmtlb.kvm.x86 import EXIT_CR3_WRITE, EXIT_CR4_WRITE, EXIT_INVLPG

if TYPE_CHECKING:
    from kvmtlb.cost.simulate import Simulation


def insn(sim: Simulation, v: int, event: Any, reason: int, frame: tuple[int, ...]) -> None:
    """One guest instruction on vCPU `v`'s processor; if KVM intercepts it, KVM's handling."""
    k = sim.k
    vcpu = k.vcpus[v]
    out = k.hw(vcpu.cpu, event)
    if isinstance(out, VmExit):
        sim.policy.vcpu_exit(k, vcpu, reason, frame)
        sim.run_to_guest(v)


def local_flush(sim: Simulation, v: int, scope: int, gva: int) -> None:
    """arch/x86/mm/tlb.c @ v6.18: flush_tlb_func's local flush of `scope` on vCPU `v`."""
    k = sim.k
    if scope == FLUSH_PAGE:
        insn(sim, v, Invlpg(gva), EXIT_INVLPG, (gva,))
        return
    regs = sim.cm.cpus[k.vcpus[v].cpu].regs
    if scope == FLUSH_MM:
        cr3 = regs.cr3 & ~CR3_NOFLUSH
        insn(sim, v, MovToCr3(cr3), EXIT_CR3_WRITE, (cr3,))
        return
    if regs.cr4 & CR4_PCIDE and k.config.caps.invpcid:
        insn(sim, v, Invpcid(2), 0, ())
        return
    for _ in range(2):  # native_flush_tlb_global: toggle CR4.PGE twice
        cr4 = sim.cm.cpus[k.vcpus[v].cpu].regs.cr4 ^ CR4_PGE
        insn(sim, v, MovToCr4(cr4), EXIT_CR4_WRITE, (cr4,))


def write_pte(sim: Simulation, gva: int, gpa: int) -> None:
    """The guest maps linear page `gva` to frame `gpa` (writable, supervisor, not global)."""
    cfg = sim.k.config
    slot = cfg.layout.slot(cfg.guest_root, gva)
    sim.k.write_slot(slot, make_pte(gpa), f"guest PTE {gva:#x} = {gpa:#x}")
    sim.n["guest.pte-changes"] += 1


def shootdown(sim: Simulation, v: int, scope: int, gva: int = 0) -> None:
    """flush_tlb_mm_range / flush_tlb_all from vCPU `v`: the local flush, then every other vCPU
    (kvm_flush_tlb_multi with the PV TLB flush, native_flush_tlb_multi without)."""
    k = sim.k
    n = sim.n
    n["guest.shootdowns"] += 1
    local_flush(sim, v, scope, gva)
    pv = k.config.pv_tlb_flush
    for t, target in enumerate(k.vcpus):
        if t == v:
            continue
        if pv and target.st_byte & KVM_VCPU_PREEMPTED:
            target.st_byte |= KVM_VCPU_FLUSH_TLB  # the cmpxchg succeeds: nothing else runs
            n["guest.pv-flushes"] += 1
            continue
        n["guest.ipis"] += 1
        if target.loaded and target.pc == "guest":
            local_flush(sim, t, scope, gva)
        else:
            n["guest.ipis-to-preempted"] += 1
            sim.inbox[t].append((scope, gva))


def take_ipis(sim: Simulation, v: int) -> None:
    """vCPU `v` is back in guest mode: its IPI handler runs the flushes sent meanwhile."""
    inbox = sim.inbox[v]
    while inbox:
        scope, gva = inbox.pop(0)
        local_flush(sim, v, scope, gva)


__all__ = ["insn", "local_flush", "shootdown", "take_ipis", "write_pte"]
