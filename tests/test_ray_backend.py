"""The partitioned search on Ray actors (kvmtlb.check.ray_backend, `--backend ray`): the same
verdicts, counts and traces as the local backend, on a Ray started on this machine. Kept small:
Ray takes seconds to start on two cores. Skipped when Ray is not installed (`pip install
'kvmtlb[ray]'`; .ci/run installs it, so CI runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install 'kvmtlb[ray]' to run the Ray backend tests"
)

from kvmtlb.check.parallel import explore_partitioned  # noqa: E402
from kvmtlb.check.ray_backend import spec_of  # noqa: E402
from kvmtlb.cli import app  # noqa: E402
from kvmtlb.kvm.policy import registry  # noqa: E402
from kvmtlb.model.scenario import load  # noqa: E402
from kvmtlb.model.system import build  # noqa: E402

BUILTIN = Path(__file__).parent.parent / "kvmtlb" / "scenarios"


CASES = [
    ("emulated-read-pv-flush", "kvm-5.7"),  # a violation
    ("emulated-read-pv-flush", "kvm-6.18"),
    ("amd-ipi-shootdown-all-global", "kvm-6.18"),
]


def test_ray_equals_the_local_backend(tmp_path: Path) -> None:
    """One test, so that one pytest worker starts Ray, once."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name, policy in CASES:
            same_as_local(name, policy)
        on_the_command_line()
        checkpoint_and_resume_on_ray(tmp_path)
    finally:
        ray.shutdown()


def same_as_local(name: str, policy: str) -> None:
    path = str(BUILTIN / f"{name}.toml")

    def system():  # type: ignore[no-untyped-def]
        return build(load(path, set(registry())), registry()[policy]())

    a = explore_partitioned(system(), workers=2)
    b = explore_partitioned(system(), workers=2, backend="ray", spec=spec_of(path, policy, None))
    assert (b.label, b.states, b.transitions, b.depth, b.path) == (
        a.label,
        a.states,
        a.transitions,
        a.depth,
        a.path,
    ), (name, policy)
    assert len(b.trace) == len(a.trace)


def on_the_command_line() -> None:
    args = ["check", str(BUILTIN / "emulated-read-pv-flush.toml"), "--policy", "kvm-5.7"]
    local = CliRunner().invoke(app, [*args, "--json"])
    r = CliRunner().invoke(app, [*args, "--json", "--backend", "ray", "--workers", "2"])
    assert r.exit_code == local.exit_code == 0, r.output
    one, two = json.loads(local.stdout.splitlines()[0]), json.loads(r.stdout.splitlines()[0])
    for key in ("label", "states", "transitions", "depth", "path", "trace"):
        assert one[key] == two[key], key


def checkpoint_and_resume_on_ray(tmp_path: Path) -> None:
    """A checkpoint written by Ray actors resumes on Ray actors to the plain result."""
    path = str(BUILTIN / "amd-migration-round-trip.toml")
    spec = spec_of(path, "kvm-6.18", None)

    def system():  # type: ignore[no-untyped-def]
        return build(load(path, set(registry())), registry()["kvm-6.18"]())

    whole = explore_partitioned(system(), workers=1)
    ck = str(tmp_path / "ck")
    part = explore_partitioned(
        system(), workers=2, backend="ray", spec=spec, checkpoint=ck, max_states=2000
    )
    assert part.stopped == "max-states" and part.states < whole.states
    resumed = explore_partitioned(
        system(), workers=2, backend="ray", spec=spec, checkpoint=ck, resume=True
    )
    assert (resumed.label, resumed.states, resumed.transitions, resumed.path) == (
        whole.label,
        whole.states,
        whole.transitions,
        whole.path,
    )
