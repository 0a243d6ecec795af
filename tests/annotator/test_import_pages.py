"""Dataset, upload and job pages, and the image endpoints: who may see them and what they show."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from annotator.detection import detect_faces_for_generations
from annotator.imports import import_generations
from annotator.models import Dataset, Face, Generation
from annotator.tasks import import_generations_task
from jobs.models import Job
from tests import images
from tests.annotator.test_import_bad_inputs import row
from tests.users import PASSWORD

pytestmark = pytest.mark.django_db


def client_for(user=None) -> Client:
    client = Client()
    if user is not None:
        assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.fixture
def dataset(tmp_path, researcher) -> Dataset:
    dataset = Dataset.objects.create(name="portraits", created_by=researcher)
    folder = images.write_folder(
        tmp_path,
        {
            "astronaut.png": images.encode(images.astronaut()),
            "flat.png": images.encode(images.flat_image()),
            "manifest.jsonl": images.jsonl([row("astronaut.png"), row("flat.png")]),
        },
    )
    report = import_generations(dataset=dataset, source=folder)
    detect_faces_for_generations(generation_ids=report.generation_ids)
    return dataset


@pytest.fixture
def import_job(dataset: Dataset, researcher) -> Job:
    return Job.objects.create(
        kind=Job.Kind.IMPORT,
        config={"dataset_id": dataset.pk},
        created_by=researcher,
        status=Job.Status.SUCCEEDED,
        progress_done=3,
        progress_total=3,
        result={
            "imported": 2,
            "duplicates": 0,
            "rejected": 1,
            "problems": [
                {
                    "file": "logo.svg",
                    "row": 3,
                    "status": "rejected",
                    "reason": "logo.svg is an SVG (vector) image",
                }
            ],
        },
    )


def researcher_pages(dataset: Dataset, job: Job) -> list[str]:
    return [
        reverse("datasets"),
        reverse("dataset-detail", args=[dataset.pk]),
        reverse("dataset-upload"),
        reverse("import-job", args=[job.pk]),
    ]


def test_anonymous_is_sent_to_login_everywhere(dataset: Dataset, import_job: Job) -> None:
    face = Face.objects.get()
    urls = [
        *researcher_pages(dataset, import_job),
        reverse("generation-image", args=[face.generation_id]),
        reverse("face-crop", args=[face.pk]),
    ]
    for url in urls:
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), (
            url
        )
    response = Client().post(reverse("dataset-detect", args=[dataset.pk]))
    assert response.status_code == 302 and not Job.objects.filter(kind=Job.Kind.DETECT).exists()


def test_annotators_are_refused_the_researcher_pages(
    annotator, dataset: Dataset, import_job: Job
) -> None:
    client = client_for(annotator)
    for url in researcher_pages(dataset, import_job):
        assert client.get(url).status_code == 403, url
    assert client.post(reverse("dataset-upload"), {"dataset_name": "x"}).status_code == 403
    assert client.post(reverse("dataset-detect", args=[dataset.pk])).status_code == 403
    assert not Dataset.objects.filter(name="x").exists()


@pytest.mark.parametrize("role", ["researcher", "admin_user"])
def test_researchers_and_admins_see_every_page(
    request, role: str, dataset: Dataset, import_job: Job
) -> None:
    client = client_for(request.getfixturevalue(role))
    for url in researcher_pages(dataset, import_job):
        assert client.get(url).status_code == 200, url


def test_dataset_list_shows_counts_and_the_last_import(
    researcher, dataset: Dataset, import_job: Job
) -> None:
    page = client_for(researcher).get(reverse("datasets")).content.decode()

    assert "portraits" in page
    assert "<td>2</td>" in page and "<td>1</td>" in page  # generations; faces and no-face
    assert reverse("import-job", args=[import_job.pk]) in page and "succeeded" in page


def test_dataset_detail_shows_thumbnails_face_counts_and_the_no_face_list(
    researcher, dataset: Dataset
) -> None:
    page = client_for(researcher).get(reverse("dataset-detail", args=[dataset.pk])).content.decode()

    astronaut = Generation.objects.get(original_filename="astronaut.png")
    flat = Generation.objects.get(original_filename="flat.png")
    assert reverse("generation-image", args=[astronaut.pk]) in page
    assert "1 face" in page and "no face" in page
    no_face_section = page.split("Images with no face")[1]
    assert "flat.png" in no_face_section and "astronaut.png" not in no_face_section
    assert reverse("generation-image", args=[flat.pk]) in no_face_section


def test_job_page_shows_the_report_table(researcher, import_job: Job) -> None:
    page = client_for(researcher).get(reverse("import-job", args=[import_job.pk])).content.decode()

    assert "Imported <strong>2</strong>" in page
    assert "logo.svg is an SVG (vector) image" in page
    assert 'http-equiv="refresh"' not in page and "setTimeout(poll" not in page


def test_running_job_page_refreshes_itself_with_and_without_js(
    researcher, dataset: Dataset
) -> None:
    job = Job.objects.create(
        kind=Job.Kind.IMPORT,
        config={"dataset_id": dataset.pk},
        created_by=researcher,
        status=Job.Status.RUNNING,
        progress_done=5,
        progress_total=20,
    )

    page = client_for(researcher).get(reverse("import-job", args=[job.pk])).content.decode()

    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in page
    assert f'data-status-url="/api/jobs/{job.pk}/"' in page and "setTimeout(poll, 1000)" in page
    assert '5</span>/<span id="job-total">20' in page and "width: 25.0%" in page


def test_job_creator_who_is_not_a_researcher_may_see_their_job(annotator, annotator2) -> None:
    job = Job.objects.create(kind=Job.Kind.IMPORT, created_by=annotator)

    assert client_for(annotator).get(reverse("import-job", args=[job.pk])).status_code == 200
    assert client_for(annotator2).get(reverse("import-job", args=[job.pk])).status_code == 403


def test_upload_page_posts_a_zip_into_a_new_dataset_and_redirects_to_the_job(
    researcher, django_capture_on_commit_callbacks
) -> None:
    upload = images.make_zip(
        {"manifest.jsonl": images.jsonl([row("a.png")]), "a.png": images.solid_png()}
    )

    with django_capture_on_commit_callbacks() as queued:
        response = client_for(researcher).post(
            reverse("dataset-upload"),
            {"dataset_name": " fresh ", "file": SimpleUploadedFile("up.zip", upload)},
        )

    job = Job.objects.get(kind=Job.Kind.IMPORT)
    assert response.status_code == 302 and response["Location"] == reverse(
        "import-job", args=[job.pk]
    )
    assert len(queued) == 1
    dataset = Dataset.objects.get(name="fresh")
    assert dataset.created_by == researcher and job.config["dataset_id"] == dataset.pk
    import_generations_task(job.pk)
    assert dataset.generations.count() == 1


def test_upload_page_posts_a_manifest_and_several_images(researcher, dataset: Dataset) -> None:
    first, second = images.distinct_pngs(2)
    response = client_for(researcher).post(
        reverse("dataset-upload"),
        {
            "dataset_name": "portraits",
            "manifest": SimpleUploadedFile("m.jsonl", images.jsonl([row("a.png"), row("b.png")])),
            "images": [SimpleUploadedFile("a.png", first), SimpleUploadedFile("b.png", second)],
        },
    )
    assert response.status_code == 302

    job = Job.objects.get(kind=Job.Kind.IMPORT)
    assert len(job.config["images"]) == 2 and job.config["dataset_id"] == dataset.pk
    import_generations_task(job.pk)
    assert dataset.generations.count() == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dataset_name": "x"}, "Upload either one .zip, or a manifest and its images."),
        ({"dataset_name": "x", "file": ("notes.txt", b"hi")}, "This must be a .zip file."),
        (
            {"dataset_name": "x", "manifest": ("m.jsonl", b"{}")},
            "Add the images the manifest lists.",
        ),
    ],
)
def test_upload_form_errors_are_shown_and_nothing_is_created(
    researcher, fields: dict, message: str
) -> None:
    data = {k: SimpleUploadedFile(*v) if isinstance(v, tuple) else v for k, v in fields.items()}

    response = client_for(researcher).post(reverse("dataset-upload"), data)

    assert response.status_code == 200 and message in response.content.decode()
    assert not Dataset.objects.filter(name="x").exists() and not Job.objects.exists()


def test_upload_over_the_size_limit_creates_no_dataset(researcher, settings) -> None:
    settings.FACEBENCH_MAX_UPLOAD_BYTES = 10

    response = client_for(researcher).post(
        reverse("dataset-upload"),
        {"dataset_name": "x", "file": SimpleUploadedFile("a.zip", b"x" * 100)},
    )

    assert "the limit is 10 bytes" in response.content.decode()
    assert not Dataset.objects.filter(name="x").exists() and not Job.objects.exists()


def test_upload_page_preselects_an_existing_dataset(researcher, dataset: Dataset) -> None:
    page = (
        client_for(researcher)
        .get(reverse("dataset-upload") + f"?dataset={dataset.pk}")
        .content.decode()
    )
    assert 'value="portraits"' in page


def test_detect_again_queues_a_detection_job(researcher, dataset: Dataset) -> None:
    response = client_for(researcher).post(reverse("dataset-detect", args=[dataset.pk]))

    job = Job.objects.get(kind=Job.Kind.DETECT)
    assert response["Location"] == reverse("import-job", args=[job.pk])
    assert job.config == {"detector": "auto", "dataset_id": dataset.pk}


@pytest.mark.parametrize("role", ["researcher", "admin_user"])
def test_researchers_get_the_stored_png(request, role: str, dataset: Dataset) -> None:
    astronaut = Generation.objects.get(original_filename="astronaut.png")

    response = client_for(request.getfixturevalue(role)).get(
        reverse("generation-image", args=[astronaut.pk])
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["Cache-Control"] == "private, max-age=3600"
    served = np.asarray(Image.open(io.BytesIO(b"".join(response.streaming_content))))
    assert np.array_equal(served, images.astronaut())


@pytest.mark.parametrize("role", ["researcher", "admin_user"])
def test_face_crop_is_the_box_with_a_quarter_margin(request, role: str, dataset: Dataset) -> None:
    face = Face.objects.get()

    response = client_for(request.getfixturevalue(role)).get(reverse("face-crop", args=[face.pk]))

    assert response.status_code == 200 and response["Cache-Control"] == "private, max-age=3600"
    crop = Image.open(io.BytesIO(response.content))
    width, height = face.x1 - face.x0, face.y1 - face.y0
    assert crop.format == "PNG"
    assert abs(crop.width - 1.5 * width) <= 2 and abs(crop.height - 1.5 * height) <= 2
    expected = images.astronaut()[int(face.y0 - 0.25 * height) :, int(face.x0 - 0.25 * width) :][
        0, 0
    ]
    assert tuple(crop.getpixel((0, 0))) == tuple(expected)


def test_large_face_crops_are_bounded_to_512(researcher, tmp_path) -> None:
    dataset = Dataset.objects.create(name="big")
    big = np.kron(images.astronaut(), np.ones((6, 6, 1), dtype=np.uint8))
    folder = images.write_folder(
        tmp_path, {"big.png": images.encode(big), "manifest.jsonl": images.jsonl([row("big.png")])}
    )
    import_generations(dataset=dataset, source=folder)
    generation = Generation.objects.get(dataset=dataset)
    face = Face.objects.create(
        generation=generation, x0=1000, y0=300, x1=1700, y1=1000, detector="haar", confidence=1
    )

    crop = Image.open(
        io.BytesIO(client_for(researcher).get(reverse("face-crop", args=[face.pk])).content)
    )

    assert max(crop.size) == 512


def test_missing_images_are_404(researcher, dataset: Dataset) -> None:
    face = Face.objects.get()
    face.generation.image.storage.delete(face.generation.image.name)
    client = client_for(researcher)

    assert client.get(reverse("generation-image", args=[face.generation_id])).status_code == 404
    assert client.get(reverse("face-crop", args=[face.pk])).status_code == 404
    assert client.get(reverse("generation-image", args=[999_999])).status_code == 404


def test_annotators_cannot_fetch_images_by_id(annotator, dataset: Dataset) -> None:
    face = Face.objects.get()
    client = client_for(annotator)
    assert client.get(reverse("generation-image", args=[face.generation_id])).status_code == 403
    assert client.get(reverse("face-crop", args=[face.pk])).status_code == 403
