"""The seeded random schedule of a cost run: which vCPU runs where, what it touches, what happens.

Time is counted in access slots: while at least one vCPU runs, each slot is one guest access by a
running vCPU drawn at random, to a page of the working set drawn at random (the i-th page with
weight 1 / (i + 1) ** locality: 0 is uniform, 1 Zipf), a write with the workload's write fraction.
Events arrive as a Poisson process over the slots with the workload's total rate, each of a kind
drawn in proportion to its rate:

- `pte_change`: a running vCPU moves a page of the working set to a free guest frame (a guest PTE
  write), then shoots it down (flush_tlb of the page to every other vCPU);
- `mm_flush`, `full_flush`: a running vCPU flushes the whole mm, or everything, on every vCPU;
- `preempt`: a running vCPU is scheduled out (runnable) for an exponentially distributed number
  of slots with mean `preempted_for`; its pCPU takes a waiting vCPU, if one is ready;
- `migrate`: a running vCPU moves to another pCPU, swapping with the vCPU running there, if any;
- `zap`, `remap`: the host zaps (MMU notifier) or migrates the host page of a guest frame the
  working set uses;
- `dirty_log`: the host turns dirty logging on for a guest frame the working set uses (its
  memslot is write-protected and flushed: a range flush with `hv_range_flush`);
- with `huge_pages` a `dirty_log` of a frame whose 2 MiB region (one memslot) logs already is
  nothing (the memslot's flags do not change);
- `dirty_log_off` (`huge_pages`): dirty logging off for one of the 2 MiB regions a `dirty_log`
  switched it on for (KVM collapses its 4 KiB SPTEs into a huge one); nothing if there is none;
- `cr3_switch`: a running vCPU switches to another of the workload's address spaces (a context
  switch: MOV CR3 to that page table);
- `cr0_wp_toggle`: a running vCPU opens and closes a kernel W^X window (grsecurity's
  pax_open_kernel/pax_close_kernel): MOV to CR0 clearing WP, then setting it again;
- `l2_exit`, `l1_flush`, `l1_flush_addr`, `l1_invept`, `l1_invept_all`, `l1_ept_wrprotect` (a
  nested workload,
  `nested = true`): a running vCPU's L2 exits to L1, which resumes it; before resuming, L1
  flushes L2's context, or one page of L2's working set, or (nested EPT) runs INVEPT
  single-context of its EPTP12, or all-context, or (`l1_ept_wrprotect`) write-protects the EPT12
  leaf of an L2 page in use, drawn by popularity, and runs INVEPT single-context
  (cost/nested.py).

In a nested workload address space 0 is L1's page table and 1 L2's: every vCPU runs L2 (it
leaves it only for the nested events above), so it accesses, and changes PTEs of, address
space 1.

With several address spaces (`address_spaces`), each has its own working set of the same size at
GVA_BASE + a * AS_STRIDE, mapped to frames of its own; a vCPU accesses the working set of the
address space it is in (all start in address space 0), and a `pte_change` changes a page of the
address space the vCPU is in.

A vCPU keeps to the pCPU it last ran on (its affinity): an idle pCPU takes the ready waiting vCPU
that last ran there and has waited longest; only `migrate` moves a vCPU. At the start, vCPU v is
placed on pCPU v mod pcpus and the first vCPU of each pCPU runs there.

The schedule depends on the seed and the workload only, never on the policy: every policy is
costed on the same sequence of events (a paired comparison).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from typing import NamedTuple

from kvmtlb.cost.workload import (
    AS_STRIDE,
    GPA_BASE,
    GVA_BASE,
    NESTED_RATES,
    RATE_KEYS,
    RunConfig,
    Workload,
)
from kvmtlb.guest.ops import FLUSH_ALL, FLUSH_MM

PAGE = 0x1000
HUGE = 1 << 21  # a 2 MiB region (huge_pages: one memslot, one host huge page)
NESTED_KINDS = NESTED_RATES  # the events that are a nested exit to L1
BATCH = 4096  # accesses per Accesses event at most


class Accesses(NamedTuple):
    items: list[tuple[int, int, bool]]  # (vCPU, GVA, write)


class PteChange(NamedTuple):
    vcpu: int
    gva: int
    gpa: int  # the guest frame the page moves to


class Shootdown(NamedTuple):
    vcpu: int
    scope: int  # FLUSH_MM | FLUSH_ALL


class Preempt(NamedTuple):
    vcpu: int


class Load(NamedTuple):
    vcpu: int
    pcpu: int
    migrated: bool  # it last ran on another pCPU


class Cr3Switch(NamedTuple):
    vcpu: int
    space: int  # the address space it switches to


class Cr0WpToggle(NamedTuple):
    vcpu: int


class NestedExit(NamedTuple):
    vcpu: int
    kind: str  # "l2_exit", "l1_flush", "l1_flush_addr", "l1_invept", ... (NESTED_KINDS)
    gva: int  # l1_flush_addr: the page of L2's working set L1 invalidates
    gpa: int = 0  # l1_ept_wrprotect: the L2 GPA (of a page in use) whose EPT12 leaf L1 protects


class Zap(NamedTuple):
    gpa: int


class Remap(NamedTuple):
    gpa: int


class DirtyLog(NamedTuple):
    gpa: int


class DirtyLogOff(NamedTuple):
    gpa: int  # a frame of the 2 MiB region whose memslot stops logging dirty pages


Event = (
    Accesses
    | PteChange
    | Shootdown
    | Preempt
    | Load
    | Zap
    | Remap
    | DirtyLog
    | DirtyLogOff
    | Cr3Switch
    | Cr0WpToggle
    | NestedExit
)


def gvas(w: Workload, space: int = 0) -> list[int]:
    """The working set of address space `space`. With guest 2 MiB pages (`guest_huge_pages`)
    page i is GVA_BASE + the GPA of its frame, so that one PDE maps each 2 MiB of it."""
    base = GVA_BASE + space * AS_STRIDE + (GPA_BASE if w.guest_huge_pages else 0)
    return [base + i * PAGE for i in range(w.working_set)]


def all_gvas(w: Workload) -> list[int]:
    """The working sets of every address space, in order."""
    return [g for a in range(w.address_spaces) for g in gvas(w, a)]


def space_of(gva: int) -> int:
    """The address space whose working set holds `gva`."""
    return (gva - GVA_BASE) // AS_STRIDE


def gpas(w: Workload) -> list[int]:
    return [GPA_BASE + j * PAGE for j in range(w.guest_frames)]


def placement(c: RunConfig) -> tuple[int, ...]:
    return tuple(v % c.pcpus for v in range(c.vcpus))


class Schedule:
    """Generates the events of one run (an iterator: `events()`)."""

    def __init__(self, w: Workload, c: RunConfig) -> None:
        self.w = w
        self.c = c
        self.rng = random.Random(w.seed)
        self.pages = gvas(w)
        # Page popularity: the i-th page of the working set has weight 1 / (i + 1) ** locality.
        weights = [1.0 / (i + 1) ** w.locality for i in range(len(self.pages))]
        self.cum_weights = list(itertools.accumulate(weights))
        frames = gpas(w)
        used = w.working_set * w.address_spaces
        self.mapping = frames[:used]  # page i of address space a (index a * working_set + i)
        self.free = frames[used:]
        # the address space each vCPU is in (nested: L2's, 1)
        self.space = [1 if c.nested else 0] * c.vcpus
        place = placement(c)
        self.last = list(place)  # the pCPU each vCPU last ran on
        self.running = [-1] * c.pcpus  # pCPU -> vCPU
        self.waiting: list[tuple[float, int, int]] = []  # (wake slot, order, vCPU), a heap
        self._order = 0
        for v in range(c.vcpus):
            if self.running[place[v]] < 0:
                self.running[place[v]] = v
            else:
                self._wait(v, 0.0)
        rates = w.rates.as_dict()
        self.kinds = [k for k in RATE_KEYS if rates[k] > 0]
        self.weights = [rates[k] for k in self.kinds]
        self.rate = sum(self.weights) / 1000.0  # events per slot
        self.t = 0.0
        self.done = 0
        # huge pages: the 2 MiB regions whose memslot logs dirty pages (base -> the frame that
        # dirty_log named)
        self.logged: dict[int, int] = {}

    def _wait(self, v: int, wake: float) -> None:
        heapq.heappush(self.waiting, (wake, self._order, v))
        self._order += 1

    def _gap(self) -> float:
        if self.rate <= 0:
            return math.inf
        return float(max(1, math.ceil(self.rng.expovariate(self.rate))))

    def initial(self) -> list[int]:
        """pCPU -> the vCPU loaded there at boot (-1: none)."""
        return list(self.running)

    # -- the run ------------------------------------------------------------------------------
    def events(self) -> Iterator[Event]:
        w = self.w
        rng = self.rng
        next_event = self.t + self._gap()
        while self.done < w.accesses:
            yield from self._dispatch()
            running = [v for v in self.running if v >= 0]
            wake = min((x[0] for x in self.waiting if x[0] > self.t), default=math.inf)
            horizon = min(next_event, wake)
            if running:
                n = min(horizon - self.t, w.accesses - self.done, BATCH)
                n = int(n) if n != math.inf else min(w.accesses - self.done, BATCH)
                if n > 0:
                    yield Accesses(self._accesses(running, n))
                    self.t += n
                    self.done += n
            else:
                self.t = horizon
            if self.t >= next_event and self.done < w.accesses:
                kind = rng.choices(self.kinds, self.weights)[0]
                yield from self._event(kind)
                next_event = self.t + self._gap()

    def _accesses(self, running: list[int], n: int) -> list[tuple[int, int, bool]]:
        rng = self.rng
        wf = self.w.write_fraction
        vs = rng.choices(running, k=n)
        pages = rng.choices(self.pages, cum_weights=self.cum_weights, k=n)
        rand = rng.random
        if self.w.address_spaces > 1:
            off = [a * AS_STRIDE for a in self.space]
            return [(v, p + off[v], rand() < wf) for v, p in zip(vs, pages, strict=True)]
        return [(v, p, rand() < wf) for v, p in zip(vs, pages, strict=True)]

    def _dispatch(self) -> Iterator[Event]:
        """Idle pCPUs take the ready waiting vCPUs that last ran there."""
        for p, occupant in enumerate(self.running):
            if occupant >= 0:
                continue
            ready = [x for x in self.waiting if x[0] <= self.t and self.last[x[2]] == p]
            if not ready:
                continue
            pick = min(ready)
            self.waiting.remove(pick)
            heapq.heapify(self.waiting)
            v = pick[2]
            yield from self._load(v, p)

    def _load(self, v: int, p: int) -> Iterator[Event]:
        migrated = self.last[v] != p
        self.running[p] = v
        self.last[v] = p
        yield Load(v, p, migrated)

    def _event(self, kind: str) -> Iterator[Event]:
        rng = self.rng
        running = [v for v in self.running if v >= 0]
        if kind in ("zap", "remap", "dirty_log"):
            gpa = self.mapping[rng.randrange(len(self.mapping))]
            if kind == "dirty_log" and self.c.huge_pages:
                # a region's memslot that logs already has nothing to switch on
                if gpa & ~(HUGE - 1) in self.logged:
                    return
                self.logged[gpa & ~(HUGE - 1)] = gpa
            yield Zap(gpa) if kind == "zap" else Remap(gpa) if kind == "remap" else DirtyLog(gpa)
            return
        if kind == "dirty_log_off":
            if self.logged:
                base = sorted(self.logged)[rng.randrange(len(self.logged))]
                yield DirtyLogOff(self.logged.pop(base))
            return
        if not running:
            return
        v = rng.choice(running)
        if kind == "pte_change":
            i = rng.randrange(len(self.pages))
            j = rng.randrange(len(self.free))
            self.free[j], self.free[-1] = self.free[-1], self.free[j]
            gpa = self.free.pop()
            a = self.space[v]
            at = a * self.w.working_set + i
            self.free.append(self.mapping[at])
            self.mapping[at] = gpa
            yield PteChange(v, self.pages[i] + a * AS_STRIDE, gpa)
        elif kind == "cr3_switch":
            others = [a for a in range(self.w.address_spaces) if a != self.space[v]]
            a = others[rng.randrange(len(others))]
            self.space[v] = a
            yield Cr3Switch(v, a)
        elif kind == "cr0_wp_toggle":
            yield Cr0WpToggle(v)
        elif kind == "l1_ept_wrprotect":  # a page of L2's drawn by its popularity
            i = rng.choices(range(len(self.pages)), cum_weights=self.cum_weights)[0]
            yield NestedExit(v, kind, 0, self.mapping[self.space[v] * self.w.working_set + i])
        elif kind in NESTED_KINDS:
            gva = self.pages[rng.randrange(len(self.pages))] + self.space[v] * AS_STRIDE
            yield NestedExit(v, kind, gva if kind == "l1_flush_addr" else 0)
        elif kind == "mm_flush":
            yield Shootdown(v, FLUSH_MM)
        elif kind == "full_flush":
            yield Shootdown(v, FLUSH_ALL)
        elif kind == "preempt":
            p = self.running.index(v)
            self.running[p] = -1
            self._wait(v, self.t + max(1.0, math.ceil(rng.expovariate(1.0 / self.w.preempted_for))))
            yield Preempt(v)
            yield from self._dispatch()
        elif kind == "migrate":
            p = self.running.index(v)
            q = rng.choice([x for x in range(len(self.running)) if x != p])
            u = self.running[q]
            yield Preempt(v)
            self.running[p] = -1
            if u >= 0:
                yield Preempt(u)
                self.running[q] = -1
            yield from self._load(v, q)
            if u >= 0:
                yield from self._load(u, p)
            else:
                yield from self._dispatch()


__all__ = [
    "Accesses",
    "Cr0WpToggle",
    "Cr3Switch",
    "DirtyLog",
    "DirtyLogOff",
    "Event",
    "Load",
    "NestedExit",
    "Preempt",
    "PteChange",
    "Remap",
    "Schedule",
    "Shootdown",
    "Zap",
    "all_gvas",
    "gpas",
    "gvas",
    "placement",
    "space_of",
]
