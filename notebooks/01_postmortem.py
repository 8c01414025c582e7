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
# # 01 · Post-mortem of a collapsed run
#
# A GRPO run on multi-step tool use went bad. We open it, find **when** it collapsed (the fixed
# onset definition: first step of the first run of 5 consecutive steps where the 5-step moving
# mean of the success rate is below half of its running peak), **which control token moved
# first**, look at the rollouts around the onset token by token, and compare with a run that
# stayed healthy under a supervisory signal.
#
# The runs come from `make demo` (`demo-out/`), or any folder set in `COLLAPSEWATCH_RUNS` holding
# a `collapse-s0` and an `interleaved-s0` run.

# %%
import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import collapsewatch as cw
from collapsewatch.diagnostics import classify_turn, scan
from collapsewatch.diagnostics.html_report import telling_rollouts

RUNS = Path(os.environ.get("COLLAPSEWATCH_RUNS", "../demo-out"))
failed = cw.open_run(RUNS / "collapse-s0")
stable = cw.open_run(RUNS / "interleaved-s0")
print(failed.name, failed.status, "| control tokens:", ", ".join(failed.control_tokens))

# %% [markdown]
# ## When: the onset, and what collapsewatch said before it

# %%
findings = scan(failed)
print(f"collapse onset: step {findings.collapse_onset_step} (on {findings.onset_series})")
print(f"format break (healthy turns below half their peak): step {findings.format_onset_step}")
print(f"first critical alert: step {findings.first_critical_step}; lead: {findings.lead_steps} steps")
alerts = pd.DataFrame([a.to_dict() for a in findings.alerts])
alerts[["step", "detector", "severity", "message"]].head(10) if len(alerts) else "no alerts"

# %%
steps_failed, steps_stable = failed.steps(), stable.steps()
success = "success/rate" if "success/rate" in steps_failed else "reward/mean"
fig = go.Figure()
fig.add_scatter(x=steps_failed["step"], y=steps_failed[success], name=f"{failed.name}")
fig.add_scatter(x=steps_stable["step"], y=steps_stable[success], name=f"{stable.name}")
if findings.collapse_onset_step is not None:
    fig.add_vline(x=findings.collapse_onset_step, line_dash="dash", annotation_text="onset")
if findings.first_critical_step is not None:
    fig.add_vline(x=findings.first_critical_step, line_color="red", annotation_text="first critical")
fig.update_layout(title=f"{success}: collapsing vs supervised", xaxis_title="step", height=350)
fig.show()

# %% [markdown]
# ## Why: which control token moved first
# `root_cause` ranks (control token, position type) pairs by the step their probability first
# left its own robust baseline, with the evidence.

# %%
root = pd.DataFrame(findings.root_cause)
root.head(8) if len(root) else "no control-token statistic moved"


# %%
def control_series(run: cw.Run, token: str, position_type: str, stat: str = "p99") -> pd.Series:
    name = f"ctrl/{token}/{position_type}/{stat}"
    frame = run.scalars(names=[name])
    return frame.set_index("step")["value"] if len(frame) else pd.Series(dtype=float)


suspects = root.head(3).to_dict("records") if len(root) else []
fig = make_subplots(rows=max(1, len(suspects)), cols=1, shared_xaxes=True)
for i, s in enumerate(suspects, start=1):
    for run in (failed, stable):
        series = control_series(run, s["token"], s["position_type"])
        fig.add_scatter(
            x=series.index,
            y=series.values,
            name=f"{run.name}: {s['token']} @ {s['position_type']}",
            row=i,
            col=1,
        )
    fig.update_yaxes(type="log", row=i, col=1)
fig.update_layout(
    title="p99 probability of the first-moving control tokens", height=250 * max(1, len(suspects))
)
fig.show()

# %% [markdown]
# ## What it looked like: structural states per step
# Each assistant turn is classified as healthy tool call, healthy response, text pollution or full
# collapse (`classify_turn`).


# %%
def state_shares(run: cw.Run) -> pd.DataFrame:
    seqs = run.sequences(columns=["step", "turn_texts"])
    rows = [
        (step, classify_turn(t).value) for step, turns in zip(seqs["step"], seqs["turn_texts"]) for t in turns
    ]
    states = pd.DataFrame(rows, columns=["step", "state"])
    return states.groupby("step")["state"].value_counts(normalize=True).unstack(fill_value=0.0)


shares = state_shares(failed)
assert len(shares) == len(failed.sequences(columns=["step"])["step"].unique())
assert ((shares.sum(axis=1) - 1.0).abs() < 1e-9).all()
fig = go.Figure([go.Scatter(x=shares.index, y=shares[c], name=c, stackgroup="one") for c in shares.columns])
fig.update_layout(title=f"structural states of {failed.name}", yaxis_title="share of turns", height=350)
fig.show()

# %% [markdown]
# ## The rollouts around the onset, token by token

# %%
picked = telling_rollouts(failed.sequences(), findings, n=3)
assert picked, "a run with rollouts always has something to show"
for row in picked:
    print(f"--- step {row['step']} seq {row['seq']}: reward {row['reward']:.2f}, state {row['_state']}")
    for turn in row["turn_texts"]:
        print(f"  [{classify_turn(turn).value}] {turn!r}")
tokens = failed.tokens(steps=[int(picked[0]["step"])], seqs=[int(picked[0]["seq"])])
prob_cols = [c for c in tokens.columns if c.startswith("p(")]
tokens[["pos", "token_id", "logprob", "entropy", "position_type", *prob_cols]].head(40)

# %% [markdown]
# ## Compared with the supervised run

# %%
stable_findings = scan(stable)
summary = pd.DataFrame(
    [
        {
            "run": f.run,
            "onset": f.collapse_onset_step,
            "first critical": f.first_critical_step,
            "lead": f.lead_steps,
            "critical alerts": sum(a.severity == "critical" for a in f.alerts),
            "final success": s[success].tail(10).mean(),
        }
        for f, s in ((findings, steps_failed), (stable_findings, steps_stable))
    ]
)
assert set(summary["run"]) == {failed.name, stable.name}
summary
