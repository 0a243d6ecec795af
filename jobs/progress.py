"""What a worker calls while it runs a job: start, report progress, log, finish or fail.

Every write is a single UPDATE on the job row (no read-modify-write), so a progress report from a
worker can never overwrite a cancel request from a page, and a redelivered task simply starts over.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, Q, Value
from django.db.models.functions import Concat, Right
from django.utils import timezone

from jobs.models import Job, JobRecord

logger = logging.getLogger(__name__)
LOG_TAIL_CHARS = 20_000
# How often a running job looks at its cancel flag, and writes its buffered step records.
CANCEL_CHECK_EVERY_S = 1.0
RECORD_FLUSH_EVERY_S = 1.0


class JobCancelled(Exception):
    """Raised inside a running job when someone asked to cancel it.

    ``result`` is what the job has to show for the work it did before it stopped (a training job
    keeps its last checkpoint); ``run`` stores it on the cancelled job.
    """

    def __init__(self, result: dict[str, Any] | None = None) -> None:
        super().__init__("cancelled")
        self.result = result


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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(job_id: int) -> bool:
    """Take the job for this worker: a queued job, or a running one whose heartbeat went stale
    (its worker died). One UPDATE, so of two workers handed the same message only one wins."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.FACEBENCH_JOB_STALE_SECONDS)
    abandoned = Q(status=Job.Status.RUNNING) & (
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale)
    )
    return bool(
        Job.objects.filter(Q(pk=job_id) & (Q(status=Job.Status.QUEUED) | abandoned)).update(
            status=Job.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker=worker_name(),
            error="",
        )
    )


class Heartbeat(threading.Thread):
    """Touches ``Job.heartbeat_at`` every ``FACEBENCH_JOB_HEARTBEAT_SECONDS`` while a body runs,
    whatever the body is doing (a long validation, caching latents), on its own connection."""

    def __init__(self, job_id: int) -> None:
        super().__init__(name=f"job-{job_id}-heartbeat", daemon=True)
        self.job_id = job_id
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(settings.FACEBENCH_JOB_HEARTBEAT_SECONDS):
                try:
                    Job.objects.filter(pk=self.job_id, status=Job.Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except Exception:  # a busy database now and then must not end the heartbeat
                    logger.warning("job %s: heartbeat not written", self.job_id, exc_info=True)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def run(job_id: int, body: Callable[[int], dict[str, Any] | None]) -> None:
    """Run ``body(job_id)`` as the job: mark it running, then succeeded, cancelled or failed.

    A redelivered message runs nothing when the job is finished, or running in a worker whose
    heartbeat is fresh; it takes over (and the body resumes from its checkpoints) when that
    worker's heartbeat went stale.
    """
    if not claim(job_id):
        job = Job.objects.filter(pk=job_id).first()
        state = "missing" if job is None else f"{job.status} in {job.worker or 'another worker'}"
        logger.info("job %s: not run here (%s)", job_id, state)
        return
    heartbeat = Heartbeat(job_id)
    heartbeat.start()
    try:
        result = body(job_id)
    except JobCancelled as stop:
        updates: dict[str, Any] = {"status": Job.Status.CANCELLED, "finished_at": timezone.now()}
        if stop.result is not None:
            updates["result"] = stop.result
        Job.objects.filter(pk=job_id).update(**updates)
        log(job_id, "cancelled")
    except Exception as exc:  # a job's failure is data for its page, not a worker crash
        logger.exception("job %s failed", job_id)
        log(job_id, traceback.format_exc(limit=5))
        fail(job_id, f"{type(exc).__name__}: {exc}")
    else:
        succeed(job_id, result)
    finally:
        heartbeat.stop()


def request_cancel(job_id: int) -> bool:
    """Ask a job to stop; a job still waiting in the queue is cancelled at once.

    A running job sees the flag at its next step (``advance``, ``CancelCheck``) and stops there,
    keeping what it has saved. Returns False when the job had already finished.
    """
    now = timezone.now()
    queued = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        cancel_requested=True, status=Job.Status.CANCELLED, finished_at=now
    )
    if queued:
        log(job_id, "cancelled before it started")
        return True
    running = (
        Job.objects.filter(pk=job_id).exclude(status__in=Job.FINISHED).update(cancel_requested=True)
    )
    if running:
        log(job_id, "cancel requested: stopping at the next step")
    return bool(running)


class CancelCheck:
    """``should_stop()`` for ml loops: has someone asked to cancel the job?

    Reads the job row at most once every ``every_s`` seconds, so a loop can call it each step.
    """

    def __init__(self, job_id: int, *, every_s: float | None = None) -> None:
        self.job_id = job_id
        self.every_s = CANCEL_CHECK_EVERY_S if every_s is None else every_s
        self._checked_at = -math.inf
        self._requested = False

    def __call__(self) -> bool:
        if not self._requested and time.monotonic() - self._checked_at >= self.every_s:
            self._checked_at = time.monotonic()
            self._requested = Job.objects.filter(pk=self.job_id, cancel_requested=True).exists()
        return self._requested


def _json_safe(value: Any) -> Any:
    """JSON for a step record: tensors and numpy scalars as plain numbers (they have ``item``),
    NaN/inf as None, dicts and lists kept; anything else as text."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, dict):  # per-set validation accuracies
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


class StepRecorder:
    """``on_step(record)`` for ml loops: step records into ``JobRecord`` rows, written in batches.

    Records are buffered and flushed at most once every ``every_s`` seconds (and by ``flush()``
    at the end), so a loop can report every step without a database write per step. Records for
    a step that already has a row merge into it (a validation record after the training one, or
    a resumed run repeating a step).
    """

    def __init__(
        self,
        job_id: int,
        *,
        every_s: float | None = None,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.every_s = RECORD_FLUSH_EVERY_S if every_s is None else every_s
        self.on_flush = on_flush
        self._pending: dict[int, dict[str, Any]] = {}
        self._flushed_at = time.monotonic()
        self.last_step = 0

    def __call__(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        values = {key: _json_safe(value) for key, value in record.items() if key != "step"}
        self._pending.setdefault(step, {}).update(values)
        self.last_step = max(self.last_step, step)
        if time.monotonic() - self._flushed_at >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self._flushed_at = time.monotonic()
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        existing = dict(
            JobRecord.objects.filter(job_id=self.job_id, step__in=list(pending)).values_list(
                "step", "values"
            )
        )
        rows = [
            JobRecord(job_id=self.job_id, step=step, values={**existing.get(step, {}), **values})
            for step, values in sorted(pending.items())
        ]
        JobRecord.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["job", "step"], update_fields=["values"]
        )
        if self.on_flush is not None:
            self.on_flush(self.last_step)
