"""scan and report on a small run written by the real bundled trainer (tiny model, CPU, a few steps).

Calibration figures on full-length runs live in benchmarks/detection_eval.py, not here.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from collapsewatch.trainer.recipes import recipe
    from collapsewatch.trainer.train import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("real")
    cfg = recipe(
        "collapse",
        steps=4,
        tasks_per_step=2,
        group_size=4,
        sft_steps=5,
        eval_tasks=2,
        checkpoint_every=0,
        device="cpu",
    )
    res = train(cfg, root, progress=False)
    assert res["status"] == "finished"
    return root / "collapse-s0"


@pytest.mark.slow
def test_scan_and_report_on_a_real_trainer_run(real_run, tmp_path):
    import collapsewatch as cw
    from collapsewatch.diagnostics import report, scan

    run = cw.open_run(real_run)
    f = scan(run)
    assert f.steps == 4 and f.onset_series == "success/rate"
    assert f.warnings == []
    # one classifier: the trainer's states/* scalars equal the shares scan derives from turn_texts
    steps = run.steps().set_index("step")
    timeline = f.timeline.set_index("step")
    for state in ("healthy_tool_call", "healthy_response", "text_pollution", "full_collapse"):
        np.testing.assert_allclose(timeline[f"state/{state}"], steps[f"states/{state}"], atol=1e-9)
    # live alerts written by the Recorder are a subset of what scan replays (same detectors, same steps)
    live = {(int(a.step), a.detector) for a in run.alerts().itertuples()}
    assert live <= {(a.step, a.detector) for a in f.alerts}
    out = report(run, tmp_path / "real.html", findings=f)
    html = out.read_text()
    assert 'class="tok"' in html
    assert "#" + str(int(run.tokens(steps=[1]).token_id.iloc[0])) + " " not in html  # tokens decoded, not ids
    # the trainer scores its reference conversations every step, and the report plots them
    assert steps["probe/logp/<tool_call>"].notna().all() and (steps["probe/logp_ctrl"] < 0).all()
    assert "reference conversations: cost of the expert" in html
    assert "Resumed after" not in html
    # the package's `report` stays the function once the module behind it is loaded (it was shadowed)
    import collapsewatch.diagnostics as diagnostics

    assert (
        callable(diagnostics.report) and diagnostics.report(run, tmp_path / "again.html", findings=f).exists()
    )


def test_report_says_where_a_run_was_resumed_with_other_settings(real_run, tmp_path):
    import json
    import shutil

    import collapsewatch as cw
    from collapsewatch.diagnostics.html_report import report

    resumed = shutil.copytree(real_run, tmp_path / real_run.name)
    meta = json.loads((resumed / "run.json").read_text())
    meta["resumes"] = [
        {"from_step": 2, "changed": {"err_sft_every": [0, 1]}},
        {"from_step": "bad"},
        {"from_step": 3, "changed": {}, "superseded_rows": 1234},
    ]
    (resumed / "run.json").write_text(json.dumps(meta))
    html = report(cw.open_run(resumed), tmp_path / "resumed.html").read_text()
    assert "Resumed after step 2: err_sft_every 0 → 1." in html and html.count("Resumed after") == 2
    assert "Resumed after step 3: no setting changed (1,234 rows of replayed steps set aside" in html


@pytest.mark.slow
def test_feature_archive_of_a_real_trainer_run(real_run, tmp_path):
    """The archive keeps what the detectors read from a real run, probe series included: replayed
    with a short warm-up (so that detectors can fire in 4 steps), the findings are the run's."""
    from collapsewatch.diagnostics.feature_archive import load_archive, save_archive
    from collapsewatch.diagnostics.scan import findings_of, read_inputs, step_features_of
    from collapsewatch.schema import PROBE_TEXT

    config = {"warmup": 1, "probe_ref_steps": 1, "persist_k": 1, "persist_n": 1}
    inputs = read_inputs(real_run)
    features = step_features_of(inputs)
    original = findings_of(inputs, features, config)
    save_archive(inputs, features, tmp_path / "real.parquet")
    loaded_inputs, loaded = load_archive(tmp_path / "real.parquet")
    again = findings_of(loaded_inputs, loaded, config)
    assert [(a.step, a.detector, a.severity, a.message) for a in again.alerts] == [
        (a.step, a.detector, a.severity, a.message) for a in original.alerts
    ]
    assert again.root_cause == original.root_cause and again.run == "collapse-s0"
    assert [f.scalars[PROBE_TEXT] for f in loaded] == [f.scalars[PROBE_TEXT] for f in features]
    assert [f.derived for f in loaded] == [f.derived for f in features]


def test_trainer_report_broken_share_counts_only_the_steps_after_the_warm_up() -> None:
    import pandas as pd

    from collapsewatch.trainer.report import broken_share

    steps = pd.DataFrame(
        {
            "step": [1, 2, 3, 4],
            "states/text_pollution": [0.9, 0.9, 0.1, 0.3],
            "states/full_collapse": [0, 0, 0.1, 0.1],
        }
    )
    assert broken_share(steps, after=2) == pytest.approx(0.3)  # steps 3-4: 0.2 and 0.4
    assert np.isnan(broken_share(steps, after=4))
    assert np.isnan(broken_share(steps[["step"]], after=0))


@pytest.mark.slow
def test_trainer_report_json_has_the_table_figures_of_a_real_run(real_run, capsys) -> None:
    import json

    import collapsewatch as cw
    from collapsewatch.trainer import report

    assert report.main([str(real_run.parent), "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    steps = cw.open_run(real_run).steps()
    assert row["run"] == "collapse-s0" and row["steps"] == 4
    assert row["last10"] == pytest.approx(steps["success/rate"].mean())
    # the fixture's 4 steps all lie in the 30-step LR warm-up: no share after it, written as null
    assert row["broken_after_warmup"] is None
    assert report.main([str(real_run.parent)]) == 0
    assert "| collapse-s0 |" in capsys.readouterr().out
