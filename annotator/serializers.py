"""API shapes. Annotator-facing shapes carry no model names, no gold flags and no metrics."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework import serializers

from annotator.models import Assignment, Campaign, Dataset, Face, Generation, Item, Judgment


def generation_image_url(generation_id: int) -> str:
    return reverse("generation-image", args=[generation_id])


def face_crop_url(face_id: int) -> str:
    return reverse("face-crop", args=[face_id])


def item_for_annotator(assignment: Assignment, protocol: str) -> dict[str, Any]:
    """What the annotation screen needs to show one leased item, and nothing more: item-scoped
    image URLs (annotators never learn face or generation ids), boxes and image sizes."""
    item: Item = assignment.item
    faces = [
        {
            **face,
            "crop_url": f"/images/items/{item.pk}/{face['position']}/crop.png",
            "image_url": f"/images/items/{item.pk}/{face['position']}/whole.png",
        }
        for face in item.screen
    ]
    return {
        "item_id": item.pk,
        "assignment_id": assignment.pk,
        "display_index": assignment.display_index,
        "protocol": protocol,
        "expires_at": assignment.expires_at.isoformat(),
        "faces": faces,
    }


class AnnotatorItemSerializer(serializers.Serializer):
    """Documentation of ``item_for_annotator`` for the OpenAPI schema."""

    item_id = serializers.IntegerField()
    assignment_id = serializers.IntegerField()
    display_index = serializers.IntegerField()
    protocol = serializers.ChoiceField(choices=Campaign.Protocol.choices)
    expires_at = serializers.DateTimeField()
    faces = serializers.ListField(child=serializers.DictField())


class NextItemsRequestSerializer(serializers.Serializer):
    count = serializers.IntegerField(min_value=1, max_value=8, default=1)


class NextItemsSerializer(serializers.Serializer):
    items = AnnotatorItemSerializer(many=True)
    paused = serializers.BooleanField()
    message = serializers.CharField(allow_blank=True)


class ItemRefSerializer(serializers.Serializer):
    item = serializers.IntegerField()


class JudgmentCreateSerializer(serializers.Serializer):
    idempotency_key = serializers.UUIDField()
    item = serializers.IntegerField()
    rating = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=5)
    choice = serializers.ChoiceField(choices=Judgment.Choice.choices, required=False, allow_blank=True)
    flag = serializers.ChoiceField(choices=Judgment.Flag.choices, required=False, allow_blank=True)
    time_on_screen_ms = serializers.IntegerField(min_value=0, max_value=24 * 3600 * 1000, default=0)


class JudgmentAckSerializer(serializers.Serializer):
    judgment_id = serializers.IntegerField()
    item = serializers.IntegerField()
    duplicate = serializers.BooleanField()
    gold_paused = serializers.BooleanField()
    message = serializers.CharField(allow_blank=True)


class JudgmentSerializer(serializers.ModelSerializer):
    answer = serializers.CharField(read_only=True)

    class Meta:
        model = Judgment
        fields = [
            "id",
            "item",
            "rating",
            "choice",
            "flag",
            "answer",
            "display_index",
            "shown_left_face",
            "time_on_screen_ms",
            "idempotency_key",
            "created_at",
        ]


class ResearcherJudgmentSerializer(JudgmentSerializer):
    annotator = serializers.SerializerMethodField()

    class Meta(JudgmentSerializer.Meta):
        fields = [*JudgmentSerializer.Meta.fields, "annotator", "gold_correct"]

    def get_annotator(self, judgment: Judgment) -> str:
        return self.context.get("pseudonyms", {}).get(judgment.annotator_id, "")


class AnnotatorCampaignSerializer(serializers.ModelSerializer):
    my_judgments = serializers.IntegerField(read_only=True)

    class Meta:
        model = Campaign
        fields = ["id", "name", "protocol", "instructions", "status", "my_judgments"]


class CampaignSerializer(serializers.ModelSerializer):
    """The researcher's view and the create/update shape."""

    datasets = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all(), many=True)
    annotators = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.all(), many=True, required=False
    )
    progress = serializers.SerializerMethodField()
    min_face_px = serializers.FloatField(write_only=True, required=False, default=0, min_value=0)
    min_confidence = serializers.FloatField(write_only=True, required=False, default=0, min_value=0, max_value=1)
    max_pairs_per_prompt = serializers.IntegerField(write_only=True, required=False, allow_null=True, min_value=1)
    seed = serializers.IntegerField(write_only=True, required=False, default=0)

    class Meta:
        model = Campaign
        fields = [
            "id",
            *Campaign.SETTINGS,
            "status",
            "datasets",
            "annotators",
            "progress",
            "created_at",
            "min_face_px",
            "min_confidence",
            "max_pairs_per_prompt",
            "seed",
        ]
        read_only_fields = ["created_at"]

    def get_progress(self, campaign: Campaign) -> dict[str, int]:
        return campaign.progress()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.instance is not None:
            frozen = {"protocol", "datasets", "overlap_k", "min_face_px", "min_confidence", "max_pairs_per_prompt", "seed"}
            changed = sorted(frozen & set(self.initial_data or {}))
            if changed:
                raise serializers.ValidationError(
                    f"{', '.join(changed)} cannot change after the campaign's items were made; create a new campaign."
                )
        return attrs


class GoldItemSerializer(serializers.Serializer):
    face = serializers.PrimaryKeyRelatedField(queryset=Face.objects.all(), required=False)
    left_face = serializers.PrimaryKeyRelatedField(queryset=Face.objects.all(), required=False)
    right_face = serializers.PrimaryKeyRelatedField(queryset=Face.objects.all(), required=False)
    answer = serializers.CharField(max_length=16)


class GenerationSerializer(serializers.ModelSerializer):
    image_url = serializers.SerializerMethodField()

    class Meta:
        model = Generation
        fields = [
            "id",
            "dataset",
            "image_url",
            "sha256",
            "width",
            "height",
            "original_filename",
            "prompt",
            "model_name",
            "model_version",
            "seed",
            "sampler",
            "extra",
            "source",
            "faces_detected_at",
            "face_detector",
            "created_at",
        ]

    def get_image_url(self, generation: Generation) -> str:
        return generation_image_url(generation.pk)


class FaceSerializer(serializers.ModelSerializer):
    crop_url = serializers.SerializerMethodField()

    class Meta:
        model = Face
        fields = ["id", "generation", "x0", "y0", "x1", "y1", "landmarks", "detector", "confidence", "crop_url"]

    def get_crop_url(self, face: Face) -> str:
        return face_crop_url(face.pk)
