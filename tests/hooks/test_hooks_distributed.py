"""Two CPU ranks (torch.distributed, gloo) each write their own partition; both read back."""

from __future__ import annotations

import torch.multiprocessing as mp
from hooks_dist_worker import run_rank

from collapsewatch.store.reader import open_run


def test_two_ranks_write_their_own_partitions(tmp_path):
    # fork: the children reuse the imported modules (spawn would re-import torch twice on 2 cores)
    mp.start_processes(
        run_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    run = open_run(tmp_path / "dist")
    assert run.meta["world_size"] == 2 and run.status == "finished"
    assert (tmp_path / "dist" / "tokens" / "rank=0").is_dir() and (
        tmp_path / "dist" / "tokens" / "rank=1"
    ).is_dir()
    tokens = run.tokens()
    assert sorted(tokens["rank"].unique()) == [0, 1] and len(tokens) == 2 * 2 * 8
    seqs = run.sequences()
    assert sorted(seqs.groupby("rank").reward.sum()) == [
        2.0,
        4.0,
    ]  # rank 0 rewards 0+1, rank 1 rewards 1+1 per step
    scalars = run.scalars(names=["loss"])
    assert len(scalars) == 4 and set(scalars["rank"]) == {0, 1}
    assert set(scalars.value[scalars.step == 1]) == {3.0}  # all-reduced: (0+1) + (1+1)
