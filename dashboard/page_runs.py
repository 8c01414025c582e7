"""Runs list: every run under ROOT with its status, steps, last update, alert count and reward sparkline."""

from __future__ import annotations

from dash import Dash, Input, Output, dcc, html

from collapsewatch.dashboard import components, figures, routes
from collapsewatch.dashboard.catalog import RunCatalog

REFRESH_MS = 2000


def layout(catalog: RunCatalog) -> html.Div:
    return html.Div(
        [
            html.H2("Runs"),
            html.P(f"Run folders under {catalog.root}", className="muted"),
            html.Div(runs_table(catalog), id="runs-table"),
            html.Div(components.banner(catalog.skipped), id="runs-banner"),
            html.Div(
                [
                    html.Span("Compare: ", className="muted"),
                    dcc.Checklist(
                        id="compare-select", options=[r.name for r in catalog.runs()], value=[], inline=True
                    ),
                    dcc.Link("Compare selected runs", id="compare-link", href="/compare", className="button"),
                ],
                className="compare-box",
            ),
            dcc.Interval(id="runs-interval", interval=REFRESH_MS),
        ]
    )


def runs_table(catalog: RunCatalog) -> html.Table:
    header = html.Tr(
        [html.Th(h) for h in ("run", "status", "steps", "last step", "last update", "alerts", "reward")]
    )
    rows = []
    for summary in catalog.runs():
        rewards = catalog.reward_series(summary.name)
        spark = figures.sparkline_svg(rewards) if len(rewards) else ""
        rows.append(
            html.Tr(
                [
                    html.Td(dcc.Link(summary.name, href=routes.run_href(summary.name), className="run-link")),
                    html.Td(components.status_badge(summary.status)),
                    html.Td(str(summary.steps), className="num"),
                    html.Td("" if summary.last_step is None else str(summary.last_step), className="num"),
                    html.Td(components.ago(summary.last_update), title=components.utc(summary.last_update)),
                    html.Td(
                        dcc.Link(str(summary.alert_count), href=routes.alerts_href(summary.name)),
                        className="num",
                    ),
                    html.Td(html.Img(src=spark, alt="reward sparkline", className="spark") if spark else ""),
                ],
                **{"data-run": summary.name},
            )
        )
    if not rows:
        rows = [
            html.Tr(html.Td("No runs yet: start a training run with a Recorder writing here.", colSpan=7))
        ]
    return html.Table([html.Thead(header), html.Tbody(rows)], className="runs")


def register(app: Dash, catalog: RunCatalog) -> None:
    @app.callback(
        Output("runs-table", "children"),
        Output("runs-banner", "children"),
        Input("runs-interval", "n_intervals"),
        prevent_initial_call=True,
    )
    def refresh_runs(_n: int | None):
        return runs_table(catalog), components.banner(catalog.skipped)

    @app.callback(Output("compare-link", "href"), Input("compare-select", "value"))
    def compare_link(selected: list[str] | None) -> str:
        return routes.compare_href(list(selected or []))
