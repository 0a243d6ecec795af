"""The two-way cluster bootstrap: exact replicates, reproducible, near-nominal coverage."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from benchmark.stats import (
    PairDesign,
    alignment_report,
    fit_bradley_terry,
    interval,
    iter_resample_counts,
    pairwise_accuracy_with_ties,
    pearson,
    plain_pairwise_accuracy,
    spearman,
    within_prompt_pairs,
)
from benchmark.stats.simulate import simulate_study


def _blocks(chunk: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    blocks = list(iter_resample_counts(chunk=chunk, **kwargs))
    return (
        np.concatenate([b.prompt for b in blocks]),
        np.concatenate([b.annotator for b in blocks]),
    )


def test_resample_counts_do_not_depend_on_the_chunk_size() -> None:
    settings = {"n_prompts": 17, "n_annotators": 9, "n_boot": 50, "seed": 4}
    one_prompt, one_annotator = _blocks(50, **settings)
    for chunk in (1, 7, 64):
        prompt, annotator = _blocks(chunk, **settings)
        np.testing.assert_array_equal(prompt, one_prompt)
        np.testing.assert_array_equal(annotator, one_annotator)
    assert (one_prompt.sum(axis=1) == 17).all() and (one_annotator.sum(axis=1) == 9).all()


@pytest.mark.parametrize(
    ("likert_scale", "n_annotators", "judgments_per_face"),
    [
        (True, 12, 3),  # some faces lose all their annotators in a resample
        (False, 12, 3),  # continuous ratings: float32 sort keys can collide
        (True, 40, 8),  # sparse human-mean product; every face keeps a rating (fast ρ path)
    ],
)
def test_a_bootstrap_replicate_equals_scipy_on_the_materialised_resample(
    likert_scale: bool, n_annotators: int, judgments_per_face: int
) -> None:
    """Draw prompts and annotators, copy the data for real, and compare with scipy."""
    study = simulate_study(
        n_prompts=25,
        n_annotators=n_annotators,
        judgments_per_face=judgments_per_face,
        round_to_likert=likert_scale,
        seed=11,
    )
    faces, likert = study.faces, study.likert
    metric = study.metrics["tracks_quality"]
    report = alignment_report(
        faces=faces,
        likert=likert,
        metrics={"m": metric},
        n_boot=6,
        seed=5,
        chunk=4,
        return_replicates=True,
    )
    prompt_counts, annotator_counts = _blocks(
        4, n_prompts=faces.n_prompts, n_annotators=n_annotators, n_boot=6, seed=5
    )
    for b in range(6):
        # Each drawn annotator copy re-judges; a face's mean over the copies is weighted by w_a.
        w = annotator_counts[b][likert.annotator]
        with np.errstate(invalid="ignore", divide="ignore"):
            human = np.bincount(likert.face, w * likert.rating, faces.n_faces) / np.bincount(
                likert.face, w, faces.n_faces
            )
        copies = prompt_counts[b][faces.prompt].astype(int)  # each prompt copy copies its faces
        face_rows = np.repeat(np.arange(faces.n_faces), copies)
        face_rows = face_rows[np.isfinite(human[face_rows])]
        h, m = human[face_rows], metric[face_rows]
        replicate = report["replicates"]
        assert replicate["face|spearman"][0][b] == pytest.approx(
            scipy.stats.spearmanr(h, m).statistic, abs=1e-12
        )
        assert replicate["face|pearson"][0][b] == pytest.approx(
            scipy.stats.pearsonr(h, m).statistic, abs=1e-12
        )
        assert replicate["face|kendall_design"][0][b] == pytest.approx(
            scipy.stats.kendalltau(h, m).statistic, abs=1e-12
        )
        # Within-prompt pairs: every copy of a prompt brings its pairs once more.
        first, second = within_prompt_pairs(faces.prompt)
        keep = faces.image[first] != faces.image[second]
        first, second = first[keep], second[keep]
        copies = prompt_counts[b][faces.prompt[first]].astype(int)
        copies *= np.isfinite(human[first]) & np.isfinite(human[second])
        first, second = np.repeat(first, copies), np.repeat(second, copies)
        diff = metric[first] - metric[second]
        label = np.sign(human[first] - human[second])
        expected = pairwise_accuracy_with_ties(PairDesign.from_differences(diff), label)
        assert replicate["likert_pairs|accuracy_with_ties"][0][b] == pytest.approx(
            expected.accuracy[0], abs=1e-12
        )
        assert replicate["likert_pairs|accuracy_without_ties"][0][b] == pytest.approx(
            plain_pairwise_accuracy(diff, label)[0], abs=1e-12
        )


def test_same_seed_gives_identical_intervals_and_another_seed_does_not() -> None:
    study = simulate_study(n_prompts=40, seed=1)

    def headline(seed: int, chunk: int) -> list:
        report = alignment_report(
            faces=study.faces,
            likert=study.likert,
            metrics=study.metrics,
            n_boot=50,
            seed=seed,
            chunk=chunk,
        )
        return report["headline"]["rows"]

    assert headline(0, 7) == headline(0, 50)
    assert headline(0, 7) != headline(1, 7)


def test_interval_is_centred_on_the_point_estimate_and_clipped_to_bounds() -> None:
    replicates = np.array([0.1, 0.2, 0.3, 0.4, 0.5, np.nan])
    ci = interval(0.9, replicates, level=0.5, bounds=(-1.0, 1.0))
    # Quantiles 0.2 and 0.4 around the median 0.3, moved to the point 0.9.
    assert (ci.low, ci.high, ci.n_valid) == (pytest.approx(0.8), pytest.approx(1.0), 5)
    assert np.isnan(interval(0.5, np.array([np.nan])).low)


@pytest.mark.slow
def test_intervals_cover_the_true_value_at_about_the_nominal_rate() -> None:
    """200 small seeded studies; the truth is the same statistic on a study 600 times bigger."""
    settings = {
        "n_dms": 2,
        "judgments_per_face": 5,
        "annotator_noise": 0.7,
        "metrics": {"m": (1.0, 1.0)},
    }
    population = simulate_study(n_prompts=18_000, n_annotators=500, seed=999, **settings)
    human = np.bincount(population.likert.face, population.likert.rating) / np.bincount(
        population.likert.face
    )
    truth = {
        "face_pearson": pearson(human, population.metrics["m"])[0],
        "face_spearman": spearman(human, population.metrics["m"])[0],
    }
    hits = dict.fromkeys(truth, 0)
    n_studies = 200
    for replicate in range(n_studies):
        study = simulate_study(n_prompts=30, n_annotators=10, seed=replicate, **settings)
        report = alignment_report(
            faces=study.faces,
            likert=study.likert,
            metrics=study.metrics,
            n_boot=150,
            seed=replicate,
            workers=1,
            kendall_max_pairs=1000,
        )
        values = report["headline"]["rows"][0]["values"]
        for name, true_value in truth.items():
            hits[name] += values[name]["low"] <= true_value <= values[name]["high"]
    for name, count in hits.items():
        assert 0.90 <= count / n_studies <= 0.99, (name, count / n_studies)


def test_kendall_interval_from_a_sampled_pair_design_matches_the_exhaustive_one() -> None:
    study = simulate_study(n_prompts=150, n_dms=4, n_annotators=30, seed=3)

    def kendall(max_pairs: int) -> tuple[dict, dict]:
        report = alignment_report(
            faces=study.faces,
            likert=study.likert,
            metrics=study.metrics,
            n_boot=300,
            seed=0,
            kendall_max_pairs=max_pairs,
        )
        return (
            report["headline"]["rows"][0]["values"]["face_kendall"],
            report["differences"]["face_kendall"][0],
        )

    exact, exact_difference = kendall(10**7)  # all ~400,000 pairs
    sampled, sampled_difference = kendall(20_000)
    assert sampled["point"] == pytest.approx(exact["point"], abs=1e-12)  # scipy, exact
    for a, b in ((exact, sampled), (exact_difference, sampled_difference)):
        assert b["high"] - b["low"] == pytest.approx(a["high"] - a["low"], rel=0.15)


def test_forked_workers_give_the_same_report_as_one_process() -> None:
    study = simulate_study(n_prompts=40, n_pairwise=400, seed=6)

    def run(workers: int) -> dict:
        report = alignment_report(
            faces=study.faces,
            likert=study.likert,
            pairwise=study.pairwise,
            metrics=study.metrics,
            n_boot=60,
            seed=2,
            chunk=7,
            workers=workers,
        )
        report.pop("timings_s")
        return report

    assert run(2) == run(1)


def test_campaign_replicates_equal_the_materialised_resample() -> None:
    """Pairwise judgments: a judgment is copied once per draw of its prompt × its annotator."""
    study = simulate_study(n_prompts=30, n_dms=3, n_pairwise=600, seed=12)
    faces, pairs = study.faces, study.pairwise
    metric = study.metrics["tracks_quality"]
    n_annotators = int(max(study.likert.annotator.max(), pairs.annotator.max())) + 1
    report = alignment_report(
        faces=faces,
        pairwise=pairs,
        metrics={"m": metric},
        n_boot=5,
        seed=8,
        return_replicates=True,
    )
    prompt_counts, annotator_counts = _blocks(
        64, n_prompts=faces.n_prompts, n_annotators=n_annotators, n_boot=5, seed=8
    )
    replicate = report["replicates"]
    for b in range(5):
        copies = (
            prompt_counts[b][faces.prompt[pairs.left_face]] * annotator_counts[b][pairs.annotator]
        ).astype(int)
        left, right = np.repeat(pairs.left_face, copies), np.repeat(pairs.right_face, copies)
        label = np.repeat(pairs.human_label(), copies)
        diff = metric[left] - metric[right]
        expected = pairwise_accuracy_with_ties(PairDesign.from_differences(diff), label)
        assert replicate["campaign|accuracy_with_ties"][0][b] == pytest.approx(
            expected.accuracy[0], abs=1e-12
        )
        wins = np.zeros((3, 3))
        ties = np.zeros((3, 3))
        dm_left, dm_right = faces.dm[left], faces.dm[right]
        np.add.at(wins, (dm_left[label == 1], dm_right[label == 1]), 1)
        np.add.at(wins, (dm_right[label == -1], dm_left[label == -1]), 1)
        np.add.at(ties, (dm_left[label == 0], dm_right[label == 0]), 1)
        fit = fit_bradley_terry(wins, ties)
        got = [replicate["bt|log_strength"][k][b] for k in range(3)]
        np.testing.assert_allclose(got, fit.log_strength, atol=1e-8)


def test_replicates_of_a_metric_with_missing_scores_equal_scipy_beside_a_complete_one() -> None:
    """Pair labels and τ-b signs compare ranks weighted by the complete metric's units: a
    metric with gaps, and faces without a mean in a resample, must not change them."""
    n_annotators = 8
    study = simulate_study(n_prompts=25, n_annotators=n_annotators, judgments_per_face=3, seed=12)
    faces, likert = study.faces, study.likert
    complete = study.metrics["tracks_quality"]
    partial = complete.copy()
    partial[::4] = np.nan
    report = alignment_report(
        faces=faces,
        likert=likert,
        metrics={"complete": complete, "partial": partial},
        n_boot=6,
        seed=5,
        chunk=4,
        return_replicates=True,
    )
    replicate = report["replicates"]
    prompt_counts, annotator_counts = _blocks(
        4, n_prompts=faces.n_prompts, n_annotators=n_annotators, n_boot=6, seed=5
    )
    unrated_somewhere = False
    for b in range(6):
        w = annotator_counts[b][likert.annotator]
        with np.errstate(invalid="ignore", divide="ignore"):
            human = np.bincount(likert.face, w * likert.rating, faces.n_faces) / np.bincount(
                likert.face, w, faces.n_faces
            )
        unrated_somewhere |= bool(np.isnan(human).any())
        usable = np.isfinite(human) & np.isfinite(partial)
        face_rows = np.repeat(np.arange(faces.n_faces), prompt_counts[b][faces.prompt].astype(int))
        face_rows = face_rows[usable[face_rows]]
        h, m = human[face_rows], partial[face_rows]
        assert replicate["face|kendall_design"][1][b] == pytest.approx(
            scipy.stats.kendalltau(h, m).statistic, abs=1e-12
        )
        first, second = within_prompt_pairs(faces.prompt)
        keep = (faces.image[first] != faces.image[second]) & usable[first] & usable[second]
        first, second = first[keep], second[keep]
        copies = prompt_counts[b][faces.prompt[first]].astype(int)
        first, second = np.repeat(first, copies), np.repeat(second, copies)
        diff = partial[first] - partial[second]
        label = np.sign(human[first] - human[second])
        expected = pairwise_accuracy_with_ties(PairDesign.from_differences(diff), label)
        assert replicate["likert_pairs|accuracy_with_ties"][1][b] == pytest.approx(
            expected.accuracy[0], abs=1e-12
        )
        assert replicate["likert_pairs|accuracy_without_ties"][1][b] == pytest.approx(
            plain_pairwise_accuracy(diff, label)[0], abs=1e-12
        )
    assert unrated_somewhere  # the resamples exercise faces without a mean
