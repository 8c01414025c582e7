"""The trainer's mechanics on a tiny model: masks, SFT, the GRPO direction, supervision, reload, DDP."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import random
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import collapsewatch as cw
import collapsewatch.trainer.train as train_module
from collapsewatch.diagnostics import scan
from collapsewatch.errors import UserError
from collapsewatch.trainer import env
from collapsewatch.trainer import model as model_lib
from collapsewatch.trainer.batch import collate, completion_logits, grouped_completion_logits, token_logprobs
from collapsewatch.trainer.grpo import GRPOState, attention_kernels, control_probe, grpo_step
from collapsewatch.trainer.rollout import ChatFormat, RolloutSpec, expert_rollout, generate
from collapsewatch.trainer.sft import expert_batch, sft_loss, train_sft
from collapsewatch.trainer.tokenizer import CONTROL_TOKENS
from collapsewatch.trainer.train import load_policy, train

REPO = Path(__file__).resolve().parents[2]


def _state(cfg, tok, model=None, seed=0) -> GRPOState:
    fmt = ChatFormat(tok)
    model = model or model_lib.build_model("tiny", tok, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    return GRPOState(
        cfg, model, model, None, opt, fmt, torch.device("cpu"), None,
        task_rng=random.Random(seed), sample_gen=torch.Generator().manual_seed(seed), failed=deque(),
    )  # fmt: skip


def test_control_tokens_are_single_special_tokens_and_template_matches_qwen_layout(tok):
    for t in CONTROL_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1
    task = env.make_task("train", 3)
    text = tok.apply_chat_template(
        env.initial_messages(task) + env.expert_messages(task), tools=env.tools_json("train"), tokenize=False
    )
    assert text.startswith("<|im_start|>system\n") and "# Tools\n<tools>\n" in text
    assert "<|im_start|>user\n<tool_response>\n" in text and text.endswith("<|im_end|>\n")


def test_tool_output_is_masked_from_the_loss(tok):
    fmt = ChatFormat(tok)
    ro = expert_rollout(fmt, next(t for t in env.tasks("train", 50) if t.num_calls >= 2))
    assert any(ro.tool_mask) and not all(ro.tool_mask)
    batch = collate([ro], fmt.pad_id)
    n = len(ro.completion_ids)
    assert batch.policy_mask[0, :n].tolist() == [not m for m in ro.tool_mask]
    # the gradient of the SFT loss reaches no logit that predicts a tool-output token
    model = model_lib.build_model("tiny", tok)
    logits = completion_logits(model, batch).detach().requires_grad_(True)
    logp, _ = token_logprobs(logits, batch.completion_ids)
    mask = batch.policy_mask.float()
    (-(logp * mask).sum() / mask.sum()).backward()
    tool_rows = torch.tensor(ro.tool_mask + [False] * (batch.completion_ids.shape[1] - n))
    assert logits.grad[0, tool_rows].abs().max() == 0
    assert logits.grad[0, ~tool_rows].abs().max() > 0


def test_shared_prompt_forward_gives_the_same_logits_and_gradients(tok):
    fmt = ChatFormat(tok)
    model = model_lib.build_model("tiny", tok, seed=1).train()
    tasks = env.sample_train_tasks(random.Random(3), 3)
    specs = [RolloutSpec(t, g, k) for g, t in enumerate(tasks) for k in range(4)]
    rollouts = generate(
        model, fmt, specs, max_turns=2, max_turn_tokens=8, max_context=256, temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    rollouts[4] = expert_rollout(fmt, tasks[1], 1, 0)  # an expert row shares its group's prompt too
    batch = collate(rollouts, fmt.pad_id)
    plain, grouped = completion_logits(model, batch), grouped_completion_logits(model, batch, 4)
    mask = batch.completion_mask
    assert torch.allclose(plain[mask], grouped[mask], atol=1e-5)
    grads = [
        torch.autograd.grad(token_logprobs(x, batch.completion_ids)[0][mask].sum(), list(model.parameters()))
        for x in (plain, grouped)
    ]
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # rows whose prompts differ within a block fall back to the plain forward
    mixed = collate([rollouts[0], rollouts[4], rollouts[1], rollouts[5]], fmt.pad_id)
    assert torch.allclose(
        grouped_completion_logits(model, mixed, 2), completion_logits(model, mixed), atol=1e-6
    )


def test_sft_lowers_the_loss(tok):
    fmt = ChatFormat(tok)
    model = model_lib.build_model("tiny", tok)
    held_out = expert_batch(fmt, random.Random(99), 8)
    with torch.no_grad():
        before = sft_loss(model, held_out, fmt.pad_id, "cpu").item()
    train_sft(model, fmt, steps=12, lr=1e-2, batch_size=8, seed=0, device="cpu")
    with torch.no_grad():
        after = sft_loss(model, held_out, fmt.pad_id, "cpu").item()
    assert after < before - 0.5


def test_hint_adaptation_teaches_the_hinted_prompt_and_is_cached_apart(tok, tiny_cfg):
    fmt = ChatFormat(tok)
    mixed = expert_batch(fmt, random.Random(5), 16, hint_share=0.5)
    hinted = ["Hint:" in fmt.decode(r.prompt_ids) for r in mixed]
    assert 0 < sum(hinted) < len(hinted)  # both prompts, so the plain one is not unlearned
    assert not any("Hint:" in fmt.decode(r.prompt_ids) for r in expert_batch(fmt, random.Random(5), 16))
    held_out = [r for r, h in zip(mixed, hinted, strict=True) if h]
    base, _, base_origin = load_policy(tiny_cfg, torch.device("cpu"), 0, 1, lambda _: None)
    cfg = tiny_cfg.override(hint_sft_steps=10, hint_sft_lr=1e-2)
    said: list[str] = []
    adapted, _, origin = load_policy(cfg, torch.device("cpu"), 0, 1, said.append)
    assert (
        origin["warm_start"] != base_origin["warm_start"] and Path(origin["warm_start"], "sft.json").exists()
    )
    with torch.no_grad():
        before = sft_loss(base, held_out, fmt.pad_id, "cpu").item()
        after = sft_loss(adapted, held_out, fmt.pad_id, "cpu").item()
    assert after < before - 0.3

    # the adaptation is SFT on the hinted mix (the same steps on plain prompts give other weights)
    def trained(hint_share: float) -> list[torch.Tensor]:
        model = copy.deepcopy(base)
        train_sft(
            model, fmt, steps=10, lr=1e-2, batch_size=cfg.sft_batch, seed=cfg.sft_seed, device="cpu",
            hint_share=hint_share,
        )  # fmt: skip
        return list(model.state_dict().values())

    weights = list(adapted.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(weights, trained(0.5), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights, trained(0.0), strict=True))
    # the second load comes from the cache: nothing is trained again, and the weights are the same
    assert any("hint adaptation" in m for m in said)
    said.clear()
    again, _, _ = load_policy(cfg, torch.device("cpu"), 0, 1, said.append)
    assert not any("hint adaptation" in m for m in said)
    assert all(torch.equal(a, b) for a, b in zip(weights, again.state_dict().values(), strict=True))


def test_grpo_step_moves_logprobs_in_the_direction_of_the_advantages(tok, tiny_cfg):
    # expert replacement gives every group a rewarded row (advantage > 0) among failing random samples
    cfg = tiny_cfg.override(expert_replacement=True, lr=1e-2, warmup_steps=1, minibatches=1)
    s = _state(cfg, tok)
    task_rng_copy = random.Random()
    task_rng_copy.setstate(s.task_rng.getstate())
    tasks = env.sample_train_tasks(task_rng_copy, cfg.tasks_per_step)
    experts = [expert_rollout(s.fmt, t) for t in tasks]
    samples = generate(
        s.policy, s.fmt, [RolloutSpec(t, 0, 0) for t in tasks], max_turns=2, max_turn_tokens=8,
        max_context=256, temperature=1.0, generator=torch.Generator().manual_seed(5),
    )  # fmt: skip

    def mean_logp(rollouts):
        b = collate(rollouts, s.fmt.pad_id)
        with torch.no_grad():
            lp, _ = token_logprobs(completion_logits(s.policy, b), b.completion_ids)
        m = b.policy_mask.float()
        return ((lp * m).sum(1) / m.sum(1)).mean().item()

    expert_before, sampled_before = mean_logp(experts), mean_logp(samples)
    metrics = grpo_step(s, 1)
    assert metrics["reward/mean"] > 0 and metrics["success/rate"] == 0  # only the expert rows succeed
    assert mean_logp(experts) > expert_before + 0.01  # positive advantage: more likely
    assert mean_logp(samples) < sampled_before  # negative advantage: less likely


def test_a_non_finite_gradient_skips_the_update_and_leaves_the_weights(tok, tiny_cfg):
    s = _state(tiny_cfg, tok)
    before = [p.detach().clone() for p in s.model.parameters()]
    poison = s.model.model.layers[0].mlp.register_forward_hook(
        lambda m, args, out: out * float("nan") if m.training else out
    )
    metrics = grpo_step(s, 1)
    poison.remove()
    assert metrics["updates/skipped_nonfinite"] == tiny_cfg.minibatches
    assert not math.isfinite(metrics["grad_norm"])  # logged, so the non_finite detector pages
    assert all(torch.equal(a, b) for a, b in zip(before, s.model.parameters(), strict=True))
    metrics = grpo_step(s, 2)
    assert metrics["updates/skipped_nonfinite"] == 0 and math.isfinite(metrics["grad_norm"])


def test_the_kv_cache_keyword_is_the_one_the_installed_transformers_takes():
    """`cache` in transformers 5.24, `past_key_values` in 5.17 (the H200 image): trainer/hf_cache.py."""
    from transformers import Qwen2ForCausalLM

    from collapsewatch.trainer import hf_cache

    assert hf_cache.NAME in inspect.signature(Qwen2ForCausalLM.forward).parameters


def test_attention_kernels_leave_out_cudnn_only():
    """cuDNN's SDPA backward gave NaN gradients on an H200 (grpo.attention_kernels); the flags are
    global, so this holds on a CPU-only torch too."""
    with attention_kernels():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()


def test_hints_sample_with_the_hint_but_train_on_the_hint_free_prompt(tok, tiny_cfg):
    fmt = ChatFormat(tok)
    task = env.make_task("train", 4)
    model = model_lib.build_model("tiny", tok)
    ro = generate(model, fmt, [RolloutSpec(task, 0, 3, hint=True)], max_turns=1, max_turn_tokens=4,
                  max_context=256, temperature=1.0)[0]  # fmt: skip
    assert ro.source == "hint"
    assert fmt.decode(ro.prompt_ids) == fmt.decode(fmt.prompt_ids(task)) and "Hint:" not in fmt.decode(
        ro.prompt_ids
    )
    assert "Hint:" in fmt.decode(fmt.prompt_ids(task, hint=True))


@pytest.mark.parametrize(
    "option, key",
    [({"err_sft_every": 1}, "sft/erroneous_loss"), ({"joint_sft_coef": 1.0}, "sft/joint_loss"), ({}, None)],
)
def test_supervisory_losses_run_and_change_the_update(tok, tiny_cfg, option, key):
    base = tiny_cfg.override(lr=1e-3, warmup_steps=1)
    plain = _state(base, tok, seed=1)
    plain_metrics = grpo_step(plain, 1)
    supervised = _state(base.override(**option), tok, seed=1)
    metrics = grpo_step(supervised, 1)
    if key is None:  # the control: same seed, same options -> same weights
        assert not (set(metrics) - set(plain_metrics))
        return
    assert key in metrics and metrics[key] > 0
    diff = sum(
        (a - b).abs().sum()
        for a, b in zip(plain.policy.parameters(), supervised.policy.parameters(), strict=True)
    )
    assert diff > 0


def test_each_rank_probes_only_its_share_of_the_conversations(tok, tiny_cfg):
    s = _state(tiny_cfg, tok)
    s.rank, s.world_size = 1, 2  # no process group: the all-reduce is skipped, the share is what is left
    s.probe = control_probe(s.fmt, 6)
    metrics = grpo_step(s, 1)
    share = s.probe.summarize(s.probe.totals(s.policy, part=1, parts=2))
    assert metrics["probe/logp_text"] == pytest.approx(share["probe/logp_text"], rel=1e-9)
    assert metrics["probe/logp_text"] != pytest.approx(s.probe.measure(s.policy)["probe/logp_text"], rel=1e-6)


@pytest.mark.parametrize("expert", [True, False])
def test_runs_with_an_expert_row_monitor_with_the_learning_signal_gate(tok, tmp_path, expert):
    """docs/detection.md round 22: the expert keeps every group mixed, so the live page waits for the
    groups to thin; runs without an expert keep round 7's rule."""
    from collapsewatch.trainer.recording import RunLog

    log = RunLog(str(tmp_path), "run", ChatFormat(tok), {"expert_replacement": expert}, 0, 1)
    try:
        config = log.rec.monitor.config
        assert config.signal_mixed_max == (0.6 if expert else 0.0)
        assert config.verdict_requires_if_seen == (("signal",) if expert else ())
    finally:
        log.close("finished")


@pytest.mark.parametrize("experts", [1, 2])
def test_expert_replacement_puts_the_expert_first_in_every_group(tok, tiny_cfg, experts):
    s = _state(tiny_cfg.override(expert_replacement=True, expert_rollouts=experts, hint_rollouts=1), tok)
    seen = {}

    class Capture:
        def rollouts(self, step, rollouts, advantages):
            seen["rollouts"], seen["adv"] = rollouts, advantages

        def logits(self, *a, **k):
            seen["logits"] = True

        def scalars(self, *a):
            pass

        def end_step(self, *a):
            pass

    s.log = Capture()
    grpo_step(s, 1)
    ros = seen["rollouts"]
    g = tiny_cfg.group_size
    assert [r.source for r in ros[:g]] == ["expert"] * experts + ["policy"] * (g - 1 - experts) + ["hint"]
    assert all(ros[i * g + k].success for i in range(tiny_cfg.tasks_per_step) for k in range(experts))
    assert seen["logits"] and len(ros) == g * tiny_cfg.tasks_per_step


def test_expert_rollouts_must_leave_policy_rollouts(tiny_cfg):
    with pytest.raises(UserError, match="leave policy rollouts"):
        tiny_cfg.override(expert_replacement=True, expert_rollouts=tiny_cfg.group_size).validate()
    with pytest.raises(UserError, match="expert_rollouts >= 1"):
        tiny_cfg.override(expert_rollouts=0).validate()


def test_a_crash_after_the_checkpoint_resumes_without_duplicate_steps(tmp_path, tiny_cfg, monkeypatch):
    """A checkpoint older than the crash: the resumed run trains the lost step again; readers see
    it once (the new rows), and the rows of the crashed attempt are kept under superseded/."""
    real_step = train_module.grpo_step

    def crash_after_step_3(state, step):
        metrics = real_step(state, step)  # step 3's rows reach the run ...
        if step == 3:
            raise RuntimeError("simulated crash before the step-3 checkpoint")
        return metrics

    out, cfg = tmp_path / "runs", tiny_cfg.override(steps=3, checkpoint_every=1, eval_tasks=0)
    monkeypatch.setattr(train_module, "grpo_step", crash_after_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, out, progress=False)
    run_dir = out / f"{cfg.recipe}-s{cfg.seed}"
    crashed = cw.open_run(run_dir)
    assert crashed.status == "crashed" and crashed.last_step == 3
    old_step3 = crashed.sequences().query("step == 3")["uid"].tolist()
    monkeypatch.setattr(train_module, "grpo_step", real_step)
    train(cfg, out, resume=True, progress=False)  # ... but the checkpoint is step 2's
    run = cw.open_run(run_dir)
    assert run.status == "finished" and run.meta["resumes"][-1]["from_step"] == 2
    assert [r["from_step"] for r in scan(run).to_dict()["resumes"]] == [2]  # the post-mortem says so
    assert run.meta["resumes"][-1]["previous_status"] == "crashed"
    seqs = run.sequences()
    per_step = seqs.groupby("step").size()
    assert per_step.index.tolist() == [1, 2, 3] and per_step.nunique() == 1  # step 3 once
    assert not run.scalars().duplicated(["step", "name", "rank"]).any()  # no replayed twin of a scalar
    moved = list((run_dir / "superseded" / "after-step-00000002" / "sequences").rglob("*.parquet*"))
    assert moved and run.meta["resumes"][-1]["superseded_rows"] > 0
    kept = pq.read_table(moved[0]).to_pandas()
    assert set(kept["step"]) == {3} and sorted(kept["uid"]) == sorted(old_step3)


def test_train_writes_a_run_and_model_path_reloads_its_checkpoint(tmp_path, tiny_cfg):
    out = tmp_path / "runs"
    summary = train(tiny_cfg.override(steps=2, checkpoint_every=1), out, progress=False)
    run = cw.open_run(summary["run_dir"])
    assert run.status == "finished" and run.last_step == 2
    # the run names the exact weights it started from (a cache key does not pin them across machines)
    assert run.meta["config"]["weights_sha256"] == model_lib.weights_digest(run.meta["config"]["warm_start"])
    assert len(run.meta["config"]["weights_sha256"]) == 16
    steps = run.steps()
    for name in ("reward/mean", "success/rate", "entropy/mean", "loss", "grad_norm", "lr", "clip/frac"):
        assert name in steps.columns
    assert "eval/in_dist_success" in steps.columns
    seqs = run.sequences()
    assert len(seqs) == 2 * tiny_cfg.tasks_per_step * tiny_cfg.group_size
    assert seqs["info"].str.contains('"parse_failures"').all() and seqs["turn_texts"].map(len).min() >= 1
    assert len(run.tokens()) > 0
    # resume continues from the checkpoint
    resumed = train(
        tiny_cfg.override(steps=3, checkpoint_every=1, err_sft_every=1), out, resume=True, progress=False
    )
    assert [h["step"] for h in resumed["history"]] == [3]
    # ... and run.json says from where, with which settings changed, keeping the warm start's evaluation
    meta = cw.open_run(summary["run_dir"]).meta
    assert [(r["from_step"], r["changed"], r["previous_status"]) for r in meta["resumes"]] == [
        (2, {"steps": [2, 3], "err_sft_every": [0, 1]}, "finished")
    ]
    assert meta["warm_start_eval"] == run.meta["warm_start_eval"] and meta["config"]["err_sft_every"] == 1
    assert meta["started_at"] == run.meta["started_at"]
    # --model PATH: the saved policy loads (with its own tokenizer and template) and takes a GRPO step
    model_dir = Path(summary["run_dir"]) / "model"
    model, tok = model_lib.load_pretrained(model_dir, torch.device("cpu"))
    assert model.config.model_type == "qwen2" and tok.eos_token == "<|im_end|>"
    assert tok.chat_template and len(tok("<tool_call>", add_special_tokens=False)["input_ids"]) == 1
    metrics = grpo_step(_state(tiny_cfg, tok, model=model), 1)
    assert 0.0 <= metrics["success/rate"] <= 1.0


def test_eval_tasks_zero_skips_evaluation_and_interleaved_sft_still_runs(tmp_path, tiny_cfg):
    """What `make demo QUICK=1` relies on: no evaluation passes; interleaved SFT still runs with
    `err_sft_batch` set, and a batch of 0 is refused."""
    cfg = tiny_cfg.override(eval_tasks=0, err_sft_every=1, err_sft_batch=3, recipe="interleaved")
    summary = train(cfg, tmp_path / "runs", progress=False)
    run = cw.open_run(summary["run_dir"])
    assert run.status == "finished"
    steps = run.steps()
    assert not [c for c in steps.columns if c.startswith("eval/")]
    assert (steps["sft/erroneous_tasks"] > 0).all()
    with pytest.raises(UserError, match="err_sft_batch"):
        tiny_cfg.override(err_sft_batch=0).validate()


def test_low_lr_recipe_is_collapse_at_a_lower_lr():
    """The unsupervised control of round 29 (docs/detection.md): nothing but the LR differs."""
    from collapsewatch.trainer.recipes import recipe

    plain, control = dataclasses.asdict(recipe("collapse")), dataclasses.asdict(recipe("low-lr"))
    changed = {k for k in plain if plain[k] != control[k]}
    assert changed == {"recipe", "lr"} and control["lr"] < plain["lr"]


def test_cli_errors_are_one_line(tmp_path, tiny_cfg):
    from collapsewatch.errors import UserError
    from collapsewatch.trainer.recipes import recipe

    with pytest.raises(UserError, match="unknown recipe"):
        recipe("nope")
    with pytest.raises(UserError, match="KEY=VALUE"):
        tiny_cfg.override_from_strings(["lr"])
    with pytest.raises(UserError, match="not a Hugging Face model"):
        model_lib.load_pretrained(tmp_path, torch.device("cpu"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_on_two_cpu_processes(tmp_path, tiny_cfg, tok):
    """--device cpu: on a machine with one GPU, "auto" would put rank 1 on a GPU that is not there."""
    cfg = dataclasses.asdict(tiny_cfg)
    sets = [f"--set={k}={cfg[k]}" for k in ("cache_dir", "vocab_size", "tokenizer_tasks", "sft_steps", "sft_batch",
                                             "tasks_per_step", "group_size", "max_turns", "max_turn_tokens",
                                             "max_context", "warmup_steps", "eval_tasks", "checkpoint_every")]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "collapsewatch.trainer.cli", "train", "--recipe", "collapse", "--out", str(tmp_path),
           "--steps", "2", "--no-progress", "--device", "cpu", *sets]  # fmt: skip
    env_vars = os.environ | {"OMP_NUM_THREADS": "1", "COLLAPSEWATCH_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env_vars, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = cw.open_run(tmp_path / "collapse-s0")
    assert run.meta["world_size"] == 2 and run.status == "finished"
    seqs = run.sequences()
    assert sorted(seqs["rank"].unique().tolist()) == [0, 1]
    assert len(seqs) == 2 * tiny_cfg.tasks_per_step * tiny_cfg.group_size  # rollouts split across ranks
    # the probe is split across the ranks and its sums all-reduced: the figures of one process scoring
    # every conversation with the final weights (the model saved after step 2, probed after it)
    probed = run.steps().set_index("step").loc[2]
    model, tok = model_lib.load_pretrained(tmp_path / "collapse-s0" / "model", torch.device("cpu"))
    whole = control_probe(ChatFormat(tok), tiny_cfg.probe_tasks).measure(model)
    assert len(whole) > 3
    for name, value in whole.items():
        assert probed[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
