"""What one step reads and writes, measured while it runs (partial-order reduction, issue 12).

A step's footprint is a pair of bitmasks over the locations of a world (`Locations`): the memory
of the machine and of the native reference, each processor of both, each KVM field, each vCPU and
pCPU record, each guest thread and the host thread. Nothing is declared by hand:

- reads are recorded by views the step runs on (`TrackingStep`): the machine and the native
  reference record which processor (and whether memory) an access, walk or instruction used, the
  KVM record which field was read, the vCPU and pCPU records which were thawed or peeked at, the
  guest threads which were indexed, the host thread whether it was looked at;
- writes are what differs, by value, between the world before and after the step;
- whether an actor's steps are enabled, and which ones (an access has one step per outcome), is
  read by `enabled` from the world: `enabled_reads` runs it on a tracking view of the world and
  charges each actor's steps with what their section of `enabled` read.

Two steps are independent in a world when neither writes what the other reads or writes; then
they commute (the same world in either order), neither enables or disables the other, and each
produces the same outcome in either order. Locations are coarse where the model is coarse: every
hardware instruction on a processor counts as reading memory, and a store to memory (which refills
every processor's cached entries) reads and writes all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any

from kvmtlb.hw.machine import Machine
from kvmtlb.kvm.context import Step, Thawed, World, _tuple
from kvmtlb.kvm.state import Kvm, Pcpu, Vcpu

_KVM_FIELDS = [f.name for f in fields(Kvm)]


class Locations:
    """Bit positions of one system's world locations."""

    def __init__(self, npcpus: int, nvcpus: int, nnative: int) -> None:
        self.mem = 1 << 0
        self.nmem = 1 << 1
        self.host = 1 << 2
        base = 3
        self.kvm0 = base
        base += len(_KVM_FIELDS)
        self.cpu0 = base
        base += npcpus
        self.ncpu0 = base
        base += nnative
        self.vcpu0 = base
        base += nvcpus
        self.pcpu0 = base
        base += npcpus
        self.guest0 = base
        base += nvcpus
        self.width = base
        self.machine_all = self.mem | (((1 << npcpus) - 1) << self.cpu0)
        self.native_all = self.nmem | (((1 << nnative) - 1) << self.ncpu0)
        self.kvm_bits = {name: 1 << (self.kvm0 + i) for i, name in enumerate(_KVM_FIELDS)}
        self.kvm_all = ((1 << len(_KVM_FIELDS)) - 1) << self.kvm0

    @classmethod
    def of(cls, w: World) -> Locations:
        nnative = len(w.native.cpus) if isinstance(w.native, Machine) else 0
        return cls(len(w.pcpus), len(w.vcpus), nnative)


def independent(r1: int, w1: int, r2: int, w2: int) -> bool:
    """Neither step writes what the other reads or writes."""
    return not (w1 & (r2 | w2)) and not (w2 & r1)


class _Reads:
    """The read set being recorded (shared by the views of one step)."""

    __slots__ = ("bits",)

    def __init__(self) -> None:
        self.bits = 0


class _Seq:
    """A read-only sequence whose element i is location base + i."""

    __slots__ = ("_base", "_r", "_t")

    def __init__(self, t: Any, r: _Reads, base: int) -> None:
        self._t = t
        self._r = r
        self._base = base

    def _all(self) -> int:
        return ((1 << len(self._t)) - 1) << self._base

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, int):
            self._r.bits |= 1 << (self._base + (i if i >= 0 else len(self._t) + i))
        else:
            self._r.bits |= self._all()
        return self._t[i]

    def __len__(self) -> int:
        return len(self._t)

    def __iter__(self) -> Iterator[Any]:
        self._r.bits |= self._all()
        return iter(self._t)

    def __eq__(self, other: object) -> bool:
        self._r.bits |= self._all()
        return bool(self._t == (other._t if isinstance(other, _Seq) else other))

    __hash__ = None  # type: ignore[assignment]


class _MachineView:
    """A machine (or the native reference) whose processors and memory record their readers.
    Every query or instruction on processor i reads it and memory; anything else reads all."""

    __slots__ = ("_all", "_cpu0", "_m", "_mem", "_r")

    def __init__(self, m: Machine, r: _Reads, cpu0: int, mem: int, everything: int) -> None:
        self._m = m
        self._r = r
        self._cpu0 = cpu0
        self._mem = mem
        self._all = everything

    @property
    def cpus(self) -> _Seq:
        return _Seq(self._m.cpus, self._r, self._cpu0)

    @property
    def memory(self) -> Any:
        self._r.bits |= self._mem
        return self._m.memory

    @property
    def config(self) -> Any:
        return self._m.config

    def _on(self, i: int) -> Machine:
        self._r.bits |= self._mem | 1 << (self._cpu0 + i)
        return self._m

    def step(self, i: int, event: Any) -> Any:
        return self._on(i).step(i, event)

    def access(self, i: int, gva: int, access: str) -> Any:
        return self._on(i).access(i, gva, access)

    def outcomes(self, i: int, gva: int, access: str) -> Any:
        return self._on(i).outcomes(i, gva, access)

    def translations(self, i: int, gva: int) -> Any:
        return self._on(i).translations(i, gva)

    def reference(self, i: int, gva: int) -> Any:
        return self._on(i).reference(i, gva)

    def held(self, i: int) -> Any:
        return self._on(i).held(i)

    def write(self, slot: int, value: int) -> Any:
        self._r.bits |= self._all
        return self._m.write(slot, value)

    def __getattr__(self, name: str) -> Any:
        self._r.bits |= self._all
        return getattr(self._m, name)


class _TrackedThawed(Thawed[Any]):
    """Thawed records that also remember which ones were peeked at without thawing."""

    __slots__ = ("peeked",)

    def __init__(self, cls: type[Any], frozen: tuple[tuple[Any, ...], ...]) -> None:
        super().__init__(cls, frozen)
        self.peeked = 0

    def peek(self, i: int) -> Any:
        self.peeked |= 1 << i
        return super().peek(i)

    def touched(self) -> int:
        """Which records were thawed or peeked at (bit i: record i)."""
        bits = self.peeked
        for i, o in enumerate(self._live):
            if o is not None:
                bits |= 1 << i
        return bits


class _GuestList(list[Any]):
    """The guest threads of a step; indexing records the reader."""

    def __init__(self, items: Any, r: _Reads, base: int) -> None:
        super().__init__(items)
        self._r = r
        self._base = base

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, int):
            self._r.bits |= 1 << (self._base + (i if i >= 0 else len(self) + i))
        else:
            self._r.bits |= ((1 << len(self)) - 1) << self._base
        return super().__getitem__(i)

    def __iter__(self) -> Iterator[Any]:
        self._r.bits |= ((1 << len(self)) - 1) << self._base
        return super().__iter__()


def _tracked_kvm_class() -> type[Kvm]:
    class TrackedKvm(Kvm):
        """KVM's record whose field reads and stores are recorded (`_bits`: field name ->
        location); a store counts as a read too, so that an untouched record is frozen as is."""

        __slots__ = ("_bits", "_r")

        def __getattribute__(self, name: str) -> Any:
            bit = object.__getattribute__(self, "_bits").get(name)
            if bit is not None:
                object.__getattribute__(self, "_r").bits |= bit
            return object.__getattribute__(self, name)

        def __setattr__(self, name: str, value: Any) -> None:
            if name[0] != "_":
                bit = object.__getattribute__(self, "_bits").get(name)
                if bit is not None:
                    object.__getattribute__(self, "_r").bits |= bit
            object.__setattr__(self, name, value)

    return TrackedKvm


_TrackedKvm = _tracked_kvm_class()


class TrackingStep(Step):
    """A step whose reads are recorded into `reads` (bits of `Locations`)."""

    _raw_machine: Any
    _raw_native: Any
    _raw_host: Any
    _rd: _Reads
    _loc: Locations
    _kvm_before: tuple[Any, ...]

    @classmethod
    def thaw_tracking(
        cls, config: Any, w: World, loc: Locations, actor: str = "", tracing: bool = False
    ) -> TrackingStep:
        r = _Reads()
        kvm = _TrackedKvm.__new__(_TrackedKvm)
        object.__setattr__(kvm, "_bits", {})
        object.__setattr__(kvm, "_r", r)
        Kvm.__init__(kvm, *w.kvm)
        object.__setattr__(kvm, "_bits", loc.kvm_bits)
        k = cls.__new__(cls)
        k._rd = r
        k._loc = loc
        k._kvm_before = w.kvm
        Step.__init__(
            k,
            config,
            w.machine,
            kvm,
            _TrackedThawed(Vcpu, w.vcpus),
            _TrackedThawed(Pcpu, w.pcpus),
            w.native,
            _GuestList(w.guests, r, loc.guest0),
            w.host,
            actor,
            tracing,
        )
        return k

    # The machine, the native reference and the host thread, seen through recording views.
    @property
    def machine(self) -> Any:
        loc = self._loc
        return _MachineView(self._raw_machine, self._rd, loc.cpu0, loc.mem, loc.machine_all)

    @machine.setter
    def machine(self, m: Any) -> None:
        self._raw_machine = m._m if isinstance(m, _MachineView) else m

    @property
    def native(self) -> Any:
        loc = self._loc
        n = self._raw_native
        if not isinstance(n, Machine):
            self._rd.bits |= loc.native_all
            return n
        return _MachineView(n, self._rd, loc.ncpu0, loc.nmem, loc.native_all)

    @native.setter
    def native(self, n: Any) -> None:
        self._raw_native = n._m if isinstance(n, _MachineView) else n

    @property
    def host(self) -> Any:
        self._rd.bits |= self._loc.host
        return self._raw_host

    @host.setter
    def host(self, h: Any) -> None:
        self._raw_host = h

    def write_slot(self, slot: int, value: int, what: str) -> None:
        self._rd.bits |= self._loc.machine_all | self._loc.native_all
        self._raw_machine = self._raw_machine.write(slot, value)
        if isinstance(self._raw_native, Machine):
            self._raw_native = self._raw_native.write(slot, value)
        self.note(what)

    def freeze(self) -> World:
        reads = self._rd.bits
        if reads & self._loc.kvm_all:
            kvm = _tuple(self.kvm)  # freezing reads every field: not the step's reads
            self._rd.bits = reads
        else:  # KVM's record was not touched
            kvm = self._kvm_before
        return World(
            self._raw_machine,
            kvm,
            self.vcpus.freeze(),
            self.pcpus.freeze(),
            self._raw_native,
            tuple(list.__iter__(self.guests)),
            self._raw_host,
        )

    def footprint(self, before: World, after: World) -> tuple[int, int]:
        """(reads, writes) of this step, which took `before` to `after`."""
        loc = self._loc
        reads = self._rd.bits
        vcpus = self.vcpus
        pcpus = self.pcpus
        assert isinstance(vcpus, _TrackedThawed) and isinstance(pcpus, _TrackedThawed)
        reads |= vcpus.touched() << loc.vcpu0 | pcpus.touched() << loc.pcpu0
        writes = 0
        if after.machine is not before.machine:
            writes |= _machine_diff(before.machine, after.machine, loc.mem, loc.cpu0)
        if after.native is not before.native:
            if isinstance(before.native, Machine):
                writes |= _machine_diff(before.native, after.native, loc.nmem, loc.ncpu0)
            elif after.native != before.native:
                writes |= loc.native_all
        if after.kvm != before.kvm:
            writes |= _diff(before.kvm, after.kvm, loc.kvm0)
        if after.vcpus is not before.vcpus:
            writes |= _diff(before.vcpus, after.vcpus, loc.vcpu0)
        if after.pcpus is not before.pcpus:
            writes |= _diff(before.pcpus, after.pcpus, loc.pcpu0)
        writes |= _diff(before.guests, after.guests, loc.guest0)
        if after.host is not before.host and after.host != before.host:
            writes |= loc.host
        return reads | writes, writes


def _diff(a: tuple[Any, ...], b: tuple[Any, ...], base: int) -> int:
    bits = 0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x is not y and x != y:
            bits |= 1 << (base + i)
    return bits


def _machine_diff(a: Machine, b: Machine, mem: int, cpu0: int) -> int:
    bits = 0
    if a.memory is not b.memory and a.memory != b.memory:
        bits |= mem
    return bits | _diff(a.cpus, b.cpus, cpu0)


class TrackingWorld:
    """A world whose parts record their readers (for `enabled`)."""

    __slots__ = ("_host", "_r", "_w", "guests", "kvm", "machine", "native", "pcpus", "vcpus")

    def __init__(self, w: World, loc: Locations) -> None:
        r = self._r = _Reads()
        self._w = w
        self.machine = _MachineView(w.machine, r, loc.cpu0, loc.mem, loc.machine_all)
        self.native = (
            _MachineView(w.native, r, loc.ncpu0, loc.nmem, loc.native_all)
            if isinstance(w.native, Machine)
            else w.native
        )
        self.kvm = _Seq(w.kvm, r, loc.kvm0)
        self.vcpus = _Seq(w.vcpus, r, loc.vcpu0)
        self.pcpus = _Seq(w.pcpus, r, loc.pcpu0)
        self.guests = _Seq(w.guests, r, loc.guest0)
        self._host = loc.host

    @property
    def host(self) -> Any:
        self._r.bits |= self._host
        return self._w.host

    def take(self) -> int:
        """The reads recorded since the last call."""
        bits = self._r.bits
        self._r.bits = 0
        return bits


def sections(
    run: Callable[[Any, Callable[[int], None]], list[Any]], w: World, loc: Locations
) -> tuple[list[Any], list[int]]:
    """Run an enabled-steps function `run(world, mark)` on a tracking view of `w`; `mark(n)` is
    called before each actor's section with the number of steps listed so far. Returns the steps
    and, per step, what its section read."""
    tw = TrackingWorld(w, loc)
    marks: list[tuple[int, int]] = []  # (first step of the section, reads of the previous one)

    def mark(n: int) -> None:
        marks.append((n, tw.take()))

    acts = run(tw, mark)
    marks.append((len(acts), tw.take()))
    reads = [0] * len(acts)
    # section j covers steps marks[j][0] .. marks[j+1][0]; its reads are recorded at mark j+1
    for j in range(len(marks) - 1):
        start, bits = marks[j][0], marks[j + 1][1]
        for i in range(start, marks[j + 1][0]):
            reads[i] = bits
    if marks and marks[0][0] > 0:  # steps listed before the first mark: charge everything
        for i in range(marks[0][0]):
            reads[i] = (1 << loc.width) - 1
    return acts, reads
