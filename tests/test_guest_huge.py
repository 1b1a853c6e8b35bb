"""2 MiB guest pages ("GPA FLAGS 2m" in [guest], `map ... 2m`; issue 15): the scenario format,
the layout (the page is the region's PDE with PS = 1), the splintering rules of the manuals
seen through KVM (a guest 2 MiB page over 4 KiB EPT/NPT pages is cached as 4 KiB pieces, and the
guest's INVLPG of any address of the page must drop every piece, SDM §4.10.2.3), and with shadow
paging KVM's direct shadow page for it (kvm/shadow.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import kvmtlb.hw.x86 as hw_x86
from kvmtlb.check.explorer import explore
from kvmtlb.hw.errors import AddressError
from kvmtlb.hw.paging import PS
from kvmtlb.hw.scope import Scope
from kvmtlb.kvm.policy import registry
from kvmtlb.model.scenario import ScenarioError, load, parse
from kvmtlb.model.system import build

SCENARIOS = Path(__file__).parent.parent / "kvmtlb" / "scenarios"

BASE = """
name = "t"

[config]
vendor = "intel"
vcpus = 1
pcpus = 1
KNOBS

[guest]
GUEST

[host]
"0x400000" = "0x80000 rwx"
"0x401000" = "0x81000 rwx"
"0x600000" = "0x90000 rwx"
"0x601000" = "0x91000 rwx"

[threads]
vcpu0 = \"\"\"
OPS
\"\"\"
"""


def text(
    guest: str = '"0x200000" = "0x400000 w 2m"', ops: str = "read 0x201000", knobs: str = ""
) -> str:
    return BASE.replace("GUEST", guest).replace("OPS", ops).replace("KNOBS", knobs)


# -- the scenario format --------------------------------------------------------------------------
def test_a_guest_page_and_its_stores() -> None:
    s = parse(text(ops="read 0x201000\nmap 0x200000 -> 0x600000 w 2m\nunmap 0x200000 2m"))
    assert s.guest == {0x200000: (0x400000, "w")}
    assert s.guest_huge == frozenset({("default", 0x200000)})
    assert s.huge_gva(0x3FF000) and not s.huge_gva(0x400000)
    ops = s.programs[0]
    assert ops[1].huge and ops[1].describe() == "map 0x200000 -> 0x600000 w 2m"
    assert ops[2].huge and ops[2].describe() == "unmap 0x200000 2m"


@pytest.mark.parametrize(
    ("guest", "ops", "message"),
    [
        ('"0x201000" = "0x400000 w 2m"', "read 0x201000", "not 2 MiB aligned"),
        ('"0x200000" = "0x401000 w 2m"', "read 0x201000", "not 2 MiB aligned"),
        ('"0x200000" = "0x400000 w 2m"', "read 0x202000", "GPA 0x402000"),
        ('"0x200000" = "0x400000 w 2m"', "map 0x201000 -> 0x401000 w", "as a 2 MiB page"),
        ('"0x200000" = "0x400000 w 2m"\n"0x201000" = "0x401000 w"', "read 0x0", "mapped 4 KiB"),
        ('"0x200000" = "0x400000 w 2m"', "unmap 0x201000 2m", "not 2 MiB aligned"),
        ('"0x200000" = "0x400000 w 2m"', "map 0x200000 -> 0x600000 w 2m emulated", "emulated"),
        ('"0x200000" = "0x400000 w 2m"', "link 0x201000 -> default", "no last-level table"),
        ('"0x200000" = "0x400000 w 2m"', "map 0x200000 -> 0x602000 w 2m", "not 2 MiB aligned"),
        ('"0x200000" = "0x400000 w"', "exec 0x201000", "never mapped executable"),
    ],
)
def test_bad_files_are_input_errors(guest: str, ops: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse(text(guest, ops))


def test_tables_are_refused() -> None:
    src = text(knobs="tdp = false") + '\n[tables]\ndefault = "0x400000"\n'
    with pytest.raises(ScenarioError, match=r"\[tables\]"):
        parse(src)


def test_an_executable_page_covers_its_region() -> None:
    parse(text('"0x200000" = "0x400000 wx 2m"', "exec 0x201000"))


def test_the_page_is_a_pde_with_ps() -> None:
    s = parse(text(ops="read 0x201000\nmap 0x200000 -> 0x600000 w 2m"))
    system = build(s, registry()["kvm-6.18"]())
    cfg = system.kvm
    slot = cfg.layout.slot(cfg.roots[0], 0x201000, 2)
    assert cfg.layout.domains[slot][0] & PS
    assert all(v == 0 or v & PS for v in cfg.layout.domains[slot])
    # no last-level table: the region's GVAs have no PTE slot
    with pytest.raises(AddressError, match="no level-1 entry"):
        cfg.layout.slot(cfg.roots[0], 0x201000, 1)


# -- the splintering rules, through KVM -----------------------------------------------------------
def _run(name: str, policy: str = "kvm-6.18") -> str | None:
    path = SCENARIOS / f"{name}.toml"
    return explore(build(load(path, set(registry())), registry()[policy]())).prop


@pytest.fixture
def invlpg_one_piece(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A processor whose INVLPG drops only the 4 KiB piece of the address it names (what the
    manuals forbid: intel.split-pages)."""

    def one_piece(scope: Scope, pcid: int, addr: int) -> hw_x86.Invalidation:
        rules = ("amd.invlpg",) if scope.tag == "asid" else ("intel.invlpg.page",)
        return hw_x86._inv(
            (*rules, scope.rule, "intel.split-pages"),
            scope.translations(pcid=pcid, or_global=True, addr=addr, whole_page=False),
            scope.pscs(pcid=pcid),
        )

    monkeypatch.setattr(hw_x86, "invlpg_invalidation", one_piece)
    yield


@pytest.mark.parametrize("name", ["guest-huge-invlpg-offset", "amd-guest-huge-invlpg-offset"])
def test_invlpg_of_another_offset_must_drop_every_piece(name: str) -> None:
    assert _run(name) is None


@pytest.mark.parametrize("name", ["guest-huge-invlpg-offset", "amd-guest-huge-invlpg-offset"])
def test_an_invlpg_of_one_piece_is_caught(name: str, invlpg_one_piece: None) -> None:
    assert _run(name) == "guest-transparency"


# -- shadow paging: the direct shadow page -------------------------------------------------------
def test_shadow_maps_the_page_through_a_direct_shadow_page() -> None:
    s = parse(text(ops="read 0x201000", knobs="tdp = false"))
    system = build(s, registry()["kvm-6.18"]())
    cfg = system.kvm
    # a 4 KiB SPTE per GVA of the page, mapping the frame at the GVA's offset
    slot = cfg.layout.slot(cfg.shadow_roots[0], 0x201000)
    frames = {
        cfg.frame_of_page(v & ~0xFFF & ((1 << 52) - 1)) for v in cfg.layout.domains[slot] if v
    }
    assert frames == {0x401000}
    # the shadow PDE may be zapped (the guest rewrote its PDE)
    pde = cfg.layout.slot(cfg.shadow_roots[0], 0x201000, 2)
    assert 0 in cfg.layout.domains[pde]


def test_a_pde_store_exits_and_is_emulated() -> None:
    s = parse(
        text(ops="read 0x201000\nmap 0x200000 -> 0x600000 w 2m\nread 0x201000", knobs="tdp = false")
    )
    r = explore(build(s, registry()["kvm-6.18"]()))
    assert r.prop is None


@pytest.mark.parametrize(
    ("name", "policy", "prop"),
    [
        ("shadow-guest-huge-invlpg", "kvm-6.18", None),
        ("shadow-guest-huge-invlpg", "bug-track-write-pde-flush-one-page", "guest-transparency"),
        ("shadow-guest-huge-remap", "bug-track-write-keeps-shadow-pde", "guest-transparency"),
        ("amd-shadow-guest-huge-remap", "bug-track-write-pde-flush-one-page", "guest-transparency"),
    ],
)
def test_shadow_verdicts(name: str, policy: str, prop: str | None) -> None:
    assert _run(name, policy) == prop
