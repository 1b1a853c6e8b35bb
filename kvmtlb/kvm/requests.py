"""KVM requests: deferred per-vCPU work, serviced before VM entry.

Models include/linux/kvm_host.h (KVM_REQ_TLB_FLUSH, the request flags) and
arch/x86/include/asm/kvm_host.h (KVM_ARCH_REQ(n) = bit 8 + n) as of v6.18, restricted to the
requests that touch TLBs: TLB_FLUSH (flush every context of the vCPU), TLB_FLUSH_CURRENT (the
current context), TLB_FLUSH_GUEST (what the guest created), STEAL_UPDATE (record_steal_time, which
may carry a PV flush), MMU_SYNC, LOAD_MMU_PGD, and the root reloads of a fast zap:
MMU_FREE_OBSOLETE_ROOTS (v6.18) and MMU_RELOAD (v5.x). Subsumption: flushing "all" clears a pending
"current" (kvm_vcpu_flush_tlb_all @ v6.18).
"""

from __future__ import annotations

from kvmtlb.kvm.state import Vcpu

KVM_REQUEST_ARCH_BASE = 8


def _arch(n: int) -> int:
    return 1 << (KVM_REQUEST_ARCH_BASE + n)


KVM_REQ_TLB_FLUSH = 1 << 0  # | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP
KVM_REQ_MMU_RELOAD = 1 << 1  # v5.x only (bit 1 is KVM_REQ_VM_DEAD since 2022) | WAIT | NO_WAKEUP
KVM_REQ_MMU_SYNC = _arch(3)
KVM_REQ_LOAD_MMU_PGD = _arch(5)
KVM_REQ_STEAL_UPDATE = _arch(8)
KVM_REQ_TLB_FLUSH_CURRENT = _arch(26)
KVM_REQ_TLB_FLUSH_GUEST = _arch(27)  # | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP
KVM_REQ_UPDATE_CPU_DIRTY_LOGGING = _arch(30)  # | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP
KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = _arch(31)  # | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP

# Requests sent with KVM_REQUEST_WAIT: the sender's kick waits for the IPI to be taken.
WAIT_REQUESTS = (
    KVM_REQ_TLB_FLUSH
    | KVM_REQ_MMU_RELOAD
    | KVM_REQ_TLB_FLUSH_GUEST
    | KVM_REQ_MMU_FREE_OBSOLETE_ROOTS
    | KVM_REQ_UPDATE_CPU_DIRTY_LOGGING
)

REQUEST_NAMES = {
    KVM_REQ_TLB_FLUSH: "KVM_REQ_TLB_FLUSH",
    KVM_REQ_MMU_RELOAD: "KVM_REQ_MMU_RELOAD",
    KVM_REQ_MMU_SYNC: "KVM_REQ_MMU_SYNC",
    KVM_REQ_LOAD_MMU_PGD: "KVM_REQ_LOAD_MMU_PGD",
    KVM_REQ_STEAL_UPDATE: "KVM_REQ_STEAL_UPDATE",
    KVM_REQ_TLB_FLUSH_CURRENT: "KVM_REQ_TLB_FLUSH_CURRENT",
    KVM_REQ_TLB_FLUSH_GUEST: "KVM_REQ_TLB_FLUSH_GUEST",
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS: "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS",
    KVM_REQ_UPDATE_CPU_DIRTY_LOGGING: "KVM_REQ_UPDATE_CPU_DIRTY_LOGGING",
}


def request_names(bits: int) -> str:
    names = [n for b, n in REQUEST_NAMES.items() if bits & b]
    return ", ".join(names) if names else "none"


def kvm_make_request(vcpu: Vcpu, req: int) -> None:
    vcpu.requests |= req


def kvm_test_request(vcpu: Vcpu, req: int) -> bool:
    return bool(vcpu.requests & req)


def kvm_clear_request(vcpu: Vcpu, req: int) -> None:
    vcpu.requests &= ~req


def kvm_check_request(vcpu: Vcpu, req: int) -> bool:
    """Test and clear (include/linux/kvm_host.h:kvm_check_request)."""
    if vcpu.requests & req:
        vcpu.requests &= ~req
        return True
    return False


def kvm_request_pending(vcpu: Vcpu) -> bool:
    return bool(vcpu.requests)
