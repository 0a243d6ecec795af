"""Celery tasks of the human side. Each receives a job id and runs a service as that job."""

from __future__ import annotations

from celery import shared_task

from jobs import progress


@shared_task(name="annotator.import_generations")
def import_generations_task(job_id: int) -> None:
    from annotator.imports import run_import_job

    progress.run(job_id, run_import_job)


@shared_task(name="annotator.detect_faces")
def detect_faces_task(job_id: int) -> None:
    from annotator.detection import run_detection_job

    progress.run(job_id, run_detection_job)
