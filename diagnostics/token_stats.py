"""Control-token statistics recomputed from the tokens table (DuckDB), for runs whose hook did not
write the `ctrl/...` scalars. Same names and meaning as the hook's, over the *captured* token rows
(with capture="control" those over-represent control positions; say so when reporting)."""

from __future__ import annotations

from collections import defaultdict

from collapsewatch.schema import (
    CONTROL_Q_FLOOR,
    CONTROL_Q_SCALE,
    POSITION_TYPES,
    control_column,
    control_stat_name,
)


def control_stats_from_tokens(run) -> dict[int, dict[str, float]]:
    """{step: {ctrl/<token>/<position_type>/<stat>: value}} with stats mean, p99, max, unexpected_mean, count."""
    tokens = run.meta.get("control_tokens") or []
    if not tokens or not run.files("tokens"):
        return {}
    probs, parts = [], []
    for t in tokens:
        i, col = int(t["index"]), control_column(int(t["index"]))
        tid = int(t.get("token_id", -1))
        probs.append(
            f"(CASE WHEN {col} >= {CONTROL_Q_FLOOR} THEN 0.0 ELSE pow(2.0, -CAST({col} AS DOUBLE) / {CONTROL_Q_SCALE}) END) "
            f"AS p{i}, token_id = {tid} AS s{i}"
        )
        parts.append(
            f"avg(p{i}) AS mean_{i}, approx_quantile(p{i}, 0.99) AS p99_{i}, max(p{i}) AS max_{i}, "
            f"avg(CASE WHEN NOT s{i} THEN p{i} END) AS unexpected_mean_{i}"
        )
    sql = (
        f"WITH t AS (SELECT step, position_type, {', '.join(probs)} FROM tokens "
        "WHERE NOT coalesce(is_tool_output, false)) "
        f"SELECT step, position_type, count(*) AS n, {', '.join(parts)} FROM t GROUP BY step, position_type ORDER BY step"
    )
    frame = run.sql(sql)
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for row in frame.itertuples(index=False):
        row = row._asdict()
        code = int(row["position_type"])
        pos = POSITION_TYPES[code] if 0 <= code < len(POSITION_TYPES) else f"type{code}"
        step = int(row["step"])
        for t in tokens:
            i = int(t["index"])
            for stat in ("mean", "p99", "max", "unexpected_mean"):
                v = row[f"{stat}_{i}"]
                if v is not None:
                    out[step][control_stat_name(t["text"], pos, stat)] = float(v)
            out[step][control_stat_name(t["text"], pos, "count")] = float(row["n"])
    return dict(out)
