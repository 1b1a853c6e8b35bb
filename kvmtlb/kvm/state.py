"""KVM's state, as the port reads and writes it: per vCPU, per pCPU, per VM.

Models the fields of struct kvm_vcpu (with vcpu_vmx / vcpu_svm), the per-CPU data KVM keeps
(svm_cpu_data's ASID allocator, the running vCPU, pending kicks) and struct kvm (the VPID bitmap
is global in vmx.c; mmu_invalidate_in_progress and mmu_invalidate_seq), plus what the host MM
would answer for a guest frame (hva_to_pfn: the current host page of each GPA).

During one atomic step the port works on mutable views (`Vcpu`, `Pcpu`, `Kvm`), which read like
the C structs they stand for; between steps the explorer stores them frozen as tuples of ints
(`freeze` / `thaw`), so every state is hashable and canonical.

A race window in KVM's code is an explicit program-counter label (`Vcpu.pc`) with the locals it
carries across the window in `Vcpu.frame`; docs/policies.md lists every label.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmtlb.hw.cpu import Vmcs
from kvmtlb.hw.vmcb import Vmcb

# vcpu->mode (include/linux/kvm_host.h)
OUTSIDE_GUEST_MODE = 0
IN_GUEST_MODE = 1
EXITING_GUEST_MODE = 2
MODE_NAMES = {
    OUTSIDE_GUEST_MODE: "OUTSIDE_GUEST_MODE",
    IN_GUEST_MODE: "IN_GUEST_MODE",
    EXITING_GUEST_MODE: "EXITING_GUEST_MODE",
}

# The life of a TDP root page (Kvm.root_state).
ROOT_FREE = 0
ROOT_VALID = 1
ROOT_INVALID = 2
ROOT_ZAPPED = 3
ROOT_STATE_NAMES = {
    ROOT_FREE: "free",
    ROOT_VALID: "valid",
    ROOT_INVALID: "invalid",
    ROOT_ZAPPED: "invalid, zapped",
}

# The guest-visible steal-time byte (arch/x86/include/uapi/asm/kvm_para.h).
KVM_VCPU_PREEMPTED = 1 << 0
KVM_VCPU_FLUSH_TLB = 1 << 1


@dataclass(slots=True)
class HostTask:
    """KVM code that the host thread runs (the MMU notifier's callbacks, dirty logging,
    kvm_flush_remote_tlbs), as a vCPU's code runs: `pc` is the step label (KvmPolicy.HOST_STEPS),
    `frame` the locals carried across the race window at it, `ret` the labels to return to
    (innermost last; the host kernel's own continuation at the bottom). `gpa` and `hpa` are the
    operands of the host op."""

    pc: str
    frame: tuple[int, ...] = ()
    ret: tuple[str, ...] = ()
    gpa: int = -1
    hpa: int = -1
    sender: int = 1  # its bit in Pcpu.kicks: the host thread's (kvm_main.HOST_SENDER) or host2's

    def call(self, label: str, then: str) -> None:
        """Continue at `label`; when that code returns, continue at `then`."""
        self.ret = (*self.ret, then)
        self.pc = label

    def goto(self, label: str) -> None:
        """The next step runs at `label` (a tail call: it returns where this code would)."""
        self.pc = label

    def return_(self) -> None:
        """Return to the caller's continuation."""
        self.pc, self.ret = self.ret[-1], self.ret[:-1]


@dataclass(slots=True)
class Vcpu:
    """struct kvm_vcpu and its vendor part: only the fields the TLB-flush port reads."""

    id: int
    pc: str = "guest"  # where the vCPU thread is: a step label (docs/policies.md)
    frame: tuple[int, ...] = ()  # locals carried across the race window at `pc`
    mode: int = IN_GUEST_MODE  # vcpu->mode
    requests: int = 0  # vcpu->requests
    cpu: int = -1  # vcpu->cpu: the pCPU it is loaded on, -1 while not loaded
    last_cpu: int = -1  # VMX loaded_vmcs->cpu / SVM current_vmcb->cpu
    preempted: bool = False  # vcpu->preempted: scheduled out while runnable
    st_preempted: bool = False  # vcpu->arch.st.preempted: KVM wrote PREEMPTED to the guest
    st_byte: int = 0  # the guest's steal_time.preempted byte (guest memory)
    at_instruction_boundary: bool = True  # vcpu->arch.at_instruction_boundary
    root_valid: bool = True  # vcpu->arch.mmu->root.hpa is a valid root
    vpid: int = 0  # VMX: vmx->vpid
    vmcs: Vmcs | None = None  # VMX: the vCPU's VMCS (guest state as of the last VM exit)
    asid: int = 0  # SVM: svm->asid
    asid_generation: int = 0  # SVM: current_vmcb->asid_generation
    vmcb: Vmcb | None = None  # SVM: the vCPU's VMCB
    # Shadow paging (kvm/shadow.py). The guest's CR3 (vcpu->arch.cr3: its root GPA | PCID) and
    # the cached roots (mmu->prev_roots[].pgd, most recent first; -1: invalid); the root's
    # shadow hierarchy follows from the guest root (shadow pages are keyed by guest frame).
    cr3: int = 0
    prev_roots: tuple[int, ...] = ()
    pf_injected: int = -1  # the GVA of a #PF KVM injected, for the guest to take; -1: none
    # the GPA of an access KVM exited to userspace as MMIO (a frame with no memslot), which
    # completes when the guest runs again (KVM_EXIT_MMIO, then KVM_RUN); -1: none
    mmio_exit: int = -1
    # TDP: which of the VM's EPT/NPT root pages (KvmConfig.tdp_roots) mmu->root.hpa is; -1 none
    tdp_root: int = 0
    # Nested VMX (kvm/nested_vmx.py): vmx->nested.vmxon, is_guest_mode (L2 runs),
    # vmx->nested.vpid02 and last_vpid, and the vmcs12 fields the TLB rules read: its VPID
    # (0: VPID disabled in vmcs12), GUEST_CR3 as of the last nested VM exit (L2's CR3) and
    # HOST_CR3 (L1's CR3 at the nested VM entry).
    nested_vmxon: bool = False
    guest_mode: bool = False
    vpid02: int = 0
    last_vpid: int = 0
    vpid12: int = 0
    vmcs12_guest_cr3: int = 0
    vmcs12_host_cr3: int = 0
    # The guest's CR0.WP as KVM holds it (vcpu->arch.cr0): with shadow paging the processor runs
    # with WP = 1 whatever the guest wrote, and KVM emulates WP = 0 (kvm/shadow.py)
    cr0_wp: bool = True
    # The role (CR0.WP) of the shadow pages the vCPU's roots belong to, fixed when kvm_mmu_load
    # allocates the root: the MMU's root_role as of then (kvm/shadow.py)
    root_wp: bool = True
    # Nested EPT (kvm/nested_ept.py): whether the root of the MMU that is not current is valid:
    # guest_mmu's (the shadow EPT02) while L1 runs, root_mmu's (EPT01) while L2 runs.
    # `root_valid` is always the current MMU's (vcpu->arch.mmu).
    parked_root_valid: bool = False
    # Nested EPT with several EPT12 tables: vmcs12's EPTP (an EPT12 table's index), the EPT12
    # whose EPT02 root is guest_mmu's current root (valid as root_valid / parked_root_valid
    # say), and guest_mmu's cached roots (prev_roots), a bitmask by EPT12 index
    eptp12: int = 0
    ept02_cur: int = 0
    ept02_prev: int = 0

    @property
    def loaded(self) -> bool:
        return self.cpu >= 0


@dataclass(slots=True)
class Pcpu:
    """What KVM and the kernel keep per physical CPU."""

    id: int
    running: int = -1  # the vCPU loaded on this pCPU (kvm_running_vcpu), -1 if none
    kicks: int = 0  # bitmask of requesters whose kick (IPI, wait) is still unacknowledged
    asid_generation: int = 1  # SVM svm_cpu_data
    next_asid: int = 0
    min_asid: int = 1
    max_asid: int = 0


@dataclass(slots=True)
class Kvm:
    """struct kvm (and vmx.c's global VPID bitmap), plus the host MM's page for each GPA."""

    vpid_bitmap: int = 1  # vmx_vpid_bitmap; bit 0 (the host's VPID) is reserved
    mmu_invalidate_in_progress: int = 0
    mmu_invalidate_seq: int = 0
    backing: tuple[int, ...] = ()  # host page currently backing each guest frame (-1: none)
    fresh: tuple[int, ...] = ()  # how many fresh pages each guest frame has been given
    dirty: tuple[bool, ...] = ()  # the dirty bitmap (dirty logging), per guest frame
    log_dirty: int = 0  # frames whose memslot has dirty logging on (KVM_MEM_LOG_DIRTY_PAGES)
    unsync: int = 0  # shadow paging: the last-level shadow pages marked sp->unsync (bitmask)
    # TDP roots (kvm/mmu.py), per root page of KvmConfig.tdp_roots: ROOT_FREE, ROOT_VALID,
    # ROOT_INVALID (obsolete, its zap pending: the MMU still holds it) or ROOT_ZAPPED (obsolete
    # and zapped, freed when no vCPU holds it); and how many vCPUs hold it as mmu->root.
    root_state: tuple[int, ...] = ()
    root_refs: tuple[int, ...] = ()
    # kvm->mmu_lock, as far as a zap that yields it (kvm_zap_gfn_range) holds it across steps
    mmu_lock: bool = False
    # With a second VM (KvmConfig.vm_of): which VM each root page of Kvm.root_state belongs to
    # while it is not free (each struct kvm has its own roots; the pages come from one pool, so a
    # page the destroyed VM freed may become the other VM's root). Empty with one VM.
    root_vm: tuple[int, ...] = ()
    # Guest frames (bitmask by index) whose memslot is being deleted: marked KVM_MEMSLOT_INVALID
    # (kvm_invalidate_memslot), then gone until userspace creates it again (kvm/memslot.py)
    slot_invalid: int = 0
    # Guest frames (bitmask by index) with no memslot: a move's destination until the move
    # installs the slot there, its source after (kvm/memslot.py); a fault there is MMIO
    slot_absent: int = 0
    # Nested EPT (kvm/nested_ept.py): the last-level shadow EPT02 pages marked sp->unsync, one
    # per 2 MiB region of L2 GPAs (bit n: the n-th region of KvmConfig.l2_gpas)
    ept02_unsync: int = 0
    # Possible NX huge pages (kvm->arch.possible_nx_huge_pages; kvm/hugepage.py): the 2 MiB
    # regions (bit n: KvmConfig.huge[n]) whose 4 KiB table an exec fault split and no NX
    # recovery has zapped yet
    nx_huge: int = 0

    def set_backing(self, index: int, hpa: int) -> None:
        b = list(self.backing)
        b[index] = hpa
        self.backing = tuple(b)

    def set_dirty(self, index: int, value: bool) -> None:
        d = list(self.dirty)
        d[index] = value
        self.dirty = tuple(d)

    def set_root(self, index: int, state: int, refs: int) -> None:
        s = list(self.root_state)
        r = list(self.root_refs)
        s[index] = state
        r[index] = refs
        self.root_state = tuple(s)
        self.root_refs = tuple(r)

    def set_root_vm(self, index: int, vm: int) -> None:
        v = list(self.root_vm)
        v[index] = vm
        self.root_vm = tuple(v)

    def bump_fresh(self, index: int) -> int:
        f = list(self.fresh)
        f[index] += 1
        self.fresh = tuple(f)
        return f[index]
