"""Scenario files (format 1, ../shared/reference/scenario-format.md): parsing and validation.

Every input error raises `ScenarioError`, whose message names the file, the line and the fix; the
CLI turns it into exit code 2. Besides the contract's checks, ops the ISA forbids statically are
rejected (INVPCID types 0/1 with a non-zero PCID or MOV to CR3 no-flush while the issuing vCPU's
CR4.PCIDE is off, an `exec` of a GVA that is never mapped executable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from kvmtlb.errors import InputFileError
from kvmtlb.guest.l1_ops import EptMapOp, NptMapOp
from kvmtlb.guest.ops import (
    DEFAULT_ROOT,
    FLUSH_ALL,
    FLUSH_MM,
    FLUSH_PAGE,
    AccessOp,
    EmulatedReadOp,
    FlushTlbOp,
    GuestOp,
    InvlpgOp,
    InvpcidOp,
    LinkOp,
    MapOp,
    MovCr3Op,
    SetCr0Op,
    SetCr4Op,
    UnlinkOp,
    UnmapOp,
)
from kvmtlb.host.ops import (
    AgeOp,
    ClearDirtyLogOp,
    CollapseOp,
    CreateVcpuOp,
    DeleteMemslotOp,
    DestroyVmOp,
    FlushRemoteOp,
    HostOp,
    MoveMemslotOp,
    PreemptOp,
    RecoverNxOp,
    RemapOp,
    ResumeOp,
    SetSregsOp,
    SpawnOp,
    WrprotectOp,
    ZapAllFastOp,
    ZapGfnRangeOp,
    ZapOp,
)
from kvmtlb.hw.vmx import INVALIDATION_CAP_NAMES
from kvmtlb.model.nested_scenario import check_nested, is_nested, parse_l1_op, resolve_vmptrld
from kvmtlb.tomlfile import Lines, check_header, loads, read, shown

LIMIT = 1 << 32
DEFAULT_EPT12 = "default"  # how the ops name the [ept12] table (`ept=default`)
ROOT_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
FLUSH_ORDERS = ("local-first", "concurrent")
MAX_ROOTS = 4  # guest page tables per scenario, [guest] included
CAP_NAMES = INVALIDATION_CAP_NAMES
PROPERTIES = ("guest-transparency", "host-isolation", "dirty-logging", "vm-isolation")
# The parser's tables: what a file may say. docs/scenarios.md documents each entry, and
# tests/test_scenarios_doc.py checks that the guide and these tables agree.
TOP_LEVEL = (
    "config",
    "doc",
    "ept12",
    "expect",
    "guest",
    "host",
    "name",
    "npt12",
    "placement",
    "schedule",
    "tables",
    "threads",
    "vm1",
)
# The second VM's table [vm1] (kvm/vm.py): its vCPUs, guest page table and EPT/NPT. Its page
# table is the guest page table named VM1_ROOT among Scenario.roots.
VM1_KEYS = ("vcpus", "guest", "host")
VM1_ROOT = "vm1"
# The ops a scenario with a second VM may use (the others act on one VM's memory or vCPUs as a
# whole, and the model keeps one VM's worth of that state).
VM2_GUEST_OPS = ("read", "write", "exec", "invlpg", "map", "unmap")
VM2_HOST_OPS = ("preempt", "resume", "create", "destroy")
CONFIG_KEYS: dict[str, type] = {
    "vendor": str,
    "tdp": bool,
    "vpid": bool,
    "flush_by_asid": bool,
    "pcid": bool,
    "pge": bool,
    "pv_tlb_flush": bool,
    "pcpus": int,
    "vcpus": int,
    "vpids": int,
    "max_asid": int,
    "ept_vpid_cap": list,
    "unrestricted_guest": bool,
    "ept_ad": bool,
    "pml": bool,
    "flush_order": str,
    "hv_range_flush": bool,
    "tdp_mmu": bool,
    "eager_split": bool,
}
# Knobs of KVM's EPT/NPT MMU: meaningless with shadow paging (tdp = false).
TDP_ONLY = ("hv_range_flush", "tdp_mmu", "eager_split")
HUGE = 1 << 21  # a 2 MiB region of [host] ("HPA RIGHTS 2m"; kvm/hugepage.py)
# The host ops a scenario with a 2 MiB region may run on the region's frames (kvm/hugepage.py
# ports these paths for huge SPTEs), and the ops it may not run at all.
HUGE_HOST_OPS = ("zap", "wrprotect", "collapse")
HUGE_FORBIDDEN = ("zap_all_fast", "delete_memslot", "move_memslot")
# A [host] value for a GPA with no memory (no memslot) at the start: the destination of a
# `move_memslot` (its HPA is NO_MEMORY until the move installs the slot there).
NO_MEMORY_VALUE = "none"
NO_MEMORY = -1
# Upper limits of the knobs besides vcpus and pcpus (at most 8 each).
LIMITS = (
    ("vpids", 1 << 16, "VPIDs are 16 bits: KVM's bitmap has VMX_NR_VPIDS = 65,536"),
    ("max_asid", 1 << 20, "real processors have at most 32,767"),
)
MAX_MOVES = 4  # [schedule]: times the scheduler may move one vCPU
MAX_ZAPS = 16  # zaps of one guest frame (each takes a fresh host page from the frame's pool)
MAX_FAST_ZAPS = 3  # zap_all_fast ops of a scenario (each may need one more EPT/NPT root page)
INTEL_ONLY = ("vpid", "vpids", "ept_vpid_cap", "unrestricted_guest", "ept_ad", "pml")
AMD_ONLY = ("flush_by_asid", "max_asid")
GUEST_OPS = {
    "read": "read GVA",
    "write": "write GVA",
    "exec": "exec GVA",
    "map": "map GVA -> GPA FLAGS [2m] [root=NAME] [emulated]",
    "unmap": "unmap GVA [2m] [root=NAME] [emulated]",
    "link": "link GVA -> TABLE [root=NAME] [level=N]",
    "unlink": "unlink GVA [root=NAME] [level=N]",
    "invlpg": "invlpg GVA",
    "mov_cr3": "mov_cr3 [ROOT] [pcid=N] [noflush] [emulated]",
    "set_cr4": "set_cr4 pge=0|1 | pcide=0|1 | smep=0|1",
    "set_cr0": "set_cr0 wp=0|1",
    "invpcid": "invpcid TYPE [pcid=N] [GVA]",
    "flush_tlb": "flush_tlb GVA|mm|all others|all|vcpuN,...",
    "emulated_read": "emulated_read GVA",
}
# set_cr4 / set_cr0: the bits the model's guest changes, the usage and the fix of a bad argument
CR_WRITES = {
    "set_cr4": (
        ("pge", "pcide", "smep"),
        "pge=0|1, pcide=0|1 or smep=0|1",
        "write: set_cr4 pge=0 (or pge=1, pcide=0, pcide=1, smep=0, smep=1)",
    ),
    "set_cr0": (("wp",), "wp=0|1", "write: set_cr0 wp=0 (or wp=1): the model changes CR0.WP only"),
}
HOST_OPS = {
    "preempt": "preempt vcpuN",
    "resume": "resume vcpuN [on pcpuM]",
    "zap": "zap GPA",
    "remap": "remap GPA -> HPA",
    "wrprotect": "wrprotect GPA",
    "collapse": "collapse GPA",
    "flush_remote_tlbs": "flush_remote_tlbs",
    "zap_all_fast": "zap_all_fast",
    "zap_gfn_range": "zap_gfn_range GPA GPA",
    "age": "age GPA",
    "clear_dirty_log": "clear_dirty_log GPA",
    "recover_nx": "recover_nx",
    "spawn": "spawn flush_remote_tlbs | spawn zap_gfn_range GPA GPA | spawn recover_nx",
    "delete_memslot": "delete_memslot GPA",
    "move_memslot": "move_memslot GPA -> GPA",
    "create": "create vcpuN [on pcpuM]",
    "destroy": "destroy vm0|vm1",
    "set_sregs": "set_sregs vcpuN [cr3=ROOT] [pcid=N] [pge=0|1] [smep=0|1]",
}
SET_SREGS_FIX = (
    "write: set_sregs vcpu0 cr3=b pcid=1 pge=0 smep=1 (each part optional; ROOT default or a "
    "[guest.NAME] table; CR4.PCIDE, CR0 and EFER are not written)"
)


class HostMap(dict[int, tuple[int, str]]):
    """[host]'s frames. A GPA inside a 2 MiB region ("HPA RIGHTS 2m") becomes a frame of the
    model the first time the file names it (membership adds it, with its 4 KiB piece of the
    region's host page): a region has 512 frames, and the model only tracks those it uses."""

    def __init__(
        self, frames: dict[int, tuple[int, str]], regions: dict[int, tuple[int, str]]
    ) -> None:
        super().__init__(frames)
        self.regions = regions

    def __contains__(self, gpa: object) -> bool:
        if dict.__contains__(self, gpa):
            return True
        if not isinstance(gpa, int) or gpa & 0xFFF:
            return False
        base = gpa & ~(HUGE - 1)
        if base not in self.regions:
            return False
        hpa, rights = self.regions[base]
        self[gpa] = (hpa + gpa - base, rights)
        return True


class ScenarioError(InputFileError):
    """An input error in a scenario file: the file, the line (0 if unknown) and the fix."""


@dataclass(frozen=True)
class Config:
    vendor: str
    tdp: bool = True
    vpid: bool = True
    flush_by_asid: bool = True
    pcid: bool = False
    pge: bool = True
    pv_tlb_flush: bool = False
    pcpus: int = 2
    vcpus: int = 2
    vpids: int = 4096
    max_asid: int = 16
    ept_vpid_cap: tuple[str, ...] = CAP_NAMES
    unrestricted_guest: bool = True
    flush_order: str = "local-first"  # the guest kernel's shootdown: see kvmtlb.guest.thread
    ept_ad: bool = True  # Intel: EPT accessed/dirty bits (enable_ept_ad_bits); else access tracking
    pml: bool = False  # Intel: dirty logging by EPT dirty flags and PML (kvm/pml.py)
    # KVM as a guest of Hyper-V with the enlightened remote TLB flush (kvm/hyperv.py)
    hv_range_flush: bool = False
    tdp_mmu: bool = True  # v6.18's tdp_mmu module parameter (false: the shadow MMU's rmaps)
    eager_split: bool = True  # v6.18's eager_page_split module parameter

    def label(self) -> str:
        """A short name for the configuration (for --matrix and reports)."""
        parts = [self.vendor, "tdp" if self.tdp else "shadow"]
        if self.vendor == "intel":
            parts.append("vpid" if self.vpid else "novpid")
        else:
            parts.append("flushbyasid" if self.flush_by_asid else "noflushbyasid")
        parts.append("pcid" if self.pcid else "nopcid")
        parts.append("pv" if self.pv_tlb_flush else "nopv")
        return "/".join(parts)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "vendor": self.vendor,
            "tdp": self.tdp,
            "pcid": self.pcid,
            "pge": self.pge,
            "pv_tlb_flush": self.pv_tlb_flush,
            "pcpus": self.pcpus,
            "vcpus": self.vcpus,
            "flush_order": self.flush_order,
        }
        for key, default in (("hv_range_flush", False), ("tdp_mmu", True), ("eager_split", True)):
            if getattr(self, key) != default:
                d[key] = getattr(self, key)
        if self.vendor == "intel":
            d.update(
                vpid=self.vpid,
                vpids=self.vpids,
                ept_vpid_cap=list(self.ept_vpid_cap),
                unrestricted_guest=self.unrestricted_guest,
                ept_ad=self.ept_ad,
            )
            if self.pml:
                d["pml"] = True
        else:
            d.update(flush_by_asid=self.flush_by_asid, max_asid=self.max_asid)
        return d


@dataclass(frozen=True)
class Scenario:
    path: str
    name: str
    doc: str
    config: Config
    guest: dict[int, tuple[int, str]]  # GVA -> (GPA, flags)
    host: dict[int, tuple[int, str]]  # GPA -> (HPA, rights)
    placement: tuple[int, ...]  # vCPU -> pCPU
    programs: tuple[tuple[GuestOp, ...], ...]  # per vCPU
    host_program: tuple[HostOp, ...]
    expect: dict[str, str] = field(default_factory=dict)
    text: str = ""
    # Further guest page tables ([guest.NAME]): name -> GVA -> (GPA, flags). The plain [guest]
    # table is the page table named DEFAULT_ROOT, which CR3 points at when the vCPUs start.
    roots: dict[str, dict[int, tuple[int, str]]] = field(default_factory=dict)
    # [tables]: page-table name -> the guest frame holding its last-level table page of the
    # first 2 MiB region (shadow paging: the guest stores to it through its own mappings)
    tables: dict[str, int] = field(default_factory=dict)
    # [schedule]: per vCPU, how many times the scheduler may put it and load it again on any
    # pCPU (empty: no such scheduler; only the host program and time-sharing move vCPUs)
    schedule: tuple[int, ...] = ()
    # A second VM ([vm1]): its vCPUs and its guest frames (in `host` too); its page table is
    # roots[VM1_ROOT]. Empty with one VM.
    vm1: tuple[int, ...] = ()
    vm1_gpas: tuple[int, ...] = ()
    # Nested EPT ([ept12]): L1's EPT12, L2 GPA -> (L1 GPA, rights); empty without nested EPT
    ept12: dict[int, tuple[int, str]] = field(default_factory=dict)
    # 2 MiB regions of [host] ("HPA RIGHTS 2m"): region GPA -> (HPA, rights). Their frames that
    # the file names are in `host` too (each with its 4 KiB piece of the region's host page).
    huge: dict[int, tuple[int, str]] = field(default_factory=dict)
    # 2 MiB guest pages ("GPA FLAGS 2m" in [guest], `map ... 2m`): (page-table name, GVA of the
    # 2 MiB region) for every region whose PDE the file maps with PS = 1 (then never 4 KiB)
    guest_huge: frozenset[tuple[str, int]] = frozenset()
    # The 2 MiB regions of `huge` declared "HPA RIGHTS 2m nx": split by an exec fault, their
    # 4 KiB tables possible NX huge pages (kvm/hugepage.py)
    nx_huge: frozenset[int] = frozenset()
    # Nested NPT ([npt12]): L1's NPT12, L2 GPA -> (L1 GPA, rights); empty without nested NPT
    npt12: dict[int, tuple[int, str]] = field(default_factory=dict)
    # Further EPT12 tables ([ept12.NAME], vmcs12 EPTPs of their own), in file order: (name,
    # L2 GPA -> (L1 GPA, rights)); the ops name [ept12] itself `default`
    ept12_named: tuple[tuple[str, dict[int, tuple[int, str]]], ...] = ()

    @property
    def ept12_tables(self) -> tuple[dict[int, tuple[int, str]], ...]:
        """The EPT12 tables by index: [ept12], then the [ept12.NAME] tables (empty: none)."""
        if not self.ept12:
            return ()
        return (self.ept12, *(t for _, t in self.ept12_named))

    def huge_gva(self, gva: int, root: str | None = None) -> bool:
        """Whether `gva` lies in a 2 MiB guest page of page table `root` (any, if None)."""
        base = gva & ~(HUGE - 1)
        return any(b == base and root in (None, r) for r, b in self.guest_huge)

    @property
    def root_names(self) -> tuple[str, ...]:
        return (DEFAULT_ROOT, *self.roots)

    def root_map(self, name: str) -> dict[int, tuple[int, str]]:
        return self.guest if name == DEFAULT_ROOT else self.roots[name]

    @cached_property
    def gvas(self) -> tuple[int, ...]:
        """Every GVA the scenario names, in order of first mention."""
        seen: dict[int, None] = dict.fromkeys(self.guest)
        for table in self.roots.values():
            for gva in table:
                seen.setdefault(gva)
        for prog in self.programs:
            for op in prog:
                # GVA 0 is a page like any other; only a flush of the mm or of everything, and
                # INVPCID types 1 to 3, carry no GVA.
                if isinstance(op, FlushTlbOp):
                    if op.scope == FLUSH_PAGE:
                        seen.setdefault(op.gva)
                elif isinstance(op, InvpcidOp):
                    if op.type == 0:
                        seen.setdefault(op.gva)
                elif isinstance(
                    op, AccessOp | MapOp | UnmapOp | LinkOp | UnlinkOp | InvlpgOp | EmulatedReadOp
                ):
                    seen.setdefault(op.gva)
        return tuple(seen)

    @property
    def gpas(self) -> tuple[int, ...]:
        return tuple(self.host)

    def with_config(self, config: Config) -> Scenario:
        return Scenario(
            self.path,
            self.name,
            self.doc,
            config,
            self.guest,
            self.host,
            self.placement,
            self.programs,
            self.host_program,
            self.expect,
            self.text,
            self.roots,
            self.tables,
            self.schedule,
            self.vm1,
            self.vm1_gpas,
            self.ept12,
            self.huge,
            self.guest_huge,
            self.nx_huge,
            self.npt12,
            self.ept12_named,
        )


def load(path: str | Path, known_policies: set[str] | None = None) -> Scenario:
    """Read and validate a scenario file."""
    p = str(path)
    text = read(
        path, lambda line, message, fix: ScenarioError(p, line, message, fix), "a scenario file"
    )
    return parse(text, p, known_policies)


def reconfigure(s: Scenario, config: Config) -> Scenario:
    """`s` under another configuration (--matrix, replay): the file's data with its [config]
    replaced by `config`, validated again, so ops the new configuration does not allow raise
    ScenarioError. The file's text is not rewritten: its [config] may be an inline table or
    dotted keys, and its strings may hold any character."""

    def err(line: int, message: str, fix: str) -> ScenarioError:
        return ScenarioError(s.path, line, message, fix)

    data = loads(s.text, err, "fix the TOML syntax (see scenario-format.md)")
    data["config"] = config.as_dict()
    return _Parser(s.path, Lines(s.text), data, s.text, None).scenario()


def parse(text: str, path: str = "<scenario>", known_policies: set[str] | None = None) -> Scenario:
    data = loads(
        text,
        lambda line, message, fix: ScenarioError(path, line, message, fix),
        "fix the TOML syntax (see scenario-format.md)",
    )
    return _Parser(path, Lines(text), data, text, known_policies).scenario()


class _Parser:
    def __init__(
        self, path: str, lines: Lines, data: dict[str, Any], text: str, known: set[str] | None
    ) -> None:
        self.path = path
        self.lines = lines
        self.data = data
        self.text = text
        self.known = known
        self.zaps: dict[int, int] = {}  # zaps per GPA so far
        self.ept12: dict[int, tuple[int, str]] = {}  # [ept12], parsed before the threads
        self.npt12: dict[int, tuple[int, str]] = {}  # [npt12], likewise
        self.ept12_named: dict[str, dict[int, tuple[int, str]]] = {}  # [ept12.NAME]
        self.fast_zaps = 0  # zap_all_fast ops so far
        self.no_memory: dict[int, int] = {}  # [host]'s "none" GPAs -> their line
        self.moved_to: dict[int, int] = {}  # move_memslot destination -> source, so far
        self.huge_regions: dict[int, tuple[int, str]] = {}  # [host]'s 2 MiB regions
        self.nx_regions: set[int] = set()  # those of them declared "2m nx"
        # 2 MiB guest pages: (page-table name, GVA region) -> the line that first maps it 2m
        self.guest_huge: dict[tuple[str, int], int] = {}

    def err(self, line: int, message: str, fix: str) -> ScenarioError:
        return ScenarioError(self.path, line, message, fix)

    # -- top level ------------------------------------------------------------------------------
    def scenario(self) -> Scenario:
        name, doc = check_header(self.data, self.lines, TOP_LEVEL, self.err, "my-scenario")
        config = self.config()
        host = self.host_map()
        host = HostMap(host, self.huge_regions)
        self.ept12 = self.ept12_map(config, host)
        self.npt12 = self.npt12_map(config, host)
        for table in ("ept12", "npt12"):
            if table in self.data and self.huge_regions:
                raise self.err(
                    self.lines.section(table),
                    f"[{table}] (nested EPT/NPT) with 2 MiB regions in [host] is not modelled",
                    'map 4 KiB frames in [host] ("HPA RIGHTS", without 2m) in a nested '
                    "EPT/NPT scenario",
                )
        # L2's page tables name L2 GPAs (the keys of the EPT12 tables / [npt12]); L1's name L1
        # GPAs
        l2_table = {**self.l2_gpa_map(), **self.npt12}
        guest, roots = self.guest_map({**host, **l2_table} if l2_table else host)
        tables = self.tables(config, host, roots)
        vm1, vm1_host = self.vm1(config, host, roots)
        placement = self.placement(config)
        schedule = self.schedule(config)
        # the frames of both VMs (disjoint); a 2 MiB region's frames join when an op names them
        both = HostMap({**host, **vm1_host}, self.huge_regions) if vm1_host else host
        programs, host_program = self.threads(config, guest, both, roots)
        if self.no_memory:
            self.move_checks(programs, host_program, vm1)
        if l2_table or (config.tdp and is_nested(programs)):
            self.ept_checks(programs, host_program, host)
            if vm1 or self.huge_regions:
                raise self.err(
                    self.lines.section("vm1" if vm1 else "host"),
                    "a nested guest on an EPT or NPT L0 with [vm1] or 2 MiB regions in [host] "
                    "is not modelled",
                    'remove [vm1], and map 4 KiB frames in [host] ("HPA RIGHTS", without 2m)',
                )
        if vm1 or any(isinstance(op, CreateVcpuOp | DestroyVmOp) for op in host_program):
            host_program = self.vm_checks(config, vm1, host, programs, host_program)
        if self.huge_regions or config.hv_range_flush:
            self.huge_checks(config, vm1, host_program)
        if config.pml and (self.huge_regions or self.ept12 or is_nested(programs)):
            raise self.err(
                self.lines.key("config", "pml"),
                "PML is modelled with 4 KiB frames and no nested guest",
                'map the frames 4 KiB at a time ("HPA RIGHTS", without 2m) and remove [ept12] '
                "and the nested ops, or remove pml",
            )
        moves = [op for op in host_program if isinstance(op, MoveMemslotOp)]
        if config.pml and moves:
            raise self.err(
                moves[0].line,
                "move_memslot is not modelled with PML (a moved slot's SPTEs have no dirty flag)",
                "remove the move, or remove pml",
            )
        self.nx_checks(programs, host_program)
        self.sregs_checks(config, vm1, programs, host_program)
        if self.guest_huge:
            self.guest_huge_checks(config, vm1, guest, roots, programs, both)
        expect = self.expect()
        return Scenario(
            self.path,
            name,
            doc,
            config,
            guest,
            both,
            placement,
            programs,
            host_program,
            expect,
            self.text,
            roots,
            tables,
            schedule,
            vm1,
            tuple(vm1_host),
            self.ept12,
            dict(self.huge_regions),
            frozenset(self.guest_huge),
            frozenset(self.nx_regions),
            self.npt12,
            tuple(self.ept12_named.items()),
        )

    def ept_checks(
        self,
        programs: tuple[tuple[GuestOp, ...], ...],
        host_program: tuple[HostOp, ...],
        host: dict[int, tuple[int, str]],
    ) -> None:
        """Nested EPT / NPT: L1's EPT12 / NPT12 stores name L1 GPAs of [host]; the host may zap,
        preempt and resume (the other host ops act on EPT01 / NPT01 only in the model:
        kvm/nested_ept.py, kvm/nested_ept01.py, kvm/nested_npt.py)."""
        for prog in programs:
            for op in prog:
                if isinstance(op, EptMapOp | NptMapOp) and op.l1gpa >= 0 and op.l1gpa not in host:
                    raise self.err(
                        op.line,
                        f"L1 GPA {op.l1gpa:#x} is not mapped in [host]",
                        f'add "{op.l1gpa:#x}" = "HPA rwx" to [host]',
                    )
        for hop in host_program:
            if not isinstance(hop, ZapOp | PreemptOp | ResumeOp | FlushRemoteOp):
                raise self.err(
                    getattr(hop, "line", 0),
                    f"{hop.describe()} is not modelled with nested EPT or NPT",
                    "keep the host to zap, preempt, resume and flush_remote_tlbs",
                )

    def ept12_map(
        self, config: Config, host: dict[int, tuple[int, str]]
    ) -> dict[int, tuple[int, str]]:
        """[ept12]: "L2GPA" = "L1GPA RIGHTS", L1's EPT12 (nested EPT, docs/scenarios.md), and its
        [ept12.NAME] subtables (into `ept12_named`)."""
        out: dict[int, tuple[int, str]] = {}
        if "ept12" not in self.data:
            return out
        line0 = self.lines.section("ept12")
        if config.vendor != "intel" or not config.tdp or not config.vpid:
            raise self.err(
                line0,
                "[ept12] (nested EPT) needs an Intel L0 with EPT and VPID",
                'set vendor = "intel", tdp = true and vpid = true in [config]',
            )
        table = self._table("ept12")
        for name, sub in table.items():
            if not isinstance(sub, dict):
                continue
            line = self.lines.nested("ept12", name)
            if name == DEFAULT_EPT12 or len(self.ept12_named) == 2:
                raise self.err(
                    line,
                    f"[ept12.{name}]: "
                    + (
                        "'default' names [ept12] itself"
                        if name == DEFAULT_EPT12
                        else "a fourth EPT12 table"
                    ),
                    "rename it"
                    if name == DEFAULT_EPT12
                    else "use at most [ept12] and two [ept12.NAME] tables",
                )
            self.ept12_named[name] = self.ept12_entries(sub, ("ept12", name), host, line)
        out = self.ept12_entries(
            {k: v for k, v in table.items() if not isinstance(v, dict)}, ("ept12",), host, line0
        )
        if not out:
            raise self.err(line0, "[ept12] maps nothing", '"0x40000" = "0x11000 rwx"')
        return out

    def npt12_map(
        self, config: Config, host: dict[int, tuple[int, str]]
    ) -> dict[int, tuple[int, str]]:
        """[npt12]: "L2GPA" = "L1GPA RIGHTS", L1's NPT12 (nested NPT), whose rights must include r
        (an NPT entry is readable once present)."""
        if "npt12" not in self.data:
            return {}
        line0 = self.lines.section("npt12")
        if config.vendor != "amd" or not config.tdp:
            raise self.err(
                line0,
                "[npt12] (nested NPT) needs an AMD L0 with NPT",
                'set vendor = "amd" and tdp = true in [config]',
            )
        out = self.ept12_entries(self._table("npt12"), ("npt12",), host, line0)
        if not out:
            raise self.err(line0, "[npt12] maps nothing", '"0x40000" = "0x11000 rwx"')
        return out

    def l2_gpa_map(self) -> dict[int, tuple[int, str]]:
        """Every L2 GPA of the EPT12 tables (what L2's page tables may name)."""
        out = dict(self.ept12)
        for table in self.ept12_named.values():
            for l2gpa, entry in table.items():
                out.setdefault(l2gpa, entry)
        return out

    def ept12_entries(
        self,
        table: dict[str, Any],
        path: tuple[str, ...],
        host: dict[int, tuple[int, str]],
        line0: int,
    ) -> dict[int, tuple[int, str]]:
        """The entries "L2GPA" = "L1GPA RIGHTS" of an EPT12 table (or of [npt12], whose rights
        must include r)."""
        npt = path[0] == "npt12"
        out: dict[int, tuple[int, str]] = {}
        for key, value in table.items():
            line = self.lines.nested(*path, key) if len(path) > 1 else self.lines.key(path[0], key)
            l2gpa = self.addr(key, line, "L2 GPA")
            parts = str(value).split()
            if (
                len(parts) != 2
                or not set(parts[1]) <= set("rwx")
                or ("w" in parts[1] and "r" not in parts[1])
                or (npt and "r" not in parts[1])
            ):
                raise self.err(
                    line,
                    f"bad {path[0].upper()} entry {shown(value)}",
                    (
                        'write "L1GPA RIGHTS" with rights r, rw, rx or rwx, e.g. "0x11000 rwx"'
                        if npt
                        else 'write "L1GPA RIGHTS" with rights from r, w, x (w needs r), e.g. '
                        '"0x11000 rwx"'
                    ),
                )
            l1gpa = self.addr(parts[0], line, "L1 GPA")
            if l1gpa not in host:
                raise self.err(
                    line,
                    f"L1 GPA {l1gpa:#x} of L2 GPA {l2gpa:#x} is not mapped in [host]",
                    f'add "{l1gpa:#x}" = "HPA rwx" to [host]',
                )
            if l2gpa in host:
                raise self.err(
                    line,
                    f"L2 GPA {l2gpa:#x} is also an L1 GPA of [host]",
                    "give L2's guest-physical pages addresses of their own",
                )
            out[l2gpa] = (l1gpa, parts[1])
        if not out and len(path) > 1:
            raise self.err(line0, f"[ept12.{path[1]}] maps nothing", '"0x40000" = "0x12000 rwx"')
        return out

    def _table(self, name: str) -> dict[str, Any]:
        t = self.data.get(name, {})
        if not isinstance(t, dict):
            raise self.err(
                self.lines.key(None, name), f"{name} must be a table", f"write it as [{name}]"
            )
        return t

    # -- [config] -------------------------------------------------------------------------------
    def config(self) -> Config:
        t = self._table("config")
        line = self.lines.section("config")
        if "config" not in self.data:
            raise self.err(0, "missing [config]", '[config]\nvendor = "intel"')
        kinds = CONFIG_KEYS
        for key, value in t.items():
            kl = self.lines.key("config", key)
            if key not in kinds:
                raise self.err(
                    kl, f"unknown config key {shown(key)}", f"use one of {', '.join(kinds)}"
                )
            if not isinstance(value, kinds[key]) or (kinds[key] is int and isinstance(value, bool)):
                raise self.err(
                    kl,
                    f"config {key} must be {kinds[key].__name__}",
                    f"give {key} a {kinds[key].__name__} value",
                )
        vendor = t.get("vendor")
        if vendor not in ("intel", "amd"):
            raise self.err(
                self.lines.key("config", "vendor") or line,
                f'vendor must be "intel" or "amd", not {shown(vendor)}',
                'set vendor = "intel" or vendor = "amd"',
            )
        for key in INTEL_ONLY if vendor == "amd" else AMD_ONLY:
            if key in t:
                raise self.err(
                    self.lines.key("config", key),
                    f"{key} does not apply to vendor {vendor}",
                    f"remove {key}, or set the other vendor",
                )
        for key, low in (("pcpus", 1), ("vcpus", 1), ("vpids", 1), ("max_asid", 1)):
            if key in t and t[key] < low:
                raise self.err(
                    self.lines.key("config", key),
                    f"{key} must be at least {low}",
                    f"set {key} = {low} or more",
                )
        for key, high in (("pcpus", 8), ("vcpus", 8)):
            if key in t and t[key] > high:
                raise self.err(
                    self.lines.key("config", key),
                    f"{key} above {high} is out of reach of an exhaustive search",
                    f"use {key} <= {high}",
                )
        for key, high, why in LIMITS:
            if key in t and t[key] > high:
                raise self.err(
                    self.lines.key("config", key),
                    f"{key} = {t[key]} is above the limit of {high:,} ({why})",
                    f"use {key} <= {high:,}",
                )
        caps = tuple(t.get("ept_vpid_cap", CAP_NAMES))
        for c in caps:
            if c not in CAP_NAMES:
                raise self.err(
                    self.lines.key("config", "ept_vpid_cap"),
                    f"unknown capability {shown(c)}",
                    f"use names from {list(CAP_NAMES)}",
                )
        tdp = t.get("tdp", True)
        flush_order = t.get("flush_order", "local-first")
        if flush_order not in FLUSH_ORDERS:
            raise self.err(
                self.lines.key("config", "flush_order"),
                f"unknown flush_order {shown(flush_order)}",
                'use "local-first" (Linux before v5.13) or "concurrent" (flush_tlb_multi)',
            )
        for key in TDP_ONLY:
            if key in t and not tdp:
                raise self.err(
                    self.lines.key("config", key),
                    f"{key} is a knob of KVM's EPT/NPT MMU, and this scenario has tdp = false",
                    f"remove {key}, or set tdp = true",
                )
        pml = t.get("pml", False)
        if pml and not (tdp and t.get("ept_ad", True)):
            raise self.err(
                self.lines.key("config", "pml"),
                "KVM uses PML only with EPT and EPT A/D flags (vmx_hardware_setup clears "
                "enable_pml without them)",
                "set tdp = true and ept_ad = true, or remove pml",
            )
        if vendor == "intel" and tdp and "invept-all" not in caps:
            raise self.err(
                self.lines.key("config", "ept_vpid_cap"),
                "KVM disables EPT without all-context INVEPT (vmx_hardware_setup): the VM would "
                "run with shadow paging, not with tdp = true",
                'keep "invept-all" in ept_vpid_cap, or set tdp = false',
            )
        return Config(
            vendor=vendor,
            tdp=tdp,
            vpid=t.get("vpid", True),
            flush_by_asid=t.get("flush_by_asid", True),
            pcid=t.get("pcid", False),
            pge=t.get("pge", True),
            pv_tlb_flush=t.get("pv_tlb_flush", False),
            pcpus=t.get("pcpus", 2),
            vcpus=t.get("vcpus", 2),
            vpids=t.get("vpids", 4096),
            max_asid=t.get("max_asid", 16),
            ept_vpid_cap=caps,
            unrestricted_guest=t.get("unrestricted_guest", True),
            flush_order=flush_order,
            ept_ad=t.get("ept_ad", True),
            pml=pml,
            hv_range_flush=t.get("hv_range_flush", False),
            tdp_mmu=t.get("tdp_mmu", True),
            eager_split=t.get("eager_split", True),
        )

    # -- addresses --------------------------------------------------------------------------------
    def addr(self, s: str, line: int, what: str) -> int:
        try:
            value = int(s, 16)
        except ValueError:
            raise self.err(
                line,
                f"{what} {shown(s)} is not a hex address",
                f'write the {what} as a 4 KiB-aligned hex page address, e.g. "0x1000"',
            ) from None
        if value & 0xFFF:
            raise self.err(
                line,
                f"{what} {s} is not 4 KiB aligned",
                f"use a page address (low 12 bits zero), e.g. {value & ~0xFFF:#x}",
            )
        if not 0 <= value < LIMIT:
            raise self.err(
                line,
                f"{what} {s} is outside the model's address space",
                "use a page below 4 GiB (0x100000000)",
            )
        return value

    def host_map(
        self,
        section: str = "host",
        table: dict[str, Any] | None = None,
        taken: frozenset[int] = frozenset(),
    ) -> dict[int, tuple[int, str]]:
        out: dict[int, tuple[int, str]] = {}
        hpas: set[int] = set(taken)
        for key, value in (self._table("host") if table is None else table).items():
            line = (
                self.lines.key("host", key)
                if section == "host"
                else self.lines.nested(*section.split("."), key)
            )
            gpa = self.addr(key, line, "GPA")
            parts = str(value).split()
            if parts == [NO_MEMORY_VALUE] and section == "host":
                # no memslot here yet: a move_memslot's destination (move_checks); the rights
                # become the moved slot's
                if gpa in out:
                    raise self.err(
                        line, f"GPA {gpa:#x} is mapped twice", "keep one mapping per GPA"
                    )
                self.no_memory[gpa] = line
                out[gpa] = (NO_MEMORY, "")
                continue
            huge = len(parts) in (3, 4) and parts[2] == "2m" and section == "host"
            nx = huge and len(parts) == 4 and parts[3] == "nx"
            if (
                len(parts) != 2 + huge + nx
                or not set(parts[1]) <= set("rwx")
                or "r" not in parts[1]
            ):
                raise self.err(
                    line,
                    f"bad host mapping {shown(value)}",
                    'write "HPA RIGHTS" with rights from r, w, x (r required), e.g. "0x80000 rwx"'
                    + (
                        '; a 2 MiB region: "0x400000 rwx 2m", split by an exec fault: '
                        '"0x400000 rwx 2m nx"; no memory (a move_memslot\'s destination): "none"'
                        if section == "host"
                        else ""
                    ),
                )
            hpa = self.addr(parts[0], line, "HPA")
            if huge:
                self.huge_region(gpa, hpa, parts[1], line, out, hpas)
                if nx:
                    self.nx_regions.add(gpa)
                continue
            for base, (rhpa, _) in self.huge_regions.items():
                if base <= gpa < base + HUGE or rhpa <= hpa < rhpa + HUGE:
                    raise self.err(
                        line,
                        f"{gpa:#x} -> {hpa:#x} overlaps the 2 MiB region at GPA {base:#x} "
                        f"(HPA {rhpa:#x})",
                        "give a 4 KiB mapping a GPA and an HPA outside every 2 MiB region",
                    )
            if hpa in hpas:
                raise self.err(
                    line, f"HPA {hpa:#x} backs two GPAs", "give every GPA its own host page"
                )
            hpas.add(hpa)
            if gpa in out:
                raise self.err(line, f"GPA {gpa:#x} is mapped twice", "keep one mapping per GPA")
            out[gpa] = (hpa, parts[1])
        if not out and section == "host":
            raise self.err(
                self.lines.section("host"),
                "no [host] mappings",
                'map at least one GPA, e.g. [host] "0x10000" = "0x80000 rwx"',
            )
        return out

    def huge_region(
        self,
        gpa: int,
        hpa: int,
        rights: str,
        line: int,
        out: dict[int, tuple[int, str]],
        hpas: set[int],
    ) -> None:
        """A [host] entry "HPA RIGHTS 2m": the 2 MiB region at GPA maps the 2 MiB host page at
        HPA with one huge EPT/NPT leaf. Its first frame is a frame of the model; any other
        frame of it becomes one when the file names it (`HostMap`)."""
        for addr, what in ((gpa, "GPA"), (hpa, "HPA")):
            if addr & (HUGE - 1):
                raise self.err(
                    line,
                    f"the 2 MiB region's {what} {addr:#x} is not 2 MiB aligned",
                    f"use a {what} whose low 21 bits are zero, e.g. {addr & ~(HUGE - 1):#x}",
                )
        if len(self.huge_regions) >= 2:
            raise self.err(line, "more than two 2 MiB regions", "map at most two regions 2m")
        for g, (h, _) in out.items():
            if gpa <= g < gpa + HUGE or hpa <= h < hpa + HUGE:
                raise self.err(
                    line,
                    f"the 2 MiB region {gpa:#x} -> {hpa:#x} overlaps {g:#x} -> {h:#x}",
                    "give the region a GPA and an HPA range no other mapping uses",
                )
        for base, (rhpa, _) in self.huge_regions.items():
            if abs(base - gpa) < HUGE or abs(rhpa - hpa) < HUGE:
                raise self.err(
                    line,
                    f"the 2 MiB region {gpa:#x} -> {hpa:#x} overlaps the one at {base:#x}",
                    "give each region its own GPA and HPA range",
                )
        self.huge_regions[gpa] = (hpa, rights)
        out[gpa] = (hpa, rights)
        hpas.add(hpa)

    def nx_checks(
        self, programs: tuple[tuple[GuestOp, ...], ...], program: tuple[HostOp, ...]
    ) -> None:
        """NX huge pages (kvm/hugepage.py): `recover_nx` needs a region declared "2m nx"; such a
        region starts split and no exec fault or dirty-logging-off collapse is modelled."""
        recover = next(
            (
                op
                for op in program
                if isinstance(op, RecoverNxOp)
                or (isinstance(op, SpawnOp) and isinstance(op.op, RecoverNxOp))
            ),
            None,
        )
        if recover is not None and not self.nx_regions:
            raise self.err(
                recover.line,
                "recover_nx: no 2 MiB region of [host] is split for NX (the recovery has nothing "
                "to zap)",
                'declare a region an exec fault split, e.g. "0x400000" = "0x800000 rwx 2m nx"',
            )
        if not self.nx_regions:
            return
        for op in program:
            if isinstance(op, CollapseOp):
                raise self.err(
                    op.line,
                    "collapse with a region declared nx is not modelled",
                    "remove the collapse, or drop nx from the region",
                )
        for prog in programs:
            for g in prog:
                if isinstance(g, AccessOp) and g.kind == "exec":
                    raise self.err(
                        g.line,
                        "exec with a region declared nx is not modelled (the exec fault that "
                        "splits a region for NX is not)",
                        "read or write instead, or drop nx from the region",
                    )

    def huge_checks(
        self, config: Config, vm1: tuple[int, ...], program: tuple[HostOp, ...]
    ) -> None:
        """What the model of 2 MiB regions and of Hyper-V's range flush asks of a file."""
        line = self.lines.section("host")
        if not config.tdp:
            raise self.err(
                line,
                "a 2 MiB region of [host] is an EPT/NPT mapping, and this scenario has tdp = false",
                'set tdp = true, or map the frames one by one ("HPA RIGHTS")',
            )
        if vm1:
            raise self.err(
                self.lines.section("vm1") or line,
                "2 MiB regions and hv_range_flush are modelled with one VM",
                "remove [vm1], or map the frames 4 KiB at a time and drop hv_range_flush",
            )
        for op in program:
            name = op.describe().split()[0]
            if name in HUGE_FORBIDDEN and self.huge_regions:
                raise self.err(
                    op.line,
                    f"{name} is not modelled with a 2 MiB region (the model keeps one root)",
                    f"remove {name}, or map the frames 4 KiB at a time",
                )
            inner = op.op if isinstance(op, SpawnOp) else op
            gpas = [
                g
                for g in (
                    getattr(inner, "gpa", None),
                    getattr(inner, "first", None),
                    getattr(inner, "second", None),
                )
                if g is not None
            ]
            in_region = [g for g in gpas if g & ~(HUGE - 1) in self.huge_regions]
            if isinstance(op, CollapseOp):
                if not in_region:
                    raise self.err(
                        op.line,
                        f"collapse {op.gpa:#x}: not a frame of a 2 MiB region",
                        'collapse a frame of a region mapped "HPA RIGHTS 2m" in [host]',
                    )
            elif in_region and name not in HUGE_HOST_OPS:
                raise self.err(
                    op.line,
                    f"{name} of a frame of a 2 MiB region is not modelled",
                    f"use {', '.join(HUGE_HOST_OPS)} on the region's frames",
                )

    def guest_map(
        self, host: dict[int, tuple[int, str]]
    ) -> tuple[dict[int, tuple[int, str]], dict[str, dict[int, tuple[int, str]]]]:
        """The default page table ([guest]) and the named ones ([guest.NAME])."""
        out: dict[int, tuple[int, str]] = {}
        roots: dict[str, dict[int, tuple[int, str]]] = {}
        for key, value in self._table("guest").items():
            if isinstance(value, dict):
                line = self.lines.nested("guest", key)
                if not ROOT_NAME.fullmatch(key) or key == DEFAULT_ROOT:
                    raise self.err(
                        line,
                        f"bad page-table name {shown(key)}",
                        "name it with lowercase letters, digits and dashes, starting with a "
                        f'letter, other than "{DEFAULT_ROOT}": [guest.b]',
                    )
                if len(roots) >= MAX_ROOTS - 1:
                    raise self.err(
                        line,
                        f"more than {MAX_ROOTS} guest page tables",
                        f"use at most {MAX_ROOTS - 1} [guest.NAME] tables",
                    )
                table: dict[int, tuple[int, str]] = {}
                for gkey, gvalue in value.items():
                    gline = self.lines.nested("guest", key, gkey)
                    self.guest_entry(gkey, gvalue, gline, host, table, key)
                roots[key] = table
                continue
            self.guest_entry(key, value, self.lines.key("guest", key), host, out, DEFAULT_ROOT)
        return out, roots

    def guest_entry(
        self,
        key: str,
        value: Any,
        line: int,
        host: dict[int, tuple[int, str]],
        out: dict[int, tuple[int, str]],
        root: str,
    ) -> None:
        gva = self.addr(key, line, "GVA")
        parts = str(value).split() if isinstance(value, str) else []
        if not parts:
            raise self.err(
                line,
                f"bad guest mapping {shown(value)}",
                'write "GPA FLAGS", flags from w, u, x, g, e.g. "0x10000 w"; a 2 MiB page: '
                '"0x400000 w 2m"',
            )
        gpa = self.addr(parts[0], line, "GPA")
        if "2m" in parts[1:]:
            parts.remove("2m")
            self.guest_huge_page(root, gva, gpa, line)
        flags = "".join(parts[1:])
        self.flags(flags, line)
        if gpa not in host:
            raise self.err(
                line,
                f"GPA {gpa:#x} of GVA {gva:#x} is not mapped in [host]",
                f'add "{gpa:#x}" = "HPA rwx" to [host]',
            )
        if gva in out:
            raise self.err(line, f"GVA {gva:#x} is mapped twice", "keep one mapping per GVA")
        out[gva] = (gpa, flags)

    def tables(
        self,
        config: Config,
        host: dict[int, tuple[int, str]],
        roots: dict[str, dict[int, tuple[int, str]]],
    ) -> dict[str, int]:
        """[tables]: NAME = "GPA", the guest frame that holds page table NAME's last-level table
        page for GVAs below 2 MiB (shadow paging only)."""
        out: dict[str, int] = {}
        for key, value in self._table("tables").items():
            line = self.lines.key("tables", key)
            if key != DEFAULT_ROOT and key not in roots:
                raise self.err(
                    line,
                    f"unknown page table {shown(key)}",
                    f'name "{DEFAULT_ROOT}" or a [guest.NAME] table: '
                    + ", ".join((DEFAULT_ROOT, *roots)),
                )
            if config.tdp:
                raise self.err(
                    line,
                    "[tables] needs shadow paging",
                    "set tdp = false (with EPT/NPT the guest's page-table stores are plain "
                    "writes KVM does not track)",
                )
            gpa = self.addr(str(value), line, "GPA")
            if gpa not in host:
                raise self.err(
                    line,
                    f"GPA {gpa:#x} of page table {key} is not mapped in [host]",
                    f'add "{gpa:#x}" = "HPA rw" to [host]',
                )
            if "w" not in host[gpa][1]:
                raise self.err(
                    line,
                    f"GPA {gpa:#x} holds a page table but its memslot is read-only",
                    f'map it writable in [host]: "{gpa:#x}" = "{host[gpa][0]:#x} rw"',
                )
            if gpa in out.values():
                raise self.err(
                    line, f"two page tables in GPA {gpa:#x}", "give each table its own frame"
                )
            out[key] = gpa
        return out

    # -- 2 MiB guest pages ------------------------------------------------------------------------
    def guest_huge_page(self, root: str, gva: int, gpa: int, line: int) -> None:
        """A 2 MiB guest page of page table `root` at GVA -> GPA: both 2 MiB aligned."""
        for addr, what in ((gva, "GVA"), (gpa, "GPA")):
            if addr & (HUGE - 1):
                raise self.err(
                    line,
                    f"the 2 MiB guest page's {what} {addr:#x} is not 2 MiB aligned",
                    f"use a {what} whose low 21 bits are zero, e.g. {addr & ~(HUGE - 1):#x}",
                )
        self.guest_huge.setdefault((root, gva), line)

    def huge_store(self, op: str, root: str, gva: int, gpa: int, line: int, emulated: bool) -> None:
        """`map GVA -> GPA FLAGS 2m` / `unmap GVA 2m`: a store to a 2 MiB page's PDE."""
        if emulated:
            raise self.err(
                line,
                f"{op} ... 2m emulated: an emulated store to a guest PDE is not modelled",
                f"drop emulated (the guest's own store), or {op} 4 KiB pages",
            )
        if gpa < 0:
            if gva & (HUGE - 1):
                raise self.err(
                    line,
                    f"unmap {gva:#x} 2m: the GVA is not 2 MiB aligned",
                    f"unmap the 2 MiB page at {gva & ~(HUGE - 1):#x}",
                )
            self.guest_huge.setdefault((root, gva), line)
            return
        self.guest_huge_page(root, gva, gpa, line)

    def guest_huge_checks(
        self,
        config: Config,
        vm1: tuple[int, ...],
        guest: dict[int, tuple[int, str]],
        roots: dict[str, dict[int, tuple[int, str]]],
        programs: tuple[tuple[GuestOp, ...], ...],
        host: dict[int, tuple[int, str]],
    ) -> None:
        """What the model of 2 MiB guest pages asks of a file: one VM, no nested guest and no
        [tables]; a region of a page table is mapped 2 MiB or 4 KiB, never both; every GVA
        the file names in a 2 MiB page maps, under every value of the page's PDE, a GPA of
        [host]."""
        line0 = min(self.guest_huge.values())
        if self.data.get("tables"):
            raise self.err(
                self.lines.section("tables") or line0,
                "[tables] with 2 MiB guest pages is not modelled",
                'remove [tables], or map the guest\'s pages 4 KiB at a time (without "2m")',
            )
        if vm1 or self.ept12 or self.npt12 or is_nested(programs):
            raise self.err(
                line0,
                "2 MiB guest pages are modelled with one VM and no nested guest",
                'remove [vm1], [ept12] and the nested ops, or map 4 KiB pages (without "2m")',
            )
        tables = {DEFAULT_ROOT: guest, **roots}
        targets: dict[tuple[str, int], list[int]] = {}  # region -> GPA bases it may map
        for name, table in tables.items():
            for gva, (gpa, _) in table.items():
                region = (name, gva & ~(HUGE - 1))
                if region not in self.guest_huge:
                    continue
                if gva & (HUGE - 1) or (name, gva) not in self.guest_huge:
                    line = self.entry_line(name, gva)
                    raise self.err(
                        line,
                        f"GVA {gva:#x} is mapped 4 KiB in the 2 MiB guest page at "
                        f"{region[1]:#x} of page table {name}",
                        "map the region either as one 2 MiB page or as 4 KiB pages",
                    )
                targets.setdefault(region, []).append(gpa)
        named: list[tuple[int, int]] = [(gva, self.entry_line(DEFAULT_ROOT, gva)) for gva in guest]
        for name, table in roots.items():
            named += [(gva, self.entry_line(name, gva)) for gva in table]
        for prog in programs:
            for op in prog:
                if isinstance(op, MapOp | UnmapOp):
                    region = (op.root, op.gva & ~(HUGE - 1))
                    if (region in self.guest_huge) != op.huge:
                        raise self.err(
                            op.line,
                            f"{op.describe()}: page table {op.root} maps the region at "
                            f"{region[1]:#x} as a 2 MiB page",
                            "map the region either as one 2 MiB page (every map/unmap of it "
                            'with "2m") or as 4 KiB pages',
                        )
                    if isinstance(op, MapOp) and op.huge:
                        targets.setdefault(region, []).append(op.gpa)
                if isinstance(op, LinkOp | UnlinkOp) and op.level == 2:
                    for name in (op.root, *([op.target] if isinstance(op, LinkOp) else [])):
                        if (name, op.gva & ~(HUGE - 1)) in self.guest_huge:
                            raise self.err(
                                op.line,
                                f"{op.describe()}: page table {name} maps that region as a 2 MiB "
                                "page (its PDE has no last-level table)",
                                "link 4 KiB regions only, or use level=3",
                            )
                named_gva = getattr(op, "gva", None)
                if isinstance(named_gva, int) and named_gva >= 0:
                    named.append((named_gva, op.line))
        for gva, line in named:
            for (name, base), gpas in targets.items():
                if gva & ~(HUGE - 1) != base:
                    continue
                for gpa in gpas:
                    frame = gpa + (gva & (HUGE - 1))
                    if frame not in host:
                        raise self.err(
                            line,
                            f"GVA {gva:#x} lies in the 2 MiB guest page at {base:#x} of page "
                            f"table {name}, which maps it to GPA {frame:#x}, and [host] does not "
                            "map that GPA",
                            f'add "{frame:#x}" = "HPA rwx" to [host] (or map a 2 MiB region '
                            'there: "HPA rwx 2m")',
                        )

    def entry_line(self, root: str, gva: int) -> int:
        """The line of page table `root`'s entry for `gva` (0 if the file has none)."""
        table = self._table("guest")
        keys = table if root == DEFAULT_ROOT else table.get(root, {})
        for key in keys:
            if (
                isinstance(key, str)
                and re.fullmatch(r"0x[0-9a-fA-F]+", key)
                and int(key, 16) == gva
            ):
                if root == DEFAULT_ROOT:
                    return self.lines.key("guest", key)
                return self.lines.nested("guest", root, key)
        return 0

    def flags(self, flags: str, line: int) -> None:
        if not set(flags) <= set("wuxg") or len(set(flags)) != len(flags):
            raise self.err(
                line,
                f"bad flags {shown(flags)}",
                "use each of w (writable), u (user), x (executable), g (global) at most once, "
                'separated by spaces or not ("w g" or "wg")',
            )

    # -- [vm1]: a second VM -----------------------------------------------------------------------
    def vm1(
        self,
        config: Config,
        host: dict[int, tuple[int, str]],
        roots: dict[str, dict[int, tuple[int, str]]],
    ) -> tuple[tuple[int, ...], dict[int, tuple[int, str]]]:
        """The second VM's vCPUs and EPT/NPT; its page table joins `roots` as VM1_ROOT."""
        if VM1_ROOT not in self.data:
            return (), {}
        t = self._table(VM1_ROOT)
        line = self.lines.section(VM1_ROOT)
        for key in t:
            if key not in VM1_KEYS:
                raise self.err(
                    self.lines.key(VM1_ROOT, key),
                    f"unknown [vm1] key {shown(key)}",
                    f"use one of {', '.join(VM1_KEYS)}",
                )
        if not config.tdp:
            raise self.err(
                line,
                "a second VM needs tdp = true (two VMs' shadow page tables are not modelled)",
                "set tdp = true, or remove [vm1]",
            )
        names = t.get("vcpus")
        vline = self.lines.key(VM1_ROOT, "vcpus")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise self.err(
                vline or line,
                "[vm1] needs vcpus, a list of the vCPUs of the second VM",
                'write vcpus = ["vcpu1"] in [vm1]',
            )
        vcpus = sorted({self.vcpu_id(n, vline, config) for n in names})
        if len(vcpus) != len(names):
            raise self.err(vline, "a vCPU is listed twice in [vm1] vcpus", "list each vCPU once")
        if len(vcpus) == config.vcpus:
            raise self.err(
                vline,
                "every vCPU is in [vm1]: the first VM has none",
                "leave at least one vCPU to the first VM, or raise config vcpus",
            )
        if VM1_ROOT in roots:
            raise self.err(
                self.lines.nested("guest", VM1_ROOT),
                f"[guest.{VM1_ROOT}] is the name of the second VM's page table",
                "rename the [guest.NAME] table",
            )
        for sub in ("guest", "host"):
            if not isinstance(t.get(sub, {}), dict):
                raise self.err(
                    self.lines.key(VM1_ROOT, sub) or line,
                    f"[vm1] {sub} must be a table",
                    f"write it as [vm1.{sub}]",
                )
        vm1_host = self.host_map(
            f"{VM1_ROOT}.host",
            t.get("host", {}),
            frozenset(h for h, _ in host.values()),
        )
        if not vm1_host:
            raise self.err(
                line,
                "no [vm1.host] mappings",
                'map at least one GPA of the second VM, e.g. [vm1.host] "0x20000" = "0x90000 rwx"',
            )
        for gpa in vm1_host:
            if gpa in host:
                raise self.err(
                    self.lines.nested(VM1_ROOT, "host", f"{gpa:#x}") or line,
                    f"GPA {gpa:#x} is a frame of both VMs",
                    "give the second VM its own GPAs (the model keeps the VMs' frames disjoint)",
                )
        if len(roots) >= MAX_ROOTS - 1:
            raise self.err(
                line,
                f"more than {MAX_ROOTS} guest page tables (the second VM's counts)",
                f"use at most {MAX_ROOTS - 2} [guest.NAME] tables with [vm1]",
            )
        table: dict[int, tuple[int, str]] = {}
        for gkey, gvalue in t.get("guest", {}).items():
            gline = self.lines.nested(VM1_ROOT, "guest", gkey)
            self.guest_entry(gkey, gvalue, gline, vm1_host, table, VM1_ROOT)
        roots[VM1_ROOT] = table
        return tuple(vcpus), vm1_host

    def vm_checks(
        self,
        config: Config,
        vm1: tuple[int, ...],
        host: dict[int, tuple[int, str]],
        programs: tuple[tuple[GuestOp, ...], ...],
        host_program: tuple[HostOp, ...],
    ) -> tuple[HostOp, ...]:
        """A scenario with a second VM: the ops it may use, each vCPU's ops on its own VM's page
        table and frames, and the order of `create` and `destroy`. Returns the host program with
        each `destroy` told its VM's vCPUs and their op counts."""
        for op in host_program:
            if isinstance(op, CreateVcpuOp | DestroyVmOp) and not vm1:
                raise self.err(
                    op.line,
                    f"{op.describe()} needs a second VM",
                    'declare it: [vm1] vcpus = ["vcpu1"], with [vm1.guest] and [vm1.host]',
                )
        for v, prog in enumerate(programs):
            mine = v in vm1
            for gop in prog:
                # the op's name in the file: MovCr3Op -> mov_cr3
                name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(gop).__name__[:-2]).lower()
                if isinstance(gop, AccessOp | InvlpgOp):
                    continue
                if isinstance(gop, MapOp | UnmapOp) and not mine and gop.root == DEFAULT_ROOT:
                    if isinstance(gop, MapOp) and gop.gpa not in host:
                        raise self.err(
                            gop.line,
                            f"GPA {gop.gpa:#x} is a frame of the second VM",
                            "map a GPA of the first VM's [host]",
                        )
                    continue
                what = "a vCPU of the second VM" if mine else "a scenario with two VMs"
                raise self.err(
                    gop.line,
                    f"{name} is not supported for {what}",
                    f"use {', '.join(VM2_GUEST_OPS[:4])}"
                    + ("" if mine else ", and map/unmap of the default page table"),
                )
        vm_vcpus = (tuple(v for v in range(config.vcpus) if v not in vm1), vm1)
        later = {op.vcpu for op in host_program if isinstance(op, CreateVcpuOp)}
        created: set[int] = set()
        destroyed: set[int] = set()
        out: list[HostOp] = []
        for op in host_program:
            if not isinstance(op, PreemptOp | ResumeOp | CreateVcpuOp | DestroyVmOp):
                raise self.err(
                    op.line,
                    f"{op.describe().split()[0]} is not supported in a scenario with two VMs",
                    f"use {', '.join(VM2_HOST_OPS)}",
                )
            if isinstance(op, DestroyVmOp):
                if op.vm in destroyed:
                    raise self.err(op.line, f"vm{op.vm} is destroyed twice", "destroy it once")
                destroyed.add(op.vm)
                vcpus = vm_vcpus[op.vm]
                op = op._replace(vcpus=vcpus, ops=tuple(len(programs[u]) for u in vcpus))
                out.append(op)
                continue
            v = op.vcpu
            if (1 if v in vm1 else 0) in destroyed:
                raise self.err(
                    op.line,
                    f"{op.describe()} after its VM was destroyed",
                    "move the op before the destroy",
                )
            if isinstance(op, CreateVcpuOp):
                if v not in vm1:
                    raise self.err(
                        op.line,
                        f"vcpu{v} belongs to the first VM, which exists with its vCPUs at start",
                        "create only vCPUs of the second VM ([vm1] vcpus)",
                    )
                if v in created:
                    raise self.err(op.line, f"vcpu{v} is created twice", "create it once")
                created.add(v)
            elif v in later and v not in created:
                raise self.err(
                    op.line, f"{op.describe()} before vcpu{v} is created", "create it first"
                )
            out.append(op)
        return tuple(out)

    def placement(self, config: Config) -> tuple[int, ...]:
        place = [v % config.pcpus for v in range(config.vcpus)]
        for key, value in self._table("placement").items():
            line = self.lines.key("placement", key)
            v = self.vcpu_id(key, line, config)
            place[v] = self.pcpu_id(str(value), line, config)
        return tuple(place)

    def schedule(self, config: Config) -> tuple[int, ...]:
        """[schedule]: `moves = K` (1..MAX_MOVES) and optionally `vcpus = ["vcpuN", ...]` (default
        every vCPU): the scheduler may put each of those vCPUs and load it again, on any pCPU, at
        most K times."""
        table = self._table("schedule")
        if not table:
            return ()
        for key in table:
            if key not in ("moves", "vcpus"):
                raise self.err(
                    self.lines.key("schedule", key),
                    f"unknown key {shown(key)} in [schedule]",
                    'use moves = K and, optionally, vcpus = ["vcpu1", ...]',
                )
        moves = table.get("moves")
        line = (
            self.lines.key("schedule", "moves")
            if "moves" in table
            else self.lines.section("schedule")
        )
        if isinstance(moves, bool) or not isinstance(moves, int) or not 1 <= moves <= MAX_MOVES:
            raise self.err(
                line,
                f"[schedule] moves must be a number from 1 to {MAX_MOVES}, not {shown(moves)}",
                "write moves = 1 (each vCPU may be moved once)",
            )
        which = table.get("vcpus", [f"vcpu{v}" for v in range(config.vcpus)])
        vline = self.lines.key("schedule", "vcpus") if "vcpus" in table else line
        if not isinstance(which, list) or not which:
            raise self.err(
                vline,
                f"[schedule] vcpus must be a non-empty list of vCPU names, not {shown(which)}",
                'write vcpus = ["vcpu1"]',
            )
        chosen: set[int] = set()
        for name in which:
            v = self.vcpu_id(str(name), vline, config)
            if v in chosen:
                raise self.err(vline, f"vcpu{v} is listed twice", "list each vCPU once")
            chosen.add(v)
        return tuple(moves if v in chosen else 0 for v in range(config.vcpus))

    def vcpu_id(self, s: str, line: int, config: Config) -> int:
        m = re.fullmatch(r"vcpu(\d+)", s)
        if not m or int(m.group(1)) >= config.vcpus:
            raise self.err(
                line,
                f"unknown vCPU {shown(s)}",
                f"use vcpu0 .. vcpu{config.vcpus - 1} (config vcpus = {config.vcpus})",
            )
        return int(m.group(1))

    def pcpu_id(self, s: str, line: int, config: Config) -> int:
        m = re.fullmatch(r"pcpu(\d+)", s)
        if not m or int(m.group(1)) >= config.pcpus:
            raise self.err(
                line,
                f"unknown pCPU {shown(s)}",
                f"use pcpu0 .. pcpu{config.pcpus - 1} (config pcpus = {config.pcpus})",
            )
        return int(m.group(1))

    # -- [threads] -------------------------------------------------------------------------------
    def threads(
        self,
        config: Config,
        guest: dict[int, tuple[int, str]],
        host: dict[int, tuple[int, str]],
        roots: dict[str, dict[int, tuple[int, str]]],
    ) -> tuple[tuple[tuple[GuestOp, ...], ...], tuple[HostOp, ...]]:
        programs: list[list[GuestOp]] = [[] for _ in range(config.vcpus)]
        host_ops: list[HostOp] = []
        remapped: set[int] = set()
        for key, value in self._table("threads").items():
            kline = self.lines.key("threads", key)
            if not isinstance(value, str):
                raise self.err(
                    kline,
                    f"thread {key} must be a string of ops",
                    f'{key} = """\\nread 0x1000\\n"""',
                )
            # The line of every character of the string, through escapes and continuations.
            where = self.lines.string_lines("threads", key, value)
            v = -1 if key == "host" else self.vcpu_id(key, kline, config)
            offset = 0
            for raw in value.split("\n"):
                start = offset
                offset += len(raw) + 1
                text = raw.split("#", 1)[0].strip()
                if not text:
                    continue
                first = start + len(raw) - len(raw.lstrip())
                line = where[first] if where is not None else kline
                if key == "host":
                    host_ops.append(self.host_op(text, line, config, host, remapped, roots))
                else:
                    l2_host = {**host, **self.l2_gpa_map(), **self.npt12}
                    programs[v].append(self.guest_op(text, line, config, l2_host, v, roots))
        self.static_checks(config, guest, programs, roots)
        return tuple(tuple(p) for p in programs), tuple(host_ops)

    def guest_op(
        self,
        text: str,
        line: int,
        config: Config,
        host: dict[int, tuple[int, str]],
        v: int,
        roots: dict[str, dict[int, tuple[int, str]]],
    ) -> GuestOp:
        words = text.replace("->", " -> ").split()
        op = words[0]
        args = words[1:]

        def need(n: int, usage: str) -> None:
            if len(args) != n:
                raise self.err(line, f"{op} takes {usage}", f"write: {op} {usage}")

        if op in ("read", "write", "exec"):
            need(1, "GVA")
            return AccessOp(op, self.addr(args[0], line, "GVA"), line)

        def root_arg() -> str:
            """A trailing root=NAME of map and unmap: the page table written."""
            if args and args[-1].startswith("root="):
                return self.root_name(args.pop()[5:], line, roots)
            return DEFAULT_ROOT

        def emulated_arg() -> bool:
            """A trailing `emulated` of map and unmap: KVM's emulator does the store."""
            if args and args[-1] == "emulated":
                args.pop()
                return True
            return False

        def huge_arg() -> bool:
            """A `2m` after map's FLAGS or unmap's GVA: the store writes a 2 MiB page's PDE."""
            if "2m" in args[1:]:
                args.remove("2m")
                return True
            return False

        if op == "map":
            emulated = emulated_arg()
            root = root_arg()
            huge = huge_arg()
            if len(args) < 3 or args[1] != "->":
                raise self.err(line, "map takes GVA -> GPA FLAGS", "write: map 0x1000 -> 0x12000 w")
            gpa = self.addr(args[2], line, "GPA")
            flags = "".join(args[3:])
            gva = self.addr(args[0], line, "GVA")
            if huge:
                self.huge_store(op, root, gva, gpa, line, emulated)
                self.flags(flags, line)
                return MapOp(gva, gpa, flags, line, root, emulated, True)
            self.flags(flags, line)
            if gpa not in host:
                raise self.err(
                    line,
                    f"GPA {gpa:#x} is not mapped in [host]",
                    f'add "{gpa:#x}" = "HPA rwx" to [host]',
                )
            return MapOp(gva, gpa, flags, line, root, emulated)
        if op == "unmap":
            emulated = emulated_arg()
            root = root_arg()
            huge = huge_arg()
            need(1, "GVA [2m] [root=NAME] [emulated]")
            gva = self.addr(args[0], line, "GVA")
            if huge:
                self.huge_store(op, root, gva, -1, line, emulated)
            return UnmapOp(gva, line, root, emulated, huge)

        def level_arg() -> int:
            """A trailing level=N of link and unlink (after root=NAME, if any): which entry."""
            root = args.pop() if args and args[-1].startswith("root=") else None
            level = 2
            if args and args[-1].startswith("level="):
                text = args.pop()[6:]
                if text not in ("2", "3", "4"):
                    raise self.err(
                        line,
                        f"level={text}: {op} writes a non-leaf entry, level 2, 3 or 4",
                        "write level=2 (the PDE, the default), level=3 (the PDPTE) or level=4 "
                        "(the PML4E)",
                    )
                level = int(text)
            if root is not None:
                args.append(root)
            return level

        if op == "link":
            level = level_arg()
            root = root_arg()
            if len(args) != 3 or args[1] != "->":
                raise self.err(
                    line,
                    "link takes GVA -> TABLE [root=NAME] [level=N]",
                    "write: link 0x1000 -> b (the PDE of 0x1000's 2 MiB region then points at "
                    "page table b's last-level table; level=3 the PDPTE, level=4 the PML4E)",
                )
            target = self.root_name(args[2], line, roots)
            return LinkOp(self.addr(args[0], line, "GVA"), target, line, root, level)
        if op == "unlink":
            level = level_arg()
            root = root_arg()
            need(1, "GVA [root=NAME] [level=N]")
            return UnlinkOp(self.addr(args[0], line, "GVA"), line, root, level)
        if op == "invlpg":
            need(1, "GVA")
            return InvlpgOp(self.addr(args[0], line, "GVA"), line)
        if op == "mov_cr3":
            pcid, noflush, root, emulated = -1, False, "", False
            for i, a in enumerate(args):
                if a == "noflush":
                    noflush = True
                elif a == "emulated":
                    emulated = True
                elif a.startswith("pcid="):
                    pcid = self.small(a[5:], line, "pcid", 4095)
                elif i == 0 and (a == DEFAULT_ROOT or a in roots):
                    root = a
                else:
                    names = ", ".join([DEFAULT_ROOT, *roots])
                    raise self.err(
                        line,
                        f"unknown mov_cr3 argument {shown(a)}",
                        "write: mov_cr3 [ROOT] [pcid=N] [noflush] [emulated], ROOT one of "
                        f"{names} (the page tables [guest] and [guest.NAME])",
                    )
            return MovCr3Op(pcid, noflush, line, root, emulated)
        if op in CR_WRITES:
            bits, usage, fix = CR_WRITES[op]
            need(1, usage)
            m = re.fullmatch(rf"({'|'.join(bits)})=([01])", args[0])
            if not m:
                raise self.err(line, f"bad {op} argument {shown(args[0])}", fix)
            cls = SetCr4Op if op == "set_cr4" else SetCr0Op
            return cls(m.group(1), int(m.group(2)), line)
        if op == "invpcid":
            if not args:
                raise self.err(
                    line, "invpcid takes TYPE [pcid=N] [GVA]", "write: invpcid 0 pcid=0 0x1000"
                )
            t = self.small(args[0], line, "INVPCID type", 3)
            pcid, gva = 0, 0
            for a in args[1:]:
                if a.startswith("pcid="):
                    pcid = self.small(a[5:], line, "pcid", 4095)
                else:
                    gva = self.addr(a, line, "GVA")
            if t == 0 and not gva:
                raise self.err(line, "invpcid type 0 needs a GVA", "write: invpcid 0 pcid=N GVA")
            return InvpcidOp(t, pcid, gva, line)
        if op == "flush_tlb":
            need(2, "GVA|mm|all TARGETS")
            if args[0] == "mm":
                scope, gva = FLUSH_MM, 0
            elif args[0] == "all":
                scope, gva = FLUSH_ALL, 0
            else:
                scope, gva = FLUSH_PAGE, self.addr(args[0], line, "GVA")
            return FlushTlbOp(scope, gva, self.targets(args[1], line, config, v), line)
        if op == "emulated_read":
            need(1, "GVA")
            return EmulatedReadOp(self.addr(args[0], line, "GVA"), line)
        ept_names = (DEFAULT_EPT12, *self.ept12_named) if self.ept12 else ()
        l1 = parse_l1_op(op, args, line, roots, self.addr, self.err, ept_names)
        if l1 is not None:
            return l1  # type: ignore[no-any-return]
        raise self.err(
            line,
            f"unknown guest op {shown(op)}",
            "use read, write, exec, map, unmap, link, unlink, invlpg, mov_cr3, set_cr4, set_cr0, "
            "invpcid, flush_tlb or emulated_read; L1's vmxon, vmxoff, vmlaunch, vmresume, "
            "invvpid, and L2's vmcall",
        )

    def root_name(self, name: str, line: int, roots: dict[str, dict[int, tuple[int, str]]]) -> str:
        if name != DEFAULT_ROOT and name not in roots:
            known = ", ".join([DEFAULT_ROOT, *roots])
            raise self.err(
                line,
                f"no guest page table named {shown(name)}",
                f"declare it as [guest.{name}] or use one of: {known}",
            )
        return name

    def small(self, s: str, line: int, what: str, high: int) -> int:
        try:
            value = int(s, 0)
        except ValueError:
            raise self.err(line, f"bad {what} {shown(s)}", f"use a number 0..{high}") from None
        if not 0 <= value <= high:
            raise self.err(line, f"{what} {value} out of range", f"use a number 0..{high}")
        return value

    def targets(self, s: str, line: int, config: Config, v: int) -> tuple[int, ...]:
        if s in ("others", "all"):
            return tuple(t for t in range(config.vcpus) if t != v)
        out = []
        for part in s.split(","):
            t = self.vcpu_id(part.strip(), line, config)
            if t == v:
                raise self.err(
                    line,
                    f"vcpu{v} cannot target itself",
                    "list only other vCPUs (the issuer flushes locally)",
                )
            out.append(t)
        return tuple(sorted(set(out)))

    def host_op(
        self,
        text: str,
        line: int,
        config: Config,
        host: dict[int, tuple[int, str]],
        remapped: set[int],
        roots: dict[str, dict[int, tuple[int, str]]] | None = None,
    ) -> HostOp:
        words = text.replace("->", " -> ").split()
        op, args = words[0], words[1:]
        if op == "set_sregs":
            return self.set_sregs_op(args, line, config, roots or {})
        if op == "preempt" and len(args) == 1:
            return PreemptOp(self.vcpu_id(args[0], line, config), line)
        if op == "resume" and len(args) in (1, 3):
            v = self.vcpu_id(args[0], line, config)
            pcpu = -1
            if len(args) == 3:
                if args[1] != "on":
                    raise self.err(
                        line, "resume takes vcpuN [on pcpuM]", "write: resume vcpu1 on pcpu0"
                    )
                pcpu = self.pcpu_id(args[2], line, config)
            return ResumeOp(v, pcpu, line)
        if op in ("age", "clear_dirty_log") and len(args) == 1:
            gpa = self.addr(args[0], line, "GPA")
            if gpa not in host:
                raise self.err(
                    line, f"GPA {gpa:#x} is not mapped in [host]", f"{op} a GPA listed in [host]"
                )
            return AgeOp(gpa, line) if op == "age" else ClearDirtyLogOp(gpa, line)
        if op == "collapse" and len(args) == 1:
            gpa = self.addr(args[0], line, "GPA")
            if gpa not in host:
                raise self.err(
                    line, f"GPA {gpa:#x} is not mapped in [host]", "collapse a GPA listed in [host]"
                )
            return CollapseOp(gpa, line)
        if op in ("zap", "wrprotect") and len(args) == 1:
            gpa = self.addr(args[0], line, "GPA")
            if gpa not in host:
                raise self.err(
                    line, f"GPA {gpa:#x} is not mapped in [host]", f"{op} a GPA listed in [host]"
                )
            if op == "zap":
                self.zaps[gpa] = self.zaps.get(gpa, 0) + 1
                if self.zaps[gpa] > MAX_ZAPS:
                    raise self.err(
                        line,
                        f"more than {MAX_ZAPS} zaps of {gpa:#x}",
                        f"zap a guest frame at most {MAX_ZAPS} times",
                    )
                return ZapOp(gpa, line)
            return WrprotectOp(gpa, line)
        if op == "remap" and len(args) == 3 and args[1] == "->":
            gpa = self.addr(args[0], line, "GPA")
            hpa = self.addr(args[2], line, "HPA")
            if gpa not in host:
                raise self.err(
                    line, f"GPA {gpa:#x} is not mapped in [host]", "remap a GPA listed in [host]"
                )
            if hpa in {h for h, _ in host.values()} or hpa in remapped:
                raise self.err(
                    line,
                    f"HPA {hpa:#x} is already in use",
                    "remap to a host page no other mapping uses",
                )
            remapped.add(hpa)
            return RemapOp(gpa, hpa, line)
        if op == "flush_remote_tlbs" and not args:
            return FlushRemoteOp(line)
        if op == "recover_nx" and not args:
            return RecoverNxOp(line)
        if op == "zap_gfn_range" and len(args) == 2:
            first = self.addr(args[0], line, "GPA")
            second = self.addr(args[1], line, "GPA")
            for gpa in (first, second):
                if gpa not in host:
                    raise self.err(
                        line,
                        f"GPA {gpa:#x} is not mapped in [host]",
                        "zap_gfn_range two GPAs listed in [host]",
                    )
            if first == second:
                raise self.err(
                    line,
                    "zap_gfn_range needs two different GPAs",
                    "write: zap_gfn_range 0x10000 0x11000",
                )
            return ZapGfnRangeOp(first, second, line)
        if op == "spawn" and args:
            inner = self.host_op(" ".join(args), line, config, host, remapped)
            if not isinstance(inner, FlushRemoteOp | ZapGfnRangeOp | RecoverNxOp):
                raise self.err(
                    line,
                    f"spawn cannot run {shown(inner.describe())}",
                    "spawn flush_remote_tlbs, spawn zap_gfn_range GPA GPA, or spawn recover_nx",
                )
            return SpawnOp(inner, line)
        if op == "create" and len(args) in (1, 3):
            v = self.vcpu_id(args[0], line, config)
            pcpu = -1
            if len(args) == 3:
                if args[1] != "on":
                    raise self.err(
                        line, "create takes vcpuN [on pcpuM]", "write: create vcpu1 on pcpu0"
                    )
                pcpu = self.pcpu_id(args[2], line, config)
            return CreateVcpuOp(v, pcpu, line)
        if op == "destroy" and len(args) == 1:
            if args[0] not in ("vm0", "vm1"):
                raise self.err(
                    line,
                    f"unknown VM {shown(args[0])}",
                    "write: destroy vm0 (the first VM) or destroy vm1 (the [vm1] table's)",
                )
            return DestroyVmOp(int(args[0][2]), line=line)
        if op == "delete_memslot" and len(args) == 1:
            gpa = self.addr(args[0], line, "GPA")
            if gpa not in host:
                raise self.err(
                    line, f"GPA {gpa:#x} is not mapped in [host]", f"{op} a GPA listed in [host]"
                )
            if not config.tdp:
                raise self.err(
                    line,
                    "delete_memslot needs tdp = true (shadow paging's obsolete pages are not "
                    "modelled)",
                    "remove the op, or set tdp = true",
                )
            self.zaps[gpa] = self.zaps.get(gpa, 0) + 1
            self.fast_zaps += 1
            if self.zaps[gpa] > MAX_ZAPS or self.fast_zaps > MAX_FAST_ZAPS:
                raise self.err(
                    line,
                    f"more than {MAX_FAST_ZAPS} zap_all_fast and delete_memslot ops, or more "
                    f"than {MAX_ZAPS} zaps and deletions of {gpa:#x}",
                    "delete the memslot fewer times",
                )
            return DeleteMemslotOp(gpa, line)
        if op == "move_memslot" and len(args) == 3 and args[1] == "->":
            return self.move_op(args[0], args[2], line, config, host)
        if op == "zap_all_fast" and not args:
            if not config.tdp:
                raise self.err(
                    line,
                    "zap_all_fast needs tdp = true (shadow paging's obsolete pages are not "
                    "modelled)",
                    "remove the op, or set tdp = true",
                )
            self.fast_zaps += 1
            if self.fast_zaps > MAX_FAST_ZAPS:
                raise self.err(
                    line,
                    f"more than {MAX_FAST_ZAPS} zap_all_fast ops (a delete_memslot counts as one)",
                    f"zap all roots at most {MAX_FAST_ZAPS} times",
                )
            return ZapAllFastOp(line)
        raise self.err(
            line,
            f"unknown or malformed host op {shown(text)}",
            "use: preempt vcpuN | resume vcpuN [on pcpuM] | zap GPA | "
            "remap GPA -> HPA | wrprotect GPA | flush_remote_tlbs | zap_all_fast | "
            "zap_gfn_range GPA GPA | spawn OP | age GPA | clear_dirty_log GPA | recover_nx | "
            "create vcpuN [on pcpuM] | destroy vm0|vm1 | delete_memslot GPA | "
            "move_memslot GPA -> GPA | "
            "set_sregs vcpuN [cr3=ROOT] [pcid=N] [pge=0|1] [smep=0|1]",
        )

    def move_op(
        self, src: str, dst: str, line: int, config: Config, host: dict[int, tuple[int, str]]
    ) -> MoveMemslotOp:
        """`move_memslot GPA -> GPA`: the source a frame with memory, the destination a GPA
        [host] declares "none" that no other move targets; the destination takes the source's
        rights (the moved slot keeps its flags)."""
        gpa = self.addr(src, line, "GPA")
        to = self.addr(dst, line, "GPA")
        if gpa not in host:
            raise self.err(
                line,
                f"GPA {gpa:#x} is not mapped in [host]",
                "move_memslot a GPA listed in [host]",
            )
        if gpa in self.moved_to.values():
            raise self.err(
                line,
                f"the memslot at {gpa:#x} was already moved: {gpa:#x} has no memory now",
                "move each memslot at most once",
            )
        if host[gpa][0] == NO_MEMORY:
            raise self.err(
                line,
                f'GPA {gpa:#x} has no memory ([host] says "none"): there is no memslot to move',
                "move a GPA that [host] maps to a host page",
            )
        if to not in self.no_memory:
            raise self.err(
                line,
                f"the destination {to:#x} is not a GPA without memory",
                f'declare it in [host] as "{to:#x}" = "none" (and map no host page there)',
            )
        if to in self.moved_to:
            raise self.err(
                line,
                f"the destination {to:#x} already receives the memslot of {self.moved_to[to]:#x}",
                'give each move its own destination ("none" in [host])',
            )
        if not config.tdp:
            raise self.err(
                line,
                "move_memslot needs tdp = true (shadow paging's obsolete pages are not modelled)",
                "remove the op, or set tdp = true",
            )
        self.fast_zaps += 1
        if self.fast_zaps > MAX_FAST_ZAPS:
            raise self.err(
                line,
                f"more than {MAX_FAST_ZAPS} zap_all_fast, delete_memslot and move_memslot ops",
                "move or delete memslots fewer times",
            )
        self.moved_to[to] = gpa
        host[to] = (NO_MEMORY, host[gpa][1])
        return MoveMemslotOp(gpa, to, line)

    def move_checks(
        self,
        programs: tuple[tuple[GuestOp, ...], ...],
        host_program: tuple[HostOp, ...],
        vm1: tuple[int, ...],
    ) -> None:
        """What the model of a memslot move asks of a file with GPAs without memory: each is a
        move's destination; no other host op names a moved frame (the model follows one host
        page per frame across the move, nothing else); one VM, no nested guest, no 2 MiB
        region."""
        for gpa, line in self.no_memory.items():
            if gpa not in self.moved_to:
                raise self.err(
                    line,
                    f"GPA {gpa:#x} has no memory and no move_memslot moves a memslot there",
                    f"add `move_memslot GPA -> {gpa:#x}` to the host thread, or map a host page "
                    f'there ("HPA rwx")',
                )
        moved = {*self.moved_to, *self.moved_to.values()}
        for op in host_program:
            inner = op.op if isinstance(op, SpawnOp) else op
            if isinstance(inner, MoveMemslotOp):
                continue
            named = {getattr(inner, a, None) for a in ("gpa", "first", "second")}
            hit = sorted(g for g in named if g in moved)
            if hit:
                raise self.err(
                    op.line,
                    f"{shown(op.describe())} names {hit[0]:#x}, a GPA a memslot move changes",
                    "keep other host ops off the moved memslot's old and new GPA",
                )
        first = min(op.line for op in host_program if isinstance(op, MoveMemslotOp))
        if vm1:
            raise self.err(
                first, "move_memslot is modelled with one VM", "remove [vm1] or the move"
            )
        if self.huge_regions:
            raise self.err(
                first,
                "move_memslot is not modelled with a 2 MiB region (the model keeps one root)",
                "remove move_memslot, or map the frames 4 KiB at a time",
            )
        if is_nested(programs) or self.ept12 or self.npt12:
            raise self.err(
                first,
                "move_memslot is not modelled with a nested guest",
                "remove the move, or the nested guest's ops",
            )

    def set_sregs_op(
        self,
        args: list[str],
        line: int,
        config: Config,
        roots: dict[str, dict[int, tuple[int, str]]],
    ) -> SetSregsOp:
        """`set_sregs vcpuN [cr3=ROOT] [pcid=N] [pge=0|1] [smep=0|1]` (kvm/sregs.py)."""
        if not args:
            raise self.err(line, "set_sregs takes vcpuN and the registers to write", SET_SREGS_FIX)
        v = self.vcpu_id(args[0], line, config)
        values: dict[str, int] = {}
        root = ""
        for a in args[1:]:
            key, eq, value = a.partition("=")
            if not eq or key not in ("cr3", "pcid", "pge", "smep"):
                hint = (
                    " (CR4.PCIDE stays as it is: the guest toggles it with set_cr4 pcide=)"
                    if key == "pcide"
                    else " (CR0 and EFER are not written: paging stays 4-level with CR0.PG = 1)"
                    if key in ("cr0", "efer", "wp", "nx", "pg", "pae")
                    else ""
                )
                raise self.err(line, f"unknown set_sregs argument {shown(a)}{hint}", SET_SREGS_FIX)
            if key in values or (key == "cr3" and root):
                raise self.err(line, f"set_sregs names {key} twice", "name each register once")
            if key == "cr3":
                root = self.root_name(value, line, roots)
            elif key == "pcid":
                values[key] = self.small(value, line, "pcid", 4095)
            else:
                values[key] = self.small(value, line, f"CR4.{key.upper()}", 1)
        if "pcid" in values and not root:
            raise self.err(
                line,
                "set_sregs pcid=N without cr3=ROOT",
                "the PCID is part of CR3: write cr3=ROOT pcid=N",
            )
        if not root and not values:
            raise self.err(line, "set_sregs writes no register", SET_SREGS_FIX)
        return SetSregsOp(
            v, root, values.get("pcid", -1), values.get("pge", -1), values.get("smep", -1), line
        )

    def sregs_checks(
        self,
        config: Config,
        vm1: tuple[int, ...],
        programs: tuple[tuple[GuestOp, ...], ...],
        host_program: tuple[HostOp, ...],
    ) -> None:
        """`set_sregs`: one VM, no nested guest, and a PCID only with CR4.PCIDE set throughout."""
        for op in host_program:
            if not isinstance(op, SetSregsOp):
                continue
            if vm1:
                raise self.err(
                    op.line,
                    "set_sregs in a scenario with two VMs is not modelled",
                    "remove [vm1], or the set_sregs",
                )
            if is_nested(programs):
                raise self.err(
                    op.line,
                    "set_sregs with a nested guest is not modelled (KVM_SET_SREGS writes L1's "
                    "registers only outside guest mode)",
                    "remove the L1 ops, or the set_sregs",
                )
            toggles = any(isinstance(g, SetCr4Op) and g.bit == "pcide" for g in programs[op.vcpu])
            if op.pcid > 0 and (not config.pcid or toggles):
                raise self.err(
                    op.line,
                    f"set_sregs pcid={op.pcid} needs CR4.PCIDE set for the whole run",
                    f"set pcid = true in [config] and drop vcpu{op.vcpu}'s set_cr4 pcide=, or "
                    "write pcid=0",
                )

    def static_checks(
        self,
        config: Config,
        guest: dict[int, tuple[int, str]],
        programs: list[list[GuestOp]],
        roots: dict[str, dict[int, tuple[int, str]]],
    ) -> None:
        check_nested(
            config.vendor,
            config.tdp,
            config.vpid,
            programs,
            self.err,
            self.lines.section("threads"),
            bool(self.ept12),
            config.pv_tlb_flush,
            bool(self.npt12),
        )
        resolve_vmptrld(programs)
        executable = {gva for gva, (_, f) in guest.items() if "x" in f}
        for table in roots.values():
            executable |= {gva for gva, (_, f) in table.items() if "x" in f}
        for prog in programs:
            executable |= {op.gva for op in prog if isinstance(op, MapOp) and "x" in op.flags}
        # a 2 MiB guest page mapped executable covers every GVA of its region
        huge_x = {gva for (_, gva) in self.guest_huge if gva in executable}
        for prog in programs:
            pcide = config.pcid
            for op in prog:
                if isinstance(op, SetCr4Op) and op.bit == "pcide":
                    pcide = bool(op.value)
                if isinstance(op, InvpcidOp) and op.type in (0, 1) and op.pcid and not pcide:
                    raise self.err(
                        op.line,
                        f"invpcid {op.type} pcid={op.pcid} with CR4.PCIDE off is #GP",
                        "use pcid=0, or set_cr4 pcide=1 first",
                    )
                if isinstance(op, MovCr3Op) and op.noflush and not pcide:
                    raise self.err(
                        op.line,
                        "mov_cr3 noflush needs CR4.PCIDE",
                        "drop noflush, or set pcid = true / set_cr4 pcide=1 first",
                    )
                if isinstance(op, MovCr3Op) and op.pcid > 0 and not pcide:
                    raise self.err(
                        op.line,
                        "mov_cr3 pcid=N needs CR4.PCIDE",
                        "drop pcid=, or set pcid = true / set_cr4 pcide=1 first",
                    )
                if (
                    isinstance(op, AccessOp)
                    and op.kind == "exec"
                    and op.gva not in executable
                    and op.gva & ~(HUGE - 1) not in huge_x
                ):
                    raise self.err(
                        op.line,
                        f"exec of {op.gva:#x}, which is never mapped executable",
                        "map it with the x flag",
                    )

    # -- [expect] --------------------------------------------------------------------------------
    def expect(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self._table("expect").items():
            line = self.lines.key("expect", key)
            if self.known is not None and key not in self.known:
                raise self.err(
                    line,
                    f"[expect] names unknown policy {shown(key)}",
                    f"use one of: {', '.join(sorted(self.known))}",
                )
            ok = value in ("safe", "deadlock") or (
                isinstance(value, str)
                and value.startswith("violation:")
                and value.split(":", 1)[1] in PROPERTIES
            )
            if not ok:
                raise self.err(
                    line,
                    f"bad expectation {shown(value)}",
                    'use "safe", "deadlock" or "violation:<property>" with a '
                    f"property from {', '.join(PROPERTIES)}",
                )
            out[key] = value
        return out
