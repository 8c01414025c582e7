"""HTTP guard: a page URL that names a run outside ROOT's listing is a 404, decided before any read.

Werkzeug hands us the path already percent-decoded once; `..`, absolute paths (`/run//etc`),
`%2e%2e`, `%2f` and double-encoded forms therefore never match a listed directory name.
"""

from __future__ import annotations

from flask import Flask, abort, request

from collapsewatch.dashboard import routes
from collapsewatch.dashboard.catalog import RunCatalog


def install(server: Flask, catalog: RunCatalog) -> None:
    @server.before_request
    def only_listed_runs():  # noqa: ANN202 - Flask hook
        path = request.path
        if path.startswith(routes.DASH_INTERNAL_PREFIXES):
            return None
        route = routes.parse_route(path, request.query_string.decode("utf-8", "replace"))
        if route.page == "not_found":
            abort(404)
        for run_id in route.run_ids:
            if catalog.resolve(run_id) is None:
                abort(404)
        return None
