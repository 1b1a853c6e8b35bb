"""kvmtlb mutate and kvmtlb advise: sites come from the policy's own code, mutants are policy
subclasses, kills are relative to the policy, and the seed's finding comes out of advise."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmtlb.advise import COST_KEYS, advise, measure
from kvmtlb.check import mutate
from kvmtlb.check.mutation import MutantJob, RecordJob, Run, mutant_run, record_run, run_campaign
from kvmtlb.check.runner import configurations, load_policy
from kvmtlb.cli import app
from kvmtlb.kvm.policy import registry
from kvmtlb.kvm.versions import Kvm57
from kvmtlb.model.scenario import Config, load

SCENARIOS = Path(__file__).parent.parent / "kvmtlb" / "scenarios"
SEED_PATH = (
    "record_steal_time_flush",
    "kvm_vcpu_flush_tlb",
    "vmx_flush_tlb",
    "_vmx_flush_tlb",
    "ept_sync_context",
)
SEED = mutate.Site(SEED_PATH, "INVEPT single")
NOVPID = Config("intel", vpid=False, pv_tlb_flush=True)


def sites(policy: str, scenario: str, config: Config | None = None) -> set[mutate.Site]:
    rec = record_run(RecordJob(policy, Run(str(SCENARIOS / f"{scenario}.toml"), config), 0))
    return {mutate.Site(tuple(p), op) for p, op in rec["sites"]}


def test_sites_come_from_the_code_that_ran() -> None:
    """kvm-5.7's PV flush with VPID off issues INVEPT through __vmx_flush_tlb; kvm-5.8's does not
    (the seed commit); with VPID on both issue INVVPID."""
    assert SEED in sites("kvm-5.7", "vpid-off-pv-flush", NOVPID)
    assert not any(
        s.path[0] == "record_steal_time_flush"
        for s in sites("kvm-5.8", "vpid-off-pv-flush", NOVPID)
    )
    on = sites("kvm-5.7", "vpid-off-pv-flush", Config("intel", pv_tlb_flush=True))
    assert (
        mutate.Site(
            (*SEED_PATH[:4], "vpid_sync_context", "vpid_sync_vcpu_single"), "INVVPID single"
        )
        in on
    )


def test_a_mutant_is_a_policy_subclass_named_by_its_id() -> None:
    m = mutate.Mutation(SEED, mutate.NOTHING)
    cls = mutate.make_mutant(Kvm57, m)
    assert issubclass(cls, Kvm57)
    assert mutate.parse_id(cls.name) == ("kvm-5.7", m)
    assert load_policy(cls.name).name == cls.name
    with pytest.raises(ValueError):
        mutate.parse_id("mutant:kvm-5.7|a > b: INVEPT single -> INVLPGA")


def test_a_mutant_can_be_checked_by_name() -> None:
    kick = "mutant:kvm-6.18|kvm_flush_remote_tlbs_kick > kvm_kick_many_cpus: kick -> nothing"
    out = CliRunner().invoke(app, ["check", "zap-race-access", "--policy", kick, "--json"])
    assert out.exit_code == 1, out.output
    rec = json.loads(out.stdout.splitlines()[0])
    assert rec["property"] == "host-isolation"
    assert any("(mutant) no kick" in step["detail"] for step in rec["trace"])


def test_the_change_fires_only_at_its_site() -> None:
    run = Run(str(SCENARIOS / "vpid-off-pv-flush.toml"), NOVPID)
    fired = mutant_run(MutantJob("kvm-5.7", mutate.Mutation(SEED, mutate.NOTHING), run, 0))
    assert fired["fired"] > 0 and fired["verdict"] == "safe"
    elsewhere = mutate.Site(("no_such_method", "ept_sync_context"), "INVEPT single")
    idle = mutant_run(MutantJob("kvm-5.7", mutate.Mutation(elsewhere, mutate.NOTHING), run, 0))
    assert idle["fired"] == 0


def test_campaign_kills_relative_to_the_policy_and_keeps_the_seed_flush_alive() -> None:
    paths = [str(SCENARIOS / f"{n}.toml") for n in ("vpid-off-pv-flush", "zap-race-access")]
    report = run_campaign("kvm-5.7", paths, workers=1)
    by_id = {m.mutation.id: m for m in report.mutants}
    seed = by_id[mutate.Mutation(SEED, mutate.NOTHING).id]
    assert seed.status == "survived" and seed.same_counts
    kick = next(m for m in report.mutants if m.mutation.site.op == "kick")
    assert (kick.status, kick.prop) == ("killed", "host-isolation")
    assert kick.killed_by.startswith("zap-race-access")
    # no weakening to a request kvm-5.7 never makes (it has no KVM_REQ_TLB_FLUSH_CURRENT)
    assert not any("KVM_REQ_TLB_FLUSH_CURRENT" in m.mutation.change for m in report.mutants)
    assert 0 < report.score < 1
    advice = {a.site: a for a in advise(report)}
    assert advice[SEED].advised is not None and advice[SEED].advised.mutation.change == "nothing"
    for a in advice.values():  # advice never skips a refuted weakening
        ms = [m for m in report.mutants if m.mutation.site == a.site]
        order = mutate.WEAKER[a.site.op]
        ms.sort(key=lambda m: order.index(m.mutation.change))
        if a.advised is not None:
            upto = ms[: ms.index(a.advised) + 1]
            assert all(m.status == "survived" for m in upto)
    measure("kvm-5.7", [advice[SEED]], accesses=5000)
    before, after = advice[SEED].saved[COST_KEYS[0][0]]
    assert after < before


def test_user_policy_gets_its_own_sites(tmp_path: Path) -> None:
    f = tmp_path / "extra.py"
    f.write_text(
        textwrap.dedent(
            """
            from kvmtlb.kvm.versions import Kvm618

            class ExtraFlush(Kvm618):
                name = "user-extra-flush"

                def vmx_flush_tlb_guest(self, k, vcpu):
                    self.my_extra_invept(k, vcpu)
                    super().vmx_flush_tlb_guest(k, vcpu)

                def my_extra_invept(self, k, vcpu):
                    self.ept_sync_global(k, vcpu)
            """
        )
    )
    spec = f"{f}:ExtraFlush"
    found = sites(spec, "vpid-off-pv-flush")
    assert any(s.path[-2:] == ("my_extra_invept", "ept_sync_global") for s in found), found


def test_mutate_and_advise_commands_on_a_small_suite() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["mutate", "kvm-5.7", "vpid-off-pv-flush", "--json", "--jobs", "1"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    own = load(SCENARIOS / "vpid-off-pv-flush.toml", set(registry()))
    assert report["runs"] == 1 + len(configurations(own))
    seed = next(m for m in report["mutants"] if m["id"] == mutate.Mutation(SEED, "nothing").id)
    assert seed["status"] == "survived" and seed["same_space"]
    out = runner.invoke(
        app,
        ["advise", "kvm-5.7", "vpid-off-pv-flush", "--json", "--jobs", "1", "--accesses", "5000"],
    )
    assert out.exit_code == 0, out.output
    advice = json.loads(out.stdout)
    site = next(s for s in advice["sites"] if s["site"] == " > ".join(SEED_PATH))
    assert site["advice"] == "nothing"
    saved = site["saved"][COST_KEYS[0][0]]
    assert saved["advised"] < saved["policy"]
    assert "only as good as the suite" in advice["caveat"]
    bad = runner.invoke(app, ["mutate", "no-such-policy"])
    assert bad.exit_code == 2 and "unknown policy" in bad.output
