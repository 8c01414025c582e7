"""Callback and figure logic without a browser: routes, deltas, downsampling, rollout rendering, CLI."""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd
import pytest
from dash import Patch

from collapsewatch.dashboard import figures, routes
from collapsewatch.dashboard.catalog import RunCatalog
from collapsewatch.dashboard.downsample import MAX_POINTS, keep_indices
from collapsewatch.dashboard.page_run import live_update
from collapsewatch.dashboard.page_step import rollout_panel
from collapsewatch.dashboard.rollout import hover_text, split_turns, token_color
from collapsewatch.dashboard.runcache import RunSnapshot
from collapsewatch.dashboard.synthetic import SyntheticRun
from collapsewatch.dashboard.vocab import Vocab
from collapsewatch.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore:collapsewatch. skipping corrupt file:RuntimeWarning")


# --- routes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "page", "ids", "step"),
    [
        ("/", "runs", (), None),
        ("/run/a", "run", ("a",), None),
        ("/run/a/", "run", ("a",), None),
        ("/run/a/alerts", "alerts", ("a",), None),
        ("/run/a/step/12", "step", ("a",), 12),
        ("/run/a/step/-1", "not_found", (), None),
        ("/run/a/step/1e3", "not_found", (), None),
        ("/run//etc/passwd", "not_found", (), None),
        ("/run/../x", "not_found", (), None),
        ("/run/a/b/c", "not_found", (), None),
        ("/elsewhere", "not_found", (), None),
    ],
)
def test_parse_route(path, page, ids, step) -> None:
    route = routes.parse_route(path)
    assert (route.page, route.run_ids, route.step) == (page, ids, step)


def test_dotdot_parses_as_an_id_that_the_listing_then_refuses(runs_root) -> None:
    assert routes.parse_route("/run/..").run_ids == ("..",)
    catalog = RunCatalog(runs_root)
    assert catalog.resolve("..") is None
    assert catalog.resolve("../outside/secret") is None
    assert catalog.resolve("/etc") is None
    assert catalog.resolve("") is None
    assert catalog.resolve("collapse-s0") is not None


def test_compare_ids_and_hrefs_round_trip() -> None:
    assert routes.compare_ids_from_search("?runs=a,b&runs=c,a") == ["a", "b", "c"]
    assert routes.compare_ids_from_search(routes.compare_href(["x y", "z"]).split("?")[1]) == ["x y", "z"]
    assert routes.step_href("a b", 3, seq=4, rank=1) == "/run/a%20b/step/3?rank=1&seq=4"
    assert routes.run_href("../x") == "/run/..%2Fx"


# --- figures ---------------------------------------------------------------------------------
def _steps_frame(n: int) -> pd.DataFrame:
    steps = np.arange(n)
    return pd.DataFrame(
        {
            "step": steps,
            "reward/mean": np.linspace(1, 0, n),
            "entropy/mean": np.full(n, 0.5),
            "ctrl/</tool_call>/in_call/mean": np.full(n, 1e-3),
            "ctrl/</tool_call>/in_call/p99": np.full(n, 1e-2),
            "ctrl/</tool_call>/in_call/max": np.full(n, 5e-2),
            "ctrl/<|im_end|>/after_open_tag/max": np.full(n, 0.2),
        }
    )


def test_control_columns_keep_tokens_with_slashes() -> None:
    ctrl = figures.control_columns(list(_steps_frame(3).columns))
    assert ctrl["in_call"]["</tool_call>"] == {
        "mean": "ctrl/</tool_call>/in_call/mean",
        "p99": "ctrl/</tool_call>/in_call/p99",
        "max": "ctrl/</tool_call>/in_call/max",
    }
    assert list(ctrl) == ["after_open_tag", "in_call"]  # grammar order, not alphabetical


def test_overview_figure_has_band_alerts_on_every_chart_and_specs() -> None:
    alerts = pd.DataFrame(
        {"step": [5, 7], "detector": ["a", "b"], "severity": ["warning", "critical"], "message": ["m", "n"]}
    )
    snap = RunSnapshot(
        name="r", steps=_steps_frame(10), alerts=alerts, control_tokens=["</tool_call>", "<|im_end|>"]
    )
    fig, specs = figures.overview_figure(snap)
    assert len(fig["data"]) == len(specs)
    assert ["steps", "ctrl/</tool_call>/in_call/p99"] in specs and [
        "steps",
        "ctrl/</tool_call>/in_call/max",
    ] in specs
    band_max = fig["data"][specs.index(["steps", "ctrl/</tool_call>/in_call/max"])]
    assert band_max["fill"] == "tonexty"
    shapes = fig["layout"]["shapes"]
    assert [s["x0"] for s in shapes] == [7, 5]  # critical first
    assert all(s["yref"] == "paper" and s["y0"] == 0 and s["y1"] == 1 for s in shapes)
    import plotly.graph_objects as go

    go.Figure(fig)  # the hand-built dict is a valid plotly figure (validation raises otherwise)


def test_delta_sends_only_steps_after_the_cursor() -> None:
    snap = RunSnapshot(name="r", steps=_steps_frame(10))
    _, specs = figures.overview_figure(snap)
    delta = figures.overview_delta(snap, specs, {"steps": 7, "states": -1})
    reward_index = specs.index(["steps", "reward/mean"])
    assert delta[reward_index][0] == [8, 9]
    assert figures.overview_delta(snap, specs, {"steps": 9}) == {}


def test_probe_row_draws_costs_and_its_delta_follows() -> None:
    frame = _steps_frame(10)
    snap = RunSnapshot(name="r", steps=frame)
    fig, specs = figures.overview_figure(snap)
    assert not any(src == "probe" for src, _ in specs)  # no probe, no row
    frame["probe/logp/<tool_call>"] = -np.geomspace(1e-4, 1e-1, 10)  # being unlearned
    snap = RunSnapshot(name="r", steps=frame)
    assert not figures.specs_match(snap, specs)  # the new series family rebuilds the figure
    fig, specs = figures.overview_figure(snap)
    index = specs.index(["probe", "probe/logp/<tool_call>"])
    assert fig["data"][index]["y"][0] == pytest.approx(1e-4) and fig["data"][index]["y"][-1] == pytest.approx(
        0.1
    )
    assert any("Reference probe" in a["text"] for a in fig["layout"]["annotations"])
    delta = figures.overview_delta(snap, specs, {"steps": 8, "states": -1})
    assert delta[index] == ([9], [pytest.approx(0.1)])
    assert figures.specs_match(snap, specs)
    frame["probe/logp_text"] = -np.linspace(0.8, 2.4, 10)  # the expert's text drifting too
    snap = RunSnapshot(name="r", steps=frame)
    assert not figures.specs_match(snap, specs)
    fig, specs = figures.overview_figure(snap)
    text = fig["data"][specs.index(["probe", "probe/logp_text"])]
    assert text["line"]["dash"] == "dash" and text["y"][-1] == pytest.approx(2.4)


def test_downsampling_keeps_a_one_step_spike() -> None:
    x = np.arange(50_000)
    y = np.random.default_rng(0).normal(0, 0.01, x.size)
    y[31_337] = 5.0
    keep = keep_indices(x, y)
    assert len(keep) <= MAX_POINTS
    assert 31_337 in set(keep.tolist())


def test_comparison_figure_overlays_each_run_on_every_panel() -> None:
    a, b = RunSnapshot(name="a", steps=_steps_frame(5)), RunSnapshot(name="b", steps=_steps_frame(8))
    fig = figures.comparison_figure([a, b])
    assert [t["name"] for t in fig["data"]].count("a") == 6 and [t["name"] for t in fig["data"]].count(
        "b"
    ) == 6
    assert {t["yaxis"] for t in fig["data"]} == {"y", "y2", "y3", "y4", "y5", "y6"}


def test_sparkline_is_an_svg_data_uri() -> None:
    uri = figures.sparkline_svg([0.1, 0.5, float("nan"), 0.9])
    assert uri.startswith("data:image/svg+xml;base64,")


# --- rollout rendering -----------------------------------------------------------------------
def test_split_turns_starts_a_turn_at_turn_start_and_after_tool_output() -> None:
    tokens = pd.DataFrame(
        {
            "pos": range(7),
            "token_id": range(7),
            "position_type": [1, 0, 0, 0, 1, 0, 0],
            "is_tool_output": [False, False, True, True, False, False, False],
        }
    )
    kinds = [(s.kind, [r["pos"] for r in s.rows]) for s in split_turns(tokens)]
    assert kinds == [("turn", [0, 1]), ("tool", [2, 3]), ("turn", [4, 5, 6])]


def test_token_colour_and_hover() -> None:
    assert token_color({"logprob": 0.0}, "prob").endswith(",0.000)")
    assert token_color({"logprob": math.log(1e-3)}, "prob").endswith(",0.850)")
    vocab = Vocab(None, {7: "<tool_call>"})
    text = hover_text(
        {
            "token_id": 7,
            "pos": 3,
            "logprob": math.log(0.5),
            "entropy": 1.25,
            "position_type": 1,
            "p(<tool_call>)": 0.5,
            "top_ids": [7, 8],
            "top_logprobs": [math.log(0.5), math.log(0.3)],
        },
        vocab,
        ["<tool_call>"],
    )
    assert (
        "'<tool_call>'" in text and "p=0.5" in text and "entropy=1.250 nats" in text and "turn_start" in text
    )
    assert "top alternatives" in text and "'⟨8⟩'  0.3" in text


def test_rollout_html_escapes_model_text() -> None:
    from collapsewatch.dashboard.rollout import rollout_html

    tokens = pd.DataFrame(
        {
            "pos": [0, 1],
            "token_id": [1, 2],
            "position_type": [1, 0],
            "is_tool_output": [False, False],
            "is_control": [False, False],
            "logprob": [-0.1, -5.0],
            "entropy": [0.2, 2.0],
        }
    )
    doc = rollout_html(
        tokens, Vocab(None, {1: "<script>alert(1)</script>", 2: "\" onmouseover='x'"}), [], "prob"
    )
    assert "<script>alert" not in doc and "&lt;script&gt;" in doc
    assert "onmouseover='x'" not in doc


# --- callbacks against real runs -------------------------------------------------------------
def test_live_update_patches_only_the_new_step(tmp_path) -> None:
    live = SyntheticRun(tmp_path, "live", seed=3)
    try:
        for step in range(3):
            live.write_step(step)
        catalog = RunCatalog(tmp_path)
        snap = catalog.cache("live").snapshot()
        fig, specs = figures.overview_figure(snap)
        state = {"run": "live", "specs": specs, "cursor": figures.cursor_of(snap)}
        patch, new_state, label, *_ = live_update(catalog, state)
        assert new_state is not None and label == "live"
        live.write_step(3)
        deadline = time.time() + 5
        while time.time() < deadline:
            patch, new_state, *_ = live_update(catalog, state)
            if isinstance(patch, Patch):
                break
            time.sleep(0.1)
        assert isinstance(patch, Patch)
        ops = patch.to_plotly_json()["operations"]
        extends = [op for op in ops if op["operation"] == "Extend"]
        # location is ["data", trace_index, "x"]; scalar traces get only the new step (states are
        # classified in the background and arrive by their own cursor)
        x_values = [
            op["params"]["value"]
            for op in extends
            if op["location"][-1] == "x" and specs[op["location"][1]][0] == "steps"
        ]
        assert x_values and all(v == [3] for v in x_values)
        assert new_state["cursor"]["steps"] == 3
    finally:
        live.close("crashed")
    time.sleep(0.3)  # past the cache's minimum refresh interval
    assert catalog.cache("live").snapshot().status == "crashed"


def test_a_resume_that_replaces_steps_redraws_them_and_marks_where(tmp_path) -> None:
    """A crashed run resumed from an older checkpoint: the cache drops the replaced steps' old
    values even if it never saw the moment they were set aside, and the overview is rebuilt
    with a line and a label where the run continued."""
    from collapsewatch.store.writer import RunWriter

    def segment(steps: range, reward: float, status: str, lr: float) -> None:
        writer = RunWriter(tmp_path, "resumed", config={"lr": lr})
        for step in steps:
            writer.write("steps", step, {"name": ["reward/mean"], "value": [reward]})
            writer.flush_step(step)
        writer.close(status=status)

    segment(range(1, 7), 1.0, "crashed", 1e-5)
    catalog = RunCatalog(tmp_path)
    snap = catalog.cache("resumed").snapshot()
    fig, specs = figures.overview_figure(snap)
    state = {"run": "resumed", "specs": specs, "cursor": figures.cursor_of(snap)}
    assert not any(a.get("text") == "resumed" for a in fig["layout"]["annotations"])
    segment(range(4, 9), 2.0, "finished", 5e-6)  # the checkpoint was step 3's
    time.sleep(0.3)  # past the cache's minimum refresh interval
    fig, new_state, _, _, summary, *_ = live_update(catalog, state)
    assert isinstance(fig, dict) and new_state["cursor"]["resumes"] == 1  # rebuilt, not patched
    assert "resumed after step 3: lr 1e-05 → 5e-06" in summary[1].children
    snap = catalog.cache("resumed").snapshot()
    assert snap.steps.set_index("step")["reward/mean"].to_dict() == {
        1: 1.0,
        2: 1.0,
        3: 1.0,
        **{s: 2.0 for s in range(4, 9)},
    }
    lines = [s for s in fig["layout"]["shapes"] if s["line"].get("dash") == "dash"]
    assert [s["x0"] for s in lines] == [3]
    (label,) = [a for a in fig["layout"]["annotations"] if a.get("text") == "resumed"]
    assert label["x"] == 3 and "lr 1e-05 → 5e-06" in label["hovertext"] and "set aside" in label["hovertext"]
    import plotly.graph_objects as go

    go.Figure(fig)  # a valid plotly figure, the label's "y domain" reference included


def test_structural_states_are_classified_in_the_background_until_the_last_step(runs_root) -> None:
    cache = RunCatalog(runs_root).cache("collapse-s0")
    deadline = time.time() + 20
    while True:
        snap = cache.snapshot()
        if len(snap.states) and int(snap.states["step"].iloc[-1]) == 39:
            break
        assert time.time() < deadline, "states never caught up"
        time.sleep(0.3)
    assert snap.states_source == "turns"
    early, late = snap.states.iloc[:10], snap.states.iloc[-5:]
    assert (
        early["full_collapse"].mean() < 0.1 < late["full_collapse"].mean()
    )  # the generated run collapses at 24
    shares = snap.states[["healthy_tool_call", "healthy_response", "text_pollution", "full_collapse"]].sum(
        axis=1
    )
    assert np.allclose(shares, 1.0)


def test_corrupt_file_becomes_a_warning(runs_root) -> None:
    snap = RunCatalog(runs_root).cache("corrupt-s0").snapshot()
    assert any("corrupt file skipped" in w for w in snap.warnings)
    assert snap.last_step == 5  # the corrupt file's step name alone is not a step


def test_rollout_panel_renders_control_and_tool_tokens(runs_root) -> None:
    catalog = RunCatalog(runs_root)
    html_text = str(rollout_panel(catalog, "stable-s0", 2, 0, 0, "prob"))
    assert "tok ctrl" in html_text
    assert "assistant turn 1" in html_text
    assert "⟨" not in html_text  # tokens decoded with the run's tokenizer.json
    missing = str(rollout_panel(catalog, "stable-s0", 2, 999, 0, "prob"))
    assert "rollout-missing" in missing


# --- CLI -------------------------------------------------------------------------------------
def test_cli_registers_dashboard_and_refuses_a_missing_root(tmp_path) -> None:
    from collapsewatch.dashboard.cli import register, run_dashboard

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dashboard", str(tmp_path / "nope")])
    assert (args.host, args.port) == ("127.0.0.1", 8050)
    with pytest.raises(UserError, match="no such runs folder"):
        run_dashboard(args)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = parser.parse_args(["dashboard", str(tmp_path), "--port", str(taken.getsockname()[1])])
        with pytest.raises(UserError, match="in use"):
            run_dashboard(args)


def test_cli_serves_the_dashboard_on_localhost(runs_root) -> None:
    """`collapsewatch dashboard ROOT --port P` through the real entry point, answered over HTTP."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "collapsewatch", "dashboard", str(runs_root), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/run/collapse-s0", timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.time() < deadline, "dashboard did not start"
                time.sleep(0.3)
        assert b"collapsewatch" in body
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/run/..%2F..%2Fetc", timeout=5)
        assert err.value.code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_dashboard_never_imports_torch(runs_root) -> None:
    """Architecture rule: the dashboard reads run directories only; torch stays out of its process."""
    import subprocess
    import sys

    code = (
        "import sys; from collapsewatch.dashboard.app import create_app, render_page;"
        "app = create_app(sys.argv[1]);"
        "[render_page(app.catalog, p, '') for p in ('/', '/run/collapse-s0', '/run/collapse-s0/step/3')];"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(runs_root)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
