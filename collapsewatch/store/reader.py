"""Reading runs: `open_run` and `list_runs`, DuckDB inside, pandas out.

Works on a run still being written (only whole files are visible), ignores ``*.tmp``, skips a
corrupt file with a warning that names it, and reports a run whose writer vanished as crashed.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from collapsewatch import schema
from collapsewatch.errors import RunError
from collapsewatch.store import layout

STALE_HEARTBEAT_S = 120.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) still answers kill(0): it is not alive.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def is_run_dir(path: Path) -> bool:
    return (path / layout.RUN_JSON).is_file() or (path / layout.HEARTBEAT_DIR).is_dir()


class Run:
    """A run directory, read-only. Cheap to create; every query lists files afresh."""

    def __init__(self, path: str | os.PathLike[str], stale_after_s: float = STALE_HEARTBEAT_S) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.stale_after_s = stale_after_s
        if not self.path.exists():
            raise RunError(f"no such run: {self.path}")
        if not self.path.is_dir() or not is_run_dir(self.path):
            raise RunError(f"not a collapsewatch run (no run.json): {self.path}")
        self._bad_files: set[Path] = set()
        self._checked: dict[Path, tuple[int, float, int]] = {}  # path -> (size, mtime, rows)
        self._db = duckdb.connect()
        self._db_lock = threading.Lock()
        self.meta = self._load_meta()

    # ----- metadata ---------------------------------------------------------------------------
    def _load_meta(self) -> dict[str, Any]:
        path = self.path / layout.RUN_JSON
        try:
            meta = _read_json(path)
        except (OSError, ValueError) as exc:
            raise RunError(f"unreadable run.json in {self.path}: {exc}") from None
        if meta is None:  # another rank got here before rank 0 wrote run.json
            meta = {
                "schema_version": schema.SCHEMA_VERSION,
                "run": self.name,
                "status": "running",
                "control_tokens": [],
            }
        if not isinstance(meta, dict):
            raise RunError(f"unreadable run.json in {self.path}: not a JSON object")
        version = meta.get("schema_version")
        if not isinstance(version, int):
            raise RunError(f"unreadable run.json in {self.path}: no schema_version")
        if version > schema.SCHEMA_VERSION:
            raise RunError(
                f"run {self.path} uses run-format version {version}; this collapsewatch reads up to "
                f"{schema.SCHEMA_VERSION}: upgrade collapsewatch"
            )
        return meta

    def refresh(self) -> Run:
        self.meta = self._load_meta()
        return self

    @property
    def control_tokens(self) -> list[str]:
        tokens = sorted(self.meta.get("control_tokens") or [], key=lambda t: t["index"])
        return [t["text"] for t in tokens]

    def heartbeats(self) -> list[dict[str, Any]]:
        beats = []
        for path in sorted((self.path / layout.HEARTBEAT_DIR).glob("rank=*.json")):
            try:
                beat = _read_json(path)
            except (OSError, ValueError):
                continue
            if isinstance(beat, dict):
                beats.append(beat)
        return beats

    @property
    def status(self) -> str:
        """`running`, `finished` or `crashed` (a vanished writer or a stale heartbeat is a crash)."""
        self.meta = self._load_meta()
        beats = self.heartbeats()
        statuses = {b.get("status") for b in beats} | {self.meta.get("status")}
        if "crashed" in statuses:
            return "crashed"
        if beats and all(b.get("status") == "finished" for b in beats):
            return "finished"
        if self.meta.get("status") == "finished" and not any(b.get("status") == "running" for b in beats):
            return "finished"
        now, host = layout.now(), layout.this_host()
        for beat in beats:
            if beat.get("status") != "running":
                continue
            if beat.get("host") == host and isinstance(beat.get("pid"), int) and not _pid_alive(beat["pid"]):
                return "crashed"
            if now - float(beat.get("updated_at") or 0) > self.stale_after_s:
                return "crashed"
        return "running"

    @property
    def last_update(self) -> float | None:
        times = [float(b["updated_at"]) for b in self.heartbeats() if b.get("updated_at")]
        return max(times) if times else self.meta.get("started_at")

    @property
    def last_step(self) -> int | None:
        files = layout.list_data_files(self.path, "steps") + layout.list_data_files(self.path, "sequences")
        return max((f.last_step for f in files), default=None)

    @property
    def bad_files(self) -> list[Path]:
        return sorted(self._bad_files)

    # ----- files ------------------------------------------------------------------------------
    def files(self, table: str, steps: Iterable[int] | None = None, rank: int | None = None) -> list[Path]:
        """Readable files of a table, pruned by step range and rank from their names."""
        if table not in schema.TABLES:
            raise RunError(f"unknown table {table!r}; tables are {', '.join(schema.TABLES)}")
        wanted = None if steps is None else sorted({int(s) for s in steps})
        out = []
        for f in layout.list_data_files(self.path, table):
            if f.path in self._bad_files or (rank is not None and f.rank != rank):
                continue
            if wanted is not None and not _overlaps(wanted, f.first_step, f.last_step):
                continue
            out.append(f.path)
        return out

    def _check_files(self, paths: Sequence[Path]) -> list[Path]:
        """Drop files whose footer cannot be read, warning once per file."""
        good = []
        for path in paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            cached = self._checked.get(path)
            if cached is None or cached[:2] != (st.st_size, st.st_mtime):
                try:
                    rows = pq.read_metadata(path).num_rows
                except Exception as exc:
                    self._bad_files.add(path)
                    warnings.warn(
                        f"collapsewatch: skipping corrupt file {path}: {exc}", RuntimeWarning, stacklevel=4
                    )
                    continue
                self._checked[path] = (st.st_size, st.st_mtime, rows)
            good.append(path)
        return good

    def query(
        self,
        table: str,
        sql_tail: str = "",
        *,
        steps: Iterable[int] | None = None,
        rank: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """`SELECT columns FROM <table files> <sql_tail>` as pandas; empty frame when nothing is there."""
        steps = None if steps is None else list(steps)
        select = ", ".join(_quote(c) for c in columns) if columns else "*"
        for attempt in range(4):
            paths = self.files(table, steps=steps, rank=rank)
            if attempt > 0:
                paths = self._check_files(paths)
            if not paths:
                return _empty_frame(table, self.meta, columns)
            source = _read_parquet_sql(paths)
            where = ""
            if steps is not None:
                where = f"WHERE step IN ({', '.join(str(int(s)) for s in steps)})" if steps else "WHERE false"
            sql = f"SELECT {select} FROM {source} {where} {sql_tail}"
            try:
                with self._db_lock:
                    return self._db.execute(sql).fetchdf()
            except (duckdb.IOException, duckdb.InvalidInputException, duckdb.InternalException):
                continue  # a file vanished (compaction) or is corrupt: re-list, check footers, retry
        raise RunError(f"could not read table {table} of {self.path}")

    def sql(self, query: str) -> pd.DataFrame:
        """Run SQL over views `steps`, `sequences`, `tokens`, `alerts` of this run (raw columns)."""
        with self._db_lock:
            cursor = self._db.cursor()
        for table in schema.TABLES:
            paths = self._check_files(self.files(table))
            if paths:
                cursor.execute(
                    f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM {_read_parquet_sql(paths)}"
                )
            else:
                empty = schema.table_schema(table, len(self.control_tokens)).empty_table()
                cursor.register(f"_{table}_empty", empty)
                cursor.execute(
                    f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT *, 0::BIGINT AS rank FROM _{table}_empty"
                )
        return cursor.execute(query).fetchdf()

    # ----- tables -----------------------------------------------------------------------------
    def scalars(self, names: Sequence[str] | None = None, steps: Iterable[int] | None = None) -> pd.DataFrame:
        """Long steps table: step, name, value, time, rank."""
        tail = ""
        if names:
            tail = "AND" if steps is not None else "WHERE"
            tail += " name IN (" + ", ".join(_sql_str(n) for n in names) + ")"
        return self.query("steps", tail + " ORDER BY step, time", steps=steps)

    def steps(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per step, one column per scalar (latest value across ranks), sorted by step."""
        long = self.scalars(names)
        if long.empty:
            return pd.DataFrame({"step": pd.Series([], dtype="int64")})
        wide = long.groupby(["step", "name"], sort=True)["value"].last().unstack("name")
        wide.columns.name = None
        return wide.reset_index()

    def sequences(
        self, steps: Iterable[int] | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        return self.query("sequences", "ORDER BY step, rank, seq", steps=steps, columns=columns)

    def tokens(
        self,
        steps: Iterable[int] | None = None,
        seqs: Iterable[int] | None = None,
        columns: Sequence[str] | None = None,
        rank: int | None = None,
        decode: bool = True,
    ) -> pd.DataFrame:
        """Token rows; control-token codes decoded into `p(<token>)` float32 columns."""
        tail = ""
        if seqs is not None:
            seq_list = ", ".join(str(int(s)) for s in seqs) or "NULL"
            tail = ("AND" if steps is not None else "WHERE") + f" seq IN ({seq_list})"
        frame = self.query(
            "tokens", tail + " ORDER BY step, rank, seq, pos", steps=steps, rank=rank, columns=columns
        )
        return decode_control_columns(frame, self.control_tokens) if decode else frame

    def alerts(self) -> pd.DataFrame:
        return self.query("alerts", "ORDER BY step, time")

    def row_count(self, table: str) -> int:
        """Rows of one table, from Parquet footers read once per file (no data read)."""
        return sum(self._checked[p][2] for p in self._check_files(self.files(table)))

    def row_counts(self) -> dict[str, int]:
        return {table: self.row_count(table) for table in schema.TABLES}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def decode_control_columns(frame: pd.DataFrame, control_tokens: Sequence[str]) -> pd.DataFrame:
    """Replace `cq_i` codes by `p(<token>)` probabilities (float32)."""
    for index, token in enumerate(control_tokens):
        col = schema.control_column(index)
        if col in frame.columns:
            codes = frame[col].to_numpy(dtype=np.float32, na_value=schema.CONTROL_Q_FLOOR)
            frame[schema.control_prob_column(token)] = schema.dequantize_control_probs(codes.astype(np.uint8))
            frame = frame.drop(columns=col)
    return frame


def _overlaps(sorted_steps: list[int], first: int, last: int) -> bool:
    import bisect

    i = bisect.bisect_left(sorted_steps, first)
    return i < len(sorted_steps) and sorted_steps[i] <= last


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _read_parquet_sql(paths: Sequence[Path]) -> str:
    files = ", ".join(_sql_str(str(p)) for p in paths)
    return f"read_parquet([{files}], hive_partitioning=true, union_by_name=true)"


def _empty_frame(table: str, meta: dict[str, Any], columns: Sequence[str] | None) -> pd.DataFrame:
    n_ctrl = len(meta.get("control_tokens") or [])
    frame = schema.table_schema(table, n_ctrl).empty_table().to_pandas()
    frame["rank"] = pd.Series([], dtype="int64")
    return frame[list(columns)] if columns else frame


def open_run(path: str | os.PathLike[str]) -> Run:
    """Open a run directory for reading (raises RunError with a one-line message on bad input)."""
    return Run(path)


@dataclass(frozen=True)
class RunSummary:
    name: str
    path: Path
    status: str
    steps: int
    last_step: int | None
    last_update: float | None
    alert_count: int


def summarize(run: Run) -> RunSummary:
    step_files = layout.list_data_files(run.path, "steps") or layout.list_data_files(run.path, "sequences")
    steps: set[int] = set()
    for f in step_files:
        steps.update(range(f.first_step, f.last_step + 1))
    return RunSummary(
        run.name,
        run.path,
        run.status,
        len(steps),
        max(steps) if steps else None,
        run.last_update,
        run.row_count("alerts"),
    )


def list_runs(root: str | os.PathLike[str]) -> list[RunSummary]:
    """Every run directly under `root`, newest first; unreadable ones are skipped with a warning."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"no such runs folder: {root}")
    out = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or not is_run_dir(child):
            continue
        try:
            out.append(summarize(Run(child)))
        except RunError as exc:
            warnings.warn(f"collapsewatch: skipping {child}: {exc}", RuntimeWarning, stacklevel=2)
    out.sort(key=lambda s: s.last_update or 0, reverse=True)
    return out
