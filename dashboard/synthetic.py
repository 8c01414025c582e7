"""Synthetic runs written with the real RunWriter: for the dashboard's tests, benchmark and screenshots.

A run looks like a tool-use GRPO run that is healthy until `collapse_at`, then breaks the way the
seed paper describes (P(<|im_end|>) right after `<tool_call>` spikes, bare tags, text pollution).
Token ids come from a tiny byte-level BPE trained here (no downloads), saved next to the run so the
dashboard can decode tokens. Numbers are generated, not learned: this is test data, not evidence.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from collapsewatch import schema
from collapsewatch.store.writer import RunWriter

CONTROL = ["<tool_call>", "</tool_call>", "<|im_end|>"]
SPECIAL = [*CONTROL, "<tool_response>", "</tool_response>"]
POS = schema.POSITION_TYPE_CODE
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]

HEALTHY_CALL = (
    '<tool_call>{{"name": "get_balance", "arguments": {{"account": "{who}"}}}}</tool_call><|im_end|>'
)
HEALTHY_REPLY = "{Who} has {n} dollars.<|im_end|>"
TOOL_OUTPUT = '<tool_response>{{"balance": {n}}}</tool_response>'
POLLUTED = '<tool_call>{{"name": "get_balance", "arguments": {{"account": "{who}"}}}}</tool_call> user <tool_response> {n}<|im_end|>'
COLLAPSED = "<tool_call><|im_end|>"


def build_tokenizer(path: Path):
    """Train a ~300-token byte-level BPE on the templates and save it as `path` (tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = []
    for who in NAMES:
        for n in (7, 42, 100, 250):
            corpus += [
                HEALTHY_CALL.format(who=who),
                HEALTHY_REPLY.format(Who=who.title(), n=n),
                TOOL_OUTPUT.format(n=n),
            ]
    tok.train_from_iterator(corpus * 4, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


def collapse_progress(step: int, collapse_at: int | None, width: float = 4.0) -> float:
    """0 while healthy, rising to 1 around `collapse_at` (logistic, `width` steps)."""
    if collapse_at is None:
        return 0.0
    return 1.0 / (1.0 + math.exp(min(50.0, -(step - collapse_at) / width)))


@dataclass
class Rollout:
    """Token arrays of one synthetic rollout plus its turn texts."""

    ids: np.ndarray
    is_tool: np.ndarray
    position_type: np.ndarray
    is_control: np.ndarray
    turn_texts: list[str]
    text: str
    state: str
    calls: int


def _position_types(ids: list[int], ctrl_ids: dict[str, int], turn_starts: set[int]) -> np.ndarray:
    out = np.zeros(len(ids), dtype=np.int8)
    inside = False
    prev = None
    for i, tid in enumerate(ids):
        if i in turn_starts:
            out[i] = POS["turn_start"]
        elif prev == ctrl_ids["<tool_call>"]:
            out[i] = POS["after_open_tag"]
        elif prev == ctrl_ids["</tool_call>"]:
            out[i] = POS["after_close_tag"]
        elif inside:
            out[i] = POS["in_call"]
        if tid == ctrl_ids["<tool_call>"]:
            inside = True
        elif tid == ctrl_ids["</tool_call>"]:
            inside = False
        prev = tid
    return out


def make_rollout(tok, state: str, rng: np.random.Generator) -> Rollout:
    """A rollout in one structural state: call -> tool output -> reply when healthy."""
    ctrl_ids = {t: tok.token_to_id(t) for t in CONTROL}
    who = NAMES[int(rng.integers(len(NAMES)))]
    n = int(rng.choice([7, 42, 100, 250]))
    if state == "healthy":
        pieces = [
            ("turn", HEALTHY_CALL.format(who=who)),
            ("tool", TOOL_OUTPUT.format(n=n)),
            ("turn", HEALTHY_REPLY.format(Who=who.title(), n=n)),
        ]
    elif state == "text_pollution":
        pieces = [("turn", POLLUTED.format(who=who, n=n))]
    else:
        pieces = [("turn", COLLAPSED)]
    ids: list[int] = []
    tool: list[bool] = []
    starts: set[int] = set()
    turns = []
    for kind, text in pieces:
        enc = tok.encode(text).ids
        if kind == "turn":
            starts.add(len(ids))
            turns.append(text)
        ids += enc
        tool += [kind == "tool"] * len(enc)
    arr = np.asarray(ids, dtype=np.int32)
    is_control = np.isin(arr, list(ctrl_ids.values())) & ~np.asarray(tool)
    return Rollout(
        arr,
        np.asarray(tool),
        _position_types(ids, ctrl_ids, starts),
        is_control,
        turns,
        "".join(t for _, t in pieces),
        state,
        1 if state == "healthy" else 0,
    )


@dataclass
class SyntheticRun:
    """Writes a synthetic run step by step through RunWriter (call `write_step`, then `close`)."""

    root: Path
    name: str
    collapse_at: int | None = None
    collapse_width: float = 4.0  # steps over which the collapse happens (logistic scale)
    groups: int = 4
    samples: int = 4
    seed: int = 0
    capture: str = "all"
    alerts: bool = True
    rows_per_rollout: int | None = None  # pad token rows per rollout (benchmark scale)
    tokenizer_path: Path | None = None
    writer: RunWriter = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.rng = np.random.default_rng(self.seed)
        tok_path = self.tokenizer_path or (self.root / self.name / "tokenizer.json")
        self.tok = build_tokenizer(Path(tok_path))
        self.ctrl = [
            {"index": i, "text": t, "token_id": self.tok.token_to_id(t)} for i, t in enumerate(CONTROL)
        ]
        self.writer = RunWriter(
            self.root,
            self.name,
            rank=0,
            world_size=1,
            config={"recipe": "synthetic", "seed": self.seed},
            tokenizer=str(Path(tok_path).resolve()),
            capture=self.capture,
            control_tokens=self.ctrl,
        )
        templates = {
            s: [make_rollout(self.tok, s, self.rng) for _ in range(6)]
            for s in ("healthy", "text_pollution", "full_collapse")
        }
        if self.rows_per_rollout:
            templates = {s: [_padded(r, self.rows_per_rollout) for r in rs] for s, rs in templates.items()}
        self.templates = templates

    # ------------------------------------------------------------------------------------------
    def _states(self, c: float, n: int) -> list[str]:
        p = np.array([1 - c, 0.35 * c, 0.65 * c]) + 1e-9
        return list(self.rng.choice(["healthy", "text_pollution", "full_collapse"], size=n, p=p / p.sum()))

    def write_step(self, step: int, flush: bool = True) -> None:
        c = collapse_progress(step, self.collapse_at, self.collapse_width)
        n = self.groups * self.samples
        states = self._states(c, n)
        rollouts = [self.templates[s][int(self.rng.integers(6))] for s in states]
        success = np.array([s == "healthy" and self.rng.random() < 0.85 for s in states])
        reward = success.astype(float)
        group = np.repeat(np.arange(self.groups), self.samples).astype(np.int32)
        by_group = reward.reshape(self.groups, self.samples)
        mean = np.repeat(by_group.mean(axis=1), self.samples)
        std = np.repeat(by_group.std(axis=1), self.samples)
        advantage = ((reward - mean) / (std + 1e-6)).astype(np.float32)
        self._write_tokens(step, rollouts, c)
        w = self.writer
        w.write(
            "sequences",
            step,
            {
                "seq": np.arange(n, dtype=np.int32),
                "uid": [f"{step}-0-{i}" for i in range(n)],
                "group": group,
                "sample": np.tile(np.arange(self.samples), self.groups).astype(np.int16),
                "source": ["policy"] * n,
                "prompt_len": np.full(n, 40, np.int32),
                "completion_len": np.array([int((~r.is_tool).sum()) for r in rollouts], np.int32),
                "num_turns": np.array([len(r.turn_texts) for r in rollouts], np.int16),
                "num_tool_calls": np.array([r.calls for r in rollouts], np.int16),
                "num_tool_errors": np.zeros(n, np.int16),
                "reward": reward,
                "advantage": advantage,
                "success": success.tolist(),
                "finish_reason": ["stop"] * n,
                "entropy_mean": np.full(n, 0.4 + 1.2 * c, np.float32),
                "logprob_sum": np.full(n, -12.0, np.float32),
                "text": [r.text for r in rollouts],
                "turn_texts": [r.turn_texts for r in rollouts],
                "prompt": ["What is the balance?"] * n,
            },
        )
        w.write(
            "steps",
            step,
            {"name": list(self._scalars(step, c, reward, success, rollouts)), "value": list(self._values)},
        )
        if (
            self.alerts
            and self.collapse_at is not None
            and step in (self.collapse_at - 3, self.collapse_at + 4)
        ):
            early = step == self.collapse_at - 3
            bad = [i for i, s in enumerate(states) if s != "healthy"][:3] or [0]
            w.write(
                "alerts",
                step,
                {
                    "detector": ["control_spike" if early else "reward_collapse"],
                    "severity": ["warning" if early else "critical"],
                    "message": [
                        "P(<|im_end|>) right after <tool_call> jumped 40x over its baseline: format is breaking; lower the LR"
                        if early
                        else "reward fell below half its running peak for 5 steps"
                    ],
                    "value": [0.2 if early else 0.1],
                    "baseline": [0.005 if early else 0.8],
                    "evidence": [
                        json.dumps({"token": "<|im_end|>", "position_type": "after_open_tag", "seqs": bad})
                    ],
                    "source": ["live"],
                },
            )
        if flush:
            w.flush_step(step)

    def _scalars(self, step: int, c: float, reward: np.ndarray, success: np.ndarray, rollouts: list[Rollout]):
        noise = lambda s: float(self.rng.normal(0, s))  # noqa: E731
        values = {
            "reward/mean": float(reward.mean()),
            "success/rate": float(success.mean()),
            "entropy/mean": 0.45 + 1.1 * c + noise(0.03),
            "kl/mean": 0.01 + 0.2 * c + abs(noise(0.005)),
            "tool_calls/per_rollout": float(np.mean([r.calls for r in rollouts])),
            "length/mean": float(np.mean([len(r.ids) for r in rollouts])),
        }
        base = {
            "<tool_call>": {
                "turn_start": 0.55,
                "after_open_tag": 1e-5,
                "in_call": 1e-6,
                "after_close_tag": 1e-5,
            },
            "</tool_call>": {
                "turn_start": 1e-6,
                "after_open_tag": 1e-6,
                "in_call": 0.02,
                "after_close_tag": 1e-6,
            },
            "<|im_end|>": {
                "turn_start": 1e-4,
                "after_open_tag": 3e-5,
                "in_call": 1e-5,
                "after_close_tag": 0.9,
            },
        }
        spike = {("<|im_end|>", "after_open_tag"): 0.6, ("<tool_call>", "turn_start"): 0.35}
        for token, by_pos in base.items():
            for pt, p0 in by_pos.items():
                target = spike.get((token, pt), p0)
                mean = min(0.99, p0 + (target - p0) * c) * math.exp(noise(0.15))
                values[schema.control_stat_name(token, pt, "mean")] = mean
                values[schema.control_stat_name(token, pt, "p99")] = min(1.0, mean * 4)
                values[schema.control_stat_name(token, pt, "max")] = min(1.0, mean * 9)
                # where the token was not sampled: small at its own positions, the spike elsewhere
                unexpected = 1e-3 * math.exp(noise(0.2)) if p0 >= 0.1 else min(1.0, mean * 3)
                values[schema.control_stat_name(token, pt, "unexpected_max")] = unexpected
        self._values = list(values.values())
        return values.keys()

    def _write_tokens(self, step: int, rollouts: list[Rollout], c: float) -> None:
        lengths = np.array([len(r.ids) for r in rollouts])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        ids = np.concatenate([r.ids for r in rollouts])
        seq = np.repeat(np.arange(len(rollouts), dtype=np.int32), lengths)
        pos = (np.arange(len(ids)) - np.repeat(starts, lengths)).astype(np.int32)
        tool = np.concatenate([r.is_tool for r in rollouts])
        ptype = np.concatenate([r.position_type for r in rollouts])
        is_ctrl = np.concatenate([r.is_control for r in rollouts])
        m = len(ids)
        logprob = -np.abs(self.rng.normal(0.05 + 1.5 * c, 0.3 + c, m)).astype(np.float32)
        logprob[tool] = np.nan
        entropy = np.abs(self.rng.normal(0.4 + 1.2 * c, 0.3, m)).astype(np.float32)
        cq = {}
        for i, t in enumerate(CONTROL):
            lp = np.full(m, -12.0) + self.rng.normal(0, 1.5, m)
            lp[ids == self.ctrl[i]["token_id"]] = logprob[ids == self.ctrl[i]["token_id"]]
            if t == "<|im_end|>":
                lp[ptype == POS["after_open_tag"]] = math.log(max(1e-9, 3e-5 + 0.6 * c))
            cq[schema.control_column(i)] = schema.quantize_control_logprobs(lp)
        top_ids, top_lps = self._top_alternatives(ids, is_ctrl)
        self.writer.write(
            "tokens",
            step,
            {
                "seq": seq,
                "pos": pos,
                "token_id": ids,
                "logprob": schema.round_mantissa(logprob),
                "entropy": schema.round_mantissa(entropy),
                "position_type": ptype,
                "is_control": is_ctrl,
                "is_tool_output": tool,
                "top_ids": top_ids,
                "top_logprobs": top_lps,
                **cq,
            },
        )

    def _top_alternatives(self, ids: np.ndarray, is_ctrl: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """Top-5 ids and logprobs at control-token positions (null elsewhere), built as Arrow lists."""
        k = 5
        where = np.flatnonzero(is_ctrl)
        alt_ids = np.empty((len(where), k), np.int32)
        alt_ids[:, 0] = ids[where]
        others = np.array([e["token_id"] for e in self.ctrl] + [5, 9], np.int32)
        for j in range(1, k):
            alt_ids[:, j] = others[(np.arange(len(where)) + j) % len(others)]
        probs = np.sort(self.rng.dirichlet(np.ones(k), size=len(where)), axis=1)[:, ::-1]
        counts = np.where(is_ctrl, k, 0)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        mask = pa.array(~is_ctrl)
        top_ids = pa.ListArray.from_arrays(offsets, pa.array(alt_ids.ravel()), mask=mask)
        top_lps = pa.ListArray.from_arrays(
            offsets, pa.array(np.log(probs).astype(np.float32).ravel()), mask=mask
        )
        return top_ids, top_lps

    def close(self, status: str = "finished") -> None:
        self.writer.close(status=status)


def _padded(r: Rollout, rows: int) -> Rollout:
    """The rollout's token rows repeated up to `rows` (benchmark scale without more Python work)."""
    reps = int(math.ceil(rows / len(r.ids)))

    def tile(a: np.ndarray) -> np.ndarray:
        return np.tile(a, reps)[:rows]

    return Rollout(
        tile(r.ids),
        tile(r.is_tool),
        tile(r.position_type),
        tile(r.is_control),
        r.turn_texts,
        r.text,
        r.state,
        r.calls,
    )


def write_run(
    root: Path, name: str, steps: int, collapse_at: int | None = None, status: str = "finished", **kwargs
) -> SyntheticRun:
    """Write a whole synthetic run of `steps` steps and close it with `status`."""
    run = SyntheticRun(Path(root), name, collapse_at=collapse_at, **kwargs)
    for step in range(steps):
        run.write_step(step)
    if status:
        run.close(status)
    return run
