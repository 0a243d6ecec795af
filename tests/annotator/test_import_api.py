"""The datasets/imports/jobs API: roles, a zip posted end to end (task run in-process), the schema."""

from __future__ import annotations

import io
import os

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotator.models import Dataset, Face, Generation
from annotator.tasks import detect_faces_task, import_generations_task
from jobs.models import Job
from tests import images
from tests.annotator.test_import_bad_inputs import row

pytestmark = pytest.mark.django_db


def client_for(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def good_zip() -> bytes:
    return images.make_zip(
        {
            "manifest.jsonl": images.jsonl(
                [
                    row("astronaut.png", seed=3),
                    row("flat.png"),
                    row("flat-copy.png"),
                    row("notes.png"),
                ]
            ),
            "astronaut.png": images.encode(images.astronaut()),
            "flat.png": images.encode(images.flat_image()),
            "flat-copy.png": images.encode(images.flat_image()),
            "notes.png": images.text_as_png(),
        }
    )


def upload_files() -> list[str]:
    uploads = os.path.join(settings.MEDIA_ROOT, "uploads")
    return [os.path.join(d, f) for d, _, files in os.walk(uploads) for f in files]


@pytest.fixture
def dataset(researcher) -> Dataset:
    return Dataset.objects.create(name="api", created_by=researcher)


@pytest.mark.parametrize(
    ("method", "url_name", "needs_dataset"),
    [
        ("get", "api-datasets", False),
        ("post", "api-datasets", False),
        ("get", "api-dataset", True),
        ("post", "api-dataset-imports", True),
    ],
)
def test_dataset_endpoints_refuse_anonymous_and_annotators(
    annotator, dataset: Dataset, method: str, url_name: str, needs_dataset: bool
) -> None:
    url = reverse(url_name, args=[dataset.pk] if needs_dataset else [])

    assert getattr(client_for(), method)(url).status_code in (401, 403)
    assert getattr(client_for(annotator), method)(url).status_code == 403


def test_researcher_and_admin_list_datasets_with_counts(
    researcher, admin_user, dataset: Dataset
) -> None:
    generation = Generation.objects.create(
        dataset=dataset,
        sha256="a" * 64,
        prompt="p",
        model_name="m",
        width=10,
        height=10,
        faces_detected_at="2026-01-01T00:00Z",
    )
    Generation.objects.create(
        dataset=dataset,
        sha256="b" * 64,
        prompt="p",
        model_name="m",
        width=10,
        height=10,
        faces_detected_at="2026-01-01T00:00Z",
    )
    Face.objects.create(
        generation=generation, x0=0, y0=0, x1=5, y1=5, detector="haar", confidence=0.9
    )
    job = Job.objects.create(
        kind=Job.Kind.IMPORT, config={"dataset_id": dataset.pk}, status=Job.Status.SUCCEEDED
    )

    for user in (researcher, admin_user):
        response = client_for(user).get(reverse("api-datasets"))
        assert response.status_code == 200
        (item,) = response.json()["results"]
        assert item["name"] == "api"
        assert (item["generations"], item["faces"], item["scanned"], item["no_face"]) == (
            2,
            1,
            2,
            1,
        )
        assert item["last_import"]["id"] == job.pk and item["last_import"]["status"] == "succeeded"

    detail = client_for(researcher).get(reverse("api-dataset", args=[dataset.pk])).json()
    assert detail["no_face"] == 1 and detail["last_import"]["id"] == job.pk


def test_researcher_creates_a_dataset(researcher) -> None:
    response = client_for(researcher).post(
        reverse("api-datasets"), {"name": "new one", "description": "d"}, format="json"
    )

    assert response.status_code == 201
    assert response.json()["generations"] == 0
    assert Dataset.objects.get(name="new one").created_by == researcher
    assert (
        client_for(researcher)
        .post(reverse("api-datasets"), {"name": "new one"}, format="json")
        .status_code
        == 400
    )


def test_token_authentication_works(researcher) -> None:
    token = Token.objects.create(user=researcher)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")

    assert client.get(reverse("api-datasets")).status_code == 200


def test_posting_a_zip_queues_an_import_job_that_imports_then_queues_detection(
    researcher, dataset: Dataset, django_capture_on_commit_callbacks
) -> None:
    upload = SimpleUploadedFile("gens.zip", good_zip(), content_type="application/zip")
    with django_capture_on_commit_callbacks() as queued:
        response = client_for(researcher).post(
            reverse("api-dataset-imports", args=[dataset.pk]), {"file": upload}, format="multipart"
        )

    assert response.status_code == 202, response.content
    body = response.json()
    job = Job.objects.get(pk=body["job_id"])
    assert body["url"] == f"/api/jobs/{job.pk}/" and body["page"] == reverse(
        "import-job", args=[job.pk]
    )
    assert (job.kind, job.status, job.created_by) == (
        Job.Kind.IMPORT,
        Job.Status.QUEUED,
        researcher,
    )
    assert len(queued) == 1
    assert len(upload_files()) == 1 and job.config["zip"].startswith("uploads/")
    assert not Generation.objects.exists()  # nothing is imported inside the request

    with django_capture_on_commit_callbacks() as queued_detection:
        import_generations_task(job.pk)  # what the worker runs

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert (job.result["imported"], job.result["duplicates"], job.result["rejected"]) == (2, 1, 1)
    assert {p["file"]: p["status"] for p in job.result["problems"]} == {
        "flat-copy.png": "duplicate",
        "notes.png": "rejected",
    }
    assert (job.progress_done, job.progress_total) == (4, 4)
    assert upload_files() == []  # the stored upload is removed once imported
    assert len(queued_detection) == 1
    detect_job = Job.objects.get(pk=job.result["detect_job_id"])
    assert detect_job.kind == Job.Kind.DETECT and detect_job.created_by == researcher
    assert detect_job.config["dataset_id"] == dataset.pk  # listed on the dataset's page
    assert len(detect_job.config["generation_ids"]) == 2

    detect_faces_task(detect_job.pk)
    detect_job.refresh_from_db()
    assert detect_job.result["faces"] == 1 and detect_job.result["no_face"] == 1

    job_json = client_for(researcher).get(body["url"]).json()
    assert (
        job_json["status"] == "succeeded"
        and job_json["percent"] == 100.0
        and job_json["is_finished"]
    )


def test_posting_a_manifest_with_images(researcher, dataset: Dataset) -> None:
    first, second = images.distinct_pngs(2)
    response = client_for(researcher).post(
        reverse("api-dataset-imports", args=[dataset.pk]),
        {
            "manifest": SimpleUploadedFile(
                "list.csv", b"file,prompt,model\na.png,p,m\nb.png,q,m\n"
            ),
            "images": [SimpleUploadedFile("a.png", first), SimpleUploadedFile("b.png", second)],
        },
        format="multipart",
    )
    assert response.status_code == 202, response.content

    import_generations_task(response.json()["job_id"])

    job = Job.objects.get(pk=response.json()["job_id"])
    assert job.result["imported"] == 2, job.error
    assert sorted(Generation.objects.values_list("original_filename", flat=True)) == [
        "a.png",
        "b.png",
    ]


def test_a_zip_with_a_parent_entry_fails_the_job_and_changes_nothing(
    researcher, dataset: Dataset
) -> None:
    evil = images.make_zip(
        {
            "manifest.jsonl": images.jsonl([row("a.png")]),
            "a.png": images.solid_png(),
            "../x.png": b"x",
        }
    )
    response = client_for(researcher).post(
        reverse("api-dataset-imports", args=[dataset.pk]),
        {"file": SimpleUploadedFile("evil.zip", evil)},
        format="multipart",
    )

    import_generations_task(response.json()["job_id"])

    job = Job.objects.get(pk=response.json()["job_id"])
    assert job.status == Job.Status.FAILED
    assert "climbs out of the archive (../x.png" in job.error
    assert not Generation.objects.exists() and upload_files() == []
    assert not Job.objects.filter(kind=Job.Kind.DETECT).exists()


@pytest.mark.parametrize(
    "payload",
    [{}, {"manifest": "only"}, {"file": "zip", "manifest": "both"}],
)
def test_import_needs_a_zip_or_a_manifest_with_images(
    researcher, dataset: Dataset, payload: dict
) -> None:
    files = {key: SimpleUploadedFile(f"{key}.bin", b"x") for key in payload}

    response = client_for(researcher).post(
        reverse("api-dataset-imports", args=[dataset.pk]), files, format="multipart"
    )

    assert response.status_code == 400
    assert not Job.objects.exists()


def test_an_upload_over_the_size_limit_is_refused_before_storing(
    researcher, dataset: Dataset, settings
) -> None:
    settings.FACEBENCH_MAX_UPLOAD_BYTES = 10

    response = client_for(researcher).post(
        reverse("api-dataset-imports", args=[dataset.pk]),
        {"file": SimpleUploadedFile("a.zip", good_zip())},
        format="multipart",
    )

    assert response.status_code == 400 and "the limit is 10 bytes" in response.json()["detail"]
    assert upload_files() == [] and not Job.objects.exists()


def test_job_endpoint_is_for_researchers_and_the_creator(
    researcher, annotator, annotator2, admin_user
) -> None:
    mine = Job.objects.create(
        kind=Job.Kind.IMPORT, created_by=annotator, progress_total=4, progress_done=1
    )
    url = reverse("api-job", args=[mine.pk])

    assert client_for().get(url).status_code in (401, 403)
    assert client_for(annotator2).get(url).status_code == 403
    assert client_for(annotator).get(url).json()["percent"] == 25.0
    assert client_for(researcher).get(url).status_code == 200
    assert client_for(admin_user).get(url).status_code == 200
    assert client_for(researcher).get(reverse("api-job", args=[mine.pk + 1000])).status_code == 404


def test_schema_has_no_warnings_for_these_endpoints() -> None:
    from drf_spectacular.drainage import GENERATOR_STATS
    from drf_spectacular.generators import SchemaGenerator

    from annotator.views import imports

    GENERATOR_STATS.reset()
    schema = SchemaGenerator(patterns=imports.urlpatterns).get_schema(request=None, public=True)

    assert not GENERATOR_STATS._warn_cache and not GENERATOR_STATS._error_cache, dict(
        GENERATOR_STATS._warn_cache
    )
    assert {
        "/api/datasets/",
        "/api/datasets/{id}/",
        "/api/datasets/{id}/imports/",
        "/api/jobs/{id}/",
    } <= set(schema["paths"])
    assert (
        "multipart/form-data"
        in schema["paths"]["/api/datasets/{id}/imports/"]["post"]["requestBody"]["content"]
    )


def test_schema_endpoint_serves(researcher) -> None:
    response = client_for(researcher).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert "/api/datasets/{id}/imports/" in io.BytesIO(response.content).read().decode()
