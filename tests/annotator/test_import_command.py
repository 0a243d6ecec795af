from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotator.models import Dataset, Face, Generation
from tests import images
from tests.annotator.test_import_bad_inputs import row

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return images.write_folder(
        tmp_path / "gens",
        {
            "astronaut.png": images.encode(images.astronaut()),
            "flat.png": images.encode(images.flat_image()),
            "copy.png": images.encode(images.flat_image()),
            "logo.svg": images.svg_image(),
            "list.jsonl": images.jsonl(
                [
                    row("astronaut.png", seed=7, sampler={"steps": 30}),
                    row("flat.png"),
                    row("copy.png"),
                    row("logo.svg"),
                ]
            ),
        },
    )


def test_command_imports_reports_and_detects(folder: Path, capsys) -> None:
    call_command("import_generations", str(folder), dataset="cmd")

    out = capsys.readouterr().out
    assert "Created dataset cmd" in out
    assert "Imported 2, duplicates 1, rejected 1" in out
    assert "duplicate: copy.png row 3: same image as flat.png earlier in this upload." in out
    assert "rejected: logo.svg row 4: logo.svg is an SVG (vector) image" in out
    assert "Faces: 1 in 2 generations (1 with no face" in out
    astronaut = Generation.objects.get(original_filename="astronaut.png")
    assert (
        astronaut.dataset.name == "cmd"
        and astronaut.seed == 7
        and astronaut.sampler == {"steps": 30}
    )
    assert Face.objects.get().generation == astronaut


def test_command_with_no_detect_and_an_explicit_manifest(
    folder: Path, tmp_path: Path, capsys
) -> None:
    manifest = tmp_path / "elsewhere.csv"
    manifest.write_text("file,prompt,model\nastronaut.png,a face,sd15\n")
    Dataset.objects.create(name="existing")

    call_command(
        "import_generations",
        str(folder),
        dataset="existing",
        manifest=str(manifest),
        no_detect=True,
    )

    assert "Imported 1, duplicates 0, rejected 0" in capsys.readouterr().out
    assert Generation.objects.get().faces_detected_at is None
    assert not Face.objects.exists()


def test_command_refuses_a_bad_source_clearly(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="does not exist"):
        call_command("import_generations", str(tmp_path / "nope"), dataset="x")
    images.write_folder(tmp_path / "two", {"a.jsonl": b"", "b.csv": b""})
    with pytest.raises(CommandError, match="Several possible manifests"):
        call_command("import_generations", str(tmp_path / "two"), dataset="x")
    assert not Generation.objects.exists()
    assert not Dataset.objects.filter(name="x").exists()


def test_command_imports_a_zip(tmp_path: Path, capsys) -> None:
    upload = tmp_path / "gens.zip"
    upload.write_bytes(
        images.make_zip(
            {"manifest.jsonl": images.jsonl([row("sub/a.png")]), "sub/a.png": images.solid_png()}
        )
    )

    call_command("import_generations", str(upload), dataset="zipped", no_detect=True)

    assert "Imported 1" in capsys.readouterr().out
    assert Generation.objects.get().original_filename == "sub/a.png"


def test_command_refuses_an_unknown_detector_before_importing(folder: Path) -> None:
    with pytest.raises(CommandError, match="known detectors: auto, haar"):
        call_command("import_generations", str(folder), dataset="x", detector="nope")
    assert not Generation.objects.exists()
