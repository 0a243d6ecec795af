"""Making campaigns: their items (faces or within-prompt pairs), gold items and annotators."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, QuerySet

from annotator.assignment import Refused
from annotator.models import Campaign, Dataset, Face, Item, Judgment, Membership
from annotator.roles import is_annotator

ITEM_BATCH = 1000


def pseudonym(campaign_id: int, user_id: int) -> str:
    """A stable per-campaign alias: exports never carry usernames, and aliases don't link campaigns."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"{campaign_id}:{user_id}".encode(), hashlib.sha256)
    return "A-" + digest.hexdigest()[:10]


def faces_of(datasets: Iterable[Dataset], *, min_face_px: float = 0, min_confidence: float = 0) -> QuerySet[Face]:
    faces = Face.objects.filter(generation__dataset__in=list(datasets), confidence__gte=min_confidence)
    faces = faces.select_related("generation")
    if min_face_px:
        faces = faces.filter(x1__gte=F("x0") + min_face_px, y1__gte=F("y0") + min_face_px)
    return faces.order_by("generation_id", "id")


def _largest_face_per_generation(faces: Iterable[Face]) -> dict[int, Face]:
    largest: dict[int, Face] = {}
    for face in faces:
        best = largest.get(face.generation_id)
        if best is None or face.size_px > best.size_px:
            largest[face.generation_id] = face
    return largest


def pairwise_face_pairs(
    faces: Iterable[Face], *, seed: int = 0, max_pairs_per_prompt: int | None = None
) -> list[tuple[Face, Face]]:
    """(left, right) pairs of the largest faces of two generations of the same prompt by different DMs.

    Left/right is drawn at random (seeded) and then stored on the item, so every annotator sees
    the same order and the order is part of the data.
    """
    rng = random.Random(seed)
    by_prompt: dict[str, list[Face]] = defaultdict(list)
    for face in _largest_face_per_generation(faces).values():
        by_prompt[face.generation.prompt].append(face)
    pairs: list[tuple[Face, Face]] = []
    for prompt in sorted(by_prompt):
        group = sorted(by_prompt[prompt], key=lambda f: f.generation_id)
        cross_model = [
            (a, b) for a, b in itertools.combinations(group, 2) if a.generation.dm_label != b.generation.dm_label
        ]
        if max_pairs_per_prompt is not None and len(cross_model) > max_pairs_per_prompt:
            cross_model = rng.sample(cross_model, max_pairs_per_prompt)
        pairs += [(a, b) if rng.random() < 0.5 else (b, a) for a, b in cross_model]
    return pairs


@transaction.atomic
def create_campaign(
    *,
    name: str,
    protocol: str,
    datasets: Iterable[Dataset],
    created_by: User | None = None,
    annotators: Iterable[User] = (),
    min_face_px: float = 0,
    min_confidence: float = 0,
    max_pairs_per_prompt: int | None = None,
    seed: int = 0,
    **settings_: Any,
) -> Campaign:
    """A campaign with one item per face (likert) or per cross-DM face pair of a prompt (pairwise).

    ``settings_`` are Campaign fields: overlap_k, gold_share, gold_tolerance, pause_threshold,
    pause_min_gold, lease_seconds, instructions, blind.
    """
    if protocol not in Campaign.Protocol.values:
        raise Refused(f"Unknown protocol {protocol!r}; use one of {', '.join(Campaign.Protocol.values)}.", status=400)
    datasets = list(datasets)
    campaign = Campaign(name=name, protocol=protocol, created_by=created_by, **settings_)
    campaign.full_clean(exclude=["datasets", "annotators"])
    campaign.save()
    campaign.datasets.set(datasets)
    faces = faces_of(datasets, min_face_px=min_face_px, min_confidence=min_confidence)
    k = campaign.overlap_k
    if protocol == Campaign.Protocol.LIKERT:
        items = (Item.for_faces(campaign, face=face, judgments_wanted=k) for face in faces.iterator())
    else:
        pairs = pairwise_face_pairs(faces, seed=seed, max_pairs_per_prompt=max_pairs_per_prompt)
        items = (Item.for_faces(campaign, pair=pair, judgments_wanted=k) for pair in pairs)
    while batch := list(itertools.islice(items, ITEM_BATCH)):
        Item.objects.bulk_create(batch)
    add_annotators(campaign=campaign, users=annotators)
    return campaign


def add_annotators(*, campaign: Campaign, users: Iterable[User]) -> int:
    """Make users (who must have the annotator role) members of the campaign. Idempotent."""
    users = list(users)
    not_annotators = [u.get_username() for u in users if not is_annotator(u)]
    if not_annotators:
        raise Refused(f"Not annotators: {', '.join(not_annotators)}. Add them to the annotator group first.", status=400)
    created = Membership.objects.bulk_create(
        [Membership(campaign=campaign, annotator=u, pseudonym=pseudonym(campaign.pk, u.pk)) for u in users],
        ignore_conflicts=True,
    )
    return len(created)


def _check_gold_answer(protocol: str, answer: str) -> str:
    answer = str(answer).strip()
    if protocol == Campaign.Protocol.LIKERT:
        if answer not in {"1", "2", "3", "4", "5"}:
            raise Refused(f"A likert gold answer is a rating 1–5, not {answer!r}.", status=400)
    elif answer not in Judgment.Choice.values:
        raise Refused(f"A pairwise gold answer is one of {', '.join(Judgment.Choice.values)}, not {answer!r}.", status=400)
    return answer


@transaction.atomic
def add_gold_items(*, campaign: Campaign, answers: Mapping[Any, str]) -> list[Item]:
    """Gold (check) items: ``{face: "5"}`` for likert, ``{(left_face, right_face): "left"}`` for pairwise.

    Gold items are separate items with no k cap: every annotator may see each one once.
    """
    items = []
    for target, answer in answers.items():
        answer = _check_gold_answer(campaign.protocol, answer)
        if campaign.protocol == Campaign.Protocol.LIKERT:
            items.append(Item.for_faces(campaign, face=target, is_gold=True, gold_answer=answer))
        else:
            items.append(Item.for_faces(campaign, pair=tuple(target), is_gold=True, gold_answer=answer))
    return Item.objects.bulk_create(items)


def resume_annotator(*, campaign: Campaign, annotator: User) -> None:
    """A researcher lifts a pause; the gold record restarts so one bad streak does not pause again at once."""
    Membership.objects.filter(campaign=campaign, annotator=annotator).update(
        paused_at=None, pause_reason="", gold_judged=0, gold_correct=0
    )
