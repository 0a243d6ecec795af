"""Import a folder (or .zip) of generations with its manifest into a dataset, then detect faces.

Steps: open the source and parse its manifest (a refused source or manifest stops here, nothing
written); import row by row with a progress bar; print the report (imported, duplicates, and
every rejected or duplicate file with its reason); unless ``--no-detect``, run face detection
on the newly imported generations inline, with a second progress bar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from annotator.detection import DEFAULT_DETECTOR, detect_faces_for_generations
from annotator.imports import ImportRejected, import_generations
from annotator.models import Dataset
from ml.faces import list_detectors


class Command(BaseCommand):
    help = "Import generations (images + manifest) from a folder or .zip into a dataset."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "path", type=Path, help="folder (or .zip) holding the images and the manifest"
        )
        parser.add_argument("--dataset", required=True, help="dataset name (created if new)")
        parser.add_argument(
            "--manifest",
            type=Path,
            help="manifest file (default: manifest.jsonl/.csv in the folder)",
        )
        parser.add_argument(
            "--no-detect", action="store_true", help="skip face detection after the import"
        )
        parser.add_argument("--detector", default=DEFAULT_DETECTOR, help="face detector name")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        if not options["no_detect"] and options["detector"] not in ("auto", *list_detectors()):
            raise CommandError(
                f"unknown face detector {options['detector']!r}; "
                f"known detectors: auto, {', '.join(list_detectors())}"
            )
        dataset, created = Dataset.objects.get_or_create(name=options["dataset"])
        disable = not self.stdout.isatty()
        with tqdm(desc="import", unit="image", disable=disable) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            try:
                report = import_generations(
                    dataset=dataset, source=path, manifest=options["manifest"], progress=progress
                )
            except ImportRejected as exc:
                if created:  # a refused upload leaves nothing behind, not even its dataset
                    dataset.delete()
                raise CommandError(exc.reason) from None

        style = self.style
        if created:
            self.stdout.write(f"Created dataset {dataset.name}")
        self.stdout.write(
            style.SUCCESS(f"Imported {report.imported}")
            + f", duplicates {report.duplicates}, rejected {report.rejected}"
        )
        for problem in report.problems:
            where = f"row {problem['row']}" if problem["row"] is not None else ""
            line = f"  {problem['status']}: {problem['file'] or '(no file)'} {where}: {problem['reason']}"
            self.stdout.write(style.WARNING(line) if problem["status"] == "rejected" else line)

        if options["no_detect"] or not report.generation_ids:
            return
        with tqdm(desc="faces", unit="image", disable=disable) as bar:

            def detect_progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            counts = detect_faces_for_generations(
                generation_ids=report.generation_ids,
                detector_name=options["detector"],
                progress=detect_progress,
            )
        self.stdout.write(
            f"Faces: {counts['faces']} in {counts['generations']} generations "
            f"({counts['no_face']} with no face, {counts['unreadable']} unreadable; {counts['detector']})"
        )
