"""The scenario format's nested-VMX ops: parsing and the static checks of an L1 thread.

An L1 thread is a vCPU thread with VMX instructions in it (kvmtlb.guest.l1_ops). The checks
follow the thread in order (VMX operation on or off, L1 or L2 running) and reject what the model
cannot run or what would fail architecturally: VMX instructions outside VMX operation, a
VMRESUME before any VMLAUNCH, L1 instructions while L2 runs, INVVPID operands the processor
rejects, and the guest ops the nested model does not support inside L2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kvmtlb.errors import InputFileError
from kvmtlb.guest.l1_ops import (
    EPT_OPS,
    L1_OPS,
    NPT_OPS,
    SVM_OPS,
    VMX_OPS,
    EptMapOp,
    InveptOp,
    InvlpgaOp,
    InvvpidOp,
    NptMapOp,
    VmcallOp,
    VmlaunchOp,
    VmptrldOp,
    VmresumeOp,
    VmrunOp,
    VmxoffOp,
    VmxonOp,
)
from kvmtlb.guest.ops import (
    DEFAULT_ROOT,
    FLUSH_ALL,
    EmulatedReadOp,
    FlushTlbOp,
    MapOp,
    MovCr3Op,
    SetCr4Op,
    UnmapOp,
)

# The nested ops and their usage (docs/scenarios.md, "Nested VMX"; the fuzzer's op words).
NESTED_OPS = {
    "vmxon": "vmxon",
    "vmxoff": "vmxoff",
    "vmlaunch": "vmlaunch ROOT [vpid=N] [ept=NAME]",
    "vmresume": "vmresume [vpid=N] [ept=NAME]",
    "vmptrld": "vmptrld ROOT",
    "invvpid": "invvpid TYPE [vpid=N] [GVA]",
    "vmcall": "vmcall",
    "vmrun": "vmrun ROOT [asid=N] [tlb_control=0|1|3|7]",
    "invlpga": "invlpga GVA [asid=N]",
    "invept": "invept 1|2 [ept=NAME]",
    "ept_map": "ept_map L2GPA -> L1GPA RIGHTS [ept=NAME]",
    "ept_unmap": "ept_unmap L2GPA [ept=NAME]",
    "npt_map": "npt_map L2GPA -> L1GPA RIGHTS",
    "npt_unmap": "npt_unmap L2GPA",
}
L1_OP_WORDS = tuple(NESTED_OPS)
Err = Callable[[int, str, str], InputFileError]


def _vpid(arg: str, line: int, err: Err) -> int:
    if not arg.startswith("vpid="):
        raise err(
            line, f"expected vpid=N, got {arg!r}", "write vpid=1 (vpid=0: VPID off in vmcs12)"
        )
    try:
        value = int(arg[5:], 0)
    except ValueError:
        raise err(line, f"bad VPID {arg[5:]!r}", "use a number 0..65535") from None
    if not 0 <= value <= 0xFFFF:
        raise err(line, f"VPID {value} out of range", "use a number 0..65535")
    return value


def _number(text: str, line: int, what: str, low: int, high: int, err: Err) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise err(line, f"bad {what} {text!r}", f"use a number {low}..{high}") from None
    if not low <= value <= high:
        raise err(line, f"{what} {value} out of range", f"use a number {low}..{high}")
    return value


def _ept_arg(
    args: list[str], line: int, ept_names: Sequence[str], err: Err
) -> tuple[list[str], int, str]:
    """Split a trailing `ept=NAME` off `args`: (the other args, the EPT12 table's index, its
    name); index -1 and name "" when there is none."""
    if not args or not args[-1].startswith("ept="):
        return args, -1, ""
    name = args[-1][4:]
    if name not in ept_names:
        known = ", ".join(ept_names) or "none: declare [ept12]"
        raise err(
            line,
            f"no EPT12 table named {name!r}",
            f"name [ept12] (ept=default) or an [ept12.NAME] table (known: {known})",
        )
    return args[:-1], list(ept_names).index(name), name


def parse_l1_op(
    op: str,
    args: list[str],
    line: int,
    roots: dict[str, Any],
    addr: Callable[[str, int, str], int],
    err: Err,
    ept_names: Sequence[str] = (),
) -> Any:
    """The L1 op `op args`, or None if `op` is not one. `ept_names`: the EPT12 tables, in index
    order ("default" for [ept12], then the [ept12.NAME] tables)."""
    if op not in L1_OP_WORDS:
        return None
    args, ept, ept_name = _ept_arg(args, line, ept_names, err)
    if ept_name and op not in ("vmlaunch", "vmresume", "invept", "ept_map", "ept_unmap"):
        raise err(line, f"{op} takes no ept=NAME", "drop the ept=NAME")
    if op in ("vmxon", "vmxoff", "vmcall"):
        if args:
            raise err(line, f"{op} takes no operands", f"write: {op}")
        return {"vmxon": VmxonOp, "vmxoff": VmxoffOp, "vmcall": VmcallOp}[op](line)
    if op == "vmrun":
        if not args:
            raise err(line, "vmrun takes ROOT [asid=N] [tlb_control=N]", "write: vmrun l2 asid=1")
        root = args[0]
        if root not in roots:
            raise err(
                line,
                f"no guest page table named {root!r} for L2",
                f"declare L2's page table as [guest.{root}]",
            )
        asid, tlb = 1, 0
        for a in args[1:]:
            if a.startswith("asid="):
                asid = _number(a[5:], line, "ASID", 1, 15, err)
            elif a.startswith("tlb_control="):
                tlb = _number(a[12:], line, "TLB_CONTROL", 0, 7, err)
                if tlb not in (0, 1, 3, 7):
                    raise err(line, f"TLB_CONTROL {tlb} is reserved", "use 0, 1, 3 or 7")
            else:
                raise err(
                    line, f"unknown vmrun argument {a!r}", "write: vmrun l2 asid=1 tlb_control=3"
                )
        return VmrunOp(root, asid, tlb, line)
    if op == "invlpga":
        if not args or len(args) > 2:
            raise err(line, "invlpga takes GVA [asid=N]", "write: invlpga 0x1000 asid=1")
        asid = _number(args[1][5:], line, "ASID", 0, 15, err) if len(args) == 2 else 1
        if len(args) == 2 and not args[1].startswith("asid="):
            raise err(line, f"expected asid=N, got {args[1]!r}", "write: invlpga 0x1000 asid=1")
        return InvlpgaOp(addr(args[0], line, "GVA"), asid, line)
    if op == "invept":
        if len(args) != 1 or args[0] not in ("1", "2"):
            raise err(
                line,
                "invept takes TYPE 1 (single context: vmcs12's EPTP) or 2 (all contexts)",
                "write: invept 1",
            )
        if ept_name and args[0] == "2":
            raise err(line, "invept 2 (all contexts) names no EPTP", "drop the ept=NAME")
        return InveptOp(int(args[0]), line, ept, ept_name)
    if op == "npt_unmap":
        if len(args) != 1:
            raise err(line, "npt_unmap takes L2GPA", "write: npt_unmap 0x40000")
        return NptMapOp(addr(args[0], line, "L2 GPA"), -1, "", line)
    if op == "npt_map":
        if (
            len(args) != 4
            or args[1] != "->"
            or not set(args[3]) <= set("rwx")
            or "r" not in args[3]
        ):
            raise err(
                line,
                "npt_map takes L2GPA -> L1GPA RIGHTS (rights r, rw, rx or rwx: an NPT entry is "
                "readable once present)",
                "write: npt_map 0x40000 -> 0x11000 rwx",
            )
        return NptMapOp(addr(args[0], line, "L2 GPA"), addr(args[2], line, "L1 GPA"), args[3], line)
    if op == "ept_unmap":
        if len(args) != 1:
            raise err(line, "ept_unmap takes L2GPA", "write: ept_unmap 0x40000")
        return EptMapOp(addr(args[0], line, "L2 GPA"), -1, "", line, max(ept, 0), ept_name)
    if op == "ept_map":
        if len(args) != 4 or args[1] != "->" or not set(args[3]) <= set("rwx") or not args[3]:
            raise err(
                line,
                "ept_map takes L2GPA -> L1GPA RIGHTS (rights from r, w, x)",
                "write: ept_map 0x40000 -> 0x11000 rwx",
            )
        if "w" in args[3] and "r" not in args[3]:
            raise err(
                line,
                "an EPT entry with write but not read permission is an EPT misconfiguration",
                "add r: rw or rwx",
            )
        return EptMapOp(
            addr(args[0], line, "L2 GPA"),
            addr(args[2], line, "L1 GPA"),
            args[3],
            line,
            max(ept, 0),
            ept_name,
        )
    if op == "vmlaunch":
        if len(args) not in (1, 2):
            raise err(line, "vmlaunch takes ROOT [vpid=N]", "write: vmlaunch l2 vpid=1")
        root = args[0]
        if root not in roots:
            known = ", ".join(roots) or "none declared"
            raise err(
                line,
                f"no guest page table named {root!r} for L2",
                f"declare L2's page table as [guest.{root}] (known: {known}); L2 never runs on "
                f"L1's own table [guest] (KVM keys L2's roots by role, the model by table)",
            )
        vpid = _vpid(args[1], line, err) if len(args) == 2 else 1
        return VmlaunchOp(root, vpid, line, max(ept, 0), ept_name)
    if op == "vmptrld":
        if len(args) != 1:
            raise err(line, "vmptrld takes ROOT", "write: vmptrld l2")
        if args[0] not in roots:
            raise err(
                line,
                f"no guest page table named {args[0]!r} for L2",
                f"name the [guest.NAME] table a vmlaunch ran L2 on (known: {', '.join(roots)})",
            )
        return VmptrldOp(args[0], -1, line)
    if op == "vmresume":
        if len(args) > 1:
            raise err(line, "vmresume takes [vpid=N]", "write: vmresume vpid=2")
        return VmresumeOp(_vpid(args[0], line, err) if args else -1, line, ept, ept_name)
    # invvpid TYPE [vpid=N] [GVA]
    if not args:
        raise err(line, "invvpid takes TYPE [vpid=N] [GVA]", "write: invvpid 1 vpid=1")
    try:
        t = int(args[0], 0)
    except ValueError:
        raise err(line, f"bad INVVPID type {args[0]!r}", "use 0, 1, 2 or 3") from None
    if not 0 <= t <= 3:
        raise err(line, f"INVVPID type {t} out of range", "use 0, 1, 2 or 3")
    vpid, gva = 0, 0
    for a in args[1:]:
        if a.startswith("vpid="):
            vpid = _vpid(a, line, err)
        else:
            gva = addr(a, line, "GVA")
    if t != 2 and vpid == 0:
        raise err(
            line,
            f"INVVPID type {t} with VPID 0 fails (VMfailValid)",
            f"write: invvpid {t} vpid=1" + (" GVA" if t == 0 else ""),
        )
    if t == 0 and not gva:
        raise err(line, "invvpid type 0 needs a GVA", "write: invvpid 0 vpid=1 0x1000")
    return InvvpidOp(t, vpid, gva, line)


def resolve_vmptrld(programs: list[list[Any]]) -> None:
    """Fill in each `vmptrld ROOT`'s vpid and EPTP: those of the vmcs12 launched on ROOT, as the
    thread last left them (its vmlaunch, then any vmresume vpid=N / ept=NAME while it was
    current); and each single-context `invept` without ept=NAME's EPTP: the current vmcs12's.
    The thread is valid (check_nested ran)."""
    for prog in programs:
        vpids: dict[str, int] = {}
        epts: dict[str, int] = {}
        current = ""
        for i, op in enumerate(prog):
            if isinstance(op, VmlaunchOp):
                current = op.root
                vpids[current] = op.vpid
                epts[current] = op.ept
            elif isinstance(op, VmresumeOp):
                if op.vpid >= 0:
                    vpids[current] = op.vpid
                if op.ept >= 0:
                    epts[current] = op.ept
            elif isinstance(op, VmptrldOp):
                current = op.root
                prog[i] = op._replace(vpid=vpids[current], ept=epts[current])
            elif isinstance(op, InveptOp) and op.type == 1 and op.ept < 0:
                prog[i] = op._replace(ept=epts.get(current, 0))
            elif isinstance(op, VmxoffOp):
                vpids.clear()
                epts.clear()


def is_nested(programs: Sequence[Sequence[object]]) -> bool:
    return any(isinstance(op, L1_OPS) for prog in programs for op in prog)


def l2_flush_ops(programs: Sequence[Sequence[object]]) -> list[FlushTlbOp]:
    """The `flush_tlb` ops (shootdowns) L2 runs: between a VMLAUNCH / VMRESUME / VMRUN and the
    next VMCALL of a thread."""
    out: list[FlushTlbOp] = []
    for prog in programs:
        l2 = False
        for op in prog:
            if isinstance(op, VmlaunchOp | VmresumeOp | VmrunOp):
                l2 = True
            elif isinstance(op, VmcallOp):
                l2 = False
            elif l2 and isinstance(op, FlushTlbOp):
                out.append(op)
    return out


def _check_l2_flushes(programs: Sequence[Sequence[object]], pv: bool, err: Err) -> None:
    """L2's shootdowns (`flush_tlb` inside L2): IPIs from L2 to the other vCPUs' L2, handled
    there only while L2 runs (KvmConfig.l2_ipis). They are PV-less (the PV TLB flush's
    steal-time byte is L0's, which serves L1, not L2), of a page or the mm (a full flush toggles
    CR4.PGE, which L2 does not run here), and L1 sends none in the same scenario (an IPI would
    not say which level it is for)."""
    l2 = l2_flush_ops(programs)
    if not l2:
        return
    first = l2[0]
    if pv:
        raise err(
            first.line,
            f"{first.describe()} in L2 with the PV TLB flush on: L0's steal-time flag serves "
            "L1, so L2's shootdowns are modelled as IPIs only",
            "set pv_tlb_flush = false in [config]",
        )
    for op in l2:
        if op.scope == FLUSH_ALL:
            raise err(
                op.line,
                f"{op.describe()} in L2: a full flush toggles CR4.PGE, which L2 does not run here",
                "flush a page (flush_tlb GVA) or the mm (flush_tlb mm) in L2",
            )
    every = [op for prog in programs for op in prog if isinstance(op, FlushTlbOp)]
    if len(every) > len(l2):
        l1 = next(op for op in every if op not in l2)
        raise err(
            l1.line,
            f"{l1.describe()} in L1 while L2 also shoots down: an IPI of the model does not "
            "say which level it is for",
            "keep the shootdowns of a nested scenario to L2 (or to L1)",
        )


def _check_l2_op(op: object, err: Err) -> None:
    """The guest ops the nested model does not run inside L2 (its shootdowns are checked by
    _check_l2_flushes)."""
    ln = getattr(op, "line", 0)
    if isinstance(op, FlushTlbOp):
        return
    if isinstance(op, SetCr4Op | EmulatedReadOp):
        raise err(
            ln,
            f"{op.describe()} inside L2 is not modelled",
            "keep L2 to reads, writes, map/unmap, link/unlink, invlpg, mov_cr3, invpcid, "
            "flush_tlb GVA|mm",
        )
    if isinstance(op, MapOp | UnmapOp) and op.emulated:
        raise err(ln, "emulated stores inside L2 are not modelled", "drop emulated")
    if isinstance(op, MapOp | UnmapOp) and op.root == DEFAULT_ROOT:
        raise err(ln, "L2 writes L1's page table [guest]", "L2 writes its own table: add root=NAME")


def _check_l2_on_ept01(programs: Sequence[Sequence[object]], err: Err, vmx: bool = True) -> None:
    """An L2 without nested EPT on an EPT L0, or without nested NPT on an NPT L0
    (kvm/nested_ept01.py), runs on its page tables through KVM's guest_mode root: L2 may reload
    its CR3 but not switch to another table (the walk contexts of that root are L2's vmlaunch /
    vmrun tables), and does not shoot down (its IPIs are modelled on a shadow-paging L0 only)."""
    where = "an EPT L0 without nested EPT" if vmx else "an NPT L0 without nested NPT"
    entry = "vmlaunch" if vmx else "vmrun"
    for prog in programs:
        l2 = False
        for op in prog:
            ln = getattr(op, "line", 0)
            if isinstance(op, VmlaunchOp | VmresumeOp | VmrunOp):
                l2 = True
            elif isinstance(op, VmcallOp):
                l2 = False
            elif l2 and isinstance(op, MovCr3Op) and op.root:
                raise err(
                    ln,
                    f"{op.describe()} inside L2 on {where}: L2 switches page tables only "
                    f"through {'vmcs12' if vmx else 'vmcb12'} here",
                    f"drop the table name (mov_cr3 reloads L2's CR3), or {entry} that table",
                )
            elif l2 and isinstance(op, FlushTlbOp):
                raise err(
                    ln,
                    f"{op.describe()} inside L2 on {where} is not modelled",
                    "use invlpg or mov_cr3 in L2, or set tdp = false in [config]",
                )


def _check_svm_threads(programs: Sequence[Sequence[object]], err: Err) -> None:
    """An SVM L1 thread: VMRUN enters L2 (EFER.SVME is taken as set), `vmcall` (VMMCALL)
    leaves it; INVLPGA and VMRUN are L1's."""
    for prog in programs:
        l2 = False
        for op in prog:
            ln = getattr(op, "line", 0)
            if isinstance(op, VmrunOp | InvlpgaOp | NptMapOp):
                if l2:
                    raise err(ln, f"{op.describe()} while L2 runs", "let L2 exit first: vmcall")
                l2 = isinstance(op, VmrunOp)
            elif isinstance(op, VmcallOp):
                if not l2:
                    raise err(ln, "vmcall outside L2", "vmrun first")
                l2 = False
            elif l2:
                _check_l2_op(op, err)


def l2_roots(scenario: Any) -> tuple[int, ...]:
    """The indices of the guest page tables L1 runs L2 on (KvmConfig.nested_roots)."""
    names = scenario.root_names
    return tuple(
        sorted(
            {
                names.index(op.root)
                for p in scenario.programs
                for op in p
                if isinstance(op, VmlaunchOp | VmrunOp)
            }
        )
    )


def vpid12s(scenario: Any) -> tuple[int, ...]:
    """Every VPID L1 gives L2 in a vmcs12 (0: VPID off), or ASID in a vmcb12 (SVM)."""
    out = {
        op.vpid for p in scenario.programs for op in p if isinstance(op, VmlaunchOp | VmresumeOp)
    }
    out |= {op.asid for p in scenario.programs for op in p if isinstance(op, VmrunOp | InvlpgaOp)}
    return tuple(sorted(v for v in out if v > 0))


def check_nested(
    vendor: str,
    tdp: bool,
    vpid: bool,
    programs: Sequence[Sequence[object]],
    err: Err,
    line0: int,
    ept12: bool = False,
    pv: bool = False,
    npt12: bool = False,
) -> None:
    """The static checks of every L1 thread (see the module docstring). `ept12`: the file
    declares an [ept12] table (nested EPT, on an EPT L0); `npt12`: an [npt12] table (nested
    NPT, on an NPT L0); `pv`: the PV TLB flush is on."""
    if not is_nested(programs):
        return
    _check_l2_flushes(programs, pv, err)
    first = next(op for prog in programs for op in prog if isinstance(op, L1_OPS))
    line = getattr(first, "line", line0)
    for prog in programs:
        for op in prog:
            if vendor == "intel" and isinstance(op, SVM_OPS):
                raise err(op.line, f"{op.describe()} is an SVM instruction", 'set vendor = "amd"')
            if vendor == "amd" and isinstance(op, VMX_OPS):
                raise err(op.line, f"{op.describe()} is a VMX instruction", 'set vendor = "intel"')
    ept_op = next((op for p in programs for op in p if isinstance(op, EPT_OPS)), None)
    if tdp and vendor == "amd" and not npt12:
        _check_l2_on_ept01(programs, err, vmx=False)
    if tdp and vendor == "intel" and not ept12:
        _check_l2_on_ept01(programs, err)
    npt_op = next((op for p in programs for op in p if isinstance(op, NPT_OPS)), None)
    if npt_op is not None and not npt12:
        raise err(
            npt_op.line,
            f"{npt_op.describe()} needs nested NPT (an NPT L0 and an [npt12] table)",
            'set vendor = "amd" and tdp = true in [config] and declare [npt12]',
        )
    if ept_op is not None and not (tdp and ept12):
        raise err(
            ept_op.line,
            f"{ept_op.describe()} needs nested EPT (an EPT L0 and an [ept12] table)",
            "set tdp = true in [config] and declare [ept12]",
        )
    if vendor == "amd":
        _check_svm_threads(programs, err)
        return
    if not vpid:
        raise err(
            line,
            "nested VMX is modelled with VPID in L0 only",
            "set vpid = true in [config]",
        )
    for prog in programs:
        vmxon = l2 = launched = False
        vmcs12s: set[str] = set()
        if any(isinstance(op, VmptrldOp) for op in prog):
            mov = next((op for op in prog if isinstance(op, MovCr3Op)), None)
            if mov is not None:
                raise err(
                    mov.line,
                    "mov_cr3 in a thread with vmptrld: a vmcs12's GUEST_CR3 is its page table "
                    "in the model",
                    "drop the mov_cr3, or the vmptrld",
                )
        for op in prog:
            ln = getattr(op, "line", 0)
            if isinstance(op, VmxonOp):
                if vmxon:
                    raise err(ln, "vmxon in VMX operation fails (VMfailValid)", "drop it")
                vmxon = True
                launched = False
            elif isinstance(
                op, VmxoffOp | InvvpidOp | VmlaunchOp | VmresumeOp | VmptrldOp | InveptOp | EptMapOp
            ):
                if not vmxon:
                    raise err(ln, f"{op.describe()} outside VMX operation is #UD", "vmxon first")
                if l2:
                    raise err(
                        ln,
                        f"{op.describe()} while L2 runs (L1's instruction in L2's stream)",
                        "let L2 exit to L1 first: vmcall",
                    )
                if isinstance(op, VmxoffOp):
                    vmxon = False
                    vmcs12s.clear()
                elif isinstance(op, VmlaunchOp):
                    l2 = launched = True
                    vmcs12s.add(op.root)
                elif isinstance(op, VmptrldOp):
                    if op.root not in vmcs12s:
                        raise err(
                            ln,
                            f"vmptrld {op.root}: no vmcs12 was launched on {op.root} since the "
                            "last vmxon",
                            f"vmlaunch {op.root} first (a vmptrld makes a launched vmcs12 "
                            "current again)",
                        )
                elif isinstance(op, VmresumeOp):
                    if not launched:
                        raise err(ln, "vmresume of a vmcs12 never launched", "vmlaunch first")
                    l2 = True
            elif isinstance(op, VmcallOp):
                if not l2:
                    raise err(ln, "vmcall outside L2", "vmlaunch or vmresume first")
                l2 = False
            elif l2:
                _check_l2_op(op, err)


__all__ = [
    "L1_OP_WORDS",
    "NESTED_OPS",
    "check_nested",
    "is_nested",
    "l2_flush_ops",
    "parse_l1_op",
    "resolve_vmptrld",
]
