"""Mutants of a flush policy, derived from what the policy's own code does.

A *site* is a place where the policy invalidates something, named by the chain of policy methods
that led there (the step or host step at the outside, the method that acted at the inside) and
the operation it performed:

- a hardware invalidation issued with `k.hw`: INVEPT, INVVPID, INVLPGA;
- a flush request made on a vCPU: KVM_REQ_TLB_FLUSH, _CURRENT, _GUEST;
- a TLB_CONTROL value left in a VMCB for the next VMRUN (FLUSH_ALL_ASID, FLUSH_ASID), or a new
  ASID forced by dropping the vCPU's ASID generation;
- the kick and the wait of a remote flush (a policy method with `mask` and `wait` parameters:
  kvm_kick_many_cpus).

Sites are found by running the policy over scenarios with every method wrapped (`Recorder`), not
from a list kept by hand, so a user's policy file gets its own sites. Each site yields mutants
along the architecture's order of strength (`WEAKER`): drop the operation, or replace it by each
weaker one (INVEPT all-context -> single-context -> INVVPID single-context -> nothing;
KVM_REQ_TLB_FLUSH -> _CURRENT -> _GUEST -> nothing; FLUSH_ALL_ASID -> FLUSH_ASID -> nothing).

A mutant is a subclass of the policy made with the policy API (`make_mutant`): every method is
wrapped, and the wrapper changes the site's operation when the chain of methods matches. Its
name is a stable id, and `load_policy` rebuilds it from that name in a worker process.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from kvmtlb.hw.outcomes import Done, VmSucceed
from kvmtlb.hw.svm import Invlpga
from kvmtlb.hw.vmcb import (
    TLB_CONTROL_DO_NOTHING,
    TLB_CONTROL_FLUSH_ALL_ASID,
    TLB_CONTROL_FLUSH_ASID,
)
from kvmtlb.hw.vmx import Invept, Invvpid
from kvmtlb.kvm.context import Step
from kvmtlb.kvm.policy import KvmPolicy
from kvmtlb.kvm.requests import (
    KVM_REQ_TLB_FLUSH,
    KVM_REQ_TLB_FLUSH_CURRENT,
    KVM_REQ_TLB_FLUSH_GUEST,
    REQUEST_NAMES,
)

PREFIX = "mutant:"

# How many times, in this process, each mutation actually changed an operation (by mutation id):
# a mutant whose change never takes effect on a run it was given is equivalent to its policy.
FIRED: dict[str, int] = {}
NOTHING = "nothing"

# -- operations and their order of strength --------------------------------------------------------
INVVPID_NAMES = {
    0: "INVVPID address",
    1: "INVVPID single",
    2: "INVVPID all",
    3: "INVVPID single-globals",
}
FLUSH_REQUESTS = (KVM_REQ_TLB_FLUSH, KVM_REQ_TLB_FLUSH_CURRENT, KVM_REQ_TLB_FLUSH_GUEST)
TLB_CONTROL_NAMES = {
    TLB_CONTROL_FLUSH_ALL_ASID: "FLUSH_ALL_ASID",
    TLB_CONTROL_FLUSH_ASID: "FLUSH_ASID",
}
NEW_ASID = "new ASID"
KICK = "kick"
WAIT = "wait"

WEAKER: dict[str, tuple[str, ...]] = {
    "INVEPT all": ("INVEPT single", "INVVPID single", NOTHING),
    "INVEPT single": ("INVVPID single", NOTHING),
    "INVVPID all": ("INVVPID single", "INVVPID single-globals", NOTHING),
    "INVVPID single": ("INVVPID single-globals", NOTHING),
    "INVVPID single-globals": (NOTHING,),
    "INVVPID address": (NOTHING,),
    "INVLPGA": (NOTHING,),
    "KVM_REQ_TLB_FLUSH": ("KVM_REQ_TLB_FLUSH_CURRENT", "KVM_REQ_TLB_FLUSH_GUEST", NOTHING),
    "KVM_REQ_TLB_FLUSH_CURRENT": ("KVM_REQ_TLB_FLUSH_GUEST", NOTHING),
    "KVM_REQ_TLB_FLUSH_GUEST": (NOTHING,),
    "TLB_CONTROL FLUSH_ALL_ASID": ("TLB_CONTROL FLUSH_ASID", NOTHING),
    "TLB_CONTROL FLUSH_ASID": (NOTHING,),
    NEW_ASID: (NOTHING,),
    KICK: (NOTHING,),
    WAIT: (NOTHING,),
}


def hw_op(event: object) -> str | None:
    """The name of a hardware invalidation, or None for any other event."""
    if isinstance(event, Invept):
        return "INVEPT all" if event.type == 2 else "INVEPT single"
    if isinstance(event, Invvpid):
        return INVVPID_NAMES.get(event.type)
    if isinstance(event, Invlpga):
        return "INVLPGA"
    return None


@dataclass(frozen=True, order=True)
class Site:
    """Where a policy invalidates: the chain of policy methods (outermost first) and the op."""

    path: tuple[str, ...]
    op: str

    def describe(self) -> str:
        return f"{' > '.join(self.path)}: {self.op}"


@dataclass(frozen=True, order=True)
class Mutation:
    site: Site
    change: str  # a weaker op from WEAKER[site.op], or NOTHING

    @property
    def id(self) -> str:
        return f"{self.site.describe()} -> {self.change}"


REQUEST_OPS = frozenset(REQUEST_NAMES[r] for r in FLUSH_REQUESTS)


def mutations(site: Site, used: frozenset[str] = frozenset()) -> list[Mutation]:
    """The mutants of a site: each weaker operation, and nothing. A weaker flush request is one
    only if the policy itself makes it somewhere (`used`): a version without
    KVM_REQ_TLB_FLUSH_GUEST never services one, so making it would be a different bug (a vCPU
    that never enters again), not a weaker flush."""
    return [Mutation(site, c) for c in WEAKER.get(site.op, ()) if c not in REQUEST_OPS or c in used]


# -- running a policy with its methods wrapped ----------------------------------------------------
DISPATCHERS = frozenset({"step", "host_step", "kvm_x86_call", "step_name"})


def policy_methods(cls: type[KvmPolicy]) -> list[str]:
    """The methods of a policy class that KVM code lives in (every callable it or a base defines
    below `object`, but the dispatchers, which only look up another method)."""
    names = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, member in vars(klass).items():
            if name.startswith("__") or not inspect.isfunction(member):
                continue
            names.add(name)
    return sorted(names - {"host_step_enabled"})


class Tracker:
    """The chain of policy methods running in this step, and what each changed directly."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        # for each running method that can change vCPU state itself: its depth, and the state
        # since which its changes are not reported yet
        self.snapshots: list[tuple[int, tuple[tuple[int, int, int], ...]]] = []


# What a method's own code must mention to make a flush request, set TLB_CONTROL or drop an ASID
# generation: only such methods are watched (the others' changes are their callees').
_CHANGES_VCPU = re.compile(
    r"kvm_make_request|kvm_make_vcpu_request|\.requests\b|tlb_control|asid_generation"
)


def changes_vcpu_state(fn: Callable[..., Any]) -> bool:
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return True  # unknown: watch it
    return bool(_CHANGES_VCPU.search(src))


V_REQUESTS, V_ASID_GENERATION, V_VMCB = 4, 15, 16  # fields of the frozen Vcpu tuple


def _vcpu_state(k: Step) -> tuple[tuple[int, int, int], ...]:
    """(requests, TLB_CONTROL, ASID generation) of every vCPU, read without thawing any."""
    out = []
    vcpus = k.vcpus
    for i in range(len(vcpus)):
        v = vcpus.peek(i)
        if isinstance(v, tuple):
            req, gen, vmcb = v[V_REQUESTS], v[V_ASID_GENERATION], v[V_VMCB]
        else:
            req, gen, vmcb = v.requests, v.asid_generation, v.vmcb
        out.append((req, vmcb.tlb_control if vmcb is not None else TLB_CONTROL_DO_NOTHING, gen))
    return tuple(out)


def _changes(
    before: tuple[tuple[int, int, int], ...], after: tuple[tuple[int, int, int], ...]
) -> Iterator[tuple[int, str]]:
    """The flush operations a method performed directly: (vCPU, op)."""
    for v, ((r0, t0, g0), (r1, t1, g1)) in enumerate(zip(before, after, strict=True)):
        for req in FLUSH_REQUESTS:
            if r1 & req and not r0 & req:
                yield v, REQUEST_NAMES[req]
        if t1 != t0 and t1 in TLB_CONTROL_NAMES:
            yield v, f"TLB_CONTROL {TLB_CONTROL_NAMES[t1]}"
        if g1 < g0:
            yield v, NEW_ASID


class Instrumented(KvmPolicy):
    """A policy whose methods report to `on_op` (and may change) every invalidation they make.

    Subclasses (made by `instrument`) wrap each method: the outermost policy call of a step
    installs a `k.hw` that sees every hardware event; every call notes the vCPU state on entry
    and, on return, reports the flush requests, TLB_CONTROL values and new ASIDs it made itself
    (its callees report theirs)."""

    MUTATION: ClassVar[Mutation | None] = None

    def on_op(self, k: Step, site: Site, vcpu: int) -> None:
        """Called for each operation at each site (recording)."""

    # the hooks a mutant overrides -----------------------------------------------------------
    def change_hw(self, k: Step, pcpu: int, event: Any, site: Site) -> Any:
        return event

    def change_vcpu(self, k: Step, vcpu: int, site: Site, old: tuple[int, int, int]) -> None:
        """`old`: the vCPU's (requests, TLB_CONTROL, ASID generation) before the operation."""


def _wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    params = list(inspect.signature(fn).parameters)
    is_kick = "mask" in params and "wait" in params
    watched = changes_vcpu_state(fn)

    @functools.wraps(fn)
    def wrapper(self: Instrumented, *args: Any, **kwargs: Any) -> Any:
        k = args[0] if args and isinstance(args[0], Step) else None
        if k is None:
            return fn(self, *args, **kwargs)
        tracker: Tracker | None = getattr(k, "_mutate_tracker", None)
        outermost = tracker is None
        if tracker is None:
            tracker = Tracker()
            k._mutate_tracker = tracker  # type: ignore[attr-defined]
            _install_hw(self, k, tracker)
        if name in DISPATCHERS:
            try:
                return fn(self, *args, **kwargs)
            finally:
                if outermost:
                    _uninstall(k)
        if not watched:
            tracker.stack.append(name)
            try:
                if is_kick:
                    return _kick(self, k, tracker, fn, args, kwargs)
                return fn(self, *args, **kwargs)
            finally:
                tracker.stack.pop()
                if outermost:
                    _uninstall(k)
        if tracker.snapshots:
            _settle(self, k, tracker)  # what a watched caller did so far is the caller's
        tracker.stack.append(name)
        tracker.snapshots.append((len(tracker.stack), _vcpu_state(k)))
        try:
            if is_kick:
                return _kick(self, k, tracker, fn, args, kwargs)
            return fn(self, *args, **kwargs)
        finally:
            _settle(self, k, tracker)
            tracker.stack.pop()
            tracker.snapshots.pop()
            if tracker.snapshots:  # this method reported its own changes
                depth, _ = tracker.snapshots[-1]
                tracker.snapshots[-1] = (depth, _vcpu_state(k))
            if outermost:
                _uninstall(k)

    return wrapper


def _settle(pol: Instrumented, k: Step, tracker: Tracker) -> None:
    """Report (and let a mutant change) the flush operations the innermost watched method made
    since its snapshot, then take a new snapshot."""
    depth, before = tracker.snapshots[-1]
    path = tuple(tracker.stack[:depth])
    for v, op in _changes(before, _vcpu_state(k)):
        site = Site(path, op)
        pol.on_op(k, site, v)
        pol.change_vcpu(k, v, site, before[v])
    tracker.snapshots[-1] = (depth, _vcpu_state(k))


def _kick(
    pol: Instrumented,
    k: Step,
    tracker: Tracker,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """A method that kicks `mask` and may `wait`: both are sites."""
    bound = inspect.signature(fn).bind(pol, *args, **kwargs)
    path = tuple(tracker.stack)
    if bound.arguments["mask"]:
        pol.on_op(k, Site(path, KICK), -1)
        if _matches(pol, Site(path, KICK)):
            bound.arguments["mask"] = 0
            _fired(pol)
            k.note("(mutant) no kick", Site(path, KICK).describe())
    if bound.arguments["wait"]:
        pol.on_op(k, Site(path, WAIT), -1)
        if _matches(pol, Site(path, WAIT)):
            bound.arguments["wait"] = False
            _fired(pol)
            k.note("(mutant) no wait", Site(path, WAIT).describe())
    return fn(*bound.args, **bound.kwargs)


def _fired(pol: Instrumented) -> None:
    if pol.MUTATION is not None:
        FIRED[pol.MUTATION.id] = FIRED.get(pol.MUTATION.id, 0) + 1


def _matches(pol: Instrumented, site: Site) -> bool:
    m = pol.MUTATION
    return m is not None and m.site == site


def _install_hw(pol: Instrumented, k: Step, tracker: Tracker) -> None:
    original = k.hw

    def hw(pcpu: int, event: Any, why: str = "") -> Any:
        op = hw_op(event)
        if op is None or not tracker.stack:
            return original(pcpu, event, why)
        site = Site(tuple(tracker.stack), op)
        pol.on_op(k, site, -1)
        changed = pol.change_hw(k, pcpu, event, site)
        if changed is None:
            k.note(f"(mutant) {event.describe()} dropped", why)
            return Done() if isinstance(event, Invlpga) else VmSucceed()
        return original(pcpu, changed, why)

    k.hw = hw  # type: ignore[method-assign]


def _uninstall(k: Step) -> None:
    vars(k).pop("hw", None)
    vars(k).pop("_mutate_tracker", None)


def instrument(base: type[KvmPolicy], name: str, extra: dict[str, Any] | None = None) -> type:
    """A subclass of `base` with every policy method wrapped (and Instrumented's hooks)."""
    ns: dict[str, Any] = {"name": name, "__module__": __name__}
    for attr in policy_methods(base):
        ns[attr] = _wrap(attr, getattr(base, attr))
    ns.update(extra or {})
    bases = (base,) if issubclass(base, Instrumented) else (Instrumented, base)
    # Instrumented must come first so that its hooks are found; KvmPolicy's methods are wrapped
    # in the namespace, so the order does not hide any.
    return type(f"Instrumented_{base.__name__}", bases, ns)


# -- recording the sites ---------------------------------------------------------------------------
class Recording:
    """Sites seen while a recorder ran: site -> number of times."""

    def __init__(self) -> None:
        self.sites: dict[Site, int] = {}


def recorder(base: type[KvmPolicy], into: Recording) -> type[KvmPolicy]:
    def on_op(self: Instrumented, k: Step, site: Site, vcpu: int) -> None:
        into.sites[site] = into.sites.get(site, 0) + 1

    cls: type[KvmPolicy] = instrument(base, base.name, {"on_op": on_op})
    return cls


# -- mutants ---------------------------------------------------------------------------------------
def _weaker_event(k: Step, pcpu: int, event: Any, change: str) -> Any:
    """The instruction `change` names, with the operands the original had or the CPU's current
    context (the current VMCS's EPTP and VPID)."""
    if change == NOTHING:
        return None
    vmcs = getattr(k.machine.cpus[pcpu], "vmcs", None)
    vpid = getattr(event, "vpid", None)
    if vpid is None:
        vpid = vmcs.vpid if vmcs is not None else 0
    if change == "INVEPT single":
        eptp = vmcs.eptp if vmcs is not None else 0
        return Invept(1, eptp)
    if change == "INVVPID single":
        return Invvpid(1, vpid)
    if change == "INVVPID single-globals":
        return Invvpid(3, vpid)
    raise ValueError(f"no instruction for {change!r}")


def make_mutant(base: type[KvmPolicy], m: Mutation) -> type[KvmPolicy]:
    """`base` with mutation `m`: a subclass that wraps every method (the policy API)."""

    def change_hw(self: Instrumented, k: Step, pcpu: int, event: Any, site: Site) -> Any:
        if site != m.site:
            return event
        weaker = _weaker_event(k, pcpu, event, m.change)
        if weaker != event:
            FIRED[m.id] = FIRED.get(m.id, 0) + 1
        return weaker

    def change_vcpu(
        self: Instrumented, k: Step, v: int, site: Site, old: tuple[int, int, int]
    ) -> None:
        if site != m.site:
            return
        vcpu = k.vcpus[v]
        before = (vcpu.requests, vcpu.vmcb, vcpu.asid_generation)
        op = site.op
        if op in (REQUEST_NAMES[r] for r in FLUSH_REQUESTS):
            req = next(r for r in FLUSH_REQUESTS if REQUEST_NAMES[r] == op)
            vcpu.requests &= ~req
            if m.change != NOTHING:
                vcpu.requests |= next(r for r in FLUSH_REQUESTS if REQUEST_NAMES[r] == m.change)
        elif op.startswith("TLB_CONTROL") and vcpu.vmcb is not None:
            weaker = old[1] if m.change == NOTHING else TLB_CONTROL_FLUSH_ASID
            vcpu.vmcb = vcpu.vmcb._replace(tlb_control=weaker)
        elif op == NEW_ASID:
            vcpu.asid_generation = old[2]  # the generation stays: pre_svm_run keeps the ASID
        if (vcpu.requests, vcpu.vmcb, vcpu.asid_generation) != before:
            FIRED[m.id] = FIRED.get(m.id, 0) + 1
        k.note(f"(mutant) {op} -> {m.change}", site.describe())

    name = PREFIX + base.name + "|" + m.id
    cls: type[KvmPolicy] = instrument(
        base,
        name,
        {
            "MUTATION": m,
            "change_hw": change_hw,
            "change_vcpu": change_vcpu,
            "kind": "mutant",
            "based_on": base.name,
            "summary": m.id,
        },
    )
    return cls


def parse_id(spec: str) -> tuple[str, Mutation]:
    """`mutant:BASE|a > b > c: OP -> CHANGE` back into (BASE, Mutation)."""
    if not spec.startswith(PREFIX) or "|" not in spec:
        raise ValueError(f"{spec!r} is not a mutant id")
    base, rest = spec[len(PREFIX) :].split("|", 1)
    where, change = rest.rsplit(" -> ", 1)
    path, op = where.rsplit(": ", 1)
    site = Site(tuple(path.split(" > ")), op)
    if op not in WEAKER or change not in WEAKER[op]:
        raise ValueError(f"{spec!r}: no mutation {op!r} -> {change!r}")
    return base, Mutation(site, change)


__all__ = [
    "NOTHING",
    "PREFIX",
    "WEAKER",
    "Mutation",
    "Recording",
    "Site",
    "hw_op",
    "make_mutant",
    "mutations",
    "parse_id",
    "policy_methods",
    "recorder",
]
