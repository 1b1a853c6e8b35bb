"""Workload files: what a cost run simulates, as TOML data, parsed and validated.

A workload names the configurations to run (vendor, VPID or FlushByAsid, PCID, the PV TLB flush;
a list gives one run per value), the VM's shape (vCPUs, pCPUs), the guest's working set, the rates
of the events a seeded random schedule draws (guest page-table changes with their shootdowns,
full flushes, preemptions, migrations, host zaps and remaps; with `nested = true` L2's exits to L1
and L1's flushes of L2, cost/nested.py), the length in guest accesses and the seed.
docs/cost-model.md documents every key; kvmtlb/cost/workloads/ holds the built-in ones.

Every input error raises `WorkloadError` naming the file, the line and the fix; the CLI turns it
into exit code 2.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kvmtlb.cost.tlb import KIND_BY_NAME
from kvmtlb.errors import InputFileError
from kvmtlb.hw.vmx import INVALIDATION_CAP_NAMES
from kvmtlb.tomlfile import Lines, check_header, loads, read, shown

BUILTIN = Path(__file__).parent / "workloads"
CAP_NAMES = INVALIDATION_CAP_NAMES
RATE_KEYS = (
    "pte_change",
    "mm_flush",
    "full_flush",
    "preempt",
    "migrate",
    "zap",
    "remap",
    "dirty_log",
    "cr3_switch",
    "cr0_wp_toggle",
    "l2_exit",
    "l1_flush",
    "l1_flush_addr",
    "l1_invept",
    "l1_invept_all",
    "l1_ept_wrprotect",
    "dirty_log_off",
)
# The rates only a nested workload (`nested = true`) may set, and those it may not; those only
# nested EPT (`nested = true` with `tdp = true`, Intel) may set, and those it may not.
NESTED_RATES = (
    "l2_exit",
    "l1_flush",
    "l1_flush_addr",
    "l1_invept",
    "l1_invept_all",
    "l1_ept_wrprotect",
)
NESTED_EPT_RATES = ("l1_invept", "l1_invept_all", "l1_ept_wrprotect")
NOT_NESTED_EPT_RATES = ("remap",)
NOT_NESTED_RATES = ("full_flush", "cr3_switch", "cr0_wp_toggle", "dirty_log")
GVA_BASE = 0x4000_0000  # where the working set starts in the guest's linear address space
GPA_BASE = 0x10_0000  # the first guest frame of the working set's pool
# Address space a (a guest page table of its own) has its working set at GVA_BASE + a * AS_STRIDE:
# the linear page of a translation names its page table (validity.py needs no CR3).
AS_STRIDE = 1 << 30
MAX_ADDRESS_SPACES = 8
MAX_FRAMES = 1 << 18  # guest frames (1 GiB of guest RAM): keeps the layout quick to build
# The parser's tables: every key a workload file may set, with its type.
TOP_LEVEL = ("name", "doc", "config", "workload", "rates", "tlb")
CONFIG_LISTABLE: dict[str, type] = {
    "vendor": str,
    "vpid": bool,
    "flush_by_asid": bool,
    "pcid": bool,
    "pv_tlb_flush": bool,
    "tdp": bool,
    "hv_range_flush": bool,
    "vmcs12_vpid": bool,
    "huge_pages": bool,
    "tdp_mmu": bool,
}
CONFIG_SCALAR: dict[str, type] = {
    "nested": bool,
    "pge": bool,
    "vcpus": int,
    "pcpus": int,
    "max_asid": int,
    "ept_vpid_cap": list,
}
CONFIG_KEYS: dict[str, type] = {**CONFIG_LISTABLE, **CONFIG_SCALAR}
WORKLOAD_KEYS: dict[str, type] = {
    "accesses": int,
    "seed": int,
    "working_set": int,
    "guest_frames": int,
    "write_fraction": float,
    "locality": float,
    "preempted_for": float,
    "address_spaces": int,
    "guest_huge_pages": bool,
}
TLB_KEYS = tuple(KIND_BY_NAME)
# Limits of the knobs that set how long a run takes (docs/cost-model.md, "Limits").
MAX_ACCESSES = 10**9
MAX_PREEMPTED_FOR = 10**6  # guest accesses: a long preemption (milliseconds of guest time)
MAX_TLB_ENTRIES = 1 << 20  # per kind and pCPU; real TLBs hold a few thousand
MAX_SEED = (1 << 64) - 1
# While every vCPU is preempted the schedule still draws each event (a zap may fall there), one
# by one: about accesses x preempt/1000 x preempted_for x (sum of rates)/1000 draws in all.
MAX_IDLE_DRAWS = 2_000_000


class WorkloadError(InputFileError):
    """An input error in a workload file: the file, the line (0 if unknown) and the fix."""


@dataclass(frozen=True)
class RunConfig:
    """One configuration of a workload: what KVM and the guest are set up with."""

    vendor: str
    vpid: bool = True
    flush_by_asid: bool = True
    pcid: bool = False
    pge: bool = True
    pv_tlb_flush: bool = True
    vcpus: int = 2
    pcpus: int = 2
    max_asid: int = 32767
    ept_vpid_cap: tuple[str, ...] = CAP_NAMES
    tdp: bool = True  # EPT/NPT; False: shadow paging (kvmtlb/kvm/shadow.py)
    hv_range_flush: bool = False  # KVM on Hyper-V: its remote and range flushes are hypercalls
    nested: bool = False  # the guest is a hypervisor (L1) whose vCPUs run an L2 (cost/nested.py)
    vmcs12_vpid: bool = True  # nested VMX: vmcs12 enables VPID (vpid12 = vCPU + 1), else off
    huge_pages: bool = False  # 2 MiB host pages, mapped by 2 MiB EPT/NPT SPTEs (kvm/hugepage.py)
    tdp_mmu: bool = True  # v6.18's tdp_mmu module parameter (False: the rmap MMU manages EPT/NPT)

    def label(self) -> str:
        parts = [self.vendor]
        if self.vendor == "intel":
            parts.append("vpid" if self.vpid else "novpid")
        else:
            parts.append("flushbyasid" if self.flush_by_asid else "noflushbyasid")
        parts.append("pcid" if self.pcid else "nopcid")
        parts.append("pv" if self.pv_tlb_flush else "nopv")
        if not self.tdp:
            parts.append("shadow")
        if self.hv_range_flush:
            parts.append("hv")
        if self.huge_pages:
            parts.append("huge" if self.tdp_mmu else "huge-rmap")
        if self.nested:
            nested = "nested-ept" if self.tdp else "nested"
            parts.append(
                nested if self.vendor == "amd" or self.vmcs12_vpid else f"{nested}-novpid12"
            )
        return "/".join(parts)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "vendor": self.vendor,
            "pcid": self.pcid,
            "pge": self.pge,
            "pv_tlb_flush": self.pv_tlb_flush,
            "vcpus": self.vcpus,
            "pcpus": self.pcpus,
            "tdp": self.tdp,
        }
        if self.hv_range_flush:
            d["hv_range_flush"] = True
        if self.huge_pages:
            d.update(huge_pages=True, tdp_mmu=self.tdp_mmu)
        if self.nested:
            d["nested"] = True
            if self.vendor == "intel":
                d["vmcs12_vpid"] = self.vmcs12_vpid
        if self.vendor == "intel":
            d.update(vpid=self.vpid, ept_vpid_cap=list(self.ept_vpid_cap))
        else:
            d.update(flush_by_asid=self.flush_by_asid, max_asid=self.max_asid)
        return d


@dataclass(frozen=True)
class Rates:
    """Events per 1,000 guest accesses (of the whole VM)."""

    pte_change: float = 0.0  # a guest PTE changes; flush_tlb of that page on every vCPU
    mm_flush: float = 0.0  # flush_tlb of the whole mm (MOV CR3 on every vCPU)
    full_flush: float = 0.0  # flush_tlb_all (CR4.PGE toggle or INVPCID all on every vCPU)
    preempt: float = 0.0  # the host preempts a running vCPU
    migrate: float = 0.0  # the host moves a running vCPU to another pCPU
    zap: float = 0.0  # an MMU-notifier zap of a guest frame in use
    remap: float = 0.0  # page migration of a guest frame in use to another host page
    dirty_log: float = 0.0  # dirty logging switched on for a guest frame in use (wrprotect)
    cr3_switch: float = 0.0  # a context switch: MOV CR3 to another address space
    cr0_wp_toggle: float = 0.0  # a W^X window: the guest clears CR0.WP, then sets it again
    l2_exit: float = 0.0  # nested: L2 exits to L1 (VMCALL / VMMCALL), L1 resumes it
    l1_flush: float = 0.0  # nested: ... and L1 flushes L2's context first (INVVPID / TLB_CONTROL)
    l1_flush_addr: float = 0.0  # nested: ... and L1 invalidates one L2 page (INVVPID / INVLPGA)
    l1_invept: float = 0.0  # nested EPT: ... and L1 runs INVEPT single-context of EPTP12
    l1_invept_all: float = 0.0  # nested EPT: ... and L1 runs INVEPT all-context
    l1_ept_wrprotect: float = 0.0  # nested EPT: ... L1 write-protects an EPT12 leaf, INVEPT
    dirty_log_off: float = 0.0  # huge pages: dirty logging off for a logged 2 MiB region (collapse)

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in RATE_KEYS}


@dataclass(frozen=True)
class Workload:
    path: str
    name: str
    doc: str
    configs: tuple[RunConfig, ...]
    accesses: int
    seed: int
    working_set: int
    guest_frames: int
    write_fraction: float
    preempted_for: float
    rates: Rates
    locality: float = 0.0  # Zipf exponent of the page popularity (0: uniform)
    capacity: dict[str, int] = field(default_factory=dict)  # overrides of costs.toml
    address_spaces: int = 1  # guest page tables (processes), each with its own working set
    guest_huge_pages: bool = False  # the guest maps its working set with 2 MiB pages (PDE.PS)

    def with_overrides(self, accesses: int | None = None, seed: int | None = None) -> Workload:
        return replace(
            self,
            accesses=self.accesses if accesses is None else accesses,
            seed=self.seed if seed is None else seed,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "accesses": self.accesses,
            "seed": self.seed,
            "working_set": self.working_set,
            "guest_frames": self.guest_frames,
            "write_fraction": self.write_fraction,
            "locality": self.locality,
            "preempted_for": self.preempted_for,
            "address_spaces": self.address_spaces,
            "guest_huge_pages": self.guest_huge_pages,
            "rates": self.rates.as_dict(),
            "tlb": dict(self.capacity),
        }


# -- loading --------------------------------------------------------------------------------------
def builtin_workloads() -> list[Path]:
    return sorted(BUILTIN.glob("*.toml"))


def resolve(arg: str) -> Workload:
    """A workload by file path or built-in name."""
    p = Path(arg)
    if p.suffix == ".toml" or p.exists():
        return load(p)
    for b in builtin_workloads():
        if b.stem == arg:
            return load(b)
    names = ", ".join(b.stem for b in builtin_workloads())
    raise WorkloadError(
        arg,
        0,
        "no such workload file or built-in workload",
        f"give a .toml path or one of: {names}",
    )


def load(path: str | Path) -> Workload:
    p = str(path)
    text = read(
        path, lambda line, message, fix: WorkloadError(p, line, message, fix), "a workload file"
    )
    return parse(text, p)


def parse(text: str, path: str = "<workload>") -> Workload:
    data = loads(
        text,
        lambda line, message, fix: WorkloadError(path, line, message, fix),
        "fix the TOML syntax (see docs/cost-model.md for the format)",
    )
    return _Parser(path, text, data).workload()


def _kind(value: Any, want: type) -> bool:
    if want is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


class _Parser:
    def __init__(self, path: str, text: str, data: dict[str, Any]) -> None:
        self.path = path
        self.lines = Lines(text)
        self.data = data

    def err(self, line: int, message: str, fix: str) -> WorkloadError:
        return WorkloadError(self.path, line, message, fix)

    def table(self, name: str, required: bool = False) -> dict[str, Any]:
        if name not in self.data:
            if required:
                raise self.err(0, f"missing [{name}]", f"add a [{name}] table (docs/cost-model.md)")
            return {}
        t = self.data[name]
        if not isinstance(t, dict):
            raise self.err(
                self.lines.key(None, name), f"{name} must be a table", f"write it as [{name}]"
            )
        return t

    def check_keys(self, section: str, t: dict[str, Any], kinds: dict[str, type]) -> None:
        for key, value in t.items():
            line = self.lines.key(section, key)
            if key not in kinds:
                raise self.err(
                    line,
                    f"unknown key {shown(key)} in [{section}]",
                    f"use one of: {', '.join(kinds)}",
                )
            want = kinds[key]
            if not _kind(value, want):
                name = {float: "number", int: "integer", bool: "boolean", str: "string"}.get(
                    want, want.__name__
                )
                raise self.err(line, f"{section}.{key} must be a {name}", f"give {key} a {name}")
            if want is float and not math.isfinite(value):
                raise self.err(
                    line,
                    f"{section}.{key} = {value} is not a finite number",
                    f"give {key} a number",
                )

    def workload(self) -> Workload:
        name, doc = check_header(self.data, self.lines, TOP_LEVEL, self.err, "my-workload")
        configs = self.configs()
        w = self.table("workload", required=True)
        self.check_keys("workload", w, WORKLOAD_KEYS)
        for key in ("accesses", "working_set"):
            if key not in w:
                raise self.err(
                    self.lines.section("workload"),
                    f"[workload] needs {key}",
                    f"add {key} = N to [workload]",
                )
        accesses = self.bounded("workload", w, "accesses", 1, MAX_ACCESSES)
        working_set = self.bounded("workload", w, "working_set", 1, MAX_FRAMES)
        spaces = self.bounded("workload", w, "address_spaces", 1, MAX_ADDRESS_SPACES, 1)
        if working_set * spaces > MAX_FRAMES:
            raise self.err(
                self.lines.key("workload", "address_spaces"),
                f"{spaces} address spaces of {working_set} pages exceed {MAX_FRAMES} guest frames",
                "lower working_set or address_spaces",
            )
        used = working_set * spaces  # pages in use: the working set of every address space
        frames = self.bounded(
            "workload", w, "guest_frames", 1, MAX_FRAMES, min(2 * used, MAX_FRAMES)
        )
        if frames < used:
            raise self.err(
                self.lines.key("workload", "guest_frames"),
                f"guest_frames ({frames}) is smaller than working_set x address_spaces ({used})",
                "give at least one guest frame per page of the working sets",
            )
        seed = self.bounded("workload", w, "seed", 0, MAX_SEED, 1)
        write_fraction = float(w.get("write_fraction", 0.25))
        if not 0.0 <= write_fraction <= 1.0:
            raise self.err(
                self.lines.key("workload", "write_fraction"),
                f"write_fraction {write_fraction} is not a fraction",
                "use a number from 0 to 1",
            )
        locality = float(w.get("locality", 0.0))
        if not 0.0 <= locality <= 4.0:
            raise self.err(
                self.lines.key("workload", "locality"),
                f"locality {locality} is out of range",
                "use 0 (every page equally likely) to 4 (a few pages take almost every access)",
            )
        preempted_for = float(w.get("preempted_for", 1000))
        if not 1 <= preempted_for <= MAX_PREEMPTED_FOR:
            raise self.err(
                self.lines.key("workload", "preempted_for"),
                f"preempted_for = {preempted_for:g} is out of range (guest accesses)",
                f"use 1 <= preempted_for <= {MAX_PREEMPTED_FOR:,}",
            )
        rates = self.rates(configs)
        idle = (
            accesses * rates.preempt / 1000 * preempted_for * sum(rates.as_dict().values()) / 1000
        )
        if idle > MAX_IDLE_DRAWS:
            raise self.err(
                self.lines.key("workload", "preempted_for"),
                f"with every vCPU preempted for long, the schedule would draw about {idle:,.0f} "
                "events one by one (accesses x preempt/1000 x preempted_for x the sum of the "
                f"rates/1000; the limit is {MAX_IDLE_DRAWS:,})",
                "lower preempted_for, the preempt rate, the other rates or accesses",
            )
        if rates.pte_change and frames <= used:
            raise self.err(
                self.lines.key("rates", "pte_change"),
                "pte_change moves pages to free guest frames, and there are none",
                f"set guest_frames above working_set x address_spaces ({used}) in [workload]",
            )
        if rates.cr3_switch and spaces < 2:
            raise self.err(
                self.lines.key("rates", "cr3_switch"),
                "cr3_switch moves a vCPU to another address space, and there is only one",
                "set address_spaces = 2 or more in [workload], or cr3_switch = 0",
            )
        self.check_nested(configs, rates, spaces)
        return Workload(
            self.path,
            name,
            doc,
            configs,
            accesses,
            seed,
            working_set,
            frames,
            write_fraction,
            preempted_for,
            rates,
            locality,
            self.capacity(),
            spaces,
            self.guest_huge(w, configs, rates, spaces),
        )

    def guest_huge(
        self, w: dict[str, Any], configs: tuple[RunConfig, ...], rates: Rates, spaces: int
    ) -> bool:
        """[workload] guest_huge_pages: the guest's page table maps the working set with 2 MiB
        PDEs (PS = 1), on TDP only (the cost model's shadow tables are 4 KiB), one address
        space, no PTE changes (a PTE change moves one 4 KiB page), not nested."""
        if not w.get("guest_huge_pages", False):
            return False
        line = self.lines.key("workload", "guest_huge_pages")
        for bad, message, fix in (
            (
                any(not c.tdp for c in configs),
                "guest 2 MiB pages are modelled with EPT/NPT only",
                "set tdp = true in [config], or guest_huge_pages = false",
            ),
            (
                any(c.nested for c in configs),
                "the nested cost model maps 4 KiB pages only",
                "set guest_huge_pages = false, or nested = false",
            ),
            (
                spaces != 1,
                "guest 2 MiB pages are modelled with one address space",
                "set address_spaces = 1, or guest_huge_pages = false",
            ),
            (
                bool(rates.pte_change),
                "pte_change moves one 4 KiB page, and the working set is mapped by 2 MiB PDEs",
                "set pte_change = 0 in [rates], or guest_huge_pages = false",
            ),
        ):
            if bad:
                raise self.err(line, message, fix)
        return True

    def check_nested(self, configs: tuple[RunConfig, ...], rates: Rates, spaces: int) -> None:
        """A nested workload (cost/nested.py): address space 0 is L1's page table, 1 L2's; the
        events L2 does not run (full flushes toggle CR4.PGE, which the nested model does not run
        in L2; context switches; CR0.WP windows; dirty logging) are input errors, and so are
        the nested events without `nested = true`."""
        nested = any(c.nested for c in configs)
        given = rates.as_dict()
        if not nested:
            for key in NESTED_RATES:
                if given[key]:
                    raise self.err(
                        self.lines.key("rates", key),
                        f"{key} is an event of a nested guest (L1 running L2)",
                        f"set nested = true in [config], or {key} = 0",
                    )
            return
        if spaces != 2:
            raise self.err(
                self.lines.key("workload", "address_spaces") or self.lines.section("workload"),
                f"a nested workload has two page tables, L1's and L2's, not {spaces}",
                "set address_spaces = 2 in [workload] (0: L1's, 1: L2's working set)",
            )
        for key in NOT_NESTED_RATES:
            if given[key]:
                raise self.err(
                    self.lines.key("rates", key),
                    f"{key} is not modelled in a nested workload (L2 runs reads, writes, PTE "
                    "changes with INVLPG shootdowns and MOV CR3 flushes)",
                    f"set {key} = 0, or nested = false",
                )
        if any(not c.tdp for c in configs):
            for key in NESTED_EPT_RATES:
                if given[key]:
                    raise self.err(
                        self.lines.key("rates", key),
                        f"{key} is L1's INVEPT or EPT12 change, which needs nested EPT (vmcs12 "
                        "with EPT, on an EPT L0)",
                        f"set tdp = true in [config] (Intel), or {key} = 0",
                    )
        if any(c.tdp for c in configs):
            for key in NOT_NESTED_EPT_RATES:
                if given[key]:
                    raise self.err(
                        self.lines.key("rates", key),
                        f"{key} is not modelled with nested EPT: page migration does not reach "
                        "the shadow EPT02 (kvm/nested_ept.py), so L2 would keep the old page",
                        f"set {key} = 0 (zap reaches EPT02 through the rmap), or tdp = false",
                    )

    def bounded(
        self, section: str, t: dict[str, Any], key: str, low: int, high: int, default: int = 0
    ) -> int:
        value: int = t.get(key, default)
        if not low <= value <= high:
            raise self.err(
                self.lines.key(section, key),
                f"{key} = {value} is out of range",
                f"use {low} <= {key} <= {high}",
            )
        return value

    # -- [config] -------------------------------------------------------------------------------
    def configs(self) -> tuple[RunConfig, ...]:
        t = self.table("config", required=True)
        listable = CONFIG_LISTABLE
        scalar = CONFIG_SCALAR
        values: dict[str, list[Any]] = {}
        for key, value in t.items():
            line = self.lines.key("config", key)
            if key in listable:
                items = value if isinstance(value, list) else [value]
                if not items or not all(_kind(v, listable[key]) for v in items):
                    kind = "boolean" if listable[key] is bool else "string"
                    raise self.err(
                        line,
                        f"config {key} must be a {kind} or a list of them",
                        f"write {key} = {'true' if kind == 'boolean' else repr('intel')} "
                        f"or {key} = [...] (one run per value)",
                    )
                values[key] = list(dict.fromkeys(items))
            elif key in scalar:
                if not _kind(value, scalar[key]):
                    kind = {bool: "boolean", int: "integer", list: "list"}[scalar[key]]
                    raise self.err(line, f"config {key} must be a {kind}", f"give {key} a {kind}")
            else:
                raise self.err(
                    line,
                    f"unknown config key {shown(key)}",
                    f"use one of: {', '.join([*listable, *scalar])}",
                )
        vendors = values.get("vendor")
        if not vendors:
            raise self.err(
                self.lines.section("config"),
                "[config] needs vendor",
                'add vendor = "intel", vendor = "amd" or vendor = ["intel", "amd"]',
            )
        for v in vendors:
            if v not in ("intel", "amd"):
                raise self.err(
                    self.lines.key("config", "vendor"),
                    f'vendor must be "intel" or "amd", not {shown(v)}',
                    'use vendor = "intel", "amd" or ["intel", "amd"]',
                )
        vcpus = self.bounded("config", t, "vcpus", 1, 64, 2)
        pcpus = self.bounded("config", t, "pcpus", 1, 64, 2)
        max_asid = self.bounded("config", t, "max_asid", 1, 1 << 20, 32767)
        caps = tuple(t.get("ept_vpid_cap", CAP_NAMES))
        for c in caps:
            if c not in CAP_NAMES:
                raise self.err(
                    self.lines.key("config", "ept_vpid_cap"),
                    f"unknown capability {shown(c)}",
                    f"use names from {list(CAP_NAMES)}",
                )
        tdps = values.get("tdp", [True])
        if "invept-all" not in caps and True in tdps:
            raise self.err(
                self.lines.key("config", "ept_vpid_cap"),
                "KVM disables EPT without all-context INVEPT (vmx_hardware_setup): such a "
                "configuration runs with shadow paging",
                'keep "invept-all" in ept_vpid_cap, or set tdp = false',
            )
        nested = t.get("nested", False)
        if nested:
            self.check_nested_config(values)
        elif "vmcs12_vpid" in values:
            raise self.err(
                self.lines.key("config", "vmcs12_vpid"),
                "vmcs12_vpid is L1's vmcs12 setting, and the guest is not nested",
                "set nested = true in [config], or drop vmcs12_vpid",
            )
        out: list[RunConfig] = []
        self.check_huge_config(values)
        for vendor, pcid, pv, tdp, hv, huge, tdp_mmu in itertools.product(
            vendors,
            values.get("pcid", [False]),
            values.get("pv_tlb_flush", [True]),
            tdps,
            values.get("hv_range_flush", [False]),
            values.get("huge_pages", [False]),
            values.get("tdp_mmu", [True]),
        ):
            flags = (
                values.get("vpid", [True])
                if vendor == "intel"
                else values.get("flush_by_asid", [True])
            )
            v12s = values.get("vmcs12_vpid", [True]) if vendor == "intel" and nested else [True]
            for flag, v12 in itertools.product(flags, v12s):
                base = RunConfig(
                    vendor,
                    pcid=pcid,
                    pge=t.get("pge", True),
                    pv_tlb_flush=pv,
                    vcpus=vcpus,
                    pcpus=pcpus,
                    max_asid=max_asid,
                    ept_vpid_cap=caps,
                    tdp=tdp,
                    hv_range_flush=hv and tdp,
                    nested=nested,
                    vmcs12_vpid=v12,
                    huge_pages=huge,
                    tdp_mmu=tdp_mmu,
                )
                out.append(
                    replace(base, vpid=flag)
                    if vendor == "intel"
                    else replace(base, flush_by_asid=flag)
                )
        return tuple(out)

    def check_huge_config(self, values: dict[str, list[Any]]) -> None:
        """2 MiB pages (kvm/hugepage.py) are EPT/NPT mappings: they need TDP; the nested model
        maps 4 KiB pages only; `tdp_mmu` is a knob of huge-page handling (v6.18's module
        parameter), so it needs huge_pages."""
        if True not in values.get("huge_pages", [False]):
            if "tdp_mmu" in values:
                raise self.err(
                    self.lines.key("config", "tdp_mmu"),
                    "tdp_mmu only changes how KVM splits and collapses 2 MiB SPTEs, and the "
                    "workload has none",
                    "set huge_pages = true in [config], or drop tdp_mmu",
                )
            return
        line = self.lines.key("config", "huge_pages")
        if False in values.get("tdp", [True]):
            raise self.err(
                line,
                "huge_pages are 2 MiB EPT/NPT mappings, and shadow paging has none",
                "set tdp = true in [config], or huge_pages = false",
            )
        if self.data.get("config", {}).get("nested", False):
            raise self.err(
                line,
                "the nested cost model maps 4 KiB pages only",
                "set huge_pages = false, or nested = false",
            )

    def check_nested_config(self, values: dict[str, list[Any]]) -> None:
        """What the nested cost model runs on: a shadow-paging L0 (the checker's nested VMX
        without nested EPT, and nested SVM) or, on Intel, an EPT L0 whose L1 enables EPT in
        vmcs12 (nested EPT, kvm/nested_ept.py); VPID on in L0 for VMX, no PV TLB flush (L2's
        shootdowns are IPIs), not on Hyper-V."""
        line = self.lines.key("config", "nested")
        if True in values.get("tdp", [True]) and "amd" in values.get("vendor", []):
            raise self.err(
                line,
                "nested NPT is not in the cost model: a nested AMD guest runs on a "
                "shadow-paging L0",
                'set tdp = false in [config], or vendor = "intel" (nested EPT)',
            )
        if False in values.get("vpid", [True]) and "intel" in values.get("vendor", []):
            raise self.err(
                line,
                "nested VMX is modelled with VPID in L0 only",
                "set vpid = true in [config]",
            )
        if True in values.get("pv_tlb_flush", [True]):
            raise self.err(
                line,
                "L2's shootdowns are PV-less: L0's PV TLB flush serves L1, not L2",
                "set pv_tlb_flush = false in [config]",
            )
        if True in values.get("hv_range_flush", [False]):
            raise self.err(line, "KVM on Hyper-V is not nested here", "set hv_range_flush = false")

    # -- [rates] --------------------------------------------------------------------------------
    def rates(self, configs: tuple[RunConfig, ...]) -> Rates:
        t = self.table("rates")
        self.check_keys("rates", t, dict.fromkeys(RATE_KEYS, float))
        for key, value in t.items():
            if value < 0 or value > 1000:
                raise self.err(
                    self.lines.key("rates", key),
                    f"rate {key} = {value} is out of range",
                    "give events per 1,000 guest accesses, from 0 to 1000",
                )
        if t.get("migrate", 0) and min(c.pcpus for c in configs) < 2:
            raise self.err(
                self.lines.key("rates", "migrate"),
                "migrate needs at least two pCPUs",
                "set pcpus = 2 or more, or migrate = 0",
            )
        if t.get("dirty_log", 0) and any(c.vendor == "amd" or not c.tdp for c in configs):
            raise self.err(
                self.lines.key("rates", "dirty_log"),
                "dirty_log is modelled with EPT only: on AMD the concrete TLB keeps the "
                "read-only entry a faulting write filled (#NPF invalidates nothing), so the "
                "write would fault forever; with shadow paging the cost model has no dirty log",
                'set vendor = "intel" and tdp = true, or dirty_log = 0',
            )
        huge = [c.huge_pages for c in configs]
        if t.get("dirty_log_off", 0) and not all(huge):
            raise self.err(
                self.lines.key("rates", "dirty_log_off"),
                "dirty_log_off collapses a 2 MiB region's 4 KiB SPTEs back into a huge one, and "
                "a configuration has no huge pages",
                "set huge_pages = true in [config], or dirty_log_off = 0",
            )
        if t.get("dirty_log_off", 0) and not t.get("dirty_log", 0):
            raise self.err(
                self.lines.key("rates", "dirty_log_off"),
                "dirty_log_off switches dirty logging off for a region dirty_log switched on, "
                "and dirty_log is 0",
                "give dirty_log a rate too",
            )
        if t.get("remap", 0) and any(huge):
            raise self.err(
                self.lines.key("rates", "remap"),
                "remap (page migration) of a frame of a 2 MiB host page is not modelled",
                "set remap = 0 (zap splits the host's huge page), or huge_pages = false",
            )
        if sum(float(v) for v in t.values()) > 1000:
            raise self.err(
                self.lines.section("rates"),
                "the rates add up to more than one event per guest access",
                "keep the sum of the rates at or below 1000 (per 1,000 accesses)",
            )
        return Rates(**{k: float(v) for k, v in t.items()})

    # -- [tlb] ----------------------------------------------------------------------------------
    def capacity(self) -> dict[str, int]:
        t = self.table("tlb")
        self.check_keys("tlb", t, dict.fromkeys(KIND_BY_NAME, int))
        for key, value in t.items():
            if value < 1:
                raise self.err(
                    self.lines.key("tlb", key),
                    f"TLB capacity {key} = {value} must be at least 1",
                    f"give {key} a positive number of entries",
                )
            if value > MAX_TLB_ENTRIES:
                raise self.err(
                    self.lines.key("tlb", key),
                    f"TLB capacity {key} = {value} is above the limit of {MAX_TLB_ENTRIES:,}",
                    f"give {key} at most {MAX_TLB_ENTRIES:,} entries (real TLBs hold thousands)",
                )
        return dict(t)


__all__ = [
    "AS_STRIDE",
    "GPA_BASE",
    "GVA_BASE",
    "RATE_KEYS",
    "Rates",
    "RunConfig",
    "Workload",
    "WorkloadError",
    "builtin_workloads",
    "load",
    "parse",
    "resolve",
]
