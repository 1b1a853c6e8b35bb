"""Scenario input errors (scenario-format.md, "Addresses" and "Execution semantics"; style rule 11).

Every malformed scenario below must make `kvmtlb check FILE` exit with code 2 and print one
message that names the file, the line the mistake stands on, and a fix; never a bare traceback.
The cases are data: each is a small scenario in which the offending line carries the marker
`# HERE` (a TOML comment, or an op comment inside a thread), so the expected line number is
computed, not written by hand. Cases with `line=None` concern something missing, which stands on
no line: the message must still name the file and give the fix.

A case the contract requires but the parser does not (yet) reject as it should is marked
`xfail(strict=True)` with the reason; it turns into a failure the day it is fixed, so that the
mark is removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.cli import app
from kvmtlb.model.scenario import ScenarioError, parse

MARK = "# HERE"

GUEST = '"0x1000" = "0x10000 w"\n"0x2000" = "0x11000 w x"'
HOST = '"0x10000" = "0x80000 rwx"\n"0x11000" = "0x81000 rwx"\n"0x12000" = "0x82000 rwx"'


def scenario(
    *,
    name: str = 'name = "case"',
    doc: str = 'doc = "one mistake per case"',
    config: str = 'vendor = "intel"',
    guest: str = GUEST,
    host: str = HOST,
    placement: str = "",
    vcpu0: str = "read 0x1000",
    vcpu1: str = "read 0x2000",
    hostops: str = "",
    threads: str = "",
    expect: str = '"kvm-6.18" = "safe"',
    extra: str = "",
) -> str:
    """A small valid scenario, with one part replaced by the case's mistake."""
    parts = [
        name,
        doc,
        "",
        "[config]",
        config,
        "",
        "[guest]",
        guest,
        "",
        "[host]",
        host,
        "",
    ]
    if placement:
        parts += ["[placement]", placement, ""]
    parts += [
        "[threads]",
        'vcpu0 = """',
        vcpu0,
        '"""',
        'vcpu1 = """',
        vcpu1,
        '"""',
    ]
    if threads:
        parts.append(threads)
    if hostops:
        parts += ['host = """', hostops, '"""']
    parts += ["", "[expect]", expect, ""]
    if extra:
        parts += [extra, ""]
    return "\n".join(parts)


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    message: str  # a regular expression the error message must match (case-insensitive)
    line: int | None = -1  # -1: the line marked `# HERE`; None: no line (something missing)
    xfail: str = ""  # the reason, when the parser does not do what the contract requires

    def expected_line(self) -> int | None:
        if self.line != -1:
            return self.line
        marked = [i for i, ln in enumerate(self.text.splitlines(), 1) if MARK in ln]
        assert len(marked) == 1, f"{self.id}: mark exactly one line with {MARK!r}"
        return marked[0]


def err(id: str, message: str, xfail: str = "", line: int | None = -1, **parts: str) -> Case:
    return Case(id, scenario(**parts), message, line, xfail)


CASES: list[Case] = [
    # -- TOML and the top level --------------------------------------------------------------
    err("toml-bad-value", r"not valid TOML", config=f"vendor = intel  {MARK}"),
    err(
        "toml-duplicate-key",
        r"not valid TOML",
        config=f'vendor = "intel"\nvendor = "amd"  {MARK}',
    ),
    err("toml-unclosed-string", r"not valid TOML", config=f'vendor = "intel  {MARK}'),
    Case(
        "toml-unterminated-thread",
        f'name = "case"\n[config]\nvendor = "intel"\n[host]\n"0x10000" = "0x80000 rwx"\n'
        f'[threads]\nvcpu0 = """  {MARK}\nread 0x1000\n',
        r"not valid TOML|unterminated",
    ),
    err(
        "unknown-top-level-key",
        r"unknown top-level key or table 'vendor'",
        doc=f'doc = "x"\nvendor = "intel"  {MARK}',
    ),
    err("unknown-table", r"unknown top-level key or table 'hosts'", extra=f"[hosts]  {MARK}"),
    err("missing-name", r"missing name", name="", line=None),
    Case(
        "missing-config",
        'name = "case"\n[host]\n"0x10000" = "0x80000 rwx"\n',
        r"missing \[config\]",
        None,
    ),
    err("bad-name-uppercase", r"bad or missing name 'Case'", name=f'name = "Case"  {MARK}'),
    err("bad-name-underscore", r"bad or missing name", name=f'name = "my_case"  {MARK}'),
    err("bad-name-leading-dash", r"bad or missing name", name=f'name = "-case"  {MARK}'),
    err("bad-name-not-string", r"bad or missing name", name=f"name = 5  {MARK}"),
    err("doc-not-string", r"doc must be a string", doc=f"doc = 5  {MARK}"),
    # -- [config] ---------------------------------------------------------------------------------
    err("missing-vendor", r"vendor must be", config="pcid = false", line=4),  # the [config] line
    err("bad-vendor", r'vendor must be "intel" or "amd"', config=f'vendor = "arm"  {MARK}'),
    err(
        "unknown-config-key",
        r"unknown config key 'smep'",
        config=f'vendor = "intel"\nsmep = true  {MARK}',
    ),
    err("config-wrong-type", r"pcpus must be int", config=f'vendor = "intel"\npcpus = "2"  {MARK}'),
    err(
        "config-bool-as-int", r"vcpus must be int", config=f'vendor = "intel"\nvcpus = true  {MARK}'
    ),
    err(
        "vpid-on-amd",
        r"vpid does not apply to vendor amd",
        config=f'vendor = "amd"\nvpid = false  {MARK}',
    ),
    err(
        "vpids-on-amd",
        r"vpids does not apply to vendor amd",
        config=f'vendor = "amd"\nvpids = 2  {MARK}',
    ),
    err(
        "ept-vpid-cap-on-amd",
        r"ept_vpid_cap does not apply",
        config=f'vendor = "amd"\nept_vpid_cap = ["invept-all"]  {MARK}',
    ),
    err(
        "unrestricted-guest-on-amd",
        r"unrestricted_guest does not apply",
        config=f'vendor = "amd"\nunrestricted_guest = false  {MARK}',
    ),
    err(
        "flush-by-asid-on-intel",
        r"flush_by_asid does not apply to vendor intel",
        config=f'vendor = "intel"\nflush_by_asid = false  {MARK}',
    ),
    err(
        "max-asid-on-intel",
        r"max_asid does not apply",
        config=f'vendor = "intel"\nmax_asid = 4  {MARK}',
    ),
    err(
        "map-unknown-root",
        r"no guest page table named 'b'\s+fix: declare it as \[guest\.b\]",
        vcpu0=f"map 0x1000 -> 0x11000 w root=b  {MARK}",
    ),
    err(
        "mov-cr3-unknown-root",
        r"unknown mov_cr3 argument 'other'\s+fix: .*ROOT one of default",
        vcpu0=f"mov_cr3 other  {MARK}",
    ),
    err(
        "guest-root-bad-name",
        r"bad page-table name 'Upper'",
        extra=f'[guest.Upper]  {MARK}\n"0x1000" = "0x10000 w"',
    ),
    err(
        "guest-root-bad-entry",
        r"bad guest mapping",
        extra=f'[guest.b]\n"0x1000" = 5  {MARK}',
    ),
    err("pcpus-zero", r"pcpus must be at least 1", config=f'vendor = "intel"\npcpus = 0  {MARK}'),
    err("vcpus-too-many", r"vcpus above 8", config=f'vendor = "intel"\nvcpus = 9  {MARK}'),
    err(
        "max-asid-zero",
        r"max_asid must be at least 1",
        config=f'vendor = "amd"\nmax_asid = 0  {MARK}',
    ),
    err(
        "ept-vpid-cap-without-invept-all",
        r"without all-context INVEPT",
        config=f'vendor = "intel"\nept_vpid_cap = ["invept-single", "invvpid-all"]  {MARK}',
    ),
    err(
        "unknown-capability",
        r"unknown capability 'invept-addr'",
        config=f'vendor = "intel"\nept_vpid_cap = ["invept-addr"]  {MARK}',
    ),
    # -- [guest] and [host] ------------------------------------------------------------------------
    err(
        "gva-unaligned", r"GVA 0x1001 is not 4 KiB aligned", guest=f'"0x1001" = "0x10000 w"  {MARK}'
    ),
    err(
        "gva-out-of-range",
        r"outside the model's address space",
        guest=f'"0x100000000" = "0x10000 w"  {MARK}',
    ),
    err("gva-not-hex", r"'zz' is not a hex address", guest=f'"zz" = "0x10000 w"  {MARK}'),
    err(
        "guest-gpa-not-in-host",
        r"GPA 0x13000 of GVA 0x1000 is not mapped in \[host\]",
        guest=f'"0x1000" = "0x13000 w"  {MARK}',
    ),
    err(
        "guest-gpa-unaligned",
        r"GPA 0x10008 is not 4 KiB aligned",
        guest=f'"0x1000" = "0x10008"  {MARK}',
    ),
    err("guest-bad-flag", r"bad flags 'q'", guest=f'"0x1000" = "0x10000 q"  {MARK}'),
    err("guest-flag-twice", r"bad flags 'ww'", guest=f'"0x1000" = "0x10000 w w"  {MARK}'),
    err("guest-empty-mapping", r"bad guest mapping", guest=f'"0x1000" = ""  {MARK}'),
    err(
        "host-rights-without-r",
        r"bad host mapping",
        host=f'"0x10000" = "0x80000 w"  {MARK}\n"0x11000" = "0x81000 rwx"',
    ),
    err(
        "host-bad-rights",
        r"bad host mapping",
        host=f'"0x10000" = "0x80000 rwz"  {MARK}\n"0x11000" = "0x81000 rwx"',
    ),
    err(
        "host-missing-hpa",
        r"bad host mapping",
        host=f'"0x10000" = "rwx"  {MARK}\n"0x11000" = "0x81000 rwx"',
    ),
    err(
        "host-hpa-unaligned",
        r"HPA 0x80010 is not 4 KiB aligned",
        host=f'"0x10000" = "0x80010 rwx"  {MARK}\n"0x11000" = "0x81000 rwx"',
    ),
    err(
        "host-gpa-out-of-range",
        r"outside the model's address space",
        host=f'"0x10000" = "0x80000 rwx"\n"0x11000" = "0x81000 rwx"\n'
        f'"0x200000000" = "0x82000 rwx"  {MARK}',
    ),
    err(
        "guest-gva-twice",
        r"GVA 0x1000",
        guest=f'"0x1000" = "0x10000 w"\n"0x01000" = "0x11000 w"  {MARK}',
    ),
    err(
        "host-gpa-twice",
        r"GPA 0x11000",
        host=f'"0x10000" = "0x80000 rwx"\n"0x11000" = "0x81000 rwx"\n'
        f'"0x011000" = "0x82000 rwx"  {MARK}',
    ),
    err(
        "host-hpa-twice",
        r"HPA 0x80000 backs two GPAs",
        host=f'"0x10000" = "0x80000 rwx"\n"0x11000" = "0x80000 rwx"  {MARK}',
    ),
    Case(
        "host-empty",
        f'name = "case"\n[config]\nvendor = "intel"\n[host]  {MARK}\n[threads]\n',
        r"no \[host\] mappings",
    ),
    err("placement-unknown-vcpu", r"unknown vCPU 'vcpu2'", placement=f'vcpu2 = "pcpu0"  {MARK}'),
    err("placement-unknown-pcpu", r"unknown pCPU 'pcpu2'", placement=f'vcpu1 = "pcpu2"  {MARK}'),
    err("placement-not-a-pcpu", r"unknown pCPU 'cpu0'", placement=f'vcpu1 = "cpu0"  {MARK}'),
    # -- [threads]: guest ops ----------------------------------------------------------------
    err(
        "thread-unknown-vcpu",
        r"unknown vCPU 'vcpu2'",
        threads=f'vcpu2 = """  {MARK}\nread 0x1000\n"""',
    ),
    err(
        "thread-unknown-vcpu-without-ops",
        r"unknown vCPU 'vcpu2'",
        threads=f'vcpu2 = """  {MARK}\n"""',
    ),
    err("thread-not-a-string", r"thread vcpu2 must be a string", threads=f"vcpu2 = 5  {MARK}"),
    err(
        "thread-named-guest",
        r"unknown vCPU 'guest'",
        threads=f'guest = """  {MARK}\nread 0x1000\n"""',
    ),
    err(
        "op-in-single-line-thread",
        r"unknown guest op 'frob'",
        threads=f'vcpu2 = "frob"  {MARK}',
        config='vendor = "intel"\nvcpus = 3',
    ),
    err(
        "op-in-literal-thread",
        r"unknown guest op 'frob'",
        threads=f"vcpu2 = '''\nread 0x1000\n\nfrob  {MARK}\n'''",
        config='vendor = "intel"\nvcpus = 3',
    ),
    err(
        "op-on-the-key-line",
        r"unknown guest op 'frob'",
        threads=f'vcpu2 = """frob  {MARK}\n"""',
        config='vendor = "intel"\nvcpus = 3',
    ),
    err("unknown-guest-op", r"unknown guest op 'frobnicate'", vcpu0=f"frobnicate 0x1000  {MARK}"),
    err("guest-host-op", r"unknown guest op 'zap'", vcpu0=f"read 0x1000\nzap 0x10000  {MARK}"),
    err("read-no-address", r"read takes GVA", vcpu0=f"read  {MARK}"),
    err("write-two-addresses", r"write takes GVA", vcpu0=f"write 0x1000 0x2000  {MARK}"),
    err("invlpg-no-address", r"invlpg takes GVA", vcpu0=f"invlpg  {MARK}"),
    err("unmap-two-addresses", r"unmap takes GVA", vcpu0=f"unmap 0x1000 0x2000  {MARK}"),
    err("emulated-read-no-address", r"emulated_read takes GVA", vcpu0=f"emulated_read  {MARK}"),
    err(
        "read-unaligned",
        r"GVA 0x1008 is not 4 KiB aligned",
        vcpu0=f"read 0x1000\nread 0x1008  {MARK}",
    ),
    err(
        "write-out-of-range",
        r"outside the model's address space",
        vcpu0=f"write 0x100000000  {MARK}",
    ),
    err("read-not-hex", r"'page' is not a hex address", vcpu0=f"read page  {MARK}"),
    err("map-no-arrow", r"map takes GVA -> GPA FLAGS", vcpu0=f"map 0x1000 0x11000 w  {MARK}"),
    err("map-missing-gpa", r"map takes GVA -> GPA FLAGS", vcpu0=f"map 0x1000 ->  {MARK}"),
    err(
        "map-gpa-not-in-host",
        r"GPA 0x20000 is not mapped in \[host\]",
        vcpu0=f"map 0x1000 -> 0x20000 w  {MARK}",
    ),
    err("map-bad-flags", r"bad flags 'rw'", vcpu0=f"map 0x1000 -> 0x11000 rw  {MARK}"),
    err("map-unaligned-gva", r"not 4 KiB aligned", vcpu0=f"map 0x1800 -> 0x11000 w  {MARK}"),
    err("mov-cr3-bad-arg", r"unknown mov_cr3 argument 'flush'", vcpu0=f"mov_cr3 flush  {MARK}"),
    err(
        "mov-cr3-pcid-range",
        r"pcid 4096 out of range",
        config='vendor = "intel"\npcid = true',
        vcpu0=f"mov_cr3 pcid=4096  {MARK}",
    ),
    err("mov-cr3-pcid-not-number", r"bad pcid 'x'", vcpu0=f"mov_cr3 pcid=x  {MARK}"),
    err("set-cr4-bad-value", r"bad set_cr4 argument 'pge=2'", vcpu0=f"set_cr4 pge=2  {MARK}"),
    err("set-cr4-other-bit", r"bad set_cr4 argument 'pae=0'", vcpu0=f"set_cr4 pae=0  {MARK}"),
    err("set-cr4-no-arg", r"set_cr4 takes", vcpu0=f"set_cr4  {MARK}"),
    err("invpcid-no-type", r"invpcid takes TYPE", vcpu0=f"invpcid  {MARK}"),
    err("invpcid-type-4", r"INVPCID type 4 out of range", vcpu0=f"invpcid 4  {MARK}"),
    err("invpcid-0-without-gva", r"invpcid type 0 needs a GVA", vcpu0=f"invpcid 0 pcid=0  {MARK}"),
    err("flush-tlb-one-arg", r"flush_tlb takes", vcpu0=f"flush_tlb 0x1000  {MARK}"),
    err(
        "flush-tlb-bad-scope",
        r"'page' is not a hex address",
        vcpu0=f"flush_tlb page others  {MARK}",
    ),
    err(
        "flush-tlb-unknown-target", r"unknown vCPU 'vcpu5'", vcpu0=f"flush_tlb 0x1000 vcpu5  {MARK}"
    ),
    err("flush-tlb-self", r"vcpu0 cannot target itself", vcpu0=f"flush_tlb mm vcpu0,vcpu1  {MARK}"),
    # -- [threads]: host ops -------------------------------------------------------------------
    err("unknown-host-op", r"unknown or malformed host op 'reboot'", hostops=f"reboot  {MARK}"),
    err(
        "host-guest-op",
        r"unknown or malformed host op 'read 0x1000'",
        hostops=f"read 0x1000  {MARK}",
    ),
    err("preempt-unknown-vcpu", r"unknown vCPU 'vcpu3'", hostops=f"preempt vcpu3  {MARK}"),
    err("preempt-no-vcpu", r"unknown or malformed host op", hostops=f"preempt  {MARK}"),
    err(
        "zap-all-fast-shadow",
        r"zap_all_fast needs tdp = true",
        config='vendor = "intel"\ntdp = false',
        hostops=f"zap_all_fast  {MARK}",
    ),
    err(
        "zap-all-fast-too-many",
        r"more than 3 zap_all_fast ops",
        hostops=f"zap_all_fast\nzap_all_fast\nzap_all_fast\nzap_all_fast  {MARK}",
    ),
    err(
        "zap-all-fast-argument", r"unknown or malformed host op", hostops=f"zap_all_fast 1  {MARK}"
    ),
    err(
        "spawn-preempt", r"spawn cannot run 'preempt vcpu0'", hostops=f"spawn preempt vcpu0  {MARK}"
    ),
    err("spawn-nothing", r"unknown or malformed host op", hostops=f"spawn  {MARK}"),
    err(
        "zap-gfn-range-same-gpa",
        r"zap_gfn_range needs two different GPAs",
        hostops=f"zap_gfn_range 0x10000 0x10000  {MARK}",
    ),
    err(
        "zap-gfn-range-unmapped",
        r"GPA 0x13000 is not mapped in \[host\]",
        hostops=f"spawn zap_gfn_range 0x10000 0x13000  {MARK}",
    ),
    err(
        "resume-unknown-pcpu",
        r"unknown pCPU 'pcpu7'",
        hostops=f"preempt vcpu1\nresume vcpu1 on pcpu7  {MARK}",
    ),
    err(
        "resume-bad-keyword",
        r"resume takes vcpuN \[on pcpuM\]",
        hostops=f"resume vcpu1 at pcpu0  {MARK}",
    ),
    err(
        "zap-gpa-not-in-host",
        r"GPA 0x40000 is not mapped in \[host\]",
        hostops=f"zap 0x40000  {MARK}",
    ),
    err("zap-unaligned", r"GPA 0x10004 is not 4 KiB aligned", hostops=f"zap 0x10004  {MARK}"),
    err(
        "wrprotect-gpa-not-in-host",
        r"GPA 0x40000 is not mapped",
        hostops=f"wrprotect 0x40000  {MARK}",
    ),
    err(
        "remap-gpa-not-in-host",
        r"GPA 0x40000 is not mapped",
        hostops=f"remap 0x40000 -> 0x90000  {MARK}",
    ),
    err(
        "remap-hpa-in-use",
        r"HPA 0x81000 is already in use",
        hostops=f"remap 0x10000 -> 0x81000  {MARK}",
    ),
    err(
        "remap-hpa-twice",
        r"HPA 0x90000 is already in use",
        hostops=f"remap 0x10000 -> 0x90000\nremap 0x11000 -> 0x90000  {MARK}",
    ),
    err(
        "remap-no-arrow", r"unknown or malformed host op", hostops=f"remap 0x10000 0x90000  {MARK}"
    ),
    err(
        "flush-remote-tlbs-arg",
        r"unknown or malformed host op",
        hostops=f"flush_remote_tlbs vcpu0  {MARK}",
    ),
    # -- ops the ISA forbids statically (scenario-format.md, "Faults") ---------------------------
    err(
        "invpcid-1-pcid-without-pcide",
        r"invpcid 1 pcid=1 with CR4.PCIDE off is #GP",
        vcpu0=f"invpcid 1 pcid=1  {MARK}",
    ),
    err(
        "invpcid-0-pcid-without-pcide",
        r"invpcid 0 pcid=2 with CR4.PCIDE off",
        vcpu0=f"invpcid 0 pcid=2 0x1000  {MARK}",
    ),
    err(
        "invpcid-after-pcide-cleared",
        r"with CR4.PCIDE off",
        config='vendor = "intel"\npcid = true',
        vcpu0=f"invpcid 1 pcid=1\nset_cr4 pcide=0\ninvpcid 1 pcid=1  {MARK}",
    ),
    err("noflush-without-pcide", r"noflush needs CR4.PCIDE", vcpu0=f"mov_cr3 noflush  {MARK}"),
    err(
        "noflush-after-pcide-cleared",
        r"noflush needs CR4.PCIDE",
        config='vendor = "amd"\npcid = true',
        vcpu0=f"mov_cr3 noflush\nset_cr4 pcide=0\nmov_cr3 noflush  {MARK}",
    ),
    err("mov-cr3-pcid-without-pcide", r"pcid=N needs CR4.PCIDE", vcpu0=f"mov_cr3 pcid=1  {MARK}"),
    err(
        "exec-without-x",
        r"exec of 0x1000, which is never mapped executable",
        vcpu0=f"exec 0x1000  {MARK}",
    ),
    err(
        "exec-unmapped",
        r"exec of 0x5000, which is never mapped executable",
        vcpu1=f"read 0x2000\nexec 0x5000  {MARK}",
    ),
    # -- [expect] ------------------------------------------------------------------------------
    err(
        "expect-unknown-policy",
        r"\[expect\] names unknown policy 'kvm-9.9'",
        expect=f'"kvm-9.9" = "safe"  {MARK}',
    ),
    err("expect-bad-verdict", r"bad expectation 'unsafe'", expect=f'"kvm-6.18" = "unsafe"  {MARK}'),
    err(
        "expect-unknown-property",
        r"bad expectation 'violation:tlb-coherence'",
        expect=f'"kvm-6.18" = "violation:tlb-coherence"  {MARK}',
    ),
    err(
        "expect-violation-without-property",
        r"bad expectation 'violation'",
        expect=f'"kvm-6.18" = "violation"  {MARK}',
    ),
    err("expect-not-a-string", r"bad expectation True", expect=f'"kvm-5.8" = true  {MARK}'),
]


def _params() -> list[object]:
    out: list[object] = []
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", _params())
def test_check_rejects_with_file_line_and_fix(case: Case, tmp_path: Path) -> None:
    path = tmp_path / f"{case.id}.toml"
    path.write_text(case.text)
    result = CliRunner().invoke(app, ["check", str(path)])
    err = result.stderr
    assert result.exit_code == 2, (result.exit_code, result.stdout, err, result.exception)
    assert "Traceback" not in err + result.stdout
    line = case.expected_line()
    first = err.strip().splitlines()[0]
    if line is None:
        assert first.startswith(f"error: {path}:") or first.startswith(f"error: {path}"), first
    else:
        assert first.startswith(f"error: {path}:{line}: "), (line, err)
    assert re.search(case.message, err, re.I), err
    fix = re.search(r"\n\s*fix: (\S.*)", err)
    assert fix is not None, f"no fix in {err!r}"


@pytest.mark.parametrize("case", _params())
def test_parse_raises_scenario_error(case: Case) -> None:
    """The library API agrees with the CLI: a ScenarioError with the line and a fix."""
    with pytest.raises(ScenarioError) as info:
        parse(case.text, "case.toml", {"kvm-6.18", "kvm-5.8", "kvm-5.7"})
    e = info.value
    line = case.expected_line()
    assert e.path == "case.toml"
    if line is not None:
        assert e.line == line
    assert e.fix.strip()


# -- what the contract allows must not be rejected ------------------------------------------------
VALID = {
    "flags-without-spaces": scenario(guest='"0x1000" = "0x10000 wg"\n"0x2000" = "0x11000 xw"'),
    "read-unmapped-gva-faults": scenario(vcpu1="read 0x5000"),
    "gva-zero-page": scenario(
        guest='"0x0" = "0x10000 w"\n"0x2000" = "0x11000 x"', vcpu0="read 0x0"
    ),
    "exec-after-map-x": scenario(vcpu0="map 0x1000 -> 0x12000 x\nexec 0x1000"),
    "noflush-after-set-pcide": scenario(vcpu0="set_cr4 pcide=1\nmov_cr3 pcid=1 noflush"),
    "invpcid-2-3-without-pcide": scenario(vcpu0="invpcid 2\ninvpcid 3"),
    "invpcid-1-pcid-0-without-pcide": scenario(vcpu0="invpcid 1 pcid=0"),
    "name-with-digits": scenario(name='name = "0day-2"'),
    "comments-in-threads": scenario(vcpu0="# a comment\nread 0x1000  # trailing\n\nread 0x2000"),
    "expect-deadlock": scenario(expect='"kvm-6.18" = "deadlock"'),
    "remap-to-new-hpa": scenario(hostops="remap 0x10000 -> 0x90000"),
    "amd-flush-by-asid": scenario(config='vendor = "amd"\nflush_by_asid = false\nmax_asid = 4'),
    "intel-knobs": scenario(
        config='vendor = "intel"\nvpid = false\nvpids = 3\nept_vpid_cap = ["invept-all"]\n'
        "unrestricted_guest = true"
    ),
    "one-vcpu-no-thread": scenario(
        config='vendor = "intel"\nvcpus = 1\npcpus = 1', vcpu1="read 0x1000"
    ).replace('vcpu1 = """\nread 0x1000\n"""\n', ""),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_edge_cases_parse(name: str) -> None:
    s = parse(VALID[name], f"{name}.toml", {"kvm-6.18", "kvm-5.8", "kvm-5.7"})
    assert s.name


def test_op_lines_are_the_file_lines() -> None:
    """Ops remember the line they stand on (traces and errors point into the file)."""
    text = scenario(vcpu0="read 0x1000\n# comment\n\nwrite 0x1000", hostops="zap 0x10000")
    s = parse(text, "t.toml")
    lines = text.splitlines()
    for op in (*s.programs[0], *s.host_program):
        assert op.describe().split()[0] in lines[op.line - 1], (op, lines[op.line - 1])


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(app, ["check", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in result.stderr and "fix:" in result.stderr


def test_first_error_of_several_files_names_its_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(scenario(vcpu1="read 0x1000"))
    bad = tmp_path / "bad.toml"
    bad.write_text(scenario(vcpu0=f"frobnicate  {MARK}"))
    result = CliRunner().invoke(app, ["check", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:" in result.stderr and str(good) not in result.stderr
