"""Spearman ρ, Kendall τ-b and Pearson r equal scipy.stats, weighted or not, with ties and NaN."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from benchmark.stats import (
    Faces,
    LikertJudgments,
    alignment_report,
    average_ranks,
    kendall_tau_b,
    pearson,
    spearman,
)
from benchmark.stats.simulate import simulate_study

SCIPY = {
    "spearman": (spearman, lambda x, y: scipy.stats.spearmanr(x, y).statistic),
    "kendall": (kendall_tau_b, lambda x, y: scipy.stats.kendalltau(x, y, variant="b").statistic),
    "pearson": (pearson, lambda x, y: scipy.stats.pearsonr(x, y).statistic),
}


def _tied_data_with_gaps(
    rng: np.random.Generator, rows: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    x = rng.integers(0, 6, (rows, n)).astype(float)  # few distinct values: many ties
    y = 0.5 * x + rng.integers(0, 4, (rows, n))
    x[rng.random(x.shape) < 0.15] = np.nan
    y[rng.random(y.shape) < 0.15] = np.nan
    return x, y


@pytest.mark.parametrize("name", SCIPY)
def test_statistic_equals_scipy_on_data_with_ties_and_missing_values(name: str) -> None:
    ours, theirs = SCIPY[name]
    x, y = _tied_data_with_gaps(np.random.default_rng(0), rows=25, n=80)
    got = ours(x, y)
    for row in range(len(x)):
        complete = np.isfinite(x[row]) & np.isfinite(y[row])
        assert got[row] == pytest.approx(theirs(x[row, complete], y[row, complete]), abs=1e-12)


@pytest.mark.parametrize("name", SCIPY)
def test_integer_weights_equal_scipy_on_the_expanded_data(name: str) -> None:
    ours, theirs = SCIPY[name]
    rng = np.random.default_rng(1)
    x, y = _tied_data_with_gaps(rng, rows=25, n=40)
    weights = rng.integers(0, 4, x.shape)
    got = ours(x, y, weights)
    for row in range(len(x)):
        xe, ye = np.repeat(x[row], weights[row]), np.repeat(y[row], weights[row])
        complete = np.isfinite(xe) & np.isfinite(ye)
        assert got[row] == pytest.approx(theirs(xe[complete], ye[complete]), abs=1e-12)


def test_average_ranks_equal_scipy_rankdata_and_ignore_nan() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, (4, 30)).astype(float)
    x[:, ::7] = np.nan
    ranks = average_ranks(x)
    for row in range(len(x)):
        finite = np.isfinite(x[row])
        np.testing.assert_allclose(ranks[row, finite], scipy.stats.rankdata(x[row, finite]))
        assert np.isnan(ranks[row, ~finite]).all()


def test_large_unweighted_kendall_equals_scipy() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 50, 5000).astype(float)
    y = x + rng.normal(0, 20, 5000)
    x[::11] = np.nan
    keep = np.isfinite(x)
    expected = scipy.stats.kendalltau(x[keep], y[keep]).statistic
    assert kendall_tau_b(x, y)[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", SCIPY)
def test_constant_or_too_short_input_gives_nan(name: str) -> None:
    ours, _ = SCIPY[name]
    assert np.isnan(ours(np.ones(10), np.arange(10.0))[0])
    assert np.isnan(ours(np.array([1.0, np.nan]), np.array([2.0, 3.0]))[0])


def _face_and_image_means(study, metric: np.ndarray):
    faces = study.faces
    human = np.bincount(study.likert.face, study.likert.rating, faces.n_faces) / np.bincount(
        study.likert.face, minlength=faces.n_faces
    )
    finite = np.isfinite(metric)
    count = np.bincount(faces.image, finite, faces.n_images)
    image_metric = np.bincount(faces.image, np.where(finite, metric, 0), faces.n_images) / count
    image_human = np.bincount(faces.image, human, faces.n_images) / np.bincount(faces.image)
    return human, image_human, image_metric


@pytest.mark.parametrize("kendall_max_pairs", [10**9, 500])
def test_report_point_estimates_equal_scipy_at_face_and_image_level(kendall_max_pairs: int) -> None:
    study = simulate_study(n_prompts=60, seed=4)
    metric = study.metrics["tracks_quality"].copy()
    metric[::9] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        human, image_human, image_metric = _face_and_image_means(study, metric)
    report = alignment_report(
        faces=study.faces,
        likert=study.likert,
        metrics={"m": metric},
        n_boot=20,
        seed=0,
        kendall_max_pairs=kendall_max_pairs,
    )
    values = report["headline"]["rows"][0]["values"]
    for level, h, m in (("face", human, metric), ("image", image_human, image_metric)):
        keep = np.isfinite(h) & np.isfinite(m)
        for name, (_, theirs) in SCIPY.items():
            assert values[f"{level}_{name}"]["point"] == pytest.approx(
                theirs(h[keep], m[keep]), abs=1e-12
            ), (level, name)


def test_faces_of_one_image_must_share_a_prompt() -> None:
    with pytest.raises(ValueError, match="same prompt"):
        Faces(prompt=[0, 1], image=[0, 0])


def test_judgments_reject_bad_shapes_and_ranges() -> None:
    with pytest.raises(ValueError, match="same length"):
        LikertJudgments(face=[0, 1], annotator=[0], rating=[1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        LikertJudgments(face=[-1], annotator=[0], rating=[1.0])
    with pytest.raises(ValueError, match="integers"):
        LikertJudgments(face=[0.5], annotator=[0], rating=[1.0])
    with pytest.raises(ValueError, match="finite"):
        LikertJudgments(face=[0], annotator=[0], rating=[np.nan])


def test_row_sort_of_human_means_is_exact_where_float64_values_share_a_float32_key() -> None:
    """The bootstrap sorts float32 keys, then repairs rows whose float64 values tie on a key."""
    from benchmark.stats.report import _argsort_rows

    rng = np.random.default_rng(4)
    base = rng.choice([-2.5, -1e-30, 0.0, 1.0 / 3.0, 4.2], size=(6, 3000))
    # Means of means land 1 ulp apart: distinct float64 values, one float32 key.
    ulps = rng.integers(-3, 4, size=base.shape)
    values = base + ulps * np.spacing(np.abs(base) + 1e-300)
    values[0] = rng.normal(size=3000)  # a row with no shared keys
    values[1, ::7] = np.inf  # the marker of faces without a mean
    order, ordered = _argsort_rows(values)
    for row in range(values.shape[0]):
        assert sorted(order[row]) == list(range(values.shape[1]))
        assert np.array_equal(ordered[row], values[row, order[row]])
        assert np.array_equal(ordered[row], np.sort(values[row]))
