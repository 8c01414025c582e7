"""Throughput of our GRPO step vs TRL's GRPOTrainer: same tiny Qwen2, prompts, group size, lengths.

Single-turn task batch (the first turn of 8 environment tasks, G=8, up to 32 completion tokens,
temperature 1, one optimizer step per batch, fp32 on one CPU thread, or bf16 autocast on a GPU with
--device cuda). Tokens/s counts generated completion tokens over the timed steps (the first step of
each is a warm-up). Prints JSON last.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import torch

from collapsewatch.trainer import env
from collapsewatch.trainer import model as model_lib
from collapsewatch.trainer import tokenizer as tokenizer_lib
from collapsewatch.trainer.grpo import GRPOState, grpo_step
from collapsewatch.trainer.recipes import TrainConfig, default_cache_dir
from collapsewatch.trainer.rollout import ChatFormat

TASKS, G, MAX_NEW = 8, 8, 32


def ours(tok, steps: int, device: torch.device) -> dict:
    cfg = TrainConfig(tasks_per_step=TASKS, group_size=G, max_turns=1, max_turn_tokens=MAX_NEW, minibatches=1,
                      lr=1e-5, warmup_steps=1, max_context=512)  # fmt: skip
    model = model_lib.build_model("cpu", tok, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    s = GRPOState(cfg, model, model, None, opt, ChatFormat(tok), device, None, task_rng=random.Random(0),
                  sample_gen=torch.Generator(device=device).manual_seed(0), failed=deque())  # fmt: skip
    tokens, seconds = 0.0, 0.0
    for step in range(1, steps + 2):
        t0 = time.perf_counter()
        m = grpo_step(s, step)
        if step > 1:
            seconds += time.perf_counter() - t0
            tokens += m["length/mean"] * TASKS * G
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def trl(tok, steps: int, workdir: str, device: torch.device) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    fmt = ChatFormat(tok)
    rng = random.Random(0)
    prompts = [
        fmt.decode(fmt.prompt_ids(env.make_task("train", rng.randrange(5000))))
        for _ in range(TASKS * (steps + 1))
    ]
    data = Dataset.from_list([{"prompt": p} for p in prompts])

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    clock = Clock()
    args = GRPOConfig(
        output_dir=workdir, use_cpu=device.type == "cpu", bf16=device.type == "cuda", report_to="none", per_device_train_batch_size=TASKS * G,
        num_generations=G, max_completion_length=MAX_NEW, max_steps=steps + 1, logging_steps=1,
        learning_rate=1e-5, beta=0.0, save_strategy="no", seed=0, temperature=1.0, dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model_lib.build_model("cpu", tok, seed=0),
        reward_funcs=[lambda completions, **kw: [float("</tool_call>" in str(c)) for c in completions]],
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[clock],
    )
    start = time.perf_counter()
    trainer.train()
    lengths = [
        h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
    ]
    seconds = clock.marks[-1] - clock.marks[0] if len(clock.marks) > 1 else clock.marks[-1] - start
    tokens = sum(lengths[1:]) * TASKS * G
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per trainer (after one warm-up)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    tok = tokenizer_lib.load_or_train(Path(default_cache_dir()), 1024, 1500)
    with tempfile.TemporaryDirectory() as workdir:
        theirs = trl(tok, args.steps, workdir, device)
    mine = ours(tok, args.steps, device)
    result = {
        "benchmark": "trainer_vs_trl",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": 1,
        "tasks": TASKS,
        "group_size": G,
        "max_completion_tokens": MAX_NEW,
        "timed_steps": args.steps,
        "ours_tokens_per_s": round(mine["tokens_per_s"], 1),
        "trl_tokens_per_s": round(theirs["tokens_per_s"], 1),
        "ours_step_s": round(mine["seconds"] / args.steps, 3),
        "trl_step_s": round(theirs["seconds"] / args.steps, 3),
        "throughput_ratio": round(mine["tokens_per_s"] / theirs["tokens_per_s"], 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
