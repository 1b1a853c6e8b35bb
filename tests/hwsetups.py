"""Named processor setups and symbolic operands for the table-driven hardware tests."""

from __future__ import annotations

from typing import Any

from kvmtlb.hw.addr import region
from kvmtlb.hw.cpu import (
    CR0_CD,
    CR0_DEFAULT,
    CR0_NW,
    CR0_PG,
    CR0_WP,
    CR4_DEFAULT,
    CR4_PAE,
    CR4_PCIDE,
    CR4_PGE,
    CR4_PKE,
    CR4_PSE,
    CR4_SMAP,
    CR4_SMEP,
    CR4_SMXE,
    VMX_NONROOT,
    VMX_OFF,
    VMX_ROOT,
    Capabilities,
    Cpu,
    Regs,
    Vmcs,
)
from kvmtlb.hw.effect import DEFAULT_READINGS, Effect, Readings
from kvmtlb.hw.machine import IntelArch
from kvmtlb.hw.mappings import (
    CombinedPsc,
    CombinedTranslation,
    Entry,
    GuestPhysicalPsc,
    GuestPhysicalTranslation,
    LinearPsc,
    LinearTranslation,
)
from kvmtlb.hw.outcomes import EptMisconfig, EptViolation, PageFault
from kvmtlb.hw.paging import E_ALL, G_ALL
from kvmtlb.hw.smm import DualMonitorSmmExit, DualMonitorSmmReturn, Rsm, Smi
from kvmtlb.hw.vmx import (
    CAP_ALL,
    Invept,
    Invvpid,
    Vmclear,
    VmEntry,
    VmExitEvent,
    VmfuncEptpSwitch,
    Vmptrld,
    Vmwrite,
    Vmxoff,
    Vmxon,
    make_eptp,
)
from kvmtlb.hw.x86 import (
    Getsec,
    Init,
    Invlpg,
    Invpcid,
    MovToCr0,
    MovToCr3,
    MovToCr4,
    Reset,
    TaskSwitch,
)

E1 = 0x2_0000_0000
E2 = 0x2_0010_0000
ROOT = 0x1_0000_0000
SYMBOLS: dict[str, int] = {
    "A": 0x40_0000,
    "B": 0x80_0000,
    "X": 0x10_0000,
    "Y": 0x60_0000,
    "E1": make_eptp(E1),
    "E1_AD": make_eptp(E1, ad=True),
    "E2": make_eptp(E2),
    "ROOT": ROOT,
    "NONCANONICAL": 0xAAAA_AAAA_AAAA_A000,
}
EP4TAS = {"E1": E1, "E2": E2}
CR4_BITS = {
    "PGE": CR4_PGE,
    "PCIDE": CR4_PCIDE,
    "PAE": CR4_PAE,
    "SMEP": CR4_SMEP,
    "PSE": CR4_PSE,
    "SMAP": CR4_SMAP,
    "PKE": CR4_PKE,
    "SMXE": CR4_SMXE,
}
CR0_BITS = {"PG": CR0_PG, "WP": CR0_WP, "CD": CR0_CD, "NW": CR0_NW}
CAPS = Capabilities(CAP_ALL, smx=True)


def sym(v: Any) -> Any:
    return SYMBOLS[v] if isinstance(v, str) else v


GUEST_PCID = Regs(CR0_DEFAULT, ROOT | 1, CR4_DEFAULT | CR4_PCIDE)
GUEST_NOPCID = Regs(CR0_DEFAULT, ROOT, CR4_DEFAULT)
HOST = Regs(CR0_DEFAULT, ROOT | 1, CR4_DEFAULT | CR4_PCIDE)
VMCS = Vmcs(
    ident=0x1000,
    vpid=1,
    enable_vpid=True,
    enable_ept=True,
    eptp=make_eptp(E1),
    unrestricted_guest=True,
    guest=GUEST_PCID,
    host=HOST,
    launched=True,
)


def setup(name: str) -> Cpu:
    """A processor in the named situation (see tests/data/intel_invalidations.toml)."""
    nonroot = Cpu(VMX_NONROOT, GUEST_PCID, VMCS)
    if name == "nonroot":
        return nonroot
    if name == "nonroot_smep":
        return nonroot._replace(regs=GUEST_PCID._replace(cr4=GUEST_PCID.cr4 | CR4_SMEP))
    if name == "nonroot_nopcid":
        return Cpu(VMX_NONROOT, GUEST_NOPCID, VMCS._replace(guest=GUEST_NOPCID))
    if name == "nonroot_novpid":
        return Cpu(VMX_NONROOT, GUEST_PCID, VMCS._replace(enable_vpid=False))
    if name == "nonroot_noept":
        return Cpu(
            VMX_NONROOT, GUEST_PCID, VMCS._replace(enable_ept=False, unrestricted_guest=False)
        )
    if name == "nonroot_invlpg_exiting":
        return Cpu(VMX_NONROOT, GUEST_PCID, VMCS._replace(invlpg_exiting=True))
    if name == "nonroot_cr4_owned":
        return Cpu(
            VMX_NONROOT,
            GUEST_PCID,
            VMCS._replace(cr4_guest_host_mask=CR4_PGE, cr4_read_shadow=GUEST_PCID.cr4),
        )
    if name == "nonroot_vmfunc":
        return Cpu(VMX_NONROOT, GUEST_PCID, VMCS._replace(eptp_list=(make_eptp(E1), make_eptp(E2))))
    if name == "nonroot_novpid_vmfunc":
        return Cpu(
            VMX_NONROOT,
            GUEST_PCID,
            VMCS._replace(enable_vpid=False, eptp_list=(make_eptp(E1), make_eptp(E2))),
        )
    if name == "root":
        return Cpu(VMX_ROOT, HOST, VMCS)
    if name == "root_vmcs_novpid":
        return Cpu(VMX_ROOT, HOST, VMCS._replace(enable_vpid=False))
    if name == "root_guest_differs":
        guest = Regs(CR0_DEFAULT, ROOT | 3, (CR4_DEFAULT | CR4_PCIDE) & ~CR4_PGE)
        return Cpu(VMX_ROOT, HOST, VMCS._replace(guest=guest))
    if name == "root_compat":
        return Cpu(VMX_ROOT, Regs(CR0_DEFAULT, ROOT, CR4_DEFAULT, cs_l=False), VMCS)
    if name == "root_unpaged":
        return Cpu(VMX_ROOT, Regs(CR0_DEFAULT & ~CR0_PG, ROOT, CR4_DEFAULT, cs_l=False), VMCS)
    if name == "off":
        return Cpu(VMX_OFF, Regs(CR0_DEFAULT, ROOT, CR4_DEFAULT | CR4_SMXE))
    if name == "smm":
        return nonroot._replace(smm=True)
    raise KeyError(f"unknown setup {name!r}")


def run_op(cpu: Cpu, op: dict[str, Any], readings: Readings = DEFAULT_READINGS) -> Effect:
    """Execute the operation described by a table row's `op` on `cpu`."""
    kind = op["kind"]
    arch = IntelArch()
    if kind == "invlpg":
        event: Any = Invlpg(sym(op["addr"]))
    elif kind == "invpcid":
        event = Invpcid(op["type"], op.get("pcid", 0), sym(op.get("addr", 0)))
    elif kind == "mov_cr3":
        value = sym(op["value"]) | op.get("pcid", 0) | ((1 << 63) if op.get("noflush") else 0)
        event = MovToCr3(value)
    elif kind == "mov_cr4":
        value = cpu.regs.cr4
        for b in op["toggle"]:
            value ^= CR4_BITS[b]
        event = MovToCr4(value)
    elif kind == "mov_cr0":
        value = cpu.regs.cr0
        for b in op["toggle"]:
            value ^= CR0_BITS[b]
        event = MovToCr0(value)
    elif kind == "task_switch":
        event = TaskSwitch(sym(op["cr3"]))
    elif kind == "page_fault":
        return arch.fault_effect(cpu, PageFault(sym(op["addr"]), "not present"), readings)
    elif kind == "ept_violation":
        gva = sym(op["addr"]) if "addr" in op else -1
        return arch.fault_effect(cpu, EptViolation(sym(op["gpa"]), gva), readings)
    elif kind == "ept_misconfig":
        return arch.fault_effect(cpu, EptMisconfig(sym(op["gpa"])), readings)
    elif kind == "vmentry":
        event = VmEntry(launch=False)
    elif kind == "vmexit":
        event = VmExitEvent()
    elif kind == "invvpid":
        event = Invvpid(op["type"], op.get("desc", 0), sym(op.get("addr", 0)))
    elif kind == "invept":
        event = Invept(op["type"], sym(op.get("eptp", 0)))
    elif kind == "vmfunc":
        event = VmfuncEptpSwitch(op["index"])
    elif kind == "vmxon":
        event = Vmxon()
    elif kind == "vmxoff":
        event = Vmxoff()
    elif kind == "smi":
        event = Smi()
    elif kind == "rsm":
        event = Rsm()
    elif kind == "dual_monitor_exit":
        event = DualMonitorSmmExit()
    elif kind == "dual_monitor_return":
        event = DualMonitorSmmReturn()
    elif kind == "getsec":
        event = Getsec()
    elif kind == "reset":
        event = Reset()
    elif kind == "init":
        event = Init()
    elif kind == "vmptrld":
        event = Vmptrld(VMCS._replace(ident=0x2000))
    elif kind == "vmclear":
        event = Vmclear(VMCS.ident)
    elif kind == "vmwrite":
        event = Vmwrite(op["field"], sym(op["value"]))
    else:
        raise KeyError(f"unknown op {kind!r}")
    eff: Effect = event.execute(cpu, CAPS, readings)
    return eff


KINDS = ("linear", "linear-psc", "gphys", "gphys-psc", "combined", "combined-psc")
FRAME = 0x9000_0000
TABLE = 0x9100_0000


def relations(kind: str, subject_vpid: int) -> list[dict[str, str]]:
    """Every tag relation a probe of `kind` can have to a subject."""
    tagged = kind in ("linear", "linear-psc", "combined", "combined-psc")
    vpids = (["same", "other", "zero"] if subject_vpid else ["same", "other"]) if tagged else ["-"]
    pcids = ["same", "other"] if tagged else ["-"]
    ep4tas = ["same", "other"] if kind.startswith(("gphys", "combined")) else ["-"]
    globs = ["yes", "no"] if kind in ("linear", "combined") else ["no"]
    out = []
    for v in vpids:
        for p in pcids:
            for e in ep4tas:
                for g in globs:
                    for a in ("same", "other"):
                        out.append({"vpid": v, "pcid": p, "ep4ta": e, "glob": g, "addr": a})
    return out


def probe(kind: str, rel: dict[str, str], subject: dict[str, Any]) -> Entry:
    """The entry of `kind` standing in relation `rel` to the event's subject."""
    svpid = subject["vpid"]
    vpid = {"same": svpid, "other": 7, "zero": 0, "-": 0}[rel["vpid"]]
    pcid = {"same": subject["pcid"], "other": 5, "-": 0}[rel["pcid"]]
    ep4ta = {"same": EP4TAS[subject["ep4ta"]], "other": E2, "-": 0}[rel["ep4ta"]]
    glob = rel["glob"] == "yes"
    gva = sym(subject["addr"]) if rel["addr"] == "same" else SYMBOLS["B"]
    gpa = sym(subject.get("gpa", "X")) if rel["addr"] == "same" else SYMBOLS["Y"]
    if kind == "linear":
        return LinearTranslation(vpid, pcid, gva, 0x1000, 0x1000, FRAME, G_ALL, glob)
    if kind == "linear-psc":
        return LinearPsc(vpid, pcid, 2, region(gva, 2), TABLE, G_ALL)
    if kind == "gphys":
        return GuestPhysicalTranslation(ep4ta, gpa, 0x1000, FRAME, E_ALL)
    if kind == "gphys-psc":
        return GuestPhysicalPsc(ep4ta, 2, region(gpa, 2), TABLE, E_ALL)
    if kind == "combined":
        return CombinedTranslation(
            vpid, pcid, ep4ta, gva, 0x1000, 0x1000, FRAME, G_ALL, E_ALL, glob, gpa
        )
    return CombinedPsc(vpid, pcid, ep4ta, 2, region(gva, 2), TABLE, G_ALL)
