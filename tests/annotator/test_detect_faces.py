from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command

from annotator.detection import detect_faces_for_generations, start_detection_job
from annotator.imports import import_generations
from annotator.models import Campaign, Dataset, Face, Generation, Item
from annotator.tasks import detect_faces_task
from jobs.models import Job
from tests import images
from tests.annotator.test_import_bad_inputs import row

pytestmark = pytest.mark.django_db


@pytest.fixture
def photos(tmp_path: Path) -> Dataset:
    dataset = Dataset.objects.create(name="photos")
    folder = images.write_folder(
        tmp_path,
        {
            "astronaut.png": images.encode(images.astronaut()),
            "grace_hopper.jpg": images.encode(images.grace_hopper(), "JPEG", quality=95),
            "flat.png": images.encode(images.flat_image()),
            "noise.png": images.encode(images.noise_image()),
            "manifest.jsonl": images.jsonl(
                [row("astronaut.png"), row("grace_hopper.jpg"), row("flat.png"), row("noise.png")]
            ),
        },
    )
    assert import_generations(dataset=dataset, source=folder).imported == 4
    return dataset


def _ids(dataset: Dataset) -> list[int]:
    return list(dataset.generations.values_list("pk", flat=True))


def test_faces_are_found_in_the_portraits_and_no_face_is_counted(photos: Dataset) -> None:
    counts = detect_faces_for_generations(generation_ids=_ids(photos))

    assert counts == {
        "generations": 4,
        "faces": 2,
        "no_face": 2,
        "unreadable": 0,
        "detector": "haar",
    }
    astronaut = Generation.objects.get(original_filename="astronaut.png")
    (face,) = astronaut.faces.all()
    x0, y0, x1, y1 = images.ASTRONAUT_FACE_CORE
    assert face.x0 <= x0 and face.y0 <= y0 and face.x1 >= x1 and face.y1 >= y1
    assert face.detector == "haar" and 0.5 < face.confidence <= 1 and face.landmarks is None
    assert Generation.objects.get(original_filename="grace_hopper.jpg").faces.count() == 1
    assert not Face.objects.filter(
        generation__original_filename__in=["flat.png", "noise.png"]
    ).exists()
    assert all(g.faces_detected_at and g.face_detector == "haar" for g in photos.generations.all())


def test_running_detection_twice_changes_nothing(photos: Dataset) -> None:
    detect_faces_for_generations(generation_ids=_ids(photos))
    before = list(
        Face.objects.values_list("pk", "generation_id", "x0", "y0", "x1", "y1", "confidence")
    )

    counts = detect_faces_for_generations(generation_ids=_ids(photos), batch_size=3)

    assert counts["faces"] == 2
    assert (
        list(Face.objects.values_list("pk", "generation_id", "x0", "y0", "x1", "y1", "confidence"))
        == before
    )


def test_a_stale_face_is_removed_unless_a_campaign_item_uses_it(photos: Dataset) -> None:
    flat = Generation.objects.get(original_filename="flat.png")
    noise = Generation.objects.get(original_filename="noise.png")
    stale = Face.objects.create(
        generation=flat, x0=1, y0=1, x1=50, y1=50, detector="haar", confidence=0.9
    )
    used = Face.objects.create(
        generation=noise, x0=1, y0=1, x1=50, y1=50, detector="haar", confidence=0.9
    )
    other_detector = Face.objects.create(
        generation=flat, x0=1, y0=1, x1=50, y1=50, detector="retinaface", confidence=0.9
    )
    campaign = Campaign.objects.create(name="c", protocol=Campaign.Protocol.LIKERT)
    Item.objects.create(campaign=campaign, face=used, judgments_wanted=3)

    detect_faces_for_generations(generation_ids=[flat.pk, noise.pk])

    assert not Face.objects.filter(pk=stale.pk).exists()
    assert Face.objects.filter(pk=used.pk).exists()
    assert Face.objects.filter(pk=other_detector.pk).exists()


def test_a_missing_image_file_is_counted_not_fatal(photos: Dataset) -> None:
    broken = Generation.objects.get(original_filename="flat.png")
    broken.image.storage.delete(broken.image.name)

    counts = detect_faces_for_generations(generation_ids=_ids(photos))

    assert counts["unreadable"] == 1 and counts["generations"] == 3


def test_detection_job_runs_through_the_task_and_records_progress(
    photos: Dataset, researcher, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        job = start_detection_job(dataset=photos, created_by=researcher)
    assert job.kind == Job.Kind.DETECT and job.config == {
        "detector": "auto",  # resolved by the worker: no RetinaFace weights here, so Haar
        "dataset_id": photos.pk,
    }
    assert len(callbacks) == 1  # the enqueue waits for the commit

    detect_faces_task(job.pk)  # what the worker would run

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert (job.progress_done, job.progress_total, job.percent) == (4, 4, 100.0)
    assert job.result == {
        "generations": 4,
        "faces": 2,
        "no_face": 2,
        "unreadable": 0,
        "detector": "haar",
    }
    assert "2 with no face" in job.log_tail

    detect_faces_task(job.pk)  # a redelivered message does nothing
    assert Face.objects.count() == 2


def test_detection_job_for_chosen_generations(photos: Dataset) -> None:
    astronaut = Generation.objects.get(original_filename="astronaut.png")
    job = start_detection_job(generation_ids=[astronaut.pk, astronaut.pk])

    detect_faces_task(job.pk)

    job.refresh_from_db()
    assert job.config["generation_ids"] == [astronaut.pk]
    assert job.result["generations"] == 1 and job.result["faces"] == 1


def test_unknown_detector_fails_the_job_with_the_known_names(photos: Dataset) -> None:
    job = start_detection_job(dataset=photos, detector_name="nope")

    detect_faces_task(job.pk)

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "known detectors: haar" in job.error


def test_detect_faces_command(photos: Dataset, capsys) -> None:
    call_command("detect_faces", dataset="photos")

    assert (
        "Faces: 2 in 4 generations (2 with no face, 0 unreadable; haar)" in capsys.readouterr().out
    )
    assert Face.objects.count() == 2


def test_auto_detector_is_retinaface_when_its_weights_are_present_else_haar(settings, tmp_path):
    from annotator.detection import get_detector, resolve_detector_name
    from tests.ml.tiny_models import write_tiny_retinaface

    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    assert resolve_detector_name("auto") == "haar"
    write_tiny_retinaface(settings.FACEBENCH_WEIGHTS_DIR)
    assert resolve_detector_name("auto") == "retinaface_mobilenet"
    assert get_detector("auto").name == "retinaface_mobilenet"
    assert resolve_detector_name("haar") == "haar"
