"""The admin's path to a new Face Score in headless Chromium: the launch pages, the live job page.

An admin opens the crafting form, is refused a model outside the allowed folders next to that
field, crafts pairs from wheel-shipped photos with a tiny inpainting pipeline, trains a tiny Face
Score on them from the training form and reads the curves, the log and the artifacts; a
researcher reads a job but cannot launch or cancel; an admin cancels a queued job from its page.

The launched jobs run in this test's process (``benchmark.launch.run_launched_job``, the body the
Celery task calls), so nothing goes to a broker; the page finds out by polling, as it does with a
real worker. ``FACEBENCH_SCREENSHOTS=1`` writes ``docs/screenshots/launch-form.png``,
``job-pairs.png`` and ``job-training.png`` for the README (otherwise a temporary folder).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from django.urls import reverse
from playwright.sync_api import expect

from annotator.demo import shifted_crop
from benchmark.launch import run_launched_job
from benchmark.models import FacePair, MetricVersion
from jobs.models import Job, JobRecord
from ml import metrics as metric_zoo
from tests.browser.conftest import VIEWPORT
from tests.images import astronaut, encode, grace_hopper
from tests.ml.tiny_models import tiny_imagereward_state_dict, write_tiny_imagereward
from tests.ml.tiny_sd import write_tiny_sd
from tests.users import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
N_VIEWS = 4  # framings of each photo: 8 source images
# The crafting settings typed into the form (besides the model): tiny and fast on a CPU.
CRAFT_FIELDS = {
    "source": "folder",
    "folder": "photos",  # relative paths are taken under FACEBENCH_WEIGHTS_DIR
    "detector": "haar",
    "steps": "2",
    "resolution": "64",
    "batch_size": "4",
    "min_confidence": "0",
    "mask__min_face_px": "32",
    "val_fraction": "0.3",
    "seed": "0",  # with 0.3: three of the eight photos validate
}
TRAIN_FIELDS = {
    "max_steps": "12",
    "warmup_steps": "1",
    "batch_size": "4",
    "accumulation": "1",
    "lr": "0.0002",
    "val_every": "2",
    "checkpoint_every": "12",
    "checkpoints_total_limit": "1",
    "mixed_precision": "no",
    "seed": "0",
}


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.getenv("FACEBENCH_SCREENSHOTS", "") not in ("", "0"):
        folder = REPO / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights dir with a tiny inpainting pipeline, a tiny ImageReward and a photo folder."""
    weights = tmp_path_factory.mktemp("weights")
    write_tiny_sd(weights / "tiny-inpaint", inpaint=True)
    # The tiny random ImageReward ranks every inpainted face below its photo already; with its
    # last layer negated it starts out wrong, so the validation curve has somewhere to climb.
    state = tiny_imagereward_state_dict(seed=0)
    state["mlp.layers.7.weight"] = -state["mlp.layers.7.weight"]
    state["mlp.layers.7.bias"] = -state["mlp.layers.7.bias"]
    write_tiny_imagereward(weights, state_dict=state)
    photos = weights / "photos"
    photos.mkdir()
    for name, photo in (("astronaut", astronaut()), ("grace_hopper", grace_hopper())):
        for view in range(N_VIEWS):
            (photos / f"{name}-{view}.png").write_bytes(encode(shifted_crop(photo, view)))
    return weights


@pytest.fixture
def roots(settings: Any, tiny_weights: Path, tmp_path: Path) -> Path:
    settings.FACEBENCH_WEIGHTS_DIR = tiny_weights
    settings.FACEBENCH_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.FACEBENCH_INPUT_DIRS = []
    return tiny_weights


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Job ids the launch pages hand to the worker queue; the test runs them itself."""
    sent: list[int] = []
    monkeypatch.setattr(
        "benchmark.tasks.run_launched_job_task.apply_async_on_commit",
        lambda args, **options: sent.append(args[0]),
    )
    return sent


def log_in_as(page: Any, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def fill_form(page: Any, values: dict[str, str]) -> None:
    """Type each value into the launch form's field of that name, whatever its widget."""
    for name, value in values.items():
        field = page.locator(f'form [name="{name}"]')
        if field.evaluate("el => el.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


def field_errors(page: Any) -> dict[str, str]:
    """The form's error messages by the field they sit next to."""
    return {
        block.get_attribute("id").removeprefix("field-"): " ".join(
            block.locator(".error").all_inner_texts()
        )
        for block in page.locator('p[id^="field-"]:has(.error)').all()
    }


def screenshot_down_to(page: Any, path: Path, last: Any) -> None:
    """The page from its top down to the bottom of ``last``, at the window's width."""
    bottom = last.evaluate("el => el.getBoundingClientRect().bottom + window.scrollY")
    clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": bottom + 16}
    page.screenshot(path=str(path), full_page=True, clip=clip)


def wait_until_finished(page: Any, status: str) -> None:
    """The page polls the job and reloads once when it finishes: wait for that reload."""
    expect(page.locator("#job-status")).to_have_text(status, timeout=30_000)
    expect(page.locator("#job")).to_have_attribute("data-finished", "true", timeout=30_000)


def job_from_url(page: Any, base_url: str) -> Job:
    page.wait_for_url(re.compile(re.escape(base_url) + r"/jobs/\d+/$"))
    return Job.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))


def test_an_admin_crafts_pairs_and_trains_a_face_score_from_the_launch_pages(
    live_server, page, roots, queued, admin_user, shots, tmp_path
):
    base = live_server.url
    log_in_as(page, base, admin_user.username)
    page.get_by_role("navigation").get_by_role("link", name="Launch").click()
    expect(page.get_by_role("heading", name="Launch a job")).to_be_visible()
    page.get_by_role("link", name="New craft face pairs job").click()

    # 1. A model outside the folders a job may read: refused next to its field, nothing queued.
    fill_form(page, {**CRAFT_FIELDS, "model": "/etc/ssl"})
    page.get_by_role("button", name="Queue the job").click()
    expect(page.locator("#field-model .error")).to_contain_text(
        "/etc/ssl is outside the folders a job may read"
    )
    assert list(field_errors(page)) == ["model"]
    assert page.locator('[name="folder"]').input_value() == "photos"  # what was typed stays
    assert not Job.objects.exists() and queued == []
    assert page.locator('[name="model"]').bounding_box()["width"] >= 400  # room for a path
    screenshot_down_to(page, shots / "launch-form.png", page.locator("#field-model"))

    page.locator('[name="model"]').fill("tiny-inpaint")
    page.get_by_role("button", name="Queue the job").click()
    craft = job_from_url(page, base)
    assert craft.kind == Job.Kind.CRAFT_PAIRS and craft.created_by == admin_user
    assert queued == [craft.pk] and craft.config["settings"]["steps"] == 2
    expect(page.locator(".messages")).to_contain_text(f"job #{craft.pk} queued")
    expect(page.locator("#job-status")).to_have_text("queued")
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()

    # 2. The worker's side, in this process; the open page notices and shows the pairs.
    run_launched_job(craft.pk)
    wait_until_finished(page, "succeeded")
    craft.refresh_from_db()
    pairs = FacePair.objects.filter(crafting_job=craft)
    n_val = pairs.filter(split=FacePair.Split.VAL).count()
    assert pairs.count() == craft.result["pairs"] >= 2 * N_VIEWS and 0 < n_val < pairs.count()
    expect(page.get_by_role("heading", name=f"Pairs ({pairs.count()})")).to_be_visible()
    previews = page.locator('img[alt="bad"]')
    expect(previews).to_have_count(6)
    first = pairs.order_by("id").first()
    expect(previews.first).to_have_attribute("src", f"/pairs/{first.pk}/bad.png")
    for image in page.locator('img[alt="good"], img[alt="bad"], img[alt="mask"]').all():
        image.scroll_into_view_if_needed()
        assert image.evaluate("img => img.complete && img.naturalWidth > 0"), image
    expect(page.locator("#job-log")).to_contain_text("faces")
    screenshot_down_to(page, shots / "job-pairs.png", page.locator('img[alt="mask"]').nth(2))

    # 3. Train a Face Score on those pairs from the training form.
    page.get_by_role("navigation").get_by_role("link", name="Launch").click()
    page.get_by_role("link", name="New train face score job").click()
    # No pairwise campaign exists: its empty list still shows as a box, not a collapsed sliver.
    assert page.locator('[name="campaigns"]').bounding_box()["width"] >= 200
    fill_form(page, {"crafting_jobs": str(craft.pk), **TRAIN_FIELDS})
    expect(page.locator('[name="init"]')).to_have_value("imagereward")
    page.get_by_role("button", name="Queue the job").click()
    train = job_from_url(page, base)
    assert train.kind == Job.Kind.TRAIN_FACE_SCORE and queued == [craft.pk, train.pk]
    assert train.config["crafting_jobs"] == [craft.pk] and train.config["train"]["max_steps"] == 12
    expect(page.locator("#job-status")).to_have_text("queued")

    run_launched_job(train.pk)
    wait_until_finished(page, "succeeded")
    train.refresh_from_db()
    expect(page.locator("#job-done")).to_have_text("12")
    loss_chart = page.locator('svg[aria-label="Loss"]')
    expect(loss_chart).to_be_visible()
    expect(loss_chart.locator("polyline")).to_have_count(1)
    expect(loss_chart.locator("circle")).to_have_count(12)  # a dot per step
    last_loss = JobRecord.objects.get(job=train, step=12).values["loss"]
    expect(loss_chart).to_contain_text(f"loss: {last_loss:.3g}")
    validation = page.locator('svg[aria-label="Validation accuracy"]')
    expect(validation).to_be_visible()
    val_steps = sorted(
        r.step for r in JobRecord.objects.filter(job=train) if "val_accuracy" in r.values
    )
    assert val_steps == [0, 2, 4, 6, 8, 10, 12]  # the starting weights, then every 2 steps
    expect(validation.locator("circle")).to_have_count(7)
    final = train.result["final_validation"]["crafted"]
    expect(validation).to_contain_text(f"crafted: {final:.3g}")
    # Two charts a row at 1280 px, each drawn at a readable size, nothing wider than the window.
    loss_box, validation_box = loss_chart.bounding_box(), validation.bounding_box()
    assert loss_box["y"] == validation_box["y"] and loss_box["x"] < validation_box["x"]
    for box in (loss_box, validation_box):
        assert box["width"] > 400 and box["height"] > 150
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    version = MetricVersion.objects.get(pk=train.result["metric_version"])
    result = page.locator(".card", has=page.get_by_role("heading", name="Result"))
    expect(result.get_by_role("link", name=str(version))).to_have_attribute(
        "href", reverse("metrics")
    )
    expect(page.locator("#job-log")).to_contain_text(f"registered {version}")
    expect(page.locator("#job-log")).to_contain_text("step 12:")

    # The registered checkpoint downloads from the artifacts list and loads strictly.
    link = page.get_by_role("link", name="weights/FaceScore/FS_model.pt", exact=True)
    expect(link).to_have_attribute(
        "href", f"/jobs/{train.pk}/artifacts/weights/FaceScore/FS_model.pt"
    )
    download = page.request.get(base + link.get_attribute("href"))
    assert download.ok and "attachment" in download.headers["content-disposition"]
    body = download.body()
    assert hashlib.sha256(body).hexdigest() == version.weights_sha256
    state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    assert set(state) == set(tiny_imagereward_state_dict())
    downloaded = tmp_path / "downloaded"
    shutil.copytree(train.artifact_dir / "weights", downloaded)
    (downloaded / "FaceScore" / "FS_model.pt").unlink()
    (downloaded / "FaceScore" / "FS_model.pt").write_bytes(body)
    metric = metric_zoo.create("face_score", weights_dir=downloaded)  # strict load
    assert metric.weights_sha256 == version.weights_sha256

    screenshot_down_to(page, shots / "job-training.png", page.locator("#job-charts"))
    assert page.js_errors == []


def test_a_researcher_reads_a_queued_job_without_buttons_and_an_admin_cancels_it(
    live_server, chromium, page, roots, queued, admin_user, researcher
):
    base = live_server.url
    log_in_as(page, base, admin_user.username)
    page.goto(f"{base}/launch/craft_pairs/")
    fill_form(page, {**CRAFT_FIELDS, "model": "tiny-inpaint"})
    page.get_by_role("button", name="Queue the job").click()
    job = job_from_url(page, base)
    assert queued == [job.pk]
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()
    expect(page.get_by_role("link", name="Launch again with these settings")).to_be_visible()

    context = chromium.new_context(viewport=VIEWPORT)
    try:
        reader = context.new_page()
        log_in_as(reader, base, researcher.username)
        reader.goto(f"{base}/jobs/{job.pk}/")
        expect(reader.locator("#job-status")).to_have_text("queued")
        expect(reader.get_by_role("heading", name=f"Craft face pairs #{job.pk}")).to_be_visible()
        expect(reader.get_by_role("button", name="Cancel")).to_have_count(0)
        expect(reader.get_by_role("link", name="Launch again with these settings")).to_have_count(0)
        expect(reader.get_by_role("navigation").get_by_role("link", name="Launch")).to_have_count(0)
        assert reader.request.get(f"{base}/launch/").status == 403
        assert reader.request.get(f"{base}/launch/craft_pairs/").status == 403
    finally:
        context.close()

    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(page.locator(".messages")).to_contain_text("Cancel requested")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.cancel_requested

    # The message still in the queue reaches a worker later: it runs nothing.
    run_launched_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.started_at is None
    assert not FacePair.objects.exists()
    assert page.js_errors == []
