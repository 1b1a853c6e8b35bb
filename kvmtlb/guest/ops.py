"""The guest kernel's operations, as a scenario's vCPU threads list them (scenario-format.md)."""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

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


class MapOp(NamedTuple):
    gva: int
    gpa: int
    flags: str  # subset of "wuxg"
    line: int = 0

    def describe(self) -> str:
        return f"map {self.gva:#x} -> {self.gpa:#x} {self.flags}".rstrip()


class UnmapOp(NamedTuple):
    gva: int
    line: int = 0

    def describe(self) -> str:
        return f"unmap {self.gva:#x}"


class InvlpgOp(NamedTuple):
    gva: int
    line: int = 0

    def describe(self) -> str:
        return f"invlpg {self.gva:#x}"


class MovCr3Op(NamedTuple):
    pcid: int  # -1: keep the current PCID
    noflush: bool
    line: int = 0

    def describe(self) -> str:
        p = f" pcid={self.pcid}" if self.pcid >= 0 else ""
        return f"mov_cr3{p}{' noflush' if self.noflush else ''}"


class SetCr4Op(NamedTuple):
    bit: str  # "pge" | "pcide" | "smep"
    value: int
    line: int = 0

    def describe(self) -> str:
        return f"set_cr4 {self.bit}={self.value}"


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


GuestOp: TypeAlias = (
    AccessOp
    | MapOp
    | UnmapOp
    | InvlpgOp
    | MovCr3Op
    | SetCr4Op
    | InvpcidOp
    | FlushTlbOp
    | EmulatedReadOp
)
