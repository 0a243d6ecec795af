"""Pairwise accuracy with ties and tie calibration (Deutsch et al. 2023), and plain accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.stats import (
    PairDesign,
    PairOutcome,
    PairwiseJudgments,
    alignment_report,
    pairwise_accuracy_with_ties,
    plain_pairwise_accuracy,
    within_prompt_pairs,
)
from benchmark.stats.simulate import simulate_study


def _brute_force_acc_eq(
    diff: np.ndarray, label: np.ndarray, weight: np.ndarray
) -> tuple[float, float]:
    best, best_eps = -1.0, 0.0
    for eps in np.concatenate([[0.0], np.sort(np.abs(diff))]):
        predicted = np.where(np.abs(diff) <= eps, 0, np.sign(diff))
        acc = (weight * (predicted == label)).sum() / weight.sum()
        if acc > best + 1e-15:
            best, best_eps = acc, eps
    return best, best_eps


def test_tie_calibrated_accuracy_equals_a_brute_force_search_over_thresholds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        diff = np.round(rng.normal(0, 1, n), 1)  # rounded: tied |differences| and exact zeros
        label = rng.choice([-1, 0, 1], n, p=[0.35, 0.3, 0.35])
        label = np.where(rng.random(n) < 0.6, np.sign(np.round(diff)), label)
        weight = rng.integers(0, 4, n).astype(float)
        weight[0] = 1.0
        result = pairwise_accuracy_with_ties(PairDesign.from_differences(diff), label, weight)
        accuracy, epsilon = _brute_force_acc_eq(diff, label, weight)
        assert result.accuracy[0] == pytest.approx(accuracy, abs=1e-12)
        assert result.epsilon[0] == pytest.approx(epsilon)


def test_accuracy_gives_credit_for_predicted_ties() -> None:
    diff = np.array([0.01, -0.02, 2.0, -3.0])
    label = np.array([0, 0, 1, -1])  # humans tie the two close pairs
    result = pairwise_accuracy_with_ties(PairDesign.from_differences(diff), label)
    assert result.accuracy[0] == 1.0
    assert 0.02 <= result.epsilon[0] < 2.0


def test_plain_accuracy_ignores_pairs_tied_by_humans_or_by_the_metric() -> None:
    diff = np.array([1.0, -1.0, 0.0, 2.0, 0.5])
    label = np.array([1, 1, 1, 0, -1])
    # Counted: pairs 0 (right), 1 (wrong), 4 (wrong); pair 2 is a metric tie, 3 a human tie.
    assert plain_pairwise_accuracy(diff, label)[0] == pytest.approx(1 / 3)


def test_weighted_accuracy_equals_accuracy_on_repeated_pairs() -> None:
    rng = np.random.default_rng(1)
    diff = rng.normal(0, 1, 40)
    label = rng.choice([-1, 0, 1], 40)
    weight = rng.integers(0, 3, 40)
    weighted = pairwise_accuracy_with_ties(PairDesign.from_differences(diff), label, weight)
    repeated = pairwise_accuracy_with_ties(
        PairDesign.from_differences(np.repeat(diff, weight)), np.repeat(label, weight)
    )
    assert weighted.accuracy[0] == pytest.approx(repeated.accuracy[0], abs=1e-12)
    assert plain_pairwise_accuracy(diff, label, weight)[0] == pytest.approx(
        plain_pairwise_accuracy(np.repeat(diff, weight), np.repeat(label, weight))[0]
    )


def test_within_prompt_pairs_lists_every_pair_of_a_prompt_once() -> None:
    prompt = np.array([2, 0, 2, 1, 0, 2, 3])
    first, second = within_prompt_pairs(prompt)
    got = sorted(zip(first.tolist(), second.tolist(), strict=True))
    expected = sorted(
        (i, j)
        for i in range(len(prompt))
        for j in range(i + 1, len(prompt))
        if prompt[i] == prompt[j]
    )
    assert got == expected


def test_both_bad_counts_as_a_human_tie() -> None:
    judgments = PairwiseJudgments(
        left_face=[0, 0, 0, 0],
        right_face=[1, 1, 1, 1],
        annotator=[0, 1, 2, 3],
        outcome=[PairOutcome.LEFT, PairOutcome.RIGHT, PairOutcome.TIE, PairOutcome.BOTH_BAD],
    )
    assert judgments.human_label().tolist() == [1, -1, 0, 0]


def test_pairwise_judgments_must_compare_two_different_faces() -> None:
    with pytest.raises(ValueError, match="different faces"):
        PairwiseJudgments(left_face=[1], right_face=[1], annotator=[0], outcome=[0])
    with pytest.raises(ValueError, match="< 4"):
        PairwiseJudgments(left_face=[0], right_face=[1], annotator=[0], outcome=[7])


@pytest.mark.parametrize("rounded", [False, True])
def test_report_pairwise_accuracies_equal_direct_computation(rounded: bool) -> None:
    study = simulate_study(n_prompts=50, n_pairwise=800, seed=2)
    metric = study.metrics["tracks_quality"]
    if rounded:  # tied |differences| and exact-zero differences
        metric = np.round(metric)
    report = alignment_report(
        faces=study.faces,
        likert=study.likert,
        pairwise=study.pairwise,
        metrics={"m": metric, "other": study.metrics["unrelated"]},
        n_boot=10,
        seed=0,
    )
    values = report["headline"]["rows"][0]["values"]
    # Campaign: one instance per judgment, both-bad as tie.
    pairs = study.pairwise
    diff = metric[pairs.left_face] - metric[pairs.right_face]
    label = pairs.human_label()
    accuracy, _ = _brute_force_acc_eq(diff, label, np.ones(len(diff)))
    assert values["campaign_accuracy_with_ties"]["point"] == pytest.approx(accuracy, abs=1e-12)
    assert values["campaign_accuracy_without_ties"]["point"] == pytest.approx(
        plain_pairwise_accuracy(diff, label)[0], abs=1e-12
    )
    # Likert: within-prompt pairs of faces of different images, label = sign of mean difference.
    faces = study.faces
    human = np.bincount(study.likert.face, study.likert.rating) / np.bincount(study.likert.face)
    first, second = within_prompt_pairs(faces.prompt)
    keep = faces.image[first] != faces.image[second]
    first, second = first[keep], second[keep]
    diff = metric[first] - metric[second]
    label = np.sign(human[first] - human[second])
    accuracy, _ = _brute_force_acc_eq(diff, label, np.ones(len(diff)))
    assert values["likert_pairs_accuracy_with_ties"]["point"] == pytest.approx(accuracy, abs=1e-12)
    assert values["likert_pairs_accuracy_without_ties"]["point"] == pytest.approx(
        plain_pairwise_accuracy(diff, label)[0], abs=1e-12
    )
