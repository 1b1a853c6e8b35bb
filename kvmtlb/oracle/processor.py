"""The oracle's logical processors: state, current tags, events, access check, invalidations.

Written from the manuals' text and the event table of x86-tlb-architecture.md §2.2 (Intel) and
§4 (AMD), without reference to `kvmtlb.hw`. Each event is a tuple (`"invlpg", addr`), ...; its
semantics is one function that returns the new state, an outcome word and what the event MUST
remove, as a predicate over one entry (and what is held beside it). Where the manuals are
ambiguous the reading that retains more is taken (hardware-model.md), each named where it is used.

Scope of native operations (§28.3.3.1 first bullet; APM §15.16.1): INVLPG, INVPCID, MOV to CR3/CR4/
CR0 and #PF act on the linear and combined mappings of the current VPID (combined ones under every
EP4TA), never on guest-physical ones; on AMD on the guest entries of the current ASID only.

The processors run at CPL 0 with CR0.WP = 1, EFER.NXE = 1, RFLAGS.AC = 0 and PKRU = 0 (protection
keys then deny nothing); the VMCS/VMCB intercept no TLB operation (the property tests drive
intercepts through the model's own tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from kvmtlb.oracle.walk import ALL, GU, GW, GX, SD, SR, SW, SX, Entry, Result, View

CR0_WP, CR0_PG = 1 << 16, 1 << 31
CR4_PSE, CR4_PAE, CR4_PGE = 1 << 4, 1 << 5, 1 << 7
CR4_PCIDE, CR4_SMEP, CR4_SMAP = 1 << 17, 1 << 20, 1 << 21
NOFLUSH = 1 << 63
EPTP_AD = 1 << 6
CR3_ADDR = ((1 << 52) - 1) & ~0xFFF


class Regs(NamedTuple):
    cr0: int
    cr3: int
    cr4: int
    cs_l: bool = True


class Proc(NamedTuple):
    """One processor. Intel: `guest` is the VMCS guest-state area (the current registers in
    VMX non-root operation), `host` the registers of VMX root operation. AMD: the VMCB and the
    host state saved by VMRUN. A native processor (`vendor` "native") only uses `host`."""

    vendor: str
    in_guest: bool
    host: Regs
    guest: Regs
    vpid: int = 0
    enable_vpid: bool = True
    enable_ept: bool = True
    eptp: int = 0
    unrestricted: bool = True
    launched: bool = False
    asid: int = 0
    np: bool = True
    ncr3: int = 0
    tlb_control: int = 0
    flush_by_asid: bool = True
    eptp_list: tuple[int, ...] = ()
    enable_pml: bool = False  # the 'enable PML' control (§28.2.5)
    pml: tuple[int, ...] = ()  # the GPAs the page-modification log holds, oldest first
    held: frozenset[Entry] = frozenset()

    @property
    def regs(self) -> Regs:
        return self.guest if self.in_guest else self.host

    # -- current tags (§28.1, §4.10.1, APM §15.16) ---------------------------------------------
    @property
    def cur_pcid(self) -> int:
        r = self.regs
        return r.cr3 & 0xFFF if r.cr4 & CR4_PCIDE else 0

    @property
    def cur_vpid(self) -> int:
        return self.vpid if self.vendor == "intel" and self.in_guest and self.enable_vpid else 0

    @property
    def ept_on(self) -> bool:
        return self.vendor == "intel" and self.in_guest and self.enable_ept

    @property
    def cur_ep4ta(self) -> int:
        return self.eptp & CR3_ADDR if self.ept_on else -1

    @property
    def ad_on(self) -> bool:
        """EPT in use with EPTP bit 6 set: the processor sets EPT A/D flags (§28.2.4)."""
        return self.ept_on and bool(self.eptp & EPTP_AD)

    @property
    def cur_asid(self) -> int:
        return self.asid if self.vendor == "amd" and self.in_guest else 0

    @property
    def npt_on(self) -> bool:
        return self.vendor == "amd" and self.in_guest and self.np

    def view(self) -> View:
        r = self.regs
        pg = bool(r.cr0 & CR0_PG)
        pge = bool(r.cr4 & CR4_PGE)
        pcid = self.cur_pcid
        root = r.cr3 & CR3_ADDR
        if self.vendor == "amd":
            s2 = self.ncr3 if self.npt_on else -1
            return View(
                "asid",
                "nested" if s2 >= 0 else "",
                -1,
                pcid,
                -1,
                self.cur_asid,
                root,
                s2,
                False,
                pg,
                pge,
                False,
            )
        if self.ept_on:
            ep = self.cur_ep4ta
            return View(
                "combined", "gphys", self.cur_vpid, pcid, ep, -1, root, ep, True, pg, pge, False
            )
        native = self.vendor == "native"
        return View("linear", "", self.cur_vpid, pcid, -1, -1, root, -1, True, pg, pge, native)

    def usable(self, e: Entry) -> bool:
        """Which held entries the current tags let a lookup use (§28.3.2; APM §15.16, §15.25)."""
        k = e.kind
        if self.vendor == "amd":
            a = self.cur_asid
            if k == "asid":
                return e.asid == a and (e.pcid == self.cur_pcid or e.glob)
            if k == "asid-psc":
                return e.asid == a and e.pcid == self.cur_pcid
            return k.startswith("nested") and self.npt_on and e.asid == a
        v, p = self.cur_vpid, self.cur_pcid
        if self.ept_on:
            ep = self.cur_ep4ta
            if k == "combined":
                return e.vpid == v and e.ep4ta == ep and (e.pcid == p or e.glob)
            if k == "combined-psc":
                return (e.vpid, e.pcid, e.ep4ta) == (v, p, ep)
            return k.startswith("gphys") and e.ep4ta == ep
        if k == "linear":
            return e.vpid == v and (e.pcid == p or e.glob)
        return k == "linear-psc" and e.vpid == v and e.pcid == p


Removes = Callable[[Entry, frozenset[Entry]], bool]
NOTHING: Removes | None = None


def _native_scope(p: Proc) -> Callable[[Entry], bool]:
    """The entries a native operation may act on: L and C of the current VPID, all EP4TAs
    (§28.3.3.1); on AMD the guest entries of the current ASID (APM §15.16.1)."""
    if p.vendor == "amd":
        a = p.cur_asid
        return lambda e: e.kind in ("asid", "asid-psc") and e.asid == a
    v = p.cur_vpid
    return lambda e: e.kind in ("linear", "linear-psc", "combined", "combined-psc") and e.vpid == v


def _rm(pred: Callable[[Entry], bool]) -> Removes:
    return lambda e, held: pred(e)


def _canonical(addr: int) -> bool:
    top = addr >> 47
    return top in (0, (1 << 17) - 1)


def invlpg(p: Proc, addr: int) -> Removes:
    """INVLPG (§4.10.4.1): translations of the page (every piece of a split page) for the
    current PCID and global ones for any PCID; every PSC entry of the current PCID."""
    scope, pcid = _native_scope(p), p.cur_pcid
    return _rm(
        lambda e: (
            scope(e)
            and (
                e.pcid == pcid
                if e.psc
                else (e.pcid == pcid or e.glob) and e.covers_whole_page(addr)
            )
        )
    )


def page_fault(p: Proc, addr: int) -> Removes:
    """#PF (§4.10.4.1, last paragraphs): what would be used for `addr`: translations of the page
    (every piece), current PCID or global; the PSC entries of the current PCID on its path."""
    scope, pcid = _native_scope(p), p.cur_pcid
    return _rm(
        lambda e: (
            scope(e)
            and (
                e.pcid == pcid and e.covers(addr)
                if e.psc
                else (e.pcid == pcid or e.glob) and e.covers_whole_page(addr)
            )
        )
    )


def _everything(p: Proc) -> Removes:
    scope = _native_scope(p)
    return _rm(scope)


def _transition(enable_vpid: bool) -> Removes | None:
    """VM entry / VM exit with 'enable VPID' = 0: L and C of VPID 0000H (§26.3.2.5, §27.5.5)."""
    if enable_vpid:
        return None
    return _rm(lambda e: e.kind.startswith(("linear", "combined")) and e.vpid == 0)


def _union(*rs: Removes | None) -> Removes | None:
    live = [r for r in rs if r is not None]
    if not live:
        return None
    return lambda e, held: any(r(e, held) for r in live)


Outcome = str  # done, gp, ud, vmexit, vmsucceed, vmfail, entry-failed


def execute(p: Proc, ev: tuple[object, ...]) -> tuple[Proc, Outcome, Removes | None]:
    """Run event `ev` on `p`: the new state, the outcome, what must be removed (or None)."""
    name = ev[0]
    fn = _EVENTS[str(name)]
    return fn(p, *ev[1:])


def _set_regs(p: Proc, r: Regs) -> Proc:
    return p._replace(guest=r) if p.in_guest else p._replace(host=r)


def _ev_invlpg(p: Proc, addr: int) -> tuple[Proc, Outcome, Removes | None]:
    if not _canonical(addr):
        return p, "done", None  # a NOP in 64-bit mode
    return p, "done", invlpg(p, addr)


def _ev_invpcid(p: Proc, t: int, pcid: int, addr: int) -> tuple[Proc, Outcome, Removes | None]:
    r = p.regs
    if t > 3 or pcid >> 12 or (t in (0, 1) and pcid and not r.cr4 & CR4_PCIDE):
        return p, "gp", None
    if t == 0 and not _canonical(addr):
        return p, "gp", None
    scope = _native_scope(p)
    if t == 0:  # individual address: non-global translations and the PSC entries for addr
        return (
            p,
            "done",
            _rm(lambda e: scope(e) and e.pcid == pcid and e.covers(addr) and not e.glob),
        )
    if t == 1:  # single context
        return p, "done", _rm(lambda e: scope(e) and e.pcid == pcid and not e.glob)
    if t == 2:  # all contexts, globals included
        return p, "done", _everything(p)
    return p, "done", _rm(lambda e: scope(e) and not e.glob)  # all contexts but globals


def _ev_mov_cr3(p: Proc, value: int) -> tuple[Proc, Outcome, Removes | None]:
    r = p.regs
    pcide = bool(r.cr4 & CR4_PCIDE)
    if value & NOFLUSH and not pcide:
        return p, "gp", None
    stored = value & ~NOFLUSH
    if stored & ~(CR3_ADDR | 0xFFF) or stored >> 46:
        return p, "gp", None
    new = _set_regs(p, r._replace(cr3=stored))
    if value & NOFLUSH:
        return new, "done", None
    pcid = stored & 0xFFF if pcide else 0
    scope = _native_scope(p)
    # §4.10.4.1: non-global translations and all PSC entries of the new PCID.
    return new, "done", _rm(lambda e: scope(e) and e.pcid == pcid and not e.glob)


def _ev_mov_cr4(p: Proc, value: int) -> tuple[Proc, Outcome, Removes | None]:
    r = p.regs
    old = r.cr4
    changed = old ^ value
    paged = bool(r.cr0 & CR0_PG)
    if changed & CR4_PCIDE and value & CR4_PCIDE and (r.cr3 & 0xFFF or not paged):
        return p, "gp", None
    if changed & CR4_PAE and not value & CR4_PAE and paged:
        return p, "gp", None
    new = _set_regs(p, r._replace(cr4=value))
    scope = _native_scope(p)
    every = changed & CR4_PGE or (changed & CR4_PCIDE and old & CR4_PCIDE)
    if p.vendor == "amd":
        # APM §15.16.1: changing PGE, PAE or PSE flushes the ASID; clearing PCIDE as on Intel.
        every = every or changed & (CR4_PAE | CR4_PSE)
        return new, "done", _everything(p) if every else None
    if every:
        return new, "done", _everything(p)
    if changed & CR4_PAE or (changed & CR4_SMEP and value & CR4_SMEP):
        pcid = p.cur_pcid  # "for the current PCID": globals tagged with it go too (retentive
        # reading of x86-tlb-architecture.md §2.2 keeps globals of other PCIDs)
        return new, "done", _rm(lambda e: scope(e) and e.pcid == pcid)
    return new, "done", None


def _ev_mov_cr0(p: Proc, value: int) -> tuple[Proc, Outcome, Removes | None]:
    r = p.regs
    changed = r.cr0 ^ value
    if changed & CR0_PG and not value & CR0_PG:
        if r.cr4 & CR4_PCIDE or r.cs_l:
            return p, "gp", None
        return _set_regs(p, r._replace(cr0=value)), "done", _everything(p)
    if changed & CR0_PG and not r.cr4 & CR4_PAE:
        return p, "gp", None
    new = _set_regs(p, r._replace(cr0=value))
    if changed & CR0_PG and p.vendor == "amd":  # setting PG flushes the ASID (APM §15.16.1)
        return new, "done", _everything(p)
    return new, "done", None


# -- Intel VMX --------------------------------------------------------------------------------
def _vm_exit(p: Proc) -> tuple[Proc, Outcome, Removes | None]:
    if p.vendor == "amd":  # #VMEXIT flushes nothing (APM §15.16)
        return p._replace(in_guest=False), "vmexit", None
    return p._replace(in_guest=False), "vmexit", _transition(p.enable_vpid)


def _ev_vmentry(p: Proc) -> tuple[Proc, Outcome, Removes | None]:
    if p.in_guest:
        return _vm_exit(p)
    if (p.enable_vpid and p.vpid == 0) or (p.unrestricted and not p.enable_ept):
        return p, "vmfail", None
    if not p.guest.cr0 & CR0_PG and not p.unrestricted:
        return p, "entry-failed", None
    return p._replace(in_guest=True, launched=True), "done", _transition(p.enable_vpid)


def _ev_vmexit(p: Proc) -> tuple[Proc, Outcome, Removes | None]:
    return _vm_exit(p)


def _ev_invept(p: Proc, t: int, eptp: int) -> tuple[Proc, Outcome, Removes | None]:
    """INVEPT (§28.3.3.1): guest-physical and combined mappings, never linear ones."""
    if p.in_guest:
        return _vm_exit(p)
    if t == 1:
        if eptp & 7 not in (0, 6) or (eptp >> 3) & 7 != 3 or eptp & (0x1F << 7):
            return p, "vmfail", None
        ep = eptp & CR3_ADDR
        return (
            p,
            "vmsucceed",
            _rm(lambda e: e.kind.startswith(("gphys", "combined")) and e.ep4ta == ep),
        )
    if t == 2:
        return p, "vmsucceed", _rm(lambda e: e.kind.startswith(("gphys", "combined")))
    return p, "vmfail", None


def _global_path(psc: Entry, held: Iterable[Entry]) -> bool:
    """A held global translation of the same VPID (and EP4TA) lies under PSC entry `psc`."""
    return any(
        not h.psc and h.glob and h.vpid == psc.vpid and h.ep4ta == psc.ep4ta and psc.covers(h.base)
        for h in held
    )


def _ev_invvpid(p: Proc, t: int, vpid: int, addr: int) -> tuple[Proc, Outcome, Removes | None]:
    """INVVPID (§28.3.3.1, INVVPID page): linear and combined mappings, never guest-physical."""
    if p.in_guest:
        return _vm_exit(p)
    if t > 3 or vpid >> 16 or (t != 2 and vpid == 0) or (t == 0 and not _canonical(addr)):
        return p, "vmfail", None

    def lc(e: Entry) -> bool:
        return e.kind.startswith(("linear", "combined"))

    if t == 0:
        return p, "vmsucceed", _rm(lambda e: lc(e) and e.vpid == vpid and e.covers(addr))
    if t == 1:
        return p, "vmsucceed", _rm(lambda e: lc(e) and e.vpid == vpid)
    if t == 2:
        return p, "vmsucceed", _rm(lambda e: lc(e) and e.vpid != 0)

    # Type 3 "is not required to invalidate information used for global translations": the
    # retentive reading keeps the PSC entries on the path of a held global translation.
    def keep_globals(e: Entry, held: frozenset[Entry]) -> bool:
        if not lc(e) or e.vpid != vpid or e.glob:
            return False
        return not (e.psc and _global_path(e, held))

    return p, "vmsucceed", keep_globals


def _ev_vmwrite(p: Proc, field: str, value: object) -> tuple[Proc, Outcome, Removes | None]:
    """VMWRITE of a VMCS field: no invalidation (absent from §28.3.3.1)."""
    if p.in_guest:
        return _vm_exit(p)
    return p._replace(**{field: value}), "vmsucceed", None  # type: ignore[arg-type]


def _ev_vmfunc(p: Proc, index: int) -> tuple[Proc, Outcome, Removes | None]:
    """VMFUNC leaf 0, EPTP switching (§25.5.5.3): the EPTP becomes entry `index` of the list;
    with 'enable VPID' = 0 the combined mappings of VPID 0000H go (every PCID and EP4TA)."""
    if not p.in_guest or not p.eptp_list:
        return p, "ud", None
    if index >= len(p.eptp_list):
        return _vm_exit(p)
    new = p._replace(eptp=p.eptp_list[index])
    if p.enable_vpid:
        return new, "done", None
    return new, "done", _rm(lambda e: e.kind.startswith("combined") and e.vpid == 0)


# -- AMD SVM --------------------------------------------------------------------------------
def _ev_vmrun(p: Proc, asid: int, tlb_control: int) -> tuple[Proc, Outcome, Removes | None]:
    """VMRUN (APM §15.5, §15.16.1, Table 15-9): TLB_CONTROL is the only flush."""
    if p.in_guest:
        return _vm_exit(p)
    if asid == 0 or asid >= 16:
        return p, "entry-failed", None
    new = p._replace(in_guest=True, asid=asid, tlb_control=tlb_control)
    amd = ("asid", "asid-psc", "nested", "nested-psc")
    if tlb_control == 1:
        return new, "done", _rm(lambda e: e.kind in amd)
    if tlb_control == 3 and p.flush_by_asid:
        return new, "done", _rm(lambda e: e.kind in amd and e.asid == asid)
    if tlb_control == 7 and p.flush_by_asid:
        return new, "done", _rm(lambda e: e.kind in amd and e.asid == asid and not e.glob)
    return new, "done", None  # 0, or undefined without FlushByAsid: no flush is guaranteed


def _ev_invlpga(p: Proc, addr: int, asid: int) -> tuple[Proc, Outcome, Removes | None]:
    """INVLPGA (APM §15.16.2): the mapping of one virtual page in ASID `asid`. Global entries
    are kept (the retentive reading of an unconfirmed point)."""
    if p.in_guest:
        return _vm_exit(p)  # intercepted
    if not _canonical(addr):
        return p, "done", None
    return (
        p,
        "done",
        _rm(
            lambda e: (
                e.kind in ("asid", "asid-psc") and e.asid == asid and e.covers(addr) and not e.glob
            )
        ),
    )


def _ev_flush_all_asids(p: Proc) -> tuple[Proc, Outcome, Removes | None]:
    """SMI, RSM, MTRR/IORR and translation MSR writes flush every ASID (APM §15.16.1)."""
    return p, "done", _rm(lambda e: e.kind in ("asid", "asid-psc", "nested", "nested-psc"))


_EVENTS: dict[str, Callable[..., tuple[Proc, Outcome, Removes | None]]] = {
    "invlpg": _ev_invlpg,
    "invpcid": _ev_invpcid,
    "mov_cr3": _ev_mov_cr3,
    "mov_cr4": _ev_mov_cr4,
    "mov_cr0": _ev_mov_cr0,
    "vmentry": _ev_vmentry,
    "vmexit": _ev_vmexit,
    "invept": _ev_invept,
    "invvpid": _ev_invvpid,
    "vmwrite": _ev_vmwrite,
    "vmfunc": _ev_vmfunc,
    "vmrun": _ev_vmrun,
    "invlpga": _ev_invlpga,
    "flush_all_asids": _ev_flush_all_asids,
}


# -- accesses ---------------------------------------------------------------------------------
def classify(p: Proc, gva: int, access: str, r: Result) -> tuple[object, ...]:
    """The outcome of `access` through one lookup result (§4.6 at CPL 0; §28.2.3.2; APM
    §15.25.6): ("access", gva, gpa, frame, rights, erights), ("pf", gva, why), ("eptv", gpa, gva or
    -1), ("misconfig", gpa), ("npf", gpa, gva or -1)."""
    amd = p.vendor == "amd"
    if r.what == "notpresent":
        return ("pf", gva, "not present")
    if r.what == "s2fault":
        src = gva if r.final else -1
        if amd:
            return ("npf", r.gpa, src)
        return ("misconfig", r.gpa) if r.misconfig else ("eptv", r.gpa, src)
    cr0, cr4 = p.regs.cr0, p.regs.cr4
    user_page = bool(r.rights & GU)
    if access in ("read", "write") and cr4 & CR4_SMAP and user_page:
        return ("pf", gva, "rights")  # SMAP with RFLAGS.AC = 0 (§4.6.1)
    if access == "write" and not r.rights & GW and cr0 & CR0_WP:
        return ("pf", gva, "rights")
    if access == "exec" and (not r.rights & GX or (cr4 & CR4_SMEP and user_page)):
        return ("pf", gva, "rights")
    need = {"read": SR, "write": SW, "exec": SX}[access]
    if not r.erights & need:
        return ("npf", r.gpa, gva) if amd else ("eptv", r.gpa, gva)
    # only a write cares whether the translation holds the leaf's dirty flag (§28.2.4)
    erights = r.erights if access == "write" else r.erights & ~SD
    return ("access", gva, r.gpa, r.frame, r.rights, erights)


def fault(p: Proc, outcome: tuple[object, ...]) -> tuple[Proc, Removes | None]:
    """What taking a faulting outcome does: a #PF invalidates (§4.10.4.1); an EPT violation
    invalidates (§28.3.3.1) and exits; a misconfiguration or a #NPF only exits."""
    what = outcome[0]
    if what == "pf":
        gva = int(outcome[1])  # type: ignore[call-overload]
        return p, page_fault(p, gva)
    if what == "eptv":
        gpa, gva = int(outcome[1]), int(outcome[2])  # type: ignore[call-overload]
        ep, v, pcid = p.cur_ep4ta, p.cur_vpid, p.cur_pcid

        def used(e: Entry) -> bool:
            if e.kind.startswith("gphys"):
                return e.ep4ta == ep and e.covers(gpa)
            if gva < 0 or not e.kind.startswith("combined"):
                return False
            if (e.vpid, e.ep4ta) != (v, ep) or not e.covers(gva):
                return False
            return e.pcid == pcid or (e.glob and not e.psc)

        new, _, exit_rm = _vm_exit(p)
        return new, _union(_rm(used), exit_rm)
    new, _, exit_rm = _vm_exit(p)
    return new, exit_rm


__all__ = ["ALL", "Proc", "Regs", "classify", "execute", "fault"]
