"""One cost run: a workload's configuration under one policy, on the concrete machine.

Builds the VM (a guest page table per address space mapping its working set, and the EPT/NPT
mapping every guest frame, in a kvmtlb.hw layout), KVM's configuration and state as
kvmtlb.model.system does for a scenario, boots it the same way (every vCPU created, the first vCPU
of each pCPU loaded and run into the guest), zeroes the counters, then applies the schedule's
events (schedule.py) through the policy's own methods (guest.py, host.py) and counts what the
hardware does (machine.py). The result holds the counts, the cycle estimate of the cost table and
the run's speed.

With `tdp = false` there is no EPT/NPT: as model/system.py's `_shadow_layout` does for a
scenario, each guest page table gets one linear shadow hierarchy (kvm/shadow.py), one last-level
shadow page (a bit of Kvm.unsync) per 2 MiB of linear addresses. The VM starts as one that has
been running: every page of the working sets has its SPTE (writable, the guest's rights) and
every shadow page is synced. KVM's shadow-MMU work is counted by the policy's own calls
(`_instrument`: unsyncs, pages and SPTEs synced, SPTEs zapped through the rmap); the exits by
reason here and in guest.py.

A nested workload (`nested = true`, cost/nested.py) has two page tables, L1's and L2's; at boot
each vCPU's L1 enters VMX operation and launches L2 (KVM's nested_roots: L2's table), and every
later event runs in L2. With TDP that is nested EPT: L1's EPT12 maps every guest frame to itself
(L2 GPA = L1 GPA), KVM's shadow EPT02 every frame to its host page (as its fault would), and L2's
page table is mapped in EPT01, EPT02 and EPT12 (model/system.py's layout for [ept12]).
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kvmtlb.cost import guest, host, nested
from kvmtlb.cost.costs import CostTable, by_category, default_costs, estimate
from kvmtlb.cost.host import CostError
from kvmtlb.cost.machine import CostMachine
from kvmtlb.cost.memory import WorkloadMemory
from kvmtlb.cost.schedule import (
    Accesses,
    Cr0WpToggle,
    Cr3Switch,
    DirtyLog,
    DirtyLogOff,
    Event,
    Load,
    NestedExit,
    Preempt,
    PteChange,
    Remap,
    Schedule,
    Shootdown,
    Zap,
    all_gvas,
    gpas,
    gvas,
    placement,
    space_of,
)
from kvmtlb.cost.step import CostStep
from kvmtlb.cost.tlb import KIND_BY_NAME
from kvmtlb.cost.validity import Ept12Intent, ShadowIntent, Validity
from kvmtlb.cost.workload import GVA_BASE, RunConfig, Workload
from kvmtlb.host.thread import HostThread
from kvmtlb.hw.cpu import (
    CR0_DEFAULT,
    CR4_DEFAULT,
    CR4_VMXE,
    VMX_ROOT,
    Cpu,
    Regs,
)
from kvmtlb.hw.layout import FRESH_HPA_BASE, LayoutBuilder
from kvmtlb.hw.machine import IntelArch
from kvmtlb.hw.outcomes import EptMisconfig, EptViolation, NestedPageFault, PageFault
from kvmtlb.hw.paging import E_ALL, E_R, E_W, G_W, make_ept, make_npt, make_pte, pte_addr
from kvmtlb.hw.svm import AmdArch
from kvmtlb.hw.universe import Universe
from kvmtlb.hw.vmcb import SVM_HOST, SvmCpu
from kvmtlb.hw.walk import ACCESS_KINDS, NotPresent, Stage2Fault
from kvmtlb.kvm.context import KvmConfig, hardware_setup, initial_guest_cr4
from kvmtlb.kvm.policy import KvmPolicy
from kvmtlb.kvm.shadow import spte_from_gpte
from kvmtlb.kvm.state import OUTSIDE_GUEST_MODE, Kvm, Pcpu, Vcpu
from kvmtlb.kvm.x86 import EXIT_SHADOW_PF, EXIT_TDP_FAULT
from kvmtlb.model.system import ptr_owner, ptr_values, shadow_page_bits

HPA_BASE = 0x1_0000_0000  # the host pages first backing the guest frames
NR_VPIDS = 1 << 16  # VMX_NR_VPIDS
HUGE = 1 << 21  # a 2 MiB region of guest frames (huge_pages)
MAX_STEPS = 64  # KVM steps a vCPU may take from host mode back into the guest


@dataclass
class Result:
    """What one run measured."""

    workload: str
    file: str
    config: RunConfig
    policy: str
    accesses: int
    seed: int
    counts: dict[str, int]
    cycles: dict[str, int]  # per cost figure
    categories: dict[str, int]  # cycles per plot category
    seconds: float  # CPU time of the run after boot (time.process_time: one core)

    @property
    def total_cycles(self) -> int:
        return sum(self.cycles.values())

    @property
    def rate(self) -> float:
        """Simulated guest accesses per CPU-second."""
        return self.accesses / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "file": self.file,
            "config": self.config.label(),
            "config_detail": self.config.as_dict(),
            "policy": self.policy,
            "accesses": self.accesses,
            "seed": self.seed,
            "counts": dict(sorted(self.counts.items())),
            "cycles": dict(sorted(self.cycles.items())),
            "cycles_by_category": self.categories,
            "total_cycles": self.total_cycles,
            "cpu_seconds": round(self.seconds, 3),
            "accesses_per_second": round(self.rate),
        }


class Simulation:
    """A VM of the workload's configuration under `policy`, booted and ready for events."""

    def __init__(
        self,
        workload: Workload,
        config: RunConfig,
        policy: KvmPolicy,
        costs: CostTable | None = None,
        *,
        audit: bool = False,
        trace: bool = False,
    ) -> None:
        self.workload = workload
        self.config = config
        self.policy = policy
        self.costs = costs or default_costs()
        self.placement = placement(config)
        self.inbox: list[list[tuple[int, int]]] = [[] for _ in range(config.vcpus)]
        vmx = config.vendor == "intel"
        tdp = config.tdp
        spaces = workload.address_spaces
        ws = workload.working_set
        # -- memory: the guest's page tables and the EPT/NPT (or the shadow tables) ------------
        b = LayoutBuilder()
        tdp_root = (b.ept_root() if vmx else b.npt_root()) if tdp else -1
        # nested EPT (cost/nested.py): L1's EPT12 and KVM's shadow EPT02; L2's page table is
        # mapped in both and in EPT01 (model/system.py does the same for an [ept12] scenario)
        nested_ept = config.nested and tdp
        ept12_root = b.ept_root() if nested_ept else -1
        ept02_root = b.ept_root() if nested_ept else -1
        roots = tuple(
            b.guest_root(
                (tdp_root, ept02_root, ept12_root)
                if nested_ept and a == nested.L2_SPACE
                else (tdp_root,)
                if tdp
                else ()
            )
            for a in range(spaces)
        )
        guest_root = roots[0]
        frames = gpas(workload)
        every = all_gvas(workload)
        ptes: dict[tuple[int, int], int] = {}
        for a in range(spaces):
            if workload.guest_huge_pages:  # PDE.PS: GVA_BASE + x maps GPA x (workload.py)
                for region in sorted({g & ~(HUGE - 1) for g in gvas(workload, a)}):
                    pde = make_pte(region - GVA_BASE, large=True)
                    b.map(roots[a], region, pde, level=2)
                continue
            for i, gva in enumerate(gvas(workload, a)):
                ptes[(a, gva)] = b.map(roots[a], gva, make_pte(frames[a * ws + i]))
            if not tdp:  # kvm/shadow.py reads every (page table, GVA)'s guest PTE slot
                for gva in every:
                    if (a, gva) not in ptes:
                        b.name(roots[a], gva)
        if config.huge_pages:  # a 2 MiB host page per 2 MiB region: HPA - GPA is constant
            backing = tuple(HPA_BASE + gpa for gpa in frames)
        else:
            backing = tuple(HPA_BASE + j * 0x1000 for j in range(len(frames)))
        regions = sorted({gpa & ~(HUGE - 1) for gpa in frames}) if config.huge_pages else []
        huge = tuple((base, HPA_BASE + base, E_ALL) for base in regions)
        shadow_roots: tuple[int, ...] = ()
        spt_bit: tuple[tuple[int, ...], ...] = ()
        if tdp:
            leaf = make_ept if vmx else make_npt
            for j, gpa in enumerate(frames):
                if huge:  # the 4 KiB SPTE of a frame exists once its region is split
                    b.allow(tdp_root, gpa, [0, leaf(backing[j], E_ALL)])
                    continue
                b.map(tdp_root, gpa, leaf(backing[j], E_ALL))
                if nested_ept:  # EPT12: L2 GPA = L1 GPA; EPT02: as the EPT02 fault makes it
                    b.map(ept12_root, gpa, make_ept(gpa, E_ALL))
                    b.map(ept02_root, gpa, make_ept(backing[j], E_ALL))
            for base, hpa, rights in huge:  # the region's PDE: the huge SPTE (model/system.py)
                b.map(tdp_root, base, leaf(hpa, rights, large=True), level=2)
        else:
            shadow_roots = tuple(b.linear_root() for _ in roots)
            _shadow_layout(b, shadow_roots, every, ptes, backing, frames[0])
            spt_bit = shadow_page_bits(len(roots), every)
        # the non-leaf entries of each page table and shadow table (kvm/shadow.py follows them)
        guest_ptr = ptr_values(b, roots, every) if not tdp else {}
        shadow_ptr = ptr_values(b, shadow_roots, every) if not tdp else {}
        layout = b.build()
        memory = WorkloadMemory(layout)
        # -- KVM's configuration (as kvmtlb.model.system.build) ---------------------------------
        caps, enable_vpid = hardware_setup(
            config.vendor, config.vpid, config.ept_vpid_cap, config.flush_by_asid, config.max_asid
        )
        arch: Any = IntelArch() if vmx else AmdArch()
        guest_cr4 = initial_guest_cr4(config.pge, config.pcid)
        if config.nested and vmx:
            guest_cr4 |= CR4_VMXE  # L1 is a VMX hypervisor (VMXON needs CR4.VMXE)
        host_regs = Regs(CR0_DEFAULT, 0, CR4_DEFAULT)
        kvm_config = KvmConfig(
            vendor=config.vendor,
            tdp=tdp,
            enable_vpid=enable_vpid,
            caps=caps,
            unrestricted_guest=tdp,
            nr_vpids=NR_VPIDS,
            max_asid=config.max_asid,
            pv_tlb_flush=config.pv_tlb_flush,
            nvcpus=config.vcpus,
            npcpus=config.pcpus,
            layout=layout,
            universe=Universe(layout, ()),  # the cost model keeps no MAY-sets
            tdp_root=tdp_root,
            guest_root=guest_root,
            gpas=tuple(frames),
            fresh_base=FRESH_HPA_BASE,
            guest_cr4=guest_cr4,
            host_regs=host_regs,
            rights=tuple(E_ALL for _ in frames),
            fresh_stride=max(16, (1 << 33) // len(frames)),
            roots=roots,
            root_names=tuple(f"as{a}" for a in range(spaces)),
            gvas=tuple(every) if not tdp else (),
            shadow_roots=shadow_roots,
            spt_bit=spt_bit,
            frame_of=dict(zip(backing, frames, strict=True)) if not tdp or nested_ept else {},
            guest_ptr=guest_ptr,
            shadow_ptr=shadow_ptr,
            ptr_owner=ptr_owner(guest_ptr, shadow_ptr),
            hv_range_flush=config.hv_range_flush,
            nested_roots=(nested.L2_SPACE,) if config.nested else (),
            huge=huge,
            tdp_mmu=config.tdp_mmu,
            l2_gpas=tuple(frames) if nested_ept else (),
            ept12_root=ept12_root,
            ept02_root=ept02_root,
        )
        # -- the validity oracle: which page table (or shadow table) an address belongs to ----
        walked = roots if tdp else shadow_roots

        def root_of(addr: int) -> int:
            a = space_of(addr)
            return walked[a] if 0 <= a < spaces else -1

        intent = None
        ept12 = None
        if nested_ept:
            ept12_slot = {gpa: layout.slot(ept12_root, gpa) for gpa in frames}
            ept12 = Ept12Intent(
                memory,
                ept02_root,
                ept12_slot,
                {gpa: j for j, gpa in enumerate(frames)},
                lambda: self.k.kvm.backing,
            )
        if not tdp:
            guest_slot = {gva: layout.slot(roots[a], gva) for (a, gva) in ptes}
            intent = ShadowIntent(
                memory,
                lambda page: guest_slot.get(page, -1),
                {gpa: j for j, gpa in enumerate(frames)},
                lambda: self.k.kvm.backing,
            )
        validity = Validity(
            memory,
            guest_root,
            tdp_root,
            intent,
            root_of if spaces > 1 or not tdp else None,
            walked,
            ept12,
        )
        # -- the machine --------------------------------------------------------------------------
        capacity = self.costs.capacities(config.vendor)
        capacity.update(workload.capacity)
        cpus: list[Any]
        if vmx:
            cpus = [Cpu(VMX_ROOT, host_regs) for _ in range(config.pcpus)]
        else:
            cpus = [SvmCpu(SVM_HOST, host_regs, None, host_regs) for _ in range(config.pcpus)]
        self.cm = CostMachine(
            memory,
            cpus,
            caps,
            arch,
            {KIND_BY_NAME[k]: v for k, v in capacity.items()},
            validity,
            audit=audit,
        )
        self.n: Counter[str] = self.cm.n
        if not tdp:
            policy = self.policy = _instrument(policy, self.n)
        elif nested_ept:
            policy = self.policy = _instrument_nested_ept(policy, self.n)
        elif huge:
            policy = self.policy = _instrument_huge(policy, self.n)
        # the address space each vCPU is in (guest.switch_mm; nested: L2's)
        self.space = [nested.L2_SPACE if config.nested else 0] * config.vcpus
        self.gen = [0] * spaces  # PTE changes per address space (the mm's tlb_gen)
        self.seen: list[dict[int, int]] = [{} for _ in range(config.vcpus)]
        self.k = CostStep.create(
            kvm_config,
            self.cm,
            Kvm(
                backing=backing,
                fresh=tuple(0 for _ in frames),
                dirty=tuple(True for _ in frames),
            ),
            [Vcpu(v, pc="vcpu_enter_guest", mode=OUTSIDE_GUEST_MODE) for v in range(config.vcpus)],
            [Pcpu(p) for p in range(config.pcpus)],
            [None] * config.vcpus,
            HostThread(home=self.placement),
            trace=trace,
        )
        self.tr_kind = ("combined" if tdp else "linear") if vmx else "asid"
        self.schedule = Schedule(workload, config)
        self._boot()

    def _boot(self) -> None:
        """As kvmtlb.model.system: create every vCPU; then every vCPU runs once on its pCPU (the
        schedule's placement), the first vCPU of each pCPU last, so that the VM starts as one that
        has been running: the first vCPU of each pCPU in the guest, the others preempted. The
        counters start at zero after that."""
        k, pol = self.k, self.policy
        pol.hardware_enable(k)
        for vcpu in k.vcpus:
            pol.vcpu_create(k, vcpu)
        for p, first in enumerate(self.schedule.initial()):
            if first < 0:
                continue
            others = [v for v, q in enumerate(self.placement) if q == p and v != first]
            for v in [*others, first]:
                pol.vcpu_load(k, k.vcpus[v], p)
                self.run_to_guest(v)
                if self.config.nested:
                    nested.enter_l2(self, v)
                if v != first:
                    host.schedule_out(self, v)
        self.cm.reset_counts()

    # -- KVM -------------------------------------------------------------------------------------
    def run_to_guest(self, v: int) -> None:
        """vCPU `v` runs KVM's steps (the policy's) until it is in guest mode, then handles the
        IPIs the guest sent it meanwhile."""
        k, pol = self.k, self.policy
        vcpu = k.vcpus[v]
        for _ in range(MAX_STEPS):
            if vcpu.pc == "guest":
                break
            pol.step(k, vcpu)
        else:
            raise CostError(
                f"{pol.name}: vcpu{v} does not reach guest mode after {MAX_STEPS} KVM steps "
                f"(it is at {vcpu.pc!r})"
            )
        guest.take_ipis(self, v)

    def resume_kicked(self) -> None:
        """Every vCPU a kick took out of the guest while another vCPU ran KVM code (the remote
        flush of a vCPU's fault path, kvm_mmu_remote_flush) and that still holds its pCPU runs
        KVM's entry path back into the guest, servicing the flush requests on the way."""
        for v, vcpu in enumerate(self.k.vcpus):
            if vcpu.pc != "guest" and vcpu.cpu >= 0 and self.k.pcpus[vcpu.cpu].running == v:
                self.n["kvm.kicked-reentries"] += 1
                self.run_to_guest(v)

    # -- events ----------------------------------------------------------------------------------
    def apply(self, ev: Event) -> None:
        if isinstance(ev, Accesses):
            self.accesses(ev.items)
        elif isinstance(ev, PteChange):
            guest.write_pte(self, ev.vcpu, ev.gva, ev.gpa)
            guest.shootdown(self, ev.vcpu, 0, ev.gva)
        elif isinstance(ev, Cr3Switch):
            guest.switch_mm(self, ev.vcpu, ev.space)
        elif isinstance(ev, Cr0WpToggle):
            guest.wp_window(self, ev.vcpu)
        elif isinstance(ev, NestedExit):
            nested.nested_exit(self, ev.vcpu, ev.kind, ev.gva, ev.gpa)
        elif isinstance(ev, Shootdown):
            guest.shootdown(self, ev.vcpu, ev.scope)
        elif isinstance(ev, Preempt):
            host.schedule_out(self, ev.vcpu)
        elif isinstance(ev, Load):
            host.schedule_in(self, ev.vcpu, ev.pcpu, ev.migrated)
        elif isinstance(ev, Zap):
            host.zap(self, ev.gpa)
        elif isinstance(ev, Remap):
            host.remap(self, ev.gpa)
        elif isinstance(ev, DirtyLog):
            host.dirty_log(self, ev.gpa)
        elif isinstance(ev, DirtyLogOff):
            host.dirty_log_off(self, ev.gpa)
        else:  # pragma: no cover
            raise AssertionError(ev)

    def accesses(self, items: list[tuple[int, int, bool]]) -> None:
        """Guest accesses (vCPU, linear page, write), each on the vCPU's pCPU. The common cases,
        a TLB hit the entry's rights allow and a plain walk, are CostMachine.access inlined, with
        each running vCPU's translation cache and probe key looked up once per batch."""
        cm = self.cm
        access = cm.access
        vcpus = self.k.vcpus
        if not self.k.config.tdp:
            for v, gva, write in items:  # 1-D walks of the shadow tables: CostMachine.access
                o = access(vcpus[v].cpu, gva, write)
                if o is not None:
                    self._fault(v, gva, write, o)
            self._count_accesses(items)
            return
        miss = cm.walker.miss
        fast: dict[int, tuple[Any, Any, int, int]] = {}  # vCPU -> (TLB kind cache, context, ...)
        for v, gva, write in items:
            f = fast.get(v)
            if f is None:
                p = vcpus[v].cpu
                c = cm.context(p)
                f = fast[v] = (c.tr, c, c.tr_base, p)
            kc, c, base, p = f
            if not cm.audit:
                entries = kc.entries
                key = base | gva
                e: Any = entries.get(key)
                if e is not None:
                    entries.move_to_end(key)
                    er = e.erights
                    if er & E_R and (not write or (e.rights & G_W and er & E_W)):
                        continue
                elif not kc.n_global and not kc.large:
                    e = miss(c, gva)  # the only usable key was probed: walk
                    if type(e) is not NotPresent and type(e) is not Stage2Fault:
                        er = e.erights
                        if er & E_R and (not write or (e.rights & G_W and er & E_W)):
                            continue
                    else:  # the walk faulted
                        o = cm.outcome(p, gva, write, e)
                        if o is not None:
                            self._fault(v, gva, write, o)
                            fast.clear()
                        continue
            o = access(p, gva, write)
            if o is not None:
                self._fault(v, gva, write, o)
                fast.clear()  # the fault's exit and re-entry changed the contexts
        self._count_accesses(items)

    def _count_accesses(self, items: list[tuple[int, int, bool]]) -> None:
        n = self.n
        n["accesses"] += len(items)
        n["accesses.writes"] += sum(w for _, _, w in items)
        n[f"tlb.lookups.{self.tr_kind}"] += len(items)

    def _fault(self, v: int, gva: int, write: bool, o: Any) -> None:
        """An access faulted: an EPT violation / #NPF exits to the policy's fault handler and is
        retried after re-entry; a #PF is the guest's (the access completes as faulted)."""
        k = self.k
        for _ in range(8):
            vcpu = k.vcpus[v]
            p = vcpu.cpu
            if isinstance(o, PageFault) and not k.config.tdp:
                # shadow paging: KVM intercepts every #PF (FNAME(page_fault)): it installs the
                # SPTE and the access is retried, or it injects the guest's own #PF
                k.fault(p, o, "page-fault-exit")
                kind = ACCESS_KINDS.index("write" if write else "read")
                self.policy.vcpu_exit(k, vcpu, EXIT_SHADOW_PF, (gva, kind))
                self.n["kvm.shadow-faults"] += 1
                self.run_to_guest(v)
                if vcpu.pf_injected >= 0:
                    vcpu.pf_injected = -1  # the guest takes it: the access completes as faulted
                    self.n["guest.injected-pfs"] += 1
                    return
            elif isinstance(o, PageFault):
                k.fault(p, o, "page-fault")
                self.n["guest.page-faults"] += 1
                return
            if isinstance(o, EptViolation | NestedPageFault | EptMisconfig):
                name = "npf" if isinstance(o, NestedPageFault) else "ept-violation"
                k.fault(p, o, name)
                self.policy.vcpu_exit(k, vcpu, EXIT_TDP_FAULT, (o.gpa, int(write)))
                self.n["kvm.tdp-faults"] += 1
                self.run_to_guest(v)
                self.resume_kicked()
                if vcpu.pf_injected >= 0:  # nested EPT: an EPT violation reflected to L1
                    gpa, vcpu.pf_injected = vcpu.pf_injected, -1
                    nested.l1_ept_violation(self, v, gpa)
            o = self.cm.access(k.vcpus[v].cpu, gva, write)
            if o is None:
                return
        raise CostError(f"the access of {gva:#x} by vcpu{v} keeps faulting ({o.describe()})")

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> Result:
        t0 = time.process_time()
        for ev in self.schedule.events():
            self.apply(ev)
        seconds = time.process_time() - t0
        return self.result(seconds)

    def result(self, seconds: float) -> Result:
        counts = dict(self.cm.counts())
        counts["walk.refs"] = counts.get("walk.refs.guest", 0) + counts.get("walk.refs.stage2", 0)
        for total in ("removed.valid", "removed.stale", "abandoned.valid", "abandoned.stale"):
            counts[total] = sum(v for k, v in counts.items() if k.startswith(f"{total}."))
        counts["overflush"] = counts["removed.valid"] + counts["abandoned.valid"]
        vendor = self.config.vendor
        cycles = estimate(self.costs, vendor, counts)
        return Result(
            self.workload.name,
            self.workload.path,
            self.config,
            self.policy.name,
            counts.get("accesses", 0),
            self.workload.seed,
            counts,
            cycles,
            by_category(self.costs, vendor, cycles),
            seconds,
        )


def _shadow_layout(
    b: LayoutBuilder,
    shadow_roots: tuple[int, ...],
    every: list[int],
    ptes: dict[tuple[int, int], int],
    backing: tuple[int, ...],
    gpa_base: int,
) -> None:
    """The shadow tables (model/system.py's `_shadow_layout`, without value domains: the cost
    model's memory takes any value): per guest page table a linear hierarchy naming every GVA of
    every address space, with the SPTE of each page the table maps already made (the host page
    backing its frame, writable as its guest PTE is)."""
    for r, sroot in enumerate(shadow_roots):
        for gva in every:
            gpte = ptes.get((r, gva))
            if gpte is None:
                b.name(sroot, gva)
            else:
                hpa = backing[(pte_addr(gpte) - gpa_base) // 0x1000]
                b.map(sroot, gva, spte_from_gpte(gpte, hpa, True))


def _instrument(policy: KvmPolicy, n: Counter[str]) -> KvmPolicy:
    """A copy of `policy` whose shadow-MMU functions count their calls (each still runs the
    policy's own code): `shadow.unsyncs` (mmu_try_to_unsync_pages), `shadow.sync-pages`
    (kvm_sync_page), `shadow.sync-sptes` (SPTEs FNAME(sync_spte) changed or dropped),
    `shadow.rmap-zaps` (SPTEs kvm_zap_rmap dropped)."""
    pol = copy.copy(policy)
    unsync = pol.mmu_try_to_unsync_pages
    sync_page = pol.kvm_sync_page
    sync_spte = pol.kvm_sync_spte
    zap_rmap = pol.kvm_zap_rmap

    def mmu_try_to_unsync_pages(*args: Any) -> None:
        n["shadow.unsyncs"] += 1
        unsync(*args)

    def kvm_sync_page(*args: Any) -> bool:
        n["shadow.sync-pages"] += 1
        return sync_page(*args)

    def kvm_sync_spte(*args: Any) -> bool:
        changed = sync_spte(*args)
        n["shadow.sync-sptes"] += changed
        return changed

    def kvm_zap_rmap(k: Any, gpa: int) -> None:
        n["shadow.rmap-zaps"] += len(pol.rmap_sptes(k, gpa))
        zap_rmap(k, gpa)

    for f in (mmu_try_to_unsync_pages, kvm_sync_page, kvm_sync_spte, kvm_zap_rmap):
        setattr(pol, f.__name__, f)
    return pol


def _instrument_nested_ept(policy: KvmPolicy, n: Counter[str]) -> KvmPolicy:
    """A copy of `policy` whose nested-EPT functions count what they do (each still runs the
    policy's own code): `nested.ept02-root-loads` (kvm_mmu_load of guest_mmu: the EPT02 root
    loaded, synced and its EPTP flushed), `nested.ept02-roots-freed` (kvm_mmu_free_roots of
    guest_mmu freeing the EPT02 root: handle_invept @ v5.8 / v6.18), `nested.ept02-faults` (EPT
    violations of L2 handled by the EPT walker's FNAME(page_fault))."""
    pol = copy.copy(policy)
    load = pol.kvm_mmu_load
    free = pol.kvm_mmu_free_guest_mmu_roots
    fault = pol.kvm_mmu_page_fault

    def kvm_mmu_load(k: Any, vcpu: Vcpu) -> None:
        if pol.nested_ept_active(k, vcpu):
            n["nested.ept02-root-loads"] += 1
        load(k, vcpu)

    def kvm_mmu_free_guest_mmu_roots(k: Any, vcpu: Vcpu, eptps: int) -> None:
        current = vcpu.parked_root_valid and eptps >> vcpu.ept02_cur & 1
        n["nested.ept02-roots-freed"] += int(current) + (vcpu.ept02_prev & eptps).bit_count()
        free(k, vcpu, eptps)

    def kvm_mmu_page_fault(k: Any, vcpu: Vcpu, gpa: int, write: bool) -> None:
        if pol.nested_ept_active(k, vcpu):
            n["nested.ept02-faults"] += 1
        fault(k, vcpu, gpa, write)

    for f in (kvm_mmu_load, kvm_mmu_free_guest_mmu_roots, kvm_mmu_page_fault):
        setattr(pol, f.__name__, f)
    return pol


def _instrument_huge(policy: KvmPolicy, n: Counter[str]) -> KvmPolicy:
    """A copy of `policy` whose huge-page functions count what they do (each still runs the
    policy's own code): `huge.S-to-T`, the region PDE's changes from S to T (`huge` the 2 MiB
    SPTE, `table` a 4 KiB table, `none`: huge-to-table a split, table-to-huge a collapse,
    huge-to-none a drop or a zap), `kvm.range-flushes` and `kvm.range-flush-pages`
    (kvm_flush_remote_tlbs_range from a vCPU's fault path: a table replaced by a huge SPTE,
    drop_large_spte)."""
    pol = copy.copy(policy)
    set_pde = pol.set_huge_pde
    range_flush = pol.kvm_flush_remote_tlbs_range_vcpu

    def set_huge_pde(k: Any, i: int, kind: str, rights: int, why: str) -> None:
        old = pol.huge_pde(k, i)[0]
        if old != kind:
            n[f"huge.{old}-to-{kind}"] += 1
        set_pde(k, i, kind, rights, why)

    def kvm_flush_remote_tlbs_range_vcpu(
        k: Any, vcpu: Vcpu, start: int, npages: int, why: str
    ) -> None:
        n["kvm.range-flushes"] += 1
        n["kvm.range-flush-pages"] += npages
        range_flush(k, vcpu, start, npages, why)

    for f in (set_huge_pde, kvm_flush_remote_tlbs_range_vcpu):
        setattr(pol, f.__name__, f)
    return pol


def run(
    workload: Workload,
    config: RunConfig,
    policy: KvmPolicy,
    costs: CostTable | None = None,
    *,
    audit: bool = False,
) -> Result:
    """Build, boot and run one configuration of `workload` under `policy`."""
    return Simulation(workload, config, policy, costs, audit=audit).run()


__all__ = ["CostError", "Result", "Simulation", "run"]
