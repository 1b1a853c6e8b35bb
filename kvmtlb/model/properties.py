"""The properties a world must satisfy (design.md, "Properties"), checked after every step.

- guest-transparency: for every vCPU in guest mode, every GVA the scenario names and every access
  kind (read, write, execute: an implicit access), each guest-visible outcome the hardware model
  allows (a translation to (GPA, guest rights), or a #PF) must be one the vCPU's native reference
  allows. EPT violations and #NPFs are not guest-visible (KVM handles them). An access KVM
  emulated is checked when it completes, against the reference at that moment.
- ept-coherence, in two parts. host-isolation is use-after-free: once the host kernel freed a
  host page, or migrated its data away (`HostThread.released`, set by the kernel's own step, not
  by KVM's), no translation a vCPU in guest mode may use may reach it. dirty-logging: once write
  protection of a frame for dirty logging returned to userspace (its kvm_flush_remote_tlbs
  returned), a write through any translation of that frame must be logged in the dirty bitmap.

When several properties fail in one world, the first in PRECEDENCE is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from kvmtlb.host.thread import HostThread
from kvmtlb.hw.outcomes import Access, PageFault
from kvmtlb.hw.paging import E_W
from kvmtlb.hw.walk import ACCESS_KINDS
from kvmtlb.kvm.context import World
from kvmtlb.model.system import System

PRECEDENCE = ("host-isolation", "vm-isolation", "dirty-logging", "guest-transparency")
V_PC, V_CPU = 1, 5
K_DIRTY = 5  # position of Kvm.dirty in the frozen Kvm tuple
MEMO_LIMIT = 1 << 16  # machine pairs remembered by check(); cleared when full


class Violation(NamedTuple):
    prop: str
    detail: str


def check(system: System, w: World) -> Violation | None:
    """The first violated property of world `w` (in PRECEDENCE order), or None.

    Guest-transparency depends only on the two machines and on which vCPU runs where, and many
    worlds share those (they differ in KVM's or the host's state): it is memoized per system."""
    h: HostThread = w.host
    watched = h.released or h.protected
    running = tuple(
        (v, vc[V_CPU]) for v, vc in enumerate(w.vcpus) if vc[V_PC] == "guest" and vc[V_CPU] >= 0
    )
    found: list[Violation] = []
    if watched:
        for v, cpu in running:
            for gva in system.scenario.gvas:
                for access in ACCESS_KINDS:
                    model = w.machine.outcomes(cpu, gva, access)
                    found.extend(_coherence(system, w, v, gva, access, model))
    memo = system.memo
    key = (w.machine, w.native, running)
    seen = memo.get(key)
    if seen is None:
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        seen = memo[key] = _transparency(system, w, running)
    found.extend(seen)
    if not found:
        return None
    return min(found, key=lambda f: PRECEDENCE.index(f.prop))


def _transparency(
    system: System, w: World, running: tuple[tuple[int, int], ...]
) -> tuple[Violation, ...]:
    found: list[Violation] = []
    for v, cpu in running:
        for gva in system.scenario.gvas:
            for access in ACCESS_KINDS:
                model = w.machine.outcomes(cpu, gva, access)
                native = None
                for o in model:
                    seen = visible(o)
                    if seen is None:
                        continue
                    if native is None:
                        native = {visible(n) for n in w.native.outcomes(v, gva, access)}
                    if seen not in native:
                        found.append(
                            Violation(
                                "guest-transparency",
                                f"vcpu{v} {access} {gva:#x} may see {o.describe()}, which a native "
                                f"processor could not: native outcomes are "
                                f"{_list(w.native.outcomes(v, gva, access))}",
                            )
                        )
    return tuple(found)


def check_observations(
    system: System, w: World, observations: Sequence[tuple[int, int, int, int]]
) -> Violation | None:
    """Accesses KVM's emulator completed in the step that produced `w`, against the native
    reference of the vCPU at that moment."""
    for v, gva, gpa, _rights in observations:
        native_outs = w.native.outcomes(v, gva, "read")
        if not any(isinstance(n, Access) and n.gpa == gpa for n in native_outs):
            return Violation(
                "guest-transparency",
                f"vcpu{v}'s emulated read of {gva:#x} completed through GPA {gpa:#x}, which a "
                f"native processor could not use: native outcomes are {_list(native_outs)}",
            )
    return None


def visible(o: object) -> tuple[object, ...] | None:
    if isinstance(o, Access):
        return ("access", o.gpa, o.rights)
    if isinstance(o, PageFault):
        return ("#PF",)
    return None


def _list(outcomes: list[object]) -> str:
    return "; ".join(o.describe() for o in outcomes) or "none"  # type: ignore[attr-defined]


def _coherence(
    system: System, w: World, v: int, gva: int, access: str, model: Sequence[object]
) -> list[Violation]:
    h: HostThread = w.host
    kvm = system.kvm
    out: list[Violation] = []
    for o in model:
        if not isinstance(o, Access):
            continue
        page = o.frame & ~0xFFF
        if page in h.released:
            out.append(
                Violation(
                    "host-isolation",
                    f"vcpu{v} {access} {gva:#x} may reach host page {o.frame:#x} through GPA "
                    f"{o.gpa:#x}, which the host freed or migrated away: a use after free",
                )
            )
        if o.gpa not in kvm.gpas:
            continue
        i = kvm.gpa_index(o.gpa)
        if h.protected >> i & 1 and access == "write" and not w.kvm[K_DIRTY][i]:
            out.append(
                Violation(
                    "dirty-logging",
                    f"vcpu{v} may write {gva:#x} (GPA {o.gpa:#x}) without the write being logged: "
                    "write protection for dirty logging completed",
                )
            )
    return out


__all__ = ["E_W", "PRECEDENCE", "Violation", "check", "visible"]
