"""Step drill-down: the GRPO groups of one step, then one rollout rendered token by token.

Token rows are read only here, with DuckDB through the store, pruned to this step (and rollout):
the rest of a 50M-row run is never touched.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from urllib.parse import unquote

import numpy as np
import pandas as pd
from dash import Dash, Input, Output, State, dcc, html

from collapsewatch.dashboard import background, components, routes, states
from collapsewatch.dashboard.catalog import RunCatalog
from collapsewatch.dashboard.rollout import legend, render_rollout
from collapsewatch.dashboard.vocab import vocab_for_run

SEQUENCE_COLUMNS = [
    "step",
    "seq",
    "rank",
    "uid",
    "group",
    "sample",
    "source",
    "reward",
    "advantage",
    "success",
    "finish_reason",
    "num_turns",
    "num_tool_calls",
    "num_tool_errors",
    "completion_len",
    "entropy_mean",
    "control_unexpected_max",
    "turn_texts",
]
_classify = states.load_classifier()


# A step with at most this many token rows is read whole in the background as soon as its page
# opens, so a click on a rollout slices memory instead of querying (bigger steps query per rollout).
PREFETCH_MAX_ROWS = 250_000


class StepData:
    """Sequences of one step (+ state per rollout and captured token counts), cached by file list;
    plus, for small enough steps, the step's token rows fetched in the background."""

    def __init__(self, max_steps: int = 32) -> None:
        self._lock = threading.Lock()
        self._lru: OrderedDict[tuple, pd.DataFrame] = OrderedDict()
        self._tokens: OrderedDict[tuple, pd.DataFrame] = OrderedDict()
        self.max_steps = max_steps

    def _prefetch(self, run, key: tuple, step: int) -> None:  # noqa: ANN001
        try:
            frame = run.tokens(steps=[step])
        except Exception:  # noqa: BLE001 - the click path queries (and reports) by itself
            return
        with self._lock:
            self._tokens[key] = frame
            while len(self._tokens) > 4:
                self._tokens.popitem(last=False)

    def tokens(self, run, run_id: str, step: int, seq: int, rank: int) -> pd.DataFrame:  # noqa: ANN001
        """One rollout's token rows: from the prefetched step when ready, else a pruned query."""
        key = (run_id, step, tuple(run.files("tokens", steps=[step])))
        with self._lock:
            frame = self._tokens.get(key)
        if frame is None:
            return run.tokens(steps=[step], seqs=[seq], rank=rank)
        rows = frame[(frame["seq"] == seq) & (frame["rank"] == rank)]
        return rows.sort_values("pos").reset_index(drop=True)

    def get(self, catalog: RunCatalog, run_id: str, step: int) -> pd.DataFrame:
        run = catalog.cache(run_id).run
        key = (
            run_id,
            step,
            tuple(run.files("sequences", steps=[step])),
            tuple(run.files("tokens", steps=[step])),
        )
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
        seqs = run.sequences(steps=[step])
        seqs = seqs[[c for c in SEQUENCE_COLUMNS if c in seqs.columns]].copy()
        seqs["state"] = [
            states.rollout_state(t, _classify) for t in seqs.get("turn_texts", [None] * len(seqs))
        ]
        counts = run.query("tokens", steps=[step], columns=["rank", "seq"])
        captured = counts.groupby(["rank", "seq"]).size() if not counts.empty else pd.Series(dtype="int64")
        seqs["tokens_captured"] = [
            int(captured.get((r, s), 0)) for r, s in zip(seqs["rank"], seqs["seq"], strict=False)
        ]
        with self._lock:
            self._lru[key] = seqs
            while len(self._lru) > self.max_steps:
                self._lru.popitem(last=False)
        if 0 < len(counts) <= PREFETCH_MAX_ROWS:
            token_key = (run_id, step, key[3])
            background.submit(self._prefetch, run, token_key, step)
        return seqs


STEP_DATA = StepData()
CHIP_KEY = html.Div(
    [
        html.Span("success", className="chip ok"),
        html.Span("failed", className="chip fail"),
        html.Span("text pollution", className="chip state-text_pollution"),
        html.Span("full collapse", className="chip state-full_collapse"),
        html.Span("bold: token rows captured", className="muted small"),
    ],
    className="chips key",
)


def _chip(run_id: str, row: dict) -> html.Span:
    success = row.get("success")
    cls = ["chip", "ok" if success is True else "fail" if success is False else "unknown"]
    if row.get("state"):
        cls.append(f"state-{row['state']}")
    if row.get("tokens_captured"):
        cls.append("has-tokens")
    reward = row.get("reward")
    label = (
        f"#{int(row['sample']) if row.get('sample', -1) >= 0 else int(row['seq'])} r={reward:.2g}"
        if reward is not None and np.isfinite(reward)
        else f"#{int(row['seq'])}"
    )
    title = (
        f"seq {int(row['seq'])} (rank {int(row['rank'])}) · {row.get('source')} · reward {reward} · "
        f"advantage {row.get('advantage')} · {row.get('num_tool_calls')} tool calls · finish {row.get('finish_reason')} · "
        f"state {row.get('state') or 'n/a'} · {row.get('tokens_captured', 0)} token rows"
    )
    link = dcc.Link(
        label,
        href=routes.step_href(run_id, int(row["step"]), int(row["seq"]), int(row["rank"])),
        className=" ".join(cls),
        title=title,
    )
    return html.Span(
        link, className="chip-wrap", **{"data-seq": str(int(row["seq"])), "data-rank": str(int(row["rank"]))}
    )


def groups_table(run_id: str, seqs: pd.DataFrame) -> html.Div:
    """One line per GRPO group: reward mean/std and a chip per rollout (click to open it)."""
    if seqs.empty:
        return html.Div("No rollouts recorded at this step.", className="muted")
    lines = []
    for (rank, group), members in seqs.groupby(["rank", "group"], sort=True):
        rewards = members["reward"].to_numpy(dtype=float, na_value=np.nan)
        std = float(np.nanstd(rewards)) if len(rewards) else float("nan")
        label = f"group {int(group)}" if group >= 0 else "ungrouped"
        if seqs["rank"].nunique() > 1:
            label += f" (rank {int(rank)})"
        flag = " · no signal (all rewards equal)" if len(rewards) > 1 and std == 0 else ""
        lines.append(
            html.Div(
                [
                    html.Div(
                        [
                            html.Strong(label),
                            html.Span(
                                f" mean {np.nanmean(rewards):.3g} · std {std:.3g}{flag}", className="muted"
                            ),
                        ],
                        className="group-head",
                    ),
                    html.Div(
                        [_chip(run_id, r) for r in members.sort_values(["sample", "seq"]).to_dict("records")],
                        className="chips",
                    ),
                ],
                className="group",
            )
        )
    return html.Div(lines, id="groups")


def layout(catalog: RunCatalog, run_id: str, step: int) -> html.Div:
    snap = catalog.cache(run_id).snapshot()
    try:
        seqs = STEP_DATA.get(catalog, run_id, step)
        problems = list(snap.warnings)
    except Exception as exc:  # a corrupt step shows as a banner, not an error page
        seqs, problems = (
            pd.DataFrame(columns=SEQUENCE_COLUMNS),
            [*snap.warnings, f"could not read step {step}: {exc}"],
        )
    nav = (
        [dcc.Link("← previous step", href=routes.step_href(run_id, step - 1), className="button")]
        if step > 0
        else []
    )
    nav.append(dcc.Link("next step →", href=routes.step_href(run_id, step + 1), className="button"))
    return html.Div(
        [
            components.run_tabs(run_id, "overview", step=step),
            html.H2([f"{run_id} · step {step} ", components.status_badge(snap.status)]),
            html.Div(components.banner(problems)),
            html.Div(nav, className="toolbar"),
            html.Div(
                [
                    html.Div(
                        [
                            html.H3(f"GRPO groups ({len(seqs)} rollouts)"),
                            CHIP_KEY,
                            groups_table(run_id, seqs),
                        ],
                        className="groups-col",
                    ),
                    html.Div(
                        [
                            html.Div(
                                [
                                    html.Span("Colour tokens by "),
                                    dcc.RadioItems(
                                        id="color-by",
                                        options=[
                                            {"label": "probability", "value": "prob"},
                                            {"label": "entropy", "value": "entropy"},
                                        ],
                                        value="prob",
                                        inline=True,
                                    ),
                                ],
                                className="toolbar",
                            ),
                            html.Div(
                                id="rollout-panel",
                                children=html.Div("Click a rollout on the left.", className="muted"),
                            ),
                        ],
                        className="rollout-col",
                    ),
                ],
                className="step-grid",
            ),
            dcc.Store(id="step-state", data={"run": run_id, "step": step}),
            dcc.Store(id="chip-marker"),
        ]
    )


def rollout_panel(
    catalog: RunCatalog, run_id: str, step: int, seq: int | None, rank: int | None, color_by: str
):
    """Header, legend and token view of one rollout (or a hint when none is selected)."""
    cache = catalog.cache(run_id)
    if cache is None:
        return components.not_found("No such run.")
    if seq is None:
        return html.Div("Click a rollout on the left.", className="muted")
    rank = int(rank or 0)
    seqs = STEP_DATA.get(catalog, run_id, step)
    match = seqs[(seqs["seq"] == seq) & (seqs["rank"] == rank)]
    if match.empty:
        return html.Div(
            f"No rollout {seq} (rank {rank}) at step {step}.", className="muted", id="rollout-missing"
        )
    row = match.iloc[0].to_dict()
    run = cache.run
    tokens = STEP_DATA.tokens(run, run_id, step, seq, rank)
    vocab = vocab_for_run(run.meta, run.path)
    facts = [
        ("uid", row.get("uid")),
        ("group", row.get("group")),
        ("sample", row.get("sample")),
        ("source", row.get("source")),
        ("reward", row.get("reward")),
        ("advantage", row.get("advantage")),
        ("success", row.get("success")),
        ("state", row.get("state")),
        ("tool calls", row.get("num_tool_calls")),
        ("tool errors", row.get("num_tool_errors")),
        ("finish", row.get("finish_reason")),
        ("token rows", len(tokens)),
    ]
    facts = [(k, _fmt(v)) for k, v in facts]
    turns = row.get("turn_texts")
    turn_list = [] if turns is None else list(turns)
    decoded = html.Details(
        [
            html.Summary(f"decoded assistant turns ({len(turn_list)})"),
            *[html.Pre(str(t), className="turn-text") for t in turn_list],
        ],
        className="decoded",
    )
    notes = (
        []
        if vocab.has_tokenizer
        else [html.Div("No local tokenizer for this run: tokens show as ⟨id⟩.", className="muted")]
    )
    return html.Div(
        [
            html.H3(f"Rollout {seq} (rank {rank})"),
            html.Div(
                [html.Span([html.B(k + " "), html.Span(v)], className="fact") for k, v in facts],
                className="facts",
            ),
            legend(color_by),
            *notes,
            render_rollout(tokens, vocab, run.control_tokens, color_by),
            decoded,
        ],
        id="rollout",
        **{"data-seq": str(seq)},
    )


def _fmt(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


# Mark the open rollout's chip in the browser (the groups list is not re-rendered on a click).
MARK_SELECTED_CHIP = """
function(children, search) {
    const q = new URLSearchParams(search || "");
    document.querySelectorAll("#groups .chip-wrap").forEach(function (e) {
        e.classList.toggle("selected", e.dataset.seq === q.get("seq") && e.dataset.rank === (q.get("rank") || "0"));
    });
    return window.dash_clientside.no_update;
}
"""


def register(app: Dash, catalog: RunCatalog) -> None:
    app.clientside_callback(
        MARK_SELECTED_CHIP,
        Output("chip-marker", "data"),
        Input("rollout-panel", "children"),
        State("url", "search"),
    )

    @app.callback(
        Output("rollout-panel", "children"),
        Input("url", "search"),
        Input("color-by", "value"),
        State("url", "pathname"),
    )
    def show_rollout(search, color_by, pathname):
        route = routes.parse_route(unquote(pathname or "/"), search)
        if route.page != "step" or catalog.resolve(route.run_id) is None:
            return html.Div()
        seq = routes.query_int(search, "seq")
        rank = routes.query_int(search, "rank")
        try:
            return rollout_panel(catalog, route.run_id, route.step, seq, rank, color_by or "prob")
        except Exception as exc:  # unreadable token files: say so in place
            return components.banner([f"could not read rollout {seq} of step {route.step}: {exc}"])
