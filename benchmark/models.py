"""The research side: metric versions, scores and frozen reports.

``annotator`` never imports this module: the annotation screens cannot show a metric value that
their code cannot reach.
"""

from __future__ import annotations

from django.conf import settings as django_settings
from django.db import models
from django.db.models import Q

from annotator.models import Face, Generation


class MetricVersion(models.Model):
    class Level(models.TextChoices):
        IMAGE = "image"
        FACE = "face"

    metric = models.CharField(max_length=100)  # registry name, e.g. "imagereward", "face_score"
    label = models.CharField(max_length=200, blank=True, default="")
    level = models.CharField(max_length=8, choices=Level.choices)
    higher_is_better = models.BooleanField(default=True)
    weights_sha256 = models.CharField(max_length=64, blank=True, default="")
    code_version = models.CharField(max_length=64, blank=True, default="")
    settings = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["metric", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["metric", "weights_sha256", "code_version", "settings"],
                name="metric_version_unique",
            )
        ]

    def __str__(self) -> str:
        return self.label or f"{self.metric} ({self.weights_sha256[:8] or 'no weights'})"


class Score(models.Model):
    """One metric version's value for one generation (image level) or one face (face level)."""

    metric_version = models.ForeignKey(MetricVersion, on_delete=models.CASCADE, related_name="scores")
    generation = models.ForeignKey(Generation, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    face = models.ForeignKey(Face, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    value = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True, default="")  # why there is no value (poison item, no face)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(generation__isnull=False) & Q(face__isnull=True))
                | (Q(generation__isnull=True) & Q(face__isnull=False)),
                name="score_has_one_target",
            ),
            # Not partial: NULLs never collide, and upserts (ON CONFLICT) need plain unique indexes.
            models.UniqueConstraint(fields=["metric_version", "generation"], name="score_unique_generation"),
            models.UniqueConstraint(fields=["metric_version", "face"], name="score_unique_face"),
        ]

    def __str__(self) -> str:
        target = f"face {self.face_id}" if self.face_id else f"generation {self.generation_id}"
        return f"{self.metric_version_id} on {target}: {self.value if self.value is not None else self.error}"


class Report(models.Model):
    """A frozen alignment analysis: its inputs and settings, so it can be rebuilt identically."""

    title = models.CharField(max_length=200)
    campaigns = models.ManyToManyField("annotator.Campaign", related_name="+")
    metric_versions = models.ManyToManyField(MetricVersion, related_name="reports")
    settings = models.JSONField(default=dict, blank=True)
    results = models.JSONField(default=dict, blank=True)
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.title


class ScoringChunk(models.Model):
    """One unit of a scoring job's work: one metric over a list of targets (faces or generations).

    A chunk is done exactly when its scores are written, so a redelivered chunk is skipped and a
    stalled job can be resumed by re-sending the chunks that are not done.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        FAILED = "failed"

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="scoring_chunks")
    metric = models.CharField(max_length=100)
    index = models.PositiveIntegerField()
    target_ids = models.JSONField()
    size = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    metric_version = models.ForeignKey(MetricVersion, null=True, blank=True, on_delete=models.SET_NULL)
    error = models.TextField(blank=True, default="")
    unscorable = models.PositiveIntegerField(default=0)  # inputs that got an error instead of a value
    seconds = models.FloatField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job_id", "metric", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "metric", "index"], name="scoring_chunk_unique")]

    def __str__(self) -> str:
        return f"{self.metric} chunk {self.index} of job {self.job_id} ({self.status})"


class FacePair(models.Model):
    """A (good, bad) face pair made by a crafting job: the original image and an inpainted copy
    that differs from it only inside ``mask_image`` (the face), with everything needed to make it
    again (source, model, settings, seed) in ``provenance``.

    One row per (crafting job, source, face): a redelivered or resumed job updates its rows.
    Images are content-addressed PNGs in the media storage, so the same pixels are stored once.
    """

    class Split(models.TextChoices):
        TRAIN = "train"
        VAL = "val"

    crafting_job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="face_pairs")
    # "generation:12" for a stored generation, "file:sub/astronaut.png" for a photo in a folder.
    source_key = models.CharField(max_length=500)
    face_index = models.PositiveIntegerField()
    source_generation = models.ForeignKey(Generation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    source_face = models.ForeignKey(Face, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    box = models.JSONField()  # [x0, y0, x1, y1] in pixels of good_image
    prompt = models.TextField(blank=True, default="")
    seed = models.BigIntegerField()
    good_image = models.FileField(max_length=200)
    bad_image = models.FileField(max_length=200)
    mask_image = models.FileField(max_length=200)
    # Current Face Score of each side when the margin filter ran, else empty.
    fs_good = models.FloatField(null=True, blank=True)
    fs_bad = models.FloatField(null=True, blank=True)
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    provenance = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["crafting_job_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["crafting_job", "source_key", "face_index"], name="face_pair_unique_source_face")
        ]
        indexes = [models.Index(fields=["crafting_job", "split"])]

    def __str__(self) -> str:
        return f"pair {self.pk} ({self.source_key} face {self.face_index}, {self.split})"
