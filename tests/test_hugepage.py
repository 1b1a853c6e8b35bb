"""2 MiB EPT/NPT regions and Hyper-V's range flushes (kvmtlb/kvm/hugepage.py, kvm/hyperv.py,
hw/hyperv.py; issue 15): the scenario format, what the hypercalls remove, and the range each
version's flush of a dropped SPTE names (historical bug #15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmtlb.check.explorer import explore
from kvmtlb.hw.hyperv import GpaRange
from kvmtlb.hw.mappings import CombinedTranslation, GuestPhysicalPsc, GuestPhysicalTranslation
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
"0x1000" = "0x200000 w"
"0x2000" = "0x201000 w"

[host]
HOST

[threads]
vcpu0 = \"\"\"
read 0x2000
\"\"\"
host = \"\"\"
OPS
\"\"\"
"""


def text(host: str = '"0x200000" = "0x400000 rwx 2m"', ops: str = "", knobs: str = "") -> str:
    return BASE.replace("HOST", host).replace("OPS", ops).replace("KNOBS", knobs)


# -- the scenario format --------------------------------------------------------------------------
def test_a_region_adds_the_frames_the_file_names() -> None:
    s = parse(text(ops="zap 0x3ff000"))
    assert s.huge == {0x200000: (0x400000, "rwx")}
    assert s.host[0x200000] == (0x400000, "rwx")
    assert s.host[0x201000] == (0x401000, "rwx")
    assert s.host[0x3FF000] == (0x5FF000, "rwx")  # named by the host op
    assert 0x202000 not in dict(s.host)


@pytest.mark.parametrize(
    ("host", "ops", "knobs", "message"),
    [
        ('"0x201000" = "0x400000 rwx 2m"', "", "", "not 2 MiB aligned"),
        ('"0x200000" = "0x401000 rwx 2m"', "", "", "not 2 MiB aligned"),
        ('"0x200000" = "0x400000 rwx 4m"', "", "", "bad host mapping"),
        (
            '"0x200000" = "0x400000 rwx 2m"\n"0x10000" = "0x401000 rw"',
            "",
            "",
            "overlaps",
        ),
        (
            '"0x200000" = "0x400000 rwx 2m"\n"0x600000" = "0x400000 rwx 2m"',
            "",
            "",
            "overlaps",
        ),
        ('"0x200000" = "0x400000 rwx 2m"', "", "tdp = false", "tdp = false"),
        ('"0x200000" = "0x400000 rwx 2m"', "zap_all_fast", "", "zap_all_fast"),
        ('"0x200000" = "0x400000 rwx 2m"', "age 0x201000", "", "age of a frame"),
        (
            '"0x200000" = "0x400000 rwx 2m"\n"0x10000" = "0x80000 rw"',
            "collapse 0x10000",
            "",
            "not a frame of a 2 MiB region",
        ),
        ('"0x200000" = "0x400000 rwx 2m"', "", "tdp = false\nhv_range_flush = true", "tdp"),
    ],
)
def test_bad_regions_are_input_errors(host: str, ops: str, knobs: str, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(text(host, ops, knobs), "bad.toml")
    assert message in str(e.value)
    assert e.value.line > 0 and e.value.fix


# -- the hypercalls -------------------------------------------------------------------------------
def _gp(page: int, size: int, ep4ta: int = 0x1000) -> GuestPhysicalTranslation:
    return GuestPhysicalTranslation(ep4ta, page, size, 0x400000 + page - 0x200000, 7)


def test_a_list_flush_removes_exactly_what_its_range_covers() -> None:
    one = GpaRange(0x1000, 0x201000, 1)
    assert one.matches(_gp(0x201000, 0x1000))
    assert not one.matches(_gp(0x200000, 0x1000))  # another page of the region
    assert not one.matches(_gp(0x201000, 0x1000, ep4ta=0x2000))  # another EPT hierarchy
    assert not one.matches(_gp(0x200000, 1 << 21))  # a 2 MiB translation: not all of it named
    assert not one.matches(GuestPhysicalPsc(0x1000, 2, 0x201000 >> 21, 0x9000, 7))
    huge = GpaRange(0x1000, 0x200000, 512)  # kvm_flush_remote_tlbs_gfn(kvm, gfn, 2M level)
    assert huge.matches(_gp(0x200000, 1 << 21)) and huge.matches(_gp(0x3FF000, 0x1000))
    assert huge.matches(GuestPhysicalPsc(0x1000, 2, 0x200000 >> 21, 0x9000, 7))
    low = GpaRange(0x1000, 0x0, 512)  # drop_large_spte's range in v5.x: GPAs 0-0x1fffff
    assert not low.matches(_gp(0x200000, 1 << 21))
    combined = CombinedTranslation(
        1, 0, 0x1000, 0x2000, 0x1000, 0x1000, 0x401000, 7, 7, False, 0x201000
    )
    assert one.matches(combined) and not low.matches(combined)


# -- the versions and bug #15 ---------------------------------------------------------------------
def _run(name: str, policy: str) -> tuple[str | None, str]:
    path = SCENARIOS / f"{name}.toml"
    r = explore(build(load(path, set(registry())), registry()[policy]()))
    trace = "\n".join(f"{t.action} {rec.action} {rec.detail}" for t in r.trace for rec in t.records)
    return r.prop, trace


def test_drop_large_spte_flushes_the_sp_base_gfn_in_v5x() -> None:
    prop, trace = _run("hv-huge-dirty-log-write", "kvm-5.8")
    assert prop == "host-isolation"
    assert "drop_large_spte" in trace
    assert "HvFlushGuestPhysicalAddressList(0x200000000, GPA 0x0-0x1fffff)" in trace
    prop, trace = _run("hv-huge-dirty-log-write", "kvm-6.18")
    assert prop is None


def test_zap_collapsible_flushes_the_page_table_base_in_the_bug() -> None:
    prop, trace = _run("hv-huge-collapse-zap", "bug-range-flush-wrong-start-gfn")
    assert prop == "host-isolation"
    assert "GPA 0x200000-0x200fff" in trace and "kvm_mmu_zap_collapsible_spte" in trace
    assert _run("hv-huge-collapse-zap", "kvm-6.18")[0] is None


def test_without_hyperv_the_range_flushes_are_full_flushes() -> None:
    """The same file without hv_range_flush: every version flushes everything, and is safe."""
    src = (SCENARIOS / "hv-huge-collapse-zap.toml").read_text()
    src = src.replace("hv_range_flush = true", "hv_range_flush = false")
    s = parse(src, "no-hv.toml")
    for policy in ("kvm-5.8", "kvm-6.18", "bug-range-flush-wrong-start-gfn"):
        assert explore(build(s, registry()[policy]())).prop is None, policy


def test_hyperv_full_flush_makes_no_request() -> None:
    prop, _ = _run("hv-zap-race-access", "kvm-6.18")
    assert prop is None
    path = SCENARIOS / "hv-zap-race-access.toml"
    r = explore(build(load(path, set(registry())), registry()["bug-remote-flush-no-wait"]()))
    assert r.prop is None  # no kicks to wait for: the hypercall flushed every processor


def test_v5x_enabling_dirty_logging_looks_at_the_whole_region() -> None:
    """slot_rmap_write_protect walks the memslot, and a 2 MiB region is one: a writable 4 KiB
    SPTE of another frame of the region than the one the op names still gets v5.x's flush
    (this was once a false dirty-logging violation of kvm-5.7 and kvm-5.8)."""
    src = text(ops="zap 0x202000\nwrprotect 0x200000").replace(
        "read 0x2000", "write 0x2000\nwrite 0x2000"
    )
    s = parse(src, "wp-region.toml")
    for policy in ("kvm-5.7", "kvm-5.8", "kvm-6.18"):
        assert explore(build(s, registry()[policy]())).prop is None, policy
    assert explore(build(s, registry()["bug-dirty-log-no-flush"]())).prop == "dirty-logging"
