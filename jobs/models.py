"""Long-running work (detection, scoring, reports, training) as database rows.

A ``Job`` is created by a service, sent to a Celery queue by id, and updated by the worker through
``jobs.progress``. Its state lives here, not in Celery's result backend, so any page can show
progress and a restarted worker can pick the work up again.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone


class Job(models.Model):
    class Kind(models.TextChoices):
        IMPORT = "import", "Import generations"
        DETECT = "detect", "Detect faces"
        SCORE = "score", "Score with metrics"
        REPORT = "report", "Build report"
        EXPORT = "export", "Export dataset snapshot"
        CRAFT_PAIRS = "craft_pairs", "Craft face pairs"
        TRAIN_FACE_SCORE = "train_face_score", "Train Face Score"
        FINETUNE_DM = "finetune_dm", "Fine-tune a DM"
        GENERATE = "generate", "Generate images"
        EVALUATE_DM = "evaluate_dm", "Evaluate a DM"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=32, choices=Kind.choices)
    config = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    log_tail = models.TextField(blank=True, default="")
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    cancel_requested = models.BooleanField(default=False)
    # The running worker's lease on the job: a redelivered message (Redis hands a late-acked task
    # out again after its visibility timeout) finds a fresh heartbeat and leaves the job alone.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "status"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def per_second(self) -> float | None:
        """Throughput so far (or overall, once finished): progress units per second."""
        if not self.started_at or not self.progress_done:
            return None
        end = self.finished_at or timezone.now()
        seconds = (end - self.started_at).total_seconds()
        return round(self.progress_done / seconds, 2) if seconds > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.per_second
        if self.is_finished or not rate:
            return None
        return round((self.progress_total - self.progress_done) / rate, 1)

    @property
    def artifact_dir(self) -> Path:
        """Where this job's files go: ``FACEBENCH_ARTIFACTS_DIR/job-<id>/`` (shared storage)."""
        return Path(settings.FACEBENCH_ARTIFACTS_DIR) / f"job-{self.pk}"

    @property
    def percent(self) -> float:
        if not self.progress_total:
            return 100.0 if self.status == self.Status.SUCCEEDED else 0.0
        return round(100.0 * self.progress_done / self.progress_total, 1)


class JobRecord(models.Model):
    """One step of a long job's history: loss, learning rate, grad norm, validation accuracies.

    One row per (job, step); a later report for the same step (validation after the training
    numbers, or a resumed run repeating a step) merges into it, so the curve never has doubles.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="records")
    step = models.PositiveIntegerField()
    values = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "step"]
        constraints = [
            models.UniqueConstraint(fields=["job", "step"], name="job_record_unique_step")
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} step {self.step}"


def artifact_path(relative: str) -> Path:
    """An absolute path inside ``FACEBENCH_ARTIFACTS_DIR`` for a stored relative one.

    Metric versions and job results store artifact paths relative to the artifacts dir, so the
    dir can be mounted elsewhere on another machine; a path that climbs out of it is refused.
    """
    root = Path(settings.FACEBENCH_ARTIFACTS_DIR).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"artifact path {relative!r} is outside FACEBENCH_ARTIFACTS_DIR")
    return path
