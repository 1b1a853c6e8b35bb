"""One atomic step of the whole system: the mutable context KVM's ported functions run on.

A step thaws the frozen world (the hardware machine, KVM's state, and the opaque parts the layers
above keep: guest threads, the host thread, the native reference), runs one step method of a
policy, records what happened, and freezes the result. Ported functions take the context first,
as KVM's take the vCPU: `policy.vmx_flush_tlb_all(k, vcpu)`.

Every hardware instruction goes through `Step.hw`, which runs it on the hardware model and records
what it removed from which processor's TLB; that record is the trace's "detail".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from kvmtlb.hw.cpu import CR4_PAE, CR4_PCIDE, CR4_PGE, Capabilities, Regs
from kvmtlb.hw.effect import Event
from kvmtlb.hw.layout import Layout
from kvmtlb.hw.machine import Machine
from kvmtlb.hw.outcomes import Outcome
from kvmtlb.hw.svm import SvmExitEvent
from kvmtlb.hw.universe import Universe
from kvmtlb.hw.vmcb import SvmCapabilities
from kvmtlb.hw.vmx import (
    CAP_INVVPID,
    CAP_INVVPID_ALL,
    CAP_INVVPID_SINGLE,
    VmExitEvent,
    ept_vpid_cap,
)
from kvmtlb.kvm.state import Kvm, Pcpu, Vcpu

T = TypeVar("T")


def vm_exit_event(vmx: bool, reason: str) -> Event:
    """A VM exit (VMX) or #VMEXIT (SVM) the model triggers for `reason`: an interrupt, an
    intercepted exception, an instruction KVM emulates."""
    return VmExitEvent(reason) if vmx else SvmExitEvent(reason)


PHYS_ROOT_MASK = ((1 << 52) - 1) & ~0xFFF  # CR3 bits 51:12


def hardware_setup(
    vendor: str,
    vpid: bool,
    ept_caps: tuple[str, ...] | list[str],
    flush_by_asid: bool,
    max_asid: int,
) -> tuple[Capabilities | SvmCapabilities, bool]:
    """The processor's capabilities and KVM's enable_vpid, as vmx.c:vmx_hardware_setup /
    svm.c:svm_hardware_setup @ v6.18 derive them: VPID needs INVVPID single- or all-context;
    SVM has max_asid + 1 ASIDs (ASID 0 is the host's)."""
    if vendor != "intel":
        return SvmCapabilities(flush_by_asid=flush_by_asid, nasid=max_asid + 1), False
    cap = ept_vpid_cap(ept_caps)
    enable_vpid = (
        vpid and bool(cap & CAP_INVVPID) and bool(cap & (CAP_INVVPID_SINGLE | CAP_INVVPID_ALL))
    )
    return Capabilities(cap), enable_vpid


def initial_guest_cr4(pge: bool, pcid: bool) -> int:
    """The guest's CR4 at start: PAE (4-level paging), and PGE / PCIDE as configured."""
    return CR4_PAE | (CR4_PGE if pge else 0) | (CR4_PCIDE if pcid else 0)


@dataclass(frozen=True)
class KvmConfig:
    """The VM's configuration and KVM's module parameters (fixed for a run)."""

    vendor: str  # "intel" | "amd"
    tdp: bool  # enable_ept / npt_enabled
    enable_vpid: bool  # VMX: enable_vpid (after hardware_setup's capability checks)
    caps: Capabilities | SvmCapabilities
    unrestricted_guest: bool
    nr_vpids: int  # VMX_NR_VPIDS
    max_asid: int  # SVM: highest ASID per pCPU
    pv_tlb_flush: bool  # the guest uses KVM_FEATURE_PV_TLB_FLUSH
    nvcpus: int
    npcpus: int
    layout: Layout
    universe: Universe
    tdp_root: int  # EPT PML4 / nCR3 of the VM
    guest_root: int  # the guest's CR3 root (a GPA)
    gpas: tuple[int, ...]  # the VM's guest frames (order of Kvm.backing)
    fresh_base: int  # host pages handed out after a zap start here
    guest_cr4: int  # the guest's CR4 at start (PAE, and PGE / PCIDE as the scenario says)
    host_regs: Regs  # the host's control registers (no host page tables are modelled)
    rights: tuple[int, ...]  # what the memslot allows for each guest frame (E_R | E_W | E_X)
    fresh_stride: int = 16  # fresh pages per guest frame before the pool repeats (never)
    # The guest's page tables: root GPAs, [guest] first; the scenario's GVAs.
    # The guest kernel's shootdown order: "local-first" or "concurrent" (kvmtlb.guest).
    flush_order: str = "local-first"
    roots: tuple[int, ...] = ()
    root_names: tuple[str, ...] = ("default",)
    gvas: tuple[int, ...] = ()
    # Shadow paging (tdp false; kvm/shadow.py): the shadow hierarchy (its root HPA) of each guest
    # root, and the shadow page (a bit of Kvm.unsync) holding each (root, GVA)'s last-level SPTE.
    shadow_roots: tuple[int, ...] = ()
    spt_bit: tuple[tuple[int, ...], ...] = ()
    # role.cr0_wp (a guest that clears CR0.WP, `set_cr0 wp=0`): shadow_roots then holds a second
    # set of hierarchies, guest root g's shadow pages of role CR0.WP = 0 at len(roots) + g
    wp_roles: bool = False
    # EPT accessed/dirty bits (enable_ept_ad_bits; NPT always has them); else access tracking
    ept_ad: bool = True
    pml: bool = False  # VMX: dirty logging by EPT dirty flags and PML (kvm/pml.py)
    # The VM's EPT/NPT root pages (TDP; kvm/mmu.py): tdp_root and the pages fast zaps may use.
    tdp_roots: tuple[int, ...] = ()
    # Every host page a guest frame may be given, to its frame (an SPTE names the host page only).
    frame_of: dict[int, int] = field(default_factory=dict, compare=False)
    # (root, level, region) -> the value of a level-`level` entry (2: PDE, 3: PDPTE, 4: PML4E)
    # that points at that root's level-(level - 1) table page of the region (`region_of`): in
    # the guest's tables (a GPA) and in the shadow tables (an HPA).
    guest_ptr: dict[tuple[int, int, int], int] = field(default_factory=dict, compare=False)
    shadow_ptr: dict[tuple[int, int, int], int] = field(default_factory=dict, compare=False)
    # The inverse of both: a pointer value -> the root whose table page it points at.
    ptr_owner: dict[int, int] = field(default_factory=dict, compare=False)
    # [tables]: the guest frame holding each root's last-level table page of the first 2 MiB
    # region (-1: the file does not place it; the guest's stores to it are then modelled as
    # traps, not as accesses through its own mapping of the table); empty without [tables]
    table_frame: tuple[int, ...] = ()
    # Nested VMX (kvm/nested_vmx.py): the guest roots L1 runs L2 on (vmlaunch ROOT).
    nested_roots: tuple[int, ...] = ()
    # L2's shootdowns (`flush_tlb` inside L2; model/nested_scenario.py): the guest threads' IPIs
    # are L2's, handled by a target only while it runs L2 (guest/thread.py)
    l2_ipis: bool = False
    # A second VM (scenario table [vm1]; kvm/vm.py): the VM of each vCPU (0 or 1; empty: one VM),
    # the index in `roots` of the guest page table each VM's vCPUs start on, and the VM each
    # guest frame of `gpas` belongs to (the two VMs' frames are disjoint in the model).
    vm_of: tuple[int, ...] = ()
    vm_start_root: tuple[int, ...] = (0,)
    gpa_vm: tuple[int, ...] = ()
    # Nested EPT (kvm/nested_ept.py; scenario table [ept12]): the root of L1's EPT12 (L2 GPA ->
    # L1 GPA; a hierarchy of L1's memory, read by KVM and by the native reference), the root of
    # KVM's shadow EPT02 (L2 GPA -> HPA), and the L2 GPAs they name; -1 / empty without
    # [ept12]
    l2_gpas: tuple[int, ...] = ()
    ept12_root: int = -1
    ept02_root: int = -1
    # Several EPT12 tables ([ept12.NAME]: vmcs12 EPTPs of their own): every EPT12 root and the
    # EPT02 root KVM shadows it with, by table index (ept12_root, ept02_root: index 0)
    ept12_roots: tuple[int, ...] = ()
    ept02_roots: tuple[int, ...] = ()
    # An L2 without nested EPT on an EPT L0, or without nested NPT on an NPT L0
    # (kvm/nested_ept01.py): the page of the direct EPT/NPT root KVM runs L2 on (root_mmu's
    # root of role.guest_mode = 1); -1 otherwise
    l2_tdp_root: int = -1

    # Nested NPT (kvm/nested_npt.py; scenario table [npt12]): the root of L1's NPT12 (L2 GPA ->
    # L1 GPA) and of KVM's shadow NPT02 (L2 GPA -> HPA); the L2 GPAs are `l2_gpas`, and the
    # unsync NPT02 pages Kvm.ept02_unsync (one nested TDP table per scenario: EPT12 or NPT12)
    npt12_root: int = -1
    npt02_root: int = -1

    @property
    def nested_ept(self) -> bool:
        return self.ept02_root >= 0

    @property
    def nested_npt(self) -> bool:
        return self.npt02_root >= 0

    @property
    def nested_tdp(self) -> bool:
        """L2 runs on a shadow of L1's nested TDP table (EPT12 or NPT12)."""
        return self.ept02_root >= 0 or self.npt02_root >= 0

    @property
    def l2_on_ept01(self) -> bool:
        """L1 runs L2 with EPT off in vmcs12 on an EPT L0, or with nested paging off in vmcb12
        on an NPT L0 (kvm/nested_ept01.py; the name is the VMX case's, which came first)."""
        return self.l2_tdp_root >= 0

    def ept02_region(self, l2gpa: int, table: int = 0) -> int:
        """The bit of Kvm.ept02_unsync of the last-level page of EPT02 root `table` (an EPT12
        table's index) holding `l2gpa`'s SPTE."""
        regions = sorted({g >> 21 for g in self.l2_gpas})
        return table * len(regions) + regions.index(l2gpa >> 21)

    # 2 MiB regions ([host] "HPA RIGHTS 2m"; kvm/hugepage.py): (region GPA, HPA, rights) each;
    # KVM as a guest of Hyper-V with its enlightened flushes (kvm/hyperv.py); the tdp_mmu and
    # eager_page_split module parameters of v6.18 (v5.x have neither: always the rmap MMU,
    # never an eager split).
    huge: tuple[tuple[int, int, int], ...] = ()
    nx_huge: int = 0  # the regions declared "2m nx" (bit n: huge[n]): the NX mitigation is on
    hv_range_flush: bool = False
    tdp_mmu: bool = True
    eager_split: bool = True

    def huge_region(self, gpa: int) -> int:
        """The index in `huge` of the 2 MiB region holding guest frame `gpa`, or -1."""
        for n, (base, _, _) in enumerate(self.huge):
            if base <= gpa < base + (1 << 21):
                return n
        return -1

    def vcpu_vm(self, v: int) -> int:
        """The VM vCPU `v` belongs to (0 with one VM)."""
        return self.vm_of[v] if self.vm_of else 0

    def start_root(self, v: int) -> int:
        """The guest page table (its root GPA) CR3 points at when vCPU `v` starts."""
        return self.roots[self.vm_start_root[self.vcpu_vm(v)]] if self.roots else self.guest_root

    def page_vm(self, hpa: int) -> int:
        """The VM whose guest frame host page `hpa` backs (-1: none, or one VM)."""
        gpa = self.frame_of_page(hpa)
        if gpa < 0 or not self.gpa_vm:
            return -1
        return self.gpa_vm[self.gpa_index(gpa)]

    def shadow_index(self, g: int, wp: bool) -> int:
        """The shadow hierarchy of guest root `g` for shadow pages of role CR0.WP = `wp`."""
        return g + len(self.roots) if self.wp_roles and not wp else g

    def shadows_of(self, g: int) -> range:
        """Every shadow hierarchy of guest root `g` (one per role)."""
        return range(g, len(self.shadow_roots), len(self.roots))

    def guest_of(self, s: int) -> int:
        """The guest root a shadow hierarchy shadows."""
        return s % len(self.roots)

    def pde_root(self, value: int) -> int:
        """Which root's table page a (guest or shadow) non-leaf entry value points at; -1 if
        not present."""
        return self.ptr_owner.get(value, -1) if value else -1

    def table_owners(self, values: Any, hierarchies: tuple[int, ...], root: int, gva: int) -> int:
        """Walk `gva`'s non-leaf entries (PML4E, PDPTE, PDE) from hierarchy `hierarchies[root]`
        (guest `roots` or `shadow_roots`), each naming the table page of some root: whose
        last-level table page the walk reaches (-1: an entry on the way is not present)."""
        chain = self.table_chain(values, hierarchies, root, gva)
        return chain[2] if len(chain) == 3 else -1

    def table_chain(
        self, values: Any, hierarchies: tuple[int, ...], root: int, gva: int
    ) -> tuple[int, ...]:
        """The same walk, every step: the roots whose PDPT, page directory and last-level table
        pages it goes through (shorter when an entry on the way is not present)."""
        chain = []
        t = root
        for level in (4, 3, 2):
            t = self.pde_root(int(values[self.layout.slot(hierarchies[t], gva, level)]))
            if t < 0:
                break
            chain.append(t)
        return tuple(chain)

    @property
    def vmx(self) -> bool:
        return self.vendor == "intel"

    def gpa_index(self, gpa: int) -> int:
        return self.gpas.index(gpa)

    def frame_of_page(self, hpa: int) -> int:
        """The guest frame a host page backs (-1 if none): the scenario's pages, or a fresh page
        handed out after a zap (`fresh_page`), whose frame follows from its address."""
        gpa = self.frame_of.get(hpa)
        if gpa is not None:
            return gpa
        n = (hpa - self.fresh_base) // 0x1000 // self.fresh_stride
        return self.gpas[n] if hpa >= self.fresh_base and n < len(self.gpas) else -1

    def root_index(self, cr3: int) -> int:
        """Which guest page table a CR3 value (root GPA | PCID, maybe the no-flush bit) loads."""
        return self.roots.index(cr3 & PHYS_ROOT_MASK)

    def fresh_page(self, gpa: int, n: int) -> int:
        """The `n`-th fresh host page given to guest frame `gpa` (n >= 1): a function of the
        frame and the count only, so the order in which frames get pages does not matter."""
        return self.fresh_base + (self.gpa_index(gpa) * self.fresh_stride + n - 1) * 0x1000


class Record(NamedTuple):
    """One line of a trace: who acted, what it did (in KVM's or the SDM's words), what changed."""

    actor: str
    action: str
    detail: str = ""


class World(NamedTuple):
    """The frozen state of the whole system; hashable and canonical."""

    machine: Machine
    kvm: tuple[Any, ...]
    vcpus: tuple[tuple[Any, ...], ...]
    pcpus: tuple[tuple[Any, ...], ...]
    native: Any  # the layers above: native reference (model)
    guests: tuple[Any, ...]  # guest threads (kvmtlb.guest)
    host: Any  # the host thread (kvmtlb.host)


class Thawed(Generic[T]):
    """A world's vCPU or pCPU records during a step, thawed into mutable dataclasses on first
    access only: a step touches one or two of them, and the untouched ones keep their frozen
    tuples (freezing every record of every world was a third of the explorer's time)."""

    __slots__ = ("_cls", "_frozen", "_live", "_thawed")

    def __init__(self, cls: type[T], frozen: tuple[tuple[Any, ...], ...]) -> None:
        self._cls = cls
        self._frozen = frozen
        self._live: list[T | None] = [None] * len(frozen)
        self._thawed = False

    @classmethod
    def of(cls, objects: Sequence[T]) -> Thawed[T]:
        """Records that exist only as live objects (at boot)."""
        out: Thawed[T] = cls(type(objects[0]), tuple(_tuple(o) for o in objects))
        out._live = list(objects)
        out._thawed = True
        return out

    def __getitem__(self, i: int) -> T:
        obj = self._live[i]
        if obj is None:
            obj = self._live[i] = self._cls(*self._frozen[i])
            self._thawed = True
        return obj

    def __len__(self) -> int:
        return len(self._frozen)

    def peek(self, i: int) -> T | tuple[Any, ...]:
        """Record `i` as it is now without thawing it: the live object if it was thawed, else its
        frozen tuple (for observers that only read, such as kvmtlb mutate's recorder)."""
        obj = self._live[i]
        return obj if obj is not None else self._frozen[i]

    def __iter__(self) -> Iterator[T]:
        for i in range(len(self._frozen)):
            yield self[i]

    def freeze(self) -> tuple[tuple[Any, ...], ...]:
        """The records as tuples. A record thawed but left as it was keeps its frozen tuple, and
        if none changed the frozen records are returned as they were: the canonicalizer
        recognizes unchanged parts by identity (issue 12's hot path)."""
        if not self._thawed:
            return self._frozen
        out = None
        for i, o in enumerate(self._live):
            if o is not None:
                t = _tuple(o)
                if t != self._frozen[i]:
                    if out is None:
                        out = list(self._frozen)
                    out[i] = t
        return self._frozen if out is None else tuple(out)


@dataclass
class Step:
    """The world during one atomic step."""

    config: KvmConfig
    machine: Machine
    kvm: Kvm
    vcpus: Thawed[Vcpu]
    pcpus: Thawed[Pcpu]
    native: Any
    guests: list[Any]
    host: Any
    actor: str = ""
    tracing: bool = True  # keep the step's trace lines (the explorer turns this off)
    log: list[Record] = field(default_factory=list)
    # Accesses completed outside guest mode (KVM's emulator), for the checker:
    # (vcpu, gva, gpa, guest rights).
    observations: list[tuple[int, int, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.vcpus, list):
            self.vcpus = Thawed.of(self.vcpus)
        if isinstance(self.pcpus, list):
            self.pcpus = Thawed.of(self.pcpus)

    @classmethod
    def thaw(cls, config: KvmConfig, w: World, actor: str = "", tracing: bool = True) -> Step:
        if cls is not Step:
            return cls(
                config,
                w.machine,
                Kvm(*w.kvm),
                Thawed(Vcpu, w.vcpus),
                Thawed(Pcpu, w.pcpus),
                w.native,
                list(w.guests),
                w.host,
                actor,
                tracing,
            )
        # The explorer thaws every world it expands once per successor: filling the instance
        # dict directly skips the dataclass __init__ and __post_init__ (issue 12's hot path).
        k = object.__new__(Step)
        k.__dict__ = {
            "config": config,
            "machine": w.machine,
            "_kvm_frozen": w.kvm,  # thawed into `kvm` on first use (__getattr__)
            "vcpus": Thawed(Vcpu, w.vcpus),
            "pcpus": Thawed(Pcpu, w.pcpus),
            "native": w.native,
            "guests": list(w.guests),
            "host": w.host,
            "actor": actor,
            "tracing": tracing,
            "log": [],
            "observations": [],
        }
        return k

    if not TYPE_CHECKING:  # (for mypy, `kvm` is the field above)

        def __getattr__(self, name: str) -> Any:
            """KVM's record, thawed on first use: most steps do not touch it."""
            if name == "kvm":
                kvm = self.__dict__["kvm"] = Kvm(*self.__dict__["_kvm_frozen"])
                return kvm
            raise AttributeError(name)

    def freeze(self) -> World:
        d = self.__dict__
        return World(
            self.machine,
            _tuple(d["kvm"]) if "kvm" in d else d["_kvm_frozen"],
            self.vcpus.freeze(),
            self.pcpus.freeze(),
            self.native,
            tuple(self.guests),
            self.host,
        )

    def observe(self, vcpu: int, gva: int, gpa: int, rights: int) -> None:
        self.observations.append((vcpu, gva, gpa, rights))

    # -- trace ------------------------------------------------------------------------------
    def note(self, action: str, detail: str = "", actor: str | None = None) -> None:
        if self.tracing:
            self.log.append(Record(actor if actor is not None else self.actor, action, detail))

    # -- hardware -------------------------------------------------------------------------------
    def hw(self, pcpu: int, event: Event, why: str = "") -> Outcome:
        """Run `event` on physical CPU `pcpu`; record what it removed there."""
        before = self.machine.cpus[pcpu]
        st = self.machine.step(pcpu, event)
        self.machine = st.machine
        self.follow_control(pcpu, before, st.machine.cpus[pcpu])
        if not self.tracing:
            return st.outcome
        removed = bin(st.removed).count("1")
        rules = ", ".join(st.invalidation.rules)
        detail = f"pCPU{pcpu}: {st.outcome.describe()}"
        if removed:
            detail += f"; removed {removed} cached entr{'y' if removed == 1 else 'ies'}"
        elif st.invalidation.clauses:
            detail += "; nothing cached matched"
        if rules:
            detail += f" [{rules}]"
        self.note(f"{event.describe()}{' (' + why + ')' if why else ''}", detail)
        return st.outcome

    def follow_control(self, pcpu: int, before: Any, after: Any) -> None:
        """After an event on `pcpu`: KVM's copy of the VMCS/VMCB follows the hardware's only when
        the hardware changed it (VMPTRLD, VM entry or exit, VMWRITE). After INVLPGA, say, KVM's
        copy keeps its own edits (the TLB_CONTROL that svm_vcpu_run reset after the last
        VMRUN)."""
        if self.config.vmx:
            changed = after.vmcs is not before.vmcs and after.vmcs != before.vmcs
        else:
            changed = after.vmcb is not before.vmcb and after.vmcb != before.vmcb
        if changed:
            self.sync_control(pcpu)

    def sync_control(self, pcpu: int) -> None:
        """KVM's copy of the running vCPU's VMCS/VMCB follows the hardware's current one."""
        cpu = self.machine.cpus[pcpu]
        v = self.pcpus[pcpu].running
        if v < 0:
            return
        vcpu = self.vcpus[v]
        if self.config.vmx:
            if cpu.vmcs is not None and vcpu.vmcs is not None and cpu.vmcs.ident == vcpu.vmcs.ident:
                vcpu.vmcs = cpu.vmcs
        elif cpu.vmcb is not None and vcpu.vmcb is not None and cpu.vmcb.ident == vcpu.vmcb.ident:
            vcpu.vmcb = cpu.vmcb

    def write_slot(self, slot: int, value: int, what: str) -> None:
        """A store to a paging-structure entry (guest page table or EPT/NPT). The native
        reference (a hardware machine over the same memory) refills too."""
        self.machine = self.machine.write(slot, value)
        if isinstance(self.native, Machine):
            self.native = self.native.write(slot, value)
        self.note(what)


assert [f.name for f in fields(Step)] == [
    "config",
    "machine",
    "kvm",
    "vcpus",
    "pcpus",
    "native",
    "guests",
    "host",
    "actor",
    "tracing",
    "log",
    "observations",
], "Step.thaw fills these fields directly"

_GETTERS: dict[type, Any] = {}


def _tuple(obj: Any) -> tuple[Any, ...]:
    """The fields of a state dataclass as a tuple (attrgetter builds it in C)."""
    getter = _GETTERS.get(type(obj))
    if getter is None:
        getter = _GETTERS[type(obj)] = attrgetter(*(f.name for f in fields(obj)))
    values: tuple[Any, ...] = getter(obj)
    return values
