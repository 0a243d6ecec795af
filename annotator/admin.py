from __future__ import annotations

from django.contrib import admin

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


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "created_by", "created_at")


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    list_display = ("id", "dataset", "model_name", "model_version", "seed", "width", "height", "faces_detected_at")
    list_filter = ("dataset", "model_name", "source")
    search_fields = ("prompt", "sha256", "original_filename")


@admin.register(Face)
class FaceAdmin(admin.ModelAdmin):
    list_display = ("id", "generation", "detector", "confidence", "x0", "y0", "x1", "y1")
    list_filter = ("detector",)
    raw_id_fields = ("generation",)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("annotator",)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "protocol", "overlap_k", "gold_share", "status", "created_at")
    list_filter = ("protocol", "status")
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("id", "campaign", "annotator", "pseudonym", "items_served", "gold_judged", "gold_correct", "paused_at")
    list_filter = ("campaign",)


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ("id", "campaign", "face", "left_face", "right_face", "is_gold", "judgment_count", "judgments_wanted")
    list_filter = ("campaign", "is_gold")
    raw_id_fields = ("face", "left_face", "right_face")


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "item", "annotator", "status", "display_index", "expires_at")
    list_filter = ("status",)
    raw_id_fields = ("item", "annotator")


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ("id", "item", "annotator", "rating", "choice", "flag", "time_on_screen_ms", "created_at")
    list_filter = ("item__campaign",)
    raw_id_fields = ("item", "annotator", "assignment", "shown_left_face")
