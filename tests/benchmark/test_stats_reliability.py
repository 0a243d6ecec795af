"""Krippendorff's α, the leave-one-out ceiling, split-half, gold accuracy, self-consistency."""

from __future__ import annotations

import krippendorff
import numpy as np
import pytest
import scipy.stats

from benchmark.stats import (
    LikertJudgments,
    PairOutcome,
    PairwiseJudgments,
    gold_accuracy,
    krippendorff_alpha,
    leave_one_out_ceiling,
    pairwise_self_consistency,
    self_consistency,
    split_half_reliability,
)
from benchmark.stats.simulate import simulate_study


@pytest.mark.parametrize("level", ["ordinal", "interval", "nominal"])
def test_krippendorff_alpha_equals_the_package_on_random_data_with_missing_values(
    level: str,
) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        raters, units = int(rng.integers(2, 8)), int(rng.integers(5, 60))
        truth = rng.integers(1, 6, units)
        data = np.clip(truth[None, :] + rng.integers(-1, 2, (raters, units)), 1, 5).astype(float)
        data[rng.random(data.shape) < 0.3] = np.nan
        if (np.isfinite(data).sum(axis=0) >= 2).sum() == 0 or len(
            np.unique(data[np.isfinite(data)])
        ) < 2:
            continue
        rater, unit = np.nonzero(np.isfinite(data))
        ours = krippendorff_alpha(unit, data[rater, unit], level=level)
        theirs = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
        assert ours == pytest.approx(theirs, abs=1e-12)


def test_krippendorff_alpha_rejects_values_outside_the_domain() -> None:
    with pytest.raises(ValueError, match="value domain"):
        krippendorff_alpha([0, 0], [1.0, 7.0], value_domain=[1.0, 2.0])


def test_leave_one_out_ceiling_equals_scipy_per_annotator() -> None:
    study = simulate_study(n_prompts=30, n_annotators=8, judgments_per_face=4, seed=1)
    likert, n_faces = study.likert, study.faces.n_faces
    ceiling = leave_one_out_ceiling(likert, n_faces)
    for a in range(8):
        mine = likert.annotator == a
        faces = likert.face[mine]
        others = ~mine & np.isin(likert.face, faces)
        with np.errstate(invalid="ignore", divide="ignore"):
            rest = np.bincount(likert.face[others], likert.rating[others], n_faces) / np.bincount(
                likert.face[others], minlength=n_faces
            )
        keep = np.isfinite(rest[faces])
        own, other = likert.rating[mine][keep], rest[faces][keep]
        assert ceiling.pearson[a] == pytest.approx(
            scipy.stats.pearsonr(own, other).statistic, abs=1e-12
        )
        assert ceiling.spearman[a] == pytest.approx(
            scipy.stats.spearmanr(own, other).statistic, abs=1e-12
        )
        assert ceiling.kendall[a] == pytest.approx(
            scipy.stats.kendalltau(own, other).statistic, abs=1e-12
        )


def test_split_half_reliability_is_spearman_brown_corrected() -> None:
    study = simulate_study(n_prompts=80, n_annotators=20, judgments_per_face=6, seed=2)
    split = split_half_reliability(study.likert, study.faces.n_faces, n_splits=10, seed=0)
    r = split.pearson
    assert split.pearson_spearman_brown == pytest.approx(2 * r / (1 + r))
    assert 0 < r < split.pearson_spearman_brown < 1


def test_gold_accuracy_counts_answers_within_the_tolerance() -> None:
    likert = LikertJudgments(
        face=[0, 1, 2, 0, 1],
        annotator=[0, 0, 0, 1, 1],
        rating=[3, 4, 5, 1, 4],
        gold=[3, 5, np.nan, 3, np.nan],
    )
    exact = gold_accuracy(likert)
    assert exact.value.tolist() == [0.5, 0.0]
    assert exact.count.tolist() == [2, 1]
    assert gold_accuracy(likert, tolerance=1).value.tolist() == [1.0, 0.0]


def test_self_consistency_compares_every_repeat_of_a_face_by_one_annotator() -> None:
    likert = LikertJudgments(
        face=[0, 0, 0, 1, 1, 2], annotator=[0, 0, 0, 0, 1, 1], rating=[3, 3, 4, 2, 5, 1]
    )
    scores = self_consistency(likert)
    # Annotator 0 rated face 0 three times: pairs (3,3) agree, (3,4) and (3,4) do not.
    assert scores.count.tolist() == [3, 0]
    assert scores.value[0] == pytest.approx(1 / 3)
    assert scores.mean_abs_difference[0] == pytest.approx(2 / 3)
    assert np.isnan(scores.value[1])


def test_pairwise_self_consistency_normalises_swapped_sides() -> None:
    judgments = PairwiseJudgments(
        left_face=[0, 1, 0, 2],
        right_face=[1, 0, 1, 3],
        annotator=[0, 0, 1, 1],
        outcome=[PairOutcome.LEFT, PairOutcome.RIGHT, PairOutcome.TIE, PairOutcome.LEFT],
    )
    scores = pairwise_self_consistency(judgments)
    assert scores.value[0] == 1.0  # "0 better" shown both ways round
    assert scores.count.tolist() == [1, 0]


def test_interval_alpha_of_continuous_ratings_equals_the_package() -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(0, 1, (5, 40)) + rng.normal(0, 1, 40)
    data[rng.random(data.shape) < 0.3] = np.nan
    rater, unit = np.nonzero(np.isfinite(data))
    assert krippendorff_alpha(unit, data[rater, unit], level="interval") == pytest.approx(
        krippendorff.alpha(reliability_data=data, level_of_measurement="interval"), abs=1e-12
    )
