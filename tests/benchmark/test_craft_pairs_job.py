"""Pair crafting jobs on a tiny inpainting pipeline: pairs with provenance, reruns, cancel, refusals."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotator.assignment import claim_items, submit_judgment
from annotator.campaigns import create_campaign
from annotator.detection import detect_faces_for_generations
from annotator.models import Face
from benchmark import launch
from benchmark.models import FacePair, MetricVersion, Score
from benchmark.pairs import run_craft_job, split_of
from jobs import progress
from jobs.models import Job
from ml.pairs import pair_seed
from ml.sd import describe_model
from tests.factories import import_photos
from tests.images import astronaut, encode, grace_hopper
from tests.ml.tiny_sd import write_tiny_sd

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_sd(folder / "tiny-inpaint", inpaint=True)
    write_tiny_sd(folder / "tiny-text2img", inpaint=False)
    return folder


@pytest.fixture
def roots(tmp_path, settings, models_dir) -> Path:
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    settings.FACEBENCH_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.FACEBENCH_INPUT_DIRS = [models_dir, tmp_path / "photos"]
    settings.FACEBENCH_WEIGHTS_DIR.mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "astronaut.png").write_bytes(encode(astronaut()))
    (photos / "people").mkdir()
    (photos / "people" / "grace_hopper.png").write_bytes(encode(grace_hopper()))
    (photos / "notes.txt").write_text("not an image")
    return photos


def _data(models_dir: Path, **changes) -> dict:
    data = {
        "source": "folder",
        "folder": "",
        "detector": "haar",
        "model": str(models_dir / "tiny-inpaint"),
        "steps": 2,
        "resolution": 64,
        "batch_size": 1,
        "min_confidence": 0.0,
        "mask__min_face_px": 32,
        "val_fraction": 0.5,
        "seed": 7,
    }
    data.update(changes)
    return data


def _open(field) -> Image.Image:
    with field.open("rb") as fh:
        return Image.open(io.BytesIO(fh.read())).copy()


def _launch(data: dict, user=None) -> Job:
    return launch.launch("craft_pairs", data, created_by=user, fill_defaults=True)


def test_folder_job_crafts_one_pair_per_face_with_provenance_and_only_the_face_changed(
    roots, models_dir, admin_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as sent:
        job = _launch(_data(models_dir, folder=str(roots)), admin_user)
    assert len(sent) == 1 and job.status == Job.Status.QUEUED
    launch.run_launched_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error + job.log_tail
    pairs = list(FacePair.objects.filter(crafting_job=job).order_by("source_key"))
    assert [p.source_key for p in pairs] == ["file:astronaut.png", "file:people/grace_hopper.png"]
    assert job.result["pairs"] == 2 and job.result["faces"] == 2 and job.result["crafted"] == 2
    assert (job.progress_done, job.progress_total) == (2, 2)
    model = describe_model(models_dir / "tiny-inpaint")
    for pair in pairs:
        good, bad, mask = _open(pair.good_image), _open(pair.bad_image), _open(pair.mask_image)
        assert good.size == bad.size == mask.size and mask.mode == "L"
        outside = np.asarray(mask) == 0
        assert outside.any() and (~outside).any()
        assert np.array_equal(np.asarray(good)[outside], np.asarray(bad)[outside])
        assert not np.array_equal(np.asarray(good)[~outside], np.asarray(bad)[~outside])
        assert pair.seed == pair_seed(7, pair.source_key, pair.face_index)
        assert pair.split == split_of(7, pair.source_key, 0.5)
        assert pair.provenance["model"]["sha256"] == model["sha256"]
        assert (
            pair.provenance["settings"]["seed"] == 7 and pair.provenance["settings"]["steps"] == 2
        )
        assert pair.provenance["detector"] == "haar" and pair.source_generation is None
        assert pair.prompt == "a photo of a face"  # photos have no prompt of their own
    original = np.asarray(_open(pairs[0].good_image))
    assert np.array_equal(original, astronaut())
    assert "2 faces" in job.log_tail


def test_a_redelivered_job_adds_nothing_and_a_lost_pair_is_crafted_again_identically(
    roots, models_dir
):
    job = _launch(_data(models_dir, folder=str(roots)))
    launch.run_launched_job(job.pk)
    before = {
        p.source_key: (p.pk, p.good_image.name, p.bad_image.name, p.mask_image.name)
        for p in FacePair.objects.all()
    }
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.RUNNING
    )  # as a redelivered message finds it
    result = run_craft_job(job.pk)
    assert result["already_done"] == 2 and result["crafted"] == 0
    after = {
        p.source_key: (p.pk, p.good_image.name, p.bad_image.name, p.mask_image.name)
        for p in FacePair.objects.all()
    }
    assert after == before
    FacePair.objects.filter(source_key="file:astronaut.png").delete()
    result = run_craft_job(job.pk)
    assert result["crafted"] == 1 and result["already_done"] == 1 and result["pairs"] == 2
    again = {
        p.source_key: (p.good_image.name, p.bad_image.name, p.mask_image.name)
        for p in FacePair.objects.all()
    }
    assert again == {
        key: names[1:] for key, names in before.items()
    }  # same bytes, same content address


def test_a_second_job_with_the_same_seed_gives_the_same_pairs_and_another_seed_does_not(
    roots, models_dir
):
    first, second, other = (
        _launch(_data(models_dir, folder=str(roots))),
        _launch(_data(models_dir, folder=str(roots))),
        _launch(_data(models_dir, folder=str(roots), seed=8)),
    )
    for job in (first, second, other):
        launch.run_launched_job(job.pk)

    def bad_images(job: Job) -> dict[str, str]:
        return dict(
            FacePair.objects.filter(crafting_job=job).values_list("source_key", "bad_image")
        )

    assert bad_images(first) == bad_images(second)
    assert FacePair.objects.filter(crafting_job=second).count() == 2
    assert set(bad_images(other).values()).isdisjoint(bad_images(first).values())


def test_cancel_stops_the_job_between_batches_and_keeps_the_pairs_made(
    roots, models_dir, monkeypatch
):
    monkeypatch.setattr(progress, "CANCEL_CHECK_EVERY_S", 0.0)
    job = _launch(_data(models_dir, folder=str(roots)))
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)

    def cancel_after_first_pair(done: int, total: int) -> None:
        if done >= 1:
            progress.request_cancel(job.pk)

    with pytest.raises(progress.JobCancelled) as stop:
        run_craft_job(job.pk, observer=cancel_after_first_pair)
    assert stop.value.result["pairs"] == FacePair.objects.filter(crafting_job=job).count() == 1


def test_a_queued_job_that_is_cancelled_never_runs(roots, models_dir):
    job = _launch(_data(models_dir, folder=str(roots)))
    assert launch.cancel(job)
    launch.run_launched_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and not FacePair.objects.exists()
    assert not launch.cancel(job)  # finished: nothing to cancel


@pytest.fixture
def photo_dataset(roots, tmp_path):
    dataset = import_photos(tmp_path / "upload")
    detect_faces_for_generations(
        generation_ids=list(dataset.generations.values_list("id", flat=True)), detector_name="haar"
    )
    return dataset


def test_dataset_job_uses_the_stored_faces_and_the_face_score_filter(photo_dataset, models_dir):
    faces = list(Face.objects.filter(generation__dataset=photo_dataset).order_by("id"))
    assert len(faces) >= 2
    version = MetricVersion.objects.create(metric="face_score", level="face")
    for i, face in enumerate(faces):
        Score.objects.create(metric_version=version, face=face, value=1.0 if i == 0 else -1.0)
    job = _launch(_data(models_dir, source="dataset", dataset=photo_dataset.pk, min_face_score=0.5))
    assert job.config["face_score_version"] == version.pk
    launch.run_launched_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    (pair,) = FacePair.objects.filter(crafting_job=job)
    assert pair.source_face == faces[0] and pair.source_generation == faces[0].generation
    assert pair.source_key == f"generation:{faces[0].generation_id}"
    assert pair.prompt == faces[0].generation.prompt  # prompt_source "source"
    assert pair.box == list(faces[0].box) and pair.provenance["source_face"] == faces[0].pk


def test_dataset_job_filters_faces_by_their_mean_human_rating(photo_dataset, models_dir, annotator):
    campaign = create_campaign(
        name="likert",
        protocol="likert",
        datasets=[photo_dataset],
        annotators=[annotator],
        overlap_k=1,
    )
    rated = {}
    while claim := claim_items(campaign=campaign, annotator=annotator).assignments:
        item = claim[0].item
        rating = 5 if not rated else 2
        submit_judgment(
            annotator=annotator,
            item_id=item.pk,
            idempotency_key=uuid.uuid4(),
            rating=rating,
        )
        rated[item.face_id] = rating
    job = _launch(_data(models_dir, source="dataset", dataset=photo_dataset.pk, min_human_rating=4))
    launch.run_launched_job(job.pk)
    crafted = set(
        FacePair.objects.filter(crafting_job=job).values_list("source_face_id", flat=True)
    )
    assert crafted == {face for face, rating in rated.items() if rating == 5}


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"folder": "/etc"}, "folder", "outside the folders"),
        ({"folder": "../../../../../../etc"}, "folder", "outside the folders"),
        ({"model": "/etc/passwd"}, "model", "outside the folders"),
        ({"model": "MODELS/tiny-text2img"}, "model", "inpainting model"),
        ({"model": "MODELS/missing"}, "model", "does not exist"),
        ({"strength": 1.5}, "strength", "strength"),
        ({"mask__margin": 5}, "mask__margin", "margin"),
        ({"steps": "many"}, "steps", "whole number"),
        ({"source": "dataset"}, "dataset", "Choose the dataset"),
        ({"min_margin": 0.1}, "min_margin", "Face Score weights"),
        ({"detector": "nonsense"}, "detector", "Unknown detector"),
    ],
)
def test_bad_settings_are_refused_next_to_their_field_and_create_nothing(
    roots, models_dir, changes, field, words
):
    changes = {
        k: v.replace("MODELS", str(models_dir)) if isinstance(v, str) else v
        for k, v in changes.items()
    }
    data = _data(models_dir, **{"folder": str(roots), **changes})
    with pytest.raises(launch.LaunchInvalid) as refused:
        _launch(data)
    errors = refused.value.form.errors
    assert field in errors and words in " ".join(errors[field]), errors
    assert not Job.objects.exists() and not FacePair.objects.exists()


def test_a_symlink_out_of_the_allowed_folders_is_refused(roots, models_dir, settings):
    link = Path(settings.FACEBENCH_WEIGHTS_DIR) / "escape"
    link.symlink_to("/etc")
    with pytest.raises(launch.LaunchInvalid) as refused:
        _launch(_data(models_dir, folder=str(link)))
    assert "outside the folders" in " ".join(refused.value.form.errors["folder"])


def test_the_margin_filter_keeps_pairs_by_the_current_face_score_and_stores_both_scores(
    roots, models_dir, settings
):
    from ml import metrics as metric_zoo
    from ml.metrics.imagereward import crop_face
    from tests.ml.tiny_models import write_tiny_face_score

    write_tiny_face_score(settings.FACEBENCH_WEIGHTS_DIR)
    keep_all = _launch(_data(models_dir, folder=str(roots), min_margin=-1000))
    drop_all = _launch(_data(models_dir, folder=str(roots), min_margin=1000))
    for job in (keep_all, drop_all):
        launch.run_launched_job(job.pk)
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED, job.error
    assert (keep_all.result["pairs"], keep_all.result["filtered_by_margin"]) == (2, 0)
    assert (drop_all.result["pairs"], drop_all.result["filtered_by_margin"]) == (0, 2)
    face_score = metric_zoo.create("face_score", weights_dir=settings.FACEBENCH_WEIGHTS_DIR)
    for pair in FacePair.objects.filter(crafting_job=keep_all):
        good, bad = (
            crop_face(_open(field), pair.box) for field in (pair.good_image, pair.bad_image)
        )
        assert face_score.score([good, bad]).tolist() == pytest.approx(
            [pair.fs_good, pair.fs_bad], abs=1e-5
        )
        assert pair.fs_good != pair.fs_bad
