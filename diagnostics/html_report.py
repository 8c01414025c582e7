"""`report(run, out_html)`: a self-contained HTML post-mortem (plotly.js inline, no network).

Sections: summary and root cause; success and structural states over time; a steps x control-token
heatmap; the alert timeline; the three most telling rollouts with per-token probabilities.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from collapsewatch.diagnostics.detector_base import step_word
from collapsewatch.diagnostics.features import parse_control_stat
from collapsewatch.diagnostics.scan import Findings, open_any_run, per_step_scalars, scan
from collapsewatch.diagnostics.structure import summarize_rollout
from collapsewatch.schema import PROBE_TEXT, parse_probe_token
from collapsewatch.store.resume import ResumeMark, resume_marks

_SEV_COLOUR = {"info": "#4c9be8", "warning": "#f0a020", "critical": "#d62728"}
_STATE_COLOUR = {
    "healthy_tool_call": "#2ca02c",
    "healthy_response": "#98df8a",
    "text_pollution": "#ff9f40",
    "full_collapse": "#d62728",
}
_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
.warn{background:#fff4d6;padding:6px;border-left:4px solid #f0a020}
.tok{font-family:monospace;white-space:pre-wrap;border-radius:2px}
.rollout{border:1px solid #ccc;padding:8px;margin:10px 0;font-size:13px}
.turn{font-family:monospace;white-space:pre-wrap;background:#f7f7f7;padding:4px;margin:4px 0}
.legend span{padding:0 6px;margin-right:4px}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _vlines(fig, findings: Findings) -> None:
    if findings.collapse_onset_step is not None:
        fig.add_vline(
            x=findings.collapse_onset_step, line_dash="dash", line_color="black", annotation_text="onset"
        )
    if findings.first_critical_step is not None:
        fig.add_vline(
            x=findings.first_critical_step,
            line_color="#d62728",
            annotation_text="first critical",
            annotation_position="bottom left",
        )


def _has_values(t: pd.DataFrame, name: str) -> bool:
    return name in t.columns and bool(np.isfinite(pd.to_numeric(t[name], errors="coerce")).any())


def _fig_outcome(findings: Findings, resumes: list[ResumeMark]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    t = findings.timeline if findings.timeline is not None else pd.DataFrame({"step": []})
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=(
            "task success / reward",
            "structural states (share of turns; dotted: groups entirely broken)",
        ),
    )
    for name in ("success/rate", "seq/success_rate", "reward/mean"):
        if _has_values(t, name):
            fig.add_trace(go.Scatter(x=t["step"], y=t[name], name=name, mode="lines"), row=1, col=1)
    for state, colour in _STATE_COLOUR.items():
        col = f"state/{state}"
        if _has_values(t, col):
            fig.add_trace(
                go.Scatter(x=t["step"], y=t[col], name=state, stackgroup="states", line_color=colour),
                row=2,
                col=1,
            )
    mode = "groups/broken_mode_frac"
    if _has_values(t, mode):
        fig.add_trace(
            go.Scatter(
                x=t["step"], y=t[mode], name="groups entirely broken", line=dict(color="black", dash="dot")
            ),
            row=2,
            col=1,
        )
    _vlines(fig, findings)
    for mark in resumes:
        fig.add_vline(
            x=mark.step, line_dash="dot", line_color="grey", annotation_text=f"resumed: {mark.changed}"
        )
    fig.update_layout(height=560, margin=dict(l=40, r=20, t=40, b=30))
    return fig


def _fig_heatmap(per_step: dict[int, dict[str, float]], findings: Findings):
    import plotly.graph_objects as go

    rows: dict[str, dict[int, float]] = {}
    for step, scalars in per_step.items():
        for name, v in scalars.items():
            parsed = parse_control_stat(name)
            if parsed and parsed[2] == "mean" and math.isfinite(v):
                rows.setdefault(f"{parsed[0]} @ {parsed[1]}", {})[step] = v
    if not rows:
        return None
    frame = pd.DataFrame(rows).sort_index()
    z = np.log10(frame.to_numpy(dtype=float).T + 1e-10)
    fig = go.Figure(
        go.Heatmap(
            x=frame.index,
            y=list(frame.columns),
            z=z,
            colorscale="Viridis",
            colorbar=dict(title="log10 p"),
            hovertemplate="step %{x}<br>%{y}<br>log10 p %{z:.2f}<extra></extra>",
        )
    )
    _vlines(fig, findings)
    fig.update_layout(
        height=120 + 22 * len(rows),
        margin=dict(l=200, r=20, t=30, b=30),
        title="mean control-token probability per position type",
    )
    return fig


def _fig_probe(per_step: dict[int, dict[str, float]], findings: Findings):
    """The reference-conversation probe (hooks/probe.py), when the run has one: cost per control token."""
    import plotly.graph_objects as go

    rows: dict[str, dict[int, float]] = {}
    for step, scalars in per_step.items():
        for name, v in scalars.items():
            token = parse_probe_token(name)
            if token is not None and math.isfinite(v):
                rows.setdefault(token, {})[step] = max(-v, 1e-9)
    if not rows:
        return None
    fig = go.Figure()
    for token, series in sorted(rows.items()):
        steps = sorted(series)
        fig.add_trace(go.Scatter(x=steps, y=[series[s] for s in steps], name=token, mode="lines"))
    text = {step: -v for step, sc in per_step.items() if math.isfinite(v := sc.get(PROBE_TEXT, math.nan))}
    if text:  # the expert's ordinary tokens: the drift the verdict requires in a run with a probe
        steps = sorted(text)
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[text[s] for s in steps],
                name="expert text",
                mode="lines",
                line=dict(dash="dash", color="#616161"),
            )
        )
    _vlines(fig, findings)
    fig.update_yaxes(type="log", title="-log p, nats")
    fig.update_layout(
        height=320,
        margin=dict(l=60, r=20, t=30, b=30),
        title="reference conversations: cost of the expert's control tokens and text (rising = being unlearned)",
    )
    return fig


def _fig_alerts(findings: Findings):
    import plotly.graph_objects as go

    if not findings.alerts:
        return None
    fig = go.Figure()
    for sev, colour in _SEV_COLOUR.items():
        al = [a for a in findings.alerts if a.severity == sev]
        if al:
            fig.add_trace(
                go.Scatter(
                    x=[a.step for a in al],
                    y=[a.detector for a in al],
                    mode="markers",
                    name=sev,
                    marker=dict(color=colour, size=11 if sev == "critical" else 8),
                    text=[a.message for a in al],
                    hovertemplate="step %{x}: %{text}<extra></extra>",
                )
            )
    _vlines(fig, findings)
    detectors = sorted({a.detector for a in findings.alerts})
    fig.update_layout(height=140 + 26 * len(detectors), margin=dict(l=140, r=20, t=30, b=30), title="alerts")
    return fig


def _load_tokenizer(meta: dict):
    name = meta.get("tokenizer")
    if not name:
        return None
    path = Path(str(name))
    candidates = [path / "tokenizer.json", path] if path.is_dir() else [path]
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    for c in candidates:
        if c.is_file():
            try:
                return Tokenizer.from_file(str(c))
            except Exception:  # noqa: BLE001 - a report without token text is still a report
                return None
    return None


def telling_rollouts(seqs: pd.DataFrame, findings: Findings, n: int = 3) -> list[pd.Series]:
    """Up to n rollouts: the first broken rollouts at or after the first warning, preferring the
    ones where a control token was most probable where it was not sampled."""
    if seqs is None or seqs.empty:
        return []
    start = findings.first_warning_step
    if start is None:
        start = findings.collapse_onset_step
    if start is None:
        start = int(seqs["step"].max())
    window = seqs[(seqs["step"] >= start - 5) & (seqs["step"] <= start + 10)]
    if window.empty:
        window = seqs
    window = window.copy()
    window["_state"] = [summarize_rollout(t).state.value for t in window["turn_texts"]]
    broken = window["_state"].isin(["text_pollution", "full_collapse"])
    score = (
        window["control_unexpected_max"].astype(float).fillna(0.0)
        if "control_unexpected_max" in window
        else 0.0
    )
    window["_score"] = broken.astype(float) * 10 + score - (window["step"] - start).abs() * 0.01
    picked = []
    seen_states: set[str] = set()
    for _, row in window.sort_values("_score", ascending=False).iterrows():
        if len(picked) >= n:
            break
        if row["_state"] in seen_states and len(window["_state"].unique()) > len(seen_states):
            continue
        picked.append(row)
        seen_states.add(row["_state"])
    return picked


def _render_tokens(tokens: pd.DataFrame, tok, control_cols: list[str]) -> str:
    parts = []
    for row in tokens.itertuples(index=False):
        r = row._asdict()
        p = (
            math.exp(r["logprob"])
            if r.get("logprob") is not None and math.isfinite(r["logprob"])
            else float("nan")
        )
        text = tok.decode([int(r["token_id"])], skip_special_tokens=False) if tok else f"#{r['token_id']} "
        hue = 0 if not math.isfinite(p) else int(120 * p)  # red (unlikely) -> green (certain)
        ctrl = "; ".join(f"{c[2:-1]}={float(r[c]):.2g}" for c in control_cols if c in r and r[c] is not None)
        title = f"p={p:.3g} H={float(r.get('entropy') or float('nan')):.2f} nats; {ctrl}"
        parts.append(
            f'<span class="tok" style="background:hsl({hue},70%,85%)" title="{_esc(title)}">{_esc(text)}</span>'
        )
    return "".join(parts)


def _rollout_html(run, row: pd.Series, tok) -> str:
    step, seq = int(row["step"]), int(row["seq"])
    rank = int(row["rank"]) if "rank" in row and pd.notna(row["rank"]) else None
    head = (
        f"step {step}, seq {seq}{'' if rank is None else f', rank {rank}'}: <b>{_esc(row['_state'])}</b>, "
        f"reward {row.get('reward')}, success {row.get('success')}, "
        f"max unexpected control-token p {row.get('control_unexpected_max')}"
    )
    turns = summarize_rollout(row["turn_texts"]).states
    body = "".join(
        f'<div class="turn" style="border-left:4px solid {_STATE_COLOUR[s.value]}">[{_esc(s.value)}] {_esc(t)}</div>'
        for t, s in zip(list(row["turn_texts"]), turns, strict=False)
    )
    try:
        toks = run.tokens(steps=[step], seqs=[seq], rank=rank)
    except Exception:  # noqa: BLE001
        toks = pd.DataFrame()
    if len(toks):
        ctrl_cols = [c for c in toks.columns if c.startswith("p(")]
        body += "<p>per-token probabilities (hover a token; colour = p of the sampled token, red low):</p>"
        body += f'<div class="rollout">{_render_tokens(toks, tok, ctrl_cols)}</div>'
    else:
        body += "<p><i>no token rows captured for this rollout</i></p>"
    return f'<div class="rollout">{head}{body}</div>'


def report(run_or_path: Any, out_html: str | Path, findings: Findings | None = None) -> Path:
    """Write the HTML post-mortem; returns its path."""
    import plotly.io as pio

    run = open_any_run(run_or_path)
    if findings is None:
        findings = scan(run)
    per_step = findings.per_step if findings.per_step is not None else per_step_scalars(run.scalars())
    seqs = run.sequences(
        columns=["step", "seq", "rank", "reward", "success", "turn_texts", "control_unexpected_max"]
    )
    resumes = resume_marks(run.meta)
    figs = [
        f
        for f in (
            _fig_outcome(findings, resumes),
            _fig_heatmap(per_step, findings),
            _fig_probe(per_step, findings),
            _fig_alerts(findings),
        )
        if f
    ]
    fig_html = [
        pio.to_html(f, full_html=False, include_plotlyjs="inline" if i == 0 else False)
        for i, f in enumerate(figs)
    ]
    warn = "".join(f'<p class="warn">{_esc(w)}</p>' for w in findings.warnings)
    summary = (
        f"<p>{findings.steps} steps. Collapse onset (5-step mean of {_esc(findings.onset_series or 'success')} below "
        f"half its running peak for 5 steps): <b>{findings.collapse_onset_step}</b>. First critical alert: "
        f"<b>{findings.first_critical_step}</b>. Lead: <b>{findings.lead_steps}</b> {step_word(findings.lead_steps)}. Format break (the same "
        f"rule on the share of healthy turns): <b>{findings.format_onset_step}</b>.</p>"
    )
    if findings.onset_context:
        summary += f"<p>At the onset: {_esc(findings.onset_context['message'])}.</p>"
    summary += "".join(
        f"<p>Resumed after step {m.step}: {_esc(m.changed)}{_esc(m.aside)}.</p>" for m in resumes
    )
    rc_rows = "".join(
        f"<tr><td>{r['rank']}</td><td>{_esc(r['token'])}</td><td>{_esc(r['position_type'])}</td>"
        f"<td>{r['first_move_step']}</td><td>{_esc(r['evidence'])}</td></tr>"
        for r in findings.root_cause[:8]
    )
    rc = (
        "<table><tr><th>#</th><th>token</th><th>position</th><th>first move</th><th>evidence</th></tr>"
        f"{rc_rows}</table>"
        if rc_rows
        else "<p>No control-token series moved before the onset.</p>"
    )
    alert_rows = "".join(
        f"<tr><td>{a.step}</td><td style='color:{_SEV_COLOUR[a.severity]}'>{a.severity}</td><td>{_esc(a.detector)}</td>"
        f"<td>{_esc(a.message)}</td></tr>"
        for a in findings.alerts
        if a.rank >= 1
    )
    tok = _load_tokenizer(run.meta)
    rollouts = "".join(_rollout_html(run, r, tok) for r in telling_rollouts(seqs, findings))
    legend = "".join(f'<span style="background:{c}">{s}</span>' for s, c in _STATE_COLOUR.items())
    doc = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>collapsewatch report: {_esc(run.name)}</title>
<style>{_CSS}</style></head><body>
<h1>collapsewatch post-mortem: {_esc(run.name)}</h1>{warn}{summary}
<h2>Root cause: which control token moved first</h2>{rc}
<h2>Success and structural states</h2><div class="legend">{legend}</div>{fig_html[0] if fig_html else ""}
{"".join(f"<h2></h2>{h}" for h in fig_html[1:])}
<h2>Alerts</h2><table><tr><th>step</th><th>severity</th><th>detector</th><th>message</th></tr>{alert_rows}</table>
<h2>Three most telling rollouts</h2>{rollouts or "<p>No rollouts stored.</p>"}
</body></html>"""
    out = Path(out_html)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    return out
