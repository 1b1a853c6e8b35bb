"""The native reference of a nested scenario: L1 is the hypervisor, on the hardware model.

Guest-transparency for L2 asks whether every outcome of an L2 access is one that L2 could see
if L1 ran on a real VMX processor, given L1's VMX operations and L2's own invalidations. The
hardware model implements the SDM's rules for one level of virtualization (VPID tags, VM entry
and exit with and without VPID, INVVPID of each type), so the reference is a hardware `Machine`
whose processor i is vCPU i: L1 in VMX root operation (after its VMXON) or outside VMX, L2 in
VMX non-root operation under L1's vmcs12 (its VPID, GUEST_CR3 = L2's page table, EPT off, or
with nested EPT on, EPTP = L1's EPT12: L2's accesses end at L1 GPAs and INVEPT is the SDM's). L1's
and L2's "physical" addresses are L1's GPAs (`guest_physical` walk contexts, the page tables
read through the layout's static backing), as KVM's guest sees them.

The same reference checks L1's own accesses while L1 runs (VMX root operation: VPID 0). For
nested SVM it is an AMD machine: L1 in host mode (ASID 0), L2 in guest mode under L1's vmcb12
(its ASID and TLB_CONTROL; nested paging off, or with nested NPT on, nCR3 = L1's NPT12: L2's
accesses end at L1 GPAs), INVLPGA of an ASID from L1.
Unlike the non-nested reference (model/native.py, on the independent oracle), this one shares
the hardware model's rules with the machine KVM drives: a wrong VPID rule would be wrong on
both sides. It is what the issue asks for ("the hardware model already implements the SDM for
one level"); an oracle of VMX itself is future work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvmtlb.hw.cpu import CR0_DEFAULT, VMX_OFF, Capabilities, Cpu, Regs
from kvmtlb.hw.layout import Format, Layout, Memory
from kvmtlb.hw.machine import Machine, MachineConfig
from kvmtlb.hw.svm import AmdArch
from kvmtlb.hw.tags import AmdTags, IntelEptTags, IntelLinearTags
from kvmtlb.hw.universe import Universe
from kvmtlb.hw.vmcb import SVM_HOST, SvmCapabilities, SvmCpu
from kvmtlb.hw.vmx import CAP_ALL
from kvmtlb.hw.walk import WalkContext


class NativeVmxCpu(Cpu):
    """A processor of the reference: its walks are of guest-physical memory."""

    __slots__ = ()

    def walk_context(self) -> WalkContext:
        return Cpu.walk_context(self)._replace(guest_physical=True)


class NativeSvmCpu(SvmCpu):
    """An AMD processor of the reference: its walks are of guest-physical memory."""

    __slots__ = ()

    def walk_context(self) -> WalkContext:
        return SvmCpu.walk_context(self)._replace(guest_physical=True)


def nested_native(
    vendor: str,
    layout: Layout,
    memory: Memory,
    roots: Sequence[int],
    pcids: Sequence[int],
    vpid12s: Sequence[int],
    cr4: int,
    nvcpus: int,
    ept12_roots: Sequence[int] = (),
    l2_tables: Sequence[int] = (),
) -> tuple[MachineConfig, Machine]:
    """The reference's configuration and its machine at boot: every vCPU's L1 outside VMX
    operation on the first page table. Its universe holds the entries of VPID 0 (L1, and L2
    with VPID off in vmcs12) and of every vmcs12 VPID the scenario names. `ept12_roots` are L1's
    nested tables: EPT12s on Intel, the NPT12 on AMD (vmcb12's nCR3)."""
    intel = vendor == "intel"
    contexts = [
        WalkContext(
            IntelLinearTags(tag, pcid) if intel else AmdTags(tag, pcid, False),
            root,
            -1,
            Format.EPT if intel else Format.NPT,
            True,
            pge,
            True,
        )
        for tag in sorted({0, *vpid12s})
        for pcid in pcids
        for root in roots
        for pge in (True, False)
    ]
    if ept12_roots and not intel:
        # nested NPT: L2 runs under vmcb12's nCR3 (NPT12, L2 GPA -> L1 GPA); its entries,
        # nested ones included, are tagged by vmcb12's ASID only (APM §15.16); L1 runs in host
        # mode (ASID 0) on its own tables
        contexts = [
            c
            for c in contexts
            if c.root not in l2_tables and isinstance(c.tags, AmdTags) and c.tags.asid == 0
        ]
        contexts += [
            WalkContext(AmdTags(tag, pcid, True), root, ept12_roots[0], Format.NPT, True, pge, True)
            for tag in sorted(vpid12s)
            for pcid in pcids
            for root in l2_tables
            for pge in (True, False)
        ]
    elif ept12_roots:
        # nested EPT: L2 runs under vmcs12's EPTP (an EPT12, L2 GPA -> L1 GPA), its entries
        # tagged by that EPT12's EP4TA; L1 runs outside EPT on its own tables
        contexts = [c for c in contexts if c.root not in l2_tables]
        contexts += [
            WalkContext(IntelEptTags(tag, pcid, e12), root, e12, Format.EPT, True, pge, True)
            for e12 in ept12_roots
            for tag in sorted({0, *vpid12s})
            for pcid in pcids
            for root in l2_tables
            for pge in (True, False)
        ]
    universe = Universe(layout, contexts)
    regs = Regs(CR0_DEFAULT, roots[0], cr4)
    cpus: list[Any]
    if intel:
        config = MachineConfig(universe, Capabilities(CAP_ALL), memo_steps=True)
        cpus = [NativeVmxCpu(VMX_OFF, regs) for _ in range(nvcpus)]
    else:
        # L1 runs with EFER.SVME set; the reference processor has FlushByAsid (TLB_CONTROL 3
        # and 7 are defined) and 16 ASIDs (vmcb12's ASID is 1..15)
        caps = SvmCapabilities(flush_by_asid=True, nasid=16, npt=bool(ept12_roots))
        config = MachineConfig(universe, caps, arch=AmdArch(), memo_steps=True)
        cpus = [NativeSvmCpu(SVM_HOST, regs, None, regs) for _ in range(nvcpus)]
    return config, Machine.boot(config, memory, cpus)


__all__ = ["NativeSvmCpu", "NativeVmxCpu", "nested_native"]
