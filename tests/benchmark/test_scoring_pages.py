"""Metrics page, scoring API and the weights/score commands."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from benchmark.models import ScoringChunk
from jobs.models import Job
from tests.factories import make_dataset
from tests.ml.tiny_models import write_tiny_face_score

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_weights(settings, tmp_path):
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"


def _api(user=None) -> APIClient:
    client = APIClient()
    if user:
        client.force_login(user)
    return client


def test_researcher_starts_a_scoring_job_through_the_api(researcher):
    dataset = make_dataset()
    response = _api(researcher).post("/api/scoring-jobs/", {"metrics": ["face_size"], "dataset": dataset.pk}, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"])
    assert job.kind == Job.Kind.SCORE and job.progress_total == 4
    assert _api(researcher).get(f"/api/jobs/{job.pk}/").json()["progress_total"] == 4


def test_scoring_api_names_the_missing_weights_and_starts_nothing(researcher):
    dataset = make_dataset()
    response = _api(researcher).post("/api/scoring-jobs/", {"metrics": ["face_score"], "dataset": dataset.pk}, format="json")
    assert response.status_code == 400 and "FaceScore/FS_model.pt" in response.json()["detail"]
    assert not Job.objects.exists()


@pytest.mark.parametrize("role", ["annotator", None])
def test_only_researchers_reach_the_scoring_api(request, role):
    user = request.getfixturevalue(role) if role else None
    dataset = make_dataset()
    for method, url, body in [
        ("post", "/api/scoring-jobs/", {"metrics": ["face_size"], "dataset": dataset.pk}),
        ("get", "/api/metrics/", None),
        ("get", "/api/metric-versions/", None),
        ("get", "/api/scores/", None),
    ]:
        response = getattr(_api(user), method)(url, body, format="json") if body else _api(user).get(url)
        assert response.status_code in (401, 403), url
    assert not Job.objects.exists()


def test_metrics_page_shows_availability_and_launches_a_job(researcher, settings):
    write_tiny_face_score(settings.FACEBENCH_WEIGHTS_DIR)
    dataset = make_dataset()
    client = Client()
    client.force_login(researcher)
    page = client.get("/research/metrics/").content.decode()
    assert "face_score" in page and "HPS_v2_compressed.pt" in page
    response = client.post("/research/metrics/", {"metrics": ["face_size", "face_score"], "dataset": dataset.pk, "chunk_size": 3})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/research/scoring/{job.pk}/"
    assert ScoringChunk.objects.filter(job=job).count() == 4  # two metrics × ceil(4 faces / 3)
    assert "0 / 8 targets scored" in client.get(response["Location"]).content.decode()


def test_annotators_cannot_open_the_metrics_page(annotator):
    client = Client()
    client.force_login(annotator)
    assert client.get("/research/metrics/").status_code == 403


def test_weights_command_lists_present_and_missing_files_with_sha256(settings):
    path = write_tiny_face_score(settings.FACEBENCH_WEIGHTS_DIR)
    out = io.StringIO()
    call_command("weights", stdout=out)
    text = out.getvalue()
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    face_score_line = next(line for line in text.splitlines() if "FS_model.pt" in line)
    assert "present" in face_score_line and digest in face_score_line
    assert any("HPS_v2_compressed.pt" in line and "MISSING" in line for line in text.splitlines())


def test_score_command_queues_a_job_and_refuses_bad_input():
    dataset = make_dataset(name="cmd")
    out = io.StringIO()
    call_command("score", "--metrics", "sharpness,face_size", "--dataset", "cmd", stdout=out)
    assert "8 targets queued" in out.getvalue() and Job.objects.filter(kind=Job.Kind.SCORE).count() == 1
    with pytest.raises(CommandError, match="No dataset named 'nope'"):
        call_command("score", "--metrics", "sharpness", "--dataset", "nope")
    with pytest.raises(CommandError, match="unknown metric 'bogus'"):
        call_command("score", "--metrics", "bogus", "--dataset", dataset.name)


def test_job_api_reports_throughput_and_eta(researcher):
    from datetime import timedelta

    from django.utils import timezone

    started = timezone.now() - timedelta(seconds=10)
    job = Job.objects.create(kind=Job.Kind.SCORE, status=Job.Status.RUNNING, progress_done=50, progress_total=150, started_at=started)
    body = _api(researcher).get(f"/api/jobs/{job.pk}/").json()
    assert 4.5 < body["per_second"] <= 5.0 and 19 < body["eta_seconds"] < 23
