"""The training run: set up (DDP, tokenizer, warm start, recorder), loop grpo_step, checkpoint, evaluate."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from collapsewatch.errors import UserError
from collapsewatch.trainer import env
from collapsewatch.trainer import model as model_lib
from collapsewatch.trainer import tokenizer as tokenizer_lib
from collapsewatch.trainer.grpo import GRPOState, control_probe, grpo_step
from collapsewatch.trainer.recipes import TrainConfig
from collapsewatch.trainer.recording import RunLog
from collapsewatch.trainer.rollout import ChatFormat, RolloutSpec, generate
from collapsewatch.trainer.sft import train_sft, warm_start_dir

CHECKPOINT = "checkpoint"  # <run>/checkpoint/state.pt (+ the HF model for --model)
FINAL_MODEL = "model"  # <run>/model: save_pretrained of the last policy, loadable with --model
WARM_START_VERSION = 6  # bump when the environment or tokenizer changes
HINT_SHARE = 0.5  # share of the hint adaptation's expert trajectories shown with the hint line
SFTProgress = Callable[[int, float, torch.nn.Module], None]
# evaluation name -> environment split
EVAL_SPLITS = {"in_dist": "test", "format_ood": "format_ood", "content_ood": "content_ood"}


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); torchrun sets WORLD_SIZE/RANK/LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.barrier()


def load_policy(
    cfg: TrainConfig,
    device: torch.device,
    rank: int,
    world: int,
    say,
    sft_progress: SFTProgress | None = None,
) -> tuple[Any, Any, dict]:
    """(model, tokenizer, warm-start info): a --model checkpoint, or the cached SFT warm start.

    `sft_progress(step, loss, model)` is called after every SFT step when the warm start is built
    here (not when it comes from the cache): benchmarks/warm_start_quality.py scores it on the way.
    """
    if cfg.model_path:
        model, tok = model_lib.load_pretrained(cfg.model_path, device)
        if cfg.hint_sft_steps:  # a user's checkpoint is not cached: every rank adapts it (DDP syncs rank 0's)
            _adapt_to_hints(model, ChatFormat(tok, cfg.hint_style), cfg, device, say)
        return model, tok, {"model_path": str(cfg.model_path)}
    cache = Path(cfg.cache_dir)
    if rank == 0:
        tok = tokenizer_lib.load_or_train(cache, cfg.vocab_size, cfg.tokenizer_tasks)
    _barrier(world)
    tok = tokenizer_lib.load_or_train(cache, cfg.vocab_size, cfg.tokenizer_tasks)
    key = {
        "size": cfg.model_size, "vocab": cfg.vocab_size, "tokenizer_tasks": cfg.tokenizer_tasks, "steps": cfg.sft_steps, "lr": cfg.sft_lr,
        "batch": cfg.sft_batch, "seed": cfg.sft_seed, "version": WARM_START_VERSION,
    }  # fmt: skip
    path = warm_start_dir(cfg.cache_dir, key)
    if rank == 0 and not (path / "config.json").exists():
        say(f"warm start: {cfg.sft_steps} SFT steps on expert trajectories (cached in {path})")
        model = model_lib.build_model(cfg.model_size, tok, seed=cfg.sft_seed).to(device)
        t0 = time.perf_counter()
        losses = train_sft(
            model, ChatFormat(tok), steps=cfg.sft_steps, lr=cfg.sft_lr, batch_size=cfg.sft_batch,
            seed=cfg.sft_seed, device=device,
            progress=None if sft_progress is None else (lambda step, loss: sft_progress(step, loss, model)),
        )  # fmt: skip
        _save_cached(path, model, tok, {"key": key, "losses": losses, "seconds": time.perf_counter() - t0})
    if cfg.hint_sft_steps:
        key = key | {
            "hint_sft_steps": cfg.hint_sft_steps,
            "hint_sft_lr": cfg.hint_sft_lr,
            "hint_share": HINT_SHARE,
        }
        if cfg.hint_style != "names":  # the names-only key predates hint_style: its cache folder stays put
            key["hint_style"] = cfg.hint_style
        hinted = warm_start_dir(cfg.cache_dir, key)
        if rank == 0 and not (hinted / "config.json").exists():
            model, _ = model_lib.load_pretrained(path, device)
            t0 = time.perf_counter()
            losses = _adapt_to_hints(model, ChatFormat(tok, cfg.hint_style), cfg, device, say)
            _save_cached(
                hinted, model, tok, {"key": key, "losses": losses, "seconds": time.perf_counter() - t0}
            )
        path = hinted
    _barrier(world)
    model, tok = model_lib.load_pretrained(path, device)
    info = json.loads((path / "sft.json").read_text()) if (path / "sft.json").exists() else {}
    return model, tok, {"warm_start": str(path), "sft_final_loss": (info.get("losses") or [None])[-1]}


def _adapt_to_hints(model: torch.nn.Module, fmt: ChatFormat, cfg: TrainConfig, device, say) -> list[float]:
    """A few SFT steps on expert trajectories, half under the hinted system prompt: the warm start never
    saw a hint line, and on the bundled one it derails the hinted rollouts (2% success against 45% over
    the first 10 steps)."""
    say(f"hint adaptation: {cfg.hint_sft_steps} SFT steps on expert trajectories, half of them hinted")
    return train_sft(
        model, fmt, steps=cfg.hint_sft_steps, lr=cfg.hint_sft_lr, batch_size=cfg.sft_batch,
        seed=cfg.sft_seed, device=device, hint_share=HINT_SHARE,
    )  # fmt: skip


def _save_cached(path: Path, model: torch.nn.Module, tok, info: dict) -> None:
    """Write a warm start to a temporary folder and rename it in place, so a reader never sees half of one."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / "sft.json").write_text(json.dumps(info))
    if not path.exists():
        tmp.rename(path)
    else:  # another process cached the same warm start meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


@torch.no_grad()
def evaluate(
    policy,
    fmt: ChatFormat,
    cfg: TrainConfig,
    device,
    temperature: float = 0.0,
    splits: Sequence[str] = EVAL_SPLITS,
    hint: bool = False,
    repeats: int = 1,
) -> dict[str, float]:
    """Success on held-out in-distribution, format-OOD and content-OOD tasks (greedy by default), or
    on the `splits` named (keys of EVAL_SPLITS); `hint`: every prompt carries the hint line (in
    `fmt`'s hint style); `repeats`: rollouts per task (for sampling)."""
    out = {}
    for name in splits:
        split = EVAL_SPLITS[name]
        tasks = env.tasks(split, cfg.eval_tasks)
        specs = [RolloutSpec(t, i, 0, hint=hint) for i, t in enumerate(tasks)] * repeats
        gen = torch.Generator(device=device).manual_seed(1234)
        ros = generate(
            policy, fmt, specs, max_turns=cfg.max_turns, max_turn_tokens=cfg.max_turn_tokens,
            max_context=cfg.max_context, temperature=temperature, generator=gen, device=device,
        )  # fmt: skip
        out[f"eval/{name}_success"] = sum(r.success for r in ros) / len(ros)
    return out


def train(
    cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run one recipe to the end; returns a summary (run dir, success per step, evaluation)."""
    cfg.validate()
    rank, world, device = init_distributed(cfg.device)
    if cfg.tasks_per_step % world:
        raise UserError(f"tasks_per_step ({cfg.tasks_per_step}) must be divisible by the {world} ranks")
    console = Console(stderr=True)

    def say(msg: str) -> None:
        if rank == 0:
            console.print(msg)

    run_name = f"{cfg.recipe}-s{cfg.seed}"
    run_dir = Path(out) / run_name
    ckpt_path = run_dir / CHECKPOINT / "state.pt"
    if run_dir.exists() and not resume:
        raise UserError(f"{run_dir} exists: pass --resume to continue it, or remove it")
    if resume and not ckpt_path.exists():
        raise UserError(f"nothing to resume: {ckpt_path} does not exist")

    model, tok, origin = load_policy(cfg, device, rank, world, say)
    if rank == 0:  # only rank 0 writes run.json; a user's checkpoint can be gigabytes to hash
        origin["weights_sha256"] = model_lib.weights_digest(origin.get("model_path") or origin["warm_start"])
    fmt = ChatFormat(tok, cfg.hint_style)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
    )
    start = 1
    task_rng = random.Random(f"rl:{cfg.seed}:{rank}")
    torch.manual_seed(cfg.seed * 1000 + rank)
    if resume:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"] + 1
        task_rng.setstate(state["task_rng"][rank] if rank < len(state["task_rng"]) else task_rng.getstate())
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank + start)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    config = dataclasses.asdict(cfg) | origin | {
        "parameters": model_lib.count_parameters(model), "world_size": world, "trainer": "collapsewatch.trainer",
    }  # fmt: skip
    # On --resume the store keeps run.json (warm start's evaluation, earlier resumes), records this
    # resume with the settings that changed, and sets aside the steps replayed after the checkpoint.
    log = RunLog(str(out), run_name, fmt, config, rank, world)
    if resume:
        log.update_meta(final_eval=None)  # the earlier segment's; this one writes its own
    s = GRPOState(cfg, ddp_model, model, ref, opt, fmt, device, log, rank, world, task_rng, sample_gen)
    s.probe = control_probe(fmt, cfg.probe_tasks)
    if start == 1 and rank == 0 and cfg.eval_tasks > 0:
        warm = evaluate(model, fmt, cfg, device)
        log.update_meta(warm_start_eval=warm)
        say(
            f"{run_name}: start from {origin.get('warm_start') or origin.get('model_path')} | "
            + _fmt_eval(warm)
        )

    history: list[dict[str, float]] = []
    status, step = "crashed", start - 1
    bar = _progress_bar(console, enabled=progress and rank == 0)
    try:
        with bar:
            task = bar.add_task(run_name, total=cfg.steps, completed=start - 1, stats="")
            for step in range(start, cfg.steps + 1):
                metrics = grpo_step(s, step)
                history.append({"step": step, **metrics})
                bar.update(task, advance=1, stats=_bar_stats(metrics))
                if not bar.live.is_started and rank == 0 and (step % 10 == 0 or step == cfg.steps):
                    say(f"{run_name} step {step}/{cfg.steps} {_bar_stats(metrics)}")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    _save_checkpoint(s, step, ckpt_path)
        status = "finished"
    except KeyboardInterrupt:
        status = "crashed"
        say(f"interrupted at step {step}: the run directory stays readable ({run_dir})")
        raise
    finally:
        if status == "finished" and rank == 0:
            final = evaluate(model, fmt, cfg, device) if cfg.eval_tasks > 0 else {}
            if final:
                log.scalars(cfg.steps, final)
                log.update_meta(final_eval=final)
            model.save_pretrained(str(run_dir / FINAL_MODEL))
            tok.save_pretrained(str(run_dir / FINAL_MODEL))
            say(f"{run_name}: finished | " + (_fmt_eval(final) or "no evaluation (eval_tasks=0)"))
        if status == "finished":
            _save_checkpoint(s, step, ckpt_path)
        log.close(status)
    return {"run_dir": str(run_dir), "history": history, "status": status}


def _save_checkpoint(s: GRPOState, step: int, path: Path) -> None:
    """Model, optimizer and task streams (all ranks'), written atomically by rank 0."""
    rng_states = [s.task_rng.getstate()]
    if s.world_size > 1:
        rng_states = [None] * s.world_size
        dist.all_gather_object(rng_states, s.task_rng.getstate())
    if s.rank != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {
        "model": s.policy.state_dict(),
        "optimizer": s.opt.state_dict(),
        "step": step,
        "task_rng": rng_states,
    }
    torch.save(state, tmp)
    tmp.replace(path)


def _progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
        disable=not (enabled and console.is_terminal),
    )


def _bar_stats(m: dict[str, float]) -> str:
    text = (
        f"success {m.get('success/rate', float('nan')):.2f} reward {m.get('reward/mean', float('nan')):.2f}"
    )
    if "states/healthy_tool_call" in m:
        text += (
            f" | call {m['states/healthy_tool_call']:.0%} reply {m['states/healthy_response']:.0%}"
            f" pollution {m['states/text_pollution']:.0%} collapse {m['states/full_collapse']:.0%}"
        )
    return text


def _fmt_eval(e: dict[str, float]) -> str:
    return " ".join(f"{k.removeprefix('eval/')} {v:.2f}" for k, v in e.items())
