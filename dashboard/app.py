"""The Dash app: `create_app(root)` serves the runs under ROOT and nothing else.

Pages: runs list (/), run overview (/run/<id>), step drill-down (/run/<id>/step/<n>?rank=&seq=),
alerts (/run/<id>/alerts), comparison (/compare?runs=a,b). Runs are looked up by id in ROOT's
listing (see catalog.py); page URLs naming anything else get a 404 (guard.py).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from dash import Dash, Input, Output, State, dcc, html

from collapsewatch.dashboard import (
    components,
    guard,
    page_alerts,
    page_compare,
    page_run,
    page_runs,
    page_step,
    routes,
)
from collapsewatch.dashboard.catalog import RunCatalog

STYLESHEET = Path(__file__).with_name("dashboard.css")  # inlined: no assets folder to package or serve
INDEX = """<!DOCTYPE html>
<html>
    <head>
        {%metas%}
        <title>{%title%}</title>
        {%favicon%}
        {%css%}
        <style>__STYLE__</style>
    </head>
    <body>
        {%app_entry%}
        <footer>
            {%config%}
            {%scripts%}
            {%renderer%}
        </footer>
    </body>
</html>"""


def render_page(catalog: RunCatalog, pathname: str | None, search: str | None):
    """The page for a location (the browser's pathname is percent-encoded; decode it once, like Flask)."""
    route = routes.parse_route(unquote(pathname or "/"), search)
    if route.page == "runs":
        return page_runs.layout(catalog)
    if route.page == "compare":
        known = tuple(r for r in route.run_ids if catalog.resolve(r) is not None)
        return page_compare.layout(catalog, known)
    if route.page == "not_found" or catalog.resolve(route.run_id) is None:
        return components.not_found("There is no such run under this dashboard's root.")
    try:
        if route.page == "run":
            return page_run.layout(catalog, route.run_id)
        if route.page == "alerts":
            return page_alerts.layout(catalog, route.run_id)
        return page_step.layout(catalog, route.run_id, route.step)
    except Exception as exc:  # the page of a damaged run is a warning, not a stack trace
        return html.Div(
            [
                components.run_tabs(route.run_id, route.page),
                *components.banner([f"could not show {route.run_id}: {type(exc).__name__}: {exc}"]),
            ]
        )


def create_app(root: str | Path, title: str = "collapsewatch") -> Dash:
    """A Dash app over the runs directly under `root` (serve it with `app.run(host, port)`)."""
    catalog = RunCatalog(root)
    app = Dash(
        __name__,
        title=title,
        update_title=None,
        assets_folder=str(Path(__file__).with_name("no-assets")),
        include_assets_files=False,
        index_string=INDEX.replace("__STYLE__", STYLESHEET.read_text() if STYLESHEET.exists() else ""),
        suppress_callback_exceptions=True,
        enable_mcp=False,
        compress=False,
        eager_loading=True,
    )
    app.catalog = catalog  # type: ignore[attr-defined]  # tests and the benchmark look inside
    guard.install(app.server, catalog)
    app.layout = html.Div(
        [
            dcc.Location(id="url", refresh=False),
            dcc.Location(id="nav", refresh="callback-nav"),
            html.Header(
                [
                    dcc.Link("collapsewatch", href="/", className="brand"),
                    html.Span(str(catalog.root), className="root"),
                ],
                className="top",
            ),
            html.Main(id="page"),
        ]
    )

    @app.callback(Output("page", "children"), Input("url", "pathname"), State("url", "search"))
    def route_page(pathname, search):
        return render_page(catalog, pathname, search)

    for page in (page_runs, page_run, page_step, page_alerts, page_compare):
        page.register(app, catalog)
    return app
