"""The notebooks run end to end (jupytext -> nbclient), so a notebook that breaks fails CI."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

# Small but real runs for the notebooks: the bundled trainer, a short warm start, a few GRPO steps.
SMALL_RUN = {
    "steps": 6, "vocab_size": 512, "tokenizer_tasks": 200, "sft_steps": 40, "sft_batch": 16, "tasks_per_step": 4,
    "group_size": 4, "max_turns": 4, "warmup_steps": 2, "eval_tasks": 8, "checkpoint_every": 0,
}  # fmt: skip


@pytest.fixture(scope="module")
def notebook_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from collapsewatch.trainer.recipes import recipe
    from collapsewatch.trainer.train import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("nb-runs")
    cache = tmp_path_factory.mktemp("nb-cache")
    for name in ("collapse", "interleaved"):
        train(recipe(name, cache_dir=str(cache), **SMALL_RUN), root, progress=False)
    return root


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
