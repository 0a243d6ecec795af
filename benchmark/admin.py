from __future__ import annotations

from django.contrib import admin

from benchmark.models import FacePair, MetricVersion, Report, Score, ScoringChunk


@admin.register(MetricVersion)
class MetricVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "metric", "label", "level", "weights_sha256", "code_version", "created_at")
    list_filter = ("metric", "level")


@admin.register(Score)
class ScoreAdmin(admin.ModelAdmin):
    list_display = ("id", "metric_version", "generation", "face", "value", "error")
    list_filter = ("metric_version",)
    raw_id_fields = ("generation", "face")


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "created_by", "created_at")
    filter_horizontal = ("campaigns", "metric_versions")


@admin.register(ScoringChunk)
class ScoringChunkAdmin(admin.ModelAdmin):
    list_display = ("id", "job", "metric", "index", "size", "status", "unscorable", "seconds", "worker")
    list_filter = ("status", "metric")
    raw_id_fields = ("job", "metric_version")


@admin.register(FacePair)
class FacePairAdmin(admin.ModelAdmin):
    list_display = ("id", "crafting_job", "source_key", "face_index", "split", "seed", "fs_good", "fs_bad")
    list_filter = ("split",)
    raw_id_fields = ("crafting_job", "source_generation", "source_face")
