"""From a scenario and a policy to a system: layout, universe, KVM configuration, initial world.

The layout declares every value each paging-structure entry can take in the scenario (the guest
PTEs the `map`/`unmap` ops write; for each guest frame's EPT/NPT leaf, its first page, every page a
`remap` targets and one fresh page per `zap`, each with the write-protected variant), so that the
universe of cached entries is enumerated once, with a stable encoding (kvmtlb.hw.universe).

The initial world follows the contract's execution semantics: every vCPU has been created (VPID or
ASID allocation included), the lowest-numbered vCPU of each pCPU has been loaded there and has run
KVM's entry path (its requests serviced) into guest mode; the others are runnable, not loaded and
not marked preempted. TLBs and native references start empty, then the fill rule fills them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmtlb.errors import where
from kvmtlb.guest.l1_ops import EptMapOp, NptMapOp
from kvmtlb.guest.ops import (
    InvpcidOp,
    LinkOp,
    MapOp,
    MovCr3Op,
    SetCr0Op,
    UnlinkOp,
    UnmapOp,
    link_value,
)
from kvmtlb.guest.thread import GuestThread
from kvmtlb.host.ops import (
    AgeOp,
    ClearDirtyLogOp,
    CreateVcpuOp,
    DeleteMemslotOp,
    MoveMemslotOp,
    RemapOp,
    ResumeOp,
    SetSregsOp,
    SpawnOp,
    WrprotectOp,
    ZapAllFastOp,
    ZapGfnRangeOp,
    ZapOp,
)
from kvmtlb.host.thread import HostThread
from kvmtlb.hw.addr import region
from kvmtlb.hw.cpu import (
    CR0_DEFAULT,
    CR4_DEFAULT,
    CR4_VMXE,
    VMX_ROOT,
    Capabilities,
    Cpu,
    Regs,
)
from kvmtlb.hw.effect import DEFAULT_READINGS, Readings
from kvmtlb.hw.layout import FRESH_HPA_BASE, Format, LayoutBuilder
from kvmtlb.hw.machine import Machine, MachineConfig
from kvmtlb.hw.paging import (
    E_R,
    E_W,
    E_X,
    EPT_D,
    EPT_W,
    RW,
    P,
    ept_rights,
    make_ept,
    make_npt,
    make_pte,
    pte_addr,
)
from kvmtlb.hw.svm import AmdArch
from kvmtlb.hw.tags import AmdTags, IntelEptTags, IntelLinearTags
from kvmtlb.hw.universe import Universe
from kvmtlb.hw.vmcb import SVM_HOST, SvmCpu
from kvmtlb.hw.vmx import (
    CAP_INVEPT_ALL,
)
from kvmtlb.hw.walk import WalkContext, _npt_rights
from kvmtlb.kvm.context import (
    KvmConfig,
    Step,
    Thawed,
    World,
    hardware_setup,
    initial_guest_cr4,
)
from kvmtlb.kvm.policy import KvmPolicy
from kvmtlb.kvm.shadow import spte_from_gpte
from kvmtlb.kvm.state import OUTSIDE_GUEST_MODE, ROOT_FREE, ROOT_VALID, Kvm, Pcpu, Vcpu
from kvmtlb.model.native import NativeConfig, NativeMachine
from kvmtlb.model.nested_native import nested_native
from kvmtlb.model.nested_scenario import is_nested, l2_flush_ops, l2_roots, vpid12s
from kvmtlb.model.scenario import (
    HUGE,
    MAX_ZAPS,
    NO_MEMORY,
    VM1_ROOT,
    Scenario,
    ScenarioError,
)

RIGHTS = {"r": E_R, "w": E_W, "x": E_X}


@dataclass(frozen=True)
class System:
    """Everything fixed for one run of one scenario under one policy."""

    scenario: Scenario
    policy: KvmPolicy
    kvm: KvmConfig
    # the native reference runs on kvmtlb.oracle (model/native.py); a nested scenario's on the
    # hardware model with L1 as the hypervisor (model/nested_native.py)
    native: NativeConfig | MachineConfig
    initial: World
    memo: dict[Any, Any] = field(default_factory=dict)  # properties.check's memo

    @property
    def programs(self) -> tuple[tuple[object, ...], ...]:
        return self.scenario.programs


def _dirty_leaf(hpa: int, rights: int) -> int:
    """A writable 4 KiB EPT leaf as KVM makes it with PML: dirty (kvm/pml.py)."""
    return make_ept(hpa, rights) | EPT_D


def _rights(s: str) -> int:
    r = 0
    for c in s:
        r |= RIGHTS[c]
    return r


def build(scenario: Scenario, policy: KvmPolicy, readings: Readings = DEFAULT_READINGS) -> System:
    """Build the system for `scenario` under `policy` and boot it."""
    cfg = scenario.config
    vmx = cfg.vendor == "intel"
    b = LayoutBuilder()
    # EPT/NPT root pages: one, and one more per fast zap (kvm/mmu.py: a vCPU may hold an
    # obsolete root while the others load the next one)
    # (a memslot deletion zaps all roots too: kvm_arch_flush_shadow_memslot)
    fast_zaps = sum(
        isinstance(op, ZapAllFastOp | DeleteMemslotOp | MoveMemslotOp)
        for op in scenario.host_program
    )
    # a memslot move's destination -> source: the destination has no memory at first (no SPTE
    # in the boot root), then the source's page (kvm/memslot.py)
    moves = {op.to: op.gpa for op in scenario.host_program if isinstance(op, MoveMemslotOp)}
    ranged = {
        gpa
        for op in scenario.host_program
        for r in (op.op if isinstance(op, SpawnOp) else op,)
        if isinstance(r, ZapGfnRangeOp)
        for gpa in (r.first, r.second)
    }
    # a second VM ([vm1]; kvm/vm.py) has its own root page, from the same pool
    two_vms = bool(scenario.vm1)
    tdp_roots = (
        tuple(b.ept_root() if vmx else b.npt_root() for _ in range(1 + fast_zaps + two_vms))
        if cfg.tdp
        else ()
    )
    vm_of = tuple(int(v in scenario.vm1) for v in range(cfg.vcpus)) if two_vms else ()
    gpa_vm = tuple(int(g in scenario.vm1_gpas) for g in scenario.gpas) if two_vms else ()
    booted = boot_vcpus(scenario)
    tdp_root = tdp_roots[0] if cfg.tdp else -1
    root_names = scenario.root_names
    # nested EPT ([ept12]): L1's EPT12 and KVM's shadow EPT02 (kvm/nested_ept.py); L2's page
    # tables are mapped in both (the native reference walks them through EPT12, the processor
    # KVM drives through EPT02), L1's in EPT01
    nested_ept = bool(scenario.ept12)
    ept12_roots = tuple(b.ept_root() for _ in scenario.ept12_tables)
    ept02_roots = tuple(b.ept_root() for _ in scenario.ept12_tables)
    ept12_root = ept12_roots[0] if nested_ept else -1
    ept02_root = ept02_roots[0] if nested_ept else -1
    # nested NPT ([npt12]) alike: L1's NPT12 and KVM's shadow NPT02 (kvm/nested_npt.py)
    nested_npt = bool(scenario.npt12)
    npt12_root = b.npt_root() if nested_npt else -1
    npt02_root = b.npt_root() if nested_npt else -1
    # an L2 without nested EPT on an EPT L0, or without nested NPT on an NPT L0
    # (kvm/nested_ept01.py): KVM runs it on a direct root of its own (role.guest_mode), which
    # maps L2's page tables as EPT01/NPT01 maps L1's
    l2_on_ept01 = cfg.tdp and not nested_ept and not nested_npt and is_nested(scenario.programs)
    l2_tdp_root = (b.ept_root() if vmx else b.npt_root()) if l2_on_ept01 else -1
    l2_indices = l2_roots(scenario) if nested_ept or nested_npt or l2_on_ept01 else ()
    if nested_ept:
        l2_stage2: tuple[int, ...] = (*ept02_roots, *ept12_roots)
    elif nested_npt:
        l2_stage2 = (npt02_root, npt12_root)
    else:
        l2_stage2 = (l2_tdp_root,)
    roots = tuple(
        b.guest_root((*tdp_roots, *l2_stage2) if r in l2_indices else tdp_roots)
        for r in range(len(root_names))
    )
    guest_root = roots[0]
    gvas = scenario.gvas
    gpas = scenario.gpas
    # -- guest page tables: initial PTEs and every value the ops write -----------------------
    # (a 2 MiB guest page's entry is its region's PDE, PS = 1: `huge_pde`, below)
    huge_pages = {(root_names.index(name), gva) for name, gva in scenario.guest_huge}
    pte_values: dict[tuple[int, int], list[int]] = {}
    pde_values: dict[tuple[int, int], list[int]] = {}
    for r, name in enumerate(root_names):
        for gva, (gpa, flags) in scenario.root_map(name).items():
            if (r, gva) in huge_pages:
                b.map(roots[r], gva, _pte(gpa, flags, huge=True), level=2)
                pde_values[(r, gva)] = [_pte(gpa, flags, huge=True)]
                continue
            b.map(roots[r], gva, _pte(gpa, flags))
            pte_values[(r, gva)] = [_pte(gpa, flags)]
    for prog in scenario.programs:
        for op in prog:
            if isinstance(op, MapOp | UnmapOp):
                r = root_names.index(op.root)
                value = _pte(op.gpa, op.flags, huge=op.huge) if isinstance(op, MapOp) else 0
                (pde_values if op.huge else pte_values).setdefault((r, op.gva), [0]).append(value)
    for (r, base), values in pde_values.items():
        b.allow(roots[r], base, values, level=2)
    for r, name in enumerate(root_names):
        for gva in gvas:
            if (r, gva & ~(HUGE - 1)) in huge_pages:
                # in a 2 MiB guest page: walked at every fill, with no PTE of its own
                b.name(roots[r], gva, create=False)
                continue
            if gva not in scenario.root_map(name):
                b.name(roots[r], gva)
            b.allow(roots[r], gva, pte_values.get((r, gva), [0]))
    # -- the PDEs `link`/`unlink` write: a pointer to some page table's last-level table page of
    # the region, or 0 ---------------------------------------------------------------------------
    guest_ptr = ptr_values(b, roots, gvas, huge_pages)
    relinked: set[tuple[int, int, int]] = set()  # (root, level, region) of the entries written
    for prog in scenario.programs:
        for op in prog:
            if isinstance(op, LinkOp | UnlinkOp):
                r = root_names.index(op.root)
                relinked.add((r, op.level, region(op.gva, op.level)))
                b.allow(roots[r], op.gva, [link_value(guest_ptr, root_names, op)], level=op.level)
    # -- EPT/NPT leaves (or the host pages shadow SPTEs may name): first page, remap targets,
    # fresh pages, write-protected variants -----------------------------------------------------
    kvm_config_base = dict(gpas=gpas, fresh_base=FRESH_HPA_BASE)
    rights = tuple(_rights(scenario.host[g][1]) for g in gpas)
    host_pages: dict[int, tuple[list[int], bool]] = {}
    for i, gpa in enumerate(gpas):
        hpa = scenario.host[gpa][0]
        r = rights[i]
        # each zap, and each memslot deletion (new memory), gives the frame a fresh page
        zap_ops = [
            op
            for op in scenario.host_program
            if isinstance(op, ZapOp | DeleteMemslotOp) and op.gpa == gpa
        ]
        zaps = len(zap_ops)
        if zaps > MAX_ZAPS:
            raise ScenarioError(
                scenario.path,
                zap_ops[MAX_ZAPS].line,
                f"more than {MAX_ZAPS} zaps of {gpa:#x}",
                f"zap a guest frame at most {MAX_ZAPS} times",
            )
        targets = [
            op.hpa for op in scenario.host_program if isinstance(op, RemapOp) and op.gpa == gpa
        ]
        # (dirty logging of a 2 MiB region's memslot write-protects all its frames)
        huge_base = gpa & ~(HUGE - 1) if gpa & ~(HUGE - 1) in scenario.huge else -1
        protect = any(
            isinstance(op, WrprotectOp | ClearDirtyLogOp)
            and (op.gpa == gpa or op.gpa & ~(HUGE - 1) == huge_base)
            for op in scenario.host_program
        )
        fresh = [FRESH_HPA_BASE + (i * 16 + n) * 0x1000 for n in range(zaps)]
        pages = [hpa, *targets, *fresh]
        host_pages[gpa] = (pages, protect)
        leaf: Callable[[int, int], int] = make_ept if vmx else make_npt
        if gpa in moves:
            # a move's destination: not mapped until the move; then its SPTE names the moved
            # page (the source's), faulted in under whichever root is current
            host_pages[gpa] = ([], False)
            moved = [0, leaf(scenario.host[moves[gpa]][0], r)]
            for root in tdp_roots:
                b.allow(root, gpa, moved)
            continue
        if not cfg.tdp:
            continue
        values = [leaf(h, rr) for h in pages for rr in ((r, r & ~E_W) if protect else (r,))]
        if cfg.pml and r & E_W:
            # kvm/pml.py: KVM makes a writable SPTE dirty (the boot one too) and cleans it for
            # dirty logging; the processor sets the flag again on a write (hw/dirty.py)
            values = [v | EPT_D for v in values if v & EPT_W] + values
            leaf = _dirty_leaf
        if l2_on_ept01:
            b.allow(l2_tdp_root, gpa, [0, *values])  # faulted in while L2 runs
        if two_vms:
            # its VM's boot root maps it (if that VM has a vCPU at boot); either root page may
            # come to hold it (a page the destroyed VM freed becomes the other VM's root), and
            # kvm_destroy_vm zaps it
            vm = gpa_vm[i]
            for n, root in enumerate(tdp_roots):
                if n == vm and any(vm_of[v] == vm for v in booted):
                    b.map(root, gpa, leaf(hpa, r))
                b.allow(root, gpa, [0, *values])
            continue
        if huge_base >= 0:
            # a frame of a 2 MiB region: its 4 KiB SPTE exists once the region is split (the
            # region's PDE below points at this table then); a region an exec fault split for
            # NX starts so, with the 4 KiB SPTE of the frame executed, its first
            if huge_base in scenario.nx_huge and gpa == huge_base:
                b.map(tdp_root, gpa, leaf(hpa, r))
            b.allow(tdp_root, gpa, [0, *values])
            continue
        b.map(tdp_root, gpa, leaf(hpa, r))
        aged = any(isinstance(op, AgeOp) and op.gpa == gpa for op in scenario.host_program)
        if targets or fresh or fast_zaps or gpa in ranged or aged:
            values.append(0)
        b.allow(tdp_root, gpa, values)
        for other in tdp_roots[1:]:  # empty until a root is allocated there
            b.allow(other, gpa, [0, *values])
    l2_gpas: tuple[int, ...] = ()
    if nested_ept:
        l2_gpas = _nested_ept_layout(b, scenario, ept12_roots, ept02_roots, host_pages, rights)
    elif nested_npt:
        l2_gpas = _nested_ept_layout(
            b, scenario, (npt12_root,), (npt02_root,), host_pages, rights, npt=True
        )
    huge: list[tuple[int, int, int]] = []
    for base, (hpa, rs) in scenario.huge.items():
        # the region's EPT/NPT PDE: the huge leaf (write-protected too, under dirty logging),
        # the pointer to its 4 KiB table (split), or not present (zapped)
        r = _rights(rs)
        big = make_ept if vmx else make_npt
        protect = any(
            isinstance(op, WrprotectOp) and op.gpa & ~(HUGE - 1) == base
            for op in scenario.host_program
        )
        leaves = [big(hpa, r, large=True), *([big(hpa, r & ~E_W, large=True)] if protect else [])]
        if base in scenario.nx_huge:  # split: the PDE points at the table the frames made
            b.allow(tdp_root, base, [0, *leaves], level=2)
        else:
            b.map(tdp_root, base, leaves[0], level=2)
            b.allow(tdp_root, base, [0, *leaves[1:]], level=2)
        huge.append((base, hpa, r))
    shadow_roots: tuple[int, ...] = ()
    spt_bit: tuple[tuple[int, ...], ...] = ()
    shadow_ptr: dict[tuple[int, int, int], int] = {}
    # role.cr0_wp: a guest that clears CR0.WP runs on shadow pages of its own (kvm/shadow.py)
    wp_roles = any(
        isinstance(op, SetCr0Op) and not op.value for prog in scenario.programs for op in prog
    )
    if not cfg.tdp:
        n = len(roots)
        shadow_roots = tuple(b.linear_root() for _ in range(2 * n if wp_roles else n))
        _shadow_layout(b, scenario, shadow_roots, pte_values, host_pages, rights, pde_values)
        spt_bit = shadow_page_bits(len(shadow_roots), gvas)
        shadow_ptr = ptr_values(b, shadow_roots, gvas)
        # KVM zaps a shadow entry when the guest writes the entry it shadows, and FNAME(fetch)
        # links it again to the shadow page (of the same role) of whichever table the guest's
        # entry then names
        for r, level, reg in sorted(relinked):
            gva = next(g for g in gvas if region(g, level) == reg)
            for s in range(r, len(shadow_roots), n):
                targets = [
                    v
                    for (t, lv, rg), v in shadow_ptr.items()
                    if (lv, rg) == (level, reg) and t // n == s // n
                ]
                b.allow(shadow_roots[s], gva, [0, *targets], level=level)
        # a guest 2 MiB page is mapped through a direct shadow page (role.direct): the shadow
        # PDE links it, and KVM zaps that PDE when the guest writes its own
        for r, base in sorted(huge_pages):
            for s in range(r, len(shadow_roots), n):
                b.allow(shadow_roots[s], base, [0], level=2)
    layout = b.build()
    frame_of = {h: gpa for gpa, (pages, _) in host_pages.items() for h in pages}
    # -- tags the run can reach ----------------------------------------------------------------
    pcid_set = {0}
    for prog in scenario.programs:
        for op in prog:
            if isinstance(op, MovCr3Op) and op.pcid >= 0:
                pcid_set.add(op.pcid)
            if isinstance(op, InvpcidOp):
                pcid_set.add(op.pcid)
    pcid_set |= {max(op.pcid, 0) for op in scenario.host_program if isinstance(op, SetSregsOp)}
    pcids = sorted(pcid_set)
    contexts: list[WalkContext] = []
    tags: list[IntelEptTags | IntelLinearTags | AmdTags]
    # nested VMX: each vCPU may also hold a vpid02 (kvm/nested_vmx.py)
    nested = is_nested(scenario.programs)
    vpids = range(0, min(cfg.vcpus * (2 if nested and vmx else 1), cfg.vpids - 1) + 1)
    asids = range(1, reachable_asids(scenario) + 1)
    fmt = Format.EPT if vmx else Format.NPT
    if cfg.tdp:
        # (tags, stage-2 root) pairs: Intel tags carry the EP4TA, AMD's ASID does not
        pairs: list[tuple[IntelEptTags | IntelLinearTags | AmdTags, int]]
        if vmx:
            pairs = [(IntelEptTags(v, p, e), e) for e in tdp_roots for v in vpids for p in pcids]
        else:
            pairs = [(AmdTags(a, p, True), e) for e in tdp_roots for a in asids for p in pcids]
        walked = roots
    else:
        if vmx:
            tags = [IntelLinearTags(v, p) for v in vpids for p in pcids]
        else:
            tags = [AmdTags(a, p, False) for a in asids for p in pcids]
        pairs = [(t, tdp_root) for t in tags]
        walked = shadow_roots
    walks = [(t, stage2, walked) for t, stage2 in pairs]
    if nested_ept or nested_npt:
        # EPT01 walks L1's page tables; EPT02 (tagged by its own EP4TA) L2's; on AMD NPT01 and
        # NPT02, whose entries carry the same tags (the ASID: L1 and L2 share the vCPU's)
        l1_tables = tuple(r for i, r in enumerate(roots) if i not in l2_indices)
        l2_tables = tuple(r for i, r in enumerate(roots) if i in l2_indices)
        walks = [(t, stage2, l1_tables) for t, stage2 in pairs]
        if nested_ept:
            walks += [
                (IntelEptTags(v, p, e02), e02, l2_tables)
                for e02 in ept02_roots
                for v in vpids
                for p in pcids
            ]
        else:
            walks += [(AmdTags(a, p, True), npt02_root, l2_tables) for a in asids for p in pcids]
    if l2_on_ept01:
        # L2's page tables through L2's root, tagged by its EP4TA; on AMD by the ASID alone (L1
        # and L2 share the vCPU's)
        l2_tables = tuple(r for i, r in enumerate(roots) if i in l2_indices)
        if vmx:
            walks += [
                (IntelEptTags(v, p, l2_tdp_root), l2_tdp_root, l2_tables)
                for v in vpids
                for p in pcids
            ]
        else:
            walks += [(AmdTags(a, p, True), l2_tdp_root, l2_tables) for a in asids for p in pcids]
    for t, stage2, tables in walks:
        for root in tables:
            for pge in (True, False):
                contexts.append(WalkContext(t, root, stage2, fmt, True, pge))
    universe = Universe(layout, contexts)
    # -- configuration ---------------------------------------------------------------------------
    caps, enable_vpid = hardware_setup(
        cfg.vendor, cfg.vpid, cfg.ept_vpid_cap, cfg.flush_by_asid, cfg.max_asid
    )
    if cfg.tdp and isinstance(caps, Capabilities) and not caps.ept_vpid_cap & CAP_INVEPT_ALL:
        raise ScenarioError(
            scenario.path,
            0,
            "KVM disables EPT without all-context INVEPT "
            "(vmx_hardware_setup), and shadow paging is not modelled",
            'keep "invept-all" in ept_vpid_cap',
        )
    arch = None if vmx else AmdArch()
    guest_cr4 = initial_guest_cr4(cfg.pge, cfg.pcid) | (CR4_VMXE if nested and vmx else 0)
    host_regs = Regs(CR0_DEFAULT, 0, CR4_DEFAULT)
    kvm = KvmConfig(
        vendor=cfg.vendor,
        tdp=cfg.tdp,
        enable_vpid=enable_vpid,
        caps=caps,
        unrestricted_guest=cfg.unrestricted_guest,
        nr_vpids=cfg.vpids,
        max_asid=cfg.max_asid,
        pv_tlb_flush=cfg.pv_tlb_flush,
        nvcpus=cfg.vcpus,
        npcpus=cfg.pcpus,
        layout=layout,
        universe=universe,
        tdp_root=tdp_root,
        tdp_roots=tdp_roots,
        ept_ad=cfg.ept_ad or not vmx,
        pml=cfg.pml,
        guest_root=guest_root,
        guest_cr4=guest_cr4,
        host_regs=host_regs,
        rights=rights,
        flush_order=cfg.flush_order,
        roots=roots,
        root_names=root_names,
        gvas=gvas,
        shadow_roots=shadow_roots,
        spt_bit=spt_bit,
        wp_roles=wp_roles and not cfg.tdp,
        frame_of=frame_of,
        guest_ptr=guest_ptr,
        shadow_ptr=shadow_ptr,
        ptr_owner=ptr_owner(guest_ptr, shadow_ptr),
        table_frame=(
            tuple(scenario.tables.get(name, -1) for name in root_names) if scenario.tables else ()
        ),
        nested_roots=l2_roots(scenario) if nested else (),
        l2_ipis=nested and bool(l2_flush_ops(scenario.programs)),
        vm_of=vm_of,
        vm_start_root=(0, root_names.index(VM1_ROOT)) if two_vms else (0,),
        gpa_vm=gpa_vm,
        l2_gpas=l2_gpas,
        ept12_root=ept12_root,
        ept02_root=ept02_root,
        npt12_root=npt12_root,
        npt02_root=npt02_root,
        ept12_roots=ept12_roots,
        ept02_roots=ept02_roots,
        l2_tdp_root=l2_tdp_root,
        huge=tuple(huge),
        nx_huge=sum(1 << n for n, (base, _, _) in enumerate(huge) if base in scenario.nx_huge),
        hv_range_flush=cfg.hv_range_flush,
        tdp_mmu=cfg.tdp_mmu,
        eager_split=cfg.eager_split,
        **kvm_config_base,  # type: ignore[arg-type]
    )
    mconfig = MachineConfig(universe, caps, readings, arch, memo_steps=True)
    memory = layout.initial_memory()
    if vmx:
        pcpus: list[object] = [Cpu(VMX_ROOT, host_regs) for _ in range(cfg.pcpus)]
    else:
        pcpus = [SvmCpu(SVM_HOST, host_regs, None, host_regs) for _ in range(cfg.pcpus)]
    machine = Machine.boot(mconfig, memory, pcpus)
    native_config: NativeConfig | MachineConfig
    native: Machine
    if nested:
        native_config, native = nested_native(
            cfg.vendor,
            layout,
            memory,
            roots,
            pcids,
            vpid12s(scenario),
            guest_cr4,
            cfg.vcpus,
            ept12_roots if nested_ept else ((npt12_root,) if nested_npt else ()),
            tuple(roots[i] for i in l2_indices),
        )
    else:
        native_config, native = NativeMachine.start(
            layout,
            memory,
            roots,
            sorted(pcids),
            CR0_DEFAULT,
            guest_cr4,
            cfg.vcpus,
            tuple(kvm.start_root(v) for v in range(cfg.vcpus)) if two_vms else (),
        )
    try:
        initial = _boot(scenario, policy, kvm, machine, native)
    except Exception as e:  # a policy's bug: reported with where it happened, not a traceback
        raise BootError(
            f"{scenario.path}: policy {policy.name or type(policy).__name__} failed while "
            f"booting the scenario: {where(e)}"
        ) from e
    return System(scenario, policy, kvm, native_config, initial)


# Requests a guest op or a host op can raise per vCPU, at most (a CR4 write exit raises two; a
# shootdown's local flush takes two instructions; a remap's zap and map each flush).
FLUSHES_PER_OP = 4


def reachable_asids(scenario: Scenario) -> int:
    """The highest ASID a run of `scenario` can give a vCPU: the universe holds entries of ASIDs
    1 to this, not 1 to max_asid (32767 ASIDs of contexts took half a minute to enumerate, and
    a million, minutes and gigabytes).

    A pCPU hands out ASIDs in order from 1 (svm.c:new_asid), so one reaches ASID n only after n
    allocations without a wrap. A vCPU takes a new ASID when it first runs, when it runs on
    another pCPU than its VMCB last ran on (only a `resume ... on` moves it: the scheduler loads
    a vCPU on its own pCPU), after a wrap of its pCPU's ASIDs (which starts again from 1), and,
    without FlushByAsid, after each flush of its ASID (svm_flush_tlb_asid), which only a
    request can cause, and each op raises at most FLUSHES_PER_OP per vCPU. A policy that
    allocates more reaches an ASID outside the universe: an `error` verdict, never a wrong
    `safe`."""
    cfg = scenario.config
    allocations = cfg.vcpus + sum(isinstance(op, ResumeOp) for op in scenario.host_program)
    if not cfg.flush_by_asid:
        ops = sum(len(p) for p in scenario.programs) + len(scenario.host_program)
        allocations += FLUSHES_PER_OP * (ops + 1) * cfg.vcpus
    return min(cfg.max_asid, allocations)


def boot_vcpus(scenario: Scenario) -> tuple[int, ...]:
    """The vCPUs that exist at start: all but those a `create` op creates during the run."""
    later = {op.vcpu for op in scenario.host_program if isinstance(op, CreateVcpuOp)}
    return tuple(v for v in range(scenario.config.vcpus) if v not in later)


NON_LEAF_LEVELS = (2, 3, 4)  # PDE, PDPTE, PML4E


def ptr_values(
    b: LayoutBuilder,
    roots: tuple[int, ...],
    gvas: tuple[int, ...] | list[int],
    huge_pages: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset(),
) -> dict[tuple[int, int, int], int]:
    """(root index, level, region) -> the value of a level-`level` entry that points at
    hierarchy `roots[i]`'s level-(level - 1) table page of the region (KvmConfig.guest_ptr /
    shadow_ptr). A 2 MiB guest page of root i (`huge_pages`: (i, its GVA)) has no last-level
    table page."""
    return {
        (t, level, region(gva, level)): b.table_pointer(roots[t], gva, level)
        for t in range(len(roots))
        for level in NON_LEAF_LEVELS
        for gva in gvas
        if level != 2 or (t, gva & ~(HUGE - 1)) not in huge_pages
    }


def ptr_owner(*tables: dict[tuple[int, int, int], int]) -> dict[int, int]:
    """The inverse of `ptr_values` tables: a pointer value -> its root index
    (KvmConfig.ptr_owner)."""
    return {v: t for table in tables for (t, _, _), v in table.items()}


def _shadow_layout(
    b: LayoutBuilder,
    scenario: Scenario,
    shadow_roots: tuple[int, ...],
    pte_values: dict[tuple[int, int], list[int]],
    host_pages: dict[int, tuple[list[int], bool]],
    rights: tuple[int, ...],
    pde_values: dict[tuple[int, int], list[int]] | None = None,
) -> None:
    """The shadow page tables KVM builds for each guest page table (kvm/shadow.py): one linear
    hierarchy per guest root (and per role, with `KvmConfig.wp_roles`: hierarchy s shadows guest
    root s % len(roots)), its upper levels present from the start (KVM created the shadow
    pages of every table the scenario names before the run), and for each GVA a last-level SPTE
    whose values are every guest PTE value combined with every host page of its frame, with
    write permission or without (dirty logging, or a read-only guest PTE). A GVA in a 2 MiB
    guest page (`pde_values`: its PDE's values) has its SPTE in the direct shadow page KVM maps
    the page with, one per hierarchy and region: the frame at the GVA's offset in the page."""
    gpas = scenario.gpas
    wp_clear = any(
        isinstance(op, SetCr0Op) and not op.value for prog in scenario.programs for op in prog
    )
    n = len(scenario.root_names)
    huge = pde_values or {}
    for s, sroot in enumerate(shadow_roots):
        for gva in scenario.gvas:
            values: list[int] = [0]
            base = gva & ~(HUGE - 1)
            leaves = huge.get((s % n, base)) or pte_values.get((s % n, gva), [0])
            for pte in leaves:
                if not pte & P:
                    continue
                gpa = pte_addr(pte)
                if (s % n, base) in huge:
                    gpa = (gpa & ~(HUGE - 1)) + gva - base
                pages, _ = host_pages[gpa]
                host_w = bool(rights[gpas.index(gpa)] & E_W)
                for hpa in pages:
                    for w in (True, False) if pte & RW and host_w else (False,):
                        v = spte_from_gpte(pte, hpa, w)
                        if v not in values:
                            values.append(v)
                    if wp_clear and not pte & RW and host_w:
                        # FNAME(page_fault)'s SPTE for a supervisor write with CR0.WP = 0
                        for x in (True, False):
                            v = make_pte(hpa, writable=True, user=False, executable=x)
                            if v not in values:
                                values.append(v)
            b.name(sroot, gva)
            b.allow(sroot, gva, values)


def _nested_ept_layout(
    b: LayoutBuilder,
    scenario: Scenario,
    ept12_roots: tuple[int, ...],
    ept02_roots: tuple[int, ...],
    host_pages: dict[int, tuple[list[int], bool]],
    rights: tuple[int, ...],
    *,
    npt: bool = False,
) -> tuple[int, ...]:
    """Nested EPT: L1's EPT12 leaves (the entries of [ept12] and of each [ept12.NAME], and every
    value an `ept_map` / `ept_unmap` stores) and KVM's shadow EPT02 leaves of each, empty at
    start (the nested EPT fault fills them, kvm/nested_ept.py), each EPT02 value an EPT12
    value's L1 GPA resolved to one of its host pages, with the EPT12 rights cut by the
    memslot's. Returns the L2 GPAs (of every table: each table has a slot for each). With `npt`,
    the same for nested NPT: [npt12] (one table), `npt_map` / `npt_unmap`, NPT-format entries
    (kvm/nested_npt.py)."""
    tables = (scenario.npt12,) if npt else scenario.ept12_tables
    stores: list[dict[int, list[int]]] = [{} for _ in tables]
    make = make_npt if npt else make_ept
    for prog in scenario.programs:
        for op in prog:
            if isinstance(op, NptMapOp) and npt:
                value = make(op.l1gpa, _rights(op.rights)) if op.l1gpa >= 0 else 0
                stores[0].setdefault(op.l2gpa, []).append(value)
            elif isinstance(op, EptMapOp) and not npt:
                value = make(op.l1gpa, _rights(op.rights)) if op.l1gpa >= 0 else 0
                stores[op.ept].setdefault(op.l2gpa, []).append(value)
    pairs = zip(tables, stores, strict=True)
    l2_gpas = tuple(dict.fromkeys(g for t, st in pairs for g in (*t, *st)))
    for t, table in enumerate(tables):
        _ept12_table(
            b,
            scenario,
            table,
            stores[t],
            l2_gpas,
            ept12_roots[t],
            ept02_roots[t],
            host_pages,
            rights,
            npt=npt,
        )
    return l2_gpas


def _ept12_table(
    b: LayoutBuilder,
    scenario: Scenario,
    table: dict[int, tuple[int, str]],
    stores: dict[int, list[int]],
    l2_gpas: tuple[int, ...],
    ept12_root: int,
    ept02_root: int,
    host_pages: dict[int, tuple[list[int], bool]],
    rights: tuple[int, ...],
    *,
    npt: bool = False,
) -> None:
    """One EPT12 (or NPT12) table and its EPT02 (NPT02): see _nested_ept_layout."""
    make = make_npt if npt else make_ept
    rights_of = _npt_rights if npt else ept_rights
    for l2 in l2_gpas:
        values: list[int] = []
        if l2 in table:
            l1, text = table[l2]
            values.append(b.map(ept12_root, l2, make(l1, _rights(text))))
        b.allow(ept12_root, l2, [0, *stores.get(l2, [])])
        values += stores.get(l2, [])
        shadow = [0]
        for v in values:
            if not v:
                continue
            l1 = pte_addr(v)
            cut = rights_of(v) & rights[scenario.gpas.index(l1)]
            for h in host_pages[l1][0]:
                if cut and make(h, cut) not in shadow:
                    shadow.append(make(h, cut))
        b.allow(ept02_root, l2, shadow)


def shadow_page_bits(nroots: int, gvas: tuple[int, ...] | list[int]) -> tuple[tuple[int, ...], ...]:
    """Per guest root and GVA, the bit of Kvm.unsync of the last-level shadow page holding the
    GVA's SPTE (KvmConfig.spt_bit): one page per root and 2 MiB region, numbered in order."""
    bits: dict[tuple[int, int], int] = {}
    return tuple(
        tuple(bits.setdefault((r, gva >> 21), len(bits)) for gva in gvas) for r in range(nroots)
    )


def _pte(gpa: int, flags: str, *, huge: bool = False) -> int:
    """A guest PTE (`huge`: a PDE mapping a 2 MiB page, PS = 1)."""
    return make_pte(
        gpa,
        writable="w" in flags,
        user="u" in flags,
        executable="x" in flags,
        glob="g" in flags,
        large=huge,
    )


class BootError(Exception):
    """The policy raised, or looped, while the scenario's vCPUs were created, loaded and entered
    for the first time."""


def _boot(
    scenario: Scenario, policy: KvmPolicy, kvm: KvmConfig, machine: Machine, native: Machine
) -> World:
    cfg = scenario.config
    booted = boot_vcpus(scenario)
    # the boot root of each VM (root page n for VM n) and the vCPUs holding it
    holders = [
        sum(1 for v in booted if kvm.vcpu_vm(v) == r) if kvm.vm_of or r == 0 else 0
        for r in range(len(kvm.tdp_roots))
    ]
    k = Step(
        kvm,
        machine,
        Kvm(
            backing=tuple(scenario.host[g][0] for g in kvm.gpas),
            fresh=tuple(0 for _ in kvm.gpas),
            dirty=tuple(True for _ in kvm.gpas),
            root_state=tuple(ROOT_VALID if n else ROOT_FREE for n in holders),
            root_refs=tuple(holders),
            root_vm=tuple(range(len(kvm.tdp_roots))) if kvm.vm_of else (),
            nx_huge=kvm.nx_huge,
            slot_absent=sum(
                1 << i for i, g in enumerate(kvm.gpas) if scenario.host[g][0] == NO_MEMORY
            ),
        ),
        Thawed.of(
            [
                Vcpu(
                    v,
                    pc="vcpu_enter_guest",
                    mode=OUTSIDE_GUEST_MODE,
                    tdp_root=kvm.vcpu_vm(v) if v in booted else -1,
                    root_valid=v in booted,
                )
                for v in range(cfg.vcpus)
            ]
        ),
        Thawed.of([Pcpu(p) for p in range(cfg.pcpus)]),
        native,
        [GuestThread() for _ in range(cfg.vcpus)],
        HostThread(
            home=scenario.placement,
            held=sum(1 << v for v in range(cfg.vcpus) if v not in booted),
            moves=scenario.schedule,
        ),
        "boot",
    )
    policy.hardware_enable(k)
    for vcpu in k.vcpus:
        if vcpu.id in booted:
            policy.vcpu_create(k, vcpu)
    for p in range(cfg.pcpus):
        first = [v for v in booted if scenario.placement[v] == p]
        if first:
            policy.vcpu_load(k, k.vcpus[first[0]], p)
    for vcpu in k.vcpus:
        steps = 0
        while vcpu.loaded and vcpu.pc != "guest":
            policy.step(k, vcpu)
            steps += 1
            if steps > 50:
                raise AssertionError(f"vcpu{vcpu.id} does not reach guest mode at boot")
    return k.freeze()
