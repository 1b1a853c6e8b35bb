"""The concrete machine of a cost run: processors, memory, and one concrete TLB per pCPU.

The counterpart of kvmtlb.hw.machine.Machine for the cost model. Processor states are the same
values (`Cpu`, `SvmCpu`; their MAY-set field stays 0) and events the same frozen dataclasses with
the same pure `execute(cpu, caps, readings) -> Effect`; the effect's `invalidation` is applied to
the pCPU's TLB (tlb.py) instead of a MAY-set, and nothing is filled except by the walks that
accesses make (walk.py). Faults are delivered by the vendor's `Arch.fault_effect`, as in the
checker.

Counted here, for every event: its operations (operations.py), the entries it removed by kind,
split into still valid (an over-flush: validity.py) and stale; for every access: lookups, misses,
paging-structure-cache hits and memory references (walk.py). All counts go to one
`collections.Counter` with dotted names (docs/cost-model.md lists them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from kvmtlb.cost.memory import WorkloadMemory
from kvmtlb.cost.operations import operations
from kvmtlb.cost.tlb import KIND_NAMES, KeySpace, Tlb
from kvmtlb.cost.validity import Validity
from kvmtlb.cost.walk import Context, Walker
from kvmtlb.hw.effect import DEFAULT_READINGS, Effect, Readings
from kvmtlb.hw.machine import Arch
from kvmtlb.hw.outcomes import Access, AccessOutcome
from kvmtlb.hw.paging import E_ALL, E_R, E_W, G_W
from kvmtlb.hw.svm import Vmrun
from kvmtlb.hw.walk import NotPresent, Stage2Fault, Translated


class CostMachine:
    """Processors, memory and concrete TLBs; `cpus` and `memory` read like Machine's."""

    def __init__(
        self,
        memory: WorkloadMemory,
        cpus: Sequence[Any],
        caps: Any,
        arch: Arch,
        capacity: Mapping[type, int],
        validity: Validity,
        readings: Readings = DEFAULT_READINGS,
        audit: bool = False,
    ) -> None:
        self.memory = memory
        self.cpus: list[Any] = list(cpus)
        self.caps = caps
        self.arch = arch
        self.readings = readings
        self.keys = KeySpace()
        self.tlbs = [Tlb(self.keys, capacity) for _ in self.cpus]
        self.validity = validity
        self.audit = audit  # check every TLB hit against current memory (tlb.stale-hits)
        self.n: Counter[str] = Counter()
        self.walker = Walker(memory)
        self._ctx: list[Context | None] = [None] * len(self.cpus)
        self._last_asid: dict[int, int] = {}  # VMCB ident -> ASID of its last VMRUN
        self._asid_cpu: dict[int, int] = {}  # VMCB ident -> the pCPU of its last VMRUN

    def reset_counts(self) -> None:
        self.n.clear()
        self.walker.reset()

    def counts(self) -> Counter[str]:
        """Every count so far (the walker's folded in)."""
        self.walker.fold(self.n)
        return self.n

    # -- events ---------------------------------------------------------------------------------
    def step(self, i: int, event: Any) -> Effect:
        """Processor `i` executes `event`."""
        eff: Effect = event.execute(self.cpus[i], self.caps, self.readings)
        self.apply(i, event, eff)
        return eff

    def fault(self, i: int, outcome: AccessOutcome, name: str) -> Effect:
        """Deliver the fault `outcome` of an access on processor `i` (counted as `name`)."""
        eff = self.arch.fault_effect(self.cpus[i], outcome, self.readings)
        self.n[f"op.{name}"] += 1
        self.apply(i, None, eff, name)
        return eff

    def apply(self, i: int, event: Any, eff: Effect, primary: str = "") -> None:
        """Count the event's operations, remove what its invalidation covers from pCPU `i`'s
        TLB (attributed to `primary`, by default the event's own), take its new state."""
        n = self.n
        vmrun = isinstance(event, Vmrun)
        old_asid = self._last_asid.get(event.vmcb.ident) if vmrun else None
        ops, first = operations(event, eff, self._last_asid)
        for op in ops:
            n[f"op.{op}"] += 1
        primary = primary or first
        if vmrun and "vm-entry" in ops:
            if old_asid is not None and "new-asid" in ops:
                self._abandon(old_asid, self._asid_cpu[event.vmcb.ident])
            self._asid_cpu[event.vmcb.ident] = i
        if eff.invalidation.clauses:
            valid = self.validity.valid
            for e in self.tlbs[i].invalidate(eff.invalidation):
                kind = KIND_NAMES[type(e)]
                if valid(e):
                    n[f"removed.valid.{kind}"] += 1
                    n[f"overflush.{primary or 'other'}"] += 1
                else:
                    n[f"removed.stale.{kind}"] += 1
                    n[f"needed.{primary or 'other'}"] += 1
        self.cpus[i] = eff.cpu
        self._ctx[i] = None

    def _abandon(self, asid: int, pcpu: int) -> None:
        """A VMCB moved to a new ASID: the entries of its old ASID on the pCPU it last ran on stay
        cached but unreachable (until a TLB_CONTROL flush or eviction): counted like removals
        (`abandoned.valid.<kind>` / `abandoned.stale.<kind>`, and `overflush.new-asid`)."""
        n = self.n
        valid = self.validity.valid
        for kc in self.tlbs[pcpu].caches.values():
            for keys in kc.groups.values():
                rep: Any = kc.entries[next(iter(keys))]
                if getattr(rep, "asid", None) != asid:
                    continue
                for key in keys:
                    e = kc.entries[key]
                    kind = KIND_NAMES[type(e)]
                    if valid(e):
                        n[f"abandoned.valid.{kind}"] += 1
                        n["overflush.new-asid"] += 1
                    else:
                        n[f"abandoned.stale.{kind}"] += 1

    # -- accesses -------------------------------------------------------------------------------
    def context(self, i: int) -> Context:
        c = self._ctx[i]
        if c is None:
            c = self._ctx[i] = Context(self.cpus[i].walk_context(), self.tlbs[i])
            self.walker.note_kinds(c)
        return c

    def access(self, i: int, gva: int, write: bool) -> AccessOutcome | None:
        """A guest access of linear page `gva` on processor `i`: None when it completes, else the
        fault it takes (not yet delivered: see `fault`)."""
        c = self._ctx[i]
        if c is None:
            c = self.context(i)
        if c.flat:
            return self.access_flat(i, c, gva, write)
        e: Any = c.lookup(gva)
        if e is not None:
            if self.audit and not self.validity.valid(e) and not self.validity.harmless(e, gva):
                self.n["tlb.stale-hits"] += 1
        else:
            e = self.walker.miss(c, gva)
            if isinstance(e, NotPresent | Stage2Fault):
                return self.outcome(i, gva, write, e)
        erights = e.erights
        if erights & E_R and (not write or (e.rights & G_W and erights & E_W)):
            return None
        off = gva & (e.size - 1)
        r = Translated(e.gpa + off, e.frame + off, e.rights, erights, e.glob)
        return self.outcome(i, gva, write, r)

    def access_flat(self, i: int, c: Context, gva: int, write: bool) -> AccessOutcome | None:
        """`access` with EPT/NPT off: the translation is the shadow tables' (linear: no
        stage-2 rights, no guest-physical address)."""
        e: Any = c.lookup(gva)
        if e is not None:
            if self.audit and not self.validity.valid(e):
                self.n["tlb.stale-hits"] += 1
        else:
            e = self.walker.miss_flat(c, gva)
            if isinstance(e, NotPresent):
                return self.outcome(i, gva, write, e)
        if not write or e.rights & G_W:
            return None
        off = gva & (e.size - 1)
        r = Translated(-1, e.frame + off, e.rights, E_ALL, e.glob)
        return self.outcome(i, gva, write, r)

    def outcome(self, i: int, gva: int, write: bool, r: Any) -> AccessOutcome | None:
        """The vendor's classification of a walk result (a translation or a walk fault): None
        for an access that completes, else the fault."""
        o = self.arch.classify(self.cpus[i], gva, "write" if write else "read", r)
        return None if isinstance(o, Access) else o


__all__ = ["CostMachine"]
