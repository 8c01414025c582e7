"""The notebooks run end to end (jupytext -> nbclient), so a notebook that breaks fails CI."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notebook_runs: Path
) -> None:
    monkeypatch.setenv("COLLAPSEWATCH_NB_ROOT", str(tmp_path))
    monkeypatch.setenv("COLLAPSEWATCH_RUNS", str(notebook_runs))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = jupytext.read(path)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
