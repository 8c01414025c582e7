"""Structural-state shares per step (healthy tool call / healthy response / text pollution / full collapse).

Taken from `state/<name>` scalars when the run logged them, otherwise computed from the rollouts'
`turn_texts` with `collapsewatch.diagnostics.classify_turn` (share of assistant turns, 0..1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from collapsewatch.schema import STRUCTURAL_STATES

# Scalar names a run may carry its state shares under, e.g. `state/full_collapse` or `states/text_pollution/frac`.
_STATE_SCALAR = re.compile(r"^states?/(" + "|".join(STRUCTURAL_STATES) + r")(?:/(?:frac|share|rate))?$")


def load_classifier() -> Callable[[object], object] | None:
    """`classify_turn` from diagnostics, or None when that part is not installed."""
    try:
        from collapsewatch.diagnostics import classify_turn
    except ImportError:
        return None
    return classify_turn


def state_columns_from_scalars(columns: Iterable[str]) -> dict[str, str]:
    """Map state -> scalar column for runs that log their state shares as scalars."""
    found: dict[str, str] = {}
    for col in columns:
        m = _STATE_SCALAR.match(str(col))
        if m and m.group(1) not in found:
            found[m.group(1)] = str(col)
    return found


def shares_from_scalars(wide: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """step + one share column per state, from the wide steps frame."""
    out = pd.DataFrame({"step": wide["step"].to_numpy()})
    for state in STRUCTURAL_STATES:
        out[state] = wide[columns[state]].to_numpy(dtype=float) if state in columns else np.nan
    return out


def shares_from_turns(sequences: pd.DataFrame, classify: Callable[[object], object]) -> pd.DataFrame:
    """step + one share column per state: the share of assistant turns in each state at that step.

    Each distinct turn text is classified once (collapsed turns repeat a lot); counting is pandas.
    """
    turns = sequences[["step", "turn_texts"]].explode("turn_texts")
    turns = turns[turns["turn_texts"].notna()]  # a rollout with no turns contributes none
    if turns.empty:
        return pd.DataFrame(columns=["step", *STRUCTURAL_STATES])
    texts = turns["turn_texts"]
    code = {state: i for i, state in enumerate(STRUCTURAL_STATES)}
    labels = {text: code.get(str(classify(text)), code["text_pollution"]) for text in pd.unique(texts)}
    codes = texts.map(labels).to_numpy(dtype=np.int64)
    steps, step_index = np.unique(turns["step"].to_numpy(dtype=np.int64), return_inverse=True)
    k = len(STRUCTURAL_STATES)
    counts = np.bincount(step_index * k + codes, minlength=len(steps) * k).reshape(len(steps), k)
    shares = counts / counts.sum(axis=1, keepdims=True)
    out = pd.DataFrame(shares, columns=list(STRUCTURAL_STATES))
    out.insert(0, "step", steps)
    return out


def rollout_state(turn_texts: object, classify: Callable[[object], object] | None) -> str | None:
    """A rollout's state as diagnostics defines it (its worst turn's, else its last turn's healthy
    state; no turns is full collapse). None when no classifier is available."""
    if classify is None or turn_texts is None:
        return None
    from collapsewatch.diagnostics.structure import summarize_rollout

    return summarize_rollout(list(turn_texts)).state.value
