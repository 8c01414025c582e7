"""What the full capture math costs next to a Qwen2.5-0.5B-shaped training step, on a GPU.

The hooks reuse the trainer's logits, so our extra work per step is `token_stats_from_logits`
(sampled log p, full-vocabulary entropy, control-token log p, chunked in float32) on logits that
already exist. This times it against the forward and backward pass that produced them: a randomly
initialised Qwen2 with Qwen2.5-0.5B's shape (896 hidden, 24 layers, 14 heads, 2 KV heads, 4,864 MLP,
151,936 vocabulary, tied embeddings) in bf16 on `--device`, on `--batch` x `--seq` random tokens.
Medians over `--reps` after a warm-up, with the device synchronised around each. JSON last.

    python benchmarks/capture_share.py [--device cuda] [--batch 8] [--seq 1024] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def timed(fn, device: str, reps: int, reduce=statistics.median) -> float:
    """Seconds of `fn()` over `reps` synchronised calls after one warm-up, reduced (median by default)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return reduce(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=24, help="fewer for a quick look on a CPU")
    args = ap.parse_args()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from collapsewatch.hooks.capture import token_stats_from_logits

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=151_936, hidden_size=896, intermediate_size=4_864, num_hidden_layers=args.layers,
        num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = Qwen2ForCausalLM(config).to(args.device, dtype)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=args.device)
    control = list(range(151_643, 151_651))
    kept: dict[str, torch.Tensor] = {}

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        kept["logits"] = out.logits.detach()

    def capture() -> None:
        logits = kept["logits"][:, :-1]
        token_stats_from_logits(logits, ids[:, 1:], control)

    step_s = timed(train_step, args.device, args.reps)
    capture_s = timed(capture, args.device, args.reps)
    tokens = args.batch * (args.seq - 1)
    result = {
        "benchmark": "capture_share",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "model": f"Qwen2 0.5B shape, {args.layers} layers, vocab {config.vocab_size}",
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "tokens": tokens,
        "forward_backward_ms": round(step_s * 1e3, 2),
        "capture_ms": round(capture_s * 1e3, 2),
        "capture_ms_per_1k_tokens": round(capture_s * 1e6 / tokens, 3),
        "capture_share_of_step": round(capture_s / step_s, 4),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
