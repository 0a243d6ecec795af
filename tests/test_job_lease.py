"""A job runs in one worker at a time: Redis redelivers a late-acked task after its visibility
timeout, so a long training job can be handed to a second worker while the first still runs."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from jobs import progress
from jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)  # the heartbeat writes on its own connection


def _job(**fields: object) -> Job:
    return Job.objects.create(kind=Job.Kind.TRAIN_FACE_SCORE, **fields)


def test_a_queued_job_is_claimed_once() -> None:
    job = _job()
    assert progress.claim(job.pk)
    assert not progress.claim(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    assert job.worker == progress.worker_name()
    assert job.heartbeat_at is not None


def test_redelivery_leaves_a_job_with_a_fresh_heartbeat_alone() -> None:
    job = _job(status=Job.Status.RUNNING, heartbeat_at=timezone.now(), worker="gpu1:42")
    ran = []
    progress.run(job.pk, lambda job_id: ran.append(job_id) or {})
    assert ran == []
    job.refresh_from_db()
    assert (job.status, job.worker) == (Job.Status.RUNNING, "gpu1:42")


def test_redelivery_takes_over_a_job_whose_worker_went_silent(settings) -> None:
    silent_since = timezone.now() - timedelta(seconds=settings.FACEBENCH_JOB_STALE_SECONDS + 1)
    job = _job(status=Job.Status.RUNNING, heartbeat_at=silent_since, worker="gpu1:42")
    progress.run(job.pk, lambda job_id: {"resumed": True})
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.result == {"resumed": True}
    assert job.worker == progress.worker_name()


def test_finished_jobs_are_never_run_again() -> None:
    for status in Job.FINISHED:
        job = _job(status=status)
        progress.run(job.pk, lambda job_id: pytest.fail("a finished job ran again"))
        job.refresh_from_db()
        assert job.status == status


def test_the_heartbeat_advances_while_the_body_runs(settings) -> None:
    settings.FACEBENCH_JOB_HEARTBEAT_SECONDS = 0.05
    job = _job()
    beats: list[object] = []

    def body(job_id: int) -> dict:
        first = Job.objects.get(pk=job_id).heartbeat_at
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = Job.objects.get(pk=job_id).heartbeat_at
            if current != first:
                beats.append(current)
                break
            time.sleep(0.02)
        return {}

    progress.run(job.pk, body)
    assert beats, "the heartbeat thread never touched the job row"
    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED


def test_two_workers_racing_for_one_message_only_one_runs_it() -> None:
    job = _job()
    barrier = threading.Barrier(2)
    won: list[bool] = []

    def worker() -> None:
        try:
            barrier.wait()
            won.append(progress.claim(job.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False, True]
