"""EPT dirty flags and page-modification logging: the hardware rules (hw/dirty.py), KVM's port
(kvm/pml.py), the scenario knob and its lint."""

from __future__ import annotations

from pathlib import Path

import pytest
from hwhelpers import do, enter, leave, vmwrite

from kvmtlb.check.lint import warnings
from kvmtlb.hw import testbed as tb
from kvmtlb.hw.machine import Machine
from kvmtlb.hw.outcomes import Access
from kvmtlb.hw.paging import E_D, E_R, E_W, EPT_D, make_ept, make_pte
from kvmtlb.hw.testbed import IntelSpec, build_intel
from kvmtlb.hw.vmx import EPTP_AD, Invept, make_eptp
from kvmtlb.model.scenario import ScenarioError
from kvmtlb.model.scenario import load as load_scenario

GVA, GPA, HPA, HPA2 = 0x1000, 0x10000, 0x80000, 0x90000
CLEAN = make_ept(HPA, E_R | E_W)
DIRTY = CLEAN | EPT_D


def bed(leaf: int = DIRTY, ad: bool = True, pml: bool = True) -> tuple[tb.Testbed, Machine]:
    """One processor in the guest, GVA -> GPA -> HPA, the EPT leaf's values all four of
    (HPA, HPA2) x (clean, dirty)."""
    values = [make_ept(h, E_R | E_W) | d for h in (HPA, HPA2) for d in (0, EPT_D)]
    t = build_intel(
        IntelSpec(guest={GVA: make_pte(GPA)}, ept={GPA: leaf}, ept_values={GPA: values})
    )
    m = vmwrite(t.machine, 0, eptp=make_eptp(t.ept_roots[0], ad=ad), enable_pml=pml)
    return t, enter(m)


def writes(m: Machine) -> list[Access]:
    return [o for o in m.outcomes(0, GVA, "write") if isinstance(o, Access)]


def test_a_write_through_a_translation_cached_dirty_sets_and_logs_nothing() -> None:
    _, m = bed()
    (o,) = writes(m)
    assert o.erights & E_D
    [(_, succ)] = [(x, s) for x, s in m.access(0, GVA, "write") if isinstance(x, Access)]
    assert succ is m
    assert succ.cpus[0].vmcs.pml == ()


def test_cleaning_the_flag_without_invalidating_leaves_the_dirty_translation_usable() -> None:
    t, m = bed()
    m = m.write(t.ept_slot(GPA), CLEAN)
    outs = writes(m)
    assert sorted(bool(o.erights & E_D) for o in outs) == [False, True]
    by_dirty = {bool(o.erights & E_D): s for o, s in m.access(0, GVA, "write")}
    assert by_dirty[True].memory.values[t.ept_slot(GPA)] == CLEAN  # unnoticed
    walked = by_dirty[False]
    assert walked.memory.values[t.ept_slot(GPA)] == DIRTY
    assert walked.cpus[0].vmcs.pml == (GPA,)


def test_after_invept_every_write_sets_the_flag_and_logs() -> None:
    t, m = bed()
    m = m.write(t.ept_slot(GPA), CLEAN)
    m = do(leave(m), 0, Invept(1, make_eptp(t.ept_roots[0], ad=True)))
    m = enter(m)
    (o,) = writes(m)
    assert not o.erights & E_D
    [(_, succ)] = m.access(0, GVA, "write")
    assert succ.cpus[0].vmcs.pml == (GPA,)
    (again,) = writes(succ)  # now cached dirty: the next write logs nothing
    assert again.erights & E_D


def test_without_pml_the_flag_is_set_but_nothing_is_logged() -> None:
    t, m = bed(leaf=CLEAN, pml=False)
    [(o, succ)] = m.access(0, GVA, "write")
    assert isinstance(o, Access)
    assert succ.memory.values[t.ept_slot(GPA)] == DIRTY
    assert succ.cpus[0].vmcs.pml == ()


def test_without_ad_flags_the_processor_sets_no_dirty_flag() -> None:
    _, m = bed(leaf=CLEAN, ad=False)
    [(_, succ)] = m.access(0, GVA, "write")
    assert succ is m


def test_a_stale_translation_cached_clean_is_not_used_for_a_write() -> None:
    """A write through a translation cached clean walks the EPT: it takes what memory maps now
    (HPA2), while a read may still use the stale translation (HPA)."""
    t, m = bed(leaf=CLEAN)
    m = m.write(t.ept_slot(GPA), make_ept(HPA2, E_R | E_W))
    assert {o.frame for o in writes(m)} == {HPA2}
    reads = {o.frame for o in m.outcomes(0, GVA, "read") if isinstance(o, Access)}
    assert reads == {HPA, HPA2}


def test_reads_do_not_tell_dirty_from_clean() -> None:
    t, m = bed()
    m = m.write(t.ept_slot(GPA), CLEAN)
    reads = [o for o in m.outcomes(0, GVA, "read") if isinstance(o, Access)]
    assert len(reads) == 1 and not reads[0].erights & E_D


def test_eptp_ad_bit() -> None:
    assert make_eptp(0x5000, ad=True) & EPTP_AD
    assert not make_eptp(0x5000) & EPTP_AD


# -- the scenario knob ---------------------------------------------------------------------------
BASE = """name = "p"
[config]
vendor = "intel"
vcpus = 1
pcpus = 1
pml = true
{extra}
[guest]
"0x1000" = "0x10000 w"
[host]
"0x10000" = "0x80000 rwx{huge}"
[threads]
vcpu0 = "write 0x1000"
host = "{host}"
"""


def scenario(
    tmp_path: Path, extra: str = "", huge: str = "", host: str = "wrprotect 0x10000"
) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(BASE.format(extra=extra, huge=huge, host=host))
    return p


@pytest.mark.parametrize(
    ("extra", "huge", "says"),
    [
        ("tdp = false", "", "PML only with EPT"),
        ("ept_ad = false", "", "PML only with EPT"),
        ("", " 2m", "4 KiB frames"),
    ],
)
def test_pml_needs_ept_ad_and_4k_frames(tmp_path: Path, extra: str, huge: str, says: str) -> None:
    if huge:
        # a 2 MiB region's base
        text = BASE.format(extra=extra, huge=huge, host="wrprotect 0x200000")
        text = text.replace('"0x10000" = "0x80000', '"0x200000" = "0x400000').replace(
            '"0x1000" = "0x10000 w"', '"0x1000" = "0x200000 w"'
        )
        p = tmp_path / "p.toml"
        p.write_text(text)
    else:
        p = scenario(tmp_path, extra)
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    assert says in str(e.value)
    assert e.value.line > 0


def test_pml_is_intel_only(tmp_path: Path) -> None:
    p = scenario(tmp_path)
    p.write_text(p.read_text().replace('vendor = "intel"', 'vendor = "amd"'))
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    assert "pml" in str(e.value)


def test_lint_pml_without_log(tmp_path: Path) -> None:
    quiet = warnings(load_scenario(scenario(tmp_path)))
    assert not [w for w in quiet if w.kind == "pml-without-log"]
    loud = warnings(load_scenario(scenario(tmp_path, host="flush_remote_tlbs")))
    assert [w.kind for w in loud if w.kind == "pml-without-log"] == ["pml-without-log"]
