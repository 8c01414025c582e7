"""A writer opened on an existing run: run.json merged, replayed steps set aside, nothing lost."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

import collapsewatch as cw
from collapsewatch.store import layout
from collapsewatch.store.resume import SUPERSEDED_DIR, supersede_steps
from collapsewatch.store.writer import RunWriter

sys.path.insert(0, str(Path(__file__).parent))
from concurrent_reader import row_counts_during  # noqa: E402


def _write_steps(writer: RunWriter, steps: range, reward: float) -> None:
    for step in steps:
        writer.write("sequences", step, {"seq": np.arange(4), "reward": np.full(4, reward)})
        writer.write("steps", step, {"name": ["loss"], "value": [reward]})
        writer.flush_step(step)


def _superseded(run_dir: Path, table: str) -> list[Path]:
    return sorted((run_dir / SUPERSEDED_DIR).rglob(f"{table}/rank=*/*"))


def test_resume_keeps_run_json_and_reads_each_step_once(tmp_path: Path) -> None:
    first = RunWriter(tmp_path, "r", config={"lr": 1e-5, "seed": 0, "betas": (0.9, 0.99)})
    first.update_meta(warm_start_eval={"success": 0.5})
    _write_steps(first, range(1, 7), reward=1.0)
    first.close(status="crashed")
    before = cw.open_run(tmp_path / "r").meta

    # the checkpoint was step 3: steps 4-6 are trained again, with another learning rate
    second = RunWriter(tmp_path, "r", config={"lr": 5e-6, "seed": 0, "betas": (0.9, 0.99)})
    _write_steps(second, range(4, 9), reward=2.0)
    second.close()

    run = cw.open_run(tmp_path / "r")
    meta = run.meta
    assert meta["status"] == "finished" and meta["started_at"] == before["started_at"]
    assert meta["warm_start_eval"] == {"success": 0.5}  # a key the first segment set survives
    (record,) = meta["resumes"]
    assert record["from_step"] == 3 and record["previous_status"] == "crashed"
    assert record["changed"] == {"lr": [1e-5, 5e-6]}  # tuples compare as run.json's lists
    assert record["superseded_rows"] == 3 * 4 + 3 * 1
    seqs = run.sequences()
    assert seqs.groupby("step").size().to_dict() == {s: 4 for s in range(1, 9)}
    assert (seqs.query("step <= 3")["reward"] == 1.0).all() and (
        seqs.query("step >= 4")["reward"] == 2.0
    ).all()
    scalars = run.scalars()
    assert (
        scalars["step"].tolist() == list(range(1, 9)) and (scalars.query("step >= 4")["value"] == 2.0).all()
    )
    # DuckDB over the table's own glob sees the same (superseded/ lies outside it)
    count = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/r/sequences/rank=*/*.parquet')")
    assert count.fetchall() == [(8 * 4,)]
    old = pq.read_table(_superseded(tmp_path / "r", "sequences")).to_pandas()
    assert sorted(old["step"].unique()) == [4, 5, 6] and (old["reward"] == 1.0).all()


def test_splitting_a_compacted_file_never_hides_or_doubles_a_row(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "r")
    _write_steps(writer, range(50), reward=1.0)
    writer.close()  # one compacted file, steps 0-49
    run = cw.open_run(tmp_path / "r")
    counts, moved = row_counts_during(run, lambda: supersede_steps(tmp_path / "r", 0, 25))
    assert set(counts) <= {200, 100} and counts[-1] == 100  # all rows, then the first 25 steps
    assert counts == sorted(counts, reverse=True)  # never fewer, then more
    assert moved == 25 * 4 + 25
    assert [p.name for p in run.files("sequences")] == ["steps-00000000-00000024.parquet"]
    old = pq.read_table(_superseded(tmp_path / "r", "sequences")).to_pandas()
    assert sorted(old["step"].unique()) == list(range(25, 50))


def test_two_resumes_from_one_step_keep_both_superseded_copies(tmp_path: Path) -> None:
    for reward in (1.0, 2.0, 3.0):
        writer = RunWriter(tmp_path, "r", compact_on_close=False)
        _write_steps(writer, range(3, 6) if reward > 1 else range(1, 6), reward=reward)
        writer.close()
    files = _superseded(tmp_path / "r", "sequences")
    rewards = sorted({float(pq.read_table(f)["reward"][0].as_py()) for f in files})
    assert rewards == [1.0, 2.0] and len(files) == 6  # steps 3-5, twice; none overwritten
    assert {f.name for f in files} >= {"step-00000003.parquet", "step-00000003.parquet.1"}
    assert (cw.open_run(tmp_path / "r").sequences()["reward"].iloc[-6:] == 3.0).all()
    assert [r["from_step"] for r in cw.open_run(tmp_path / "r").meta["resumes"]] == [2, 2]


def test_each_rank_sets_aside_only_its_own_rows(tmp_path: Path) -> None:
    for rank in (0, 1):
        writer = RunWriter(tmp_path, "r", rank=rank, world_size=2)
        _write_steps(writer, range(1, 5), reward=1.0)
        writer.close()
    meta_before = (tmp_path / "r" / layout.RUN_JSON).read_text()
    writer = RunWriter(tmp_path, "r", rank=1, world_size=2)  # rank 1 restarts alone
    _write_steps(writer, range(3, 5), reward=2.0)
    writer.close()
    assert (tmp_path / "r" / layout.RUN_JSON).read_text() == meta_before  # rank 0 owns run.json
    seqs = cw.open_run(tmp_path / "r").sequences()
    assert seqs.groupby(["rank", "step"]).size().eq(4).all() and len(seqs) == 2 * 4 * 4
    assert (seqs.query("rank == 0")["reward"] == 1.0).all()
    assert (seqs.query("rank == 1 and step >= 3")["reward"] == 2.0).all()
    assert all("rank=1" in str(p) for p in _superseded(tmp_path / "r", "sequences"))


def test_appending_after_the_last_step_moves_nothing(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "r")
    _write_steps(writer, range(1, 4), reward=1.0)
    writer.close()
    writer = RunWriter(tmp_path, "r")
    _write_steps(writer, range(4, 6), reward=2.0)
    writer.close()
    run = cw.open_run(tmp_path / "r")
    assert run.meta["resumes"][0] | {"at": None} == {
        "at": None, "previous_status": "finished", "changed": {}, "from_step": 3, "superseded_rows": 0,
    }  # fmt: skip
    assert len(run.sequences()) == 5 * 4 and not (tmp_path / "r" / SUPERSEDED_DIR).exists()


def test_an_unreadable_run_json_is_set_aside_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / layout.RUN_JSON).write_text('{"run": "r", "status": "runn')
    writer = RunWriter(tmp_path, "r", config={"lr": 1.0})
    writer.close()
    assert (tmp_path / "r" / "run.json.unreadable").read_text() == '{"run": "r", "status": "runn'
    meta = json.loads((tmp_path / "r" / layout.RUN_JSON).read_text())
    assert meta["config"] == {"lr": 1.0} and meta["resumes"][0]["previous_status"] is None
