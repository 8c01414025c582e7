"""Where things live inside a run directory, and how file names encode steps.

Both the writer and the reader go through these functions, so the layout is written down once.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_JSON = "run.json"
HEARTBEAT_DIR = "heartbeat"
TMP_SUFFIX = ".tmp"

_STEP_FILE = re.compile(r"^step-(\d{8,})(?:-(\d+))?\.parquet$")
_RANGE_FILE = re.compile(r"^steps-(\d{8,})-(\d{8,})\.parquet$")
_RANK_DIR = re.compile(r"^rank=(\d+)$")


@dataclass(frozen=True)
class DataFile:
    """One immutable Parquet file of a table: the step range it covers and its rank."""

    path: Path
    rank: int
    first_step: int
    last_step: int
    compacted: bool


def table_dir(run_dir: Path, table: str, rank: int) -> Path:
    return run_dir / table / f"rank={rank}"


def step_file_name(step: int, part: int = 0) -> str:
    return f"step-{step:08d}.parquet" if part == 0 else f"step-{step:08d}-{part}.parquet"


def range_file_name(first_step: int, last_step: int) -> str:
    return f"steps-{first_step:08d}-{last_step:08d}.parquet"


def heartbeat_path(run_dir: Path, rank: int) -> Path:
    return run_dir / HEARTBEAT_DIR / f"rank={rank}.json"


def parse_data_file(path: Path, rank: int) -> DataFile | None:
    """Parse a data file name; None for anything else (``*.tmp``, stray files)."""
    m = _STEP_FILE.match(path.name)
    if m:
        step = int(m.group(1))
        return DataFile(path, rank, step, step, compacted=False)
    m = _RANGE_FILE.match(path.name)
    if m:
        return DataFile(path, rank, int(m.group(1)), int(m.group(2)), compacted=True)
    return None


def list_data_files(run_dir: Path, table: str) -> list[DataFile]:
    """Every visible data file of a table, per-step files already hidden by a compacted range."""
    root = run_dir / table
    try:
        rank_dirs = [d for d in os.scandir(root) if d.is_dir() and _RANK_DIR.match(d.name)]
    except FileNotFoundError:
        return []
    files: list[DataFile] = []
    for rank_dir in rank_dirs:
        rank = int(_RANK_DIR.match(rank_dir.name).group(1))  # type: ignore[union-attr]
        try:
            entries = list(os.scandir(rank_dir.path))
        except FileNotFoundError:
            continue
        parsed = [parse_data_file(Path(e.path), rank) for e in entries]
        parsed = [f for f in parsed if f is not None]
        ranges = [(f.first_step, f.last_step) for f in parsed if f.compacted]
        for f in parsed:
            if not f.compacted and any(a <= f.first_step <= b for a, b in ranges):
                continue  # already merged into a compacted file; deletion is on its way
            files.append(f)
    files.sort(key=lambda f: (f.first_step, f.rank, f.path.name))
    return files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file so readers see the old or the new content, never half of it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def this_host() -> str:
    return socket.gethostname()


# Libraries whose version changes a run's numbers (model init, tokenizer training, kernels): recorded
# when the process has already imported them, so a run that does not reproduce says what differed.
VERSIONED = (
    "torch",
    "transformers",
    "tokenizers",
    "trl",
    "accelerate",
    "deepspeed",
    "vllm",
    "numpy",
    "pyarrow",
)


def library_versions() -> dict[str, str]:
    """Python's version and each already-imported library of `VERSIONED` (none is imported here)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        if name in sys.modules:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = str(getattr(sys.modules[name], "__version__", "unknown"))
    return out


def now() -> float:
    return time.time()
