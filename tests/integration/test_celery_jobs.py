"""Jobs run in a real Celery worker process: on the filesystem broker + SQLite by default, on
Redis + PostgreSQL in CI (``CELERY_BROKER_URL=redis://…``, ``DATABASE_URL=postgres://…``)."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from annotator.detection import start_detection_job
from annotator.models import Face
from jobs.models import Job
from tests.factories import import_photos
from tests.integration.worker import celery_worker, wait_until
from tests.services import need_redis

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def photos_dataset(tmp_path):
    return import_photos(tmp_path / "upload")


def test_broker_is_the_one_this_run_was_configured_with():
    if os.getenv("CELERY_BROKER_URL", "").startswith("redis://"):
        need_redis()
        assert settings.CELERY_BROKER_URL.startswith("redis://")
    else:
        assert settings.CELERY_BROKER_URL == "filesystem://"


def test_detection_job_runs_in_a_worker_process(photos_dataset, tmp_path):
    with celery_worker(log=tmp_path / "worker.log"):
        job = start_detection_job(dataset=photos_dataset)
        wait_until(
            lambda: Job.objects.get(pk=job.pk).is_finished,
            timeout=120,
            what=f"detect job {job.pk} (worker log: {tmp_path / 'worker.log'})",
        )
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error or (tmp_path / "worker.log").read_text()[-3000:]
    assert (job.progress_done, job.progress_total) == (3, 3)
    assert job.result["generations"] == 3 and job.result["faces"] == Face.objects.count() >= 2
    assert job.started_at is not None and job.finished_at >= job.started_at
