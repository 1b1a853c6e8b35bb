"""The host's operations, as a scenario's host thread lists them (scenario-format.md)."""

from __future__ import annotations

from typing import NamedTuple, TypeAlias


class PreemptOp(NamedTuple):
    vcpu: int
    line: int = 0

    def describe(self) -> str:
        return f"preempt vcpu{self.vcpu}"


class ResumeOp(NamedTuple):
    vcpu: int
    pcpu: int  # -1: the pCPU it last ran on
    line: int = 0

    def describe(self) -> str:
        on = f" on pcpu{self.pcpu}" if self.pcpu >= 0 else ""
        return f"resume vcpu{self.vcpu}{on}"


class ZapOp(NamedTuple):
    gpa: int
    line: int = 0

    def describe(self) -> str:
        return f"zap {self.gpa:#x}"


class RemapOp(NamedTuple):
    gpa: int
    hpa: int
    line: int = 0

    def describe(self) -> str:
        return f"remap {self.gpa:#x} -> {self.hpa:#x}"


class WrprotectOp(NamedTuple):
    gpa: int
    line: int = 0

    def describe(self) -> str:
        return f"wrprotect {self.gpa:#x}"


class AgeOp(NamedTuple):
    gpa: int
    line: int = 0

    def describe(self) -> str:
        return f"age {self.gpa:#x}"


class ClearDirtyLogOp(NamedTuple):
    gpa: int
    line: int = 0

    def describe(self) -> str:
        return f"clear_dirty_log {self.gpa:#x}"


class CollapseOp(NamedTuple):
    """Dirty logging switched off for the memslot of a 2 MiB region (KVM_SET_USER_MEMORY_REGION
    clearing KVM_MEM_LOG_DIRTY_PAGES): KVM collapses the region's 4 KiB SPTEs back into a huge
    mapping (kvm/hugepage.py)."""

    gpa: int
    line: int = 0

    def describe(self) -> str:
        return f"collapse {self.gpa:#x}"


class FlushRemoteOp(NamedTuple):
    line: int = 0

    def describe(self) -> str:
        return "flush_remote_tlbs"


class ZapGfnRangeOp(NamedTuple):
    first: int  # the two guest frames the zap walks, in order, yielding mmu_lock between them
    second: int
    line: int = 0

    def describe(self) -> str:
        return f"zap_gfn_range {self.first:#x} {self.second:#x}"


class RecoverNxOp(NamedTuple):
    """`recover_nx`: one run of KVM's NX huge page recovery worker (kvm/hugepage.py): it zaps the
    4 KiB tables of the 2 MiB regions an exec fault split ([host] "HPA RIGHTS 2m nx"), yielding
    mmu_lock between them, so that the next fault can map the region 2 MiB again."""

    line: int = 0

    def describe(self) -> str:
        return "recover_nx"


class SpawnOp(NamedTuple):
    """`spawn OP`: OP runs in a second host thread (`host2`), concurrently with the ops after."""

    op: FlushRemoteOp | ZapGfnRangeOp | RecoverNxOp
    line: int = 0

    def describe(self) -> str:
        return f"spawn {self.op.describe()}"


class ZapAllFastOp(NamedTuple):
    line: int = 0

    def describe(self) -> str:
        return "zap_all_fast"


class CreateVcpuOp(NamedTuple):
    """`create vcpuN [on pcpuM]`: a vCPU of the second VM created during the run, then loaded
    (KVM_CREATE_VCPU, then KVM_RUN's vcpu_load)."""

    vcpu: int
    pcpu: int  # -1: its placement
    line: int = 0

    def describe(self) -> str:
        on = f" on pcpu{self.pcpu}" if self.pcpu >= 0 else ""
        return f"create vcpu{self.vcpu}{on}"


class DestroyVmOp(NamedTuple):
    """`destroy vmN`: userspace stops the VM's vCPU threads (the op waits until their ops are
    done) and closes the VM (kvm_destroy_vm). `vcpus` and `ops` (each one's number of guest ops)
    are filled in by the parser."""

    vm: int
    vcpus: tuple[int, ...] = ()
    ops: tuple[int, ...] = ()
    line: int = 0

    def describe(self) -> str:
        return f"destroy vm{self.vm}"


class DeleteMemslotOp(NamedTuple):
    """`delete_memslot GPA`: userspace deletes the frame's memslot (KVM_SET_USER_MEMORY_REGION
    with size 0: kvm_set_memslot, KVM_MR_DELETE), frees the memory behind it, and creates the
    slot again on new memory (a memory-region update, as a VMM does when it remaps a region)."""

    gpa: int
    line: int = 0

    def describe(self) -> str:
        return f"delete_memslot {self.gpa:#x}"


class MoveMemslotOp(NamedTuple):
    """`move_memslot GPA -> GPA`: userspace moves the frame's memslot to another guest-physical
    address (KVM_SET_USER_MEMORY_REGION with a new guest_phys_addr: kvm_set_memslot,
    KVM_MR_MOVE). The same host page backs the new GPA; the old GPA has no memory afterwards."""

    gpa: int
    to: int
    line: int = 0

    def describe(self) -> str:
        return f"move_memslot {self.gpa:#x} -> {self.to:#x}"


class SetSregsOp(NamedTuple):
    """`set_sregs vcpuN [cr3=ROOT] [pcid=N] [pge=0|1] [smep=0|1]`: userspace writes the vCPU's
    special registers (KVM_SET_SREGS, kvm/sregs.py) from the vCPU's own thread, between two
    KVM_RUNs: CR3 becomes page table ROOT's (with PCID N, 0 if not given), the CR4 bits named
    take the values given; a register or bit not named keeps its current value (userspace writes
    back what it read). `root` is "" when no cr3= is given; -1 means "keep" for the others."""

    vcpu: int
    root: str = ""
    pcid: int = -1
    pge: int = -1
    smep: int = -1
    line: int = 0

    def describe(self) -> str:
        parts = [f"set_sregs vcpu{self.vcpu}"]
        if self.root:
            parts.append(f"cr3={self.root}")
        for name in ("pcid", "pge", "smep"):
            value = getattr(self, name)
            if value >= 0:
                parts.append(f"{name}={value}")
        return " ".join(parts)


HostOp: TypeAlias = (
    PreemptOp
    | ResumeOp
    | ZapOp
    | RemapOp
    | WrprotectOp
    | CollapseOp
    | FlushRemoteOp
    | ZapAllFastOp
    | ZapGfnRangeOp
    | RecoverNxOp
    | SpawnOp
    | AgeOp
    | ClearDirtyLogOp
    | CreateVcpuOp
    | DestroyVmOp
    | DeleteMemslotOp
    | MoveMemslotOp
    | SetSregsOp
)
