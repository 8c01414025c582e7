"""A run's detector inputs in one small Parquet file, to replay detector settings after the run is gone.

A bundled-trainer run folder holds megabytes of rollout text, token rows and checkpoints; what the
detectors read from it is much smaller: the per-step scalars and the statistics derived from the
rollouts (structural shares, broken groups, lengths, ...). `save_archive` keeps those, and
`load_archive` gives back the inputs and features that `findings_of` and `replay_features` take,
so every alert (step, detector, severity, message), the onset, the lead and the root-cause ranking
come out as from the run itself. The rollouts are not kept, so alerts name no evidence rollouts.

One row per (step, kind, name, value): kind "scalar" is what the run stored, kind "derived" what
the features computed from its rollouts. Run name, control tokens, the steps that had features and
the reader's notes go in the file's metadata. Plain Parquet: DuckDB, Polars or pandas read it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from collapsewatch.diagnostics.features import StepFeatures, _finite, step_features
from collapsewatch.diagnostics.scan import RunInputs
from collapsewatch.errors import UserError

FORMAT = 1
_META_KEY = b"collapsewatch.feature_archive"
_SCHEMA = pa.schema([
    ("step", pa.int32()),
    ("kind", pa.dictionary(pa.int8(), pa.string())),
    ("name", pa.dictionary(pa.int32(), pa.string())),
    ("value", pa.float64()),
])  # fmt: skip


@dataclass
class ArchivedRun:
    """The part of a `store.reader.Run` that the findings read."""

    name: str
    path: str
    control_tokens: list[str]
    status: str


def save_archive(inputs: RunInputs, features: list[StepFeatures], path: str | Path) -> Path:
    """Write the scalars the run stored and the features' derived statistics to `path`."""
    steps: list[int] = []
    kinds: list[str] = []
    names: list[str] = []
    values: list[float] = []
    for kind, table in (
        ("scalar", inputs.per_step),
        ("derived", {f.step: f.derived for f in features}),
    ):
        for step, row in sorted(table.items()):
            for name, value in row.items():
                steps.append(int(step))
                kinds.append(kind)
                names.append(str(name))
                values.append(_finite(value))
    meta = {
        "format": FORMAT,
        "run": inputs.run.name,
        "path": str(inputs.run.path),
        "status": getattr(inputs.run, "status", "unknown"),
        "control_tokens": list(inputs.run.control_tokens),
        "feature_steps": [f.step for f in features],
        "notes": list(inputs.notes),
    }
    table = pa.table({"step": steps, "kind": kinds, "name": names, "value": values})
    table = table.cast(_SCHEMA).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)  # never a half-written archive under the final name
    return out


def load_archive(path: str | Path) -> tuple[RunInputs, list[StepFeatures]]:
    """The inputs and features saved by `save_archive`. Bad input raises UserError."""
    p = Path(path)
    try:
        table = pq.read_table(p)
        meta = json.loads((table.schema.metadata or {})[_META_KEY])
    except FileNotFoundError:
        raise UserError(f"no feature archive at {p}") from None
    except (OSError, KeyError, ValueError, pa.ArrowException) as e:
        raise UserError(f"{p} is not a readable feature archive ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{p}: feature archive format {meta.get('format')}, this version reads {FORMAT}")
    frame = table.to_pandas()
    per_kind: dict[str, dict[int, dict[str, float]]] = {"scalar": {}, "derived": {}}
    for (kind, step), rows in frame.groupby(["kind", "step"], observed=True, sort=True):
        per_kind[str(kind)][int(step)] = dict(zip(rows["name"].astype(str), rows["value"], strict=True))
    per_step, derived = per_kind["scalar"], per_kind["derived"]
    features = [  # the scalars cleaned as the run's own features were; the derived ones as computed
        dataclasses.replace(step_features(step, per_step.get(step, {}), None), derived=derived.get(step, {}))
        for step in meta["feature_steps"]
    ]
    run = ArchivedRun(meta["run"], meta["path"], list(meta["control_tokens"]), meta["status"])
    return RunInputs(run, per_step, pd.DataFrame(), list(meta["notes"])), features
