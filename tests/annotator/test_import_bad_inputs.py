"""The bad-input corpus from the issue, run through the real import service and database.

Each bad file gets its own clear reason; good files in the same import are still imported; an
upload refused as a whole changes nothing (rows and media files)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from PIL import Image

from annotator.imports import (
    FileSetSource,
    ImportRejected,
    ZipSource,
    import_generations,
    parse_manifest,
)
from annotator.models import Dataset, Generation
from tests import images

pytestmark = pytest.mark.django_db


def media_file_count() -> int:
    return sum(len(files) for _, _, files in os.walk(settings.MEDIA_ROOT))


def row(file: str, **more: object) -> dict[str, object]:
    return {"file": file, "prompt": f"a portrait photo ({file})", "model": "sd15", **more}


@pytest.fixture
def dataset() -> Dataset:
    return Dataset.objects.create(name="bad-inputs")


@pytest.fixture
def corpus_folder(tmp_path: Path) -> Path:
    sixteen, _ = images.sixteen_bit_png()
    files = {
        "good.png": images.encode(images.astronaut()),
        "empty.png": b"",
        "cut.jpg": images.truncated_jpeg(),
        "text.png": images.text_as_png(),
        "logo.svg": images.svg_image(),
        "bomb.png": images.png_bomb(),
        "deep.png": sixteen,
        "print.jpg": images.cmyk_jpeg(),
        "loop.gif": images.animated_gif(),
        "phone.jpg": images.exif_rotated_jpeg(),
    }
    manifest = [row(name) for name in files]
    manifest.append(row("missing.png"))
    manifest.append(row("long-prompt.png", prompt="x" * 100_000))
    manifest.append(row("../outside.png"))
    manifest.append(row("seedy.png", seed="twelve"))
    manifest.append(row("blank-prompt.png", prompt="   "))
    files["long-prompt.png"] = images.solid_png((1, 2, 3))
    files["seedy.png"] = images.solid_png((4, 5, 6))
    files["blank-prompt.png"] = images.solid_png((7, 8, 9))
    files["manifest.jsonl"] = images.jsonl(manifest)
    (tmp_path / "outside.png").write_bytes(images.solid_png((9, 9, 9)))
    return images.write_folder(tmp_path / "upload", files)


def test_each_bad_file_gets_its_reason_and_good_files_still_import(
    dataset: Dataset, corpus_folder: Path
) -> None:
    report = import_generations(dataset=dataset, source=corpus_folder)

    reasons = {p["file"]: p["reason"] for p in report.problems}
    assert "empty (0 bytes)" in reasons["empty.png"]
    assert "truncated or corrupt" in reasons["cut.jpg"]
    assert "text file, not an image" in reasons["text.png"]
    assert "SVG (vector) image" in reasons["logo.svg"]
    assert (
        "20000×20000 = 400,000,000 pixels" in reasons["bomb.png"]
        or "too many pixels" in reasons["bomb.png"]
    )
    assert "animated or multi-page GIF (3 frames)" in reasons["loop.gif"]
    assert "listed in the manifest but not in the upload" in reasons["missing.png"]
    assert "the prompt is 100,000 characters long; the limit is 4,000" in reasons["long-prompt.png"]
    assert "escapes the import folder" in reasons["../outside.png"]
    assert "seed must be an integer, got 'twelve'" in reasons["seedy.png"]
    assert "the prompt is empty" in reasons["blank-prompt.png"]
    assert all(p["status"] == "rejected" for p in report.problems)
    assert report.rejected == 11 and report.duplicates == 0

    imported = {g.original_filename: g for g in Generation.objects.filter(dataset=dataset)}
    assert set(imported) == {"good.png", "deep.png", "print.jpg", "phone.jpg"}
    assert report.imported == 4
    assert media_file_count() == 4


def test_handled_inputs_are_stored_correctly(dataset: Dataset, corpus_folder: Path) -> None:
    import_generations(dataset=dataset, source=corpus_folder)
    stored = {g.original_filename: g for g in Generation.objects.filter(dataset=dataset)}

    def pixels(name: str) -> np.ndarray:
        with stored[name].image.open("rb") as fh:
            image = Image.open(fh)
            assert image.format == "PNG" and image.mode == "RGB"
            return np.asarray(image)

    phone = stored["phone.jpg"]
    assert (phone.width, phone.height) == (30, 60)
    rotated = pixels("phone.jpg").astype(int)
    assert rotated.shape == (60, 30, 3)
    assert rotated[5, 15, 0] > 200 and rotated[55, 15, 2] > 200  # red on top, blue below

    _, expected_grey = images.sixteen_bit_png()
    assert np.array_equal(pixels("deep.png")[:, :, 1], expected_grey)

    red, green, blue = pixels("print.jpg")[10, 10]
    assert red > 240 and green < 15 and blue < 15

    good = stored["good.png"]
    assert np.array_equal(pixels("good.png"), images.astronaut())
    assert good.prompt == "a portrait photo (good.png)" and good.model_name == "sd15"
    assert good.image.name == f"generations/{good.sha256[:2]}/{good.sha256}.png"


def test_zip_with_a_parent_directory_entry_is_refused_whole(dataset: Dataset) -> None:
    upload = images.make_zip(
        {
            "manifest.jsonl": images.jsonl([row("good.png"), row("../evil.png")]),
            "good.png": images.solid_png(),
            "../evil.png": images.solid_png((0, 0, 0)),
        }
    )
    before = (Generation.objects.count(), media_file_count())

    with pytest.raises(ImportRejected, match=r"climbs out of the archive \(\.\./evil\.png"):
        import_generations(dataset=dataset, source=ZipSource(io.BytesIO(upload)))

    assert (Generation.objects.count(), media_file_count()) == before


@pytest.mark.parametrize(
    ("entries", "symlinks", "reason"),
    [
        ({"/etc/passwd.png": b"x"}, None, "absolute path"),
        ({"a/../../b.png": b"x"}, None, "climbs out"),
        ({}, {"link.png": "/etc/passwd"}, "symbolic link"),
    ],
)
def test_unsafe_zip_entries_refuse_the_whole_zip(
    dataset: Dataset, entries, symlinks, reason: str
) -> None:
    files = {
        "manifest.jsonl": images.jsonl([row("good.png")]),
        "good.png": images.solid_png(),
        **entries,
    }
    upload = images.make_zip(files, symlinks=symlinks)

    with pytest.raises(ImportRejected, match=reason):
        import_generations(dataset=dataset, source=ZipSource(io.BytesIO(upload)))

    assert Generation.objects.count() == 0 and media_file_count() == 0


def test_zip_over_the_entry_or_size_limit_is_refused(dataset: Dataset, settings) -> None:
    upload = images.make_zip(
        {"manifest.jsonl": images.jsonl([row("good.png")]), "good.png": images.solid_png()}
    )

    settings.FACEBENCH_MAX_ZIP_ENTRIES = 1
    with pytest.raises(ImportRejected, match="2 entries; the limit is 1"):
        ZipSource(io.BytesIO(upload))

    settings.FACEBENCH_MAX_ZIP_ENTRIES = 10
    settings.FACEBENCH_MAX_UPLOAD_BYTES = 100
    with pytest.raises(ImportRejected, match="would unpack to .* the limit is 100 bytes"):
        ZipSource(io.BytesIO(upload))


def test_zip_entry_lying_about_its_size_is_read_with_a_cap(dataset: Dataset, settings) -> None:
    settings.FACEBENCH_MAX_IMAGE_BYTES = 1000
    big = images.encode(images.noise_image(100, 100))  # ~30 kB
    upload = images.make_zip({"manifest.jsonl": images.jsonl([row("big.png")]), "big.png": big})

    report = import_generations(dataset=dataset, source=ZipSource(io.BytesIO(upload)))

    assert report.imported == 0
    assert "big.png is too large" in report.problems[0]["reason"]


def test_zip_that_is_not_a_zip_is_refused(dataset: Dataset) -> None:
    with pytest.raises(ImportRejected, match="not a valid zip file"):
        ZipSource(io.BytesIO(b"PK\x03\x04 not really"))


def test_non_utf8_manifest_is_refused_whole_with_its_position(
    dataset: Dataset, tmp_path: Path
) -> None:
    folder = images.write_folder(
        tmp_path,
        {
            "manifest.jsonl": images.non_utf8_manifest(),
            "a.png": images.solid_png(),
            "b.png": images.solid_png((1, 1, 1)),
        },
    )

    with pytest.raises(ImportRejected) as refused:
        import_generations(dataset=dataset, source=folder)

    assert (
        "not valid UTF-8: byte 0xe9 at line 2, column 33 (byte offset 91)" in refused.value.reason
    )
    assert Generation.objects.count() == 0 and media_file_count() == 0


def test_folder_without_a_manifest_is_refused(dataset: Dataset, tmp_path: Path) -> None:
    images.write_folder(tmp_path, {"a.png": images.solid_png()})

    with pytest.raises(ImportRejected, match="No manifest found"):
        import_generations(dataset=dataset, source=tmp_path)


def test_symlink_in_a_folder_cannot_reach_outside_it(dataset: Dataset, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(images.solid_png())
    folder = images.write_folder(
        tmp_path / "upload", {"manifest.jsonl": images.jsonl([row("link.png")])}
    )
    (folder / "link.png").symlink_to(tmp_path / "secret.png")

    report = import_generations(dataset=dataset, source=folder)

    assert report.imported == 0
    assert "outside the import folder" in report.problems[0]["reason"]


def test_csv_manifest_keeps_optional_and_extra_columns(dataset: Dataset, tmp_path: Path) -> None:
    manifest = (
        b"file,prompt,model,model_version,seed,sampler,cfg_note\n"
        b'a.png,"a face, smiling",sdxl,1.0,42,"{""steps"": 30}",hello\n'
        b"b.png,a face,sdxl,,,,\n"
        b"c.png,a face,sdxl,,1.5,,\n"
        b'd.png,a face,sdxl,,,"[1, 2]",\n'
    )
    files = {
        "manifest.csv": manifest,
        **dict(zip(["a.png", "b.png", "c.png", "d.png"], images.distinct_pngs(4), strict=True)),
    }
    folder = images.write_folder(tmp_path, files)

    report = import_generations(dataset=dataset, source=folder)

    assert report.imported == 2
    first = Generation.objects.get(original_filename="a.png")
    assert (first.prompt, first.model_name, first.model_version, first.seed) == (
        "a face, smiling",
        "sdxl",
        "1.0",
        42,
    )
    assert first.sampler == {"steps": 30} and first.extra == {"cfg_note": "hello"}
    second = Generation.objects.get(original_filename="b.png")
    assert second.seed is None and second.sampler == {} and second.model_version == ""
    reasons = {(p["row"], p["file"]): p["reason"] for p in report.problems}
    assert reasons == {
        (4, "c.png"): "seed must be an integer, got '1.5'.",
        (5, "d.png"): 'sampler must be a JSON object (e.g. {"steps": 30}).',
    }


def test_csv_manifest_without_required_columns_is_refused() -> None:
    with pytest.raises(ImportRejected, match="has no column.* prompt, model"):
        parse_manifest(b"file,caption\na.png,hi\n", name="manifest.csv")


def test_jsonl_rows_that_are_not_objects_are_reported_by_line() -> None:
    rows, errors = parse_manifest(
        b'{"file": "a.png", "prompt": "p", "model": "m", "sampler": {"steps": 4}}\n[1]\n{oops\n{"file": "b.png"}\n',
        name="m.jsonl",
    )

    assert [r.file for r in rows] == ["a.png"] and rows[0].sampler == {"steps": 4}
    assert [(e.row, e.reason.split(":")[0]) for e in errors] == [
        (2, "line 2 is not a JSON object."),
        (3, "line 3 is not valid JSON"),
        (4, "missing required field(s)"),
    ]


def test_manifest_with_an_unknown_extension_is_refused() -> None:
    with pytest.raises(ImportRejected, match=r"must be a \.jsonl"):
        parse_manifest(b"file,prompt,model\n", name="manifest.xlsx")


def test_uploaded_manifest_and_images_are_matched_by_name(dataset: Dataset) -> None:
    manifest = io.BytesIO(images.jsonl([row("imgs/a.png"), row("b.png")]))
    first, second = (io.BytesIO(data) for data in images.distinct_pngs(2))
    first.name, second.name = "a.png", "b.png"

    report = import_generations(
        dataset=dataset, source=FileSetSource(manifest, [first, second], manifest_name="m.jsonl")
    )

    assert report.imported == 2


def test_an_uploaded_zip_file_object_is_a_source(dataset: Dataset) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile(
        "gens.zip",
        images.make_zip(
            {"manifest.csv": b"file,prompt,model\na.png,p,m\n", "a.png": images.solid_png()}
        ),
    )

    assert import_generations(dataset=dataset, source=upload).imported == 1


def test_a_zipped_folder_gets_a_hint_about_the_manifest_in_its_subfolder(dataset: Dataset) -> None:
    upload = images.make_zip(
        {"gens/manifest.jsonl": images.jsonl([row("a.png")]), "gens/a.png": images.solid_png()}
    )

    with pytest.raises(
        ImportRejected, match="Found gens/manifest.jsonl in a subfolder: zip the folder's contents"
    ):
        import_generations(dataset=dataset, source=ZipSource(io.BytesIO(upload)))
