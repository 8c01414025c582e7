"""Rules replayed on real trainer runs archived in docs/data/features (docs/detection.md, round 24)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collapsewatch.diagnostics.detector_base import PRESETS
from collapsewatch.diagnostics.feature_archive import load_archive
from collapsewatch.diagnostics.scan import findings_of, first_critical_step, replay_features

ARCHIVES = Path(__file__).resolve().parents[2] / "docs" / "data" / "features"
RULE_S = dict(PRESETS["S"])


def _pages(archive: str, config: dict) -> list:
    inputs, features = load_archive(ARCHIVES / archive)
    return _pages_of(inputs, features, config)


def _pages_of(inputs, features, config: dict) -> list:
    alerts, _ = replay_features(features, inputs.run.control_tokens, config)
    return [a for a in alerts if a.severity == "critical"]


def _page(archive: str, config: dict) -> int | None:
    return first_critical_step(_pages(archive, config))


def _page_of(inputs, features, config: dict) -> int | None:
    return first_critical_step(_pages_of(inputs, features, config))


@pytest.mark.parametrize(
    ("archive", "default_page", "s_page"),
    [
        ("r24w/sync-sft-s130.parquet", 29, None),  # joint SFT 0.1, held: the page goes
        ("r24v/sync-sft-s131.parquet", 27, 40),  # joint SFT 0.05, slid across at 34: S pages late
        ("r23/collapse-s120.parquet", 21, 21),  # no SFT loss: S is the default
    ],
)
def test_sft_persistence_on_archived_runs(archive, default_page, s_page):
    assert _page(archive, {}) == default_page
    assert _page(archive, RULE_S) == s_page


def test_a_page_in_an_sft_run_asks_for_patience_first():
    """Most pages of SFT-supervised runs came in runs the SFT then repaired (round 24): the page says
    so and what to watch; an unsupervised run's page says act now."""
    sft_page = _pages("r24w/sync-sft-s130.parquet", {})[0]
    assert sft_page.evidence["sft_supervised"] is True
    assert "logs an SFT loss" in sft_page.message and "within 3-4 steps" in sft_page.message
    assert "Act now" not in sft_page.message
    plain = _pages("r23/collapse-s120.parquet", {})[0]
    assert plain.evidence["sft_supervised"] is False
    assert "Act now" in plain.message and "SFT loss" not in plain.message
    # the fixes that measured (items 42-49 of docs/detection.md) lead; a bare rollback is named as no remedy
    assert "Act now: lower the learning rate and add supervision" in plain.message
    assert "rollback" in plain.message and "collapsed again" in plain.message
    # the family count stays in the evidence; the message gives no percentage that reads as a probability
    assert "confidence" not in plain.message and "%" not in plain.message
    assert 0 < plain.evidence["confidence"] <= 1


RULE_LS, RULE_LSF = dict(PRESETS["LS"]), dict(PRESETS["LSF"])


@pytest.mark.parametrize(
    ("archive", "ls_page", "lsf_page"),
    [
        ("r26/collapse-s150.parquet", 37, 33),  # lost success first (onset 33): F pages at the onset
        ("r21/collapse-s100.parquet", 42, 35),  # a slow slide (onset 35), format late
        ("r26/collapse-s151.parquet", 17, 17),  # structure first: F changes nothing
        ("r26/off-policy-s151.parquet", None, None),  # slid across at 40 with mixed groups: the gate holds
        ("r26/sync-sft-s151.parquet", None, None),  # logs an SFT loss: F is not evaluated
    ],
)
def test_success_slide_on_archived_runs(archive, ls_page, lsf_page):
    """Rule F (docs/detection.md, item 27) on runs it was chosen on: it pages collapses that lost
    success before their format, at their onset, and no supervised run."""
    assert _page(archive, RULE_LS) == ls_page
    assert _page(archive, RULE_LSF) == lsf_page
    if lsf_page is not None and lsf_page != ls_page:
        families = _pages(archive, RULE_LSF)[0].evidence["families"]
        assert "slide" in families and "structure" not in families


RULE_LSF2 = {**RULE_LS, "slide_success_drop": 0.75, "slide_persist": 1, "slide_entropy_rise": 0.0}


@pytest.mark.parametrize(
    ("archive", "lsf_page", "lsf2_page"),
    [
        ("r29/collapse-s183.parquet", 27, 22),  # lost success first (onset 25): F2 pages 3 steps ahead
        ("r29/collapse-s182.parquet", 36, 28),  # onset 37
        ("r29lr/low-lr-s181.parquet", None, 58),  # no supervision, lr 2e-4: held (0.69 of its peak at worst)
        ("r29lr/low-lr-s183.parquet", None, 24),  # held, 0.66 of its peak at worst
        ("r29lr/low-lr-s180.parquet", 52, 51),  # held; a structural excursion that every rule pages
    ],
)
def test_an_earlier_success_slide_pages_unsupervised_runs_that_hold(archive, lsf_page, lsf2_page):
    """Round 29 (docs/detection.md, item 29): the slide at 0.75 of the peak, 1 step, no entropy
    condition (F2) pages collapses well ahead, and every unsupervised low-LR run that held; F does
    not page those. Its pages are the slide with a family that reads something else than success."""
    assert _page(archive, RULE_LSF) == lsf_page
    assert _page(archive, RULE_LSF2) == lsf2_page
    families = set(_pages(archive, RULE_LSF2)[0].evidence["families"])
    assert "slide" in families and families - {"slide", "outcome"}


def test_the_default_pages_an_unsupervised_run_that_holds():
    """A limit, kept in view (docs/detection.md, round 29): low-lr s192 never crossed the onset line,
    yet round 7's rule pages it at 37 on a brief rise of broken turns, with no SFT loss to repair it."""
    inputs, features = load_archive(ARCHIVES / "r29lr/low-lr-s192.parquet")
    findings = findings_of(inputs, features, {})
    assert findings.collapse_onset_step is None and findings.first_critical_step == 37
    assert "structure" in _pages("r29lr/low-lr-s192.parquet", {})[0].evidence["families"]


@pytest.mark.parametrize(
    ("archive", "a_page", "ls_page"),
    [
        ("r31/collapse-s211.parquet", 26, 26),  # onset 29: the gate held nothing back at 16 rollouts a group
        ("r31/collapse-s210.parquet", 20, 20),  # onset 42
        ("r31/off-policy-s210.parquet", 39, None),  # slid across at 40 with its format holding
    ],
)
def test_the_learning_signal_gate_at_groups_of_16(archive, a_page, ls_page):
    """Round 31 (docs/detection.md, item 31): at G=16 LS pages the collapses at A's step."""
    assert _page(archive, {}) == a_page
    assert _page(archive, RULE_LS) == ls_page


def test_the_slide_pages_a_success_first_collapse_at_groups_of_16():
    """Round 32 (docs/detection.md): s214 lost success at 36 and broke its format at 67; the rules
    that wait for the structure family page it 15 steps late, the success slide (LSF) 6 ahead."""
    assert _page("r32/collapse-s214.parquet", {}) == 51
    assert _page("r32/collapse-s214.parquet", RULE_LS) == 51
    assert _page("r32/collapse-s214.parquet", RULE_LSF) == 30
    assert "slide" in _pages("r32/collapse-s214.parquet", RULE_LSF)[0].evidence["families"]


@pytest.mark.parametrize(("archive", "onset", "page"), [("collapse-s301", 27, 23), ("collapse-s305", 30, 28)])
def test_a_gpu_collapse_is_paged_before_its_onset(archive, onset, page):
    """Round 33 (docs/detection.md): runs trained on an H200 in bf16 are paged as CPU runs are."""
    inputs, features = load_archive(ARCHIVES / f"r33/{archive}.parquet")
    findings = findings_of(inputs, features, {})
    assert findings.collapse_onset_step == onset and findings.first_critical_step == page


def test_a_bf16_nan_is_paged_by_non_finite_alone():
    """Round 33: interleaved s300 went NaN in the update at step 64 (cuDNN attention, since left out);
    the numerics family pages it there and no collapse rule fires on the run."""
    pages = _pages("r33/interleaved-s300.parquet", RULE_LSF)
    assert first_critical_step(pages) == 64
    assert {a.detector for a in pages} == {"non_finite"}


@pytest.mark.parametrize(
    ("archive", "onset", "a_page", "lsf_page"),
    [
        ("low-lr-s344", 41, 32, 32),  # a low-LR run that collapsed: paged 9 steps ahead
        ("low-lr-s342", None, 47, 47),  # held: a structural excursion it survived, paged
        ("low-lr-s341", None, None, 51),  # held: only the success slide pages it
        ("low-lr-s340", None, None, None),  # held, quiet
        ("collapse-s340", 31, 33, 31),  # lost success first: A 2 steps late, the slide at the onset
    ],
)
def test_unsupervised_runs_of_round_34(archive, onset, a_page, lsf_page):
    """Round 34 (docs/detection.md): at a 3.5x lower learning rate without supervision most runs hold
    and about half of those are paged; two of eight collapsed."""
    inputs, features = load_archive(ARCHIVES / f"r34/{archive}.parquet")
    findings = findings_of(inputs, features, {})
    assert findings.collapse_onset_step == onset and findings.first_critical_step == a_page
    assert _page(f"r34/{archive}.parquet", RULE_LSF) == lsf_page


def test_a_low_lr_run_that_holds_is_paged_once_watched_long_enough():
    """Round 35: s343 held to step 160 without crossing the onset line; quiet through step 80, it was
    paged at 114 as its broken turns crept up. A page is sent once per episode: s347's condition stood
    from 65 to the end (it re-paged every 20 steps before the verdict kept episodes), s341's lapsed for
    more than 20 steps between its two."""
    inputs, features = load_archive(ARCHIVES / "r35/low-lr-s343.parquet")
    findings = findings_of(inputs, features, {})
    assert findings.steps == 160 and findings.collapse_onset_step is None
    assert findings.first_critical_step == 114
    assert [a.step for a in _pages("r35/low-lr-s347.parquet", {})] == [65]
    assert [a.step for a in _pages("r35/low-lr-s341.parquet", {})] == [119, 150]


NO_CUSUM_DELAY = {"structure_cusum_h": 1.0}  # round 36's H (docs/detection.md, item 36)
RULE_LSH, RULE_LSFH = dict(PRESETS["LSH"]), dict(PRESETS["LSFH"])


@pytest.mark.parametrize(
    ("archive", "onset", "lsf_page", "lsfh_page"),
    [
        ("r22/collapse-s112.parquet", 37, 31, 23),  # broken turns rose 8 steps before the CUSUM added up
        ("r27/collapse-s162.parquet", 36, 24, 17),
        ("r26/collapse-s151.parquet", 34, 17, 17),  # paged 17 steps ahead already: nothing to gain
        ("r34/low-lr-s342.parquet", None, 47, 47),  # a low-LR run that held: its page does not move
    ],
)
def test_the_structure_family_without_its_cusum_delay(archive, onset, lsf_page, lsfh_page):
    """Item 36, in-sample: with the CUSUM's threshold at 1 instead of 8 the rise of broken turns
    (15 points over the warm-up) decides; collapses are paged earlier, never later."""
    inputs, features = load_archive(ARCHIVES / archive)
    assert findings_of(inputs, features, RULE_LSF).collapse_onset_step == onset
    assert _page_of(inputs, features, RULE_LSF) == lsf_page
    assert _page_of(inputs, features, RULE_LSFH) == lsfh_page


@pytest.mark.parametrize("archive", ["r22/off-policy-s114.parquet", "r26/sync-sft-s150.parquet"])
def test_without_the_cusum_delay_the_gates_keep_supervised_runs_quiet(archive):
    """Item 36: round 7's rule with h 1 pages supervised runs that held and that it left alone at
    h 8; the learning-signal gate and the SFT window (LS) keep them quiet."""
    assert _page(archive, {}) is None
    assert _page(archive, NO_CUSUM_DELAY) is not None
    assert _page(archive, RULE_LSH) is None


@pytest.mark.parametrize(
    ("archive", "onset", "ls_page", "lsh_page", "lsfh_page"),
    [
        ("r36/collapse-s361", 33, 27, 26, 26),
        ("r36/collapse-s367", 24, 22, 20, 20),
        ("r36/low-lr-s364", None, None, None, 57),  # held: the success slide pages it, H does not
        ("r36/off-policy-s360", None, None, None, None),  # A pages it at 51
        ("r38/collapse-s384", 35, 27, 23, 23),  # H's largest gain on round 38: 4 steps
        ("r38/collapse-s382", 27, 34, 29, 28),  # late under every setting; the slide is first under LSFH
        ("r38/low-lr-s380", None, 55, 55, 55),  # held, paged by every setting at the same step
        ("r38/sync-sft-s381", None, None, None, None),  # A pages it at 40, A with h 1 at 30
        ("r39/collapse-s391", 35, 29, 23, 23),  # round 39: six more collapses, three paged earlier
        ("r39/collapse-s394", 50, 35, 32, 32),
        ("r39/collapse-s392", 24, 23, 23, 23),
        ("r40/collapse-s401", 32, 29, 24, 24),  # round 40: H's largest gain, 5 steps
        ("r40/collapse-s406", 61, 28, 28, 28),  # a slow slide, paged 33 steps ahead by every setting
        ("r40/low-lr-s401", None, None, 74, 74),  # held; H pages it and LS does not: H withdrawn (item 40)
        ("r40/interleaved-s400", None, None, None, None),  # A pages it at 31
    ],
)
def test_h_held_out_on_rounds_36_to_40(archive, onset, ls_page, lsh_page, lsfh_page):
    """Rounds 36, 38, 39 and 40 (docs/detection.md): H held out; it pages some collapses earlier and
    no supervised run, and on round 40 one unsupervised run that held and that LS leaves alone."""
    inputs, features = load_archive(ARCHIVES / f"{archive}.parquet")
    assert findings_of(inputs, features, {}).collapse_onset_step == onset
    pages = [_page_of(inputs, features, rule) for rule in (RULE_LS, RULE_LSH, RULE_LSFH)]
    assert pages == [ls_page, lsh_page, lsfh_page]


@pytest.mark.parametrize(
    ("archive", "a_page", "lsh_page"), [("low-lr-s364", 119, 119), ("low-lr-s362", 143, 141)]
)
def test_round_36s_quiet_low_lr_runs_are_paged_by_step_160(archive, a_page, lsh_page):
    """Round 37: round 36's low-LR runs that held, quiet under A through step 80, continued to 160:
    none crossed the onset line and every one was paged, as in round 35."""
    inputs, features = load_archive(ARCHIVES / f"r37/{archive}.parquet")
    findings = findings_of(inputs, features, {})
    assert findings.steps == 160 and findings.collapse_onset_step is None
    assert findings.first_critical_step == a_page > 80
    assert _page_of(inputs, features, RULE_LSH) == lsh_page
