"""What attaching collapsewatch costs a real TRL GRPOTrainer step, on CPU or (--device cuda) a GPU.

One TRL run per capture mode (tiny-but-not-too-tiny local Qwen2, no hub), with capture paused on
every other step (`TRLHandle.paused`: the wrappers pass straight through), so captured and plain
steps interleave in one process and neighbours share the machine's noise. Each step is timed from
`on_step_begin` to the end of its `on_log` (generation, loss, optimizer, logging and our hooks;
live detectors run inline here, `live_async=False`). `overhead_ratio` is the median over adjacent
(captured, plain) step pairs of their time ratio, for the default `capture="control"`;
`overhead_ratio_all` for `capture="all"`; `cpu_overhead_ratio` is the same on process CPU time
(all our threads included, other jobs' load excluded). Our own code is also timed directly
(`capture_ms_per_step`, `capture_ms_per_1k_tokens`, `capture_share_of_step`). Last line: JSON.

    .venv/bin/python benchmarks/hook_overhead.py [--steps 30] [--hidden 192] [--layers 4]
    python benchmarks/hook_overhead.py --device cuda --hidden 896 --layers 24 --heads 14  # Qwen2.5-0.5B's body
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from typing import Any

import torch
from capture_share import timed as seconds_per_call  # this script's folder is on sys.path when it runs


def build_trainer(out_dir: str, tok: Any, state: dict, args_ns: argparse.Namespace) -> Any:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from collapsewatch.hooks.tiny_models import tiny_qwen2

    model = tiny_qwen2(tok, hidden=args_ns.hidden, layers=args_ns.layers, heads=args_ns.heads)
    model.load_state_dict(state)
    on_gpu = args_ns.device == "cuda"
    prompts = [f"What is {a} plus {b}?" for a in range(4) for b in range(4)]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in prompts])
    config = GRPOConfig(
        output_dir=out_dir,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        report_to="none",
        per_device_train_batch_size=args_ns.batch,
        num_generations=args_ns.batch,
        max_completion_length=args_ns.completion_length,
        max_steps=args_ns.steps_per_round,
        logging_steps=1,
        learning_rate=1e-5,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )

    def reward_len(completions: list, **kwargs: Any) -> list[float]:
        return [len(str(c)) / 100.0 for c in completions]

    return GRPOTrainer(
        model=model, reward_funcs=[reward_len], args=config, train_dataset=data, processing_class=tok
    )


class StepTimer:
    """Wall and process-CPU time from on_step_begin to the end of that step's on_log (add it last).

    Process CPU time counts every thread of this process (our writer and detector threads too) and
    is far less sensitive than wall time to other jobs on a shared machine.
    """

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._start: tuple[float, float] | None = None

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                timer._start = (time.perf_counter(), time.process_time())

            def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
                if timer._start is not None and "train_runtime" not in (logs or {}):
                    timer.times.append(time.perf_counter() - timer._start[0])
                    timer.cpu_times.append(time.process_time() - timer._start[1])
                timer._start = None

        self.callback = Callback()


def timed(fn: Any, bucket: list[float]) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - t0)

    return wrapper


def capture_math_ms_per_1k_tokens(device: str, tokens: int = 256, vocab: int = 151_936) -> dict[str, float]:
    """token_stats_from_logits on [1, tokens, vocab] logits (Qwen2.5's vocabulary), per 1k tokens
    (tokens x 16 on a GPU, where 256 rows are too few to time)."""
    from collapsewatch.hooks.capture import token_stats_from_logits

    tokens = tokens * 16 if device == "cuda" else tokens
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        logits = torch.randn(1, tokens, vocab, device=device).to(dtype)
        ids = torch.randint(0, vocab, (1, tokens), device=device)
        ctrl = list(range(151_643, 151_651))
        call = functools.partial(token_stats_from_logits, logits, ids, ctrl)
        seconds = seconds_per_call(call, device, reps=3, reduce=min)
        out[f"capture_math_{device}_ms_per_1k_tokens_{name}"] = round(seconds / tokens * 1e6, 3)
    return out


class Alternate:
    """Pause capture on every other step, so captured and plain steps interleave in one run."""

    def __init__(self, handle: Any) -> None:
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                handle.paused = state.global_step % 2 == 1  # steps 1, 3, 5... captured

        self.callback = Callback()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per capture mode (half captured)")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=48)
    args = parser.parse_args()
    args.steps_per_round = args.steps
    torch.set_num_threads(1)

    from collapsewatch.hooks.tiny_models import chatml_tokenizer, tiny_qwen2
    from collapsewatch.hooks.trl import attach
    from collapsewatch.store.reader import open_run

    math_costs = capture_math_ms_per_1k_tokens(args.device)
    tok = chatml_tokenizer()
    state = tiny_qwen2(tok, hidden=args.hidden, layers=args.layers, heads=args.heads).state_dict()
    root = tempfile.mkdtemp(prefix="cw-bench-")
    result: dict[str, Any] = {
        "benchmark": "hook_overhead",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": f"Qwen2 hidden={args.hidden} layers={args.layers} heads={args.heads} vocab={len(tok)}",
        "batch": args.batch,
        "max_completion_length": args.completion_length,
    }
    for mode in ("all", "control"):
        trainer = build_trainer(f"{root}/{mode}", tok, state, args)
        # live_async=False: the detectors' cost lands in the captured step, not the plain one after it
        handle = attach(trainer, root=root, run_name=mode, capture=mode, live_async=False)
        capture_s: list[float] = []
        handle._on_loss = timed(handle._on_loss, capture_s)
        handle._on_generation = timed(handle._on_generation, capture_s)
        handle.recorder._end_step_now = timed(handle.recorder._end_step_now, capture_s)
        timer = StepTimer()
        trainer.add_callback(Alternate(handle).callback)
        trainer.add_callback(timer.callback)  # last, so it sees our on_log work too
        trainer.train()
        captured, plain = timer.times[0::2], timer.times[1::2]  # step 1 captured, step 2 plain, ...
        pairs = list(zip(captured, plain, strict=False))[1:]  # the first step carries warm-up
        ratio = statistics.median(c / p for c, p in pairs)
        cpu_pairs = list(zip(timer.cpu_times[0::2], timer.cpu_times[1::2], strict=False))[1:]
        cpu_ratio = statistics.median(c / p for c, p in cpu_pairs)
        tokens = float(open_run(handle.recorder.run_dir).steps()["tokens/count"].sum())
        suffix = "" if mode == "control" else "_all"
        result[f"step_s_median_captured{suffix}"] = round(statistics.median(c for c, _ in pairs), 4)
        result[f"step_s_median_plain{suffix}"] = round(statistics.median(p for _, p in pairs), 4)
        result[f"overhead_ratio{suffix}"] = round(ratio, 4)
        result[f"cpu_overhead_ratio{suffix}"] = round(cpu_ratio, 4)
        result[f"step_pairs{suffix}"] = len(pairs)
        result[f"capture_ms_per_step{suffix}"] = round(1000.0 * sum(capture_s) / max(len(captured), 1), 2)
        result[f"capture_ms_per_1k_tokens{suffix}"] = round(1e6 * sum(capture_s) / max(tokens, 1.0), 3)
        result[f"capture_share_of_step{suffix}"] = round(sum(capture_s) / max(sum(captured), 1e-9), 4)
    result.update(math_costs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
