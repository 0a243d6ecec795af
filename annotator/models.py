"""The human side: generations and their faces, campaigns, items, leases and judgments.

The invariants that matter are enforced by the database, not by hope:
- one image (sha256) once per dataset;
- one judgment per annotator per item, one assignment per annotator per item (never the same
  item twice), and one judgment per client idempotency key;
- ``Item.judgment_count <= Item.judgments_wanted`` (at most k judgments per item), a CHECK
  constraint on a counter that is only incremented while the item row is locked.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

User = settings.AUTH_USER_MODEL


class Dataset(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def generation_upload_to(instance: Generation, filename: str) -> str:
    # Content-addressed: the same bytes always land at the same path.
    return f"generations/{instance.sha256[:2]}/{instance.sha256}.png"


class Generation(models.Model):
    class Source(models.TextChoices):
        IMPORTED = "imported"
        GENERATED = "generated"
        DEMO = "demo"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="generations")
    image = models.ImageField(upload_to=generation_upload_to, width_field="width", height_field="height")
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    original_filename = models.CharField(max_length=500, blank=True, default="")
    prompt = models.TextField()
    model_name = models.CharField(max_length=200)
    model_version = models.CharField(max_length=200, blank=True, default="")
    seed = models.BigIntegerField(null=True, blank=True)
    sampler = models.JSONField(default=dict, blank=True)
    extra = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.IMPORTED)
    faces_detected_at = models.DateTimeField(null=True, blank=True)
    face_detector = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "sha256"], name="generation_unique_image_per_dataset")
        ]
        indexes = [models.Index(fields=["dataset", "prompt"])]

    def __str__(self) -> str:
        return f"{self.model_name} #{self.pk}: {self.prompt[:40]}"

    @property
    def dm_label(self) -> str:
        return f"{self.model_name} {self.model_version}".strip()


class Face(models.Model):
    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="faces")
    # Box in pixels of the stored (EXIF-rotated, RGB) image: x0, y0 inclusive, x1, y1 exclusive.
    x0 = models.FloatField()
    y0 = models.FloatField()
    x1 = models.FloatField()
    y1 = models.FloatField()
    landmarks = models.JSONField(null=True, blank=True)  # 5 (x, y) points when the detector gives them
    detector = models.CharField(max_length=100)
    confidence = models.FloatField()

    class Meta:
        ordering = ["generation_id", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(x1__gt=models.F("x0")) & Q(y1__gt=models.F("y0")), name="face_box_not_empty")
        ]

    def __str__(self) -> str:
        return f"face {self.pk} of generation {self.generation_id}"

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def size_px(self) -> float:
        return min(self.x1 - self.x0, self.y1 - self.y0)


class Campaign(models.Model):
    class Protocol(models.TextChoices):
        LIKERT = "likert", "Rate one face 1–5"
        PAIRWISE = "pairwise", "Compare two faces"

    class Status(models.TextChoices):
        ACTIVE = "active"
        PAUSED = "paused"
        FINISHED = "finished"

    # What a researcher sets when making a campaign (form, API and admin alike).
    SETTINGS = (
        "name",
        "protocol",
        "instructions",
        "overlap_k",
        "gold_share",
        "gold_tolerance",
        "pause_threshold",
        "pause_min_gold",
        "lease_seconds",
        "blind",
    )

    name = models.CharField(max_length=200)
    protocol = models.CharField(max_length=16, choices=Protocol.choices)
    instructions = models.TextField(blank=True, default="")
    overlap_k = models.PositiveSmallIntegerField(default=3, help_text="Judgments wanted per item.")
    gold_share = models.FloatField(default=0.0, help_text="Share of served items that are gold items (0–1).")
    gold_tolerance = models.PositiveSmallIntegerField(
        default=1, help_text="Likert: a gold answer within this many points of the expected one counts as correct."
    )
    pause_threshold = models.FloatField(
        default=0.6, help_text="Pause an annotator whose gold accuracy falls under this share."
    )
    pause_min_gold = models.PositiveSmallIntegerField(
        default=4, help_text="Gold judgments needed before an annotator can be paused."
    )
    lease_seconds = models.PositiveIntegerField(default=600)
    blind = models.BooleanField(default=True, help_text="Annotators never see model names or metrics.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    datasets = models.ManyToManyField(Dataset, related_name="campaigns", blank=True)
    annotators: models.ManyToManyField = models.ManyToManyField(User, through="Membership", related_name="campaigns")
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(gold_share__gte=0) & Q(gold_share__lte=1), name="campaign_gold_share_0_1"),
            models.CheckConstraint(condition=Q(overlap_k__gte=1), name="campaign_overlap_k_positive"),
            models.CheckConstraint(condition=Q(pause_threshold__gte=0) & Q(pause_threshold__lte=1), name="campaign_pause_threshold_0_1"),
        ]

    def __str__(self) -> str:
        return self.name

    def progress(self) -> dict[str, int]:
        """Coverage of the regular (non-gold) items: judgments stored against judgments wanted."""
        agg = self.items.filter(is_gold=False).aggregate(
            items=models.Count("id"),
            complete=models.Count("id", filter=Q(judgment_count__gte=models.F("judgments_wanted"))),
            judged=models.Sum("judgment_count"),
            wanted=models.Sum("judgments_wanted"),
        )
        return {k: int(v or 0) for k, v in agg.items()}


class Membership(models.Model):
    """An annotator's place in one campaign: their display counter, gold record and pause state."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="memberships")
    annotator = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    pseudonym = models.CharField(max_length=32, default="")
    items_served = models.PositiveIntegerField(default=0)
    gold_served = models.PositiveIntegerField(default=0)
    gold_judged = models.PositiveIntegerField(default=0)
    gold_correct = models.PositiveIntegerField(default=0)
    paused_at = models.DateTimeField(null=True, blank=True)
    pause_reason = models.TextField(blank=True, default="")
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "annotator"], name="membership_unique"),
            models.CheckConstraint(condition=Q(gold_correct__lte=models.F("gold_judged")), name="membership_gold_correct_le_judged"),
        ]

    def __str__(self) -> str:
        return f"{self.pseudonym} in {self.campaign_id}"

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_judged if self.gold_judged else None


class Item(models.Model):
    """What one screen shows: a face (likert) or two faces in a stored left/right order (pairwise)."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="items")
    face = models.ForeignKey(Face, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    left_face = models.ForeignKey(Face, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    right_face = models.ForeignKey(Face, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    is_gold = models.BooleanField(default=False)
    # Likert: the expected rating 1–5. Pairwise: the expected Judgment.Choice.
    gold_answer = models.CharField(max_length=16, blank=True, default="")
    # k copied from the campaign when the item is made; NULL for gold items, which every
    # annotator may see once and which do not count towards coverage.
    judgments_wanted = models.PositiveSmallIntegerField(null=True, blank=True)
    judgment_count = models.PositiveSmallIntegerField(default=0)
    # What the annotation screen shows, written when the item is made so that serving an item
    # needs no joins: [{"position", "box", "image_width", "image_height"}, ...]. Faces that items
    # use are never moved or deleted (re-detection keeps them), so this cannot go stale.
    screen = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(judgments_wanted__isnull=True) | Q(judgment_count__lte=models.F("judgments_wanted")),
                name="item_at_most_k_judgments",
            ),
            models.CheckConstraint(
                condition=(Q(face__isnull=False) & Q(left_face__isnull=True) & Q(right_face__isnull=True))
                | (Q(face__isnull=True) & Q(left_face__isnull=False) & Q(right_face__isnull=False)),
                name="item_is_one_face_or_a_pair",
            ),
            models.CheckConstraint(condition=Q(is_gold=False) | ~Q(gold_answer=""), name="item_gold_has_answer"),
        ]
        # The claim walks a campaign's items in this order and stops at the first free one.
        indexes = [models.Index(fields=["campaign", "is_gold", "-judgment_count", "id"], name="item_claim_order")]

    def __str__(self) -> str:
        return f"item {self.pk} of campaign {self.campaign_id}"

    @property
    def faces(self) -> list[Face]:
        return [self.face] if self.face_id else [self.left_face, self.right_face]  # type: ignore[list-item]

    def is_complete(self) -> bool:
        return self.judgments_wanted is not None and self.judgment_count >= self.judgments_wanted

    @staticmethod
    def screen_of(faces: dict[str, Face]) -> list[dict[str, Any]]:
        """``screen`` for faces by position ("single", or "left" and "right")."""
        return [
            {
                "position": position,
                "box": [face.x0, face.y0, face.x1, face.y1],
                "image_width": face.generation.width,
                "image_height": face.generation.height,
            }
            for position, face in faces.items()
        ]

    @classmethod
    def for_faces(cls, campaign: Campaign, *, face: Face | None = None, pair: tuple[Face, Face] | None = None, **fields: Any) -> Item:
        """An unsaved item showing one face (likert) or a (left, right) pair, with its screen."""
        if pair is not None:
            left, right = pair
            return cls(campaign=campaign, left_face=left, right_face=right, screen=cls.screen_of({"left": left, "right": right}), **fields)
        assert face is not None
        return cls(campaign=campaign, face=face, screen=cls.screen_of({"single": face}), **fields)


class Assignment(models.Model):
    """A lease of one item to one annotator. One row per (item, annotator), ever."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUBMITTED = "submitted"
        SKIPPED = "skipped"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(User, on_delete=models.CASCADE, related_name="assignments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    display_index = models.PositiveIntegerField(help_text="Position of this item in the annotator's sequence.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="assignment_once_per_annotator"),
        ]
        indexes = [
            models.Index(fields=["item", "status", "expires_at"]),
            # The claim reads an annotator's live leases on every call; without this it scans
            # every assignment they ever had (0.53 ms at 400 rows, 0.06 ms with it).
            models.Index(
                fields=["annotator", "display_index"],
                condition=Q(status="active"),
                name="assignment_held_leases",
            ),
        ]

    def __str__(self) -> str:
        return f"lease of item {self.item_id} to {self.annotator_id} ({self.status})"

    def lease_holds(self, now: Any = None) -> bool:
        return self.expires_at > (now or timezone.now())


class Judgment(models.Model):
    class Choice(models.TextChoices):
        LEFT = "left", "Left better"
        RIGHT = "right", "Right better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"

    class Flag(models.TextChoices):
        BROKEN = "broken", "Broken image or no face"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="judgments")
    annotator = models.ForeignKey(User, on_delete=models.PROTECT, related_name="judgments")
    assignment = models.OneToOneField(Assignment, on_delete=models.PROTECT, related_name="judgment")
    rating = models.PositiveSmallIntegerField(null=True, blank=True)
    choice = models.CharField(max_length=16, choices=Choice.choices, blank=True, default="")
    flag = models.CharField(max_length=16, choices=Flag.choices, blank=True, default="")
    # What the annotator saw: for pairwise, the face shown on the left; the item's position in
    # their sequence; and how long the screen was up before they answered.
    shown_left_face = models.ForeignKey(Face, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    display_index = models.PositiveIntegerField()
    time_on_screen_ms = models.PositiveIntegerField()
    idempotency_key = models.UUIDField(unique=True, default=uuid.uuid4)
    gold_correct = models.BooleanField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="judgment_once_per_annotator"),
            models.CheckConstraint(
                condition=(Q(rating__isnull=False) & Q(choice="") & Q(flag=""))
                | (Q(rating__isnull=True) & ~Q(choice="") & Q(flag=""))
                | (Q(rating__isnull=True) & Q(choice="") & ~Q(flag="")),
                name="judgment_exactly_one_answer",
            ),
            models.CheckConstraint(
                condition=Q(rating__isnull=True) | (Q(rating__gte=1) & Q(rating__lte=5)),
                name="judgment_rating_1_to_5",
            ),
        ]

    def __str__(self) -> str:
        return f"judgment {self.pk} of item {self.item_id}"

    @property
    def answer(self) -> str:
        """The answer as one string: '1'…'5', a choice, or a flag."""
        return str(self.rating) if self.rating is not None else (self.choice or self.flag)
