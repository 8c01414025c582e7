"""RunWriter: the crash-safe, non-blocking writer behind every collapsewatch run.

The training loop only enqueues column dicts (microseconds); a background thread turns them into
one immutable Parquet file per table, step and rank (``*.tmp`` then ``os.replace``), keeps a
heartbeat, and compacts per-step files when the run finishes. Any I/O error turns capture off
with one warning: training never waits on, or dies of, the writer.
"""

from __future__ import annotations

import atexit
import os
import queue
import sys
import threading
import warnings
import weakref
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from collapsewatch import schema
from collapsewatch.store import layout, resume

_FLOAT_TYPES = (pa.float32(), pa.float64())
# Token-table floats stored with 12 mantissa bits (docs/run-format.md): half the bytes on disk.
_ROUNDED_TOKEN_COLUMNS = frozenset({"logprob", "entropy", "old_logprob", "ref_logprob", "sampling_logprob"})
_COMPACT_MAX_ROWS = 1_000_000
_COMPACT_MAX_STEPS = 500
# Only small files are worth merging: rewriting big per-step token files costs minutes on a long
# run and buys little (DuckDB already prunes them by name and row-group statistics).
_COMPACT_SMALL_FILE_ROWS = 16_384
_ROW_GROUP_ROWS = 131_072  # small enough that a drill-down into one step reads little


def parquet_write(table: pa.Table, path: Path) -> None:
    """Write one immutable Parquet file atomically, with the encodings the run format assumes."""
    # Floats: byte-stream-split then zstd (dictionaries only bloat them); everything else:
    # dictionary + RLE, which makes constant or repetitive columns (step, seq, flags) nearly free.
    float_cols = [f.name for f in table.schema if f.type in _FLOAT_TYPES]
    other_cols = [f.name for f in table.schema if f.type not in _FLOAT_TYPES]
    tmp = path.with_name(path.name + layout.TMP_SUFFIX)
    pq.write_table(
        table,
        tmp,
        compression="zstd",
        compression_level=1,
        use_dictionary=other_cols or False,
        use_byte_stream_split=float_cols or False,
        # min/max statistics where queries prune (step, seq, ...), not on every float column
        write_statistics=[f.name for f in table.schema if pa.types.is_integer(f.type)] or False,
        row_group_size=_ROW_GROUP_ROWS,
    )
    os.replace(tmp, path)


def _rank_from_env() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _nbytes(value: Any) -> int:
    return int(getattr(value, "nbytes", 0)) or 8 * (len(value) if hasattr(value, "__len__") else 1)


class _Crashes:
    """Remembers an uncaught exception so writers closed at exit say `crashed`, not `finished`."""

    seen = False
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        cls._installed = True
        previous = sys.excepthook

        def hook(exc_type, exc, tb):  # type: ignore[no-untyped-def]
            cls.seen = True
            previous(exc_type, exc, tb)

        sys.excepthook = hook


_OPEN_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()


@atexit.register
def _close_open_writers() -> None:
    for writer in list(_OPEN_WRITERS):
        writer.close(status="crashed" if _Crashes.seen else "finished")


class RunWriter:
    """Writes one rank's share of a run directory. See docs/contracts.md for the calls."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        run_name: str,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        config: Mapping[str, Any] | None = None,
        tokenizer: str | None = None,
        control_tokens: list[dict[str, Any]] | None = None,
        capture: str = "control",
        heartbeat_interval_s: float = 2.0,
        max_pending_bytes: int = 1 << 30,
        compact_on_close: bool = True,
        encode_threads: int = 2,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(root) / run_name
        self.rank = _rank_from_env() if rank is None else int(rank)
        self.world_size = _world_size_from_env() if world_size is None else int(world_size)
        self.control_tokens = list(control_tokens or [])
        self._schemas = {t: schema.table_schema(t, len(self.control_tokens)) for t in schema.TABLES}
        self._heartbeat_interval_s = heartbeat_interval_s
        self._max_pending_bytes = max_pending_bytes
        self._compact_on_close = compact_on_close
        self.enabled = True
        self.failures: dict[str, int] = defaultdict(int)
        self._warned: set[str] = set()
        self._pending_bytes = 0
        self._dropped_batches = 0
        self._rows_written = 0
        self._files_written = 0
        self._last_step: int | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._buffers: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
        self._parts: dict[tuple[str, int], int] = {}
        self._max_buffered_step: int | None = None
        # Parquet encoding releases the GIL: a small pool keeps up with big steps.
        self._encoders = ThreadPoolExecutor(
            max_workers=max(1, encode_threads), thread_name_prefix="collapsewatch-encode"
        )
        self._in_flight: list[Future[None]] = []

        # run.json and the heartbeat come first: a directory is a run as soon as a reader can see it.
        (self.run_dir / layout.HEARTBEAT_DIR).mkdir(parents=True, exist_ok=True)
        # An existing run is a resume: its run.json is merged into, and the steps it replays are
        # moved aside before the first new row lands (store/resume.py).
        self._before_first_row = True
        self._resumed = False
        self._meta: dict[str, Any] = {}
        if self.rank == 0:
            fresh = self._initial_meta(config, tokenizer, capture, extra_meta)
            previous = resume.read_previous_meta(self.run_dir)
            self._resumed = previous is not None
            self._meta = fresh if previous is None else resume.merged_meta(previous, fresh)
            layout.atomic_write_json(self.run_dir / layout.RUN_JSON, self._meta)
        self._write_heartbeat("running")
        for table in schema.TABLES:
            layout.table_dir(self.run_dir, table, self.rank).mkdir(parents=True, exist_ok=True)

        _Crashes.install()
        _OPEN_WRITERS.add(self)
        self._thread = threading.Thread(
            target=self._run, name=f"collapsewatch-writer-{self.rank}", daemon=True
        )
        self._thread.start()

    # ----- caller side: cheap, never raises -------------------------------------------------
    def write(self, table: str, step: int, columns: Mapping[str, Any]) -> bool:
        """Queue rows of `table` for `step`. Returns False if dropped (capture off or backlog full)."""
        if not self.enabled or self._closed:
            return False
        size = sum(_nbytes(v) for v in columns.values())
        if self._pending_bytes + size > self._max_pending_bytes:
            self._dropped_batches += 1
            self._warn_once(
                "backlog", "collapsewatch: writer backlog full, dropping a batch (training continues)"
            )
            return False
        with self._lock:
            self._pending_bytes += size
        self._queue.put(("write", table, int(step), dict(columns), size))
        return True

    def flush_step(self, step: int) -> None:
        """Mark `step` complete: its buffered rows (and older ones) become files."""
        if not self._closed:
            self._queue.put(("flush", int(step)))

    def record_failure(self, kind: str, message: str | None = None) -> None:
        """Count a failure of a hook or the writer (shown in heartbeat and run.json); warn once per kind."""
        self.failures[kind] += 1
        if message:
            self._warn_once(kind, f"collapsewatch: {message} (counted as '{kind}'; training continues)")

    def update_meta(self, **values: Any) -> None:
        """Merge keys into run.json (rank 0 only; other ranks keep theirs in the heartbeat)."""
        if not self._closed:
            self._queue.put(("meta", values))

    def close(self, status: str = "finished", timeout_s: float = 300.0) -> None:
        """Drain the queue, write remaining steps, compact, and record the final status."""
        if self._closed:
            return
        self._closed = True
        _OPEN_WRITERS.discard(self)
        self._queue.put(("close", status))
        self._thread.join(timeout=timeout_s)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        self.close(status="crashed" if exc_type is not None else "finished")

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "rows_written": self._rows_written,
            "files_written": self._files_written,
            "dropped_batches": self._dropped_batches,
            "failures": dict(self.failures),
            "enabled": self.enabled,
        }

    # ----- writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        last_beat = layout.now()
        while True:
            try:
                item = self._queue.get(timeout=self._heartbeat_interval_s)
            except queue.Empty:
                item = None
            try:
                if item is not None and item[0] == "close":
                    self._finish(item[1])
                    return
                if item is not None:
                    self._handle(item)
                if layout.now() - last_beat >= self._heartbeat_interval_s:
                    self._write_heartbeat("running")
                    last_beat = layout.now()
            except OSError as exc:
                self._disable(exc)
            except Exception as exc:  # a bad batch must not stop the writer
                self.record_failure("writer_error", f"writer error: {exc!r}")

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "write":
            _, table, step, columns, size = item
            with self._lock:
                self._pending_bytes -= size
            if not self.enabled:
                return
            if self._before_first_row:
                self._supersede_replayed(step)
            if self._max_buffered_step is not None and step > self._max_buffered_step:
                self._flush_through(step - 1)  # a later step means earlier ones are complete
            try:
                batch = self._to_arrow(table, step, columns)
            except Exception as exc:
                self.record_failure("bad_batch", f"could not store a {table} batch: {exc}")
                return
            self._buffers[(table, step)].append(batch)
            self._max_buffered_step = (
                step if self._max_buffered_step is None else max(self._max_buffered_step, step)
            )
        elif kind == "flush":
            self._flush_through(item[1])
            self._reap_encoders()
            self._write_heartbeat("running")
        elif kind == "meta" and self.rank == 0:
            self._meta.update(item[1])
            self._write_meta()

    def _supersede_replayed(self, first_step: int) -> None:
        """First row after a resume: earlier rows of this and later steps move to superseded/, and
        run.json's record of the resume learns the step it continued from."""
        self._before_first_row = False
        moved = 0
        try:  # a new run has nothing to move: four empty folders listed, once
            moved = resume.supersede_steps(self.run_dir, self.rank, first_step)
        except OSError:
            raise  # capture off, as for any write error
        except Exception as exc:  # e.g. an unreadable old file: keep writing, say so
            self.record_failure("resume_error", f"could not set aside replayed steps: {exc!r}")
        if self._resumed:
            self._meta["resumes"][-1].update(from_step=first_step - 1, superseded_rows=moved)
            self._write_meta()

    def _to_arrow(self, table: str, step: int, columns: Mapping[str, Any]) -> pa.Table:
        table_schema = self._schemas[table]
        unknown = set(columns) - set(table_schema.names)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)} for table {table!r}")
        n = _column_length(columns)
        arrays = []
        for field in table_schema:
            if field.name == "step":
                arrays.append(pa.array(np.full(n, step, dtype=np.int64)))
            elif field.name in columns:
                values = columns[field.name]
                if table == "tokens" and field.name in _ROUNDED_TOKEN_COLUMNS and values is not None:
                    values = schema.round_mantissa(np.asarray(values, dtype=np.float32))
                arrays.append(_to_array(values, field.type, n))
            else:
                arrays.append(pa.nulls(n, type=field.type))
        return pa.Table.from_arrays(arrays, schema=table_schema)

    def _flush_through(self, step: int) -> None:
        ready = sorted(key for key in self._buffers if key[1] <= step)
        for key in ready:
            batches = self._buffers.pop(key, None)  # a write error below may clear the buffers
            if batches and self.enabled:
                self._write_file(key[0], key[1], pa.concat_tables(batches))
        if ready:
            self._last_step = max(self._last_step or 0, max(k[1] for k in ready))
        if not self._buffers:
            self._max_buffered_step = None

    def _write_file(self, table: str, step: int, data: pa.Table) -> None:
        """Name the file here (so parts never collide), encode it on the pool."""
        if data.num_rows == 0:
            return
        part = self._parts.get((table, step), 0)
        path = layout.table_dir(self.run_dir, table, self.rank) / layout.step_file_name(step, part)
        while path.exists():  # a resumed run or late rows for a step already on disk
            part += 1
            path = path.with_name(layout.step_file_name(step, part))
        self._parts[(table, step)] = part + 1
        self._reap_encoders()
        try:
            self._in_flight.append(self._encoders.submit(self._encode, data, path))
        except RuntimeError:  # interpreter shutting down (atexit close): encode here
            self._encode(data, path)

    def _encode(self, data: pa.Table, path: Path) -> None:
        parquet_write(data, path)
        with self._lock:
            self._rows_written += data.num_rows
            self._files_written += 1

    def _reap_encoders(self, wait: bool = False) -> None:
        """Collect finished encodes; an OSError from any of them turns capture off."""
        still = []
        for future in self._in_flight:
            if wait or future.done():
                exc = future.exception()
                if isinstance(exc, OSError):
                    self._disable(exc)
                elif exc is not None:
                    self.record_failure("writer_error", f"writer error: {exc!r}")
            else:
                still.append(future)
        self._in_flight = still

    def _finish(self, status: str) -> None:
        try:
            if self.enabled:
                self._flush_through(sys.maxsize)
                self._reap_encoders(wait=True)
                self._encoders.shutdown(wait=True)
            if self.enabled and self._compact_on_close:
                for table in schema.TABLES:
                    compact_rank(self.run_dir, table, self.rank)
        except OSError as exc:
            self._disable(exc)
        except Exception as exc:
            self.record_failure("writer_error", f"error while closing: {exc!r}")
        try:
            self._write_heartbeat(status)
            if self.rank == 0:
                self._meta.update(status=status, finished_at=layout.now(), failures=dict(self.failures))
                self._write_meta()
        except OSError as exc:
            self._disable(exc)

    def _disable(self, exc: OSError) -> None:
        """A write error (disk full, permission) turns capture off; training goes on."""
        self.enabled = False
        self._buffers.clear()
        self.failures["write_error"] += 1
        self._warn_once(
            "write_error", f"collapsewatch: cannot write the run ({exc}); capture is off, training continues"
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    # ----- metadata ---------------------------------------------------------------------------
    def _initial_meta(self, config, tokenizer, capture, extra_meta) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        meta = {
            "schema_version": schema.SCHEMA_VERSION,
            "run": self.run_dir.name,
            "status": "running",
            "started_at": layout.now(),
            "finished_at": None,
            "config": dict(config or {}),
            "tokenizer": tokenizer,
            "control_tokens": self.control_tokens,
            "capture": capture,
            "world_size": self.world_size,
            "failures": {},
            "host": layout.this_host(),
            "pid": os.getpid(),
            "versions": layout.library_versions(),
        }
        meta.update(extra_meta or {})
        return meta

    def _write_meta(self) -> None:
        self._meta["failures"] = dict(self.failures)
        layout.atomic_write_json(self.run_dir / layout.RUN_JSON, self._meta)

    def _write_heartbeat(self, status: str) -> None:
        layout.atomic_write_json(
            layout.heartbeat_path(self.run_dir, self.rank),
            {
                "rank": self.rank,
                "pid": os.getpid(),
                "host": layout.this_host(),
                "status": status,
                "last_step": self._last_step,
                "updated_at": layout.now(),
                "capture_enabled": self.enabled,
                **{k: v for k, v in self.stats.items() if k != "enabled"},
            },
        )


def _column_length(columns: Mapping[str, Any]) -> int:
    lengths = {len(v) for v in columns.values() if hasattr(v, "__len__") and not isinstance(v, str)}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _to_array(values: Any, arrow_type: pa.DataType, n: int) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(arrow_type) if values.type != arrow_type else values
    is_plain = (
        pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type)
    )
    if isinstance(values, np.ndarray) and values.dtype != object and is_plain:
        return pa.array(values.astype(arrow_type.to_pandas_dtype(), copy=False), type=arrow_type)
    if pa.types.is_map(arrow_type):
        values = [list(v.items()) if isinstance(v, Mapping) else v for v in values]
    return pa.array(values, type=arrow_type, size=n)


def compact_rank(run_dir: Path, table: str, rank: int) -> int:
    """Merge one rank's small per-step files into `steps-A-B.parquet` files; returns files merged.

    The compacted file appears atomically first; readers hide per-step files inside its range, so
    nobody sees a row twice, and the per-step files are deleted after.
    """
    files = [f for f in layout.list_data_files(run_dir, table) if f.rank == rank and not f.compacted]
    merged = 0
    chunk: list[layout.DataFile] = []
    rows = 0

    def emit() -> None:
        nonlocal merged, chunk, rows
        if len(chunk) > 1:
            data = pa.concat_tables([pq.read_table(f.path) for f in chunk])
            out = layout.table_dir(run_dir, table, rank) / layout.range_file_name(
                chunk[0].first_step, chunk[-1].last_step
            )
            parquet_write(data, out)
            for f in chunk:
                f.path.unlink(missing_ok=True)
            merged += len(chunk)
        chunk, rows = [], 0

    for f in files:
        n = pq.read_metadata(f.path).num_rows
        if n >= _COMPACT_SMALL_FILE_ROWS:  # big enough on its own: leave it, close the chunk
            emit()
            continue
        if chunk and (
            rows + n > _COMPACT_MAX_ROWS or f.last_step - chunk[0].first_step >= _COMPACT_MAX_STEPS
        ):
            emit()
        chunk.append(f)
        rows += n
    emit()
    return merged
