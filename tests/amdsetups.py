"""Named AMD processor setups and operations for the table-driven AMD tests."""

from __future__ import annotations

from typing import Any

from hwsetups import CR0_BITS, CR4_BITS, SYMBOLS, sym

from kvmtlb.hw.addr import region
from kvmtlb.hw.cpu import CR0_DEFAULT, CR0_PG, CR4_DEFAULT, CR4_PCIDE, Regs
from kvmtlb.hw.effect import DEFAULT_READINGS, Effect, Readings
from kvmtlb.hw.mappings import AsidPsc, AsidTranslation, Entry, NestedPsc, NestedTranslation
from kvmtlb.hw.outcomes import NestedPageFault, PageFault
from kvmtlb.hw.paging import E_ALL, G_ALL
from kvmtlb.hw.svm import AmdArch, FlushAllAsids, Invlpga, SvmExitEvent, Vmrun
from kvmtlb.hw.vmcb import SVM_GUEST, SVM_HOST, SVM_OFF, SvmCapabilities, SvmCpu, Vmcb
from kvmtlb.hw.x86 import Invlpg, Invpcid, MovToCr0, MovToCr3, MovToCr4

N1 = 0x2_0000_0000
ROOT = SYMBOLS["ROOT"]
GUEST = Regs(CR0_DEFAULT, ROOT | 1, CR4_DEFAULT | CR4_PCIDE)
GUEST_NOPCID = Regs(CR0_DEFAULT, ROOT, CR4_DEFAULT)
HOST = Regs(CR0_DEFAULT, ROOT | 1, CR4_DEFAULT | CR4_PCIDE)
VMCB = Vmcb(ident=0x1000, asid=1, np_enable=True, ncr3=N1, guest=GUEST)


def setup(name: str) -> SvmCpu:
    if name == "guest":
        return SvmCpu(SVM_GUEST, GUEST, VMCB, HOST)
    if name == "guest_nopcid":
        return SvmCpu(SVM_GUEST, GUEST_NOPCID, VMCB._replace(guest=GUEST_NOPCID), HOST)
    if name == "guest_intercepts":
        v = VMCB._replace(
            intercept_invlpg=True,
            intercept_cr3_write=True,
            intercept_cr4_write=True,
            intercept_cr0_write=True,
        )
        return SvmCpu(SVM_GUEST, GUEST, v, HOST)
    if name == "guest_compat":
        regs = Regs(CR0_DEFAULT, ROOT, CR4_DEFAULT, cs_l=False)
        return SvmCpu(SVM_GUEST, regs, VMCB._replace(guest=regs), HOST)
    if name == "guest_unpaged":
        regs = Regs(CR0_DEFAULT & ~CR0_PG, ROOT, CR4_DEFAULT, cs_l=False)
        return SvmCpu(SVM_GUEST, regs, VMCB._replace(guest=regs), HOST)
    if name == "host":
        return SvmCpu(SVM_HOST, HOST, VMCB, HOST)
    if name == "off":
        return SvmCpu(SVM_OFF, HOST, None, HOST)
    raise KeyError(name)


def run_op(
    cpu: SvmCpu, op: dict[str, Any], caps: SvmCapabilities, readings: Readings = DEFAULT_READINGS
) -> Effect:
    kind = op["kind"]
    arch = AmdArch()
    if kind == "vmrun":
        vmcb = (cpu.vmcb or VMCB)._replace(tlb_control=op["tlb_control"], asid=op.get("asid", 1))
        event: Any = Vmrun(vmcb)
    elif kind == "vmexit":
        event = SvmExitEvent()
    elif kind == "invlpg":
        event = Invlpg(sym(op["addr"]))
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
    elif kind == "invpcid":
        event = Invpcid(op["type"], op.get("pcid", 0), sym(op.get("addr", 0)))
    elif kind == "invlpga":
        event = Invlpga(sym(op["addr"]), op["asid"])
    elif kind == "flush_all":
        event = FlushAllAsids(op["cause"])
    elif kind == "page_fault":
        return arch.fault_effect(cpu, PageFault(sym(op["addr"]), "not present"), readings)
    elif kind == "npf":
        return arch.fault_effect(cpu, NestedPageFault(sym(op["gpa"]), sym(op["addr"])), readings)
    else:
        raise KeyError(kind)
    eff: Effect = event.execute(cpu, caps, readings)
    return eff


KINDS = ("asid", "asid-psc", "nested", "nested-psc")
FRAME = 0x9000_0000
TABLE = 0x9100_0000


def relations(kind: str, subject_asid: int) -> list[dict[str, str]]:
    asids = ["same", "other", "zero"] if subject_asid else ["same", "other"]
    pcids = ["same", "other"] if kind in ("asid", "asid-psc") else ["-"]
    globs = ["yes", "no"] if kind == "asid" else ["no"]
    return [
        {"asid": a, "pcid": p, "glob": g, "addr": ad}
        for a in asids
        for p in pcids
        for g in globs
        for ad in ("same", "other")
    ]


def probe(kind: str, rel: dict[str, str], subject: dict[str, Any]) -> Entry:
    asid = {"same": subject["asid"], "other": 7, "zero": 0}[rel["asid"]]
    pcid = {"same": subject["pcid"], "other": 5, "-": 0}[rel["pcid"]]
    glob = rel["glob"] == "yes"
    gva = sym(subject["addr"]) if rel["addr"] == "same" else SYMBOLS["B"]
    gpa = sym(subject["gpa"]) if rel["addr"] == "same" else SYMBOLS["Y"]
    if kind == "asid":
        return AsidTranslation(asid, pcid, gva, 0x1000, 0x1000, FRAME, G_ALL, E_ALL, glob, gpa)
    if kind == "asid-psc":
        return AsidPsc(asid, pcid, 2, region(gva, 2), TABLE, G_ALL)
    if kind == "nested":
        return NestedTranslation(asid, gpa, 0x1000, FRAME, E_ALL)
    return NestedPsc(asid, 2, region(gpa, 2), TABLE, E_ALL)
