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

- a context switch (switch_mm_irqs_off) loads the other address space's page table with MOV CR3;
  with PCIDs each address space has its own PCID (its index) and the switch sets the no-flush bit
  unless the address space's TLB generation moved since this vCPU last ran it (a PTE change it did
  not flush, being elsewhere: arch/x86/mm/tlb.c:choose_new_asid's need_flush); the IPI handler of
  a page flush for another address space than the target's flushes nothing (flush_tlb_func: the
  loaded mm is not the flushed one).

With shadow paging (tdp = false) the guest's first store to a page-table page whose shadow page
is synced exits (EXIT_PT_WRITE: the guest table is write-protected) and KVM unsyncs the shadow
page (mmu_try_to_unsync_pages); later stores go through. INVLPG, INVPCID, MOV to CR3 and CR4
writes exit (KVM intercepts them without EPT/NPT); the guest's CR3 is KVM's vcpu->arch.cr3, since
the hardware CR3 holds the shadow root.

IPIs are delivered without VM exits (posted interrupts), as in the checker. In a nested workload
(cost/nested.py) the guest kernel is L2's: its page table is address space 1, its shootdowns are
IPIs (no PV flush: L0's steal-time flag serves L1), delivered to L2 without exits to L0 or L1
(nested posted interrupts), and an IPI to a vCPU running L1 waits until it is back in L2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmtlb.cost import nested
from kvmtlb.cost.schedule import space_of
from kvmtlb.guest.ops import FLUSH_MM, FLUSH_PAGE
from kvmtlb.hw.cpu import CR0_DEFAULT, CR0_WP, CR3_NOFLUSH, CR4_PCIDE, CR4_PGE
from kvmtlb.hw.outcomes import VmExit
from kvmtlb.hw.paging import make_pte
from kvmtlb.hw.x86 import Invlpg, Invpcid, MovToCr0, MovToCr3, MovToCr4
from kvmtlb.kvm.context import vm_exit_event
from kvmtlb.kvm.state import KVM_VCPU_FLUSH_TLB, KVM_VCPU_PREEMPTED
from kvmtlb.kvm.x86 import (
    EXIT_CR0_WRITE,
    EXIT_CR3_WRITE,
    EXIT_CR4_WRITE,
    EXIT_INVLPG,
    EXIT_INVPCID,
    EXIT_NAMES,
    EXIT_PT_WRITE,
)

if TYPE_CHECKING:
    from kvmtlb.cost.simulate import Simulation


def insn(sim: Simulation, v: int, event: Any, reason: int, frame: tuple[int, ...]) -> None:
    """One guest instruction on vCPU `v`'s processor; if KVM intercepts it, KVM's handling."""
    k = sim.k
    vcpu = k.vcpus[v]
    out = k.hw(vcpu.cpu, event)
    if isinstance(out, VmExit):
        sim.n[f"kvm.exits.{EXIT_KEYS[reason]}"] += 1
        sim.policy.vcpu_exit(k, vcpu, reason, frame)
        sim.run_to_guest(v)


# Counter names of the guest's intercepted instructions (kvm.exits.NAME).
EXIT_KEYS = {EXIT_CR3_WRITE: "mov-cr3", EXIT_CR4_WRITE: "mov-cr4", EXIT_INVLPG: "invlpg"}
EXIT_KEYS[EXIT_CR0_WRITE] = "mov-cr0"
EXIT_KEYS[EXIT_INVPCID] = "invpcid"
EXIT_KEYS[EXIT_PT_WRITE] = "pt-write"
assert set(EXIT_KEYS) <= set(EXIT_NAMES)


def guest_cr3(sim: Simulation, v: int) -> int:
    """The CR3 the guest sees: the hardware's with TDP; with shadow paging vcpu->arch.cr3 (the
    hardware holds the shadow root)."""
    k = sim.k
    if k.config.tdp:
        return int(sim.cm.cpus[k.vcpus[v].cpu].regs.cr3)
    return k.vcpus[v].cr3


def local_flush(sim: Simulation, v: int, scope: int, gva: int) -> None:
    """arch/x86/mm/tlb.c @ v6.18: flush_tlb_func's local flush of `scope` on vCPU `v`."""
    k = sim.k
    if scope == FLUSH_PAGE:
        insn(sim, v, Invlpg(gva), EXIT_INVLPG, (gva,))
        return
    regs = sim.cm.cpus[k.vcpus[v].cpu].regs
    if scope == FLUSH_MM:
        cr3 = guest_cr3(sim, v) & ~CR3_NOFLUSH
        insn(sim, v, MovToCr3(cr3), EXIT_CR3_WRITE, (cr3,))
        return
    if regs.cr4 & CR4_PCIDE and k.config.caps.invpcid:
        insn(sim, v, Invpcid(2), EXIT_INVPCID, (2, 0, 0))
        return
    for _ in range(2):  # native_flush_tlb_global: toggle CR4.PGE twice
        cr4 = sim.cm.cpus[k.vcpus[v].cpu].regs.cr4 ^ CR4_PGE
        insn(sim, v, MovToCr4(cr4), EXIT_CR4_WRITE, (cr4,))


def write_pte(sim: Simulation, v: int, gva: int, gpa: int) -> None:
    """vCPU `v` maps linear page `gva` to frame `gpa` (writable, supervisor, not global) in the
    page table of `gva`'s address space. With shadow paging a store to a table whose shadow page
    is synced exits first (the table is write-protected); KVM unsyncs it and the store is
    retried."""
    k = sim.k
    cfg = k.config
    root = space_of(gva)
    sim.gen[root] += 1
    if not cfg.tdp:
        for _ in range(2):
            if sim.policy.sp_unsync(k, root, gva):
                break
            vcpu = k.vcpus[v]
            k.hw(
                vcpu.cpu,
                vm_exit_event(cfg.vmx, "#PF"),
                "store to a write-protected guest page table",
            )
            sim.n["kvm.exits.pt-write"] += 1
            sim.policy.vcpu_exit(k, vcpu, EXIT_PT_WRITE, (root, gva))
            sim.run_to_guest(v)
    slot = cfg.layout.slot(cfg.roots[root], gva)
    k.write_slot(slot, make_pte(gpa), f"guest PTE {gva:#x} = {gpa:#x}")
    sim.n["guest.pte-changes"] += 1


def switch_mm(sim: Simulation, v: int, space: int) -> None:
    """A context switch on vCPU `v` to address space `space` (switch_mm_irqs_off): MOV CR3 to its
    page table, with its PCID and the no-flush bit when PCIDs are on and nothing changed there
    since this vCPU last ran it."""
    k = sim.k
    cfg = k.config
    old = sim.space[v]
    sim.seen[v][old] = sim.gen[old]
    pcide = bool(sim.cm.cpus[k.vcpus[v].cpu].regs.cr4 & CR4_PCIDE)
    pcid = space if pcide else 0
    noflush = pcide and sim.seen[v].get(space) == sim.gen[space]
    cr3 = cfg.roots[space] | pcid | (CR3_NOFLUSH if noflush else 0)
    sim.space[v] = space
    sim.n["guest.cr3-switches"] += 1
    if noflush:
        sim.n["guest.cr3-switches-noflush"] += 1
    insn(sim, v, MovToCr3(cr3), EXIT_CR3_WRITE, (cr3,))


def wp_window(sim: Simulation, v: int) -> None:
    """A kernel W^X window on vCPU `v` (grsecurity's pax_open_kernel / pax_close_kernel): MOV to
    CR0 clearing WP, then setting it again. Whether each exits, and what KVM does then, is the
    policy's (vmx_l1_guest_owned_cr0_bits, kvm_post_set_cr0)."""
    sim.n["guest.cr0-wp-windows"] += 1
    for value in (CR0_DEFAULT & ~CR0_WP, CR0_DEFAULT):
        insn(sim, v, MovToCr0(value), EXIT_CR0_WRITE, (value,))


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
        if target.loaded and target.pc == "guest" and in_workload_guest(sim, t):
            handle_ipi(sim, t, scope, gva)
        else:
            n["guest.ipis-to-preempted"] += 1
            sim.inbox[t].append((scope, gva))


def in_workload_guest(sim: Simulation, v: int) -> bool:
    """Whether vCPU `v` runs the workload's guest kernel: in a nested workload L2's, which IPIs
    of L2's shootdowns wait for while L1 runs."""
    return not sim.config.nested or sim.k.vcpus[v].guest_mode


def take_ipis(sim: Simulation, v: int) -> None:
    """vCPU `v` is back in guest mode: its IPI handler runs the flushes sent meanwhile (in a
    nested workload once it is back in L2)."""
    if not in_workload_guest(sim, v):
        return
    inbox = sim.inbox[v]
    while inbox:
        scope, gva = inbox.pop(0)
        handle_ipi(sim, v, scope, gva)


def handle_ipi(sim: Simulation, v: int, scope: int, gva: int) -> None:
    """flush_tlb_func on vCPU `v`: a page flush of an address space it is not in flushes nothing
    (the switch back catches up, switch_mm)."""
    if scope == nested.L1_INVEPT_IPI:  # L1's remote flush of EPTP12 (cost/nested.py)
        nested.nested_exit(sim, v, "l1_invept", 0)
        return
    if scope == FLUSH_PAGE and space_of(gva) != sim.space[v]:
        return
    local_flush(sim, v, scope, gva)


__all__ = [
    "guest_cr3",
    "handle_ipi",
    "insn",
    "local_flush",
    "shootdown",
    "switch_mm",
    "take_ipis",
    "write_pte",
]
