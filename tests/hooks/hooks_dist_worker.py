"""One rank of the two-process test: a gloo all-reduce (the training's) plus its own Recorder."""

from __future__ import annotations

import torch
import torch.distributed as dist

from collapsewatch.hooks import Recorder

CONTROLS = {"<tool_call>": 3, "</tool_call>": 4, "<|im_end|>": 5}


def run_rank(rank: int, world_size: int, init_file: str, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        with Recorder(root, "dist", control_tokens=CONTROLS, rank=dist.get_rank(), world_size=world_size,
                      capture="all", live_detectors=False) as rec:  # fmt: skip
            for step in (1, 2):
                g = torch.Generator().manual_seed(10 * rank + step)
                logits = torch.randn(2, 4, 8, generator=g)
                ids = torch.randint(0, 8, (2, 4), generator=g)
                rec.log_rollout(step, completion_ids=ids, rewards=[float(rank), 1.0])
                rec.log_logits(step, logits, ids)
                loss = torch.tensor([float(rank + step)])
                dist.all_reduce(loss)  # the trainer's collective; the recorder adds none
                rec.log_scalars(step, {"loss": loss.item()})
                rec.end_step(step)
    finally:
        dist.destroy_process_group()
