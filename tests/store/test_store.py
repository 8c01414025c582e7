"""The run store's promises: exact round trips, crash safety, live reads, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import collapsewatch as cw
from collapsewatch import schema
from collapsewatch.store import layout
from collapsewatch.store.writer import RunWriter, compact_rank

HERE = Path(__file__).parent
WRITER = [sys.executable, str(HERE / "writer_process.py")]
sys.path.insert(0, str(HERE))
from concurrent_reader import row_counts_during  # noqa: E402
from writer_process import CONTROL, step_data  # noqa: E402


def run_writer(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*WRITER, str(root), *extra], stdout=subprocess.PIPE, text=True)


def test_two_rank_round_trip_reads_back_every_column(tmp_path: Path) -> None:
    procs = [run_writer(tmp_path, "--rank", str(r), "--world-size", "2", "--steps", "6") for r in (0, 1)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    run = cw.open_run(tmp_path / "run")
    assert run.status == "finished"
    assert run.control_tokens == ["<tool_call>", "<|im_end|>"]
    tokens = run.tokens(decode=False)
    sequences = run.sequences()
    scalars = run.scalars()
    for rank in (0, 1):
        for step in range(6):
            want = step_data(step, rank)
            tok = tokens[(tokens["rank"] == rank) & (tokens["step"] == step)].reset_index(drop=True)
            for col in ("seq", "pos", "token_id", "cq_0", "cq_1"):
                np.testing.assert_array_equal(tok[col].to_numpy(), want["tokens"][col])
            for col in ("logprob", "entropy"):  # stored with 12 mantissa bits
                np.testing.assert_allclose(tok[col].to_numpy(), want["tokens"][col], rtol=2.5e-4)
            seq = sequences[(sequences["rank"] == rank) & (sequences["step"] == step)].reset_index(drop=True)
            assert list(seq["uid"]) == want["sequences"]["uid"]
            assert list(seq["text"]) == want["sequences"]["text"]
            assert [list(t) for t in seq["turn_texts"]] == want["sequences"]["turn_texts"]
            np.testing.assert_array_equal(seq["reward"].to_numpy(), want["sequences"]["reward"])
            np.testing.assert_array_equal(seq["advantage"].to_numpy(), want["sequences"]["advantage"])
            sc = scalars[(scalars["rank"] == rank) & (scalars["step"] == step)]
            np.testing.assert_array_equal(sc["value"].to_numpy(), want["steps"]["value"])


def test_sigkill_mid_run_keeps_completed_steps_and_reads_as_crashed(tmp_path: Path) -> None:
    proc = run_writer(tmp_path, "--steps", "8", "--no-close")
    lines = []
    assert proc.stdout is not None
    while len(lines) < 8:
        lines.append(proc.stdout.readline())
    time.sleep(0.5)  # steps are flushed by the writer thread
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    run = cw.open_run(tmp_path / "run")
    assert run.status == "crashed"
    assert sorted(run.sequences()["step"].unique()) == list(range(8))
    assert not list(tmp_path.rglob("*.tmp"))
    out = subprocess.run(
        [sys.executable, "-m", "collapsewatch", "runs", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0 and "crashed" in out.stdout


def test_reader_polling_during_writes_never_fails(tmp_path: Path) -> None:
    proc = run_writer(tmp_path, "--steps", "60", "--sleep", "0.02")
    seen = 0
    errors = []
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        try:
            if (tmp_path / "run" / "run.json").exists():
                run = cw.open_run(tmp_path / "run")
                seen = max(seen, len(run.tokens()["step"].unique()), 0)
                run.steps()
                cw.list_runs(tmp_path)
        except Exception as exc:  # any failure is a bug
            errors.append(repr(exc))
    assert proc.wait(timeout=60) == 0
    assert errors == []
    assert seen > 0
    assert len(cw.open_run(tmp_path / "run").tokens()["step"].unique()) == 60


def test_compaction_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "r", compact_on_close=False)
    for step in range(50):
        writer.write("sequences", step, {"seq": np.arange(4), "reward": np.full(4, float(step))})
    writer.close()
    run = cw.open_run(tmp_path / "r")
    counts, _ = row_counts_during(run, lambda: compact_rank(tmp_path / "r", "sequences", 0))
    assert set(counts) == {200}
    assert [p.name for p in run.files("sequences")] == ["steps-00000000-00000049.parquet"]


def test_corrupt_and_tmp_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    with RunWriter(tmp_path, "r", compact_on_close=False) as writer:
        for step in range(3):
            writer.write("steps", step, {"name": ["loss"], "value": [1.0 + step], "time": [0.0]})
    steps_dir = layout.table_dir(tmp_path / "r", "steps", 0)
    (steps_dir / "step-00000001.parquet").write_bytes(b"PAR1 garbage")
    (steps_dir / "step-00000007.parquet.tmp").write_bytes(b"half")
    run = cw.open_run(tmp_path / "r")
    with pytest.warns(RuntimeWarning, match="step-00000001.parquet"):
        frame = run.steps()
    assert list(frame["step"]) == [0, 2]
    assert run.bad_files == [steps_dir / "step-00000001.parquet"]


def test_run_json_records_library_versions(tmp_path: Path) -> None:
    """A run that does not reproduce elsewhere says which libraries differed."""
    writer = RunWriter(tmp_path, "r")
    writer.close(status="finished")
    versions = json.loads((tmp_path / "r" / "run.json").read_text())["versions"]
    assert versions["python"].count(".") == 2
    assert versions["pyarrow"] == pa.__version__ and versions["numpy"] == np.__version__


def test_stale_heartbeat_and_newer_schema(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "r")
    writer.close(status="finished")
    beat_path = layout.heartbeat_path(tmp_path / "r", 0)
    beat = json.loads(beat_path.read_text())
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    layout.atomic_write_json(
        beat_path, {**beat, "status": "running", "host": "elsewhere", "updated_at": time.time() - 999}
    )
    layout.atomic_write_json(tmp_path / "r" / "run.json", {**meta, "status": "running"})
    assert cw.open_run(tmp_path / "r").status == "crashed"
    layout.atomic_write_json(
        tmp_path / "r" / "run.json", {**meta, "schema_version": schema.SCHEMA_VERSION + 1}
    )
    with pytest.raises(cw.RunError, match="upgrade collapsewatch"):
        cw.open_run(tmp_path / "r")


def test_unwritable_run_directory_turns_capture_off_without_raising(tmp_path: Path) -> None:
    import shutil

    writer = RunWriter(tmp_path, "r", compact_on_close=False)
    steps_dir = layout.table_dir(tmp_path / "r", "steps", 0)
    shutil.rmtree(steps_dir)
    steps_dir.write_text("not a directory")  # fails for root too, unlike a chmod
    with pytest.warns(RuntimeWarning, match="capture is off"):
        writer.write("steps", 0, {"name": ["loss"], "value": [1.0], "time": [0.0]})
        writer.flush_step(0)
        writer.close()
    assert writer.enabled is False and writer.failures["write_error"] == 1


def test_write_error_from_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collapsewatch.store import writer as writer_module

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    writer = RunWriter(tmp_path, "r", compact_on_close=False)
    monkeypatch.setattr(writer_module, "parquet_write", disk_full)
    with pytest.warns(RuntimeWarning, match="No space left"):
        writer.write("steps", 0, {"name": ["loss"], "value": [1.0], "time": [0.0]})
        writer.flush_step(0)
        writer.close()
    assert writer.enabled is False
    assert writer.write("steps", 1, {"name": ["loss"], "value": [1.0], "time": [0.0]}) is False
    beat = json.loads(layout.heartbeat_path(tmp_path / "r", 0).read_text())
    assert beat["failures"] == {"write_error": 1}


def test_bad_batch_is_counted_not_raised(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="bad_batch"), RunWriter(tmp_path, "r") as writer:
        writer.write("steps", 0, {"nope": [1]})
        writer.write("steps", 0, {"name": ["loss"], "value": [2.0], "time": [0.0]})
    assert writer.failures["bad_batch"] == 1
    assert cw.open_run(tmp_path / "r").steps()["loss"].tolist() == [2.0]


def test_uncaught_exception_marks_run_crashed(tmp_path: Path) -> None:
    code = (
        "from collapsewatch.store.writer import RunWriter\n"
        f"w = RunWriter({str(tmp_path)!r}, 'r')\n"
        "w.write('steps', 0, {'name': ['loss'], 'value': [1.0], 'time': [0.0]})\n"
        "raise RuntimeError('boom')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1
    run = cw.open_run(tmp_path / "r")
    assert run.status == "crashed"
    assert run.steps()["loss"].tolist() == [1.0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "/no/such/root"], "no such runs folder"),
        (["inspect", "/no/such/run"], "no such run"),
        (["inspect", "{file}"], "not a collapsewatch run"),
        (["inspect", "{bad}"], "unreadable run.json"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    args = [a.format(file=tmp_path / "file.txt", bad=tmp_path / "bad") for a in args]
    out = subprocess.run([sys.executable, "-m", "collapsewatch", *args], capture_output=True, text=True)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_inspect_shows_tables(tmp_path: Path) -> None:
    with RunWriter(tmp_path, "r", control_tokens=CONTROL) as writer:
        for table, columns in step_data(0, 0).items():
            writer.write(table, 0, columns)
    out = subprocess.run(
        [sys.executable, "-m", "collapsewatch", "inspect", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    assert "schema version 1" in out.stdout and "tokens" in out.stdout and "40" in out.stdout


def test_sql_and_raw_readers_agree(tmp_path: Path) -> None:
    import duckdb

    with RunWriter(tmp_path, "r", control_tokens=CONTROL) as writer:
        for step in range(4):
            for table, columns in step_data(step, 0).items():
                writer.write(table, step, columns)
    run = cw.open_run(tmp_path / "r")
    ours = run.sql("SELECT step, avg(entropy) AS e FROM tokens GROUP BY step ORDER BY step")
    raw = duckdb.sql(
        f"SELECT step, avg(entropy) AS e FROM read_parquet('{tmp_path}/r/tokens/*/*.parquet', hive_partitioning=true) "
        "GROUP BY step ORDER BY step"
    ).df()
    pd.testing.assert_frame_equal(ours, raw)


def test_polars_reads_a_run_with_hive_ranks(tmp_path: Path) -> None:
    """The run format is plain Parquet: Polars reads it without collapsewatch."""
    import polars as pl

    with RunWriter(tmp_path, "r", control_tokens=CONTROL, rank=1, world_size=2) as writer:
        for step in range(3):
            for table, columns in step_data(step, 1).items():
                writer.write(table, step, columns)
    frame = pl.read_parquet(tmp_path / "r" / "tokens" / "*" / "*.parquet", hive_partitioning=True)
    assert frame.height == 3 * 40
    assert set(frame["rank"].to_list()) == {1}
    assert frame["cq_0"].dtype == pl.UInt8
    ours = cw.open_run(tmp_path / "r").tokens(decode=False)
    np.testing.assert_array_equal(
        frame.sort(["step", "pos"])["token_id"].to_numpy(), ours["token_id"].to_numpy()
    )
