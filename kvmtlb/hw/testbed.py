"""Small Intel and AMD machine builders for tests, benchmarks and examples.

Builds a layout with one guest hierarchy translated through one or more EPT hierarchies (several
EP4TAs mapping the same guest-physical space), optionally a linear hierarchy (host or shadow page
tables, in host-physical memory), enumerates the universe for every tag combination asked for,
and boots processors in VMX root operation with a VMCS per processor ready to enter the guest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kvmtlb.hw.cpu import (
    CR0_DEFAULT,
    CR4_DEFAULT,
    VMX_ROOT,
    Capabilities,
    Cpu,
    Regs,
    Vmcs,
)
from kvmtlb.hw.effect import DEFAULT_READINGS, Readings
from kvmtlb.hw.layout import Format, Layout, LayoutBuilder
from kvmtlb.hw.machine import Machine, MachineConfig
from kvmtlb.hw.svm import AmdArch
from kvmtlb.hw.tags import AmdTags, IntelEptTags, IntelLinearTags
from kvmtlb.hw.universe import Universe
from kvmtlb.hw.vmcb import SVM_HOST, SvmCapabilities, SvmCpu, Vmcb
from kvmtlb.hw.vmx import CAP_ALL, make_eptp
from kvmtlb.hw.walk import WalkContext


@dataclass
class IntelSpec:
    """What to build. Values are raw entry values (paging.make_pte / make_ept)."""

    guest: dict[int, int]  # GVA -> initial guest PTE
    ept: dict[int, int]  # GPA -> initial EPT leaf
    guest_values: dict[int, list[int]] = field(default_factory=dict)  # further PTE values
    ept_values: dict[int, list[int]] = field(default_factory=dict)  # further EPT leaf values
    linear: dict[int, int] = field(default_factory=dict)  # GVA -> PTE in a linear hierarchy
    linear_values: dict[int, list[int]] = field(default_factory=dict)
    guest_large: dict[int, int] = field(default_factory=dict)  # GVA -> 2 MiB guest PDE
    ept_large: dict[int, int] = field(default_factory=dict)  # GPA -> 2 MiB EPT PDE
    names: tuple[int, ...] = ()  # further GVAs inside large pages, walked at every fill
    ept_roots: int = 1  # EPT hierarchies mapping the same guest-physical space (EP4TAs)
    vpids: tuple[int, ...] = (1,)
    pcids: tuple[int, ...] = (0,)
    cpus: int = 1
    unpaged: bool = False  # also enumerate CR0.PG = 0 contexts
    cap: int = CAP_ALL
    readings: Readings = DEFAULT_READINGS


@dataclass
class Testbed:
    machine: Machine
    layout: Layout
    guest_root: int
    ept_roots: tuple[int, ...]
    linear_root: int
    vmcs: tuple[Vmcs, ...]

    def eptp(self, n: int = 0) -> int:
        return make_eptp(self.ept_roots[n])

    def pte_slot(self, gva: int, level: int = 1) -> int:
        return self.layout.slot(self.guest_root, gva, level)

    def ept_slot(self, gpa: int, n: int = 0, level: int = 1) -> int:
        return self.layout.slot(self.ept_roots[n], gpa, level)

    def linear_slot(self, gva: int, level: int = 1) -> int:
        return self.layout.slot(self.linear_root, gva, level)


def intel_contexts(
    layout: Layout,
    guest_root: int,
    ept_roots: Iterable[int],
    linear_root: int,
    vpids: Iterable[int],
    pcids: Iterable[int],
    unpaged: bool = False,
) -> list[WalkContext]:
    """Every walk context the testbed's processors can reach."""
    out: list[WalkContext] = []
    vpids = sorted({0, *vpids})
    pcids = sorted(set(pcids))
    pgs = (True, False) if unpaged else (True,)
    for e in ept_roots:
        for v in vpids:
            for p in pcids:
                for pge in (True, False):
                    for pg in pgs:
                        out.append(
                            WalkContext(IntelEptTags(v, p, e), guest_root, e, Format.EPT, pg, pge)
                        )
    if linear_root >= 0:
        for v in vpids:
            for p in pcids:
                for pge in (True, False):
                    out.append(
                        WalkContext(IntelLinearTags(v, p), linear_root, -1, Format.EPT, True, pge)
                    )
    return out


def build_intel(spec: IntelSpec) -> Testbed:
    b = LayoutBuilder()
    ept_roots = tuple(b.ept_root() for _ in range(spec.ept_roots))
    guest_root = b.guest_root(ept_roots)
    for gva, pte in spec.guest.items():
        b.map(guest_root, gva, pte)
    for gva, values in spec.guest_values.items():
        b.allow(guest_root, gva, values)
    for gva, pde in spec.guest_large.items():
        b.map(guest_root, gva, pde, level=2)
        b.allow(guest_root, gva, [0], level=2)
    for gva in spec.names:
        b.name(guest_root, gva, create=False)
    for e in ept_roots:
        for gpa, leaf in spec.ept.items():
            b.map(e, gpa, leaf)
        for gpa, values in spec.ept_values.items():
            b.allow(e, gpa, values)
        for gpa, pde in spec.ept_large.items():
            b.map(e, gpa, pde, level=2)
    linear_root = -1
    if spec.linear:
        linear_root = b.linear_root()
        for gva, pte in spec.linear.items():
            b.map(linear_root, gva, pte)
        for gva, values in spec.linear_values.items():
            b.allow(linear_root, gva, values)
    layout = b.build()
    assert layout.hierarchies[guest_root].fmt is Format.GUEST
    universe = Universe(
        layout,
        intel_contexts(
            layout, guest_root, ept_roots, linear_root, spec.vpids, spec.pcids, spec.unpaged
        ),
    )
    config = MachineConfig(universe, Capabilities(spec.cap), spec.readings)
    host = Regs(CR0_DEFAULT, linear_root if linear_root >= 0 else 0, CR4_DEFAULT)
    guest = Regs(CR0_DEFAULT, guest_root, CR4_DEFAULT)
    vmcs = tuple(
        Vmcs(
            ident=0x1000 * (n + 1),
            vpid=spec.vpids[n % len(spec.vpids)],
            enable_vpid=True,
            enable_ept=True,
            eptp=make_eptp(ept_roots[0]),
            unrestricted_guest=True,
            guest=guest,
            host=host,
        )
        for n in range(spec.cpus)
    )
    cpus = [Cpu(VMX_ROOT, host, vmcs[n]) for n in range(spec.cpus)]
    machine = Machine.boot(config, layout.initial_memory(), cpus)
    return Testbed(machine, layout, guest_root, ept_roots, linear_root, vmcs)


@dataclass
class AmdSpec:
    """An AMD machine: one guest hierarchy under one or more nested roots (nCR3s)."""

    guest: dict[int, int]  # GVA -> initial guest PTE
    npt: dict[int, int]  # GPA -> initial nested leaf (paging.make_npt)
    guest_values: dict[int, list[int]] = field(default_factory=dict)
    npt_values: dict[int, list[int]] = field(default_factory=dict)
    linear: dict[int, int] = field(default_factory=dict)  # GVA -> PTE in a linear hierarchy
    linear_values: dict[int, list[int]] = field(default_factory=dict)
    npt_roots: int = 1
    asids: tuple[int, ...] = (1,)
    pcids: tuple[int, ...] = (0,)
    cpus: int = 1
    caps: SvmCapabilities = field(default_factory=SvmCapabilities)
    readings: Readings = DEFAULT_READINGS


@dataclass
class AmdTestbed:
    machine: Machine
    layout: Layout
    guest_root: int
    npt_roots: tuple[int, ...]
    linear_root: int
    vmcb: tuple[Vmcb, ...]

    def pte_slot(self, gva: int, level: int = 1) -> int:
        return self.layout.slot(self.guest_root, gva, level)

    def npt_slot(self, gpa: int, n: int = 0, level: int = 1) -> int:
        return self.layout.slot(self.npt_roots[n], gpa, level)

    def linear_slot(self, gva: int, level: int = 1) -> int:
        return self.layout.slot(self.linear_root, gva, level)


def amd_contexts(
    guest_root: int,
    npt_roots: Iterable[int],
    linear_root: int,
    asids: Iterable[int],
    pcids: Iterable[int],
) -> list[WalkContext]:
    """Every walk context an AMD testbed's processors can reach."""
    out: list[WalkContext] = []
    asids = sorted(set(asids))
    pcids = sorted(set(pcids))
    for n in npt_roots:
        for a in asids:
            for p in pcids:
                for pge in (True, False):
                    out.append(
                        WalkContext(AmdTags(a, p, True), guest_root, n, Format.NPT, True, pge)
                    )
    if linear_root >= 0:
        for a in [0, *asids]:
            for p in pcids:
                for pge in (True, False):
                    out.append(
                        WalkContext(AmdTags(a, p, False), linear_root, -1, Format.NPT, True, pge)
                    )
    return out


def build_amd(spec: AmdSpec) -> AmdTestbed:
    b = LayoutBuilder()
    npt_roots = tuple(b.npt_root() for _ in range(spec.npt_roots))
    guest_root = b.guest_root(npt_roots)
    for gva, pte in spec.guest.items():
        b.map(guest_root, gva, pte)
    for gva, values in spec.guest_values.items():
        b.allow(guest_root, gva, values)
    for n in npt_roots:
        for gpa, leaf in spec.npt.items():
            b.map(n, gpa, leaf)
        for gpa, values in spec.npt_values.items():
            b.allow(n, gpa, values)
    linear_root = -1
    if spec.linear:
        linear_root = b.linear_root()
        for gva, pte in spec.linear.items():
            b.map(linear_root, gva, pte)
        for gva, values in spec.linear_values.items():
            b.allow(linear_root, gva, values)
    layout = b.build()
    universe = Universe(
        layout, amd_contexts(guest_root, npt_roots, linear_root, spec.asids, spec.pcids)
    )
    config = MachineConfig(universe, spec.caps, spec.readings, AmdArch())
    host = Regs(CR0_DEFAULT, linear_root if linear_root >= 0 else 0, CR4_DEFAULT)
    guest = Regs(CR0_DEFAULT, guest_root, CR4_DEFAULT)
    vmcb = tuple(
        Vmcb(
            ident=0x1000 * (n + 1),
            asid=spec.asids[n % len(spec.asids)],
            np_enable=True,
            ncr3=npt_roots[0],
            guest=guest,
        )
        for n in range(spec.cpus)
    )
    cpus = [SvmCpu(SVM_HOST, host, None, host) for _ in range(spec.cpus)]
    machine = Machine.boot(config, layout.initial_memory(), cpus)
    return AmdTestbed(machine, layout, guest_root, npt_roots, linear_root, vmcb)
