"""Dataset snapshots: Parquet files + card.json, read back and compared to the database."""

from __future__ import annotations

import io
import json
import zipfile

import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse

from annotator.models import Face, Judgment, Membership
from benchmark.models import Score
from benchmark.snapshots import build_snapshot, run_export_job, start_export_job
from jobs import progress
from jobs.models import Job
from tests.benchmark.synthetic_campaign import make_synthetic_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    return make_synthetic_campaign(n_prompts=8)


def _export(campaign, researcher) -> Job:
    job = start_export_job(campaign, created_by=researcher)
    progress.run(job.pk, run_export_job)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    return job


def _tables(zip_bytes: bytes) -> tuple[dict, dict]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        card = json.loads(zf.read("card.json"))
        tables = {
            name: pq.read_table(io.BytesIO(zf.read(f"{name}.parquet"))) for name in card["tables"]
        }
    return card, tables


def test_snapshot_round_trips_the_campaign(world, researcher):
    job = _export(world.campaign, researcher)
    assert (job.progress_done, job.progress_total) == (6, 6)
    assert job.result["zip"] == f"exports/{job.pk}/snapshot.zip"
    with default_storage.open(job.result["zip"], "rb") as fh:
        card, tables = _tables(fh.read())

    judgments = tables["judgments"].to_pylist()
    stored = list(
        Judgment.objects.filter(item__campaign=world.campaign).select_related("item").order_by("id")
    )
    assert [r["judgment_id"] for r in judgments] == [j.pk for j in stored]
    pseudonyms = dict(
        Membership.objects.filter(campaign=world.campaign).values_list("annotator_id", "pseudonym")
    )
    for row, j in zip(judgments, stored, strict=True):
        assert row["rating"] == j.rating and row["choice"] == j.choice and row["flag"] == j.flag
        assert (
            row["display_index"] == j.display_index
            and row["time_on_screen_ms"] == j.time_on_screen_ms
        )
        assert row["annotator"] == pseudonyms[j.annotator_id] and row["is_gold"] == j.item.is_gold
        assert row["created_at"] == j.created_at
    usernames = {u.username for u in world.annotators}
    assert not usernames & {r["annotator"] for r in judgments}

    faces = tables["faces"].to_pylist()
    assert [f["face_id"] for f in faces] == sorted(world.quality)
    first = Face.objects.get(pk=faces[0]["face_id"])
    assert (
        faces[0]["size_px"] == pytest.approx(first.size_px)
        and faces[0]["generation_id"] == first.generation_id
    )
    generations = tables["generations"].to_pylist()
    assert {g["dm_label"] for g in generations} == {"sd15 1.0", "rv51 1.0", "sdxl 1.0"}
    assert len(generations) == len({f["generation_id"] for f in faces})

    scores = tables["scores"].to_pylist()
    expected = Score.objects.filter(
        metric_version__in=[world.tracks, world.unrelated, world.image_level]
    )
    assert len(scores) == expected.count()
    by_id = {s.pk: s for s in expected}
    for row in scores:
        assert row["value"] == pytest.approx(by_id[row["score_id"]].value)
    assert {v["metric_version_id"] for v in tables["metric_versions"].to_pylist()} == {
        world.tracks.pk,
        world.unrelated.pk,
        world.image_level.pk,
    }

    # The card describes every column of every table, in the files' own order.
    for name, table in tables.items():
        described = [c["name"] for c in card["tables"][name]["columns"]]
        assert described == table.schema.names and card["tables"][name]["rows"] == table.num_rows
        assert all(c["description"] for c in card["tables"][name]["columns"])
    assert card["campaign"]["id"] == world.campaign.pk


def test_same_data_gives_byte_identical_files(world, researcher):
    first = build_snapshot(world.campaign, "exports/a")
    second = build_snapshot(world.campaign, "exports/b")
    assert first["zip_sha256"] == second["zip_sha256"]
    for a, b in zip(first["files"], second["files"], strict=True):
        with default_storage.open(a, "rb") as fa, default_storage.open(b, "rb") as fb:
            assert fa.read() == fb.read()
    # A redelivered job writes the same names again (no storage suffixes).
    again = build_snapshot(world.campaign, "exports/a")
    assert again["files"] == first["files"] and again["zip"] == first["zip"]


def test_loads_with_datasets_when_it_is_installed(world, tmp_path):
    datasets = pytest.importorskip("datasets")
    result = build_snapshot(world.campaign, "exports/hf")
    with default_storage.open(result["zip"], "rb") as fh:
        zipfile.ZipFile(fh).extractall(tmp_path)
    loaded = datasets.load_dataset(
        "parquet", data_files={"judgments": str(tmp_path / "judgments.parquet")}
    )
    assert (
        loaded["judgments"].num_rows
        == Judgment.objects.filter(item__campaign=world.campaign).count()
    )


def test_pages_and_api_start_and_serve_the_snapshot(
    world, researcher, annotator, django_capture_on_commit_callbacks
):
    client = Client()
    client.force_login(researcher)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        response = client.post(reverse("campaign-snapshot", args=[world.campaign.pk]))
    assert response.status_code == 302 and len(sent) == 1
    job = Job.objects.get(kind=Job.Kind.EXPORT)
    assert response["Location"] == reverse("export-job", args=[job.pk])
    assert client.get(reverse("export-download", args=[job.pk])).status_code == 404  # not built yet
    progress.run(job.pk, run_export_job)
    page = client.get(reverse("export-job", args=[job.pk])).content.decode()
    assert "Download snapshot.zip" in page and "judgments.parquet" in page
    download = client.get(reverse("export-download", args=[job.pk]))
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    card, _ = _tables(b"".join(download.streaming_content))
    assert set(card["tables"]) == {
        "judgments",
        "items",
        "faces",
        "generations",
        "metric_versions",
        "scores",
    }

    with django_capture_on_commit_callbacks(execute=False) as sent:
        api = client.post(f"/api/campaigns/{world.campaign.pk}/snapshot/")
    assert api.status_code == 202 and len(sent) == 1
    body = api.json()
    assert body["download"] == f"/api/exports/{body['job']}/download/"
    api_download = client.get(f"/api/exports/{job.pk}/download/")
    assert api_download.status_code == 200
    assert b"".join(api_download.streaming_content).startswith(b"PK")

    member = Client()
    member.force_login(annotator)
    assert member.get(reverse("export-download", args=[job.pk])).status_code == 403
