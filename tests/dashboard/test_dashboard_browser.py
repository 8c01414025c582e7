"""The dashboard in a real headless Chromium: runs list -> run -> step -> rollout, live steps, crashes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from collapsewatch.dashboard.synthetic import SyntheticRun

pytestmark = pytest.mark.filterwarnings("ignore:collapsewatch. skipping corrupt file:RuntimeWarning")

GRAPH = "#overview-graph .js-plotly-plot .main-svg"


def last_x(page, graph_id: str = "overview-graph", trace: int = 0):
    return page.evaluate(
        f"() => {{ const g = document.querySelector('#{graph_id} .js-plotly-plot'); const x = g && g.data[{trace}].x;"
        " return x && x.length ? x[x.length - 1] : null; }"
    )


def test_runs_list_shows_status_steps_alerts_and_sparklines(served, page, screenshot) -> None:
    page.goto(served.base + "/")
    page.wait_for_selector("table.runs tbody tr[data-run='collapse-s0']")
    row = page.locator("tr[data-run='collapse-s0']")
    assert "finished" in row.inner_text()
    assert "40" in row.locator("td.num").first.inner_text()
    assert row.locator("td.num").nth(2).inner_text() == "2"  # alerts
    assert row.locator("img.spark").count() == 1
    assert "crashed" in page.locator("tr[data-run='crashed-s0']").inner_text()
    # an unreadable run.json: the run is not listed, and the page says why instead of failing
    assert page.locator("tr[data-run='badmeta-s0']").count() == 0
    assert "badmeta-s0" in page.inner_text("#runs-banner .banner.warning")
    screenshot(page, "runs-list")
    assert page.js_errors == []


def test_open_run_then_step_then_rollout(served, page, screenshot) -> None:
    page.goto(served.base + "/")
    page.click("tr[data-run='collapse-s0'] a.run-link")
    page.wait_for_selector(GRAPH)
    assert page.url.endswith("/run/collapse-s0")
    titles = page.evaluate(
        "document.querySelector('#overview-graph .js-plotly-plot').layout.annotations.map(a => a.text)"
    )
    assert any("Structural states" in t for t in titles)
    assert any("after open tag" in t for t in titles)
    assert last_x(page) == 39
    # alert lines cross every chart: one shape per alert in the layout
    assert (
        page.evaluate("document.querySelector('#overview-graph .js-plotly-plot').layout.shapes.length") == 2
    )
    screenshot(page, "overview")

    # clicking a chart opens that step
    box = page.locator("#overview-graph .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_url(re.compile(r".*/run/collapse-s0/step/\d+$"), timeout=15_000)
    page.wait_for_selector("#groups .chip")
    page.go_back()
    page.wait_for_selector(GRAPH)

    page.fill("#step-input", "30")
    page.click("#step-open")
    page.wait_for_selector("#groups .chip")
    assert page.url.endswith("/run/collapse-s0/step/30")
    assert page.locator("#groups .group").count() == 4
    started = time.monotonic()
    page.click("#groups .chip-wrap[data-seq='5'] a")
    page.wait_for_selector("#rollout[data-seq='5'] #rollout-frame")
    frame = page.frame_locator("#rollout-frame")
    frame.locator(".tok").first.wait_for()
    assert time.monotonic() - started < 10
    page.wait_for_selector("#groups .chip-wrap.selected[data-seq='5']")
    assert page.locator("#groups .chip-wrap.selected").count() == 1
    assert frame.locator(".tok").count() > 3
    assert frame.locator(".tok.ctrl").count() >= 1
    title = frame.locator(".tok.ctrl").first.get_attribute("title")
    assert "p=" in title and "entropy=" in title and "top alternatives" in title
    plain = frame.locator(".tok:not(.ctrl):not(.tool)").first
    before = plain.get_attribute("style")
    page.click("text=entropy")
    page.wait_for_selector("#rollout-tokens[data-color-by='entropy'] #rollout-frame")
    frame = page.frame_locator("#rollout-frame")
    frame.locator(".tok").first.wait_for()
    assert frame.locator(".tok:not(.ctrl):not(.tool)").first.get_attribute("style") != before
    screenshot(page, "step-rollout")
    assert page.js_errors == []


def test_a_healthy_rollout_shows_tool_output_greyed(served, page) -> None:
    page.goto(served.base + "/run/stable-s0/step/3")
    page.wait_for_selector("#groups .chip")
    seq = page.locator("#groups .chip-wrap:has(a.state-healthy_response)").first.get_attribute("data-seq")
    page.click(f"#groups .chip-wrap[data-seq='{seq}'] a")
    frame = page.frame_locator("#rollout-frame")
    frame.locator(".turn.tool .tok.tool").first.wait_for()
    assert frame.locator(".turn.turn").count() >= 2
    assert "tool output" in frame.locator(".turn.tool .turn-label").first.text_content()


def test_a_step_written_during_the_test_appears_without_reload(
    served, runs_root: Path, page, screenshot
) -> None:
    live = SyntheticRun(runs_root, "live-s0", collapse_at=None, seed=5)
    try:
        for step in range(5):
            live.write_step(step)
        time.sleep(0.3)
        page.goto(served.base + "/run/live-s0")
        page.wait_for_selector(GRAPH)
        assert page.inner_text("#run-status") == "live"
        assert page.get_attribute("#run-steps", "data-last-step") == "4"
        page.evaluate("window.__marker = 'same page'")
        written = time.monotonic()
        live.write_step(5)
        page.wait_for_selector("#run-steps[data-last-step='5']", timeout=10_000)
        page.wait_for_function(
            "() => { const g = document.querySelector('#overview-graph .js-plotly-plot');"
            " return g && g.data[0].x[g.data[0].x.length - 1] === 5; }",
            timeout=10_000,
        )
        latency = time.monotonic() - written
        assert page.evaluate("window.__marker") == "same page"  # no reload happened
        assert latency < 10
        screenshot(page, "live")
    finally:
        live.close("crashed")
    page.wait_for_selector("#run-status:has-text('crashed')", timeout=10_000)


def test_crashed_and_corrupt_runs_show_a_badge_or_banner_not_an_error(served, page, screenshot) -> None:
    page.goto(served.base + "/run/crashed-s0")
    page.wait_for_selector(GRAPH)
    assert page.inner_text("#run-status") == "crashed"
    page.goto(served.base + "/run/corrupt-s0")
    page.wait_for_selector("#run-banner .banner.warning")
    assert "corrupt file skipped" in page.inner_text("#run-banner")
    assert "step-00000099.parquet" in page.inner_text("#run-banner")
    page.wait_for_selector(GRAPH)
    assert last_x(page) == 5
    screenshot(page, "corrupt-banner")
    assert page.js_errors == []


def test_alerts_timeline_links_to_evidence(served, page, screenshot) -> None:
    page.goto(served.base + "/run/collapse-s0/alerts")
    page.wait_for_selector("#alerts-graph .main-svg")
    cards = page.locator(".alert-card")
    assert cards.count() == 2
    assert "control_spike" in cards.first.inner_text()
    screenshot(page, "alerts")
    cards.first.locator("a.evidence-link").click()
    page.frame_locator("#rollout-frame").locator(".tok").first.wait_for()
    assert "/run/collapse-s0/step/21" in page.url and "seq=" in page.url


def test_comparison_overlays_two_runs(served, page, screenshot) -> None:
    page.goto(served.base + "/compare?runs=collapse-s0,stable-s0")
    page.wait_for_selector("#compare-graph .main-svg")
    names = page.evaluate("document.querySelector('#compare-graph .js-plotly-plot').data.map(t => t.name)")
    assert {"collapse-s0", "stable-s0"} <= set(names)
    screenshot(page, "compare")


def test_unknown_run_is_a_404_page_in_the_browser(served, page) -> None:
    response = page.goto(served.base + "/run/..%2F..%2Fetc")
    assert response.status == 404
    response = page.goto(served.base + "/run/no-such-run")
    assert response.status == 404
