"""Seed the demo: users, generations from wheel-shipped photos, faces, two campaigns.

Steps: create the demo users (admin, researcher, two annotators) with known passwords; write the
photos and their degraded variants (demo DMs) to a temporary folder with a manifest and import it
through the real import service; detect faces with the offline default detector; create a likert
and a pairwise campaign with gold items; print the logins. Running it again changes nothing that
exists (users keep their passwords, the dataset is imported once).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from annotator.campaigns import add_gold_items, create_campaign
from annotator.demo import DEGRADATIONS, ORIGINAL_DM, write_demo_folder
from annotator.detection import DEFAULT_DETECTOR, detect_faces_for_generations, get_detector
from annotator.imports import import_generations
from annotator.models import Campaign, Dataset, Face
from annotator.roles import ANNOTATOR, RESEARCHER

DATASET = "demo"
USERS = [
    # username, password, role
    ("admin", "admin-demo-pw", "admin"),
    ("researcher", "researcher-demo-pw", RESEARCHER),
    ("annotator1", "annotator1-demo-pw", ANNOTATOR),
    ("annotator2", "annotator2-demo-pw", ANNOTATOR),
]
INSTRUCTIONS = (
    "Judge only the face: is it anatomically plausible and free of artefacts (melted features, "
    "blur, blotches, missing eyes or mouth)? Ignore the background, the style and the prompt. "
    "Flag (F) an image whose box holds no face."
)


class Command(BaseCommand):
    help = "Create demo users, generations, faces and campaigns (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seeds", type=int, default=2, help="framings per photo")

    def handle(self, *args: Any, **options: Any) -> None:
        users = {username: self._user(username, password, role) for username, password, role in USERS}
        dataset = Dataset.objects.filter(name=DATASET).first()
        if dataset is None:
            dataset = self._import(options["seeds"], users["researcher"])
        if not Campaign.objects.filter(name__startswith="Demo ").exists():
            self._campaigns(dataset, users)
        self.stdout.write("\nDemo logins (username / password):")
        for username, password, role in USERS:
            self.stdout.write(f"  {role:<11} {username:<11} / {password}")

    def _user(self, username: str, password: str, role: str) -> User:
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": role == "admin", "is_superuser": role == "admin"}
        )
        if created:
            user.set_password(password)
            user.save()
            if role in (ANNOTATOR, RESEARCHER):
                user.groups.add(Group.objects.get_or_create(name=role)[0])
        return user

    def _import(self, seeds: int, researcher: User) -> Dataset:
        detector = get_detector(DEFAULT_DETECTOR)

        def largest_face(image: Any) -> tuple[int, int, int, int] | None:
            found = detector.detect([image])[0]
            if not found:
                return None
            best = max(found, key=lambda d: d.width * d.height)
            return (int(best.x0), int(best.y0), int(best.x1), int(best.y1))

        with transaction.atomic():
            dataset = Dataset.objects.create(
                name=DATASET,
                description="Photos shipped with scikit-image and matplotlib, plus degraded variants as demo DMs.",
                created_by=researcher,
            )
            with tempfile.TemporaryDirectory() as tmp:
                folder = write_demo_folder(Path(tmp), largest_face, seeds=seeds)
                report = import_generations(dataset=dataset, source=folder, created_by=researcher)
        self.stdout.write(f"Imported {report.imported} demo generations ({report.rejected} rejected).")
        counts = detect_faces_for_generations(generation_ids=report.generation_ids)
        self.stdout.write(
            f"Detected {counts['faces']} faces; {counts['no_face']} images with no face."
        )
        return dataset

    def _campaigns(self, dataset: Dataset, users: dict[str, User]) -> None:
        annotators = [users["annotator1"], users["annotator2"]]
        common: dict[str, Any] = {
            "datasets": [dataset],
            "created_by": users["researcher"],
            "annotators": annotators,
            "min_confidence": 0.5,
        }
        likert = create_campaign(
            name="Demo likert: rate face quality",
            protocol=Campaign.Protocol.LIKERT,
            instructions=INSTRUCTIONS + " 1 = badly broken face, 5 = flawless face.",
            overlap_k=2,
            gold_share=0.1,
            gold_tolerance=1,
            **common,
        )
        # Gold: the untouched photos should get 4–5, the inpainted (featureless) faces 1–2.
        faces = Face.objects.filter(generation__dataset=dataset, confidence__gte=0.5).select_related("generation")
        expected = {ORIGINAL_DM: "5", "demo-inpaint": "1"}
        answers = {f: expected[f.generation.model_name] for f in faces if f.generation.model_name in expected}
        add_gold_items(campaign=likert, answers=dict(list(answers.items())[:6]))
        pairwise = create_campaign(
            name="Demo pairwise: which face is better?",
            protocol=Campaign.Protocol.PAIRWISE,
            instructions=INSTRUCTIONS + " ← left better, → right better, ↓ tie, ↑ both bad.",
            overlap_k=2,
            max_pairs_per_prompt=12,
            **common,
        )
        self.stdout.write(
            f"Campaigns: {likert.items.count()} likert items, {pairwise.items.count()} pairwise items "
            f"(demo DMs: {ORIGINAL_DM}, {', '.join(DEGRADATIONS)})."
        )
