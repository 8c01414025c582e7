"""What a writer does when it opens a run that already exists: a resumed run keeps its history.

Two things would otherwise go wrong when a trainer resumes from a checkpoint into the same run
(the bundled trainer's ``--resume``, TRL's ``resume_from_checkpoint``, verl restarting a job):

* run.json would be rewritten from scratch, losing what the first segment recorded (the start
  time, a warm start's evaluation, earlier resumes). :func:`merged_meta` keeps it and appends a
  record of this resume, with the settings that changed.
* A checkpoint is usually older than the crash, so steps after it get trained and written again;
  a reader would see those steps twice. :func:`supersede_steps` moves this rank's rows for the
  replayed steps into ``superseded/`` before the first new row lands: readers see each step once,
  and nothing is deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.compute as pc
import pyarrow.parquet as pq

from collapsewatch import schema
from collapsewatch.store import layout

SUPERSEDED_DIR = "superseded"


class ResumeMark(NamedTuple):
    """One resume as the report and the dashboard show it."""

    step: int  # the step the run continued after
    changed: str  # "err_sft_every 0 → 1, steps 30 → 80", or "no setting changed"
    aside: str  # " (1,234 rows of replayed steps set aside under superseded/)", or ""


def read_previous_meta(run_dir: Path) -> dict[str, Any] | None:
    """The run.json a resumed run starts from; None for a new run.

    An unreadable one is renamed aside (``run.json.unreadable``), not overwritten.
    """
    path = run_dir / layout.RUN_JSON
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict):
        return meta
    os.replace(path, path.with_name(path.name + ".unreadable"))
    return {}


def merged_meta(previous: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """run.json for a resumed run: every earlier key kept, the writer's own keys refreshed, the
    original start time kept, and a record of this resume appended to ``resumes``."""
    before = previous.get("config") if isinstance(previous.get("config"), dict) else {}
    after = json.loads(json.dumps(fresh.get("config") or {}, default=str))  # as run.json holds it
    record: dict[str, Any] = {
        "at": fresh.get("started_at"),
        "previous_status": previous.get("status"),
        "changed": {k: [before[k], v] for k, v in after.items() if k in before and before[k] != v},
    }
    if previous.get("failures"):
        record["previous_failures"] = previous["failures"]
    earlier = previous.get("resumes") if isinstance(previous.get("resumes"), list) else []
    return {
        **previous,
        **fresh,
        "started_at": previous.get("started_at", fresh.get("started_at")),
        "resumes": [*earlier, record],
    }


def supersede_steps(run_dir: Path, rank: int, first_step: int) -> int:
    """Move this rank's rows for steps >= `first_step` into ``superseded/after-step-N/``.

    Whole files move with ``os.replace``; a compacted file that straddles the step is split, its
    earlier part rewritten in place under a name that ends before `first_step`. Returns the
    number of rows moved. Each rank moves only its own files, so ranks need no coordination.
    """
    from collapsewatch.store.writer import parquet_write  # the writer imports this module

    dest_root = run_dir / SUPERSEDED_DIR / f"after-step-{first_step - 1:08d}"
    moved = 0
    for table in schema.TABLES:
        for f in _rank_files(run_dir, table, rank):
            if f.last_step < first_step:
                continue
            dest = _free_name(dest_root / table / f"rank={rank}" / f.path.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.first_step >= first_step:
                moved += pq.read_metadata(f.path).num_rows
                os.replace(f.path, dest)
                continue
            data = pq.read_table(f.path)
            later = data.filter(pc.greater_equal(data["step"], first_step))
            earlier = data.filter(pc.less(data["step"], first_step))
            # Each row stays visible exactly once and on disk at least once at every instant:
            # later rows copied aside, earlier rows replace the file, then the name shrinks.
            parquet_write(later, dest)
            moved += later.num_rows
            if earlier.num_rows == 0:
                f.path.unlink()
                continue
            parquet_write(earlier, f.path)
            os.replace(f.path, f.path.with_name(layout.range_file_name(f.first_step, first_step - 1)))
    return moved


def _rank_files(run_dir: Path, table: str, rank: int) -> list[layout.DataFile]:
    """Every data file of one rank, including per-step files a compacted range already hides."""
    folder = layout.table_dir(run_dir, table, rank)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    parsed = (layout.parse_data_file(folder / name, rank) for name in sorted(names))
    return [f for f in parsed if f is not None]


def _free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`, ... if a previous resume from the same step used it."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def resume_marks(meta: dict[str, Any]) -> list[ResumeMark]:
    """The resumes run.json records that continued (records without a `from_step` are skipped):
    a run resumed with a remedy after a page reads differently from one left alone."""
    out = []
    for r in meta.get("resumes") or []:
        if not isinstance(r, dict) or not isinstance(r.get("from_step"), int):
            continue
        changed = r.get("changed") if isinstance(r.get("changed"), dict) else {}
        what = ", ".join(
            f"{k} {v[0]} → {v[1]}" if isinstance(v, list) and len(v) == 2 else f"{k} {v}"
            for k, v in changed.items()
        )
        rows = r.get("superseded_rows")
        aside = (
            f" ({rows:,} rows of replayed steps set aside under superseded/)"
            if isinstance(rows, int) and rows > 0
            else ""
        )
        out.append(ResumeMark(r["from_step"], what or "no setting changed", aside))
    return out
