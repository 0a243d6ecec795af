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
    metric_versions: Sequence[MetricVersion] = (),
    then_report: dict[str, Any] | None = None,
) -> Job:
    """``metric_versions``: versions whose weights live elsewhere (``settings["weights_dir"]``, a
    trained Face Score) scored beside the named metrics. ``then_report``: keyword arguments of
    ``start_report_job`` (ids, JSON-safe) for a report started when every chunk is done; the
    metric versions this job scored are added to its ``metric_versions``."""
    versions = list(dict.fromkeys(metric_versions))
    for version in versions:
        check_version_weights(version)
    names = check_metrics(metrics) if metrics or not versions else []
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
    if versions:
        config["metric_versions"] = [v.pk for v in versions]
    if then_report is not None:
        config["then_report"] = then_report
    groups: list[tuple[str, str, MetricVersion | None]] = [
        (name, metric_zoo.get_spec(name).level, None) for name in names
    ] + [(v.metric, v.level, v) for v in versions]
    with transaction.atomic():
        job = Job.objects.create(kind=Job.Kind.SCORE, config=config, created_by=created_by)
        chunks = []
        next_index: dict[str, int] = {}  # chunk indexes are unique per (job, metric name)
        for name, level, preset in groups:
            targets = _targets(level, ids)
            for start in range(0, len(targets), chunk_size):
                part = targets[start : start + chunk_size]
                index = next_index.get(name, 0)
                next_index[name] = index + 1
                chunks.append(
                    ScoringChunk(job=job, metric=name, index=index, target_ids=part, size=len(part), metric_version=preset)
                )
        ScoringChunk.objects.bulk_create(chunks)
        total = sum(c.size for c in chunks)
        Job.objects.filter(pk=job.pk).update(progress_total=total)
        job.progress_total = total
        if not chunks:
            job_progress.succeed(job.pk, {"scored": 0, "note": "no faces to score"})
        for chunk in ScoringChunk.objects.filter(job=job).values_list("id", flat=True):
            score_chunk_task.apply_async_on_commit((chunk,), queue=settings.FACEBENCH_QUEUES["gpu"])
    scored = names + [str(v) for v in versions]
    job_progress.log(job.pk, f"{len(chunks)} chunks of up to {chunk_size} targets for {', '.join(scored)}")
    return job


def version_weights_dir(version: MetricVersion) -> Any:
    """The weights dir of a version trained here (``settings["weights_dir"]``, relative to
    ``FACEBENCH_ARTIFACTS_DIR``), or None for a version of the shared weights dir."""
    from jobs.models import artifact_path

    relative = (version.settings or {}).get("weights_dir")
    return artifact_path(relative) if relative else None


def check_version_weights(version: MetricVersion) -> None:
    """Refuse a version that cannot be loaded: not trained here, or its files are gone."""
    weights_dir = version_weights_dir(version)
    if weights_dir is None:
        raise ScoringRefused(f"{version} has no weights_dir: score it by metric name instead.")
    missing = metric_zoo.missing_files(version.metric, weights_dir)
    if missing:
        raise ScoringRefused(f"Cannot score {version}: missing {', '.join(str(p) for p in missing)}.")


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


def loaded_metric(name: str, weights_dir: Any = None) -> Metric:
    """One model per worker process, built on first use (after fork: the parent never touches CUDA).

    ``weights_dir`` (a trained version's own folder) defaults to ``FACEBENCH_WEIGHTS_DIR``; only
    the newest such trained model is kept loaded, so a worker that scores many versions in turn
    does not hold them all in memory.
    """
    shared = str(settings.FACEBENCH_WEIGHTS_DIR)
    key = (name, str(weights_dir or shared))
    if key not in _loaded:
        if weights_dir is not None:
            for old in [k for k in _loaded if k[1] != shared]:
                del _loaded[old]
        _loaded[key] = metric_zoo.create(name, weights_dir=weights_dir or shared, device=worker_device())
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
    preset = chunk.metric_version  # a trained version with its own weights dir, else None
    try:
        metric = loaded_metric(chunk.metric, version_weights_dir(preset) if preset else None)
    except (metric_zoo.MetricUnavailable, metric_zoo.CheckpointMismatch, ValueError) as exc:
        _fail_chunk(chunk, f"{chunk.metric}: {exc}")
        return
    if preset is not None and preset.weights_sha256 and metric.weights_sha256 != preset.weights_sha256:
        _fail_chunk(chunk, f"{preset}: the checkpoint changed since it was registered (sha256 {metric.weights_sha256[:16]})")
        return
    version = preset or metric_version_for(metric)
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
        finished = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(
            status=Job.Status.SUCCEEDED, finished_at=timezone.now(), result=summary
        )
        if finished:  # only the chunk that finished the job starts its follow-up
            _start_follow_up_report(job_id)


def _start_follow_up_report(job_id: int) -> None:
    """The report a scoring job was asked to start when done (a trained Face Score's comparison)."""
    job = Job.objects.get(pk=job_id)
    then_report = (job.config or {}).get("then_report")
    if not then_report:
        return
    from benchmark.reports import ReportRefused, start_report_job

    scored = ScoringChunk.objects.filter(job_id=job_id, metric_version__isnull=False)
    versions = list(dict.fromkeys([*then_report.get("metric_versions", []), *scored.values_list("metric_version_id", flat=True)]))
    try:
        report_job = start_report_job(
            title=then_report.get("title", f"Scores of job #{job_id}"),
            campaigns=then_report["campaigns"],
            metric_versions=MetricVersion.objects.filter(pk__in=versions).order_by("id"),
            settings=then_report.get("settings"),
            created_by=job.created_by,
        )
    except ReportRefused as exc:
        job_progress.log(job_id, f"follow-up report refused: {exc}")
        return
    Job.objects.filter(pk=job_id).update(result={**job.result, "report_job": report_job.pk})
    job_progress.log(job_id, f"report job #{report_job.pk} started")


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
