"""Headless Chromium for the browser tests, and a small campaign of real face photos."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from annotator.campaigns import create_campaign
from annotator.models import Campaign, Dataset, Face, Generation
from tests.images import astronaut, grace_hopper
from tests.services import CHROMIUM, need_chromium
from tests.users import PASSWORD

VIEWPORT = {"width": 1280, "height": 800}
# Model names that must never reach an annotator's screen in a blind campaign.
SECRET_MODELS = ("hushmodel-xl", "quietdiffusion-2")

# (photo, face box in its pixels), boxes picked by looking at the photos.
ASTRONAUT_BOX = (165.0, 40.0, 290.0, 195.0)
GRACE_HOPPER_BOX = (160.0, 115.0, 370.0, 345.0)


def _variants(photo: np.ndarray, box: tuple[float, float, float, float]) -> list[Any]:
    """Four distinct versions of one portrait: as is and mirrored, at two brightnesses."""
    width = photo.shape[1]
    mirrored_box = (width - box[2], box[1], width - box[0], box[3])
    out = []
    for gain in (1.0, 0.8):
        toned = np.clip(photo.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        out += [(toned, box), (np.ascontiguousarray(toned[:, ::-1]), mirrored_box)]
    return out


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def make_photo_dataset(name: str, *, prompts: int = 4) -> Dataset:
    """``prompts`` prompts × two DMs, each generation a real face photo saved through the storage API."""
    dataset = Dataset.objects.create(name=name)
    # One portrait per DM, so a pairwise item shows two different people.
    per_model = [_variants(astronaut(), ASTRONAUT_BOX), _variants(grace_hopper(), GRACE_HOPPER_BOX)]
    for p in range(prompts):
        for m, model in enumerate(SECRET_MODELS):
            photo, box = per_model[m][p % 4]
            photo = photo.copy()
            photo[0, 0] = (p, m, 7)  # distinct bytes even where a variant repeats
            data = _png(photo)
            sha = hashlib.sha256(data).hexdigest()
            path = f"generations/{sha[:2]}/{sha}.png"
            generation = Generation.objects.create(
                dataset=dataset,
                image=default_storage.save(path, ContentFile(data)),
                sha256=sha,
                width=photo.shape[1],
                height=photo.shape[0],
                prompt=f"a portrait photo, take {p}",
                model_name=model,
                seed=p,
            )
            Face.objects.create(
                generation=generation,
                x0=box[0],
                y0=box[1],
                x1=box[2],
                y1=box[3],
                detector="test",
                confidence=0.99,
            )
    return dataset


def make_photo_campaign(
    protocol: str, annotator: User, *, prompts: int = 4, **settings_: Any
) -> Campaign:
    dataset = make_photo_dataset(f"photos-{protocol}", prompts=prompts)
    settings_.setdefault("overlap_k", 1)
    settings_.setdefault(
        "instructions",
        "Judge the face only: is it natural, with the right number of eyes, teeth and fingers near it?",
    )
    return create_campaign(
        name=f"Faces of {protocol} test",
        protocol=protocol,
        datasets=[dataset],
        annotators=[annotator],
        **settings_,
    )


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def browser_context(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def page(browser_context: Any) -> Any:
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors  # checked by the tests: a script error is a failure
    return page


def log_in(page: Any, base_url: str, username: str) -> None:
    """Through the real login form (CSRF and all)."""
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/")
