"""List every metric's weight files: where they are expected, present or missing, and sha256."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from ml.weights import describe_all


class Command(BaseCommand):
    help = "List the weight files each metric expects under FACEBENCH_WEIGHTS_DIR, present or missing, with sha256."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-sha256", action="store_true", help="skip hashing (fast)")

    def handle(self, *args: Any, **options: Any) -> None:
        root = settings.FACEBENCH_WEIGHTS_DIR
        self.stdout.write(f"Weights dir: {root}")
        rows = describe_all(root, with_sha256=not options["no_sha256"])
        width = max((len(r.metric) for r in rows), default=6)
        for row in rows:
            if row.present:
                state = self.style.SUCCESS("present") + f"  {row.size or 0:>13,} B  sha256 {row.sha256 or '(not computed)'}"
            else:
                state = self.style.ERROR("MISSING")
            self.stdout.write(f"{row.metric:<{width}}  {row.file:<55} {state}")
        from ml.faces.retinaface import CONFIGS

        for name, config in CONFIGS.items():
            path = root / config.weights_file
            state = self.style.SUCCESS("present") if path.is_file() else self.style.ERROR("MISSING")
            self.stdout.write(f"{name:<{width}}  {config.weights_file:<55} {state}  (face detector)")
        metrics = {r.metric for r in rows}
        unavailable = {r.metric for r in rows if not r.present}
        self.stdout.write(f"\n{len(metrics - unavailable)} of {len(metrics)} weighted metrics available; "
                          "weight-free baselines (face_size, detector_confidence, sharpness) always are.\n"
                          "Face detection uses RetinaFace mobilenet0.25 when its file is present, else Haar.")
