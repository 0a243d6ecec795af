"""A seeded synthetic study with known answers: the report must find them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.stats import alignment_report
from benchmark.stats.simulate import simulate_study

STATS = ("spearman", "kendall", "pearson")


@pytest.fixture(scope="module")
def study():
    return simulate_study(
        n_prompts=300,
        n_dms=4,
        n_annotators=30,
        judgments_per_face=5,
        annotator_noise=1.0,
        dm_spread=0.6,
        round_to_likert=False,  # continuous ratings: the ceiling has a closed form
        metrics={"tracks_quality": (1.0, 0.6), "unrelated": (0.0, 1.0)},
        n_pairwise=3000,
        seed=7,
    )


@pytest.fixture(scope="module")
def report(study):
    return alignment_report(
        faces=study.faces,
        likert=study.likert,
        pairwise=study.pairwise,
        metrics=study.metrics,
        n_boot=300,
        seed=0,
    )


def _cell(report, metric: str, column: str) -> dict:
    row = next(r for r in report["headline"]["rows"] if r["metric"] == metric)
    return row["values"][column]


def test_report_ranks_the_metric_that_tracks_quality_first_in_every_column(report) -> None:
    for column, best in report["headline"]["best"].items():
        if column.startswith("dm_"):
            continue  # four DMs: both metrics can tie at the top of a rank correlation
        assert best == "tracks_quality", column


@pytest.mark.parametrize("level", ["face", "image"])
@pytest.mark.parametrize("stat", STATS)
def test_unrelated_metric_interval_covers_zero(report, level: str, stat: str) -> None:
    cell = _cell(report, "unrelated", f"{level}_{stat}")
    assert cell["low"] < 0 < cell["high"]


@pytest.mark.parametrize("level", ["face", "image"])
@pytest.mark.parametrize("stat", STATS)
def test_tracking_metric_beats_the_unrelated_one_on_the_same_resamples(
    report, level: str, stat: str
) -> None:
    (difference,) = report["differences"][f"{level}_{stat}"]
    assert (difference["a"], difference["b"]) == ("tracks_quality", "unrelated")
    assert difference["low"] > 0


def test_unrelated_metric_is_at_chance_on_pairs(report) -> None:
    cell = _cell(report, "unrelated", "campaign_accuracy_without_ties")
    assert cell["low"] < 0.5 < cell["high"]


def test_human_ceiling_sits_where_the_simulation_says(study, report) -> None:
    # Annotator a rates q + b_a + e, e ~ N(0, σ_a²); the other k − 1 raters of a face add bias
    # and noise of variance (σ_b² + E σ²) / (k − 1) to their mean. b_a is constant within a, so
    # r_a = Var q / √((Var q + σ_a²)(Var q + (σ_b² + E σ²)/(k − 1))), averaged over annotators.
    var_q = study.true_quality.var()
    sigma = study.annotator_noise
    others = (0.2**2 + np.mean(sigma**2)) / (5 - 1)
    expected = np.mean(var_q / np.sqrt((var_q + sigma**2) * (var_q + others)))
    ceiling = report["headline"]["human_ceiling"]["face_pearson"]
    assert ceiling["point"] == pytest.approx(expected, abs=0.03)
    assert ceiling["low"] < ceiling["point"] < ceiling["high"]


def test_dm_leaderboard_orders_dms_by_their_true_effect(study, report) -> None:
    board = report["dm_leaderboard"]
    truth = np.argsort(study.dm_effect)
    human = [cell["point"] for cell in board["human_mean"]]
    bradley_terry = [cell["point"] for cell in board["bradley_terry_log_strength"]]
    assert np.argsort(human).tolist() == truth.tolist()
    assert np.argsort(bradley_terry).tolist() == truth.tolist()
    assert _cell(report, "tracks_quality", "dm_spearman_vs_human_mean")["point"] == 1.0


def test_reliability_section_reports_agreement_between_annotators(report) -> None:
    likert = report["reliability"]["likert"]
    assert 0.3 < likert["krippendorff_alpha_interval"] < 1.0
    split = likert["split_half"]
    assert split["pearson"] < split["pearson_spearman_brown"] < 1.0


def test_report_is_plain_json(report) -> None:
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["settings"]["n_boot"] == 300


def test_same_seed_gives_the_same_report(study) -> None:
    def run():
        return alignment_report(
            faces=study.faces, likert=study.likert, metrics=study.metrics, n_boot=40, seed=3
        )

    first, second = run(), run()
    first.pop("timings_s")
    second.pop("timings_s")
    assert first == second


def test_a_pairwise_campaign_alone_gives_accuracies_and_a_bradley_terry_leaderboard() -> None:
    study = simulate_study(n_prompts=40, n_pairwise=1500, dm_spread=1.0, seed=9)
    report = alignment_report(
        faces=study.faces, pairwise=study.pairwise, metrics=study.metrics, n_boot=50, seed=0
    )
    assert report["headline"]["columns"] == [
        "campaign_accuracy_with_ties",
        "campaign_accuracy_without_ties",
        "dm_spearman_vs_bradley_terry",
        "dm_kendall_vs_bradley_terry",
    ]
    strengths = [c["point"] for c in report["dm_leaderboard"]["bradley_terry_log_strength"]]
    assert np.argsort(strengths).tolist() == np.argsort(study.dm_effect).tolist()
    json.dumps(report, allow_nan=False)


def test_without_resamples_the_report_has_points_but_no_intervals() -> None:
    study = simulate_study(n_prompts=20, seed=10)
    report = alignment_report(
        faces=study.faces, likert=study.likert, metrics=study.metrics, n_boot=0
    )
    cell = report["headline"]["rows"][0]["values"]["face_spearman"]
    assert cell["point"] is not None and cell["low"] is None and cell["n_valid"] == 0


def test_report_rejects_metrics_of_the_wrong_length() -> None:
    study = simulate_study(n_prompts=5, seed=11)
    with pytest.raises(ValueError, match="values"):
        alignment_report(faces=study.faces, likert=study.likert, metrics={"m": np.ones(3)})
