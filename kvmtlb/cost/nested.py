"""The guest hypervisor (L1) of a nested cost run: it runs an L2 on every vCPU.

A nested workload (`nested = true`) runs on a shadow-paging L0 (`tdp = false`), as the checker's
nested VMX and nested SVM do (kvm/nested_vmx.py, kvm/nested_svm.py): L1's vmcs12 / vmcb12 has
EPT / NPT off, L2's page table (address space 1) maps L2's pages to L1's frames, and KVM shadows
it as it shadows L1's (address space 0). With `tdp = true` (Intel) it runs nested EPT, as the
checker's [ept12] scenarios do (kvm/nested_ept.py): L0 has EPT (EPT01 maps L1's frames), vmcs12
enables EPT with L1's EPT12 (L2 GPA -> L1 GPA, the identity on the workload's frames), L2's page
table maps L2's pages to L2 GPAs, and KVM runs L2 on its shadow EPT02 (L2 GPA -> host page,
simulate.py builds it as a VM that has been running: every frame's SPTE present).

L1's instructions are the checker's L1 ops (guest/l1.py) without the native reference: each runs
on the vCPU's processor, where it exits to KVM, whose handler (the policy's
`handle_nested_exit`) emulates it; then the vCPU re-enters (the policy's entry path).

- boot: VMXON, then VMLAUNCH of a vmcs12 whose GUEST_CR3 is L2's table and whose VPID is the
  vCPU's vpid12 (vCPU + 1; 0 with `vmcs12_vpid = false`); on AMD VMRUN of a vmcb12 with ASID
  vCPU + 1 and TLB_CONTROL 0;
- `l2_exit`: L2's VMCALL (VMMCALL), which KVM reflects to L1 (a nested VM exit), then L1's
  VMRESUME (VMRUN);
- `l1_flush`: the same, with L1 flushing L2's whole context in between: INVVPID single-context
  of vpid12 (all-context when vmcs12 has no VPID: INVVPID of VPID 0 fails); on AMD the VMRUN
  carries TLB_CONTROL 3 (flush this guest's ASID);
- `l1_flush_addr`: L1 invalidates one page of L2's: INVVPID individual-address (all-context
  without vpid12); on AMD INVLPGA of the page in L2's ASID;
- `l1_invept`, `l1_invept_all` (nested EPT): L1 runs INVEPT single-context of its EPTP12, or
  all-context (the policy's handle_invept: v6.18 and v5.8 free guest_mmu's EPT02 root, so the
  resume loads it again, syncs and flushes EPTP02; v5.7 does nothing, its every nested
  transition syncs and flushes anyway);
- `l1_ept_wrprotect` (nested EPT): L1 write-protects the EPT12 leaf of an L2 GPA in use (L1
  logging L2's dirty pages): its store exits while KVM's EPT02 page of that table is synced
  (KVM unsyncs it), then INVEPT single-context on this vCPU and, by L1's IPI, on every other
  one (an L2 exit, INVEPT, VMRESUME; a preempted vCPU's once it runs L2 again). L2's next
  write to the page is an EPT02 fault that KVM reflects to L1 (EPT12 denies it); L1 makes the
  leaf writable again and resumes L2 (`l1_ept_violation`).

L1 itself makes no accesses of the workload: between the exit and the resume it runs only the
instructions above. Counters: `l1.exits` (nested VM exits), `l1.invvpid`, `l1.invlpga`,
`l1.tlb-control`, `l1.invept` (L1's flushes), `l1.vmresumes` (VMRESUME / VMRUN after an exit);
simulate.py counts KVM's EPT02 work by the policy's own calls (`nested.ept02-*`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmtlb.cost.host import CostError
from kvmtlb.guest.l1 import l1_step
from kvmtlb.guest.l1_ops import EptMapOp
from kvmtlb.hw.cpu import Regs
from kvmtlb.hw.paging import E_W, ept_rights, pte_addr
from kvmtlb.hw.svm import Invlpga, SvmExitEvent, Vmrun
from kvmtlb.hw.vmcb import Vmcb
from kvmtlb.hw.vmx import Invept, Invvpid, VmEntry, VmExitEvent, Vmxon, make_eptp
from kvmtlb.kvm.nested_vmx import (
    NESTED_INVEPT,
    NESTED_INVLPGA,
    NESTED_INVVPID,
    NESTED_VMCALL,
    NESTED_VMLAUNCH,
    NESTED_VMRESUME,
    NESTED_VMRUN,
    NESTED_VMXON,
)
from kvmtlb.kvm.x86 import EXIT_NESTED

if TYPE_CHECKING:
    from kvmtlb.cost.simulate import Simulation

L1_SPACE = 0  # address space (page table) of L1
L2_SPACE = 1  # and of L2
VMCB12_IDENT = 0x7000  # the address of L1's vmcb12 (guest/l1.py's VMCS12_IDENT)
TLB_CONTROL_FLUSH_ASID = 3  # vmcb12 TLB_CONTROL: flush this guest's ASID
INVEPT_TYPES = {"l1_invept": 1, "l1_invept_all": 2}  # INVEPT single-context, all-context
L1_INVEPT_IPI = -1  # an inbox entry (guest.take_ipis): L1's remote flush, INVEPT of EPTP12


def vpid12(sim: Simulation, v: int) -> int:
    """The VPID L1 gives vCPU `v`'s L2 in its vmcs12 (0: VPID off in vmcs12)."""
    return v + 1 if sim.config.vmcs12_vpid else 0


def l1_insn(sim: Simulation, v: int, event: Any, frame: tuple[int, int, int, int]) -> None:
    """An instruction of L1 (or L2's exit to L1) on vCPU `v`'s processor: it exits to KVM, whose
    handler emulates it; the vCPU then runs KVM's entry path back into the guest (L1 or L2, as
    the handler left it)."""
    k = sim.k
    vcpu = k.vcpus[v]
    k.hw(vcpu.cpu, event, "L1" if frame[0] != NESTED_VMCALL else "L2")
    sim.policy.vcpu_exit(k, vcpu, EXIT_NESTED, frame)
    sim.run_to_guest(v)


def _vmrun(sim: Simulation, v: int, tlb_control: int) -> None:
    regs = sim.cm.cpus[sim.k.vcpus[v].cpu].regs
    cr3 = sim.k.config.roots[L2_SPACE]
    vmcb12 = Vmcb(
        ident=VMCB12_IDENT,
        asid=v + 1,
        tlb_control=tlb_control,
        np_enable=False,
        guest=Regs(regs.cr0, cr3, regs.cr4),
    )
    l1_insn(sim, v, Vmrun(vmcb12), (NESTED_VMRUN, L2_SPACE, v + 1, tlb_control))


def enter_l2(sim: Simulation, v: int) -> None:
    """At boot, L1 on vCPU `v` (in the guest) starts its L2: VMXON and VMLAUNCH, or VMRUN."""
    if sim.config.vendor == "intel":
        l1_insn(sim, v, Vmxon(), (NESTED_VMXON, 0, 0, 0))
        l1_insn(sim, v, VmEntry(launch=True), (NESTED_VMLAUNCH, L2_SPACE, vpid12(sim, v), 0))
    else:
        _vmrun(sim, v, 0)


def nested_exit(sim: Simulation, v: int, kind: str, gva: int, gpa: int = 0) -> None:
    """L2 on vCPU `v` exits to L1; L1 flushes as `kind` says (`gva`: the L2 page of
    l1_flush_addr, `gpa`: the L2 GPA of l1_ept_wrprotect), then resumes L2."""
    n = sim.n
    intel = sim.config.vendor == "intel"
    n["l1.exits"] += 1
    l1_insn(
        sim,
        v,
        VmExitEvent("VMCALL") if intel else SvmExitEvent("VMMCALL"),
        (NESTED_VMCALL, 0, 0, 0),
    )
    tlb_control = 0
    if kind == "l1_flush" and not intel:
        tlb_control = TLB_CONTROL_FLUSH_ASID
        n["l1.tlb-control"] += 1
    elif kind == "l1_flush_addr" and not intel:
        n["l1.invlpga"] += 1
        l1_insn(sim, v, Invlpga(gva, v + 1), (NESTED_INVLPGA, gva, v + 1, 0))
    elif kind in ("l1_flush", "l1_flush_addr"):
        vpid = vpid12(sim, v)
        kind_no = (0 if kind == "l1_flush_addr" else 1) if vpid else 2
        addr = gva if kind_no == 0 else 0
        n["l1.invvpid"] += 1
        l1_insn(sim, v, Invvpid(kind_no, vpid, addr), (NESTED_INVVPID, kind_no, vpid, addr))
    elif kind in INVEPT_TYPES:
        kind_no = INVEPT_TYPES[kind]
        eptp = make_eptp(sim.k.config.ept12_root) if kind_no == 1 else 0
        n["l1.invept"] += 1
        l1_insn(sim, v, Invept(kind_no, eptp), (NESTED_INVEPT, kind_no, 0, 0))
    elif kind == "l1_ept_wrprotect":
        _l1_ept_wrprotect(sim, v, gpa)
    n["l1.vmresumes"] += 1
    if intel:
        l1_insn(sim, v, VmEntry(launch=False), (NESTED_VMRESUME, -1, -1, 0))
    else:
        _vmrun(sim, v, tlb_control)


def ept12_store(sim: Simulation, v: int, l2gpa: int, rights: str) -> None:
    """L1 on vCPU `v` stores its EPT12 leaf of `l2gpa` (the same L1 GPA, new `rights`): the
    checker's L1 op (guest/l1.py: the store exits while KVM's EPT02 page of that table is
    synced, KVM unsyncs it, L1 retries)."""
    k = sim.k
    l1gpa = pte_addr(_ept12(sim, l2gpa))
    for _ in range(2):
        if l1_step(k, sim.policy, v, EptMapOp(l2gpa, l1gpa, rights)):
            return
        sim.n["l1.ept12-write-exits"] += 1
        sim.run_to_guest(v)
    raise CostError(f"L1's store to EPT12 of {l2gpa:#x} keeps exiting")


def _ept12(sim: Simulation, l2gpa: int) -> int:
    cfg = sim.k.config
    return int(sim.cm.memory.values[cfg.layout.slot(cfg.ept12_root, l2gpa)])


def _l1_ept_wrprotect(sim: Simulation, v: int, l2gpa: int) -> None:
    """L1 write-protects the EPT12 leaf of L2 GPA `l2gpa` (L1 logging L2's dirty pages), then
    invalidates EPTP12 (INVEPT single-context); nothing if the leaf is read-only already."""
    if not ept_rights(_ept12(sim, l2gpa)) & E_W:
        return
    n = sim.n
    n["l1.ept-wrprotects"] += 1
    ept12_store(sim, v, l2gpa, "rx")
    eptp = make_eptp(sim.k.config.ept12_root)
    n["l1.invept"] += 1
    l1_insn(sim, v, Invept(1, eptp), (NESTED_INVEPT, 1, 0, 0))
    # INVEPT is local: L1's remote flush (its kvm_flush_remote_tlbs) makes every other vCPU's
    # L1 run it too, at once where L2 runs, else when the vCPU is back in L2
    for t, target in enumerate(sim.k.vcpus):
        if t == v:
            continue
        n["l1.invept-ipis"] += 1
        if target.loaded and target.pc == "guest" and target.guest_mode:
            nested_exit(sim, t, "l1_invept", 0)
        else:
            sim.inbox[t].append((L1_INVEPT_IPI, 0))


def l1_ept_violation(sim: Simulation, v: int, l2gpa: int) -> None:
    """KVM reflected an EPT violation of L2 (a write to an L2 GPA EPT12 makes read-only) to L1
    (nested_ept_inject_page_fault): L1 marks the page dirty and makes its EPT12 leaf writable
    again, then resumes L2, which retries the write. The reflection is modelled as L2's exit to
    L1 (an exit and an entry of the vCPU's processor, as a VMCALL's), then L1's store, then
    VMRESUME: the same for every policy."""
    n = sim.n
    n["l1.ept-violations"] += 1
    n["l1.exits"] += 1
    l1_insn(sim, v, VmExitEvent("EPT violation"), (NESTED_VMCALL, 0, 0, 0))
    if not ept_rights(_ept12(sim, l2gpa)) & E_W:
        ept12_store(sim, v, l2gpa, "rwx")
    n["l1.vmresumes"] += 1
    l1_insn(sim, v, VmEntry(launch=False), (NESTED_VMRESUME, -1, -1, 0))


__all__ = [
    "L1_INVEPT_IPI",
    "L1_SPACE",
    "L2_SPACE",
    "enter_l2",
    "ept12_store",
    "l1_ept_violation",
    "l1_insn",
    "nested_exit",
    "vpid12",
]
