"""Celery tasks of the research side: thin wrappers that run a service for one id."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError


@shared_task(
    name="benchmark.score_chunk",
    autoretry_for=(OperationalError, InterfaceError, ConnectionError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=6,
    soft_time_limit=3600,
    time_limit=3900,
)
def score_chunk_task(chunk_id: int) -> None:
    from benchmark.scoring import run_chunk

    run_chunk(chunk_id)


@shared_task(name="benchmark.build_report", soft_time_limit=3 * 3600, time_limit=3 * 3600 + 300)
def build_report_task(job_id: int) -> None:
    from benchmark.reports import run_report_job
    from jobs import progress

    progress.run(job_id, run_report_job)


@shared_task(name="benchmark.export_snapshot", soft_time_limit=3 * 3600, time_limit=3 * 3600 + 300)
def export_snapshot_task(job_id: int) -> None:
    from benchmark.snapshots import run_export_job
    from jobs import progress

    progress.run(job_id, run_export_job)


@shared_task(name="benchmark.run_launched_job", soft_time_limit=3 * 24 * 3600, time_limit=3 * 24 * 3600 + 300)
def run_launched_job_task(job_id: int) -> None:
    """Any job launched through ``benchmark.launch`` (crafting, training, …); its kind picks the body."""
    from benchmark.launch import run_launched_job

    run_launched_job(job_id)
