"""Report building on a seeded synthetic campaign whose answer is known."""

from __future__ import annotations

import pytest

from benchmark.models import Report
from benchmark.reports import (
    ReportRefused,
    build_results,
    comparable,
    gather_inputs,
    metric_name,
    normalise_settings,
    rebuild_report,
    run_report_job,
    start_report_job,
)
from jobs import progress
from jobs.models import Job
from tests.benchmark.synthetic_campaign import make_synthetic_campaign

pytestmark = pytest.mark.django_db

SETTINGS = {"n_boot": 150, "breakdown_n_boot": 50, "seed": 3}


@pytest.fixture
def world():
    return make_synthetic_campaign()


def _row(results, name):
    return next(r["values"] for r in results["headline"]["rows"] if r["metric"] == name)


def test_tracking_metric_ranks_first_and_unrelated_ci_covers_zero(world):
    versions = [world.tracks, world.unrelated, world.image_level]
    results = build_results(campaigns=[world.campaign], metric_versions=versions, settings=SETTINGS)
    tracks, unrelated = metric_name(world.tracks), metric_name(world.unrelated)
    assert results["headline"]["best"]["face_spearman"] == tracks
    assert results["headline"]["best"]["face_kendall"] == tracks
    assert _row(results, tracks)["face_spearman"]["low"] > 0.5
    ci = _row(results, unrelated)["face_spearman"]
    assert ci["low"] < 0 < ci["high"]
    # The image-level metric's value is repeated on every face of its generation.
    faces = results["faces"]
    image = faces["values"][metric_name(world.image_level)]
    by_generation = {}
    for generation, value in zip(faces["generation_id"], image, strict=True):
        by_generation.setdefault(generation, set()).add(value)
    assert all(len(v) == 1 for v in by_generation.values())
    assert any(faces["generation_id"].count(g) == 2 for g in by_generation)


def test_gold_items_and_broken_flags_are_left_out(world):
    inputs = gather_inputs(
        campaigns=[world.campaign],
        metric_versions=[world.tracks],
        settings=normalise_settings(None),
    )
    regular = sum(1 for _ in world.campaign.items.filter(is_gold=False))
    assert inputs.counts["gold_left_out"] == len(world.annotators)
    assert inputs.counts["flagged_left_out"] == 1
    assert inputs.counts["likert_judgments"] == 3 * regular
    assert inputs.faces.n_faces == regular
    assert "A-flagger" not in inputs.annotators


@pytest.mark.parametrize("aggregation", ["min", "largest"])
def test_face_aggregation_adds_an_image_level_variant(world, aggregation):
    results = build_results(
        campaigns=[world.campaign],
        metric_versions=[world.tracks],
        settings={**SETTINGS, "image_aggregation": aggregation},
    )
    variant = f"{metric_name(world.tracks)} [{aggregation} face]"
    assert results["metrics"] == [metric_name(world.tracks), variant]
    assert results["metric_info"][1]["level"] == "image"
    faces = results["faces"]
    per_generation: dict[int, list[tuple[float, float]]] = {}
    values = faces["values"][metric_name(world.tracks)]
    for g, v, size in zip(faces["generation_id"], values, faces["size_px"], strict=True):
        per_generation.setdefault(g, []).append((v, size))
    for g, v in zip(faces["generation_id"], faces["values"][variant], strict=True):
        pairs = per_generation[g]
        expected = (
            min(p[0] for p in pairs) if aggregation == "min" else max(pairs, key=lambda p: p[1])[0]
        )
        assert v == expected


def test_report_job_stores_results_and_rebuild_gives_identical_numbers(
    world, researcher, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as sent:
        job = start_report_job(
            title="Face Score v1 vs v2",
            campaigns=[world.campaign],
            metric_versions=[world.tracks, world.unrelated],
            settings=SETTINGS,
            created_by=researcher,
        )
    assert len(sent) == 1 and job.kind == Job.Kind.REPORT
    progress.run(job.pk, run_report_job)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    report = Report.objects.get(job=job)
    assert report.settings["n_boot"] == 150 and report.settings["image_aggregation"] == "mean"
    assert report.results["headline"]["rows"]

    again = rebuild_report(report, created_by=researcher)
    progress.run(again.pk, run_report_job)
    rebuilt = Report.objects.get(job=again)
    assert rebuilt.pk != report.pk and rebuilt.settings == report.settings
    assert comparable(rebuilt.results) == comparable(report.results)


def test_refuses_bad_settings_and_empty_choices(world):
    with pytest.raises(ReportRefused):
        normalise_settings({"n_boot": 1})
    with pytest.raises(ReportRefused):
        normalise_settings({"image_aggregation": "max"})
    with pytest.raises(ReportRefused):
        normalise_settings({"bogus": 1})
    with pytest.raises(ReportRefused):
        start_report_job(title="x", campaigns=[world.campaign], metric_versions=[])


def test_pairwise_campaign_report(db):
    world = make_synthetic_campaign(name="pairs", protocol="pairwise", n_prompts=25, k=2)
    results = build_results(
        campaigns=[world.campaign],
        metric_versions=[world.tracks, world.unrelated],
        settings=SETTINGS,
    )
    assert results["headline"]["best"]["campaign_accuracy_with_ties"] == metric_name(world.tracks)
    assert results["faces"]["human_score"] == "share of comparisons won"
    assert results["counts"]["pairwise_judgments"] > 0
    # Every figure draws for a pairwise-only report too (the forest plot shows its accuracies).
    from benchmark.figures import figure_names, render_figure

    for name in figure_names(results):
        assert render_figure(results, name, "svg").startswith(b"<?xml")
