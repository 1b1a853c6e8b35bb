"""bench/gen_pvflush.py writes issue 12's PV-flush protocol as a valid scenario for any N."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kvmtlb.kvm.policy import registry
from kvmtlb.model.scenario import load

GEN = Path(__file__).parent.parent / "bench" / "gen_pvflush.py"


def _gen():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_pvflush", GEN)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_scenario_loads(tmp_path: Path, n: int) -> None:
    out = tmp_path / f"pv{n}.toml"
    assert _gen().main([str(n), str(out)]) == 0
    s = load(str(out), set(registry()))
    assert s.config.vcpus == n and s.config.pcpus == 2
    assert s.expect["kvm-6.18"] == "safe"
    assert len(s.host_program) == 4


def test_schedule_replaces_the_host_script(tmp_path: Path) -> None:
    out = tmp_path / "pv3s.toml"
    assert _gen().main(["3", str(out), "--schedule", "2"]) == 0
    s = load(str(out), set(registry()))
    assert s.host_program == () and s.schedule == (2, 2, 2)


@pytest.mark.parametrize(
    "argv",
    [["1"], ["x"], [], ["2", "a", "b"], ["2", "--schedule"], ["2", "--schedule", "9"]],
)
def test_bad_arguments(argv: list[str]) -> None:
    assert _gen().main(argv) == 2


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
