"""`kvmtlb lint`: validate scenario files without exploring them, and warn about likely mistakes.

Errors are the parser's own (`ScenarioError`: the file, the line, the fix), the ones `kvmtlb check`
reports before it explores, plus the ones building the system finds (more zaps of a frame than
its pool of fresh host pages). Warnings flag what is valid but probably not what the author meant
(docs/scenarios.md, "Lint"):

- `flush-no-target`: a `flush_tlb` with no vCPU to shoot down (`others` or `all` with vcpus = 1):
  only the local flush runs;
- `resume-without-preempt`: `resume vcpuN` with no `preempt vcpuN` before it: it waits until the
  scheduler switches vcpuN out, which happens only if it time-shares a pCPU; otherwise the host
  thread never gets past it (`unreachable` then names the host ops after it);
- `preempt-twice`: `preempt vcpuN` while the host already holds vcpuN out: never enabled;
- `never-resumed`: a vCPU the host preempts and never resumes, which has guest ops;
- `never-mapped`: a GVA that neither [guest] nor any `map` maps: every access to it faults;
- `root-never-loaded`: a `[guest.NAME]` page table no `mov_cr3` loads and no `link` from a walked
  page table reaches: no access ever translates through it (its PTE writes only matter to shadow
  paging's write tracking);
- `created-idle`: a `create vcpuN` (second VM) of a vCPU without guest ops: nothing it runs
  reads a translation, so no property can see a stale one;
- `collapse-without-log`: a `collapse` (dirty logging off) of a 2 MiB region no earlier
  `wrprotect` put under dirty logging: the region was never split, so nothing collapses;
- `move-unwatched`: a `move_memslot` whose old GPA no guest page table maps (no [guest] entry, no
  `map`): no access can go through it, so nothing checks that the move flushed it;
- `pml-without-log`: `pml = true` with no `wrprotect` (PML only changes how KVM logs dirty pages);
- `huge-knob`: `tdp_mmu` or `eager_split` changed without a 2 MiB region (they only change the
  huge-page paths);
- `knob`: `vpids` or `max_asid` set far from real hardware (processors have far more VPIDs than a
  scenario has vCPUs, at least 63 ASIDs and at most 32,767), which usually forces exhaustion or a
  wrap on purpose; the warning says what it does.

Exit codes: 0 when every file is valid (with or without warnings), 2 when one has an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

KINDS = (
    "flush-no-target",
    "never-mapped",
    "resume-without-preempt",
    "preempt-twice",
    "unreachable",
    "never-resumed",
    "root-never-loaded",
    "created-idle",
    "knob",
    "invvpid-unused-vpid",
    "ept12-unused-gpa",
    "npt12-unused-gpa",
    "collapse-without-log",
    "pml-without-log",
    "huge-knob",
    "move-unwatched",
    "sregs-held",
)
REAL_MIN_ASID = 63  # AMD K8: 64 ASIDs, ASID 0 the host's
REAL_MAX_ASID = 32767  # Zen: 32,768 ASIDs


@dataclass(frozen=True)
class LintWarning:
    path: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: warning[{self.kind}]: {self.message}"


def lint(path: str | Path) -> list[LintWarning]:
    """The warnings of the scenario file `path`; raises ScenarioError when it is invalid."""
    from kvmtlb.kvm.policy import registry
    from kvmtlb.model.scenario import load

    scenario = load(path, set(registry()))
    _build_checks(scenario)
    return warnings(scenario)


def _build_checks(scenario: object) -> None:
    """What building the system checks besides the parser (without booting a policy)."""
    from kvmtlb.host.ops import ZapOp
    from kvmtlb.model.scenario import MAX_ZAPS, Scenario, ScenarioError

    assert isinstance(scenario, Scenario)
    seen: dict[int, int] = {}
    for op in scenario.host_program:
        if isinstance(op, ZapOp):
            seen[op.gpa] = seen.get(op.gpa, 0) + 1
            if seen[op.gpa] > MAX_ZAPS:
                raise ScenarioError(
                    scenario.path,
                    op.line,
                    f"more than {MAX_ZAPS} zaps of {op.gpa:#x}",
                    f"zap a guest frame at most {MAX_ZAPS} times",
                )


def warnings(scenario: object) -> list[LintWarning]:
    from kvmtlb.guest.l1_ops import (
        EptMapOp,
        InvvpidOp,
        NptMapOp,
        VmlaunchOp,
        VmresumeOp,
        VmrunOp,
    )
    from kvmtlb.guest.ops import (
        DEFAULT_ROOT,
        AccessOp,
        EmulatedReadOp,
        FlushTlbOp,
        InvlpgOp,
        LinkOp,
        MapOp,
        MovCr3Op,
    )
    from kvmtlb.host.ops import (
        CollapseOp,
        CreateVcpuOp,
        MoveMemslotOp,
        PreemptOp,
        ResumeOp,
        SetSregsOp,
        WrprotectOp,
    )
    from kvmtlb.model.scenario import VM1_ROOT, Scenario
    from kvmtlb.tomlfile import Lines

    assert isinstance(scenario, Scenario)
    s = scenario
    cfg = s.config
    out: list[LintWarning] = []

    def warn(line: int, kind: str, message: str) -> None:
        assert kind in KINDS, kind
        out.append(LintWarning(s.path, line, kind, message))

    # -- guest threads ---------------------------------------------------------------------------
    mapped = set(s.guest) | {op.gva for p in s.programs for op in p if isinstance(op, MapOp)}
    for name, table in s.roots.items():
        if name != VM1_ROOT or not s.vm1:
            mapped |= set(table)
    # a vCPU of the second VM translates through its VM's page table only
    vm1_mapped = set(s.roots.get(VM1_ROOT, {})) if s.vm1 else set()
    loaded = {op.root for p in s.programs for op in p if isinstance(op, MovCr3Op) and op.root}
    loaded |= {op.root for p in s.programs for op in p if isinstance(op, VmlaunchOp | VmrunOp)}
    loaded |= {op.root for op in s.host_program if isinstance(op, SetSregsOp) and op.root}
    if s.vm1:
        loaded.add(VM1_ROOT)  # the second VM's vCPUs start on it
    # a `link` from a page table that is walked makes the walk reach the target's tables
    links = [(op.root, op.target) for p in s.programs for op in p if isinstance(op, LinkOp)]
    reached = {DEFAULT_ROOT, *loaded}
    while grown := {t for r, t in links if r in reached} - reached:
        reached |= grown
    loaded |= reached
    lines = Lines(s.text)
    for name in s.roots:
        if name not in loaded:
            warn(
                lines.nested("guest", name),
                "root-never-loaded",
                f"no mov_cr3 loads the page table [guest.{name}]: no access translates through "
                f"it; add mov_cr3 {name} to a vCPU's ops",
            )
    for v, prog in enumerate(s.programs):
        for op in prog:
            if isinstance(op, FlushTlbOp) and not op.targets:
                warn(
                    op.line,
                    "flush-no-target",
                    f"vcpu{v}'s flush_tlb has no other vCPU to shoot down (vcpus = {cfg.vcpus}): "
                    "only the local flush runs; set vcpus = 2 or more for a shootdown",
                )
            known = vm1_mapped if v in s.vm1 else mapped
            if (
                isinstance(op, AccessOp | EmulatedReadOp | InvlpgOp)
                and op.gva not in known
                and not (v not in s.vm1 and s.huge_gva(op.gva))  # in a 2 MiB guest page
            ):
                warn(
                    op.line,
                    "never-mapped",
                    f"{op.gva:#x} is never mapped ([guest] or a map op): every access to it "
                    "faults; map it if the access should translate",
                )
    # -- L1's INVVPIDs ----------------------------------------------------------------------------
    for v, prog in enumerate(s.programs):
        used = {op.vpid for op in prog if isinstance(op, VmlaunchOp | VmresumeOp)}
        for op in prog:
            if isinstance(op, InvvpidOp) and op.type != 2 and op.vpid not in used:
                warn(
                    op.line,
                    "invvpid-unused-vpid",
                    f"vcpu{v}'s L1 invalidates VPID {op.vpid}, which no vmlaunch or vmresume of "
                    f"its gives L2: it removes nothing L2 uses (KVM flushes vpid02 anyway); name "
                    f"a VPID of a vmcs12 ({', '.join(map(str, sorted(used))) or 'none'})",
                )
    # -- L1's EPT12 / NPT12 stores (nested EPT / NPT) ---------------------------------------------
    l2_gpas = {gpa for name in s.roots for gpa, _ in s.roots[name].values()}
    l2_gpas |= {
        op.gpa for p in s.programs for op in p if isinstance(op, MapOp) and op.root != DEFAULT_ROOT
    }
    named = ", ".join(f"{g:#x}" for g in sorted(l2_gpas)) or "none"
    for v, prog in enumerate(s.programs):
        for op in prog:
            if isinstance(op, EptMapOp) and op.l2gpa not in l2_gpas:
                warn(
                    op.line,
                    "ept12-unused-gpa",
                    f"vcpu{v}'s L1 changes the EPT12 entry of L2 GPA {op.l2gpa:#x}, which no "
                    "page table of L2 names: no L2 access goes through it; name an L2 GPA of a "
                    f"[guest.NAME] table ({named})",
                )
            if isinstance(op, NptMapOp) and op.l2gpa not in l2_gpas:
                warn(
                    op.line,
                    "npt12-unused-gpa",
                    f"vcpu{v}'s L1 changes the NPT12 entry of L2 GPA {op.l2gpa:#x}, which no "
                    "page table of L2 names: no L2 access goes through it; name an L2 GPA of a "
                    f"[guest.NAME] table ({named})",
                )
    # -- the host thread -------------------------------------------------------------------------
    sharing = {v for v in range(cfg.vcpus) if s.placement.count(s.placement[v]) > 1}
    held: dict[int, int] = {}  # vCPU -> line of the preempt that holds it out
    blocked = 0
    for hop in s.host_program:
        if blocked:
            warn(
                hop.line,
                "unreachable",
                f"{hop.describe()} never runs: the host thread cannot get past line {blocked}",
            )
            continue
        if isinstance(hop, PreemptOp):
            if hop.vcpu in held:
                warn(
                    hop.line,
                    "preempt-twice",
                    f"vcpu{hop.vcpu} is already held out by the preempt on line {held[hop.vcpu]}: "
                    f"this preempt is never enabled; resume vcpu{hop.vcpu} first",
                )
                blocked = hop.line
            held[hop.vcpu] = hop.line
        elif isinstance(hop, SetSregsOp) and hop.vcpu in held:
            warn(
                hop.line,
                "sregs-held",
                f"vcpu{hop.vcpu} is held out by the preempt on line {held[hop.vcpu]}: its thread "
                f"cannot make the ioctl until resumed, so this never runs; resume vcpu{hop.vcpu} "
                "first",
            )
            blocked = hop.line
        elif isinstance(hop, CreateVcpuOp):
            if not s.programs[hop.vcpu]:
                warn(
                    hop.line,
                    "created-idle",
                    f"vcpu{hop.vcpu} is created but has no guest ops: no access of it can see a "
                    f"stale translation; give vcpu{hop.vcpu} a read",
                )
        elif isinstance(hop, ResumeOp):
            if hop.vcpu in held:
                del held[hop.vcpu]
            elif hop.vcpu in sharing:
                warn(
                    hop.line,
                    "resume-without-preempt",
                    f"resume vcpu{hop.vcpu} without a preempt vcpu{hop.vcpu} before it: it waits "
                    f"until the scheduler switches vcpu{hop.vcpu} out; add preempt vcpu{hop.vcpu} "
                    "first to say when",
                )
            else:
                warn(
                    hop.line,
                    "resume-without-preempt",
                    f"resume vcpu{hop.vcpu} without a preempt vcpu{hop.vcpu} before it: vcpu"
                    f"{hop.vcpu} stays loaded (it has its pCPU to itself), so this never runs; "
                    f"add preempt vcpu{hop.vcpu} first",
                )
                blocked = hop.line
    logged: set[int] = set()  # 2 MiB regions under dirty logging so far
    for hop in s.host_program:
        region = getattr(hop, "gpa", -1) & ~((1 << 21) - 1)
        if isinstance(hop, WrprotectOp) and region in s.huge:
            logged.add(region)
        elif isinstance(hop, CollapseOp):
            if region not in logged:
                warn(
                    hop.line,
                    "collapse-without-log",
                    f"no wrprotect before it put the region at {region:#x} under dirty logging: "
                    "its huge SPTE was never split, so nothing collapses; wrprotect a frame of "
                    "it first",
                )
            logged.discard(region)
    gpas_mapped = {gpa for table in (s.guest, *s.roots.values()) for gpa, _ in table.values()}
    gpas_mapped |= {op.gpa for p in s.programs for op in p if isinstance(op, MapOp)}
    for hop in s.host_program:
        if isinstance(hop, MoveMemslotOp) and hop.gpa not in gpas_mapped:
            warn(
                hop.line,
                "move-unwatched",
                f"no guest page table maps the old GPA {hop.gpa:#x}: no access goes through "
                "it, so nothing checks that the move flushed it; map a GVA to it in [guest]",
            )
    for v, line in sorted(held.items()):
        if s.programs[v]:
            warn(
                line,
                "never-resumed",
                f"vcpu{v} is preempted here and never resumed: the guest ops it has not run by "
                f"then never run; add resume vcpu{v} if it should finish",
            )
    # -- knobs -----------------------------------------------------------------------------------
    if cfg.pml and not any(isinstance(op, WrprotectOp) for op in s.host_program):
        warn(
            _config_line(s, "pml"),
            "pml-without-log",
            "pml = true only changes how KVM logs dirty pages, and no wrprotect switches dirty "
            "logging on: add wrprotect GPA to the host thread, or remove pml",
        )
    if not s.huge:
        for key, default in (("tdp_mmu", True), ("eager_split", True)):
            if getattr(cfg, key) != default:
                warn(
                    _config_line(s, key),
                    "huge-knob",
                    f"{key} = {str(getattr(cfg, key)).lower()} only changes how KVM handles 2 MiB "
                    'SPTEs, and [host] maps no 2 MiB region: add one ("HPA RIGHTS 2m")',
                )
    if cfg.vendor == "intel" and cfg.vpids <= cfg.vcpus:
        warn(
            _config_line(s, "vpids"),
            "knob",
            f"vpids = {cfg.vpids} leaves fewer VPIDs than vCPUs ({cfg.vcpus}; real KVM has "
            "65,535): some vCPUs run with VPID 0, as on VPID exhaustion",
        )
    asid_line = _config_line(s, "max_asid")
    if cfg.vendor == "amd" and asid_line and cfg.max_asid < REAL_MIN_ASID:
        warn(
            asid_line,
            "knob",
            f"max_asid = {cfg.max_asid} is below any AMD processor's ({REAL_MIN_ASID} to "
            f"{REAL_MAX_ASID:,}): a pCPU's ASIDs wrap (a new generation, TLB_CONTROL "
            f"FLUSH_ALL_ASID) after {cfg.max_asid} allocation{'s' if cfg.max_asid > 1 else ''}",
        )
    if cfg.vendor == "amd" and cfg.max_asid > REAL_MAX_ASID:
        warn(
            asid_line,
            "knob",
            f"max_asid = {cfg.max_asid} is above any AMD processor's ({REAL_MAX_ASID:,}): "
            "the run behaves as with 32,767 (no wrap in a scenario this small)",
        )
    return sorted(out, key=lambda w: w.line)


def _config_line(s: object, key: str) -> int:
    """The line of `key` in [config], or 0 when the file leaves it at its default."""
    from kvmtlb.model.scenario import Scenario
    from kvmtlb.tomlfile import Lines

    assert isinstance(s, Scenario)
    lines = Lines(s.text)
    line = lines.key("config", key)
    return line if line != lines.section("config") else 0


def lint_command(
    files: Annotated[
        list[str],
        typer.Argument(
            metavar="FILE|DIR|NAME",
            help="Scenario files, directories of them, or built-in scenario names.",
        ),
    ],
) -> None:
    """Validate scenario files without exploring them; print warnings about likely mistakes.

    Exit 0 when every file is valid (warnings or not), 2 when one has an error.
    """
    from kvmtlb.check.inputs import scenario_paths_or_exit
    from kvmtlb.model.scenario import ScenarioError

    failed = 0
    found = 0
    paths = scenario_paths_or_exit(files)
    for path in paths:
        try:
            ws = lint(path)
        except ScenarioError as e:
            typer.echo(f"error: {e}", err=True)
            failed += 1
            continue
        for w in ws:
            typer.echo(str(w))
        found += len(ws)
    typer.echo(
        f"{len(paths)} file{'s' if len(paths) != 1 else ''}: {failed} with errors, "
        f"{found} warning{'s' if found != 1 else ''}"
    )
    if failed:
        raise typer.Exit(2)


__all__ = ["KINDS", "LintWarning", "lint", "lint_command", "warnings"]
