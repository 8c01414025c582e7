"""Run overview: reward, structural states, control-token panels, entropy, tool calls, alerts; live.

The browser polls once a second; the server answers with a Patch that appends only the steps the
browser has not seen (its cursor travels in a dcc.Store), or resends the figure when the set of
series changed.
"""

from __future__ import annotations

from dash import Dash, Input, Output, Patch, State, dcc, html, no_update

from collapsewatch.dashboard import components, figures, routes
from collapsewatch.dashboard.catalog import RunCatalog
from collapsewatch.dashboard.runcache import RunSnapshot
from collapsewatch.store.resume import resume_marks

POLL_MS = 1000
FIRST_POLL_MS = 2000
IDLE_POLL_MS = 2500  # finished or crashed runs: still polled, in case they resume


def _summary_line(snap: RunSnapshot) -> list:
    steps = "no steps yet" if snap.last_step is None else f"last step {snap.last_step}"
    return [
        html.Span(
            steps, id="run-steps", **{"data-last-step": "" if snap.last_step is None else str(snap.last_step)}
        ),
        html.Span(
            f" · {len(snap.steps)} steps logged · updated {components.ago(snap.last_update)}"
            + "".join(f" · resumed after step {m.step}: {m.changed}" for m in resume_marks(snap.meta)),
            className="muted",
        ),
    ]


def layout(catalog: RunCatalog, run_id: str) -> html.Div:
    cache = catalog.cache(run_id)
    snap = cache.snapshot()
    fig, specs = figures.overview_figure(snap)
    n_alerts = 0 if snap.alerts is None else len(snap.alerts)
    return html.Div(
        [
            components.run_tabs(run_id, "overview"),
            html.Div(
                [
                    html.H2([run_id, " ", components.status_badge(snap.status, "run-status")]),
                    html.Div(_summary_line(snap), id="run-summary"),
                    html.Div(
                        [
                            dcc.Link(f"{n_alerts} alerts", href=routes.alerts_href(run_id), id="alerts-link"),
                            html.Span(" · open step "),
                            dcc.Input(
                                id="step-input",
                                type="number",
                                min=0,
                                step=1,
                                value=snap.last_step,
                                debounce=True,
                                className="step-input",
                            ),
                            html.Button("Open", id="step-open", className="button"),
                            html.Span(" · click any chart to open that step", className="muted"),
                        ],
                        className="toolbar",
                    ),
                ],
                className="run-head",
            ),
            html.Div(components.banner(snap.warnings), id="run-banner"),
            html.Div(f"Structural states: {_states_note(snap)}", className="muted small", id="states-note"),
            dcc.Graph(id="overview-graph", figure=fig, config={"displaylogo": False}),
            dcc.Store(
                id="overview-state", data={"run": run_id, "specs": specs, "cursor": figures.cursor_of(snap)}
            ),
            # the first poll waits until the page is drawn; the poll then sets the pace (poll_interval_ms)
            dcc.Interval(id="overview-interval", interval=FIRST_POLL_MS),
        ]
    )


def _states_note(snap: RunSnapshot) -> str:
    return {
        "scalars": "from the run's state/ scalars",
        "turns": "classified from the rollouts' turn texts (collapsewatch.diagnostics.classify_turn)",
        "none": "unavailable (no state/ scalars and no classifier installed)",
    }.get(snap.states_source, snap.states_source)


def poll_interval_ms(snap: RunSnapshot) -> int:
    """Poll every second while a run is live or its states are still being classified, else every 2.5 s."""
    states_last = int(snap.states["step"].iloc[-1]) if len(snap.states) else -1
    settling = snap.states_source == "turns" and snap.last_step is not None and states_last < snap.last_step
    return POLL_MS if snap.status == "running" or settling else IDLE_POLL_MS


def live_update(catalog: RunCatalog, state: dict):
    """Compute the live outputs for one poll: (figure patch, store, status, status class, summary, banner,
    alerts link)."""
    run_id = state.get("run") if isinstance(state, dict) else None
    cache = catalog.cache(run_id) if run_id else None
    if cache is None:
        return (no_update,) * 7
    snap = cache.snapshot()
    cursor = state.get("cursor") or {}
    specs = state.get("specs") or []
    new_cursor = figures.cursor_of(snap)
    badge = components.status_badge(snap.status)
    status = (badge.children, badge.className)
    summary = _summary_line(snap)
    banner = components.banner(snap.warnings)
    alerts_link = f"{new_cursor['alerts']} alerts"
    rebuilt = new_cursor["steps"] < cursor.get("steps", -1) or new_cursor["resumes"] != cursor.get(
        "resumes", 0
    )
    if not figures.specs_match(snap, specs) or rebuilt:  # a resume may have replaced steps shown
        fig, specs = figures.overview_figure(snap)
        return (
            fig,
            {"run": run_id, "specs": specs, "cursor": new_cursor},
            *status,
            summary,
            banner,
            alerts_link,
        )
    if new_cursor == cursor:
        return no_update, no_update, *status, summary, banner, alerts_link
    patch = Patch()
    for index, (x, y) in figures.overview_delta(snap, specs, cursor).items():
        patch["data"][index]["x"].extend(x)
        patch["data"][index]["y"].extend(y)
    if new_cursor["alerts"] != cursor.get("alerts"):
        patch["layout"]["shapes"] = figures.overview_shapes(snap)
        ax, ay, atext, acolor = figures.alert_markers(snap)
        marker_index = next((i for i, (src, _) in enumerate(specs) if src == "alerts"), None)
        if marker_index is not None:
            patch["data"][marker_index]["x"] = ax
            patch["data"][marker_index]["y"] = ay
            patch["data"][marker_index]["text"] = atext
            patch["data"][marker_index]["marker"]["color"] = acolor
    return patch, {"run": run_id, "specs": specs, "cursor": new_cursor}, *status, summary, banner, alerts_link


def register(app: Dash, catalog: RunCatalog) -> None:
    @app.callback(
        Output("overview-graph", "figure"),
        Output("overview-state", "data"),
        Output("run-status", "children"),
        Output("run-status", "className"),
        Output("run-summary", "children"),
        Output("run-banner", "children"),
        Output("alerts-link", "children"),
        Output("overview-interval", "interval"),
        Input("overview-interval", "n_intervals"),
        State("overview-state", "data"),
        prevent_initial_call=True,
    )
    def poll(_n, state):
        outputs = live_update(catalog, state)
        cache = catalog.cache(state.get("run")) if isinstance(state, dict) and state.get("run") else None
        return (*outputs, poll_interval_ms(cache.snapshot(refresh=False)) if cache else no_update)

    @app.callback(
        Output("nav", "href", allow_duplicate=True),
        Input("overview-graph", "clickData"),
        Input("step-open", "n_clicks"),
        State("step-input", "value"),
        State("overview-state", "data"),
        prevent_initial_call=True,
    )
    def open_step(click, _n, typed_step, state):
        from dash import ctx

        run_id = (state or {}).get("run")
        if not run_id or catalog.resolve(run_id) is None:
            return no_update
        if ctx.triggered_id == "step-open" and not _n:
            return no_update
        if ctx.triggered_id == "overview-graph":
            points = (click or {}).get("points") or []
            if not points or points[0].get("x") is None:
                return no_update
            return routes.step_href(run_id, int(round(float(points[0]["x"]))))
        if typed_step is None:
            return no_update
        return routes.step_href(run_id, int(typed_step))
