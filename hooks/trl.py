"""`attach(trainer)`: stream a TRL `GRPOTrainer` run into a collapsewatch run directory.

No callback receives tensors in TRL, so three methods are wrapped on the trainer instance:
`_generate_and_score_completions` (rollouts, rewards, advantages; adds a `cw_seq` key that
survives TRL's shuffle and split), `_compute_loss` (marks the training forward) and
`_get_per_token_logps_and_entropies` (TRL's own logps and entropies are reused; control-token
probabilities come from a gather of k LM-head rows against the captured last hidden state).
A `TrainerCallback` handles step boundaries, scalars, stopping and closing. Every body is guarded.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from collapsewatch.hooks.capture import TOP_K, control_logprobs_from_sampled, head_logits, top_alternatives
from collapsewatch.hooks.control_tokens import vocab_id
from collapsewatch.hooks.probe import ControlProbe
from collapsewatch.hooks.recorder import Recorder

TESTED_TRL = ("1.16", "1.17")  # [low, high): the GRPOTrainer internals this adapter was checked on
WRAPPED = (
    "_generate_and_score_completions",
    "_calculate_rewards",
    "_compute_loss",
    "_get_per_token_logps_and_entropies",
)

# TRL log key -> canonical steps-table name (collapsewatch.schema.SCALARS). Raw keys are kept as trl/<key>.
CANONICAL = {
    "entropy": "entropy/mean",
    "reward": "reward/mean",
    "kl": "kl/mean",
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "clip_ratio/region_mean": "clip/frac",
    "clip_ratio/low_mean": "clip/frac_low",
    "clip_ratio/high_mean": "clip/frac_high",
    "completions/mean_length": "length/mean",
    "completions/clipped_ratio": "length/truncated_frac",
    "tools/call_frequency": "tool_calls/per_rollout",
}


def trl_scalars(logs: Mapping[str, Any]) -> dict[str, float]:
    """TRL's logged values mirrored as trl/<key>, plus their canonical names."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[f"trl/{key}"] = float(value)
        if key in CANONICAL:
            out[CANONICAL[key]] = float(value)
    return out


def _version_tested(version: str) -> bool:
    def parse(v: str) -> tuple[int, ...]:
        parts = []
        for p in v.split(".")[:2]:
            digits = "".join(ch for ch in p if ch.isdigit())
            parts.append(int(digits or 0))
        return tuple(parts)

    return parse(TESTED_TRL[0]) <= parse(version) < parse(TESTED_TRL[1])


class TRLHandle:
    """What `attach` returns: the recorder, and `detach()` to restore the trainer."""

    def __init__(
        self,
        trainer: Any,
        recorder: Recorder,
        full_capture: bool,
        probe: ControlProbe | None = None,
        probe_every: int = 1,
    ) -> None:
        self.trainer = trainer
        self.recorder = recorder
        self.full_capture = full_capture
        self.probe = probe
        self.probe_every = probe_every
        self._saved: dict[str, Any] = {}
        self._callback: Any = None
        self._rollouts: dict[int, dict[str, Any]] = {}  # generation id -> rollout columns (local rows)
        self._generation = 0
        self._seq_map: dict[tuple[int, int], int] = {}
        self._seq_map_step: int | None = None
        self._pending_rewards: torch.Tensor | None = None
        self._capture: dict[str, Any] | None = None  # set while the training forward of _compute_loss runs
        self.paused = False

    @property
    def active(self) -> bool:
        return self.recorder.enabled and not self.paused

    def pause(self) -> None:
        """Skip capture from the next step on (the wrappers pass straight through)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    # ----- helpers ------------------------------------------------------------------------------
    def _guard(self, kind: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            self.recorder.record_failure(kind, exc)
            return None

    @property
    def _step(self) -> int:
        """The optimizer step in flight, numbered like TRL's logs (the first step is 1)."""
        return int(self.trainer.state.global_step) + 1

    def _unwrapped(self, model: Any) -> Any:
        model = self.trainer.accelerator.unwrap_model(model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    # ----- wrappers -----------------------------------------------------------------------------
    def install(self) -> None:
        t = self.trainer
        for name in WRAPPED:
            self._saved[name] = t.__dict__.get(name)
        t._calculate_rewards = self._wrap_rewards(t._calculate_rewards)
        t._generate_and_score_completions = self._wrap_generate(t._generate_and_score_completions)
        t._compute_loss = self._wrap_loss(t._compute_loss)
        t._get_per_token_logps_and_entropies = self._wrap_logps(t._get_per_token_logps_and_entropies)

    def detach(self) -> None:
        """Restore the trainer's methods and remove the callback (the recorder stays open)."""
        for name, value in self._saved.items():
            if value is None:
                self.trainer.__dict__.pop(name, None)
            else:
                setattr(self.trainer, name, value)
        self._saved.clear()
        if self._callback is not None:
            self.trainer.remove_callback(self._callback)
            self._callback = None

    def close(self) -> None:
        self.recorder.close()

    def _wrap_rewards(self, original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if self.active:
                self._pending_rewards = out.detach() if isinstance(out, torch.Tensor) else None
            return out

        return wrapper

    def _wrap_generate(self, original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(inputs: Any, *args: Any, **kwargs: Any) -> Any:
            self._pending_rewards = None
            output = original(inputs, *args, **kwargs)
            if self.active and self.trainer.model.training and isinstance(output, dict):
                self._guard("trl_rollouts", lambda: self._on_generation(inputs, output))
            return output

        return wrapper

    def _wrap_loss(self, original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            active = (
                self.active
                and self.trainer.model.training
                and isinstance(inputs, dict)
                and "cw_seq" in inputs
            )
            self._capture = {"model": model, "hidden": []} if active and self.full_capture else None
            try:
                loss = original(model, inputs, *args, **kwargs)
            finally:
                captured, self._capture = self._capture, None
            if captured is not None and "logps" in captured:
                self._guard("trl_tokens", lambda: self._on_loss(inputs, captured))
            return loss

        return wrapper

    def _wrap_logps(self, original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
            capture = self._capture
            if capture is None or "logps" in capture or not kwargs.get("compute_entropy", False):
                return original(model, *args, **kwargs)
            hook = self._guard("trl_hidden_hook", lambda: self._hidden_hook(model, capture))
            try:
                out = original(model, *args, **kwargs)
            finally:
                if hook is not None:
                    hook.remove()
            self._guard("trl_logps", lambda: self._keep_logps(capture, out))
            return out

        return wrapper

    @staticmethod
    def _keep_logps(capture: dict[str, Any], out: Any) -> None:
        logps, entropies = out[0], out[1]
        capture["logps"] = logps.detach()
        capture["entropies"] = None if entropies is None else entropies.detach()

    def _hidden_hook(self, model: Any, capture: dict[str, Any]) -> Any:
        unwrapped = self._unwrapped(model)
        backbone = unwrapped.base_model
        capture["head"] = unwrapped.get_output_embeddings()
        capture["text_config"] = unwrapped.config.get_text_config()

        def grab(module: Any, args: Any, output: Any) -> None:  # runs inside the model's forward
            try:
                hidden = getattr(output, "last_hidden_state", None)
                if hidden is None and isinstance(output, (tuple, list)):
                    hidden = output[0]
                if isinstance(hidden, torch.Tensor):
                    capture["hidden"].append(hidden.detach())
            except Exception as exc:
                self.recorder.record_failure("trl_hidden_hook", exc)

        return backbone.register_forward_hook(grab)

    # ----- capture bodies -----------------------------------------------------------------------
    def _on_generation(self, inputs: Any, output: dict[str, Any]) -> None:
        t = self.trainer
        completion_ids = output["completion_ids"]
        batch = completion_ids.shape[0]
        gen = self._generation
        self._generation += 1
        device = completion_ids.device
        output["cw_seq"] = torch.arange(batch, device=device)
        output["cw_gen"] = torch.full((batch,), gen, device=device)
        mask = output["completion_mask"].bool()
        tool_mask = output.get("tool_mask")
        tok = t.processing_class
        tok = getattr(tok, "tokenizer", tok)
        ids_cpu, mask_cpu = completion_ids.cpu(), mask.cpu()
        texts = [
            tok.decode(ids_cpu[i][mask_cpu[i]].tolist(), skip_special_tokens=False) for i in range(batch)
        ]
        prompt_ids, prompt_mask = output["prompt_ids"].cpu(), output["prompt_mask"].cpu().bool()
        cols: dict[str, Any] = {
            "texts": texts,
            "prompt_lens": prompt_mask.sum(1).numpy(),
            "advantages": output["advantages"].detach().float().cpu().numpy().reshape(batch, -1)[:, 0],
            "uids": [
                f"{self._step}-{self.recorder.writer.rank if self.recorder.writer else 0}-{i}"
                for i in range(batch)
            ],
        }
        decoded: dict[tuple[int, ...], str] = {}  # a group shares its prompt: decode it once
        for i in range(batch):
            key = tuple(prompt_ids[i][prompt_mask[i]].tolist())
            if key not in decoded:
                decoded[key] = tok.decode(list(key), skip_special_tokens=False)
            cols.setdefault("prompts", []).append(decoded[key])
        offset = t.accelerator.process_index * batch
        num_generations = int(getattr(t, "num_generations", 0) or 0)
        if num_generations > 0:
            cols["group_ids"] = (torch.arange(batch) + offset) // num_generations
            cols["samples"] = (torch.arange(batch) + offset) % num_generations
        rewards = self._pending_rewards
        if rewards is not None and rewards.dim() == 2 and rewards.shape[0] >= offset + batch:
            local = rewards[offset : offset + batch].float().cpu()
            names = list(getattr(t, "reward_func_names", [f"reward_{i}" for i in range(local.shape[1])]))
            weights = getattr(t, "reward_weights", torch.ones(local.shape[1])).float().cpu()
            cols["rewards"] = (local * weights).nansum(1).numpy()
            cols["reward_components"] = {name: local[:, i].numpy() for i, name in enumerate(names)}
        if tool_mask is not None:
            tm = tool_mask.cpu().bool()
            response_id = vocab_id(tok, "<tool_response>")  # None when the template has no such token
            turn_texts, calls = [], []
            for i in range(batch):
                ids_i, policy_i = ids_cpu[i][mask_cpu[i]], tm[i][mask_cpu[i]]
                turn_texts.append(_policy_turns(tok, ids_i, policy_i))
                calls.append(
                    int(((ids_i == response_id) & ~policy_i).sum()) if isinstance(response_id, int) else 0
                )
            cols["turn_texts"] = turn_texts
            cols["num_tool_calls"] = calls
            cols["num_turns"] = [len(x) for x in turn_texts]
            cols["completion_lens"] = (mask_cpu & tm).sum(1).numpy()
        else:
            cols["completion_lens"] = mask_cpu.sum(1).numpy()
            cols["num_turns"] = [1] * batch
        self._rollouts = {k: v for k, v in self._rollouts.items() if k >= gen - 4}  # keep a few generations
        self._rollouts[gen] = cols

    def _seq_ids(self, gens: list[int], idxs: list[int]) -> list[int]:
        """Rollout index within the current step, assigned in order of first appearance."""
        if self._seq_map_step != self._step:
            self._seq_map_step, self._seq_map = self._step, {}
        out = []
        for g, i in zip(gens, idxs, strict=True):
            out.append(self._seq_map.setdefault((g, i), len(self._seq_map)))
        return out

    def _on_loss(self, inputs: Any, captured: dict[str, Any]) -> None:
        step = self._step
        completion_ids = inputs["completion_ids"]
        logps, entropies = captured["logps"], captured["entropies"]
        idxs = inputs["cw_seq"].tolist()
        gens = inputs["cw_gen"].tolist() if "cw_gen" in inputs else [self._generation - 1] * len(idxs)
        seqs = self._seq_ids(gens, idxs)
        ctrl_logp, top_fn = self._control_logprobs(captured, completion_ids, logps)
        rec = self.recorder
        rec.log_logprobs(
            step,
            logps,
            entropies,
            completion_ids,
            mask=inputs["completion_mask"],
            tool_mask=inputs.get("tool_mask"),
            seq_index=seqs,
            old_logprobs=inputs.get("old_per_token_logps"),
            ref_logprobs=inputs.get("ref_per_token_logps"),
            sampling_logprobs=inputs.get("sampling_per_token_logps"),
            control_logprobs=ctrl_logp,
            top_fn=top_fn,
        )
        self._log_rollout_rows(step, gens, idxs, seqs)

    def _control_logprobs(self, captured: dict[str, Any], completion_ids: torch.Tensor, logps: torch.Tensor):  # type: ignore[no-untyped-def]
        """log p(control) from k LM-head rows: logit[c] - (logit[sampled] - logp[sampled])."""
        hidden_parts = captured.get("hidden") or []
        head = captured.get("head")
        if not hidden_parts or head is None:
            return None, None
        hidden = torch.cat(hidden_parts, 0) if len(hidden_parts) > 1 else hidden_parts[0]
        length = completion_ids.shape[1]
        h = hidden[:, -(length + 1) : -1]  # the positions that predict the completion tokens
        cfg = captured["text_config"]
        kw = {
            "temperature": float(getattr(self.trainer, "temperature", 1.0) or 1.0),
            "logit_scale": _logit_scale(cfg),
            "softcap": getattr(cfg, "final_logit_softcapping", None),
        }
        weight, bias = head.weight, getattr(head, "bias", None)
        ctrl_ids = torch.tensor(self.recorder.controls.ids, device=weight.device)
        h = h.to(weight.device)
        ids = completion_ids.to(weight.device)
        ctrl_logits = head_logits(h, weight, bias, ctrl_ids, **kw)
        sampled_logit = head_logits(h, weight, bias, ids.unsqueeze(-1), **kw).squeeze(-1)
        ctrl_logp = control_logprobs_from_sampled(ctrl_logits, sampled_logit, logps.to(weight.device))

        def top_fn(b: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rows = head_logits(h[b, t], weight, bias, None, **kw)
            lse = sampled_logit[b, t] - logps.to(weight.device)[b, t].float()
            return top_alternatives(rows, lse, TOP_K)

        return ctrl_logp, top_fn

    def _log_rollout_rows(self, step: int, gens: list[int], idxs: list[int], seqs: list[int]) -> None:
        by_gen: dict[int, list[int]] = {}
        for n, g in enumerate(gens):
            by_gen.setdefault(g, []).append(n)
        for g, rows in by_gen.items():
            cols = self._rollouts.get(g)
            if cols is None:
                continue
            pick = [idxs[n] for n in rows]
            self.recorder.log_rollout(step, seq_index=[seqs[n] for n in rows], **_take(cols, pick))

    def _measure_probe(self, model: Any, state: Any) -> None:
        """Every rank runs the forward (a sharded model needs all of them); rank 0 logs it."""
        values = self.probe.measure(self._unwrapped(model))  # type: ignore[union-attr]
        if state.is_world_process_zero:
            self.recorder.log_scalars(state.global_step, values)

    # ----- callback -------------------------------------------------------------------------------
    def make_callback(self) -> Any:
        from transformers import TrainerCallback

        handle = self

        class CollapsewatchCallback(TrainerCallback):
            """Step boundaries, TRL scalars, stop_on and close for collapsewatch."""

            def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                def body() -> None:
                    if handle.paused:
                        return
                    probe_due = state.global_step % handle.probe_every == 0
                    if handle.probe is not None and probe_due and kwargs.get("model") is not None:
                        handle._guard("probe", lambda: handle._measure_probe(kwargs["model"], state))
                    if not control.should_log:  # otherwise on_log ends the step, after TRL's scalars
                        handle.recorder.end_step(state.global_step)
                    if handle.recorder.should_stop:
                        control.should_training_stop = True

                handle._guard("trl_callback", body)
                return control

            def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
                def body() -> None:
                    if handle.paused:
                        return
                    if state.is_world_process_zero:  # TRL's values are already reduced over ranks
                        handle.recorder.log_scalars(state.global_step, trl_scalars(logs or {}))
                    handle.recorder.end_step(state.global_step)
                    if handle.recorder.should_stop:
                        control.should_training_stop = True

                handle._guard("trl_callback", body)
                return control

            def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                handle._guard("trl_callback", handle.recorder.close)
                return control

        self._callback = CollapsewatchCallback()
        return self._callback


def _logit_scale(cfg: Any) -> float:
    """The multiplier TRL's fused LM head applies to logits (1.0 for Qwen2/Llama)."""
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(cfg, name, None)
        if value is not None:
            return float(value)
    scaling = getattr(cfg, "logits_scaling", None)
    if scaling is not None:
        return float(scaling) if getattr(cfg, "model_type", "") == "hyperclovax" else 1.0 / float(scaling)
    return 1.0


def _policy_turns(tok: Any, ids: torch.Tensor, policy: torch.Tensor) -> list[str]:
    """Decode each run of policy tokens (an assistant turn) separately."""
    turns, start = [], None
    flags = policy.tolist() + [False]
    for i, flag in enumerate(flags):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            turns.append(tok.decode(ids[start:i].tolist(), skip_special_tokens=False))
            start = None
    return turns


def _take(cols: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cols.items():
        if isinstance(value, dict):
            out[key] = {k: v[rows] for k, v in value.items()}
        elif isinstance(value, torch.Tensor) or hasattr(value, "shape"):
            out[key] = value[rows]
        else:
            out[key] = [value[i] for i in rows]
    return out


def attach(
    trainer: Any,
    root: str = "runs",
    run_name: str | None = None,
    capture: str = "control",
    stop_on: str | None = None,
    probe: ControlProbe | None = None,
    probe_every: int = 1,
    **recorder_kwargs: Any,
) -> TRLHandle:
    """Record a TRL GRPOTrainer into `<root>/<run_name>`; returns a handle (`.recorder`, `.detach()`).

    `probe` (a `ControlProbe` of reference conversations) is scored after every `probe_every`-th
    optimizer step (one forward over its conversations; keep it at most the verdict's window, 5, so
    the drift family it feeds stays current between measurements).

    Call before `trainer.train()`. Outside the tested TRL range it warns once and tries (every
    failure is counted, never raised); when the trainer lacks the wrapped methods it records TRL's
    scalars only.
    """
    import trl

    if probe_every < 1:
        raise ValueError(f"probe_every must be >= 1 (got {probe_every})")
    version = getattr(trl, "__version__", "unknown")
    tok = getattr(trainer, "processing_class", None)
    tok = getattr(tok, "tokenizer", tok)
    accelerator = getattr(trainer, "accelerator", None)
    config = _json_safe_args(trainer)
    config["trl_version"] = version
    recorder = Recorder(
        root,
        run_name,
        tokenizer=tok,
        capture=capture,
        stop_on=stop_on,
        rank=getattr(accelerator, "process_index", None),
        world_size=getattr(accelerator, "num_processes", None),
        config=config,
        **recorder_kwargs,
    )
    missing = [name for name in WRAPPED if not callable(getattr(trainer, name, None))]
    full = not missing
    if missing:
        reason = f"this TRL ({version}) lacks {missing}; recording TRL's scalars only (no token capture)"
    elif not _version_tested(version):
        reason = (
            f"TRL {version} is outside the tested range {TESTED_TRL[0]}.x; capture failures will be counted"
        )
    else:
        reason = None
    if reason is not None:
        warnings.warn(f"collapsewatch: {reason}", RuntimeWarning, stacklevel=2)
        if recorder.writer is not None:
            recorder.writer.update_meta(trl_capture="full" if full else "scalars_only", trl_warning=reason)
    handle = TRLHandle(trainer, recorder, full_capture=full, probe=probe, probe_every=probe_every)
    if full:
        handle.install()
    trainer.add_callback(handle.make_callback())
    return handle


def _json_safe_args(trainer: Any) -> dict[str, Any]:
    args = getattr(trainer, "args", None)
    try:
        raw = args.to_dict() if args is not None else {}
    except Exception:
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, (str, int, float, bool, type(None)))}
