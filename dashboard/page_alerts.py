"""Alerts timeline of a run: when each detector fired, how hard, and a link to the evidence."""

from __future__ import annotations

import json

from dash import Dash, Input, Output, State, dcc, html, no_update

from collapsewatch.dashboard import components, figures, routes
from collapsewatch.dashboard.catalog import RunCatalog


def evidence_href(run_id: str, step: int, evidence: dict) -> str:
    """The step drill-down, opened on the first rollout the evidence names (if any)."""
    seqs = evidence.get("seqs") or evidence.get("seq") or evidence.get("sequences")
    if isinstance(seqs, (int, float)):
        seqs = [seqs]
    seq = None
    if isinstance(seqs, list) and seqs:
        first = seqs[0]
        if isinstance(first, dict):
            first = first.get("seq")
        if isinstance(first, (int, float)):
            seq = int(first)
    rank = evidence.get("rank") if isinstance(evidence.get("rank"), int) else 0
    return routes.step_href(run_id, int(step), seq, rank if seq is not None else None)


def layout(catalog: RunCatalog, run_id: str) -> html.Div:
    snap = catalog.cache(run_id).snapshot()
    alerts = snap.alerts
    cards = []
    if alerts is not None and not alerts.empty:
        for index, row in alerts.sort_values(["step", "time"]).iterrows():
            evidence = figures.evidence_dict(row.get("evidence"))
            cards.append(
                html.Div(
                    [
                        html.Div(
                            [
                                html.Span(str(row["severity"]), className=f"badge sev-{row['severity']}"),
                                html.Strong(f" step {int(row['step'])} · {row['detector']}"),
                                html.Span(
                                    f" · value {row.get('value'):.4g} vs baseline {row.get('baseline'):.4g}"
                                    if row.get("value") is not None and row.get("baseline") is not None
                                    else "",
                                    className="muted",
                                ),
                                html.Span(f" · {row.get('source')}", className="muted"),
                            ]
                        ),
                        html.P(str(row["message"])),
                        dcc.Link(
                            "open evidence →",
                            href=evidence_href(run_id, int(row["step"]), evidence),
                            className="evidence-link",
                        ),
                        html.Details(
                            [html.Summary("evidence"), html.Pre(json.dumps(evidence, indent=1, default=str))]
                        ),
                    ],
                    className=f"alert-card sev-border-{row['severity']}",
                    id={"type": "alert-card", "index": int(index)},
                )
            )
    body = cards or [html.P("No alerts in this run.", className="muted")]
    return html.Div(
        [
            components.run_tabs(run_id, "alerts"),
            html.H2([f"{run_id} · alerts ", components.status_badge(snap.status)]),
            html.Div(components.banner(snap.warnings)),
            dcc.Graph(
                id="alerts-graph",
                figure=figures.alerts_timeline(alerts, run_id),
                config={"displaylogo": False},
            ),
            html.Div(body, id="alerts-list"),
            dcc.Store(id="alerts-state", data={"run": run_id}),
        ]
    )


def register(app: Dash, catalog: RunCatalog) -> None:
    @app.callback(
        Output("nav", "href", allow_duplicate=True),
        Input("alerts-graph", "clickData"),
        State("alerts-state", "data"),
        prevent_initial_call=True,
    )
    def open_evidence(click, state):
        run_id = (state or {}).get("run")
        cache = catalog.cache(run_id) if run_id else None
        points = (click or {}).get("points") or []
        if cache is None or not points or points[0].get("customdata") is None:
            return no_update
        alerts = cache.snapshot(refresh=False).alerts
        index = int(points[0]["customdata"])
        if alerts is None or index not in alerts.index:
            return no_update
        row = alerts.loc[index]
        return evidence_href(run_id, int(row["step"]), figures.evidence_dict(row.get("evidence")))
