"""Canonical state keys and fingerprints.

Two worlds that differ only in what cannot be observed are one state:

- cached entries derived only from paging-structure entries that never change are dropped from
  every MAY-set (Universe.static_mask: when their tags are current the fill rule holds them, and a
  walk through them equals the walk through memory);
- the bookkeeping that exists only for traces (the step log) is not part of the world.

- SVM ASID generations are shifted so that the lowest pCPU generation is 1, and a vCPU's
  generation below every pCPU's becomes 0. KVM only compares a vCPU's generation for equality with
  a pCPU's, pCPU generations only grow by one, and a vCPU's is only set to a pCPU's, reset to 0 or
  decremented: so only the differences matter, and a generation below every pCPU's can never match
  again. Without this, two vCPUs time-sharing a pCPU with one ASID would wrap the generation
  forever and the state space would be infinite.

ASIDs themselves are not renumbered: the per-pCPU allocator's next ASID decides future flushes, so
two numberings are rarely equivalent; VPIDs are never freed in the scenarios.

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
from dataclasses import fields
from typing import Any

from kvmtlb.kvm.context import World
from kvmtlb.kvm.state import Pcpu, Vcpu

P1 = (1 << 61) - 33  # primes just below 2^61
P2 = (1 << 61) - 1011

_LABELS: dict[str, int] = {}

# Field positions in the frozen kvm/state.py records.
_VCPU = [f.name for f in fields(Vcpu)]
_PCPU = [f.name for f in fields(Pcpu)]
PCPU_GEN = _PCPU.index("asid_generation")
MEMO_LIMIT = 1 << 19  # remembered machine and vCPU hashes; cleared when full (issue 12: 1 << 17
# cleared it every few thousand states at N = 3 of bench/gen_pvflush.py, 15 % of the time)
assert (_VCPU.index("pc"), _VCPU.index("vmcs"), _VCPU.index("asid_generation")) == (1, 13, 15)
assert _VCPU.index("vmcb") == 16  # the shadow-paging fields follow it


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
        self._machines: dict[Any, int] = {}
        self._vcpus: dict[tuple[Any, ...], int] = {}
        # The last host thread and pCPU records seen, and what they gave: the successors of a
        # world come one after the other and most share them (issue 12's hot path).
        self._last_host: Any = None
        self._last_host_key: tuple[Any, ...] = ()
        self._last_pcpus: Any = None
        self._last_base = 0
        self._last_pcpus_key: tuple[Any, ...] = ()
        self._last_kvm: Any = None
        self._last_kvm_hash = 0

    def _cpu(self, c: tuple[Any, ...], keep: int, exact: bool) -> tuple[Any, ...]:
        """A processor: field 2 (VMCS/VMCB) may be None; the last field is the MAY-set."""
        may = c[-1] & keep
        return (*c[:2], c[2] or (), *c[3:-1], may if exact else (may % P1, may % P2))

    def _vcpu(self, v: tuple[Any, ...], base: int) -> tuple[Any, ...]:
        """A vCPU (kvm/state.py Vcpu): field 1 is the step label, 13 and 16 the VMCS/VMCB, 15
        the ASID generation (shifted by `base`)."""
        gen = v[15] - base if v[15] > base else 0
        return (v[0], label_code(v[1]), *v[2:13], v[13] or (), v[14], gen, v[16] or (), *v[17:])

    def key(self, w: World, exact: bool = False) -> tuple[Any, ...]:
        m = w.machine
        h = w.host
        base = _generation_base(w.pcpus)
        return (
            m.memory.values,
            tuple(self._cpu(c, self.keep, exact) for c in m.cpus),
            tuple(self._cpu(c, self.native_keep, exact) for c in w.native.cpus),
            w.kvm,
            tuple(self._vcpu(v, base) for v in w.vcpus),
            _pcpus(w.pcpus, base),
            w.guests,
            _host(h),
        )

    def fingerprint(self, w: World) -> int:
        """hash(key(w)) in effect, with the parts that most steps leave alone (the machine, the
        native reference, each vCPU record) reduced to their hashes once and remembered: a step
        changes one processor or one vCPU, so re-canonicalizing everything was half the cost."""
        machines = self._machines
        mh = machines.get(w.machine)
        if mh is None:
            m = w.machine
            if len(machines) >= MEMO_LIMIT:
                machines.clear()
            mh = machines[m] = hash(
                (m.memory.values, tuple(self._cpu(c, self.keep, False) for c in m.cpus))
            )
        nh = machines.get(w.native)
        if nh is None:
            n = w.native
            nh = machines[n] = hash(
                (1, tuple(self._cpu(c, self.native_keep, False) for c in n.cpus))
            )
        pcpus = w.pcpus
        if pcpus is self._last_pcpus:
            base = self._last_base
            pkey = self._last_pcpus_key
        else:
            base = _generation_base(pcpus)
            pkey = _pcpus(pcpus, base)
            self._last_pcpus, self._last_base, self._last_pcpus_key = pcpus, base, pkey
        host = w.host
        if host is not self._last_host:
            self._last_host, self._last_host_key = host, _host(host)
        if w.kvm is not self._last_kvm:
            self._last_kvm, self._last_kvm_hash = w.kvm, hash(w.kvm)
        vcpus = self._vcpus
        vh = []
        for v in w.vcpus:
            key = (v, base)
            h = vcpus.get(key)
            if h is None:
                if len(vcpus) >= MEMO_LIMIT:
                    vcpus.clear()
                h = vcpus[key] = hash(self._vcpu(v, base))
            vh.append(h)
        return (
            hash(
                (
                    mh,
                    nh,
                    self._last_kvm_hash,
                    tuple(vh),
                    pkey,
                    w.guests,
                    self._last_host_key,
                )
            )
            & 0xFFFF_FFFF_FFFF_FFFF
        )


def _host(h: tuple[Any, ...]) -> tuple[Any, ...]:
    """The host thread (host/thread.py HostThread) with its labels as codes: fields 1 and 2 are
    the task's label and return stack, 10 and 11 those of the second host thread."""
    return (
        h[0],
        label_code(h[1]),
        tuple(map(label_code, h[2])),
        *h[3:10],
        label_code(h[10]),
        tuple(map(label_code, h[11])),
        *h[12:],
    )


def _generation_base(pcpus: tuple[tuple[Any, ...], ...]) -> int:
    """What every ASID generation is shifted by: the lowest pCPU generation becomes 1."""
    return int(min(p[PCPU_GEN] for p in pcpus)) - 1


def _pcpus(pcpus: tuple[tuple[Any, ...], ...], base: int) -> tuple[tuple[Any, ...], ...]:
    """The pCPU records with their ASID generations shifted by `base` (as is when 0)."""
    if base == 0:
        return pcpus
    return tuple((*p[:PCPU_GEN], p[PCPU_GEN] - base, *p[PCPU_GEN + 1 :]) for p in pcpus)
