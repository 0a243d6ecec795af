"""A seeded synthetic campaign in the database, with a known answer.

Each face has a true quality q (DM effect + prompt effect + face noise). Simulated annotators
rate ``round(3 + q + bias + noise)`` clipped to 1–5. Two face-level metric versions are scored:
``tracks`` = q + small noise and ``unrelated`` = pure noise; one image-level version repeats
the generation's mean quality. Gold items and a "broken" flag are added so reports can be
checked to leave them out.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.contrib.auth.models import Group, User
from django.utils import timezone

from annotator.campaigns import add_gold_items, create_campaign
from annotator.models import (
    Assignment,
    Campaign,
    Dataset,
    Face,
    Generation,
    Item,
    Judgment,
    Membership,
)
from benchmark.models import MetricVersion, Score

DMS = ("sd15", "rv51", "sdxl")


@dataclass
class SyntheticCampaign:
    campaign: Campaign
    tracks: MetricVersion
    unrelated: MetricVersion
    image_level: MetricVersion
    quality: dict[int, float]  # face id -> true quality
    annotators: list[User]


def make_synthetic_campaign(
    *,
    name: str = "synthetic",
    n_prompts: int = 30,
    n_annotators: int = 6,
    k: int = 3,
    seed: int = 0,
    protocol: str = "likert",
    two_faces_every: int = 4,
) -> SyntheticCampaign:
    rng = np.random.default_rng(seed)
    dataset = Dataset.objects.create(name=f"{name}-data")
    dm_effect = {"sd15": -0.6, "rv51": 0.0, "sdxl": 0.6}
    quality: dict[int, float] = {}
    generation_quality: dict[int, list[float]] = {}
    for p in range(n_prompts):
        prompt_effect = rng.normal(0, 0.4)
        for m, dm in enumerate(DMS):
            sha = hashlib.sha256(f"{name}/{p}/{m}".encode()).hexdigest()
            generation = Generation.objects.create(
                dataset=dataset,
                image=f"generations/{sha[:2]}/{sha}.png",
                sha256=sha,
                width=512,
                height=512,
                prompt=f"portrait number {p}",
                model_name=dm,
                model_version="1.0",
                seed=p,
            )
            n_faces = 2 if (p * len(DMS) + m) % two_faces_every == 0 else 1
            for f in range(n_faces):
                size = float(rng.integers(40, 200))
                face = Face.objects.create(
                    generation=generation,
                    x0=10 + 220 * f,
                    y0=10,
                    x1=10 + 220 * f + size,
                    y1=10 + size,
                    detector="test",
                    confidence=0.95,
                )
                q = dm_effect[dm] + prompt_effect + rng.normal(0, 1.0)
                quality[face.pk] = q
                generation_quality.setdefault(generation.pk, []).append(q)
    group, _ = Group.objects.get_or_create(name="annotator")
    annotators = []
    for a in range(n_annotators):
        user = User.objects.create_user(username=f"{name}-sim{a}", password=None)
        user.groups.add(group)
        annotators.append(user)
    campaign = create_campaign(
        name=name,
        protocol=protocol,
        datasets=[dataset],
        annotators=annotators,
        overlap_k=k,
        seed=seed,
    )
    face_ids = sorted(quality)
    add_gold_items(
        campaign=campaign,
        # The gold answer is the face's expected rating, so careful annotators mostly get it right.
        answers={
            Face.objects.get(pk=face_ids[0]): str(
                int(np.clip(np.round(3 + quality[face_ids[0]]), 1, 5))
            )
        }
        if protocol == "likert"
        else {
            (Face.objects.get(pk=i.left_face_id), Face.objects.get(pk=i.right_face_id)): "left"
            for i in campaign.items.all()[:1]
        },
    )
    bias = rng.normal(0, 0.2, n_annotators)
    noise = rng.uniform(0.4, 0.8, n_annotators)
    now = timezone.now()
    assignments, judgments = [], []
    display = {u.pk: 0 for u in annotators}
    items = list(Item.objects.filter(campaign=campaign).order_by("id"))
    for item in items:
        who = rng.permutation(n_annotators)[: (n_annotators if item.is_gold else k)]
        for a in who:
            user = annotators[int(a)]
            display[user.pk] += 1
            assignment = Assignment(
                item=item,
                annotator=user,
                status=Assignment.Status.SUBMITTED,
                display_index=display[user.pk],
                created_at=now,
                expires_at=now + timedelta(minutes=10),
            )
            assignments.append(assignment)
            fields: dict[str, object] = {}
            if protocol == "likert":
                q = quality[item.face_id]
                fields["rating"] = int(
                    np.clip(np.round(3 + q + bias[a] + rng.normal(0, noise[a])), 1, 5)
                )
            else:
                d = (
                    quality[item.left_face_id]
                    - quality[item.right_face_id]
                    + rng.normal(0, noise[a])
                )
                fields["choice"] = "tie" if abs(d) < 0.2 else ("left" if d > 0 else "right")
            judgments.append((item, user, assignment, fields))
    Assignment.objects.bulk_create(assignments)
    rows = []
    for item, user, assignment, fields in judgments:
        gold_correct = None
        if item.is_gold:
            gold_correct = str(fields.get("rating", fields.get("choice"))) == item.gold_answer
        rows.append(
            Judgment(
                item=item,
                annotator=user,
                assignment=assignment,
                display_index=assignment.display_index,
                time_on_screen_ms=int(rng.integers(800, 6000)),
                idempotency_key=uuid.uuid4(),
                shown_left_face_id=item.left_face_id,
                gold_correct=gold_correct,
                **fields,
            )
        )
    Judgment.objects.bulk_create(rows)
    for item in items:
        Item.objects.filter(pk=item.pk).update(
            judgment_count=Judgment.objects.filter(item=item).count()
        )
    # One regular face flagged broken by an extra annotator: it must not enter the statistics.
    extra = User.objects.create_user(username=f"{name}-flagger", password=None)
    extra.groups.add(group)
    Membership.objects.create(campaign=campaign, annotator=extra, pseudonym="A-flagger")
    flagged = next(i for i in items if not i.is_gold)
    flag_assignment = Assignment.objects.create(
        item=flagged,
        annotator=extra,
        status=Assignment.Status.SUBMITTED,
        display_index=1,
        expires_at=now + timedelta(minutes=10),
    )
    Judgment.objects.create(
        item=flagged,
        annotator=extra,
        assignment=flag_assignment,
        flag="broken",
        display_index=1,
        time_on_screen_ms=1000,
    )
    for user in annotators:
        gold = Judgment.objects.filter(item__campaign=campaign, item__is_gold=True, annotator=user)
        Membership.objects.filter(campaign=campaign, annotator=user).update(
            gold_judged=gold.count(), gold_correct=gold.filter(gold_correct=True).count()
        )

    tracks = MetricVersion.objects.create(
        metric="face_score", label="Face Score v2", level="face", weights_sha256="b" * 64
    )
    unrelated = MetricVersion.objects.create(
        metric="face_score", label="Face Score v1", level="face", weights_sha256="a" * 64
    )
    image_level = MetricVersion.objects.create(
        metric="imagereward", label="ImageReward", level="image"
    )
    Score.objects.bulk_create(
        [
            Score(metric_version=tracks, face_id=f, value=q + rng.normal(0, 0.3))
            for f, q in quality.items()
        ]
        + [Score(metric_version=unrelated, face_id=f, value=rng.normal(0, 1)) for f in quality]
        + [
            Score(
                metric_version=image_level,
                generation_id=g,
                value=float(np.mean(qs)) + rng.normal(0, 0.5),
            )
            for g, qs in generation_quality.items()
        ]
    )
    return SyntheticCampaign(campaign, tracks, unrelated, image_level, quality, annotators)
