"""A level of the breadth-first search: its worlds, in order, packed when there are many.

A world is a tree of tuples, and one that differs from its siblings in a single vCPU record
still holds its own copy of everything above that record: a frontier of N = 3 of issue 12's
PV-flush protocol costs 1 to 1.5 KB per world as live objects, against the 20 to 30 bytes per
state of the visited set (kvmtlb.check.explorer.FingerprintTable). The current and the next
level are alive together, so the frontier is most of a big search's memory.

A Frontier keeps its first `threshold` items as they are (a small search pays nothing). Past
that it packs them in batches of BATCH items, pickled together, so the parts siblings share
(machines, pCPU records, the native reference) are written once per batch, and compressed with
zlib at level 1: 20 to 25 bytes per world on that protocol, for about 6 us per world to pack and
3 us to unpack, against the 40 to 50 us the search spends on a state. The run's constant
objects a world points at (the machine's and the native reference's configurations, with their
memo tables and closures) are not copied into the batch: they are written as their position in
this frontier's list of constants and found there again by the unpickler. With `directory`,
packed batches go to an unnamed temporary file there instead of memory ("a disk-backed store
past RAM", issue 12), read back in order.

Batches are only ever read by the process that wrote them; they are never files a user gives.
"""

from __future__ import annotations

import io
import pickle
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, Any

BATCH = 4096
CACHED = 4  # unpacked batches `get` keeps
THRESHOLD = 1 << 15  # items kept unpacked; past it, batches are packed (the default suite's
# levels stay below it: it pays nothing)


def _constant(i: int) -> Any:  # pragma: no cover - only named in pickles, never called
    raise AssertionError("a frontier batch is unpickled by its own frontier only")


class _Unpickler(pickle.Unpickler):
    """Reads one batch, resolving `_constant` to the frontier's own table of constants."""

    def __init__(self, data: bytes, constants: list[Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._constants = constants

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__ and name == _constant.__name__:
            return self._constants.__getitem__
        return super().find_class(module, name)


class Frontier:
    """Items (worlds, or tuples holding worlds) appended in order and iterated in order, once.
    `constants` are the objects to write by reference (see the module's docstring); `threshold`
    defaults to THRESHOLD as it is when the frontier is made."""

    def __init__(
        self,
        constants: list[Any],
        *,
        threshold: int | None = None,
        directory: str | None = None,
        batch: int = BATCH,
    ) -> None:
        self.constants = constants
        self.threshold = THRESHOLD if threshold is None else threshold
        self.directory = directory
        self.batch = batch
        self.head: list[Any] = []  # the first `threshold` items, unpacked
        self.tail: list[Any] = []  # the items after the last packed batch
        self.packed: deque[bytes] = deque()  # in memory
        self.file: IO[bytes] | None = None  # or in this file, at these (offset, length)
        self.extents: list[tuple[int, int]] = []
        self.count = 0
        self.packed_bytes = 0
        self._cache: dict[int, list[Any]] = {}  # get's unpacked batches, oldest first
        self._table = by_reference(constants, _constant)

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def append(self, item: Any) -> None:
        self.count += 1
        if len(self.head) < self.threshold:
            self.head.append(item)
            return
        self.tail.append(item)
        if len(self.tail) >= self.batch:
            self._pack()

    def _pack(self) -> None:
        buf = io.BytesIO()
        p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
        p.dispatch_table = self._table
        p.dump(self.tail)
        data = zlib.compress(buf.getbuffer(), 1)
        self.tail = []
        self.packed_bytes += len(data)
        if self.directory is None:
            self.packed.append(data)
            return
        if self.file is None:
            # closed by close(), once read back (or with the frontier, if the search ends first)
            self.file = tempfile.TemporaryFile(dir=self.directory, prefix="kvmtlb-frontier-")  # noqa: SIM115
        self.extents.append((self.file.tell(), len(data)))
        self.file.write(data)

    def _read(self, offset: int, length: int) -> bytes:
        """A packed batch from the file."""
        assert self.file is not None
        self.file.seek(offset)
        return self.file.read(length)

    def _unpack(self, data: bytes) -> list[Any]:
        items: list[Any] = _Unpickler(zlib.decompress(data), self.constants).load()
        return items

    def __iter__(self) -> Iterator[Any]:
        """Each item, in the order appended; packed batches are dropped as they are read."""
        yield from self.head
        self.head = []
        while self.packed:
            batch = self._unpack(self.packed.popleft())
            yield from batch
        if self.file is not None:
            self.file.flush()
            for offset, length in self.extents:
                yield from self._unpack(self._read(offset, length))
            self.close()
        yield from self.tail
        self.tail = []

    def add(self, item: Any) -> int:
        """Append `item`; returns its position, for `get`."""
        self.append(item)
        return self.count - 1

    def get(self, position: int) -> Any:
        """The item at `position`, without consuming anything (for a frontier that is not
        iterated): packed batches are unpacked again when asked for, the last CACHED of them
        kept unpacked; asking in about the order of appending unpacks each batch about once."""
        if position < len(self.head):
            return self.head[position]
        b, j = divmod(position - len(self.head), self.batch)
        stored = len(self.packed) + len(self.extents)
        if b >= stored:
            return self.tail[j]
        items = self._cache.get(b)
        if items is None:
            if len(self._cache) >= CACHED:
                del self._cache[next(iter(self._cache))]
            if b < len(self.packed):
                data = self.packed[b]
            else:
                assert self.file is not None
                offset, length = self.extents[b]
                data = self._read(offset, length)
                self.file.seek(0, io.SEEK_END)  # where _pack appends
            items = self._cache[b] = self._unpack(data)
        return items[j]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            self.extents = []


def by_reference(
    constants: list[Any], load: Callable[[int], Any]
) -> dict[type, Callable[[Any], tuple[Any, tuple[int]]]]:
    """A pickler's dispatch table writing each of `constants` as the call `load(i)`, i its
    position in the list; another object of their types is refused (PicklingError)."""
    index = {id(c): i for i, c in enumerate(constants)}

    def reduce(obj: Any) -> tuple[Any, tuple[int]]:
        i = index.get(id(obj))
        if i is None:
            raise pickle.PicklingError(f"a {type(obj).__name__} that is not this run's")
        return load, (i,)

    return {type(c): reduce for c in constants}


def constants_of(initial: Any) -> list[Any]:
    """The constants of a run: the configuration objects of its initial world's machine and
    native reference (the same objects every world of the run points at)."""
    return [initial.machine.config, initial.native.config]
