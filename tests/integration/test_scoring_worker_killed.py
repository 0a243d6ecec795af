"""A scoring job survives a GPU worker killed with SIGKILL mid-job (Redis + PostgreSQL in CI).

The killed worker's unacknowledged chunk is delivered again by Redis after the visibility
timeout (5 s here); the new worker finishes the job, and every (target, metric version) ends up
with exactly one score.
"""

from __future__ import annotations

import os
import signal

import pytest
from django.db.models import Count

from annotator.detection import detect_faces_for_generations
from benchmark.models import Score, ScoringChunk
from benchmark.scoring import start_scoring_job
from jobs.models import Job
from tests.factories import import_photos
from tests.integration.worker import celery_worker, wait_until
from tests.ml.tiny_models import write_tiny_imagereward
from tests.services import need_redis

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_job_completes_after_a_worker_is_killed_and_every_target_has_one_score(tmp_path, settings, monkeypatch):
    need_redis()
    weights = tmp_path / "weights"
    write_tiny_imagereward(weights)
    settings.FACEBENCH_WEIGHTS_DIR = weights
    monkeypatch.setenv("FACEBENCH_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("FACEBENCH_VISIBILITY_TIMEOUT", "5")
    dataset = import_photos(tmp_path / "photos", copies=6)
    detect_faces_for_generations(generation_ids=list(dataset.generations.values_list("id", flat=True)))
    log = tmp_path / "worker.log"

    with celery_worker("first", log=log) as first:
        job = start_scoring_job(metrics=["imagereward", "sharpness"], dataset=dataset, chunk_size=1)
        chunks = ScoringChunk.objects.filter(job=job)
        wait_until(lambda: chunks.filter(status="done").count() >= 3, timeout=120, what=f"3 chunks done ({log})")
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool child, mid-job
        first.wait()
    left = chunks.exclude(status="done").count()
    assert left > 0, "the job finished before the kill; the test proves nothing"

    with celery_worker("second", log=log):
        wait_until(lambda: Job.objects.get(pk=job.pk).is_finished, timeout=180, what=f"job {job.pk} to finish ({log})")
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error or log.read_text()[-3000:]
    assert job.progress_done == job.progress_total
    per_target = (
        Score.objects.values("metric_version", "generation", "face").annotate(n=Count("id")).order_by()
    )
    assert {row["n"] for row in per_target} == {1}
    expected = dataset.generations.count() + sum(g.faces.count() for g in dataset.generations.all())
    assert Score.objects.filter(value__isnull=False).count() == expected
