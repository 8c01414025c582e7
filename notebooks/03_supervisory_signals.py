# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Supervisory signals: stability against generalisation
#
# The seed paper's trade-off: supervision (expert rollouts, hints, SFT interleaved with RL) keeps
# multi-step tool-use RL from collapsing, but interleaved SFT generalises worse to a new call
# format or new tools. Here we compare every run under `COLLAPSEWATCH_RUNS` (default
# `../demo-out`; `docs/reproduction.md` has the commands for all recipes and seeds): stability
# (collapse onset, critical alerts, late success) against held-out success in distribution,
# under a different call syntax (format-OOD) and with unseen tools (content-OOD).

# %%
import os
from pathlib import Path

import pandas as pd
import plotly.express as px

import collapsewatch as cw
from collapsewatch.diagnostics import scan

RUNS = Path(os.environ.get("COLLAPSEWATCH_RUNS", "../demo-out"))
summaries = [s for s in cw.list_runs(RUNS) if s.status == "finished"]
assert summaries, f"no finished runs under {RUNS}"
[s.name for s in summaries]

# %%
rows = []
for s in summaries:
    run = cw.open_run(s.path)
    findings = scan(run)
    steps = run.steps()
    success = "success/rate" if "success/rate" in steps else "reward/mean"
    final = run.meta.get("final_eval") or {}
    rows.append(
        {
            "run": s.name,
            "recipe": run.meta.get("config", {}).get("recipe", s.name),
            "seed": run.meta.get("config", {}).get("seed"),
            "onset": findings.collapse_onset_step,
            "critical alerts": sum(a.severity == "critical" for a in findings.alerts),
            "late train success": steps[success].tail(10).mean(),
            "in-dist": final.get("eval/in_dist_success"),
            "format-OOD": final.get("eval/format_ood_success"),
            "content-OOD": final.get("eval/content_ood_success"),
            "warm start in-dist": (run.meta.get("warm_start_eval") or {}).get("eval/in_dist_success"),
        }
    )
table = pd.DataFrame(rows).sort_values(["recipe", "seed"])
for col in ("late train success", "in-dist", "format-OOD", "content-OOD"):
    assert table[col].dropna().between(0, 1).all(), col
table

# %% [markdown]
# Per recipe, averaged over seeds: stability on the left, generalisation on the right.

# %%
per_recipe = table.groupby("recipe").agg(
    runs=("run", "count"),
    collapsed=("onset", lambda s: int(s.notna().sum())),
    late_success=("late train success", "mean"),
    in_dist=("in-dist", "mean"),
    format_ood=("format-OOD", "mean"),
    content_ood=("content-OOD", "mean"),
)
assert per_recipe["runs"].sum() == len(table)
per_recipe

# %%
long = per_recipe.reset_index().melt(
    id_vars="recipe",
    value_vars=["in_dist", "format_ood", "content_ood"],
    var_name="split",
    value_name="success",
)
px.bar(
    long,
    x="recipe",
    y="success",
    color="split",
    barmode="group",
    title="held-out success after training, by recipe",
).show()

# %%
curves = []
for s in summaries:
    steps = cw.open_run(s.path).steps()
    col = "success/rate" if "success/rate" in steps else "reward/mean"
    curves.append(
        pd.DataFrame(
            {"step": steps["step"], "success": steps[col].rolling(5, min_periods=1).mean(), "run": s.name}
        )
    )
px.line(
    pd.concat(curves), x="step", y="success", color="run", title="training success (5-step moving mean)"
).show()
