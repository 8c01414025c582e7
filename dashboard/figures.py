"""Plotly figures of the dashboard, built from a RunSnapshot's frames (no I/O here).

Every trace of the overview carries a spec `[source, column]` so a live poll can extend exactly
that trace with the steps it has not seen (`overview_delta`), instead of resending the figure.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from collapsewatch.dashboard.downsample import MAX_POINTS, downsample_together, keep_indices
from collapsewatch.dashboard.runcache import RunSnapshot, series
from collapsewatch.diagnostics.features import parse_control_stat
from collapsewatch.schema import POSITION_TYPES, PROBE_TEXT, STRUCTURAL_STATES, parse_probe_token
from collapsewatch.store.resume import resume_marks

REWARD, SUCCESS, ENTROPY, TOOL_CALLS = "reward/mean", "success/rate", "entropy/mean", "tool_calls/per_rollout"
STATE_COLORS = {
    "healthy_tool_call": "#2e7d32",
    "healthy_response": "#81c784",
    "text_pollution": "#ffa726",
    "full_collapse": "#c62828",
}
SEVERITY_COLORS = {"info": "#607d8b", "warning": "#f9a825", "critical": "#c62828"}
TOKEN_COLORS = ["#1565c0", "#8d6e63", "#ad1457", "#ef6c00", "#455a64", "#7cb342", "#5e35b1", "#00acc1"]
RUN_COLORS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#4e342e", "#ad1457"]
MAX_ALERT_LINES = 300
ROW_HEIGHT_PX = 190


def control_columns(columns: Sequence[str]) -> dict[str, dict[str, dict[str, str]]]:
    """{position_type: {token: {stat: column}}} from `ctrl/<token>/<position_type>/<stat>` names."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    for col in columns:
        parsed = parse_control_stat(col) if isinstance(col, str) else None
        if parsed is None:
            continue
        token, position_type, stat = parsed
        found.setdefault(position_type, {}).setdefault(token, {})[stat] = col
    order = {p: i for i, p in enumerate((*POSITION_TYPES[1:], POSITION_TYPES[0]))}
    return dict(sorted(found.items(), key=lambda kv: order.get(kv[0], 99)))


def probe_columns(columns: Sequence[str]) -> list[str]:
    """The reference probe's per-token series (hooks/probe.py), sorted, then the expert's ordinary
    tokens (the drift the verdict requires in a run with a probe) when present."""
    tokens = sorted(c for c in columns if isinstance(c, str) and parse_probe_token(c) is not None)
    return tokens + [PROBE_TEXT] if tokens and PROBE_TEXT in columns else tokens


def _token_color(tokens: list[str], token: str) -> str:
    index = tokens.index(token) if token in tokens else abs(hash(token))
    return TOKEN_COLORS[index % len(TOKEN_COLORS)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _xy(frame: pd.DataFrame, col: str, keep: np.ndarray | None = None) -> tuple[list, list]:
    x, y = series(frame, col)
    if keep is None:
        keep = keep_indices(x, y)
    return x[keep].tolist(), y[keep].tolist()


def stacked_rows(titles: list[str], spacing_px: int = 46, row_px: int = ROW_HEIGHT_PX) -> dict:
    """Layout of one column of subplots sharing the step axis, as a plain dict (no validation cost).

    Plotly's `make_subplots` + `go.Figure` validate every point; for a 5,000-step run that took
    longer than drawing it, so the overview is assembled from dicts.
    """
    rows = len(titles)
    height = row_px * rows + spacing_px * (rows - 1) + 120
    gap = spacing_px / height
    h = (1.0 - gap * (rows - 1)) / rows
    layout: dict = {"height": height, "annotations": []}
    for i in range(1, rows + 1):
        top = 1.0 - (i - 1) * (h + gap)
        suffix = "" if i == 1 else str(i)
        layout[f"xaxis{suffix}"] = {"anchor": f"y{suffix}", "domain": [0.0, 1.0], "showticklabels": i == rows}
        if i > 1:
            layout[f"xaxis{suffix}"]["matches"] = "x"
        layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}", "domain": [max(0.0, top - h), top]}
        layout["annotations"].append(
            {
                "text": titles[i - 1],
                "x": 0.5,
                "y": top,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 14},
            }
        )
    layout[f"xaxis{'' if rows == 1 else rows}"]["title"] = {"text": "step"}
    plot_px = height - 120  # minus the top and bottom margins below
    layout["margin"] = {"l": 60, "r": 20, "t": 80, "b": 40}
    layout["legend"] = {"orientation": "h", "y": 1.0 + 26 / plot_px, "yanchor": "bottom", "x": 0}
    return layout


def _axis(row: int) -> dict:
    suffix = "" if row == 1 else str(row)
    return {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}


def _line(x: list, y: list, name: str, color: str, **extra) -> dict:
    return {
        "type": "scatter",
        "mode": "lines",
        "x": x,
        "y": y,
        "name": name,
        "line": {"color": color, **extra.pop("line", {})},
        **extra,
    }


def overview_figure(snap: RunSnapshot) -> tuple[dict, list[list[str]]]:
    """The run overview as one figure (a dict) with a shared step axis, and its trace specs."""
    steps, states = snap.steps, snap.states
    ctrl = control_columns(list(steps.columns))
    titles = ["Reward and success rate", "Structural states (share of turns)"]
    titles += [f"p(control token) at {pt.replace('_', ' ')}: mean line, p99 to max band" for pt in ctrl]
    probe = probe_columns(list(steps.columns))
    if probe:
        titles += ["Reference probe: cost of the expert's control tokens, dashed: its text (-log p, nats)"]
    titles += ["Entropy (nats, token mean)", "Tool calls per rollout"]
    rows = len(titles)
    layout = stacked_rows(titles)
    data: list[dict] = []
    specs: list[list[str]] = []

    def add(trace: dict, row: int, src: str, col: str) -> None:
        data.append({**trace, **_axis(row)})
        specs.append([src, col])

    add(_line(*_xy(steps, REWARD), "reward", "#1565c0"), 1, "steps", REWARD)
    add(_line(*_xy(steps, SUCCESS), "success rate", "#2e7d32", line={"dash": "dot"}), 1, "steps", SUCCESS)
    ax, ay, atext, acolor = alert_markers(snap)
    marker = {"symbol": "triangle-down", "size": 11, "color": acolor, "line": {"width": 1, "color": "#fff"}}
    add(
        {
            "type": "scatter",
            "mode": "markers",
            "x": ax,
            "y": ay,
            "text": atext,
            "name": "alerts",
            "hoverinfo": "text+x",
            "marker": marker,
        },
        1,
        "alerts",
        "markers",
    )

    for state in STRUCTURAL_STATES:
        x, y = _xy(states, state) if state in states.columns else ([], [])
        add(
            _line(
                x,
                y,
                state.replace("_", " "),
                STATE_COLORS[state],
                line={"width": 0.5},
                stackgroup="states",
                fillcolor=_rgba(STATE_COLORS[state], 0.75),
            ),
            2,
            "states",
            state,
        )

    legend_shown: set[str] = set()
    for offset, (position_type, by_token) in enumerate(ctrl.items()):
        row = 3 + offset
        for token, stats in by_token.items():
            color = _token_color(snap.control_tokens, token)
            band = [c for c in (stats.get("p99"), stats.get("max")) if c]
            if band:
                bx, _ = series(steps, band[0])
                sub = steps[steps["step"].isin(bx)] if len(bx) != len(steps) else steps
                xs = sub["step"].to_numpy(dtype=np.int64)
                keep = downsample_together(
                    xs, [sub[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in band]
                )
                for i, col in enumerate(band):
                    cx = xs[keep]
                    cy = sub[col].to_numpy(dtype=np.float64, na_value=np.nan)[keep]
                    ok = ~np.isnan(cy)
                    trace = _line(
                        cx[ok].tolist(),
                        cy[ok].tolist(),
                        f"{token} {col.rsplit('/', 1)[1]}",
                        _rgba(color, 0.5),
                        line={"width": 0.6},
                        legendgroup=token,
                        showlegend=False,
                        hoverinfo="skip",
                    )
                    if i == 1:
                        trace.update(fill="tonexty", fillcolor=_rgba(color, 0.18))
                    add(trace, row, "steps", col)
            if "mean" in stats:
                first = token not in legend_shown
                legend_shown.add(token)
                add(
                    _line(
                        *_xy(steps, stats["mean"]),
                        token,
                        color,
                        line={"width": 1.6},
                        legendgroup=token,
                        showlegend=first,
                        hovertemplate=f"{token} mean %{{y:.3g}}<extra>{position_type}</extra>",
                    ),
                    row,
                    "steps",
                    stats["mean"],
                )
        layout[f"yaxis{row}"].update(type="log", exponentformat="power")

    if probe:
        row = rows - 2
        for col in probe:
            token = parse_probe_token(col)
            x, y = _xy(steps, col)
            cost = [-v for v in y]
            if token is None:  # the expert's ordinary tokens
                trace = _line(x, cost, "probe text", "#616161", line={"dash": "dash"})
            else:
                trace = _line(x, cost, f"probe {token}", _token_color(snap.control_tokens, token))
            add(trace, row, "probe", col)
        layout[f"yaxis{row}"].update(type="log", exponentformat="power")

    add(_line(*_xy(steps, ENTROPY), "entropy", "#6a1b9a"), rows - 1, "steps", ENTROPY)
    add(_line(*_xy(steps, TOOL_CALLS), "tool calls", "#00838f"), rows, "steps", TOOL_CALLS)
    layout["yaxis2"]["range"] = [0, 1]
    layout["annotations"] += resume_annotations(snap)
    layout.update(
        hovermode="x unified",
        shapes=overview_shapes(snap),
        uirevision=snap.name,
        template=_white_template(),
    )
    return {"data": data, "layout": layout}, specs


def overview_shapes(snap: RunSnapshot) -> list[dict]:
    """The overview's vertical lines: alerts, then the steps a resume continued after."""
    return alert_shapes(snap.alerts) + resume_shapes(snap)


def resume_shapes(snap: RunSnapshot) -> list[dict]:
    """A grey dashed line across every chart where the run was resumed (a remedy after a page, a
    restart after a crash): what follows it came from another process, maybe other settings."""
    return [
        {
            "type": "line",
            "xref": "x",
            "yref": "paper",
            "x0": mark.step,
            "x1": mark.step,
            "y0": 0,
            "y1": 1,
            "line": {"color": "#757575", "width": 1.5, "dash": "dash"},
        }
        for mark in resume_marks(snap.meta)
    ]


def resume_annotations(snap: RunSnapshot) -> list[dict]:
    """A label on the first chart per resume; hovering it says what changed."""
    return [
        {
            "x": mark.step,
            "xref": "x",
            "y": 1,
            "yref": "y domain",
            "yanchor": "bottom",
            "text": "resumed",
            "hovertext": f"resumed after step {mark.step}: {mark.changed}{mark.aside}",
            "showarrow": False,
            "font": {"size": 10, "color": "#616161"},
        }
        for mark in resume_marks(snap.meta)
    ]


@functools.lru_cache(maxsize=1)
def _white_template() -> dict:
    import plotly.io as pio

    return pio.templates["plotly_white"].to_plotly_json()


def alert_markers(snap: RunSnapshot) -> tuple[list, list, list, list]:
    alerts = snap.alerts
    if alerts is None or alerts.empty:
        return [], [], [], []
    x, y = series(snap.steps, REWARD)
    lookup = dict(zip(x.tolist(), y.tolist(), strict=False))
    top = float(np.nanmax(y)) if len(y) else 1.0
    steps = alerts["step"].astype(int).tolist()
    ys = [lookup.get(s, top) for s in steps]
    text = [
        f"{d} ({sev}): {m}"
        for d, sev, m in zip(alerts["detector"], alerts["severity"], alerts["message"], strict=False)
    ]
    colors = [SEVERITY_COLORS.get(str(s), "#607d8b") for s in alerts["severity"]]
    return steps, ys, text, colors


def alert_shapes(alerts: pd.DataFrame | None) -> list[dict]:
    """One dotted vertical line per alert across every chart (critical ones first when capped)."""
    if alerts is None or alerts.empty:
        return []
    rank = {"critical": 0, "warning": 1, "info": 2}
    ordered = (
        alerts.assign(_r=alerts["severity"].map(rank).fillna(3))
        .sort_values(["_r", "step"])
        .head(MAX_ALERT_LINES)
    )
    return [
        {
            "type": "line",
            "xref": "x",
            "yref": "paper",
            "x0": int(s),
            "x1": int(s),
            "y0": 0,
            "y1": 1,
            "line": {"color": SEVERITY_COLORS.get(str(sev), "#607d8b"), "width": 1, "dash": "dot"},
            "opacity": 0.7,
        }
        for s, sev in zip(ordered["step"], ordered["severity"], strict=False)
    ]


def overview_delta(
    snap: RunSnapshot, specs: list[list[str]], after: dict[str, int]
) -> dict[int, tuple[list, list]]:
    """New (x, y) points per trace index: steps after `after[source]` (sources: steps, states)."""
    out: dict[int, tuple[list, list]] = {}
    for index, (src, col) in enumerate(specs):
        if src not in ("steps", "states", "probe"):
            continue
        frame = snap.states if src == "states" else snap.steps
        if frame is None or frame.empty:
            continue
        new = frame[frame["step"] > after.get("states" if src == "states" else "steps", -1)]
        if new.empty:
            continue
        x, y = series(new, col)
        if src == "probe":  # drawn as a cost, -log p
            y = -y
        if len(x):
            out[index] = (x.tolist(), y.tolist())
    return out


def cursor_of(snap: RunSnapshot) -> dict[str, int]:
    """Last step each source has sent to the browser."""

    def last(frame: pd.DataFrame) -> int:
        return int(frame["step"].iloc[-1]) if frame is not None and len(frame) else -1

    return {
        "steps": last(snap.steps),
        "states": last(snap.states),
        "alerts": 0 if snap.alerts is None else len(snap.alerts),
        "resumes": len(resume_marks(snap.meta)),
    }


def specs_match(snap: RunSnapshot, specs: list[list[str]]) -> bool:
    """True while the figure's traces still describe this run (no new scalar family appeared)."""
    ctrl = control_columns(list(snap.steps.columns))
    wanted = {
        col
        for by_token in ctrl.values()
        for stats in by_token.values()
        for s, col in stats.items()
        if s in ("mean", "p99", "max")
    }
    have = {col for src, col in specs if src == "steps" and col.startswith("ctrl/")}
    probe = {col for src, col in specs if src == "probe"}
    return wanted == have and set(probe_columns(list(snap.steps.columns))) == probe


# --- comparison ------------------------------------------------------------------------------
def _worst_control(steps: pd.DataFrame) -> pd.Series:
    """Per step, the highest probability any control token had where it was NOT sampled (falls back
    to the plain max when a run has no `unexpected_max` statistics)."""
    cols = [
        c
        for c in steps.columns
        if isinstance(c, str) and c.startswith("ctrl/") and c.endswith("/unexpected_max")
    ]
    if not cols:
        cols = [
            c for c in steps.columns if isinstance(c, str) and c.startswith("ctrl/") and c.endswith("/max")
        ]
    if not cols:
        return pd.Series(np.nan, index=steps.index)
    return steps[cols].max(axis=1, skipna=True)


def comparison_figure(snaps: list[RunSnapshot]) -> dict:
    """Two or more runs overlaid on shared step axes (reward, success, broken turns, control max, entropy, tools)."""
    titles = [
        "Reward",
        "Success rate",
        "Broken turns (text pollution + full collapse, share)",
        "Max p(control token) where it was not sampled",
        "Entropy (nats)",
        "Tool calls per rollout",
    ]
    layout = stacked_rows(titles)
    data = []
    for i, snap in enumerate(snaps):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        steps = snap.steps
        broken = pd.DataFrame({"step": snap.states["step"] if len(snap.states) else []})
        if len(snap.states):
            broken["broken"] = snap.states["text_pollution"].astype(float) + snap.states[
                "full_collapse"
            ].astype(float)
        worst = (
            pd.DataFrame({"step": steps["step"], "worst": _worst_control(steps)})
            if len(steps)
            else pd.DataFrame(columns=["step", "worst"])
        )
        panels = [
            (steps, REWARD),
            (steps, SUCCESS),
            (broken, "broken"),
            (worst, "worst"),
            (steps, ENTROPY),
            (steps, TOOL_CALLS),
        ]
        for row, (frame, col) in enumerate(panels, start=1):
            x, y = _xy(frame, col) if col in frame.columns else ([], [])
            trace = _line(
                x, y, snap.name, color, line={"width": 1.5}, legendgroup=snap.name, showlegend=row == 1
            )
            data.append({**trace, **_axis(row)})
    layout["yaxis4"].update(type="log", exponentformat="power")
    layout.update(
        hovermode="x unified",
        template=_white_template(),
    )
    return {"data": data, "layout": layout}


# --- alerts ----------------------------------------------------------------------------------
def alerts_timeline(alerts: pd.DataFrame, name: str) -> go.Figure:
    """Alerts as points: step on x, detector on y, colour by severity; click opens the evidence."""
    fig = go.Figure()
    if alerts is not None and not alerts.empty:
        for severity, group in alerts.groupby("severity", sort=False):
            fig.add_trace(
                go.Scatter(
                    x=group["step"].astype(int).tolist(),
                    y=group["detector"].astype(str).tolist(),
                    mode="markers",
                    name=str(severity),
                    marker={"size": 12, "color": SEVERITY_COLORS.get(str(severity), "#607d8b")},
                    text=group["message"].astype(str).tolist(),
                    hoverinfo="text+x+y",
                    customdata=group.index.to_numpy().tolist(),
                )
            )
    fig.update_layout(
        height=160 + 40 * max(1, alerts["detector"].nunique() if alerts is not None and len(alerts) else 1),
        margin={"l": 140, "r": 20, "t": 30, "b": 40},
        template="plotly_white",
        title=f"Alerts of {name}",
        xaxis_title="step",
    )
    return fig


# --- sparkline -------------------------------------------------------------------------------
def sparkline_svg(values: Sequence[float], width: int = 120, height: int = 28, color: str = "#1565c0") -> str:
    """A data: URI of a tiny SVG polyline (no plotly per row on the runs list)."""
    y = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(y) > 2 * width:
        x = np.arange(len(y), dtype=np.float64)
        y = y[keep_indices(x, y, n_out=width)]
    if len(y) == 0:
        body = ""
    else:
        lo, hi = float(y.min()), float(y.max())
        span = hi - lo or 1.0
        xs = np.linspace(1, width - 1, len(y)) if len(y) > 1 else np.array([width / 2])
        ys = height - 2 - (y - lo) / span * (height - 4)
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys, strict=False))
        body = f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>'
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{body}</svg>'
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def evidence_dict(evidence: object) -> dict:
    """An alert's evidence JSON as a dict ({} when missing or unparseable)."""
    if isinstance(evidence, dict):
        return evidence
    try:
        value = json.loads(evidence) if isinstance(evidence, str) and evidence else {}
    except ValueError:
        return {"raw": str(evidence)}
    return value if isinstance(value, dict) else {"value": value}


__all__ = [
    "MAX_POINTS",
    "overview_figure",
    "overview_delta",
    "comparison_figure",
    "alerts_timeline",
    "sparkline_svg",
]
