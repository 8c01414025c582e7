"""Statistics the detectors derive from a step's rollouts."""

import numpy as np
import pandas as pd
import pytest

from collapsewatch.diagnostics.features import (
    derive_sequence_stats,
    group_keys,
    repeated_ngram_coverage,
    sample_index,
    sequence_arrays,
    step_features,
)

CALL = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'


def test_group_stats_split_all_correct_and_all_wrong_per_rank():
    seqs = pd.DataFrame(
        {
            "group": [0, 0, 1, 1, 0, 0],
            "rank": [0, 0, 0, 0, 1, 1],  # group 0 of rank 1 is another prompt than group 0 of rank 0
            "reward": [1.0, 1.0, 0.0, 0.0, 1.0, 0.0],
            "success": [True, True, False, False, True, False],
        }
    )
    out, _ = derive_sequence_stats(seqs)
    assert out["groups/zero_adv_frac"] == 2 / 3
    assert out["groups/zero_adv_all_correct"] == 1 / 3
    assert out["groups/zero_adv_all_wrong"] == 1 / 3


def test_structural_shares_and_sampling_are_deterministic():
    turns = [[CALL, "done."]] * 6 + [["<tool_call>"]] * 4
    seqs = pd.DataFrame({"turn_texts": turns, "uid": [f"u{i}" for i in range(10)]})
    out, states = derive_sequence_stats(seqs)
    assert out["state/full_collapse"] == 4 / 16 and out["state/broken_rollouts"] == 0.4
    _, sampled = derive_sequence_stats(seqs, max_classified=5)
    assert [i for i, s in enumerate(sampled) if s is not None] == list(sample_index(10, 5))
    assert list(sample_index(10, 5)) == list(sample_index(10, 5)) and len(sample_index(1000, 128)) == 128


def test_lazy_likelihood_mismatch_and_repetition():
    seqs = pd.DataFrame(
        {
            "advantage": [1.0, 1.0, -1.0, 1.0],
            "logprob_sum": [-10.0, -10.0, -10.0, -10.0],
            "logprob_sum_after": [-12.0, -8.0, -20.0, -11.0],
            "old_logprob_sum": [-10.0, -11.0, -10.0, -10.0],
            "completion_len": [10, 10, 10, 10],
            "text": ["a b c d " * 10, "the answer is 4", "", None],
        }
    )
    out, _ = derive_sequence_stats(seqs)
    assert out["lazy/decrease_frac"] == 2 / 3
    assert np.isclose(out["mismatch/abs_per_token"], 0.025)
    assert out["seq/repetition_frac"] == 0.25
    assert repeated_ngram_coverage("one two three four five six seven eight") == 0.0


def test_canonical_scalars_win_over_derived_and_bad_cells_become_nan():
    seqs = pd.DataFrame({"success": [True, False], "reward": ["x", 1.0]})
    f = step_features(3, {"success/rate": 0.9, "loss": "oops"}, seqs)
    assert f.first("success/rate", "seq/success_rate") == 0.9
    assert f.get("seq/success_rate") == 0.5
    assert np.isnan(f.get("loss"))


@pytest.mark.parametrize("ranks", [1, 2])
def test_classified_sample_takes_whole_groups(ranks):
    """512 rollouts in groups of 8, on one rank or on two whose group ids repeat: the sample takes
    whole (rank, group) groups and keeps its size; without keys it is plain evenly spaced rows."""
    group = np.tile(np.repeat(np.arange(64 // ranks), 8), ranks).astype(float)
    rank = np.repeat(np.arange(ranks, dtype=float), 512 // ranks)
    keys = group_keys(group, rank)
    picked = sample_index(len(keys), 128, keys)
    assert len(picked) == 128
    _, counts = np.unique(keys[picked], return_counts=True)
    assert set(counts) == {8}
    assert len(sample_index(len(keys), 128)) == 128


def test_sequence_arrays_read_every_dtype_a_writer_produces():
    """Plain numpy columns take a fast cast; nullable and object columns still turn missing into NaN."""
    seqs = pd.DataFrame(
        {
            "reward": np.array([0.5, np.nan, 1.0]),
            "num_tool_calls": np.array([1, 0, 2], dtype=np.int64),
            "success": np.array([True, False, True]),
            "group": pd.array([0, None, 1], dtype="Int64"),
            "completion_len": pd.Series([10, None, "12"], dtype=object),
        }
    )
    arrays = sequence_arrays(seqs)
    np.testing.assert_array_equal(arrays["reward"], [0.5, np.nan, 1.0])
    np.testing.assert_array_equal(arrays["num_tool_calls"], [1.0, 0.0, 2.0])
    np.testing.assert_array_equal(arrays["success"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(arrays["group"], [0.0, np.nan, 1.0])
    np.testing.assert_array_equal(arrays["completion_len"], [10.0, np.nan, 12.0])
    assert all(a.dtype == np.float64 for a in arrays.values())


def test_sequence_arrays_read_a_hooks_plain_columns_like_the_dataframe_of_them():
    """A hook hands over lists with None holes; equal-length turn lists must stay one list per row."""
    columns = {
        "reward": [0.5, None, 1.0],
        "num_tool_calls": [1, 0, 2],
        "success": [True, False, None],
        "completion_len": [10, None, "12"],
        "turn_texts": [["a", "b"], ["c", "d"], ["e", "f"]],
        "text": ["ab", None, "ef"],
    }
    arrays = sequence_arrays(columns)
    framed = sequence_arrays(pd.DataFrame(columns))
    assert arrays.keys() == framed.keys()

    def missing_as_none(values):  # pandas' str dtype reads a None cell back as NaN
        return [None if isinstance(v, float) and np.isnan(v) else v for v in values]

    for name in arrays:
        if arrays[name].dtype == object:
            assert arrays[name].shape == (3,)
            assert missing_as_none(arrays[name]) == missing_as_none(framed[name])
        else:
            np.testing.assert_array_equal(arrays[name], framed[name])
    np.testing.assert_array_equal(arrays["completion_len"], [10.0, np.nan, 12.0])


def test_step_features_build_the_dataframe_only_when_read():
    """The live path hands over plain columns; the frame (for an alert's evidence) is built on first
    read, once."""
    columns = {"reward": [1.0, 0.0], "success": [True, False], "text": ["a", "b"]}
    f = step_features(3, {}, columns)
    assert f.derived["seq/success_rate"] == 0.5
    assert "sequences" not in vars(f)
    frame = f.sequences
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(columns)
    assert f.sequences is frame
