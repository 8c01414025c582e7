"""The trainer and the capture math on a GPU: skipped where torch sees no CUDA device (CI), run on the
lent H200 by benchmarks/device_check.sh (docs/benchmarks.md, GPU figures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import collapsewatch as cw
from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.hooks.capture import token_stats_from_logits
from collapsewatch.trainer.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_training_on_cuda_writes_a_full_run(tmp_path, tiny_cfg):
    # two minibatches: the shuffled order is drawn on the CUDA sampling generator
    summary = train(tiny_cfg.override(device="cuda", steps=3, minibatches=2), tmp_path, progress=False)
    run = cw.open_run(summary["run_dir"])
    assert run.status == "finished" and run.last_step == 3
    steps = run.steps()
    assert np.isfinite(steps["loss"]).all() and np.isfinite(steps["grad_norm"]).all()
    tokens = run.tokens()
    assert len(tokens) > 0 and np.isfinite(tokens["logprob"]).all()


def test_sampler_and_trainer_agree_on_cuda_within_the_mismatch_bar(tmp_path, tiny_cfg):
    """Sampler (KV-cached decode) and trainer (one full forward) both run under bf16 autocast on CUDA.
    With lr 0 the weights never move, so any gap is numerics alone; it must stay under the
    sampler_mismatch detector's bar, or every GPU run would page as off-policy."""
    summary = train(tiny_cfg.override(device="cuda", steps=2, lr=0.0), tmp_path, progress=False)
    tokens = cw.open_run(summary["run_dir"]).tokens()
    sampled = tokens[tokens["sampling_logprob"].notna()]
    gap = float((sampled["logprob"] - sampled["sampling_logprob"]).abs().mean())
    print(f"cuda sampler-trainer |delta log p| per token: {gap:.4f} over {len(sampled)} tokens")
    assert len(sampled) > 0 and gap < MonitorConfig().mismatch_max


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_capture_math_on_cuda_matches_the_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 33, 1021, generator=g) * 4).to(dtype)
    ids = torch.randint(0, 1021, (4, 33), generator=g)
    ctrl = [3, 7, 11]
    on_cpu = token_stats_from_logits(logits, ids, ctrl)
    on_gpu = token_stats_from_logits(logits.cuda(), ids.cuda(), ctrl)
    assert on_gpu.logprob.device.type == "cuda"
    for name in ("logprob", "entropy", "control_logprobs"):
        torch.testing.assert_close(getattr(on_gpu, name).cpu(), getattr(on_cpu, name), rtol=1e-4, atol=1e-4)
