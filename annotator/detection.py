"""Face detection over stored generations, as a service and as a job.

Steps of :func:`detect_faces_for_generations`: load the detector once per process; for each
batch of generation ids, read the stored PNGs through the storage API, run the detector on the
batch, then, per generation in its own transaction, reconcile its faces from this detector with
the new detections and stamp ``faces_detected_at`` / ``face_detector``.

Reconciling instead of delete-and-recreate keeps the task idempotent without breaking campaigns:
a face whose box is detected again keeps its row (and so its items and judgments); a face no
longer detected is deleted only if no campaign item uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from PIL import Image

from annotator.models import Dataset, Face, Generation, Item
from ml.faces import Detection, FaceDetector, create_detector

logger = logging.getLogger(__name__)

# "auto": RetinaFace mobilenet0.25 (what the official FaceScore code uses) when its weights are in
# FACEBENCH_WEIGHTS_DIR, else OpenCV's Haar cascade, which ships inside the opencv wheel.
DEFAULT_DETECTOR = "auto"
BATCH_SIZE = 16
BOX_MATCH_PX = 0.5  # a re-detected box within this many pixels is the same face


def resolve_detector_name(name: str) -> str:
    if name != "auto":
        return name
    from ml.faces.retinaface import MOBILENET

    present = (Path(settings.FACEBENCH_WEIGHTS_DIR) / MOBILENET.weights_file).is_file()
    return MOBILENET.name if present else "haar"


def get_detector(name: str) -> FaceDetector:
    name = resolve_detector_name(name)
    weights_dir = str(settings.FACEBENCH_WEIGHTS_DIR) if name.startswith("retinaface") else None
    return _loaded_detector(name, weights_dir)


@cache
def _loaded_detector(name: str, weights_dir: str | None) -> FaceDetector:
    # One detector per worker process: cascades and RetinaFace weights load once.
    return create_detector(name, weights_dir=weights_dir) if weights_dir else create_detector(name)


def _load_rgb(generation: Generation) -> np.ndarray:
    with generation.image.open("rb") as fh:
        image = Image.open(fh)
        image.load()
    return np.asarray(image.convert("RGB"))


def _same_box(face: Face, det: Detection) -> bool:
    return all(abs(a - b) <= BOX_MATCH_PX for a, b in zip(face.box, det.box, strict=True))


def _store_faces(generation_id: int, detector_name: str, detections: Sequence[Detection]) -> int:
    """Make the generation's faces from ``detector_name`` match ``detections``; return their count."""
    with transaction.atomic():
        existing = list(Face.objects.filter(generation_id=generation_id, detector=detector_name))
        unmatched = list(existing)
        for det in detections:
            landmarks = [list(p) for p in det.landmarks] if det.landmarks else None
            match = next((f for f in unmatched if _same_box(f, det)), None)
            if match is not None:
                unmatched.remove(match)
                if match.confidence != det.confidence or match.landmarks != landmarks:
                    match.confidence, match.landmarks = det.confidence, landmarks
                    match.save(update_fields=["confidence", "landmarks"])
            else:
                Face.objects.create(
                    generation_id=generation_id,
                    x0=det.x0,
                    y0=det.y0,
                    x1=det.x1,
                    y1=det.y1,
                    landmarks=landmarks,
                    detector=detector_name,
                    confidence=det.confidence,
                )
        stale_ids = [f.pk for f in unmatched]
        if stale_ids:
            used = set(
                Item.objects.filter(
                    Q(face_id__in=stale_ids)
                    | Q(left_face_id__in=stale_ids)
                    | Q(right_face_id__in=stale_ids)
                ).values_list("face_id", "left_face_id", "right_face_id")
            )
            used_ids = {i for triple in used for i in triple if i is not None}
            Face.objects.filter(pk__in=[i for i in stale_ids if i not in used_ids]).delete()
            if used_ids & set(stale_ids):
                logger.warning(
                    "generation %s: faces %s are no longer detected but campaign items use them; kept",
                    generation_id,
                    sorted(used_ids & set(stale_ids)),
                )
        Generation.objects.filter(pk=generation_id).update(
            faces_detected_at=timezone.now(), face_detector=detector_name
        )
    return len(detections)


def _batches(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def detect_faces_for_generations(
    *,
    generation_ids: Iterable[int],
    detector_name: str = DEFAULT_DETECTOR,
    job_id: int | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Detect faces in these generations and store them; see the module docstring."""
    from jobs import progress as job_progress

    detector = get_detector(detector_name)
    ids = sorted(set(generation_ids))
    counts = {"generations": 0, "faces": 0, "no_face": 0, "unreadable": 0}
    if job_id is not None:
        job_progress.set_total(job_id, len(ids))
        job_progress.log(job_id, f"detecting faces in {len(ids)} generations with {detector.name}")
    done = 0
    for batch_ids in _batches(ids, batch_size):
        generations = list(Generation.objects.filter(pk__in=batch_ids).only("id", "image"))
        loaded: list[tuple[int, np.ndarray]] = []
        for generation in generations:
            try:
                loaded.append((generation.pk, _load_rgb(generation)))
            except Exception as exc:  # a missing or broken file is counted, not fatal
                counts["unreadable"] += 1
                message = f"generation {generation.pk}: cannot read {generation.image.name}: {exc}"
                logger.warning(message)
                if job_id is not None:
                    job_progress.log(job_id, message)
        results = detector.detect([array for _, array in loaded]) if loaded else []
        for (generation_id, _), detections in zip(loaded, results, strict=True):
            found = _store_faces(generation_id, detector.name, detections)
            counts["generations"] += 1
            counts["faces"] += found
            counts["no_face"] += found == 0
        done += len(batch_ids)
        if job_id is not None:
            job_progress.advance(job_id, done)
        if progress is not None:
            progress(done, len(ids))
    if job_id is not None:
        job_progress.log(
            job_id,
            f"{counts['faces']} faces in {counts['generations']} generations; "
            f"{counts['no_face']} with no face, {counts['unreadable']} unreadable",
        )
    return {**counts, "detector": detector.name}


def start_detection_job(
    *,
    generation_ids: Sequence[int] | None = None,
    dataset: Dataset | None = None,
    created_by: Any = None,
    detector_name: str = DEFAULT_DETECTOR,
) -> Any:
    """Create a detect ``Job`` and queue it on commit.

    For ``generation_ids`` when given (``dataset`` then only labels the job for the dataset's
    pages), else for every generation of ``dataset``.
    """
    from annotator.tasks import detect_faces_task
    from jobs.models import Job

    if generation_ids is None and dataset is None:
        raise ValueError("pass generation_ids, dataset, or both")
    config: dict[str, Any] = {"detector": detector_name}
    if dataset is not None:
        config["dataset_id"] = dataset.pk
    if generation_ids is not None:
        config["generation_ids"] = sorted(set(generation_ids))
        total = len(config["generation_ids"])
    else:
        assert dataset is not None
        total = dataset.generations.count()
    with transaction.atomic():
        job = Job.objects.create(
            kind=Job.Kind.DETECT, config=config, created_by=created_by, progress_total=total
        )
        detect_faces_task.delay_on_commit(job.pk)
    return job


def run_detection_job(job_id: int) -> dict[str, Any]:
    """Body of a detect job: resolve its generations from the config and run the service."""
    from jobs.models import Job

    config = Job.objects.get(pk=job_id).config
    ids: Sequence[int]
    if "generation_ids" in config:
        ids = config["generation_ids"]
    else:
        ids = list(
            Generation.objects.filter(dataset_id=config["dataset_id"]).values_list("pk", flat=True)
        )
    return detect_faces_for_generations(
        generation_ids=ids, detector_name=config.get("detector", DEFAULT_DETECTOR), job_id=job_id
    )
