"""The guest hypervisor (L1) of a nested cost run: it runs an L2 on every vCPU.

A nested workload (`nested = true`) runs on a shadow-paging L0, as the checker's nested VMX and
nested SVM do (kvm/nested_vmx.py, kvm/nested_svm.py): L1's vmcs12 / vmcb12 has EPT / NPT off,
L2's page table (address space 1) maps L2's pages to L1's frames, and KVM shadows it as it
shadows L1's (address space 0). L1's instructions are the checker's L1 ops (guest/l1.py) without
the native reference: each runs on the vCPU's processor, where it exits to KVM, whose handler (the
policy's `handle_nested_exit`) emulates it; then the vCPU re-enters (the policy's entry path).

- boot: VMXON, then VMLAUNCH of a vmcs12 whose GUEST_CR3 is L2's table and whose VPID is the
  vCPU's vpid12 (vCPU + 1; 0 with `vmcs12_vpid = false`); on AMD VMRUN of a vmcb12 with ASID
  vCPU + 1 and TLB_CONTROL 0;
- `l2_exit`: L2's VMCALL (VMMCALL), which KVM reflects to L1 (a nested VM exit), then L1's
  VMRESUME (VMRUN);
- `l1_flush`: the same, with L1 flushing L2's whole context in between: INVVPID single-context
  of vpid12 (all-context when vmcs12 has no VPID: INVVPID of VPID 0 fails); on AMD the VMRUN
  carries TLB_CONTROL 3 (flush this guest's ASID);
- `l1_flush_addr`: L1 invalidates one page of L2's: INVVPID individual-address (all-context
  without vpid12); on AMD INVLPGA of the page in L2's ASID.

L1 itself makes no accesses of the workload: between the exit and the resume it runs only the
instructions above. Counters: `l1.exits` (nested VM exits), `l1.invvpid`, `l1.invlpga`,
`l1.tlb-control` (L1's flushes), `l1.vmresumes` (VMRESUME / VMRUN after an exit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmtlb.hw.cpu import Regs
from kvmtlb.hw.svm import Invlpga, SvmExitEvent, Vmrun
from kvmtlb.hw.vmcb import Vmcb
from kvmtlb.hw.vmx import Invvpid, VmEntry, VmExitEvent, Vmxon
from kvmtlb.kvm.nested_vmx import (
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


def nested_exit(sim: Simulation, v: int, kind: str, gva: int) -> None:
    """L2 on vCPU `v` exits to L1; L1 flushes as `kind` says, then resumes L2."""
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
    n["l1.vmresumes"] += 1
    if intel:
        l1_insn(sim, v, VmEntry(launch=False), (NESTED_VMRESUME, -1, -1, 0))
    else:
        _vmrun(sim, v, tlb_control)


__all__ = ["L1_SPACE", "L2_SPACE", "enter_l2", "l1_insn", "nested_exit", "vpid12"]
