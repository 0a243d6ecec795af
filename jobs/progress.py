"""What a worker calls while it runs a job: start, report progress, log, finish or fail.

Every write is a single UPDATE on the job row (no read-modify-write), so a progress report from a
worker can never overwrite a cancel request from a page, and a redelivered task simply starts over.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from django.db.models import F, Value
from django.db.models.functions import Concat, Right
from django.utils import timezone

from jobs.models import Job

logger = logging.getLogger(__name__)
LOG_TAIL_CHARS = 20_000


class JobCancelled(Exception):
    """Raised inside a running job when someone asked to cancel it."""


def start(job_id: int, *, total: int = 0) -> None:
    Job.objects.filter(pk=job_id).update(
        status=Job.Status.RUNNING, started_at=timezone.now(), progress_total=total, error=""
    )


def set_total(job_id: int, total: int) -> None:
    Job.objects.filter(pk=job_id).update(progress_total=total)


def advance(job_id: int, done: int | None = None, *, step: int = 0) -> None:
    """Record progress; raise ``JobCancelled`` if a cancel was requested meanwhile."""
    qs = Job.objects.filter(pk=job_id)
    if done is not None:
        qs.update(progress_done=done)
    elif step:
        qs.update(progress_done=F("progress_done") + step)
    if qs.filter(cancel_requested=True).exists():
        raise JobCancelled()


def log(job_id: int, line: str) -> None:
    logger.info("job %s: %s", job_id, line)
    Job.objects.filter(pk=job_id).update(
        log_tail=Right(Concat(F("log_tail"), Value(line.rstrip() + "\n")), LOG_TAIL_CHARS)
    )


def succeed(job_id: int, result: dict[str, Any] | None = None) -> None:
    updates: dict[str, Any] = {"status": Job.Status.SUCCEEDED, "finished_at": timezone.now()}
    if result is not None:
        updates["result"] = result
    Job.objects.filter(pk=job_id).update(**updates)


def fail(job_id: int, error: str) -> None:
    Job.objects.filter(pk=job_id).update(
        status=Job.Status.FAILED, finished_at=timezone.now(), error=error[:10_000]
    )


def run(job_id: int, body: Callable[[int], dict[str, Any] | None]) -> None:
    """Run ``body(job_id)`` as the job: mark it running, then succeeded, cancelled or failed.

    A job already finished (a redelivered message) is not run again.
    """
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.is_finished:
        logger.info("job %s: nothing to do (missing or finished)", job_id)
        return
    start(job_id, total=job.progress_total)
    try:
        result = body(job_id)
    except JobCancelled:
        Job.objects.filter(pk=job_id).update(
            status=Job.Status.CANCELLED, finished_at=timezone.now()
        )
        log(job_id, "cancelled")
    except Exception as exc:  # a job's failure is data for its page, not a worker crash
        logger.exception("job %s failed", job_id)
        log(job_id, traceback.format_exc(limit=5))
        fail(job_id, f"{type(exc).__name__}: {exc}")
    else:
        succeed(job_id, result)
