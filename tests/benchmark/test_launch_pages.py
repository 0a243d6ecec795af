"""Launch pages, the live job page and their API: who may do what, errors by field, artifacts."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from PIL import Image
from rest_framework.test import APIClient

from benchmark.launch_views import job_records, svg_line_chart
from benchmark.models import FacePair
from benchmark.pairs import store_png
from benchmark.training import TrainFaceScoreForm
from jobs import progress
from jobs.models import Job, JobRecord
from tests.ml.tiny_models import write_tiny_imagereward

pytestmark = pytest.mark.django_db


@pytest.fixture
def weights(tmp_path, settings):
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    settings.FACEBENCH_ARTIFACTS_DIR = tmp_path / "artifacts"
    write_tiny_imagereward(settings.FACEBENCH_WEIGHTS_DIR)
    return settings.FACEBENCH_WEIGHTS_DIR


@pytest.fixture
def crafted(weights) -> Job:
    job = Job.objects.create(kind=Job.Kind.CRAFT_PAIRS, status=Job.Status.SUCCEEDED)
    image = store_png(Image.new("RGB", (64, 64), (120, 90, 60)))
    for i in range(3):
        FacePair.objects.create(
            crafting_job=job,
            source_key=f"file:{i}.png",
            face_index=0,
            box=[8, 8, 56, 56],
            seed=i,
            good_image=image,
            bad_image=image,
            mask_image=image,
        )
    return job


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _posted_form(crafted: Job, **changes) -> dict:
    """What the training page's form posts: every field, as the browser encodes it."""
    data = {
        **TrainFaceScoreForm.defaults(),
        "crafting_jobs": [crafted.pk],
        "max_steps": 4,
        "warmup_steps": 1,
        **changes,
    }
    posted = {}
    for name, value in data.items():
        if isinstance(value, bool):
            if value:
                posted[name] = "on"
        elif isinstance(value, dict):
            posted[name] = json.dumps(value)
        else:
            posted[name] = value
    return posted


def test_launch_index_lists_every_kind_and_each_form_shows_defaults_and_help(admin_user, weights):
    page = _client(admin_user).get("/launch/").content.decode()
    assert 'href="/launch/craft_pairs/"' in page and 'href="/launch/train_face_score/"' in page
    form = _client(admin_user).get("/launch/craft_pairs/").content.decode()
    assert 'name="strength"' in form and 'value="0.75"' in form and 'name="mask__margin"' in form
    assert "How much of the face the model repaints" in form
    train = _client(admin_user).get("/launch/train_face_score/").content.decode()
    assert (
        'name="fix_rate"' in train and 'value="0.7"' in train and "Optimizer steps in all." in train
    )
    assert _client(admin_user).get("/launch/no_such_kind/").status_code == 404


def test_a_bad_form_shows_errors_next_to_their_fields_and_queues_nothing(
    admin_user, crafted, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as sent:
        response = _client(admin_user).post(
            "/launch/train_face_score/", _posted_form(crafted, lr="-1", init="face_score")
        )
    assert response.status_code == 200 and not sent
    page = response.content.decode()
    lr_field = re.search(r'<p id="field-lr">.*?</p>', page, re.S).group(0)
    assert "lr: must be a positive number" in lr_field
    init_field = re.search(r'<p id="field-init">.*?</p>', page, re.S).group(0)
    assert "Missing weight files" in init_field
    assert Job.objects.filter(kind=Job.Kind.TRAIN_FACE_SCORE).count() == 0


def test_an_admin_launches_from_the_page_and_lands_on_the_job(
    admin_user, crafted, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as sent:
        response = _client(admin_user).post(
            "/launch/train_face_score/", _posted_form(crafted, lr="0.001")
        )
    job = Job.objects.get(kind=Job.Kind.TRAIN_FACE_SCORE)
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert len(sent) == 1
    assert (
        job.created_by == admin_user
        and job.config["train"]["lr"] == 0.001
        and job.config["train"]["max_steps"] == 4
    )
    assert job.config["crafting_jobs"] == [crafted.pk] and job.config["init"] == "imagereward"
    again = _client(admin_user).get(f"/launch/train_face_score/?from={job.pk}").content.decode()
    assert 'name="max_steps" value="4"' in again


@pytest.mark.parametrize("role", ["researcher", "annotator"])
def test_only_admins_launch_or_cancel(role, request, crafted, django_capture_on_commit_callbacks):
    user = request.getfixturevalue(role)
    job = Job.objects.create(kind=Job.Kind.TRAIN_FACE_SCORE, status=Job.Status.RUNNING)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert (
            _client(user).post("/launch/train_face_score/", _posted_form(crafted)).status_code
            == 403
        )
        assert (
            _api(user)
            .post("/api/launch/train_face_score/", {"crafting_jobs": [crafted.pk]}, format="json")
            .status_code
            == 403
        )
    assert _client(user).post(f"/jobs/{job.pk}/cancel/").status_code == 403
    assert _api(user).post(f"/api/jobs/{job.pk}/cancel/").status_code == 403
    job.refresh_from_db()
    assert not sent and not job.cancel_requested and Job.objects.count() == 2


def test_a_researcher_reads_the_job_page_curves_log_and_artifacts(researcher, crafted):
    job = Job.objects.create(
        kind=Job.Kind.TRAIN_FACE_SCORE,
        status=Job.Status.RUNNING,
        progress_total=3,
        log_tail="step 2: loss 0.5\n",
    )
    recorder = progress.StepRecorder(job.pk)
    for step, loss in ((1, 0.9), (2, 0.5), (3, 0.3)):
        recorder({"step": step, "loss": loss, "lr": 1e-5, "grad_norm": 2.0})
    recorder({"step": 3, "val_accuracy": {"crafted": 0.75, "human": 0.5}})
    recorder.flush()
    (job.artifact_dir / "train").mkdir(parents=True)
    (job.artifact_dir / "train" / "FS_model.pt").write_bytes(b"weights")
    (job.artifact_dir / "train" / ".facebench-sha256.json").write_text("{}")  # bookkeeping
    page = _client(researcher).get(f"/jobs/{job.pk}/").content.decode()
    assert ".facebench-sha256.json" not in page and "7\xa0bytes" in page
    assert page.count("<svg") == 4  # loss, validation accuracy, learning rate, gradient norm
    assert "crafted: 0.75" in page and "human: 0.5" in page and "step 2: loss 0.5" in page
    assert f'href="/jobs/{job.pk}/artifacts/train/FS_model.pt"' in page
    assert "Cancel</button>" not in page and "Launch again" not in page
    download = _client(researcher).get(f"/jobs/{job.pk}/artifacts/train/FS_model.pt")
    assert download.status_code == 200 and b"".join(download.streaming_content) == b"weights"
    state = _api(researcher).get(f"/api/jobs/{job.pk}/progress/").json()
    assert [r["step"] for r in state["records"]] == [1, 2, 3] and state["last_step"] == 3
    assert (
        state["records"][2]["val_accuracy/crafted"] == 0.75 and state["records"][0]["loss"] == 0.9
    )
    assert state["artifacts"] == [
        {
            "path": "train/FS_model.pt",
            "bytes": 7,
            "url": f"/jobs/{job.pk}/artifacts/train/FS_model.pt",
        }
    ]
    charts = _client(researcher).get(f"/jobs/{job.pk}/?part=charts").content.decode()
    assert charts.startswith('<div id="job-charts">') and charts.count("<svg") == 4


def test_the_crafting_job_page_shows_its_pairs(researcher, crafted):
    page = _client(researcher).get(f"/jobs/{crafted.pk}/").content.decode()
    pair = FacePair.objects.filter(crafting_job=crafted).first()
    assert "Pairs (3)" in page and f'src="/pairs/{pair.pk}/bad.png"' in page
    image = _client(researcher).get(f"/pairs/{pair.pk}/mask.png")
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    assert _client(researcher).get(f"/pairs/{pair.pk}/other.png").status_code == 404


def test_artifact_downloads_never_leave_the_jobs_folder(researcher, weights, tmp_path):
    job = Job.objects.create(kind=Job.Kind.TRAIN_FACE_SCORE)
    other = Job.objects.create(kind=Job.Kind.TRAIN_FACE_SCORE)
    job.artifact_dir.mkdir(parents=True)
    other.artifact_dir.mkdir(parents=True)
    (other.artifact_dir / "secret.txt").write_text("other job")
    (tmp_path / "outside.txt").write_text("outside")
    (job.artifact_dir / "link.txt").symlink_to(tmp_path / "outside.txt")
    client = _client(researcher)
    for relative in (
        f"../job-{other.pk}/secret.txt",
        "%2e%2e/" + f"job-{other.pk}/secret.txt",
        "link.txt",
        "/etc/passwd",
        "",
        "missing.txt",
    ):
        response = client.get(f"/jobs/{job.pk}/artifacts/{relative}")
        assert response.status_code == 404, relative
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "link.txt" not in page  # symlinks are not listed either


def test_cancel_from_the_page_stops_a_queued_job_at_once_and_flags_a_running_one(admin_user):
    queued = Job.objects.create(kind=Job.Kind.CRAFT_PAIRS)
    running = Job.objects.create(kind=Job.Kind.TRAIN_FACE_SCORE, status=Job.Status.RUNNING)
    client = _client(admin_user)
    assert client.post(f"/jobs/{queued.pk}/cancel/").status_code == 302
    assert client.post(f"/jobs/{running.pk}/cancel/").status_code == 302
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == Job.Status.CANCELLED and queued.finished_at is not None
    assert running.status == Job.Status.RUNNING and running.cancel_requested
    page = client.get(f"/jobs/{running.pk}/").content.decode()
    assert "(cancel requested)" in page and "Cancel</button>" in page


def test_api_launch_fills_defaults_reports_errors_by_field_and_cancels(
    admin_user, crafted, django_capture_on_commit_callbacks
):
    api = _api(admin_user)
    kinds = {k["kind"]: k for k in api.get("/api/launch/").json()}
    fields = {f["name"]: f for f in kinds["train_face_score"]["fields"]}
    assert fields["lr"]["default"] == 1e-5 and fields["mixed_precision"]["choices"] == [
        "bf16",
        "no",
    ]
    assert fields["max_steps"]["help"] == "Optimizer steps in all."
    bad = api.post(
        "/api/launch/train_face_score/",
        {"crafting_jobs": [crafted.pk], "fix_rate": 3},
        format="json",
    )
    assert bad.status_code == 400 and "fix_rate" in bad.json()["errors"]
    assert Job.objects.filter(kind=Job.Kind.TRAIN_FACE_SCORE).count() == 0
    with django_capture_on_commit_callbacks(execute=False) as sent:
        ok = api.post(
            "/api/launch/train_face_score/",
            {"crafting_jobs": [crafted.pk], "max_steps": 8, "warmup_steps": 2},
            format="json",
        )
    assert ok.status_code == 202 and len(sent) == 1
    job = Job.objects.get(pk=ok.json()["job"])
    assert (
        ok.json()["url"] == f"/api/jobs/{job.pk}/progress/"
        and job.config["train"]["max_steps"] == 8
    )
    assert job.config["train"]["lr"] == 1e-5  # a default
    assert api.post(f"/api/jobs/{job.pk}/cancel/").json() == {
        "job": job.pk,
        "status": "cancelled",
        "cancel_requested": True,
    }
    assert api.post(f"/api/jobs/{job.pk}/cancel/").status_code == 409
    assert api.post("/api/launch/nope/", {}, format="json").status_code == 404


def test_long_histories_are_thinned_but_keep_every_validation_point(weights):
    job = Job.objects.create(kind=Job.Kind.TRAIN_FACE_SCORE)
    JobRecord.objects.bulk_create(
        JobRecord(
            job=job,
            step=s,
            values={
                "loss": 1.0 / s,
                **({"val_accuracy": {"crafted": 0.5}} if s % 333 == 0 else {}),
            },
        )
        for s in range(1, 2001)
    )
    records = job_records(job, max_points=100)
    steps = [r["step"] for r in records]
    assert {333, 666, 999, 1332, 1665, 1998} <= set(steps) and 2000 in steps
    assert 100 <= len(steps) <= 110 and steps == sorted(steps)


def test_charts_escape_their_labels():
    svg = svg_line_chart(
        {"val_accuracy/<script>": [(0, 0.5), (10, 0.75)]}, title="A & B", y_range=(0.0, 1.0)
    )
    assert "<script>" not in svg and "&lt;script&gt;: 0.75" in svg and "A &amp; B" in svg
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 2


def test_the_nav_links_to_jobs_for_researchers_and_to_launch_for_admins(researcher, admin_user):
    assert 'href="/jobs/"' in _client(researcher).get("/jobs/").content.decode()
    assert 'href="/launch/"' not in _client(researcher).get("/jobs/").content.decode()
    assert 'href="/launch/"' in _client(admin_user).get("/jobs/").content.decode()
