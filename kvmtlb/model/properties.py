"""The properties a world must satisfy (design.md, "Properties"), checked after every step.

- guest-transparency: for every vCPU in guest mode, every GVA the scenario names and every access
  kind (read, write, execute: an implicit access), each guest-visible outcome the hardware model
  allows (a translation to (GPA, guest rights), or a #PF) must be one the vCPU's native reference
  allows. EPT violations and #NPFs are not guest-visible (KVM handles them). An access KVM
  emulated is checked when it completes, against the reference at that moment.
- ept-coherence, in two parts. host-isolation is use-after-free: once the host kernel freed a
  host page, or migrated its data away (`HostThread.released`, set by the kernel's own step, not
  by KVM's), no translation a vCPU in guest mode may use may reach it; and once a memslot move
  returned to userspace (`HostThread.moved`), no translation through the old GPA, which has no
  memory now, may reach any host page (the moved page is the new GPA's). dirty-logging: once write
  protection of a frame for dirty logging returned to userspace (its kvm_flush_remote_tlbs
  returned), a write through any translation of that frame must be logged in the dirty bitmap.
  With PML (kvm/pml.py) a write is logged too when it sets the EPT dirty flag with PML on, or
  when its GPA is in a PML log already (KVM moves it to the bitmap at the vCPU's next exit).
- vm-isolation (with a second VM, kvm/vm.py): no outcome of an access by a vCPU of one VM may
  reach a host page that backs a guest frame of the other VM (a stale entry under a VPID or ASID
  or EP4TA that a vCPU of the other VM used). The destroyed VM's pages stay its own: userspace
  owns guest memory, not the VM.

When several properties fail in one world, the first in PRECEDENCE is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from kvmtlb.host.thread import HostThread
from kvmtlb.hw.dirty import logs_write, pml_holds
from kvmtlb.hw.outcomes import Access, PageFault
from kvmtlb.hw.paging import E_W
from kvmtlb.hw.walk import ACCESS_KINDS
from kvmtlb.kvm.context import KvmConfig, World
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
    watched = h.released or h.protected or h.moved
    running = tuple(
        (v, vc[V_CPU]) for v, vc in enumerate(w.vcpus) if vc[V_PC] == "guest" and vc[V_CPU] >= 0
    )
    found: list[Violation] = []
    if watched:
        for v, cpu in running:
            for gva in system.scenario.gvas:
                for access in ACCESS_KINDS:
                    model = w.machine.outcomes(cpu, gva, access)
                    found.extend(_coherence(system, w, v, cpu, gva, access, model))
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
    shadow = shadow_frames(system)
    kvm = system.kvm
    for v, cpu in running:
        for gva in system.scenario.gvas:
            for access in ACCESS_KINDS:
                model = w.machine.outcomes(cpu, gva, access)
                if kvm.vm_of:
                    found.extend(_isolation(system, v, gva, access, model))
                native = None
                for o in model:
                    seen = visible(o, shadow) if not kvm.nested_tdp else visible_l1(o, kvm)
                    if seen is None:
                        continue
                    if native is None:
                        native = {
                            visible(n, shadow) if not kvm.nested_tdp else visible_l1(n, None)
                            for n in w.native.outcomes(v, gva, access)
                        }
                    if seen not in native:
                        found.append(
                            Violation(
                                "guest-transparency",
                                f"vcpu{v} {access} {gva:#x} may see {_shown(o, shadow, kvm)}, "
                                f"which a native processor could not: native outcomes are "
                                f"{_list(w.native.outcomes(v, gva, access))}",
                            )
                        )
    return tuple(found)


def check_observations(
    system: System, w: World, observations: Sequence[tuple[int, int, int, int]]
) -> Violation | None:
    """Accesses KVM's emulator completed in the step that produced `w`, against the native
    reference of the vCPU at that moment."""
    for v, gva, gpa, rights in observations:
        if gpa < 0:  # a #PF KVM injected (shadow paging): `rights` is the access kind
            access = ACCESS_KINDS[rights]
            native_outs = w.native.outcomes(v, gva, access)
            if not any(isinstance(n, PageFault) for n in native_outs):
                return Violation(
                    "guest-transparency",
                    f"KVM injected a #PF into vcpu{v} for a {access} of {gva:#x}, which a native "
                    f"processor could not take: native outcomes are {_list(native_outs)}",
                )
            continue
        native_outs = w.native.outcomes(v, gva, "read")
        if not any(isinstance(n, Access) and n.gpa == gpa for n in native_outs):
            return Violation(
                "guest-transparency",
                f"vcpu{v}'s emulated read of {gva:#x} completed through GPA {gpa:#x}, which a "
                f"native processor could not use: native outcomes are {_list(native_outs)}",
            )
    return None


def visible(o: object, shadow: dict[int, int] | None = None) -> tuple[object, ...] | None:
    """What the guest sees of an outcome: the GPA and guest rights of a translation, or a #PF.
    With shadow paging (`shadow` maps host pages to guest frames, `shadow_frames`) a translation
    is judged by its guest frame alone (an SPTE's rights are the guest's cut by KVM's, and each
    access kind is checked on its own), and a #PF is not seen: it exits to KVM, which injects
    the guest's own faults (checked as observations)."""
    if isinstance(o, Access):
        if shadow is None:
            return ("access", o.gpa, o.rights)
        return ("access", outcome_gpa(o, shadow))
    if isinstance(o, PageFault) and shadow is None:
        return ("#PF",)
    return None


def visible_l1(o: object, kvm: KvmConfig | None) -> tuple[object, ...] | None:
    """Nested EPT: what L1 and L2 see of an outcome, with the L1 GPA it ends at: L2's GPA and
    rights, and the guest frame of the host page (`kvm`: KVM's processor, whose frames are host
    pages) or the frame itself (None: the native reference, whose frames are L1 GPAs). For L1's
    own accesses the GPA and the L1 GPA are the same page."""
    if isinstance(o, Access):
        page = o.frame & ~0xFFF
        return ("access", o.gpa, o.rights, kvm.frame_of_page(page) if kvm else page)
    if isinstance(o, PageFault):
        return ("#PF",)
    return None


def shadow_frames(system: System) -> dict[int, int] | None:
    """Host page -> guest frame with shadow paging (hardware outcomes name no GPA); None with
    TDP."""
    return None if system.kvm.tdp else system.kvm.frame_of


def outcome_gpa(o: Access, shadow: dict[int, int] | None) -> int:
    """The guest frame of a translation (through `shadow` when the hardware names none)."""
    if o.gpa >= 0 or shadow is None:
        return o.gpa
    return shadow.get(o.frame & ~0xFFF, -1)


def _shown(o: object, shadow: dict[int, int] | None, kvm: KvmConfig | None = None) -> str:
    """An outcome in a message; a shadow translation with the guest frame of its host page, a
    nested-EPT one with the L1 GPA of its host page."""
    text: str = o.describe()  # type: ignore[attr-defined]
    if shadow is not None and isinstance(o, Access) and o.gpa < 0:
        text += f" (the host page of GPA {outcome_gpa(o, shadow):#x})"
    elif kvm is not None and kvm.nested_tdp and isinstance(o, Access):
        text += f" (the host page of L1 GPA {kvm.frame_of_page(o.frame & ~0xFFF):#x})"
    return text


def _list(outcomes: list[object]) -> str:
    return "; ".join(o.describe() for o in outcomes) or "none"  # type: ignore[attr-defined]


def _isolation(
    system: System, v: int, gva: int, access: str, model: Sequence[object]
) -> list[Violation]:
    """vm-isolation: outcomes of vCPU `v`'s access that reach a page of the other VM."""
    kvm = system.kvm
    mine = kvm.vcpu_vm(v)
    out: list[Violation] = []
    for o in model:
        if not isinstance(o, Access):
            continue
        owner = kvm.page_vm(o.frame & ~0xFFF)
        if owner >= 0 and owner != mine:
            out.append(
                Violation(
                    "vm-isolation",
                    f"vcpu{v} (VM {mine}) {access} {gva:#x} may reach host page {o.frame:#x}, "
                    f"which backs GPA {kvm.frame_of_page(o.frame & ~0xFFF):#x} of VM {owner}",
                )
            )
    return out


def _coherence(
    system: System, w: World, v: int, cpu: int, gva: int, access: str, model: Sequence[object]
) -> list[Violation]:
    h: HostThread = w.host
    kvm = system.kvm
    shadow = shadow_frames(system)
    out: list[Violation] = []
    for o in model:
        if not isinstance(o, Access):
            continue
        gpa = outcome_gpa(o, shadow)
        page = o.frame & ~0xFFF
        if page in h.released:
            out.append(
                Violation(
                    "host-isolation",
                    f"vcpu{v} {access} {gva:#x} may reach host page {o.frame:#x} through GPA "
                    f"{o.gpa:#x}, which the host freed or migrated away: a use after free",
                )
            )
        if gpa not in kvm.gpas:
            continue
        i = kvm.gpa_index(gpa)
        if h.moved >> i & 1:
            out.append(
                Violation(
                    "host-isolation",
                    f"vcpu{v} {access} {gva:#x} may reach host page {o.frame:#x} through GPA "
                    f"{gpa:#x}, whose memslot moved away: no memory is there since the move "
                    "returned",
                )
            )
        if (
            h.protected >> i & 1
            and access == "write"
            and not w.kvm[K_DIRTY][i]
            # with PML (kvm/pml.py): the write logs itself, or its GPA is in a log already
            # (KVM moves it to the bitmap at the vCPU's next exit)
            and not logs_write(w.machine.cpus[cpu], o)
            and not pml_holds(w.machine.cpus, gpa)
        ):
            out.append(
                Violation(
                    "dirty-logging",
                    f"vcpu{v} may write {gva:#x} (GPA {gpa:#x}) without the write being logged: "
                    "write protection for dirty logging completed",
                )
            )
    return out


__all__ = ["E_W", "PRECEDENCE", "Violation", "check", "visible"]
