"""The HTML trace viewer: one self-contained page per run (`check --html`, `replay --html`).

A counterexample page re-runs the trace's path (`explorer.replay`'s determinism) and keeps every
intermediate world, so it can show, step by step, what each pCPU's MAY-set holds: every entry of
the scenario's universe decoded into its kind (linear, guest-physical, combined; AMD ASID-tagged
and nested), its tags (VPID, PCID, EP4TA, ASID), rights and the GPA/HPA it maps, with the entries
a step added and removed, and for a removed one the manual rules of the hardware event that
removed it (`kvmtlb rules`). A timeline has one lane per pCPU and one for the host thread: the
vCPU loaded there, its mode, its KVM step label and pending requests, the step's KVM function and
every hardware operation it ran on that pCPU.

The violated property is explained at the last step (`Explanation`): the access and its
outcome, what the vCPU's native reference allows, the stale entries that make the difference and
the culprit step. Definitions (docs/html-viewer.md says the same for readers):

- the *forbidden outcome* is the first (vCPU, GVA, access, outcome) of the last world that breaks
  the reported property, in the order `model.properties` checks them;
- the *stale entries* are a minimal set of entries of that pCPU's MAY-set whose removal makes the
  forbidden outcome impossible (each alone if one suffices; otherwise a set, found greedily and
  then minimised: no entry of it can be put back);
- the *root* stale entry is the one of them held longest (the others, such as a combined entry
  refilled through a stale guest-physical one, were derived later);
- the outcome is *forbidden since* step s: the first step from which every later world forbids
  it (the host freed the page, the guest's shootdown completed, write protection returned);
- the *culprit step* is the last step at or after s that ran an invalidation on that pCPU and
  left the root entry in place; if there is none, the last VM entry of the vCPU on that pCPU at or
  after s (KVM entered the guest with the stale entry and no flush); if there is none either, s
  itself (the entry became stale there and nothing removed it since).

Safe (and stopped) runs get a summary page: states, depth, the properties checked, and which of
the port's KVM functions a re-exploration with every policy method counted reached.

The page needs no network: the stylesheet and the script are inlined from `templates/`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from kvmtlb.check.explorer import explore, walk
from kvmtlb.hw.addr import PHYS_ADDR_MASK
from kvmtlb.hw.machine import Machine
from kvmtlb.hw.mappings import PSC_KINDS, Entry
from kvmtlb.hw.outcomes import Access
from kvmtlb.hw.paging import format_ept_rights, format_guest_rights
from kvmtlb.hw.rules import Rule, all_rules
from kvmtlb.hw.universe import iter_bits
from kvmtlb.hw.walk import ACCESS_KINDS
from kvmtlb.kvm.context import Record, World
from kvmtlb.kvm.requests import REQUEST_NAMES
from kvmtlb.kvm.state import MODE_NAMES, Vcpu
from kvmtlb.model.actions import Action
from kvmtlb.model.properties import PRECEDENCE, outcome_gpa, shadow_frames, visible
from kvmtlb.model.system import System

TEMPLATES = Path(__file__).parent / "templates"
V_PC, V_CPU = 1, 5  # positions in the frozen vCPU tuple (kvm/state.py)
P_RUNNING = 1  # position of the running vCPU in the frozen pCPU tuple
K_DIRTY = 5  # position of Kvm.dirty in the frozen Kvm tuple
TAG_SEPARATOR = " "

_PCPU = re.compile(r"^pCPU(\d+): ")
_RULES = re.compile(r"\[([a-z0-9][a-z0-9_.\-]*(?:, [a-z0-9][a-z0-9_.\-]*)*)\]$")
_REMOVED = re.compile(r"removed (\d+) cached entr")


# -- what the page shows ----------------------------------------------------------------------
@dataclass(frozen=True)
class RuleRef:
    id: str
    section: str  # the pinned edition's section, "SDM §28.3.3.2"
    summary: str
    current: str = ""  # the section in the current editions, where it differs

    @property
    def short(self) -> str:
        """The first section the rule cites: "§28.3.3.2"."""
        return self.section.split(";")[0].removeprefix("SDM ").removeprefix("APM ")

    @property
    def title(self) -> str:
        now = f"; {self.current} in current editions" if self.current else ""
        return f"{self.id} ({self.section}{now}): {self.summary}"


@dataclass
class Row:
    """One entry of a pCPU's MAY-set at one step."""

    bit: int
    kind: str
    psc: bool
    tags: str
    address: str
    gpa: str
    hpa: str
    rights: str
    fixed: bool  # derived only from paging-structure entries that never change
    status: str  # "held", "added", "removed"
    rules: list[RuleRef] = field(default_factory=list)  # the rules of the removing event(s)
    marks: list[str] = field(default_factory=list)  # "stale", "root", "survived"


@dataclass
class HwOp:
    """One hardware event a step ran on a pCPU (a Step.hw record)."""

    action: str
    outcome: str
    rules: list[RuleRef]
    invalidation: bool  # the event had something to invalidate (removed, or nothing matched)
    removed: int


@dataclass
class LaneState:
    """A lane after a step: the pCPU's loaded vCPU (or the host thread's op)."""

    text: str
    sub: str
    css: str
    requests: str = ""


@dataclass
class CpuTable:
    pcpu: int
    vcpu: str
    rows: list[Row]
    added: int
    removed: int


@dataclass
class StepView:
    n: int  # 0: the initial state
    actor: str
    lane: str  # "host" or "pcpuN"
    action: str
    records: list[Record]
    hw: dict[str, list[HwOp]]  # lane -> hardware events the step ran there
    lanes: dict[str, LaneState]  # lane -> its state after the step
    tables: list[CpuTable]
    line: int  # the scenario line of the op the step executes (0: none)
    pointers: dict[int, str]  # scenario line -> the thread whose next op it is


@dataclass
class Explanation:
    prop: str
    detail: str
    access: str = ""  # "vcpu0 read 0x1000 on pCPU0"
    outcome: str = ""
    native: list[str] = field(default_factory=list)
    why_forbidden: str = ""
    pcpu: int = -1
    stale: list[tuple[Row, int]] = field(default_factory=list)  # (entry, step it was added)
    root: int = -1  # bit of the root stale entry
    forbidden_since: int = -1
    culprit: int = -1  # the culprit step (-1: none)
    culprit_why: str = ""
    culprit_rules: list[RuleRef] = field(default_factory=list)
    # which rule of docs/html-viewer.md chose it: "invalidation" (it left the root entry in
    # place), "entry" (a VM entry), "stale" (the outcome became forbidden), "memory"
    culprit_kind: str = ""


# -- the rules registry -------------------------------------------------------------------------
@functools.cache
def _rules() -> dict[str, Rule]:
    return {r.id: r for r in all_rules()}


def rule_ref(rule_id: str) -> RuleRef:
    r = _rules().get(rule_id)
    if r is None:
        return RuleRef(rule_id, "", "")
    vendor = "SDM" if r.vendor == "intel" else "APM"
    return RuleRef(r.id, f"{vendor} {r.section}", r.summary, r.section_current)


def _record_rules(detail: str) -> list[RuleRef]:
    m = _RULES.search(detail)
    return [rule_ref(x) for x in m.group(1).split(", ")] if m else []


# -- decoding entries ---------------------------------------------------------------------------
_KIND_NAMES = {
    "LinearTranslation": "linear",
    "LinearPsc": "linear PSC",
    "GuestPhysicalTranslation": "guest-physical",
    "GuestPhysicalPsc": "guest-physical PSC",
    "CombinedTranslation": "combined",
    "CombinedPsc": "combined PSC",
    "AsidTranslation": "ASID-tagged",
    "AsidPsc": "ASID-tagged PSC",
    "NestedTranslation": "nested",
    "NestedPsc": "nested PSC",
}


def decode(bit: int, e: Entry, fixed: bool, status: str = "held") -> Row:
    """An entry as the table shows it: kind, tags, what it maps, rights."""
    name = type(e).__name__
    d = e._asdict()
    tags = []
    for tag in ("vpid", "asid", "pcid", "ep4ta"):
        if tag in d:
            v = d[tag]
            tags.append(f"{tag.upper()} {v:#x}" if tag == "ep4ta" else f"{tag.upper()} {v}")
    if d.get("glob"):
        tags.append("global")
    psc = isinstance(e, PSC_KINDS)
    stage2 = name.startswith(("GuestPhysical", "Nested"))
    gpa = hpa = rights = ""
    if psc:
        space = "GPA" if stage2 else "GVA"
        address = f"L{d['level']} {space} {d['region']:#x}"
        hpa = f"table {d['table']:#x}"
    else:
        address = ("GPA " if stage2 else "GVA ") + f"{d['page']:#x}"
        if d.get("size", 0x1000) != 0x1000:
            address += f" ({d['size'] >> 10} KiB)"
        hpa = f"{d['frame']:#x}"
        if stage2:
            rights = format_ept_rights(d["rights"])
        else:
            rights = format_guest_rights(d["rights"])
            if "erights" in d:
                rights += "/" + format_ept_rights(d["erights"])
        if d.get("gpa", -1) >= 0:
            gpa = f"{d['gpa']:#x}"
    return Row(
        bit,
        _KIND_NAMES.get(name, name),
        psc,
        TAG_SEPARATOR.join(tags),
        address,
        gpa,
        hpa,
        rights,
        fixed,
        status,
    )


# -- re-running the trace -----------------------------------------------------------------------
@dataclass
class Trace:
    system: System
    worlds: list[World]  # worlds[i]: after step i (worlds[0]: the initial world)
    actions: list[Action]
    steps: list[StepView]
    observations: list[list[tuple[int, int, int, int]]]


def lanes_of(system: System) -> list[str]:
    return ["host"] + [f"pcpu{p}" for p in range(len(system.initial.pcpus))]


def _lane_of(w: World, a: Action) -> str:
    if a.actor == "host":
        return "host"
    if a.actor.startswith(("vcpu", "guest")):
        v = int(a.actor.lstrip("vcpugest"))
        cpu = w.vcpus[v][V_CPU]
        return f"pcpu{cpu}" if cpu >= 0 else "host"
    if a.actor.startswith("pcpu"):
        return a.actor
    return f"pcpu{a.args[0]}" if a.args else "host"


def _lane_states(system: System, w: World) -> dict[str, LaneState]:
    out: dict[str, LaneState] = {}
    h = w.host
    text = "" if h.op < len(system.scenario.host_program) else "host ops done"
    away = [
        f"vcpu{v}" + (" (preempted)" if Vcpu(*vc).preempted else "")
        for v, vc in enumerate(w.vcpus)
        if vc[V_CPU] < 0
    ]
    out["host"] = LaneState(text, ("not loaded: " + ", ".join(away)) if away else "", "host")
    for p, pc in enumerate(w.pcpus):
        v = pc[P_RUNNING]
        if v < 0:
            out[f"pcpu{p}"] = LaneState("idle", "", "idle")
            continue
        vc = Vcpu(*w.vcpus[v])
        mode = MODE_NAMES.get(vc.mode, str(vc.mode))
        where = "in guest code" if vc.pc == "guest" else f"at {vc.pc}"
        css = {"IN_GUEST_MODE": "in", "EXITING_GUEST_MODE": "exiting"}.get(mode, "outside")
        if vc.pc == "guest":
            css = "guest"
        reqs = [n.removeprefix("KVM_REQ_") for b, n in REQUEST_NAMES.items() if vc.requests & b]
        out[f"pcpu{p}"] = LaneState(
            f"vcpu{v} {mode}",
            where + (" · preempted" if vc.preempted else ""),
            css,
            ", ".join(reqs),
        )
    return out


def _hw_ops(records: Sequence[Record]) -> dict[str, list[HwOp]]:
    out: dict[str, list[HwOp]] = {}
    for r in records:
        m = _PCPU.match(r.detail)
        if not m:
            continue
        rest = r.detail[m.end() :]
        removed = _REMOVED.search(rest)
        op = HwOp(
            r.action,
            _RULES.sub("", rest).strip(),
            _record_rules(rest),
            bool(removed) or "nothing cached matched" in rest,
            int(removed.group(1)) if removed else 0,
        )
        out.setdefault(f"pcpu{m.group(1)}", []).append(op)
    return out


def _op_line(system: System, w: World, a: Action) -> int:
    """The scenario line of the op the action executes (0 for KVM's and the scheduler's own)."""
    sc = system.scenario
    if a.actor == "host":
        host = sc.host_program
        return int(getattr(host[w.host.op], "line", 0)) if w.host.op < len(host) else 0
    if a.actor.startswith("guest"):
        v = int(a.actor[5:])
        g = w.guests[v]
        if a.kind == "ipi" or g.handler:
            return 0
        prog = sc.programs[v]
        return int(getattr(prog[g.op], "line", 0)) if g.op < len(prog) else 0
    return 0


def _pointers(system: System, w: World) -> dict[int, str]:
    """Each thread's next op, as scenario line -> thread."""
    sc = system.scenario
    out: dict[int, str] = {}
    for v, prog in enumerate(sc.programs):
        g = w.guests[v]
        if g.op < len(prog):
            out[int(getattr(prog[g.op], "line", 0))] = f"vcpu{v}"
    if w.host.op < len(sc.host_program):
        out[int(getattr(sc.host_program[w.host.op], "line", 0))] = "host"
    out.pop(0, None)
    return out


def _tables(
    system: System, before: World | None, after: World, hw: dict[str, list[HwOp]]
) -> list[CpuTable]:
    u = system.kvm.universe
    static = u.static_mask()
    out = []
    for p, cpu in enumerate(after.machine.cpus):
        now = cpu.may
        was = before.machine.cpus[p].may if before is not None else now
        removing = [op for op in hw.get(f"pcpu{p}", []) if op.removed]
        rules: list[RuleRef] = list(dict.fromkeys(r for op in removing for r in op.rules))
        rows = []
        for bit in iter_bits(now | was):
            status = "held" if now >> bit & 1 and was >> bit & 1 else "added"
            if not now >> bit & 1:
                status = "removed"
            row = decode(bit, u.entries[bit], bool(static >> bit & 1), status)
            if status == "removed":
                row.rules = rules
            rows.append(row)
        rows.sort(key=lambda r: (r.psc, r.fixed, r.bit))
        running = after.pcpus[p][P_RUNNING]
        out.append(
            CpuTable(
                p,
                f"vcpu{running}" if running >= 0 else "idle",
                rows,
                bin(now & ~was).count("1"),
                bin(was & ~now).count("1"),
            )
        )
    return out


def run_trace(system: System, path: Sequence[int]) -> Trace:
    """Re-run `path` from the initial world, keeping every world and what each step did."""
    w = system.initial
    worlds = [w]
    actions: list[Action] = []
    observations: list[list[tuple[int, int, int, int]]] = [[]]
    steps = [
        StepView(
            0,
            "",
            "host",
            "initial state (after boot)",
            [],
            {},
            _lane_states(system, w),
            _tables(system, None, w, {}),
            0,
            _pointers(system, w),
        )
    ]
    for n, a, text, w, out in walk(system, path):
        hw = _hw_ops(out.records)
        steps.append(
            StepView(
                n,
                a.actor,
                _lane_of(w, a),
                text,
                out.records,
                hw,
                _lane_states(system, out.world),
                _tables(system, w, out.world, hw),
                _op_line(system, w, a),
                _pointers(system, out.world),
            )
        )
        actions.append(a)
        observations.append(out.observations)
        worlds.append(out.world)
    return Trace(system, worlds, actions, steps, observations)


# -- explaining the violation -------------------------------------------------------------------
Matcher = Callable[[object], bool]


@dataclass
class _Bad:
    v: int
    cpu: int
    gva: int
    access: str
    outcome: Any
    matches: Matcher  # an outcome that is (the same kind of) forbidden outcome
    forbidden: Callable[[World], bool]  # whether a world forbids it
    why: str


def _guest_view(o: Any) -> str:
    """What the guest sees of an outcome: the GPA and its guest rights, or the fault."""
    if isinstance(o, Access):
        return f"{o.gva:#x} -> GPA {o.gpa:#x} [{format_guest_rights(o.rights)}]"
    return str(o.describe())


def _find_bad(system: System, w: World, prop: str) -> _Bad | None:
    """The first outcome of `w` that breaks `prop`, in the order model.properties checks."""
    h = w.host
    running = [
        (v, vc[V_CPU]) for v, vc in enumerate(w.vcpus) if vc[V_PC] == "guest" and vc[V_CPU] >= 0
    ]
    kvm = system.kvm
    shadow = shadow_frames(system)
    for v, cpu in running:
        for gva in system.scenario.gvas:
            for access in ACCESS_KINDS:
                for o in w.machine.outcomes(cpu, gva, access):
                    if prop == "host-isolation" and isinstance(o, Access):
                        page = o.frame & ~0xFFF
                        if page in h.released:
                            return _Bad(
                                v,
                                cpu,
                                gva,
                                access,
                                o,
                                lambda x, page=page: (
                                    isinstance(x, Access)  # type: ignore[misc]
                                    and x.frame & ~0xFFF == page
                                ),
                                lambda x, page=page: page in x.host.released,  # type: ignore[misc]
                                f"the host freed or migrated away host page {page:#x}: no "
                                "guest access may reach it",
                            )
                    if (
                        prop == "dirty-logging"
                        and access == "write"
                        and isinstance(o, Access)
                        and outcome_gpa(o, shadow) in kvm.gpas
                    ):
                        gpa = outcome_gpa(o, shadow)
                        i = kvm.gpa_index(gpa)
                        if h.protected >> i & 1 and not w.kvm[K_DIRTY][i]:
                            return _Bad(
                                v,
                                cpu,
                                gva,
                                access,
                                o,
                                lambda x, gpa=gpa: (
                                    isinstance(x, Access)  # type: ignore[misc]
                                    and outcome_gpa(x, shadow) == gpa
                                ),
                                lambda x, i=i: bool(  # type: ignore[misc]
                                    x.host.protected >> i & 1 and not x.kvm[K_DIRTY][i]
                                ),
                                f"write protection of GPA {gpa:#x} for dirty logging returned to "
                                "userspace: a write must fault and be logged",
                            )
                    if prop == "guest-transparency":
                        seen = visible(o, shadow)
                        if seen is None:
                            continue
                        native = {visible(n, shadow) for n in w.native.outcomes(v, gva, access)}
                        if seen not in native:
                            return _Bad(
                                v,
                                cpu,
                                gva,
                                access,
                                o,
                                lambda x, seen=seen: visible(x, shadow) == seen,  # type: ignore[misc]
                                lambda x, v=v, gva=gva, a=access, seen=seen: (
                                    seen  # type: ignore[misc]
                                    not in {
                                        visible(n, shadow) for n in x.native.outcomes(v, gva, a)
                                    }
                                ),
                                "a native processor running the same guest code could not "
                                "produce this outcome",
                            )
    return None


def _outcomes_without(m: Machine, cpu: int, remove: int, gva: int, access: str) -> list[Any]:
    cpus = tuple(c._replace(may=c.may & ~remove) if i == cpu else c for i, c in enumerate(m.cpus))
    return Machine(m.config, m.memory, cpus).outcomes(cpu, gva, access)


def _shadow_culprit(system: System, worlds: list[World], bad: _Bad) -> tuple[int, str] | None:
    """With shadow paging, when KVM's shadow table itself maps the forbidden outcome: the step
    that wrote the shadow PTE it goes through (usually the fault that installed it, before the
    guest changed its own PTE and no sync dropped it)."""
    cfg = system.kvm
    o = bad.outcome
    if cfg.tdp or not isinstance(o, Access):
        return None
    layout = cfg.layout
    last = worlds[-1].machine.memory.values
    for root in cfg.shadow_roots:
        slot = layout.slot(root, bad.gva)
        if not last[slot] & 1 or last[slot] & PHYS_ADDR_MASK != o.frame & ~0xFFF:
            continue
        for j in range(len(worlds) - 1, 0, -1):
            if worlds[j - 1].machine.memory.values[slot] != last[slot]:
                return j, (
                    f"no cached entry is needed: KVM's shadow page table maps {bad.gva:#x} to "
                    f"{o.frame & ~0xFFF:#x}, the shadow PTE written at this step, and no sync "
                    "(INVLPG, the guest's flush, MOV CR3 with a flush, a new root) dropped it "
                    "since"
                )
    return None


def stale_entries(m: Machine, bad: _Bad) -> list[int]:
    """A minimal set of entries of the pCPU's MAY-set whose removal makes the forbidden outcome
    impossible (bits, in universe order)."""

    def still(remove: int) -> bool:
        return any(
            bad.matches(o) for o in _outcomes_without(m, bad.cpu, remove, bad.gva, bad.access)
        )

    held = list(iter_bits(m.cpus[bad.cpu].may))
    alone = [b for b in held if not still(1 << b)]
    if alone:
        return alone
    entries = m.universe.entries
    order = sorted(held, key=lambda b: (isinstance(entries[b], PSC_KINDS), b))
    chosen: list[int] = []
    mask = 0
    for b in order:
        chosen.append(b)
        mask |= 1 << b
        if not still(mask):
            break
    else:
        return []  # the outcome does not depend on cached entries
    for b in list(chosen):
        if not still(mask & ~(1 << b)):
            chosen.remove(b)
            mask &= ~(1 << b)
    return sorted(chosen)


def _birth(worlds: Sequence[World], cpu: int, bit: int) -> int:
    """The step after which `bit` has been held on `cpu` without interruption (0: since boot)."""
    for i in range(len(worlds) - 1, 0, -1):
        if not worlds[i - 1].machine.cpus[cpu].may >> bit & 1:
            return i
    return 0


def explain(trace: Trace, prop: str, detail: str) -> Explanation:
    """The violation at the last world, with its stale entries and culprit step."""
    ex = Explanation(prop, detail)
    worlds = trace.worlds
    last = worlds[-1]
    system = trace.system
    if prop not in PRECEDENCE:
        return ex
    bad = _find_bad(system, last, prop)
    if bad is None:  # an access KVM's emulator completed (checked on the step that did it)
        if trace.observations[-1]:
            v, gva, gpa, _ = trace.observations[-1][0]
            ex.access = f"vcpu{v}'s emulated read of {gva:#x} (KVM's emulator walked it)"
            ex.outcome = f"{gva:#x} -> GPA {gpa:#x}"
            ex.native = [_guest_view(n) for n in last.native.outcomes(v, gva, "read")]
            ex.why_forbidden = (
                "the guest's shootdown had completed: a native processor could not use this "
                "translation any more"
            )
            ex.culprit_why = (
                "none pointed at automatically: KVM's emulator completed the access, not a "
                "cached entry of a pCPU; read the steps before it"
            )
        return ex
    ex.access = f"vcpu{bad.v} {bad.access} {bad.gva:#x} on pCPU{bad.cpu}"
    ex.outcome = bad.outcome.describe()
    ex.native = [_guest_view(n) for n in last.native.outcomes(bad.v, bad.gva, bad.access)]
    ex.why_forbidden = bad.why
    ex.pcpu = bad.cpu
    s = len(worlds) - 1
    while s > 0 and bad.forbidden(worlds[s - 1]):
        s -= 1
    ex.forbidden_since = s
    bits = stale_entries(last.machine, bad)
    if not bits:
        # The current paging structures themselves allow the outcome (a KVM bug in an SPTE,
        # not a stale TLB entry): the culprit is the last step that wrote them.
        spte = _shadow_culprit(system, worlds, bad)
        if spte is not None:
            ex.culprit, ex.culprit_why = spte
            ex.culprit_kind = "memory"
            return ex
        for j in range(len(worlds) - 1, 0, -1):
            if worlds[j].machine.memory != worlds[j - 1].machine.memory:
                ex.culprit = j
                ex.culprit_kind = "memory"
                ex.culprit_why = (
                    "no cached entry is needed: the current page tables (guest or EPT/NPT) "
                    "allow the outcome, and this is the last step that wrote them"
                )
                break
        return ex
    u = system.kvm.universe
    static = u.static_mask()
    births = {b: _birth(worlds, bad.cpu, b) for b in bits}
    ex.stale = [
        (decode(b, u.entries[b], bool(static >> b & 1)), births[b])
        for b in sorted(bits, key=lambda b: (births[b], isinstance(u.entries[b], PSC_KINDS), b))
    ]
    root = ex.stale[0][0].bit
    ex.root = root
    lane = f"pcpu{bad.cpu}"
    start = max(s, births[root], 1)
    for j in range(len(worlds) - 1, start - 1, -1):
        ops = [op for op in trace.steps[j].hw.get(lane, []) if op.invalidation]
        held = worlds[j].machine.cpus[bad.cpu].may >> root & 1
        held_before = worlds[j - 1].machine.cpus[bad.cpu].may >> root & 1
        if ops and held and held_before:
            ex.culprit = j
            ex.culprit_kind = "invalidation"
            ex.culprit_rules = list(dict.fromkeys(r for op in ops for r in op.rules))
            names = "; ".join(op.action for op in ops)
            ex.culprit_why = f"{names} on pCPU{bad.cpu} left the stale entry in place"
            break
    if ex.culprit < 0:
        for j in range(len(worlds) - 1, start - 1, -1):
            before, after = worlds[j - 1].vcpus[bad.v], worlds[j].vcpus[bad.v]
            if before[V_PC] != "guest" and after[V_PC] == "guest" and after[V_CPU] == bad.cpu:
                ex.culprit = j
                ex.culprit_kind = "entry"
                ex.culprit_why = (
                    f"KVM entered vcpu{bad.v}'s guest on pCPU{bad.cpu} with the stale entry "
                    "held and no invalidation since the outcome became forbidden"
                )
                break
    if ex.culprit < 0:
        ex.culprit = max(s, births[root])
        ex.culprit_kind = "stale"
        ex.culprit_why = (
            f"the outcome became forbidden here with the entry held on pCPU{bad.cpu}, and no "
            f"invalidation on pCPU{bad.cpu} removed it since"
        )
    return ex


def _mark(trace: Trace, ex: Explanation) -> None:
    """Mark the stale entries in the last step's table and the root in the culprit step's."""
    if ex.pcpu < 0:
        return
    stale = {r.bit for r, _ in ex.stale}
    for step in trace.steps:  # idempotent: a trace may be rendered twice
        for table in step.tables:
            for row in table.rows:
                row.marks.clear()
    for row in trace.steps[-1].tables[ex.pcpu].rows:
        if row.bit in stale:
            row.marks.append("stale")
        if row.bit == ex.root:
            row.marks.append("root")
    if ex.culprit > 0 and ex.culprit_kind == "invalidation":
        for row in trace.steps[ex.culprit].tables[ex.pcpu].rows:
            if row.bit == ex.root:
                row.marks.append("survived")


# -- coverage (safe pages) ----------------------------------------------------------------------
_PORT_FILES = {
    "x86": "x86.c",
    "vmx": "vmx.c",
    "svm": "svm.c",
    "kvm_main": "kvm_main.c",
    "mmu": "mmu.c",
}


def _port_functions(policy: Any, vendor: str) -> dict[str, str]:
    """The port's KVM functions a scenario of `vendor` can reach: name -> KVM file."""
    skip = "svm" if vendor == "intel" else "vmx"
    out: dict[str, str] = {}
    for cls in type(policy).__mro__:
        mod = cls.__module__.rsplit(".", 1)[-1]
        if not cls.__module__.startswith("kvmtlb.kvm.") or mod not in _PORT_FILES or mod == skip:
            continue
        for name, fn in vars(cls).items():
            if callable(fn) and not name.startswith("_") and name not in out:
                out[name] = _PORT_FILES[mod]
    return out


def coverage(system: System, max_states: int = 0) -> tuple[dict[str, int], dict[str, str]]:
    """Re-explore `system` with every KVM function of its policy counted: (name -> calls,
    name -> KVM file) over the functions a scenario of its vendor can reach."""
    pol = system.policy
    funcs = _port_functions(pol, system.scenario.config.vendor)
    calls = dict.fromkeys(funcs, 0)

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name in funcs:
        setattr(pol, name, counted(name, getattr(pol, name)))
    try:
        system.memo.clear()
        explore(system, max_states=max_states)
    finally:
        for name in funcs:
            delattr(pol, name)
    return calls, funcs


# -- rendering ----------------------------------------------------------------------------------
@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["wbr"] = _wbr
    return env


def _wbr(text: object) -> markupsafe.Markup:
    """Escaped text with line-break opportunities after '_' and ':' (KVM's long names)."""
    escaped = markupsafe.escape(str(text))
    return markupsafe.Markup(re.sub(r"([_:])", r"\1<wbr>", str(escaped)))


def _asset(name: str) -> str:
    return (TEMPLATES / name).read_text()


def _common(title: str) -> dict[str, Any]:
    return {
        "title": title,
        "css": _asset("viewer.css"),
        "js": _asset("viewer.js"),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _scenario_lines(system: System) -> list[str]:
    return system.scenario.text.splitlines()


def _full(rec: dict[str, Any]) -> dict[str, Any]:
    """A record with every key of runner.RECORD_KEYS (None where it has none)."""
    from kvmtlb.check.runner import RECORD_KEYS

    out = {**dict.fromkeys(RECORD_KEYS), **rec}
    if not out["label"]:
        verdict = str(out["verdict"] or "")
        out["label"] = f"violation:{out['property']}" if verdict == "violation" else verdict
    for key in ("states", "transitions", "depth", "store_bytes"):
        out[key] = out[key] or 0
    return out


def trace_page(trace: Trace, rec: dict[str, Any]) -> str:
    """The counterexample page of a record (`runner.RECORD_KEYS`) whose path `trace` re-ran."""
    system = trace.system
    rec = _full(rec)
    prop = rec.get("property") or ("deadlock" if rec.get("verdict") == "deadlock" else "")
    ex = explain(trace, prop, str(rec.get("detail", "")))
    _mark(trace, ex)
    sc = system.scenario
    return (
        _env()
        .get_template("trace.html.j2")
        .render(
            **_common(f"{sc.name} / {rec['policy']}: {rec['label']}"),
            rec=rec,
            scenario=sc,
            config_label=rec.get("config_label") or sc.config.label(),
            lanes=lanes_of(system),
            steps=trace.steps,
            ex=ex,
            lines=_scenario_lines(system),
        )
    )


def summary_page(
    system: System | None,
    rec: dict[str, Any],
    calls: dict[str, int] | None = None,
    files: dict[str, str] | None = None,
) -> str:
    """The page of a run without a trace: safe, stopped (or an error)."""
    rec = _full(rec)
    reached = sorted(n for n, c in (calls or {}).items() if c)
    unreached = sorted(n for n, c in (calls or {}).items() if not c)
    armed = ["guest-transparency"]
    if system is not None:
        kinds = {type(op).__name__ for op in system.scenario.host_program}
        if kinds & {"ZapOp", "RemapOp", "DeleteMemslotOp", "MoveMemslotOp"}:
            armed.insert(0, "host-isolation")
        if "WrprotectOp" in kinds:
            armed.insert(len(armed) - 1, "dirty-logging")
    return (
        _env()
        .get_template("summary.html.j2")
        .render(
            **_common(f"{rec['scenario']} / {rec['policy']}: {rec['label']}"),
            rec=rec,
            lines=_scenario_lines(system) if system is not None else [],
            armed=armed,
            calls=calls or {},
            files=files or {},
            reached=reached,
            unreached=unreached,
        )
    )


def page_for(system: System | None, rec: dict[str, Any], *, with_coverage: bool = True) -> str:
    """The page of one record: a counterexample page when it has a trace, else a summary."""
    if system is not None and rec.get("verdict") in ("violation", "deadlock"):
        return trace_page(run_trace(system, rec["path"]), rec)
    calls = files = None
    if system is not None and rec.get("verdict") == "safe" and with_coverage:
        calls, files = coverage(system)
    return summary_page(system, rec, calls, files)


def page_name(rec: dict[str, Any]) -> str:
    """A file name for a record's page: scenario, policy and configuration."""
    parts = [str(rec.get("scenario", "run")), str(rec.get("policy", ""))]
    if rec.get("config_label"):
        parts.append(str(rec["config_label"]))
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "--".join(p for p in parts if p)) + ".html"


def index_page(entries: Iterable[tuple[str, dict[str, Any]]]) -> str:
    return (
        _env()
        .get_template("index.html.j2")
        .render(**_common("kvmtlb check"), entries=list(entries))
    )


def write_check_pages(
    records: Sequence[dict[str, Any]],
    directory: Path,
    given: Sequence[tuple[str, type[Any]]] = (),
) -> list[Path]:
    """`kvmtlb check --html DIR`: one page per record (a counterexample page for a violation or
    a deadlock, a summary page otherwise) and an index.html linking them. `given` holds the
    (spec, class) of the PATH.py:Class policies the run loaded. Returns the pages written."""
    from kvmtlb.check.runner import record_system  # runner imports nothing of this module

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names: list[tuple[str, dict[str, Any]]] = []
    for rec in records:
        system = None
        if rec.get("verdict") != "error":
            system = record_system(rec, Path.cwd(), list(given))
        name = page_name(rec)
        path = directory / name
        path.write_text(page_for(system, rec), encoding="utf-8")
        written.append(path)
        names.append((name, rec))
    index = directory / "index.html"
    index.write_text(index_page(names), encoding="utf-8")
    return [index, *written]


def replay_page_paths(target: Path, count: int) -> list[Path]:
    """`kvmtlb replay --html FILE`: FILE for one record; FILE-1.html, FILE-2.html, ... for
    several."""
    if count == 1:
        return [target]
    return [target.with_name(f"{target.stem}-{n}{target.suffix}") for n in range(1, count + 1)]


__all__ = [
    "Explanation",
    "Row",
    "StepView",
    "Trace",
    "coverage",
    "decode",
    "explain",
    "index_page",
    "page_for",
    "page_name",
    "replay_page_paths",
    "run_trace",
    "stale_entries",
    "summary_page",
    "trace_page",
    "write_check_pages",
]
