"""Canonical state keys and fingerprints.

Two worlds that differ only in what cannot be observed are one state:

- cached entries derived only from paging-structure entries that never change are dropped from
  every MAY-set (Universe.static_mask: when their tags are current the fill rule holds them, and a
  walk through them equals the walk through memory);
- the bookkeeping that exists only for traces (the step log) is not part of the world.

ASIDs are not renumbered: the per-pCPU allocator's next ASID and generation decide future flushes,
so two numberings are rarely equivalent; VPIDs are never freed in the scenarios.

The fingerprint is a 64-bit hash of a tuple of ints only, so it is the same in every process
(Python salts str and bytes hashes, and None hashes by address): step labels are mapped through
CRC-32, None becomes (), and each MAY-set is reduced to its residues modulo two 61-bit primes.
(Python hashes a big int modulo the Mersenne prime 2^61 - 1, under which two MAY-sets that differ
by one entry moved 61 bits apart would collide; the residue pair collides only for sets that
differ by a multiple of a 122-bit number.) `key` gives the exact canonical tuple instead, for the
explorer's exact mode.
"""

from __future__ import annotations

import zlib
from typing import Any

from kvmtlb.kvm.context import World

P1 = (1 << 61) - 33  # primes just below 2^61
P2 = (1 << 61) - 1011

_LABELS: dict[str, int] = {}


def label_code(label: str) -> int:
    code = _LABELS.get(label)
    if code is None:
        code = _LABELS[label] = zlib.crc32(label.encode())
    return code


class Canonicalizer:
    """Keys and fingerprints of one system's worlds."""

    def __init__(self, keep: int, native_keep: int) -> None:
        self.keep = keep
        self.native_keep = native_keep

    def _cpu(self, c: tuple[Any, ...], keep: int, exact: bool) -> tuple[Any, ...]:
        """A processor: field 2 (VMCS/VMCB) may be None; the last field is the MAY-set."""
        may = c[-1] & keep
        return (*c[:2], c[2] or (), *c[3:-1], may if exact else (may % P1, may % P2))

    def _vcpu(self, v: tuple[Any, ...]) -> tuple[Any, ...]:
        """A vCPU (kvm/state.py Vcpu): field 1 is the step label, 13 and 16 the VMCS/VMCB."""
        return (v[0], label_code(v[1]), *v[2:13], v[13] or (), *v[14:16], v[16] or ())

    def key(self, w: World, exact: bool = False) -> tuple[Any, ...]:
        m = w.machine
        h = w.host
        return (
            m.memory.values,
            tuple(self._cpu(c, self.keep, exact) for c in m.cpus),
            tuple(self._cpu(c, self.native_keep, exact) for c in w.native.cpus),
            w.kvm,
            tuple(self._vcpu(v) for v in w.vcpus),
            w.pcpus,
            w.guests,
            (h[0], label_code(h[1]), *h[2:]),
        )

    def fingerprint(self, w: World) -> int:
        return hash(self.key(w)) & 0xFFFF_FFFF_FFFF_FFFF
