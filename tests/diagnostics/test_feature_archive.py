"""A feature archive replays to the same findings as the run it came from, and bad files say so."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from collapsewatch.diagnostics.feature_archive import load_archive, save_archive
from collapsewatch.diagnostics.scan import findings_of, read_inputs, step_features_of
from collapsewatch.diagnostics.synthetic import write_synthetic_run
from collapsewatch.errors import UserError


def _same_findings(a, b) -> None:
    key = [(x.step, x.detector, x.severity, x.message, x.value, x.baseline) for x in a.alerts]
    assert key == [(x.step, x.detector, x.severity, x.message, x.value, x.baseline) for x in b.alerts]
    for name in (
        "run",
        "steps",
        "collapse_onset_step",
        "format_onset_step",
        "first_critical_step",
        "lead_steps",
        "onset_context",
    ):
        assert getattr(a, name) == getattr(b, name), name
    assert a.root_cause == b.root_cause
    pd.testing.assert_frame_equal(a.timeline, b.timeline)


def archived_round_trip(run_dir, path, config=None):
    inputs = read_inputs(run_dir)
    features = step_features_of(inputs)
    original = findings_of(inputs, features, config)
    save_archive(inputs, features, path)
    again_inputs, again_features = load_archive(path)
    return original, findings_of(again_inputs, again_features, config)


def test_archive_replays_to_the_same_findings(tmp_path):
    run = write_synthetic_run(tmp_path, "collapsing", n_steps=80, collapse_at=55, tokens_per_step=64, seed=4)
    original, archived = archived_round_trip(run, tmp_path / "collapsing.parquet")
    assert original.first_critical_step is not None and len(original.alerts) > 3  # something to compare
    _same_findings(original, archived)
    assert any(a.evidence.get("rollouts") for a in original.alerts)  # what is not kept: the rollouts
    assert not any(a.evidence.get("rollouts") for a in archived.alerts)
    # a setting replayed on the archive is the same replay as on the run
    config = {"warmup": 8, "ctrl_page_fold": 5.0}
    _same_findings(*archived_round_trip(run, tmp_path / "again.parquet", config))


def test_archive_is_small_plain_parquet(tmp_path):
    run = write_synthetic_run(tmp_path, "stable", n_steps=40, collapse_at=None, seed=2)
    path = tmp_path / "stable.parquet"
    inputs = read_inputs(run)
    save_archive(inputs, step_features_of(inputs), path)
    rows = duckdb.sql(
        f"select kind, count(distinct step) as steps from '{path}' group by kind order by kind"
    ).fetchall()
    assert rows == [("derived", 40), ("scalar", 40)]
    assert path.stat().st_size < sum(p.stat().st_size for p in run.rglob("*.parquet"))
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_archives_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="no feature archive"):
        load_archive(tmp_path / "missing.parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="not a readable feature archive"):
        load_archive(garbage)
    other = tmp_path / "other.parquet"
    pd.DataFrame({"step": [1], "value": [0.5]}).to_parquet(other)
    with pytest.raises(UserError, match="not a readable feature archive"):
        load_archive(other)
