from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.db import IntegrityError
from PIL import Image

from annotator import imports
from annotator.imports import import_generations
from annotator.models import Dataset, Generation
from tests import images
from tests.annotator.test_import_bad_inputs import media_file_count, row

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    first, second, third = images.distinct_pngs(3)
    return images.write_folder(
        tmp_path,
        {
            "a.png": first,
            "b.png": second,
            "c.bmp": third,
            "a-again.png": first,  # same bytes as a.png
            "a-as-bmp.bmp": images.encode(Image.open(io.BytesIO(first)), "BMP"),
            "manifest.jsonl": images.jsonl(
                [row("a.png"), row("b.png"), row("c.bmp"), row("a-again.png"), row("a-as-bmp.bmp")]
            ),
        },
    )


def test_duplicates_inside_one_upload_are_reported_and_skipped(folder: Path) -> None:
    dataset = Dataset.objects.create(name="dups")

    report = import_generations(dataset=dataset, source=folder)

    assert (report.imported, report.duplicates, report.rejected) == (3, 2, 0)
    assert {p["file"]: p["reason"] for p in report.problems} == {
        "a-again.png": "same image as a.png earlier in this upload.",
        # Stored as the same PNG, so the same image whatever its container was.
        "a-as-bmp.bmp": "same image as a.png earlier in this upload.",
    }
    assert Generation.objects.filter(dataset=dataset).count() == 3


def test_reimporting_the_same_folder_imports_nothing_new(folder: Path) -> None:
    dataset = Dataset.objects.create(name="dups")
    import_generations(dataset=dataset, source=folder)
    files_before = media_file_count()

    report = import_generations(dataset=dataset, source=folder)

    assert (report.imported, report.duplicates) == (0, 5)
    first = Generation.objects.get(dataset=dataset, original_filename="a.png")
    assert f"already in dataset dups (generation #{first.pk})." in {
        p["reason"] for p in report.problems
    }
    assert Generation.objects.filter(dataset=dataset).count() == 3
    assert media_file_count() == files_before


def test_the_same_image_may_live_in_two_datasets(folder: Path) -> None:
    one, two = Dataset.objects.create(name="one"), Dataset.objects.create(name="two")

    import_generations(dataset=one, source=folder)
    report = import_generations(dataset=two, source=folder)

    assert report.imported == 3
    assert Generation.objects.count() == 6


def test_a_concurrent_import_of_the_same_image_is_a_duplicate_not_a_crash(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = Dataset.objects.create(name="race")
    real_create = imports._create_generation

    def racing_create(*, dataset, row, image):
        # Another import wins the race just before our insert.
        real_create(dataset=dataset, row=row, image=image)
        return real_create(dataset=dataset, row=row, image=image)

    monkeypatch.setattr(imports, "_create_generation", racing_create)
    report = import_generations(dataset=dataset, source=folder)

    assert report.imported == 0 and report.duplicates == 5
    assert "imported concurrently" in report.problems[0]["reason"]
    assert Generation.objects.filter(dataset=dataset).count() == 3
    # The loser's file was removed again: one file per stored generation.
    assert media_file_count() == 3


def test_database_unique_constraint_backs_the_dedupe(folder: Path) -> None:
    dataset = Dataset.objects.create(name="constraint")
    import_generations(dataset=dataset, source=folder)
    existing = Generation.objects.filter(dataset=dataset).first()
    assert existing is not None

    with pytest.raises(IntegrityError):
        Generation.objects.create(
            dataset=dataset, sha256=existing.sha256, prompt="p", model_name="m", width=1, height=1
        )
