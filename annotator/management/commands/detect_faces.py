"""Detect faces in every generation of a dataset, inline (re-running is safe: faces are reconciled)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from annotator.detection import DEFAULT_DETECTOR, detect_faces_for_generations
from annotator.models import Dataset
from ml.faces import UnknownDetectorError


class Command(BaseCommand):
    help = "Detect faces in every generation of a dataset."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", required=True, help="dataset name")
        parser.add_argument("--detector", default=DEFAULT_DETECTOR, help="face detector name")
        parser.add_argument(
            "--missing-only", action="store_true", help="only generations never scanned"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dataset = Dataset.objects.filter(name=options["dataset"]).first()
        if dataset is None:
            raise CommandError(f"no dataset named {options['dataset']!r}")
        generations = dataset.generations.all()
        if options["missing_only"]:
            generations = generations.filter(faces_detected_at__isnull=True)
        ids = list(generations.values_list("pk", flat=True))
        with tqdm(
            desc="faces", unit="image", total=len(ids), disable=not self.stdout.isatty()
        ) as bar:

            def progress(done: int, total: int) -> None:
                bar.n = done
                bar.refresh()

            try:
                counts = detect_faces_for_generations(
                    generation_ids=ids, detector_name=options["detector"], progress=progress
                )
            except UnknownDetectorError as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Faces: {counts['faces']} in {counts['generations']} generations "
            f"({counts['no_face']} with no face, {counts['unreadable']} unreadable; {counts['detector']})"
        )
