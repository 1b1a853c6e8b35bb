"""The HTML viewer, tested as a person would use it: pages for bug-zoo traces, written by the
commands a user runs, loaded in a real headless Chromium. Assertions are on the DOM after the
page's script ran (lanes, step count, the culprit link, the highlighted entries, keyboard
navigation) and on a screenshot, which must not be blank.

Marked `browser`: skipped with a message when no Chromium is installed (`.ci/run` installs the
distribution's package and sets KVMTLB_REQUIRE_BROWSER=1, which turns the skip into a failure).
Screenshots are kept in $KVMTLB_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from chromium import Node, dump_dom, parse, require, screenshot
from typer.testing import CliRunner

from kvmtlb.cli import app

pytestmark = pytest.mark.browser

ROOT = Path(__file__).parent.parent
SCENARIOS = ROOT / "kvmtlb" / "scenarios"


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require()
    out = tmp_path_factory.mktemp("html")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "check",
            str(SCENARIOS / "zap-while-away.toml"),
            "--policy",
            "bug-vmx-migration-flush-guest-only",
            "--policy",
            "kvm-6.18",
            "--jobs",
            "1",
            "--html",
            str(out / "zwa"),
        ],
    )
    assert res.exit_code == 1, res.output  # the bug's violation is not the [expect]ed safe
    res = runner.invoke(
        app,
        [
            "check",
            str(SCENARIOS / "pv-flush-preempted-twice.toml"),
            "--policy",
            "bug-cve-2019-3016-nonatomic-clear",
            "--json",
        ],
    )
    (out / "pv.json").write_text(res.stdout)
    res = runner.invoke(app, ["replay", str(out / "pv.json"), "--html", str(out / "pv.html")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "check",
            str(SCENARIOS / "amd-zap-race-access.toml"),
            str(ROOT / "tests" / "data" / "long-zap-while-away.toml"),
            "--policy",
            "bug-notifier-flush-at-range-end",
            "--policy",
            "bug-vmx-migration-flush-guest-only",
            "--jobs",
            "1",
            "--html",
            str(out / "more"),
        ],
    )
    assert res.exit_code in (0, 1), res.output
    res = runner.invoke(
        app,
        ["cost", "pv-flush-heavy", "--policy", "kvm-5.7", "--policy", "kvm-5.8",
         "--accesses", "400", "--jobs", "1", "--html", str(out / "cost.html")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return {
        "zwa": out / "zwa" / "zap-while-away--bug-vmx-migration-flush-guest-only.html",
        "safe": out / "zwa" / "zap-while-away--kvm-6.18.html",
        "index": out / "zwa" / "index.html",
        "pv": out / "pv.html",
        "amd": out / "more" / "amd-zap-race-access--bug-notifier-flush-at-range-end.html",
        "long": out / "more" / "long-zap-while-away--bug-vmx-migration-flush-guest-only.html",
        "cost": out / "cost.html",
    }


def visible_panel(dom: Node) -> Node:
    shown = [p for p in dom.find("div", cls="panel") if "hidden" not in p.attrs]
    assert len(shown) == 1, [p.attrs.get("id") for p in shown]
    return shown[0]


def selected_step(dom: Node) -> int:
    rows = dom.find("tr", cls="selected")
    assert len(rows) == 1
    return int(rows[0].attrs["data-step"])


def test_counterexample_page(pages: dict[str, Path]) -> None:
    dom = parse(dump_dom(pages["zwa"]))
    lanes = [th.text for th in dom.find("th", cls="lane")]
    assert lanes == ["host", "pCPU0", "pCPU1"]
    assert len(dom.find("tr", cls="step")) == 18  # the initial state and 17 steps
    link = dom.by_id("culprit-link")
    assert link.attrs["href"] == "#step-15"
    assert "culprit" in dom.by_id("row-15").classes
    # by default the last step is shown, with the stale entry marked in pCPU0's MAY-set
    assert selected_step(dom) == 17
    panel = visible_panel(dom)
    assert panel.attrs["id"] == "panel-17"
    stale = [r for r in panel.find("tr", cls="stale") if r.parent is not None]
    assert len(stale) == 2
    root = panel.find("tr", cls="root")
    assert len(root) == 1
    assert "guest-physical" in root[0].text and "GPA 0x10000 → HPA 0x80000" in root[0].text
    explain = dom.by_id("explain").text
    assert "vcpu0 read 0x1000 on pCPU0" in explain and "0x80000" in explain
    assert "INVVPID single-context" in explain


def test_culprit_step_and_entry_keys(pages: dict[str, Path]) -> None:
    """The permalink #step-15 opens the culprit; j, j, k move the entry focus."""
    dom = parse(dump_dom(pages["zwa"], "#step-15", keys=["j", "j", "k"]))
    assert selected_step(dom) == 15
    panel = visible_panel(dom)
    table = panel.find("table", cls="may", data_pcpu="0")[0]
    removed = table.find("tr", cls="removed")
    assert len(removed) == 4
    for row in removed:
        rules = [s.text for s in row.find("span", cls="rule")]
        assert any(r.startswith("intel.invvpid.single") for r in rules), rules
    survived = table.find("tr", cls="survived")
    assert len(survived) == 1 and "GPA 0x10000" in survived[0].text
    focused = panel.find("tr", cls="focused")
    assert len(focused) == 1
    assert dom.by_id("entry-info").text == focused[0].attrs["title"]


def test_arrow_keys_and_scenario_highlight(pages: dict[str, Path]) -> None:
    dom = parse(dump_dom(pages["zwa"], "#step-12", keys=["ArrowRight", "ArrowRight"]))
    assert selected_step(dom) == 14
    assert visible_panel(dom).attrs["id"] == "panel-14"
    # step 14 runs the host's `resume vcpu0 on pcpu0`, line 26 of the scenario
    now = dom.find("span", cls="op-now")
    assert [n.attrs["id"] for n in now] == ["line-26"]
    assert "resume vcpu0 on pcpu0" in now[0].text
    dom = parse(dump_dom(pages["zwa"], "#step-1", keys=["ArrowLeft", "ArrowLeft"]))
    assert selected_step(dom) == 0


def test_screenshot_is_not_blank(pages: dict[str, Path], tmp_path: Path) -> None:
    from matplotlib.image import imread

    png = screenshot(pages["zwa"], tmp_path / "zap-while-away.png", "#step-15")
    keep = os.environ.get("KVMTLB_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / png.name)
    pixels = imread(str(png))
    assert pixels.shape[0] >= 900 and pixels.shape[1] >= 1700
    rgb = pixels[..., :3]
    background = (rgb.min(axis=2) > 0.95).mean()
    assert background < 0.9, "the page is (almost) blank"
    red = ((rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.45) & (rgb[..., 2] < 0.45)).mean()
    assert red > 0.0005, "no red: the violation box and the stale entry are not drawn"


def test_guest_transparency_page_from_replay(pages: dict[str, Path]) -> None:
    dom = parse(dump_dom(pages["pv"]))
    rec = json.loads((pages["pv"].parent / "pv.json").read_text())
    assert len(dom.find("tr", cls="step")) == len(rec["path"]) + 1
    assert [th.text for th in dom.find("th", cls="lane")] == ["host", "pCPU0", "pCPU1"]
    assert dom.by_id("culprit-link").attrs["href"].startswith("#step-")
    panel = visible_panel(dom)
    assert len(panel.find("tr", cls="root")) == 1
    assert "guest-transparency" in dom.by_id("explain").text


def test_amd_page_shows_asid_tags(pages: dict[str, Path]) -> None:
    dom = parse(dump_dom(pages["amd"]))
    root = visible_panel(dom).find("tr", cls="root")
    assert len(root) == 1 and "ASID" in root[0].text
    assert dom.by_id("culprit-link").attrs["href"].startswith("#step-")


def test_long_trace_is_small_and_fast(pages: dict[str, Path]) -> None:
    page = pages["long"]
    assert page.stat().st_size < 2 * 1024 * 1024
    dom = parse(dump_dom(page))
    assert len(dom.find("tr", cls="step")) >= 41
    body = dom.find("body")[0]
    assert int(body.attrs["data-ready-ms"]) < 1000
    # offline: nothing is fetched from elsewhere
    assert not [n for n in dom.walk() if n.attrs.get("src") or n.tag == "link"]


def test_safe_summary_and_index(pages: dict[str, Path]) -> None:
    dom = parse(dump_dom(pages["safe"]))
    assert dom.by_id("verdict").text == "safe"
    assert int(dom.by_id("states").text.replace(",", "")) > 100
    reached = dom.find("tr", cls="reached")
    names = {r.find("td")[0].text for r in reached}
    assert {"vmx_flush_tlb_all", "kvm_flush_remote_tlbs"} <= names
    index = parse(dump_dom(pages["index"]))
    links = {a.attrs["href"] for a in index.find("a")}
    assert pages["zwa"].name in links and pages["safe"].name in links


def test_cost_page(pages: dict[str, Path]) -> None:
    dom = parse(dump_dom(pages["cost"]))
    rows = dom.find("table", cls="cost")[0].find("tbody")[0].find("tr")
    assert len(rows) == 8  # 4 configurations x 2 policies
    assert dom.by_id("plot").find("svg")
