"""Scoring jobs: chunks, upserts on (target, metric version), poison items, refusals."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from annotator.detection import detect_faces_for_generations
from annotator.models import Face
from benchmark.models import MetricVersion, Score, ScoringChunk
from benchmark.scoring import ScoringRefused, run_chunk, start_scoring_job
from jobs.models import Job
from ml.batching import score_inputs
from ml.metrics.base import Metric
from tests.factories import import_photos
from tests.ml.tiny_models import write_tiny_imagereward

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(tmp_path):
    dataset = import_photos(tmp_path / "photos", copies=2)
    detect_faces_for_generations(generation_ids=list(dataset.generations.values_list("id", flat=True)))
    return dataset


def _run_all(job: Job) -> None:
    for chunk_id in ScoringChunk.objects.filter(job=job).values_list("id", flat=True):
        run_chunk(chunk_id)
    job.refresh_from_db()


def test_scoring_job_scores_every_face_once_and_finishes(dataset, researcher, django_capture_on_commit_callbacks):
    faces = Face.objects.filter(generation__dataset=dataset)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        job = start_scoring_job(metrics=["face_size", "sharpness"], dataset=dataset, created_by=researcher, chunk_size=2)
    n_faces = faces.count()
    assert n_faces >= 4
    assert job.progress_total == 2 * n_faces
    assert len(sent) == ScoringChunk.objects.filter(job=job).count() == 2 * -(-n_faces // 2)
    _run_all(job)
    assert job.status == Job.Status.SUCCEEDED and job.progress_done == job.progress_total
    size = MetricVersion.objects.get(metric="face_size")
    for face in faces:
        assert Score.objects.get(metric_version=size, face=face).value == pytest.approx(face.size_px)
    assert Score.objects.filter(metric_version__metric="sharpness", value__gt=0).count() == n_faces
    assert job.result["metrics"]["face_size"]["targets"] == n_faces


def test_a_redelivered_chunk_changes_nothing(dataset):
    job = start_scoring_job(metrics=["sharpness"], dataset=dataset, chunk_size=3)
    _run_all(job)
    before = list(Score.objects.order_by("id").values_list("id", "face_id", "value"))
    chunk = ScoringChunk.objects.filter(job=job).first()
    run_chunk(chunk.pk)  # done: skipped
    ScoringChunk.objects.filter(pk=chunk.pk).update(status=ScoringChunk.Status.PENDING)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    run_chunk(chunk.pk)  # run again for real: upsert over the same rows
    assert list(Score.objects.order_by("id").values_list("id", "face_id", "value")) == before
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_an_unreadable_image_is_a_poison_item_not_a_failed_job(dataset):
    broken = Face.objects.filter(generation__dataset=dataset).first()
    broken.generation.image.storage.delete(broken.generation.image.name)
    job = start_scoring_job(metrics=["sharpness"], dataset=dataset, chunk_size=100)
    _run_all(job)
    assert job.status == Job.Status.SUCCEEDED
    bad = Score.objects.filter(face__generation=broken.generation)
    assert bad.exists() and all(s.value is None and "cannot load input" in s.error for s in bad)
    assert job.result["metrics"]["sharpness"]["unscorable"] == bad.count()


def test_image_level_prompted_metric_scores_generations(dataset, tmp_path, settings):
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    write_tiny_imagereward(settings.FACEBENCH_WEIGHTS_DIR)
    job = start_scoring_job(metrics=["imagereward"], dataset=dataset, chunk_size=4)
    _run_all(job)
    assert job.status == Job.Status.SUCCEEDED, job.error
    version = MetricVersion.objects.get(metric="imagereward")
    assert version.level == "image" and len(version.weights_sha256) == 64
    assert Score.objects.filter(metric_version=version, value__isnull=False).count() == dataset.generations.count()


def test_a_wrong_checkpoint_fails_the_job_with_the_reason(dataset, tmp_path, settings):
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    path = write_tiny_imagereward(settings.FACEBENCH_WEIGHTS_DIR)
    state = torch.load(path, weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, path)
    job = start_scoring_job(metrics=["imagereward"], dataset=dataset, chunk_size=100)
    _run_all(job)
    assert job.status == Job.Status.FAILED and "missing" in job.error.lower()
    assert not Score.objects.exists()


@pytest.mark.parametrize(
    "metrics, message",
    [(["no_such_metric"], "unknown metric 'no_such_metric'"), (["face_score"], "FS_model.pt"), ([], "at least one")],
)
def test_scoring_refuses_unknown_or_unavailable_metrics_and_changes_nothing(dataset, metrics, message, tmp_path, settings):
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "empty"
    with pytest.raises(ScoringRefused, match=message):
        start_scoring_job(metrics=metrics, dataset=dataset)
    assert not Job.objects.filter(kind=Job.Kind.SCORE).exists() and not ScoringChunk.objects.exists()


class _Doubler(Metric):
    """Scores a number as twice itself; runs out of memory on batches over ``max_batch``."""

    name, level = "doubler", "image"

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.batches: list[int] = []

    def score(self, batch):
        if len(batch) > self.max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append(len(batch))
        if any(x.size == (13, 13) for x in batch):
            raise ValueError("cannot score a 13 px image")
        return torch.tensor([2.0 * x.size[0] for x in batch])


def _loaders(sizes):
    return [(lambda s=s: Image.new("RGB", (s, s))) for s in sizes]


def test_out_of_memory_halves_the_batch_and_every_input_is_scored():
    metric = _Doubler(max_batch=3)
    outcomes = score_inputs(metric, _loaders(range(1, 11)), batch_size=8)
    assert [o.value for o in outcomes] == [2.0 * s for s in range(1, 11)]
    assert max(metric.batches) <= 3


def test_batched_scores_equal_one_at_a_time_and_a_poison_input_fails_alone():
    sizes = [5, 13, 7, 9]
    batched = score_inputs(_Doubler(max_batch=8), _loaders(sizes), batch_size=4)
    single = score_inputs(_Doubler(max_batch=8), _loaders(sizes), batch_size=1)
    assert [o.value for o in batched] == [o.value for o in single] == [10.0, None, 14.0, 18.0]
    assert "13 px" in batched[1].error


def test_an_input_that_cannot_be_loaded_fails_alone():
    def broken():
        raise OSError("truncated file")

    outcomes = score_inputs(_Doubler(max_batch=8), [*_loaders([4]), broken], batch_size=2)
    assert outcomes[0].value == 8.0 and outcomes[1].value is None and "truncated" in outcomes[1].error


@pytest.mark.parametrize("name, write", [("magface", "write_tiny_magface"), ("face_score", "write_tiny_face_score")])
def test_face_metrics_score_every_face_with_their_own_crop_policy(dataset, tmp_path, settings, name, write):
    from tests.ml import tiny_models

    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    getattr(tiny_models, write)(settings.FACEBENCH_WEIGHTS_DIR)
    job = start_scoring_job(metrics=[name], dataset=dataset, chunk_size=3)
    _run_all(job)
    assert job.status == Job.Status.SUCCEEDED, job.error
    faces = Face.objects.filter(generation__dataset=dataset).count()
    assert Score.objects.filter(metric_version__metric=name, value__isnull=False).count() == faces
