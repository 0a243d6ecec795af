"""Report and snapshot jobs run in a real Celery worker process (default queue)."""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage

from benchmark.models import Report
from benchmark.reports import metric_name, start_report_job
from benchmark.snapshots import start_export_job
from jobs.models import Job
from tests.benchmark.synthetic_campaign import make_synthetic_campaign
from tests.integration.worker import celery_worker, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_report_and_export_jobs_run_in_a_worker(tmp_path):
    world = make_synthetic_campaign(n_prompts=12)
    log = tmp_path / "worker.log"
    with celery_worker(log=log):
        report_job = start_report_job(
            title="in a worker",
            campaigns=[world.campaign],
            metric_versions=[world.tracks, world.unrelated],
            settings={"n_boot": 50, "breakdown_n_boot": 20},
        )
        export_job = start_export_job(world.campaign)
        for job in (report_job, export_job):
            wait_until(
                lambda job=job: Job.objects.get(pk=job.pk).is_finished,
                timeout=180,
                what=f"{job.kind} job {job.pk} (worker log: {log})",
            )
    for job in (report_job, export_job):
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED, job.error or log.read_text()[-3000:]
        assert job.progress_done == job.progress_total
    report = Report.objects.get(job=report_job)
    assert report.results["headline"]["best"]["face_spearman"] == metric_name(world.tracks)
    assert default_storage.exists(export_job.result["zip"])
