"""Start a scoring job: metrics × a dataset's generations (or their faces), on the gpu queue.

Steps: check the metrics and their weights; create the job and its chunks; send the chunks to
the ``gpu`` queue (workers: ``celery -A config worker -Q gpu -c 1``). With ``--wait``, follow the
job's progress with a progress bar until it finishes.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from annotator.models import Dataset
from benchmark.scoring import DEFAULT_CHUNK_SIZE, ScoringRefused, start_scoring_job
from jobs.models import Job


class Command(BaseCommand):
    help = "Score a dataset with one or more metrics (a Celery job on the gpu queue)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--metrics", required=True, help="comma-separated metric names, e.g. face_score,imagereward")
        parser.add_argument("--dataset", required=True, help="dataset name")
        parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
        parser.add_argument("--wait", action="store_true", help="follow the job until it finishes")

    def handle(self, *args: Any, **options: Any) -> None:
        dataset = Dataset.objects.filter(name=options["dataset"]).first()
        if dataset is None:
            raise CommandError(f"No dataset named {options['dataset']!r}.")
        metrics = [m.strip() for m in options["metrics"].split(",") if m.strip()]
        try:
            job = start_scoring_job(metrics=metrics, dataset=dataset, chunk_size=options["chunk_size"])
        except ScoringRefused as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"Scoring job #{job.pk}: {job.progress_total} targets queued on the gpu queue.")
        if not options["wait"]:
            return
        with tqdm(total=job.progress_total, unit="target", disable=not self.stdout.isatty()) as bar:
            while not job.is_finished:
                time.sleep(1)
                job.refresh_from_db()
                bar.n = job.progress_done
                bar.refresh()
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"Job #{job.pk} {job.status}: {job.error}")
        for name, row in job.result.get("metrics", {}).items():
            self.stdout.write(f"{name}: {row['targets']} targets, {row['unscorable']} unscorable, {row['per_second']} /s")
