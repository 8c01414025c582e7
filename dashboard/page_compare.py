"""Comparison: two or more runs overlaid on the same step axis (e.g. `collapse` vs `interleaved`)."""

from __future__ import annotations

from dash import Dash, Input, Output, dcc, html

from collapsewatch.dashboard import figures
from collapsewatch.dashboard.catalog import RunCatalog


def layout(catalog: RunCatalog, run_ids: tuple[str, ...]) -> html.Div:
    names = [r.name for r in catalog.runs()]
    chosen = [r for r in run_ids if r in names] or names[:2]
    return html.Div(
        [
            html.Div(
                [dcc.Link("Runs", href="/", className="crumb"), html.Span(" / compare")], className="crumbs"
            ),
            html.H2("Compare runs"),
            dcc.Dropdown(
                id="compare-runs",
                options=names,
                value=chosen,
                multi=True,
                placeholder="pick two or more runs",
            ),
            dcc.Graph(id="compare-graph", figure=comparison(catalog, chosen), config={"displaylogo": False}),
        ]
    )


def comparison(catalog: RunCatalog, run_ids: list[str]):
    snaps = []
    for run_id in run_ids:
        cache = catalog.cache(run_id)
        if cache is not None:
            snaps.append(cache.snapshot())
    return figures.comparison_figure(snaps)


def register(app: Dash, catalog: RunCatalog) -> None:
    @app.callback(
        Output("compare-graph", "figure"), Input("compare-runs", "value"), prevent_initial_call=True
    )
    def update(run_ids):
        return comparison(catalog, [r for r in (run_ids or []) if isinstance(r, str)])
