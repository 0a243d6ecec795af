"""Report pages, downloads, API and the schema: a report built in-process, read as a researcher."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from django.test import Client
from django.urls import reverse

from benchmark.models import Report
from benchmark.reports import metric_name, number_rows, run_report_job, start_report_job
from jobs import progress
from jobs.models import Job
from tests.benchmark.synthetic_campaign import make_synthetic_campaign

pytestmark = pytest.mark.django_db

SETTINGS = {"n_boot": 100, "breakdown_n_boot": 30, "seed": 0}


@pytest.fixture
def report(researcher) -> Report:
    world = make_synthetic_campaign(n_prompts=20)
    job = start_report_job(
        title="Face Score v1 vs v2",
        campaigns=[world.campaign],
        metric_versions=[world.tracks, world.unrelated, world.image_level],
        settings=SETTINGS,
        created_by=researcher,
    )
    progress.run(job.pk, run_report_job)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    report = Report.objects.get(job=job)
    report.world = world  # type: ignore[attr-defined]
    return report


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _numbers(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def test_report_page_shows_headline_figures_leaderboard_and_comparison(report, researcher):
    response = _client(researcher).get(reverse("report-detail", args=[report.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    tracks = metric_name(report.world.tracks)
    assert 'id="headline"' in html and "Human ceiling" in html
    assert "<strong>" in html.split('id="headline"')[1].split("</table>")[0]
    assert html.count("<svg") == 2 + 3  # forest, leaderboard, one scatter per metric
    assert 'id="leaderboard"' in html and "sdxl 1.0" in html
    # The default comparison is two versions of the same metric (Face Score v1 vs v2).
    assert f"Comparison: {tracks} vs {metric_name(report.world.unrelated)}" in html
    assert 'id="reliability"' in html and "By face size" in html and "By DM" in html
    assert report.world.annotators[0].username not in html  # pseudonyms only


def test_comparison_pair_is_chosen_by_query(report, researcher):
    a, b = metric_name(report.world.image_level), metric_name(report.world.tracks)
    html = (
        _client(researcher)
        .get(reverse("report-detail", args=[report.pk]), {"a": a, "b": b})
        .content.decode()
    )
    assert f"Comparison: {a} vs {b}" in html


def test_csv_has_one_row_per_number_of_the_json(report, researcher):
    client = _client(researcher)
    body = json.loads(client.get(reverse("report-download", args=[report.pk, "json"])).content)
    assert body["settings"] == report.settings
    numbers = list(_numbers(body["results"]))
    response = client.get(reverse("report-download", args=[report.pk, "csv"]))
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == len(numbers)
    for row, number in zip(rows, numbers, strict=True):
        assert math.isclose(float(row["value"]), float(number), rel_tol=1e-12, abs_tol=1e-15)
    tracks = metric_name(report.world.tracks)
    spearman = next(
        r
        for r in rows
        if r["section"] == "headline"
        and r["metric"] == tracks
        and r["statistic"] == "face_spearman"
        and r["field"] == "point"
    )
    point = next(r for r in body["results"]["headline"]["rows"] if r["metric"] == tracks)["values"][
        "face_spearman"
    ]["point"]
    assert float(spearman["value"]) == pytest.approx(point)
    assert any(r["section"] == "dm_leaderboard" and r["subject"] == "sdxl 1.0" for r in rows)


def test_number_rows_match_the_stored_results(report):
    assert len(list(number_rows(report.results))) == len(list(_numbers(report.results)))


@pytest.mark.parametrize(
    "fmt,content_type,magic", [("svg", "image/svg+xml", b"<?xml"), ("png", "image/png", b"\x89PNG")]
)
def test_figures_download_as_svg_and_png(report, researcher, fmt, content_type, magic):
    client = _client(researcher)
    for name in ("forest", "leaderboard", "scatter-0"):
        response = client.get(
            reverse("report-figure", args=[report.pk, name, fmt]), {"download": 1}
        )
        assert response.status_code == 200 and response["Content-Type"] == content_type
        assert response.content.startswith(magic)
        assert "attachment" in response["Content-Disposition"]
    assert (
        client.get(reverse("report-figure", args=[report.pk, "scatter-9", fmt])).status_code == 404
    )


def test_svg_figures_are_deterministic(report):
    from benchmark.figures import render_figure

    assert render_figure(report.results, "forest", "svg") == render_figure(
        report.results, "forest", "svg"
    )


def test_unfinished_report_page_shows_the_job(researcher, django_capture_on_commit_callbacks):
    world = make_synthetic_campaign(n_prompts=5, name="tiny")
    with django_capture_on_commit_callbacks(execute=False):
        job = start_report_job(
            title="pending",
            campaigns=[world.campaign],
            metric_versions=[world.tracks],
            settings=SETTINGS,
        )
    client = _client(researcher)
    html = client.get(reverse("report-detail", args=[job.config["report_id"]])).content.decode()
    assert "Report job #" in html and 'http-equiv="refresh"' in html
    assert (
        client.get(reverse("report-download", args=[job.config["report_id"], "json"])).status_code
        == 404
    )


def test_new_report_form_starts_a_job(researcher, django_capture_on_commit_callbacks):
    world = make_synthetic_campaign(n_prompts=5, name="form")
    client = _client(researcher)
    page = client.get(reverse("report-list")).content.decode()
    assert 'value="1000"' in page and 'name="seed"' in page
    with django_capture_on_commit_callbacks(execute=False) as sent:
        response = client.post(
            reverse("report-list"),
            {
                "title": "From the form",
                "campaigns": [world.campaign.pk],
                "metric_versions": [world.tracks.pk, world.unrelated.pk],
                "n_boot": 50,
                "seed": 7,
                "level": 0.9,
                "image_aggregation": "largest",
            },
        )
    assert response.status_code == 302 and len(sent) == 1
    report = Report.objects.get(title="From the form")
    assert response["Location"] == reverse("report-detail", args=[report.pk])
    assert report.settings["seed"] == 7 and report.settings["image_aggregation"] == "largest"
    assert report.job.kind == Job.Kind.REPORT


def test_api_builds_lists_and_reads_reports(report, researcher, django_capture_on_commit_callbacks):
    client = _client(researcher)
    world = report.world
    with django_capture_on_commit_callbacks(execute=False) as sent:
        response = client.post(
            "/api/reports/",
            {
                "title": "via API",
                "campaigns": [world.campaign.pk],
                "metric_versions": [world.tracks.pk],
                "n_boot": 40,
            },
            content_type="application/json",
        )
    assert response.status_code == 202, response.content
    body = response.json()
    assert len(sent) == 1 and body["url"] == f"/api/jobs/{body['job']}/"
    listed = client.get("/api/reports/").json()["results"]
    assert {r["title"] for r in listed} == {"Face Score v1 vs v2", "via API"}
    assert {r["status"] for r in listed} == {"ready", "queued"}
    detail = client.get(f"/api/reports/{report.pk}/").json()
    assert detail["results"]["headline"]["best"]["face_spearman"] == metric_name(world.tracks)
    bad = client.post(
        "/api/reports/",
        {"title": "x", "campaigns": [world.campaign.pk], "metric_versions": []},
        content_type="application/json",
    )
    assert bad.status_code == 400


def test_schema_has_no_warnings_for_report_endpoints() -> None:
    from drf_spectacular.drainage import GENERATOR_STATS
    from drf_spectacular.generators import SchemaGenerator

    from benchmark import report_views

    GENERATOR_STATS.reset()
    schema = SchemaGenerator(patterns=report_views.urlpatterns).get_schema(
        request=None, public=True
    )
    assert not GENERATOR_STATS._warn_cache and not GENERATOR_STATS._error_cache, dict(
        GENERATOR_STATS._warn_cache
    )
    assert {
        "/api/reports/",
        "/api/reports/{id}/",
        "/api/campaigns/{id}/snapshot/",
        "/api/campaigns/{id}/dashboard/",
        "/api/exports/{id}/download/",
    } <= set(schema["paths"])
