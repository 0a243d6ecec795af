"""Face Score training jobs on a tiny ImageReward: records, a new metric version, follow-ups, cancel."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image, ImageFilter

from annotator.assignment import claim_items, submit_judgment
from annotator.campaigns import create_campaign
from annotator.models import Campaign, Dataset, Face, Generation
from benchmark import launch
from benchmark.models import FacePair, MetricVersion, Report, Score, ScoringChunk
from benchmark.pairs import store_png
from benchmark.reports import run_report_job
from benchmark.scoring import ScoringRefused, run_chunk, start_scoring_job
from benchmark.training import human_pairs, run_train_job
from jobs import progress
from jobs.models import Job, JobRecord
from ml import metrics as metric_zoo
from tests.images import astronaut, grace_hopper
from tests.ml.tiny_models import write_tiny_imagereward

pytestmark = pytest.mark.django_db

SIDE = 96
BOX = (24.0, 20.0, 72.0, 76.0)


def _photo(index: int) -> Image.Image:
    """A different 96 px view of one of the two wheel photos for each index."""
    photo = astronaut() if index % 2 == 0 else grace_hopper()
    offset = 8 * (index // 2)
    crop = photo[offset : offset + 320, offset : offset + 320]
    return Image.fromarray(np.ascontiguousarray(crop)).resize(
        (SIDE, SIDE), Image.Resampling.BILINEAR
    )


def _spoiled(image: Image.Image) -> Image.Image:
    """The face over-sharpened, as a bad inpainting might leave it. The tiny random model prefers
    these faces at first (accuracy far under chance), so a rise in accuracy is learning."""
    box = tuple(int(v) for v in BOX)
    face = image.crop(box).filter(ImageFilter.UnsharpMask(4, 300))
    bad = image.copy()
    bad.paste(face, box[:2])
    return bad


def crafted_job(n_train: int = 12, n_val: int = 4) -> Job:
    job = Job.objects.create(kind=Job.Kind.CRAFT_PAIRS, status=Job.Status.SUCCEEDED)
    mask = Image.new("L", (SIDE, SIDE))
    mask.paste(255, tuple(int(v) for v in BOX))
    for i in range(n_train + n_val):
        good = _photo(i)
        FacePair.objects.create(
            crafting_job=job,
            source_key=f"file:{i}.png",
            face_index=0,
            box=list(BOX),
            seed=i,
            good_image=store_png(good),
            bad_image=store_png(_spoiled(good)),
            mask_image=store_png(mask),
            split=FacePair.Split.TRAIN if i < n_train else FacePair.Split.VAL,
        )
    return job


def _generation(dataset: Dataset, image: Image.Image, prompt: str, model: str) -> Generation:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    name = default_storage.save(f"generations/{sha[:2]}/{sha}.png", ContentFile(buffer.getvalue()))
    generation = Generation.objects.create(
        dataset=dataset,
        image=name,
        sha256=sha,
        prompt=prompt,
        model_name=model,
        width=image.width,
        height=image.height,
    )
    Face.objects.create(
        generation=generation,
        x0=BOX[0],
        y0=BOX[1],
        x1=BOX[2],
        y1=BOX[3],
        detector="test",
        confidence=0.99,
    )
    return generation


def judged_pairwise_campaign(annotator, n_prompts: int = 4) -> Campaign:
    """Two DMs per prompt, one drawing clean faces and one spoiled ones; the annotator always
    prefers the clean face, whichever side it is shown on."""
    dataset = Dataset.objects.create(name="two-dms")
    for p in range(n_prompts):
        image = _photo(20 + p)
        _generation(dataset, image, f"prompt {p}", "clean-dm")
        _generation(dataset, _spoiled(image), f"prompt {p}", "spoiled-dm")
    campaign = create_campaign(
        name="pairs", protocol="pairwise", datasets=[dataset], annotators=[annotator], overlap_k=1
    )
    while claimed := claim_items(campaign=campaign, annotator=annotator).assignments:
        item = claimed[0].item
        choice = "left" if item.left_face.generation.model_name == "clean-dm" else "right"
        submit_judgment(
            annotator=annotator, item_id=item.pk, idempotency_key=uuid.uuid4(), choice=choice
        )
    return campaign


@pytest.fixture
def weights(tmp_path, settings) -> Path:
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    settings.FACEBENCH_ARTIFACTS_DIR = tmp_path / "artifacts"
    write_tiny_imagereward(settings.FACEBENCH_WEIGHTS_DIR)
    return settings.FACEBENCH_WEIGHTS_DIR


TRAIN = {
    "max_steps": 24,
    "warmup_steps": 2,
    "batch_size": 4,
    "accumulation": 1,
    "lr": 1e-3,
    "val_every": 8,
    "checkpoint_every": 8,
    "mixed_precision": "no",
    "seed": 3,
}


def _accuracy(metric, pairs) -> float:
    from ml.metrics.imagereward import crop_face

    good = metric.score(
        [crop_face(Image.open(p.good_image.path).convert("RGB"), p.box) for p in pairs]
    )
    bad = metric.score(
        [crop_face(Image.open(p.bad_image.path).convert("RGB"), p.box) for p in pairs]
    )
    return float((good > bad).float().mean())


def test_training_job_learns_its_pairs_registers_a_version_and_chains_scoring_and_a_report(
    weights, admin_user, annotator, django_capture_on_commit_callbacks
):
    crafted = crafted_job()
    campaign = judged_pairwise_campaign(annotator)
    data = {
        **TRAIN,
        "crafting_jobs": [crafted.pk],
        "campaigns": [campaign.pk],
        "report_settings": {"n_boot": 20},
    }
    job = launch.launch("train_face_score", data, created_by=admin_user, fill_defaults=True)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        launch.run_launched_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error + job.log_tail
    assert job.progress_done == job.progress_total == 24

    records = {r.step: r.values for r in JobRecord.objects.filter(job=job)}
    assert sorted(records) == list(range(25))  # step 0 is the starting weights' validation
    assert all({"loss", "lr", "grad_norm"} <= set(records[s]) for s in range(1, 25))
    assert set(records[8]["val_accuracy"]) == {"crafted", "human"} and "val_accuracy" in records[0]
    assert np.mean([records[s]["loss"] for s in (22, 23, 24)]) < np.mean(
        [records[s]["loss"] for s in (1, 2, 3)]
    )
    assert (
        records[0]["val_accuracy"]["crafted"] <= 0.5
        and job.result["best_validation"]["crafted"] == 1.0
    )

    version = MetricVersion.objects.get(pk=job.result["metric_version"])
    assert version.label == f"Face Score (trained, job #{job.pk})" and version.level == "face"
    assert version.settings["weights_dir"] == f"job-{job.pk}/weights"
    assert version.settings["checkpoint"] == f"job-{job.pk}/weights/FaceScore/FS_model.pt"
    trained = metric_zoo.create(
        "face_score", weights_dir=job.artifact_dir / "weights"
    )  # strict load
    assert trained.weights_sha256 == version.weights_sha256
    train_pairs = list(FacePair.objects.filter(crafting_job=crafted, split="train"))
    assert _accuracy(trained, train_pairs) >= 0.9

    scoring = Job.objects.get(pk=job.result["scoring_job"])
    assert len(sent) == ScoringChunk.objects.filter(job=scoring).count() >= 1
    # the new version, and ImageReward by name since its weights are here (official Face Score's are not)
    chunks = ScoringChunk.objects.filter(job=scoring)
    assert set(chunks.values_list("metric", "metric_version")) == {
        ("face_score", version.pk),
        ("imagereward", None),
    }
    for chunk in ScoringChunk.objects.filter(job=scoring):
        with django_capture_on_commit_callbacks(execute=False) as report_sent:
            run_chunk(chunk.pk)
    scoring.refresh_from_db()
    assert scoring.status == Job.Status.SUCCEEDED, scoring.error
    faces = Face.objects.filter(generation__dataset__campaigns=campaign)
    assert (
        Score.objects.filter(metric_version=version, face__in=faces, value__isnull=False).count()
        == faces.count()
        == 8
    )
    assert len(report_sent) == 1
    report = Report.objects.get(job_id=scoring.result["report_job"])
    image_reward = MetricVersion.objects.get(metric="imagereward")
    assert set(report.metric_versions.all()) == {version, image_reward}
    assert list(report.campaigns.all()) == [campaign]
    progress.run(report.job_id, run_report_job)
    report.refresh_from_db()
    assert report.results["metrics"] and report.settings["n_boot"] == 20

    page = launch.get_kind("train_face_score").summary(job)
    assert any(label == "Report" for label, _, _ in page)


def test_human_pairs_put_the_chosen_face_first_whatever_side_it_was_shown_on(annotator, weights):
    campaign = judged_pairwise_campaign(annotator, n_prompts=3)
    pairs = human_pairs([campaign.pk])
    assert len(pairs) == 3
    for pair in pairs:
        assert Face.objects.get(pk=pair.good_face_id).generation.model_name == "clean-dm"
        assert Face.objects.get(pk=pair.bad_face_id).generation.model_name == "spoiled-dm"


def test_cancel_stops_training_at_a_step_with_a_checkpoint_and_a_rerun_resumes_it(
    weights, monkeypatch
):
    monkeypatch.setattr(progress, "CANCEL_CHECK_EVERY_S", 0.0)
    monkeypatch.setattr(progress, "RECORD_FLUSH_EVERY_S", 0.0)
    crafted = crafted_job(n_train=8, n_val=2)
    job = launch.launch(
        "train_face_score", {**TRAIN, "crafting_jobs": [crafted.pk]}, fill_defaults=True
    )

    def cancel_at_step_5(step: int, total: int) -> None:
        if step == 5:
            progress.request_cancel(job.pk)

    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    with pytest.raises(progress.JobCancelled) as stop:
        run_train_job(job.pk, observer=cancel_at_step_5)
    assert stop.value.result["steps"] == 5
    assert [p.name for p in (job.artifact_dir / "train" / "checkpoints").iterdir()] == [
        "step-0000005.pt"
    ]
    assert not MetricVersion.objects.exists()
    losses = {r.step: r.values["loss"] for r in JobRecord.objects.filter(job=job, step__gte=1)}
    assert sorted(losses) == [1, 2, 3, 4, 5]

    Job.objects.filter(pk=job.pk).update(cancel_requested=False)
    result = run_train_job(job.pk)
    assert result["steps"] == 24
    steps = list(JobRecord.objects.filter(job=job).values_list("step", flat=True))
    assert steps == sorted(set(steps)) and steps[-1] == 24
    assert {
        r.step: r.values["loss"]
        for r in JobRecord.objects.filter(job=job, step__lte=5, step__gte=1)
    } == losses


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"crafting_jobs": []}, "crafting_jobs", "Choose crafting jobs"),
        ({"lr": -1}, "lr", "positive"),
        ({"warmup_steps": 50, "max_steps": 10}, "warmup_steps", "more than max_steps"),
        ({"max_steps": "lots"}, "max_steps", "whole number"),
        ({"init": "face_score"}, "init", "Missing weight files"),
        ({"init": "version:999"}, "init", "valid choice"),
        ({"mixed_precision": "fp8"}, "mixed_precision", "valid choice"),
        ({"report_settings": {"n_boot": "many"}}, "report_settings", "Bad report setting"),
    ],
)
def test_bad_training_settings_are_refused_next_to_their_field_and_create_nothing(
    weights, changes, field, words
):
    crafted = crafted_job(n_train=2, n_val=0)
    data = {**TRAIN, "crafting_jobs": [crafted.pk], **changes}
    with pytest.raises(launch.LaunchInvalid) as refused:
        launch.launch("train_face_score", data, fill_defaults=True)
    errors = refused.value.form.errors
    assert field in errors and words in " ".join(errors[field]), errors
    assert Job.objects.count() == 1  # only the crafting job made above


def test_a_trained_version_whose_checkpoint_changed_fails_its_chunk_and_a_missing_one_is_refused(
    weights, settings
):
    from tests.ml.tiny_models import write_tiny_face_score

    folder = Path(settings.FACEBENCH_ARTIFACTS_DIR) / "job-1" / "weights"
    write_tiny_face_score(folder, seed=5)
    dataset = Dataset.objects.create(name="one")
    _generation(dataset, _photo(0), "a face", "dm")
    version = MetricVersion.objects.create(
        metric="face_score",
        level="face",
        weights_sha256="0" * 64,
        settings={"weights_dir": "job-1/weights"},
    )
    job = start_scoring_job(metrics=[], dataset=dataset, metric_versions=[version])
    (chunk,) = ScoringChunk.objects.filter(job=job)
    run_chunk(chunk.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "checkpoint changed" in job.error
    gone = MetricVersion.objects.create(
        metric="face_score", level="face", settings={"weights_dir": "job-2/weights"}
    )
    with pytest.raises(ScoringRefused, match="missing"):
        start_scoring_job(metrics=[], dataset=dataset, metric_versions=[gone])
    escaping = MetricVersion.objects.create(
        metric="face_score", level="face", settings={"weights_dir": "../../etc"}
    )
    with pytest.raises(ValueError, match="outside"):
        start_scoring_job(metrics=[], dataset=dataset, metric_versions=[escaping])
