"""scan / report on runs written by the real RunWriter, and the CLI's handling of bad input."""

from __future__ import annotations

import json
import os

import pytest

from collapsewatch.cli import main
from collapsewatch.diagnostics import collapse_onset, scan
from collapsewatch.diagnostics.synthetic import write_synthetic_run
from collapsewatch.store.writer import RunWriter


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    collapsing = write_synthetic_run(
        root, "collapsing", n_steps=80, collapse_at=55, tokens_per_step=64, seed=4
    )
    stable = write_synthetic_run(root, "stable", n_steps=60, collapse_at=None, seed=5)
    return root, collapsing, stable


def test_collapse_onset_definition():
    ok = [0.8] * 20
    assert collapse_onset(range(20), ok) is None
    s = [0.8] * 20 + [0.1] * 12
    # 5-step mean first drops below 0.4 at step 22 (0.8*2+0.1*3)/5=0.38; five such steps in a row
    assert collapse_onset(range(len(s)), s) == 22
    assert collapse_onset(range(len(s)), [0.0] * len(s)) is None  # no peak, no collapse
    dip = [0.8] * 20 + [0.1] * 3 + [0.8] * 10  # a dip shorter than 5 below-half steps
    assert collapse_onset(range(len(dip)), dip) is None


def test_scan_finds_onset_lead_and_root_cause(runs):
    _, collapsing, stable = runs
    f = scan(collapsing)
    d = f.to_dict()
    json.dumps(d)  # JSON-ready
    assert d["collapse_onset_step"] is not None and 55 <= d["collapse_onset_step"] <= 62
    assert (
        d["first_critical_step"] is not None
        and d["lead_steps"] == d["collapse_onset_step"] - d["first_critical_step"]
    )
    assert d["lead_steps"] >= 0
    assert {"step", "detector", "severity", "message"} <= set(d["alerts"][0])
    top = d["root_cause"][0]
    assert (top["token"], top["position_type"]) == ("<|im_end|>", "after_open_tag")
    assert top["first_move_step"] < d["collapse_onset_step"]
    # the format broke with the success (the synthetic run breaks both at once) and never in the stable run
    assert d["format_onset_step"] is not None and abs(d["format_onset_step"] - d["collapse_onset_step"]) <= 3
    assert d["onset_context"]["kind"] == "format_break"
    s = scan(stable).to_dict()
    assert s["onset_context"] is None
    assert s["collapse_onset_step"] is None and s["first_critical_step"] is None and s["lead_steps"] is None
    assert s["format_onset_step"] is None


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"structure_persist_k": 3, "structure_persist_n": 3},
        {"verdict_min_families": 3},
    ],
)
def test_replaying_cached_features_equals_scan(runs, settings):
    """A settings sweep computes each run's features once (lead_vs_false_alarms.py); the alerts it
    gets must be scan's, alert for alert, whatever the settings."""
    from collapsewatch.diagnostics.scan import read_inputs, replay_features, step_features_of

    _, collapsing, _ = runs
    inputs = read_inputs(collapsing)
    features = step_features_of(inputs)
    replayed, _ = replay_features(features, inputs.run.control_tokens, settings)
    scanned = scan(collapsing, config=settings).alerts
    assert any(a.severity == "critical" for a in scanned)  # a comparison with something to compare
    if settings:  # ... and settings that change the alerts, so a replay that ignored them would fail
        assert [(a.step, a.detector) for a in scanned] != [
            (a.step, a.detector) for a in scan(collapsing).alerts
        ]
    assert [(a.step, a.detector, a.severity, a.message) for a in replayed] == [
        (a.step, a.detector, a.severity, a.message) for a in scanned
    ]


def test_scan_recomputes_control_stats_from_tokens(tmp_path):
    run = write_synthetic_run(
        tmp_path, "no_ctrl", n_steps=75, collapse_at=55, tokens_per_step=400, write_ctrl_scalars=False, seed=6
    )
    f = scan(run)
    assert any("recomputed from the captured token rows" in w for w in f.warnings)
    assert f.root_cause and f.root_cause[0]["token"] == "<|im_end|>"


def test_cli_scan_json_and_table(runs, capsys):
    _, collapsing, _ = runs
    assert main(["scan", str(collapsing), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["collapse_onset_step"] is not None
    assert main(["scan", str(collapsing)]) == 0
    text = capsys.readouterr().out
    assert "collapse onset" in text and "at the onset: success fell with the format" in text


def test_cli_set_replays_with_other_detector_settings(runs, capsys):
    """`--set` changes what pages: asking for more agreeing families than there are means no page;
    an unknown key, a bad value or no `=` is a one-line error, exit 2."""
    _, collapsing, _ = runs
    assert main(["scan", str(collapsing), "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    strict = ["--set", "verdict_min_families=9"]  # more families than there are: never pages
    assert main(["scan", str(collapsing), "--json", *strict]) == 0
    out = json.loads(capsys.readouterr().out)
    assert default["first_critical_step"] is not None and out["first_critical_step"] is None
    for bad in (["--set", "verdict_min_family=3"], ["--set", "verdict_min_families=many"], ["--set", "x"]):
        assert main(["scan", str(collapsing), *bad]) == 2
        err = _err(capsys)
        assert len(err.splitlines()) == 1 and "detector setting" in err


def test_cli_preset_is_its_settings_and_set_applies_on_top(runs, capsys):
    """`--preset LS` replays exactly as its four `--set` flags do; names are case-blind; `--set`
    overrides a preset's value; every preset of docs/detection.md is offered."""
    from collapsewatch.diagnostics.cli import PRESET_NAMES, _config
    from collapsewatch.diagnostics.detector_base import PRESETS, MonitorConfig

    _, collapsing, _ = runs
    flags = ["--set", "signal_mixed_max=0.6", "--set", "verdict_requires_if_seen=signal",
             "--set", "sft_structure_persist_k=4", "--set", "sft_structure_persist_n=4"]  # fmt: skip
    assert main(["scan", str(collapsing), "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert main(["scan", str(collapsing), "--json", *flags]) == 0
    by_flags = json.loads(capsys.readouterr().out)
    assert (
        by_flags != default
    )  # LS changes this run's findings (the gate's info alert), so a wrong preset shows
    assert main(["scan", str(collapsing), "--json", "--preset", "ls"]) == 0
    assert json.loads(capsys.readouterr().out) == by_flags
    assert _config([], "LSF") == MonitorConfig(**PRESETS["LSF"]) != MonitorConfig()
    assert _config(["slide_success_drop=0.5"], "LSF").slide_success_drop == 0.5
    assert _config([], "A") == MonitorConfig()
    with pytest.raises(SystemExit) as exited:  # argparse's usage error: no traceback, exit 2
        main(["scan", str(collapsing), "--preset", "B"])
    assert exited.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert tuple(PRESETS) == PRESET_NAMES  # the CLI offers every preset, and only those


def test_cli_report_is_self_contained(runs, tmp_path, capsys):
    _, collapsing, _ = runs
    out = tmp_path / "report.html"
    assert main(["report", str(collapsing), "-o", str(out)]) == 0
    html = out.read_text()
    assert "plotly" in html.lower() and "<script src=" not in html  # plotly.js inline, no network
    assert "Three most telling rollouts" in html and 'class="tok"' in html
    assert "&lt;|im_end|&gt;" in html  # root cause rendered
    assert "At the onset: success fell with the format" in html


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["scan", "report"])
def test_cli_bad_input_is_one_line_exit_2(command, tmp_path, capsys):
    extra = ["-o", str(tmp_path / "r.html")] if command == "report" else []
    assert main([command, str(tmp_path / "missing"), *extra]) == 2
    assert len(_err(capsys).splitlines()) == 1

    empty = RunWriter(tmp_path, "empty", rank=0, world_size=1)
    empty.close()
    assert main([command, str(tmp_path / "empty"), *extra]) == 2
    err = _err(capsys)
    assert "no steps" in err and len(err.splitlines()) == 1

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    assert main([command, str(broken), *extra]) == 2
    assert "run.json" in _err(capsys)


def test_cli_report_bad_output_path(runs, tmp_path, capsys):
    _, collapsing, _ = runs
    assert main(["report", str(collapsing), "-o", str(tmp_path / "no" / "such" / "dir.html")]) == 2
    assert "does not exist" in _err(capsys)


def test_partly_readable_run_gives_findings_with_warning(tmp_path, capsys):
    run = write_synthetic_run(tmp_path, "partial", n_steps=40, collapse_at=None, seed=7)
    victim = sorted((run / "sequences" / "rank=0").glob("*.parquet"))[0]
    victim.write_bytes(b"this is not parquet")
    assert main(["scan", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert any("corrupt" in w for w in out["warnings"])
    assert out["steps"] == 40
    os.remove(victim)
