"""`Recorder`: the plain API every hook (TRL, verl, OpenRLHF, your own loop) writes a run through.

Per step it turns logits or logprobs into token rows, control-token statistics, per-sequence
aggregates and scalars, hands them to the background `RunWriter`, and runs the live detectors.
Every public method is guarded: an error is counted in run.json and warned about once, and a write
error turns capture off. Training never dies of the recorder.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from collapsewatch.hooks.capture import (
    DEFAULT_CHUNK_ELEMENTS,
    TOP_K,
    token_stats_from_logits,
    top_alternatives,
)
from collapsewatch.hooks.control_stats import ControlStepStats
from collapsewatch.hooks.control_tokens import ControlTokenSet, resolve_control_tokens
from collapsewatch.hooks.live_alerts import (
    STOP_LEVELS,
    alert_row,
    detector_config,
    make_monitor,
    trips_stop,
)
from collapsewatch.hooks.positions import position_types
from collapsewatch.hooks.rollout_rows import rollout_columns, rollout_count, sequence_rows, to_numpy
from collapsewatch.hooks.token_rows import TopFn, token_columns
from collapsewatch.store.writer import RunWriter

CAPTURE_MODES = ("control", "all")


def _guarded(kind: str) -> Callable:
    """Run a hook body; on error count it, warn once, and carry on (training must not die of us)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(self: Recorder, *args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return None
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:
                self.record_failure(kind, exc)
                return None

        return wrapper

    return decorate


@dataclass
class _StepState:
    """What a step accumulates before it is written."""

    step: int
    stats: ControlStepStats | None = None
    totals: torch.Tensor | None = None  # [entropy sum, tokens with entropy, logprob sum, tokens], on device
    seqs: dict[int, dict[str, float]] = field(default_factory=dict)
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    next_rollout_seq: int = 0
    next_logits_seq: int = 0


class Recorder:
    """Record one rank of a training run into `<root>/<run_name>` (see docs/hooks.md).

    Live detectors run once per step on a background thread (`live_async`), overlapping the next
    step's compute; an alert that trips `stop_on` then stops training one step later.
    `detectors` are their settings (MonitorConfig fields, docs/detectors.md), checked here.
    capture="control" keeps token rows at control-token positions, where a control token's
    probability exceeds `unexpected_threshold` without being sampled, and for the first
    `sample_rollouts` rollouts of each step; capture="all" keeps every completion token.
    """

    def __init__(
        self,
        root: str = "runs",
        run_name: str | None = None,
        *,
        tokenizer: Any | None = None,
        control_tokens: Sequence[str] | Mapping[str, int | Sequence[int]] | None = None,
        capture: str = "control",
        rank: int | None = None,
        world_size: int | None = None,
        config: Mapping[str, Any] | None = None,
        live_detectors: bool = True,
        detectors: Mapping[str, Any] | None = None,
        live_async: bool = True,
        stop_on: str | None = None,
        sinks: Sequence[Any] | None = None,
        sample_rollouts: int = 4,
        unexpected_threshold: float = 0.01,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        tokenizer_name: str | None = None,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> None:
        if capture not in CAPTURE_MODES:
            raise ValueError(f"capture must be one of {CAPTURE_MODES}, not {capture!r}")
        if stop_on is not None and stop_on not in STOP_LEVELS:
            raise ValueError(f"stop_on must be None, 'warning' or 'critical', not {stop_on!r}")
        monitor_config = detector_config(detectors)  # a bad setting fails here, before training
        self.capture = capture
        self.stop_on = stop_on
        self.tokenizer = tokenizer
        self.sample_rollouts = int(sample_rollouts)
        self.unexpected_threshold = float(unexpected_threshold)
        self.chunk_elements = int(chunk_elements)
        self.should_stop = False
        self.failures: dict[str, int] = {}
        self._warned: set[str] = set()
        self._closed = False
        self._state: _StepState | None = None
        self._last_ended: int | None = None
        self.controls: ControlTokenSet = resolve_control_tokens(tokenizer, control_tokens)
        self._control_ids_cpu = torch.tensor(self.controls.ids, dtype=torch.long)
        self._control_ids: dict[torch.device, torch.Tensor] = {}
        run_name = run_name or time.strftime("run-%Y%m%d-%H%M%S")
        meta = dict(extra_meta or {})
        if self.controls.warnings:
            meta["control_token_warnings"] = list(self.controls.warnings)
        meta["position_tags"] = {
            "open": [list(t) for t in self.controls.open_tags],
            "close": [list(t) for t in self.controls.close_tags],
        }
        self.writer: RunWriter | None
        try:
            self.writer = RunWriter(
                root,
                run_name,
                rank=rank,
                world_size=world_size,
                config=config,
                tokenizer=tokenizer_name or getattr(tokenizer, "name_or_path", None) or None,
                control_tokens=self.controls.to_meta(),
                capture=capture,
                extra_meta=meta,
            )
        except OSError as exc:  # unwritable root: training goes on without capture
            self.writer = None
            self._warn_once("write_error", f"collapsewatch: cannot create the run ({exc}); capture is off")
        self.monitor = (
            make_monitor(self.controls.texts, sinks, self.record_failure, monitor_config)
            if live_detectors and self.writer is not None
            else None
        )
        self._monitor_pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="collapsewatch-live")
            if live_async and self.monitor is not None
            else None
        )

    # ----- state ------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """False once the recorder is closed or a write error turned capture off."""
        return not self._closed and self.writer is not None and self.writer.enabled

    @property
    def run_dir(self) -> Any:
        return None if self.writer is None else self.writer.run_dir

    def record_failure(self, kind: str, exc: BaseException | str) -> None:
        """Count a hook failure (run.json / heartbeat) and warn once per kind."""
        self.failures[kind] = self.failures.get(kind, 0) + 1
        message = f"collapsewatch: {kind} failed ({exc!r}); counted, training continues"
        if self.writer is not None:
            self.writer.record_failure(kind, message if kind not in self._warned else None)
            self._warned.add(kind)
        else:
            self._warn_once(kind, message)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _step_state(self, step: int) -> _StepState | None:
        """The open step; a new step closes the previous one. None for data about an ended step."""
        step = int(step)
        if self._state is not None and self._state.step != step:
            if step < self._state.step:
                return None
            self._end_step_now(self._state)
        if self._state is None:
            if self._last_ended is not None and step <= self._last_ended:
                return None
            self._state = _StepState(step)
        return self._state

    def _ctrl_ids(self, device: torch.device) -> torch.Tensor:
        if device not in self._control_ids:
            self._control_ids[device] = self._control_ids_cpu.to(device)
        return self._control_ids[device]

    # ----- public API ---------------------------------------------------------------------------
    @_guarded("log_scalars")
    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Scalars for a step (canonical names in collapsewatch.schema.SCALARS, others namespaced)."""
        clean = {}
        for name, value in scalars.items():
            try:
                clean[str(name)] = float(value.item() if isinstance(value, torch.Tensor) else value)
            except (TypeError, ValueError):
                continue
        state = self._step_state(step)
        if state is None:  # a late scalar for a step already written (e.g. the final train summary)
            self._write_scalars(int(step), clean)
        else:
            state.scalars.update(clean)

    @_guarded("log_rollout")
    def log_rollout(
        self,
        step: int,
        completion_ids: Any = None,
        rewards: Any = None,
        advantages: Any = None,
        group_ids: Any = None,
        texts: Sequence[str] | None = None,
        turn_texts: Sequence[Sequence[str]] | None = None,
        success: Any = None,
        reward_components: Mapping[str, Any] | Sequence[Mapping[str, float]] | None = None,
        sources: Sequence[str] | None = None,
        num_tool_calls: Any = None,
        num_tool_errors: Any = None,
        finish_reasons: Sequence[str | None] | None = None,
        info: Sequence[Any] | None = None,
        prompts: Sequence[str] | None = None,
        uids: Sequence[str] | None = None,
        tool_mask: Any = None,
        *,
        completion_mask: Any = None,
        seq_index: Any = None,
        samples: Any = None,
        prompt_lens: Any = None,
        completion_lens: Any = None,
        num_turns: Any = None,
    ) -> None:
        """One row per rollout in the sequences table (written when the step ends)."""
        state = self._step_state(step)
        if state is None:
            return
        n = rollout_count(completion_ids, rewards, texts, uids, advantages)
        seq = (
            to_numpy(seq_index, np.int64) if seq_index is not None else np.arange(n) + state.next_rollout_seq
        )
        state.next_rollout_seq = max(state.next_rollout_seq, int(seq.max()) + 1 if n else 0)
        rank = self.writer.rank if self.writer is not None else 0
        cols = rollout_columns(
            state.step, rank, seq, n, self.tokenizer,
            completion_ids=completion_ids, completion_mask=completion_mask, tool_mask=tool_mask,
            completion_lens=completion_lens, texts=texts, rewards=rewards, advantages=advantages,
            group_ids=group_ids, samples=samples, success=success, num_tool_calls=num_tool_calls,
            num_tool_errors=num_tool_errors, prompt_lens=prompt_lens, num_turns=num_turns,
            turn_texts=turn_texts, sources=sources, finish_reasons=finish_reasons, prompts=prompts,
            uids=uids, info=info, reward_components=reward_components,
        )  # fmt: skip
        state.rollouts.append(cols)

    @_guarded("log_logits")
    def log_logits(
        self,
        step: int,
        logits: torch.Tensor,
        completion_ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        tool_mask: torch.Tensor | None = None,
        seq_index: Any = None,
        old_logprobs: torch.Tensor | None = None,
        ref_logprobs: torch.Tensor | None = None,
        sampling_logprobs: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
    ) -> None:
        """Capture from logits [B, T, V] aligned with completion_ids [B, T] (logits[t] predicts ids[t])."""
        state = self._step_state(step)
        if state is None:
            return
        ids = completion_ids.to(logits.device)
        ts = token_stats_from_logits(
            logits,
            ids,
            self._ctrl_ids(logits.device),
            temperature=temperature,
            chunk_elements=self.chunk_elements,
        )

        def top_fn(b: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return top_alternatives(logits[b, t].float() / temperature, ts.logsumexp[b, t], TOP_K)

        self._ingest(
            state, ids, ts.logprob, ts.entropy, ts.control_logprobs, mask, tool_mask, seq_index,
            old_logprobs, ref_logprobs, sampling_logprobs, top_fn,
        )  # fmt: skip

    @_guarded("log_logprobs")
    def log_logprobs(
        self,
        step: int,
        logprobs: torch.Tensor,
        entropies: torch.Tensor | None,
        completion_ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        tool_mask: torch.Tensor | None = None,
        seq_index: Any = None,
        old_logprobs: torch.Tensor | None = None,
        ref_logprobs: torch.Tensor | None = None,
        sampling_logprobs: torch.Tensor | None = None,
        *,
        control_logprobs: torch.Tensor | None = None,
        top_fn: TopFn | None = None,
    ) -> None:
        """Capture from a trainer's own logprobs/entropies [B, T]; control_logprobs [B, T, k] if known.

        Without control_logprobs, control statistics are skipped (get them cheaply with
        `capture.control_logprobs_from_sampled` from k gathered logit columns).
        """
        state = self._step_state(step)
        if state is None:
            return
        device = logprobs.device
        lp = logprobs.detach().float()
        ent = entropies.detach().float() if entropies is not None else torch.full_like(lp, math.nan)
        ids = completion_ids.to(device)
        ctrl = control_logprobs.detach().float() if control_logprobs is not None else None
        self._ingest(
            state, ids, lp, ent, ctrl, mask, tool_mask, seq_index,
            old_logprobs, ref_logprobs, sampling_logprobs, top_fn,
        )  # fmt: skip

    @_guarded("end_step")
    def end_step(self, step: int) -> None:
        """The step is complete: write its scalars and sequences, run the live detectors, flush."""
        if self._state is not None and self._state.step == int(step):
            self._end_step_now(self._state)

    def close(self, status: str = "finished") -> None:
        """Write what is open and finish the run (status `finished` or `crashed`)."""
        if self._closed:
            return
        try:
            if self._state is not None and self.enabled:
                self._end_step_now(self._state)
        except Exception as exc:
            self.record_failure("end_step", exc)
        self._closed = True
        if self._monitor_pool is not None:
            self._monitor_pool.shutdown(wait=True)  # pending detector runs write their alerts first
        if self.monitor is not None and hasattr(self.monitor, "close"):
            try:
                self.monitor.close()
            except Exception as exc:
                self.record_failure("live_monitor", exc)
        if self.writer is not None:
            self.writer.update_meta(hook_failures=dict(self.failures))
            self.writer.close(status=status)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        self.close(status="crashed" if exc_type is not None else "finished")

    # ----- token capture ------------------------------------------------------------------------
    def _ingest(
        self,
        state: _StepState,
        ids: torch.Tensor,
        logprob: torch.Tensor,
        entropy: torch.Tensor,
        ctrl_logp: torch.Tensor | None,
        mask: torch.Tensor | None,
        tool_mask: torch.Tensor | None,
        seq_index: Any,
        old: torch.Tensor | None,
        ref: torch.Tensor | None,
        sampling: torch.Tensor | None,
        top_fn: TopFn | None,
    ) -> None:
        device = logprob.device
        if ids.dim() == 1:
            ids, logprob, entropy = ids[None], logprob[None], entropy[None]
            ctrl_logp = None if ctrl_logp is None else ctrl_logp[None]
        batch = ids.shape[0]
        if batch == 0 or ids.shape[1] == 0:
            return
        in_completion = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
        policy = torch.ones_like(in_completion) if tool_mask is None else tool_mask.to(device).bool()
        valid = in_completion & policy  # generated by the policy: what statistics are about
        if seq_index is None:
            seqs = torch.arange(batch) + state.next_logits_seq
        else:
            seqs = torch.as_tensor(to_numpy(seq_index, np.int64))
        state.next_logits_seq = max(state.next_logits_seq, int(seqs.max()) + 1)
        ctrl_ids = self._ctrl_ids(device)
        is_control = (ids.unsqueeze(-1) == ctrl_ids).any(-1)
        types = position_types(
            ids, self.controls.open_tags, self.controls.close_tags, policy if tool_mask is not None else None
        )

        # step totals and control statistics, kept on the device until the step ends
        entropy_nan = torch.isnan(entropy)
        ent_valid = torch.nan_to_num(entropy, nan=0.0) * valid
        lp_valid = logprob * valid
        totals = torch.stack(
            [
                ent_valid.sum(),
                (valid & ~entropy_nan).sum().float(),
                lp_valid.sum(),
                valid.sum().float(),
            ]
        ).double()
        state.totals = totals if state.totals is None else state.totals + totals
        if ctrl_logp is not None:
            if state.stats is None:
                state.stats = ControlStepStats(self.controls.ids, device)
            state.stats.add(ctrl_logp[valid], ids[valid], types[valid])
            unexpected = (ctrl_logp.exp() * (ids.unsqueeze(-1) != ctrl_ids)).amax(-1)
        else:
            unexpected = None

        # per-sequence aggregates, moved to the host in one transfer
        per_seq = [
            ent_valid.sum(1), valid.sum(1).float(), lp_valid.sum(1),
            torch.zeros(batch, device=device) if old is None else (old.to(device).float() * valid).sum(1),
            torch.full((batch,), -1.0, device=device) if unexpected is None else torch.where(valid, unexpected, 0).amax(1),
            (~entropy_nan.all(1)).float(),
        ]  # fmt: skip
        agg = torch.stack(per_seq, 1).double().cpu().numpy()
        for b, s in enumerate(seqs.tolist()):
            row = state.seqs.setdefault(s, {"ent": 0.0, "n": 0.0, "lp": 0.0, "old": 0.0, "umax": -1.0})
            row["ent"] += agg[b, 0]
            row["n"] += agg[b, 1]
            row["lp"] += agg[b, 2]
            row["old"] += agg[b, 3]
            row["umax"] = max(row["umax"], agg[b, 4])
            row["has_old"] = old is not None
            row["has_entropy"] = bool(agg[b, 5])

        # token rows
        if self.capture == "all":
            keep = in_completion
        else:
            keep = valid & is_control
            if unexpected is not None:
                keep |= valid & (unexpected > self.unexpected_threshold)
            sampled = seqs.to(device) < self.sample_rollouts
            keep |= in_completion & sampled.unsqueeze(1)
        self._write_tokens(state, keep, seqs, ids, logprob, entropy, ctrl_logp, types, is_control, policy,
                           old, ref, sampling, top_fn)  # fmt: skip

    def _write_tokens(self, state, keep, seqs, ids, logprob, entropy, ctrl_logp, types, is_control, policy,
                      old, ref, sampling, top_fn) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        cols = token_columns(keep, seqs, ids, logprob, entropy, ctrl_logp, types, is_control, policy,
                             old, ref, sampling, top_fn)  # fmt: skip
        if cols is not None and self.writer is not None:
            self.writer.write("tokens", state.step, cols)

    # ----- step end -----------------------------------------------------------------------------
    def _end_step_now(self, state: _StepState) -> None:
        self._state = None
        self._last_ended = state.step if self._last_ended is None else max(self._last_ended, state.step)
        scalars = dict(state.scalars)
        if state.totals is not None:
            ent_sum, ent_n, lp_sum, n = state.totals.cpu().tolist()
            scalars["tokens/count"] = n
            if n > 0:
                scalars["tokens/logprob_mean"] = lp_sum / n
            if ent_n > 0:
                scalars["tokens/entropy_mean"] = ent_sum / ent_n
        if state.stats is not None:
            scalars.update(state.stats.scalars(self.controls.texts))
        self._write_scalars(state.step, scalars)
        rank = self.writer.rank if self.writer is not None else 0
        sequences = sequence_rows(state.step, rank, state.rollouts, state.seqs)
        if sequences is not None:
            assert self.writer is not None
            self.writer.write("sequences", state.step, sequences)
        if self.monitor is not None:
            if self._monitor_pool is not None:
                self._monitor_pool.submit(self._run_monitor, state.step, scalars, sequences)
            else:
                self._run_monitor(state.step, scalars, sequences)
        if self.writer is not None:
            self.writer.flush_step(state.step)

    def _write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not scalars or self.writer is None:
            return
        now = time.time()
        names = list(scalars)
        self.writer.write(
            "steps",
            step,
            {
                "name": names,
                "value": np.array([scalars[k] for k in names], dtype=np.float64),
                "time": np.full(len(names), now),
            },
        )

    # ----- live detectors -----------------------------------------------------------------------
    def _run_monitor(self, step: int, scalars: dict[str, float], sequences: dict[str, Any] | None) -> None:
        if self.monitor is None:
            return
        try:
            alerts = self.monitor.update(step, scalars, sequences) or []
        except Exception as exc:
            self.record_failure("live_monitor", exc)
            return
        if not alerts:
            return
        rows = [alert_row(a, step) for a in alerts]
        if self.writer is not None:
            self.writer.write("alerts", step, {k: [r[k] for r in rows] for k in rows[0]})
        if trips_stop(rows, self.stop_on):
            self.should_stop = True
