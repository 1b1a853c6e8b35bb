"""The guest kernel's operations, as a scenario's vCPU threads list them (scenario-format.md)."""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

from kvmtlb.hw.addr import region

FLUSH_PAGE = 0  # the local flush is INVLPG GVA
FLUSH_MM = 1  # a CR3 reload that keeps global entries
FLUSH_ALL = 2  # a flush including global entries (INVPCID type 2, or a CR4.PGE toggle)
FLUSH_NAMES = {FLUSH_PAGE: "page", FLUSH_MM: "mm", FLUSH_ALL: "all"}


class AccessOp(NamedTuple):
    kind: str  # "read" | "write" | "exec"
    gva: int
    line: int = 0

    def describe(self) -> str:
        return f"{self.kind} {self.gva:#x}"


DEFAULT_ROOT = "default"  # the page table of the plain [guest] table


class MapOp(NamedTuple):
    gva: int
    gpa: int
    flags: str  # subset of "wuxg"
    line: int = 0
    root: str = DEFAULT_ROOT  # the page table written ([guest] or [guest.NAME])
    emulated: bool = False  # KVM's emulator does the store (kvm_mmu_track_write follows)
    # a 2 MiB guest page: the store writes the PDE of GVA's region with PS = 1 (GVA and GPA
    # 2 MiB aligned)
    huge: bool = False

    def describe(self) -> str:
        e = " emulated" if self.emulated else ""
        h = " 2m" if self.huge else ""
        return f"map {self.gva:#x} -> {self.gpa:#x} {self.flags}{h}{_root(self.root)}{e}".rstrip()


class UnmapOp(NamedTuple):
    gva: int
    line: int = 0
    root: str = DEFAULT_ROOT
    emulated: bool = False
    huge: bool = False  # clear the PDE of a 2 MiB guest page (GVA 2 MiB aligned)

    def describe(self) -> str:
        h = " 2m" if self.huge else ""
        return f"unmap {self.gva:#x}{h}{_root(self.root)}{' emulated' if self.emulated else ''}"


class LinkOp(NamedTuple):
    """A store to a non-leaf guest entry of page table `root`: at `level` 2 the PDE of the GVA's
    2 MiB region, at 3 the PDPTE of its 1 GiB region, at 4 its PML4E, now points at page table
    `target`'s table page one level down for that region (a table page shared between page
    tables; `target == root` restores its own)."""

    gva: int
    target: str
    line: int = 0
    root: str = DEFAULT_ROOT
    level: int = 2

    def describe(self) -> str:
        return f"link {self.gva:#x} -> {self.target}{_root(self.root)}{_level(self.level)}"


class UnlinkOp(NamedTuple):
    """A store that clears a non-leaf entry of page table `root` (the PDE of the GVA's 2 MiB
    region, or at `level` 3 or 4 its PDPTE or PML4E): the whole table below it is unmapped."""

    gva: int
    line: int = 0
    root: str = DEFAULT_ROOT
    level: int = 2

    def describe(self) -> str:
        return f"unlink {self.gva:#x}{_root(self.root)}{_level(self.level)}"


def link_value(
    ptrs: dict[tuple[int, int, int], int], root_names: tuple[str, ...], op: LinkOp | UnlinkOp
) -> int:
    """The entry a `link` or `unlink` stores: a pointer to the target page table's table page one
    level down (`ptrs` is KvmConfig.guest_ptr), or 0."""
    if isinstance(op, UnlinkOp):
        return 0
    return ptrs[(root_names.index(op.target), op.level, region(op.gva, op.level))]


def _level(level: int) -> str:
    return "" if level == 2 else f" level={level}"


def _root(name: str) -> str:
    return "" if name == DEFAULT_ROOT else f" root={name}"


class InvlpgOp(NamedTuple):
    gva: int
    line: int = 0

    def describe(self) -> str:
        return f"invlpg {self.gva:#x}"


class MovCr3Op(NamedTuple):
    pcid: int  # -1: keep the current PCID
    noflush: bool
    line: int = 0
    root: str = ""  # the page table loaded ("": the current one)
    emulated: bool = False  # KVM's emulator runs it (x86_emulate_instruction), not the CPU

    def describe(self) -> str:
        r = f" {self.root}" if self.root else ""
        p = f" pcid={self.pcid}" if self.pcid >= 0 else ""
        e = " emulated" if self.emulated else ""
        return f"mov_cr3{r}{p}{' noflush' if self.noflush else ''}{e}"


class SetCr4Op(NamedTuple):
    bit: str  # "pge" | "pcide" | "smep"
    value: int
    line: int = 0

    def describe(self) -> str:
        return f"set_cr4 {self.bit}={self.value}"


class SetCr0Op(NamedTuple):
    bit: str  # "wp"
    value: int
    line: int = 0

    def describe(self) -> str:
        return f"set_cr0 {self.bit}={self.value}"


class InvpcidOp(NamedTuple):
    type: int
    pcid: int
    gva: int
    line: int = 0

    def describe(self) -> str:
        return f"invpcid {self.type} pcid={self.pcid}" + (f" {self.gva:#x}" if self.gva else "")


class FlushTlbOp(NamedTuple):
    scope: int  # FLUSH_PAGE | FLUSH_MM | FLUSH_ALL
    gva: int
    targets: tuple[int, ...]  # vCPU ids, ascending, never the issuer
    line: int = 0

    def describe(self) -> str:
        what = f"{self.gva:#x}" if self.scope == FLUSH_PAGE else FLUSH_NAMES[self.scope]
        return f"flush_tlb {what} -> " + (
            ",".join(f"vcpu{t}" for t in self.targets) or "no other vCPU"
        )


class EmulatedReadOp(NamedTuple):
    gva: int
    line: int = 0

    def describe(self) -> str:
        return f"emulated_read {self.gva:#x}"


# L1's VMX instructions (a guest that runs a nested guest; kvmtlb.guest.l1_ops).
from kvmtlb.guest.l1_ops import L1Op  # noqa: E402

GuestOp: TypeAlias = (
    AccessOp
    | MapOp
    | UnmapOp
    | LinkOp
    | UnlinkOp
    | InvlpgOp
    | MovCr3Op
    | SetCr4Op
    | SetCr0Op
    | InvpcidOp
    | FlushTlbOp
    | EmulatedReadOp
    | L1Op
)
