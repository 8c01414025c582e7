"""Property tests: whatever a hook writes comes back the same (unicode, empty texts, nulls)."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import collapsewatch as cw
from collapsewatch import schema
from collapsewatch.store.writer import RunWriter

texts = st.one_of(st.none(), st.text(max_size=40))
rows = st.lists(
    st.tuples(
        texts,
        st.lists(st.text(max_size=20), max_size=4),
        st.one_of(st.none(), st.floats(allow_nan=False, width=64)),
        st.one_of(st.none(), st.booleans()),
        st.dictionaries(st.text(min_size=1, max_size=8), st.floats(allow_nan=False), max_size=3),
    ),
    min_size=1,
    max_size=12,
)


def plain(value: object) -> object:
    """pandas' missing markers (NaN, NA) as None, so rows compare with what was written."""
    return None if value is None or value is pd.NA or (np.isscalar(value) and pd.isna(value)) else value


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows, step=st.integers(0, 10**7))
def test_sequences_round_trip(rows: list, step: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        with RunWriter(root, "r") as writer:
            writer.write(
                "sequences",
                step,
                {
                    "seq": np.arange(len(rows), dtype=np.int32),
                    "text": [r[0] for r in rows],
                    "turn_texts": [r[1] for r in rows],
                    "reward": [r[2] for r in rows],
                    "success": [r[3] for r in rows],
                    "reward_components": [r[4] for r in rows],
                },
            )
        back = cw.open_run(f"{root}/r").sequences()
    assert back["step"].tolist() == [step] * len(rows)
    assert [plain(t) for t in back["text"]] == [r[0] for r in rows]
    assert [list(t) for t in back["turn_texts"]] == [r[1] for r in rows]
    assert [plain(v) for v in back["reward"]] == [r[2] for r in rows]
    assert [plain(v) for v in back["success"]] == [r[3] for r in rows]
    assert [dict(m) for m in back["reward_components"]] == [r[4] for r in rows]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-80, max_value=0, allow_nan=False), min_size=1, max_size=50))
def test_control_quantisation_is_within_one_step(logps: list[float]) -> None:
    logp = np.array(logps)
    p = schema.dequantize_control_probs(schema.quantize_control_logprobs(logp))
    true = np.exp(logp)
    above_floor = true > 2.0**-31.8
    rel = np.abs(p[above_floor] - true[above_floor]) / true[above_floor]
    assert np.all(rel <= 2 ** (0.5 / schema.CONTROL_Q_SCALE) - 1 + 1e-6)
    assert np.all(p[~above_floor] <= 2.0**-31.8)


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=50))
def test_mantissa_rounding_error_bound(values: list[float]) -> None:
    x = np.array(values, dtype=np.float32)
    y = schema.round_mantissa(x)
    big = np.abs(x) > 1e-30
    assert np.all(np.abs(y[big] - x[big]) <= np.abs(x[big]) * 2.0**-12 * 1.0001)
