"""`--matrix` runs the parsed scenario under each configuration (model/scenario.py:reconfigure).

It used to rewrite the file's text line by line: a [config] written as an inline table or with
dotted keys survived the rewrite, so every other row re-ran the file's own configuration under
another label; a U+2028 in any string was split into a raw line break, which made every other
configuration invalid TOML and silently skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmtlb.check.runner import Job, configurations, run
from kvmtlb.model.scenario import Config, ScenarioError, load, parse, reconfigure

BODY = """
[guest]
"0x1000" = "0x10000 w"

[host]
"0x10000" = "0x80000 rwx"
"0x11000" = "0x81000 rwx"

[threads]
vcpu0 = \"\"\"
read 0x1000
map 0x1000 -> 0x11000 w
flush_tlb 0x1000 others
\"\"\"
vcpu1 = "read 0x1000"
"""

FORMS = {
    "table": 'name = "m"\n[config]\nvendor = "intel"\nvpid = false\n' + BODY,
    "inline-table": 'name = "m"\nconfig = { vendor = "intel", vpid = false }\n' + BODY,
    "dotted-keys": 'name = "m"\nconfig.vendor = "intel"\nconfig.vpid = false\n' + BODY,
    "line-separator-in-doc": 'name = "m"\ndoc = "a\u2028b\x85c"\n[config]\nvendor = "intel"\n'
    "vpid = false\n" + BODY,
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_other_configuration_is_listed(form: str) -> None:
    s = parse(FORMS[form], f"{form}.toml")
    others = configurations(s)
    assert len(others) == 15, [c.label() for c in others]
    assert s.config.label() not in {c.label() for c in others}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_row_runs_its_own_configuration(form: str, tmp_path: Path) -> None:
    path = tmp_path / f"{form}.toml"
    path.write_text(FORMS[form])
    s = load(path)
    for c in configurations(s)[:4]:
        assert reconfigure(s, c).config == c
        rec = run(Job(str(path), "kvm-6.18", c, max_states=50))
        assert rec["config"] == c.as_dict(), (c.label(), rec["config"])


def test_ops_are_validated_again_under_the_new_configuration() -> None:
    text = FORMS["inline-table"].replace("read 0x1000\nmap", "mov_cr3 pcid=1 noflush\nmap")
    text = text.replace("vpid = false }", "vpid = false, pcid = true }")
    s = parse(text, "t.toml")
    with pytest.raises(ScenarioError, match=r"noflush needs CR4\.PCIDE") as info:
        reconfigure(s, Config("intel", pcid=False))
    assert info.value.line == text.split("\n").index("mov_cr3 pcid=1 noflush") + 1
    assert all(c.pcid for c in configurations(s))
