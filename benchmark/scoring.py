"""Scoring jobs: metric × generations (or their faces), in chunks on the GPU queue.

Starting a job (``start_scoring_job``):
1. Check every metric is known and its weight files are present (else refuse, naming the files).
2. List the targets: generations for image-level metrics, their faces for face-level ones.
3. Create the ``Job`` and its ``ScoringChunk`` rows (one metric, ``chunk_size`` targets each).
4. On commit, send one ``score_chunk`` task per chunk to the ``gpu`` queue.

Running a chunk (``run_chunk``, in a worker process):
1. Skip it if it is already done (a redelivered message).
2. Load the metric once per worker process (after fork), register its ``MetricVersion``.
3. Decode and crop inputs in a background pool, score in batches (OOM halves the batch); an
   input that cannot be loaded or scored gets a score row with its error instead of a value.
4. Upsert the scores on (metric version, target): a second run overwrites with the same values.
5. Mark the chunk done, recompute the job's progress from its done chunks, and finish the job
   when none is left. A chunk-wide failure (wrong checkpoint) fails the job with the reason.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from PIL import Image

from annotator.models import Dataset, Face, Generation
from benchmark.models import MetricVersion, Score, ScoringChunk
from jobs import progress as job_progress
from jobs.models import Job
from ml import metrics as metric_zoo
from ml.batching import Outcome, score_inputs
from ml.metrics.base import FaceCrop, Metric

logger = logging.getLogger(__name__)
DEFAULT_CHUNK_SIZE = 64


class ScoringRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_metrics(names: Sequence[str]) -> list[str]:
    """The metric names, deduplicated, if all are known and have their weights; else refuse."""
    names = list(dict.fromkeys(names))
    if not names:
        raise ScoringRefused("Choose at least one metric.")
    problems = []
    for name in names:
        try:
            missing = metric_zoo.missing_files(name, settings.FACEBENCH_WEIGHTS_DIR)
        except KeyError:
            problems.append(f"unknown metric {name!r} (known: {', '.join(metric_zoo.available())})")
            continue
        if missing:
            problems.append(f"{name} needs {', '.join(str(p) for p in missing)}")
    if problems:
        raise ScoringRefused("Cannot score: " + "; ".join(problems) + ".")
    return names


def _targets(level: str, generation_ids: Sequence[int]) -> list[int]:
    if level == "face":
        return list(Face.objects.filter(generation_id__in=generation_ids).order_by("id").values_list("id", flat=True))
    return sorted(generation_ids)


def start_scoring_job(
    *,
    metrics: Sequence[str],
    generation_ids: Sequence[int] | None = None,
    dataset: Dataset | None = None,
    created_by: Any = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Job:
    names = check_metrics(metrics)
    if (generation_ids is None) == (dataset is None):
        raise ScoringRefused("Score either a dataset or a list of generations.")
    if chunk_size < 1:
        raise ScoringRefused("chunk_size must be at least 1.")
    if dataset is not None:
        generation_ids = list(dataset.generations.values_list("id", flat=True))
    ids = sorted(set(generation_ids or []))
    if not ids:
        raise ScoringRefused("There are no generations to score.")
    from benchmark.tasks import score_chunk_task

    config: dict[str, Any] = {"metrics": names, "chunk_size": chunk_size, "generations": len(ids)}
    if dataset is not None:
        config["dataset_id"] = dataset.pk
    with transaction.atomic():
        job = Job.objects.create(kind=Job.Kind.SCORE, config=config, created_by=created_by)
        chunks = []
        for name in names:
            targets = _targets(metric_zoo.get_spec(name).level, ids)
            for index, start in enumerate(range(0, len(targets), chunk_size)):
                part = targets[start : start + chunk_size]
                chunks.append(ScoringChunk(job=job, metric=name, index=index, target_ids=part, size=len(part)))
        ScoringChunk.objects.bulk_create(chunks)
        total = sum(c.size for c in chunks)
        Job.objects.filter(pk=job.pk).update(progress_total=total)
        job.progress_total = total
        if not chunks:
            job_progress.succeed(job.pk, {"scored": 0, "note": "no faces to score"})
        for chunk in ScoringChunk.objects.filter(job=job).values_list("id", flat=True):
            score_chunk_task.apply_async_on_commit((chunk,), queue=settings.FACEBENCH_QUEUES["gpu"])
    job_progress.log(job.pk, f"{len(chunks)} chunks of up to {chunk_size} targets for {', '.join(names)}")
    return job


def resume_scoring_job(job: Job) -> int:
    """Send again every chunk that is not done (after a lost worker on a broker without redelivery)."""
    from benchmark.tasks import score_chunk_task

    pending = list(ScoringChunk.objects.filter(job=job).exclude(status=ScoringChunk.Status.DONE).values_list("id", flat=True))
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).update(status=Job.Status.QUEUED, error="", finished_at=None)
        ScoringChunk.objects.filter(pk__in=pending).update(status=ScoringChunk.Status.PENDING, error="")
        for chunk_id in pending:
            score_chunk_task.apply_async_on_commit((chunk_id,), queue=settings.FACEBENCH_QUEUES["gpu"])
    return len(pending)


# --- in the worker ---------------------------------------------------------------------------

_loaded: dict[tuple[str, str], Metric] = {}


def worker_device() -> str:
    """``FACEBENCH_DEVICE`` or the first visible GPU, else the CPU; asked in the worker child only."""
    if env := os.getenv("FACEBENCH_DEVICE"):
        return env
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def loaded_metric(name: str) -> Metric:
    """One model per worker process, built on first use (after fork: the parent never touches CUDA)."""
    key = (name, str(settings.FACEBENCH_WEIGHTS_DIR))
    if key not in _loaded:
        _loaded[key] = metric_zoo.create(name, weights_dir=settings.FACEBENCH_WEIGHTS_DIR, device=worker_device())
    return _loaded[key]


def metric_version_for(metric: Metric) -> MetricVersion:
    version, _ = MetricVersion.objects.get_or_create(
        metric=metric.name,
        weights_sha256=metric.weights_sha256,
        code_version=metric.code_version,
        settings={},
        defaults={"level": metric.level, "higher_is_better": metric.higher_is_better, "label": metric.version},
    )
    return version


def _open_rgb(generation: Generation) -> Image.Image:
    with generation.image.open("rb") as fh:
        data = fh.read()
    return Image.open(io.BytesIO(data)).convert("RGB")


def _loaders(metric: Metric, target_ids: Sequence[int]) -> tuple[list[int], list[Callable[[], Any]]]:
    """Loader callables in target order (ids of targets that no longer exist are dropped)."""
    if metric.level == "face":
        faces = Face.objects.filter(pk__in=target_ids).select_related("generation").in_bulk()
        ids = [i for i in target_ids if i in faces]

        def face_loader(face: Face) -> Callable[[], FaceCrop]:
            return lambda: face_input(metric, _open_rgb(face.generation), face)

        return ids, [face_loader(faces[i]) for i in ids]
    generations = Generation.objects.in_bulk(list(target_ids))
    ids = [i for i in target_ids if i in generations]

    def image_loader(generation: Generation) -> Callable[[], Any]:
        if metric.needs_prompt:
            return lambda: (_open_rgb(generation), generation.prompt)
        return lambda: _open_rgb(generation)

    return ids, [image_loader(generations[i]) for i in ids]


FQA_METRICS = frozenset({"magface", "cr_fiqa"})


def face_input(metric: Metric, image: Image.Image, face: Face) -> FaceCrop:
    """The crop policy each face metric was trained with: ArcFace 5-point alignment to 112 px for
    the FQA models (an unaligned box crop when the detector gave no landmarks), the official
    FaceScore crop (raw box ±1 px) for the rest."""
    if metric.name in FQA_METRICS:
        from ml.metrics.fqa import aligned_face_crops

        return aligned_face_crops(image, [face])[0]
    from ml.metrics.imagereward import crop_face

    return FaceCrop(image=crop_face(image, face.box), box=face.box, confidence=face.confidence)


def _upsert_scores(version: MetricVersion, level: str, ids: Sequence[int], outcomes: Sequence[Outcome]) -> None:
    target = "face" if level == "face" else "generation"
    rows = [
        Score(metric_version=version, **{f"{target}_id": i}, value=o.value, error=o.error[:2000])
        for i, o in zip(ids, outcomes, strict=True)
    ]
    Score.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["metric_version", target],
        update_fields=["value", "error", "updated_at"],
    )


def run_chunk(chunk_id: int, *, batch_size: int = 32) -> None:
    chunk = ScoringChunk.objects.select_related("job").filter(pk=chunk_id).first()
    if chunk is None or chunk.status == ScoringChunk.Status.DONE:
        return
    job = chunk.job
    if job.is_finished:
        return
    if job.cancel_requested:
        Job.objects.filter(pk=job.pk, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).update(
            status=Job.Status.CANCELLED, finished_at=timezone.now()
        )
        return
    Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(status=Job.Status.RUNNING, started_at=timezone.now())
    started = time.perf_counter()
    try:
        metric = loaded_metric(chunk.metric)
    except (metric_zoo.MetricUnavailable, metric_zoo.CheckpointMismatch) as exc:
        _fail_chunk(chunk, f"{chunk.metric}: {exc}")
        return
    version = metric_version_for(metric)
    ids, loaders = _loaders(metric, chunk.target_ids)
    outcomes = score_inputs(metric, loaders, batch_size=batch_size)
    failed = sum(o.value is None for o in outcomes)
    with transaction.atomic():
        _upsert_scores(version, metric.level, ids, outcomes)
        ScoringChunk.objects.filter(pk=chunk.pk).update(
            status=ScoringChunk.Status.DONE,
            metric_version=version,
            seconds=time.perf_counter() - started,
            worker=socket.gethostname(),
            finished_at=timezone.now(),
            unscorable=failed,
        )
    _update_job(job.pk, chunk, failed, time.perf_counter() - started)


def _update_job(job_id: int, chunk: ScoringChunk, failed: int, seconds: float) -> None:
    done = ScoringChunk.objects.filter(job_id=job_id, status=ScoringChunk.Status.DONE).aggregate(n=Sum("size"))["n"] or 0
    Job.objects.filter(pk=job_id).update(progress_done=done)
    rate = chunk.size / seconds if seconds > 0 else 0.0
    note = f", {failed} unscorable" if failed else ""
    job_progress.log(job_id, f"{chunk.metric} chunk {chunk.index}: {chunk.size} targets in {seconds:.1f} s ({rate:.1f}/s){note}")
    if not ScoringChunk.objects.filter(job_id=job_id).exclude(status=ScoringChunk.Status.DONE).exists():
        summary = job_summary(job_id)
        Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(
            status=Job.Status.SUCCEEDED, finished_at=timezone.now(), result=summary
        )


def _fail_chunk(chunk: ScoringChunk, reason: str) -> None:
    ScoringChunk.objects.filter(pk=chunk.pk).update(status=ScoringChunk.Status.FAILED, error=reason[:5000])
    job_progress.log(chunk.job_id, reason)
    Job.objects.filter(pk=chunk.job_id).exclude(status__in=Job.FINISHED).update(
        status=Job.Status.FAILED, finished_at=timezone.now(), error=reason[:10_000]
    )


def job_summary(job_id: int) -> dict[str, Any]:
    """Per metric: targets, scored, unscorable, seconds and throughput."""
    summary: dict[str, Any] = {}
    for chunk in ScoringChunk.objects.filter(job_id=job_id).select_related("metric_version"):
        row = summary.setdefault(
            chunk.metric, {"targets": 0, "unscorable": 0, "seconds": 0.0, "metric_version": chunk.metric_version_id}
        )
        row["targets"] += chunk.size
        row["unscorable"] += chunk.unscorable
        row["seconds"] += chunk.seconds or 0.0
    for row in summary.values():
        row["per_second"] = round(row["targets"] / row["seconds"], 2) if row["seconds"] else None
        row["seconds"] = round(row["seconds"], 2)
    return {"metrics": summary}
