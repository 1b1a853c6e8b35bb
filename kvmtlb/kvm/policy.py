"""Policies: a flush policy is a class; upstream versions and bug variants are subclasses.

`KvmPolicy` combines the ported files (x86.c, vmx.c, svm.c, kvm_main.c, mmu.c) into one class whose
methods carry KVM's names. A variant overrides a method, or splits one by adding a step label
(`STEPS`); docs/policies.md documents the API with a worked example.

Step labels map the vCPU program counter to the method that runs the next atomic step. A vCPU in
host mode may be preempted at any label except those in `NOT_PREEMPTIBLE` (KVM disabled
preemption and interrupts before setting IN_GUEST_MODE); a pending IPI is taken at any label
except those in `IRQS_OFF`.
"""

from __future__ import annotations

from importlib import import_module
from typing import ClassVar

from kvmtlb.kvm.context import Step
from kvmtlb.kvm.hugepage import HugePages
from kvmtlb.kvm.hyperv import HypervFlush
from kvmtlb.kvm.kvm_main import KvmMain
from kvmtlb.kvm.memslot import Memslots
from kvmtlb.kvm.mmu import Mmu
from kvmtlb.kvm.nested_ept import NestedEpt
from kvmtlb.kvm.nested_ept01 import NestedEpt01
from kvmtlb.kvm.nested_npt import NestedNpt
from kvmtlb.kvm.nested_svm import NestedSvm
from kvmtlb.kvm.nested_vmx import NestedVmx
from kvmtlb.kvm.pml import Pml
from kvmtlb.kvm.shadow import ShadowMmu
from kvmtlb.kvm.sregs import SetSregs
from kvmtlb.kvm.state import HostTask, Vcpu
from kvmtlb.kvm.svm import Svm
from kvmtlb.kvm.vm import VmLifecycle
from kvmtlb.kvm.vmx import Vmx
from kvmtlb.kvm.x86 import X86


class KvmPolicy(
    NestedNpt,
    NestedEpt,
    NestedEpt01,
    NestedVmx,
    NestedSvm,
    X86,
    Vmx,
    Svm,
    HypervFlush,
    HugePages,
    KvmMain,
    Pml,
    Mmu,
    ShadowMmu,
    VmLifecycle,
    Memslots,
    SetSregs,
):
    """KVM's TLB-flush machinery. Subclasses are versions (kind "upstream") or variants."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "upstream"  # "upstream" | "bug" | "user"
    based_on: ClassVar[str] = ""
    fix: ClassVar[str] = ""  # the upstream commit that fixed the bug a variant reintroduces
    cve: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    STEPS: ClassVar[dict[str, str]] = {
        "vcpu_enter_guest": "vcpu_enter_guest",
        "record_steal_time:flush": "record_steal_time_flush",
        "vcpu_enter_guest:mode": "vcpu_enter_guest_mode",
        "vcpu_enter_guest:recheck": "vcpu_enter_guest_recheck",
        "handle_exit": "handle_exit",
        "kvm_tdp_page_fault:map": "kvm_tdp_page_fault_map",
        "FNAME(page_fault):fetch": "fname_page_fault_fetch",
        "x86_emulate_insn:complete": "x86_emulate_insn_complete",
    }
    # The host thread's KVM code (kvmtlb.host calls it from the host kernel's operations).
    HOST_STEPS: ClassVar[dict[str, str]] = {
        "kvm_mmu_notifier_invalidate_range_start": "kvm_mmu_notifier_invalidate_range_start",
        "kvm_flush_remote_tlbs": "kvm_flush_remote_tlbs",
        "kvm_flush_remote_tlbs:mode": "kvm_flush_remote_tlbs_mode",
        "kvm_flush_remote_tlbs:kick": "kvm_flush_remote_tlbs_kick",
        "kvm_flush_remote_tlbs:wait": "kvm_flush_remote_tlbs_wait",
        "kvm_mmu_notifier_invalidate_range_end": "kvm_mmu_notifier_invalidate_range_end",
        "kvm_mmu_slot_remove_write_access": "kvm_mmu_slot_remove_write_access",
        "kvm_mmu_slot_leaf_clear_dirty": "kvm_mmu_slot_leaf_clear_dirty",
        "kvm_mmu_slot_apply_flags:log_off": "kvm_mmu_slot_apply_flags_log_off",
        "kvm_set_spte_gfn": "kvm_set_spte_gfn",
        "kvm_make_all_cpus_request": "kvm_make_all_cpus_request",
        "kvm_make_all_cpus_request:mode": "kvm_make_all_cpus_request_mode",
        "kvm_make_all_cpus_request:kick": "kvm_make_all_cpus_request_kick",
        "kvm_make_all_cpus_request:wait": "kvm_make_all_cpus_request_wait",
        "kvm_mmu_zap_all_fast": "kvm_mmu_zap_all_fast",
        "kvm_tdp_mmu_zap_invalidated_roots": "kvm_tdp_mmu_zap_invalidated_roots",
        "kvm_mmu_notifier_clear_young": "kvm_mmu_notifier_clear_young",
        "kvm_clear_dirty_log_protect": "kvm_clear_dirty_log_protect",
        "kvm_zap_gfn_range": "kvm_zap_gfn_range",
        "kvm_zap_gfn_range:yield": "kvm_zap_gfn_range_yield",
        "kvm_zap_gfn_range:unlock": "kvm_zap_gfn_range_unlock",
        "kvm_zap_gfn_range:relock": "kvm_zap_gfn_range_relock",
        "kvm_zap_gfn_range:done": "kvm_zap_gfn_range_done",
        "kvm_recover_nx_huge_pages": "kvm_recover_nx_huge_pages",
        "kvm_recover_nx_huge_pages:yield": "kvm_recover_nx_huge_pages_yield",
        "kvm_recover_nx_huge_pages:unlock": "kvm_recover_nx_huge_pages_unlock",
        "kvm_recover_nx_huge_pages:relock": "kvm_recover_nx_huge_pages_relock",
        "kvm_recover_nx_huge_pages:done": "kvm_recover_nx_huge_pages_done",
        "kvm_set_memslot": "kvm_set_memslot",
        "kvm_set_memslot:swap": "kvm_set_memslot_swap",
        "kvm_arch_flush_shadow_memslot": "kvm_arch_flush_shadow_memslot",
        "kvm_set_memslot:delete": "kvm_set_memslot_delete",
        "kvm_set_memslot:move": "kvm_set_memslot_move",
    }
    NOT_PREEMPTIBLE: ClassVar[frozenset[str]] = frozenset({"vcpu_enter_guest:recheck"})
    IRQS_OFF: ClassVar[frozenset[str]] = frozenset({"vcpu_enter_guest:recheck"})

    def step(self, k: Step, vcpu: Vcpu) -> None:
        """Run the vCPU thread's next atomic step (the method its `pc` names)."""
        method = self.STEPS.get(vcpu.pc)
        if method is None:
            raise KeyError(f"{self.name}: no step for label {vcpu.pc!r}")
        getattr(self, method)(k, vcpu)

    def host_step(self, k: Step, task: HostTask) -> None:
        """Run the host task's next atomic step (the method `HOST_STEPS[task.pc]` names)."""
        method = self.HOST_STEPS.get(task.pc)
        if method is None:
            raise KeyError(f"{self.name}: no host step for label {task.pc!r}")
        getattr(self, method)(k, task)

    def step_name(self, pc: str) -> str:
        return self.STEPS.get(pc, pc)

    def vcpu_create(self, k: Step, vcpu: Vcpu) -> None:
        """x86.c:kvm_arch_vcpu_create @ v6.18: the vendor's vcpu_create."""
        if k.config.vmx:
            self.vmx_vcpu_create(k, vcpu)
        else:
            self.svm_vcpu_create(k, vcpu)

    def hardware_enable(self, k: Step) -> None:
        """The per-pCPU setup KVM does when it enables virtualization on each CPU."""
        if not k.config.vmx:
            for sd in k.pcpus:
                self.svm_hardware_enable(k, sd)


_REGISTRY: dict[str, type[KvmPolicy]] = {}


def register(cls: type[KvmPolicy]) -> type[KvmPolicy]:
    """Class decorator: make a policy known by its `name` (for --policy NAME and [expect])."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy name {cls.name!r} is taken")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[KvmPolicy]]:
    """Every known policy by name: the upstream versions and the bug zoo."""
    from kvmtlb.kvm import bugs, nested_bugs, versions  # noqa: F401  (they register themselves)

    # after the nested bugs, whichever was imported first: the bug zoo's table keeps this order
    import_module("kvmtlb.kvm.hugepage_bugs")
    import_module("kvmtlb.kvm.pml_bugs")
    import_module("kvmtlb.kvm.nested_npt_bugs")

    return dict(_REGISTRY)


def upstream() -> list[type[KvmPolicy]]:
    return [c for c in registry().values() if c.kind == "upstream"]
