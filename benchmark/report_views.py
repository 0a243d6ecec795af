"""Researcher pages and API for reports, the live campaign dashboard and dataset snapshots."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator.exports import csv_safe
from annotator.models import Campaign
from annotator.roles import IsResearcher, require_researcher
from benchmark import figures
from benchmark.dashboard import campaign_dashboard
from benchmark.models import MetricVersion, Report
from benchmark.reports import (
    AGGREGATIONS,
    COLUMN_LABELS,
    CSV_COLUMNS,
    DEFAULT_SETTINGS,
    ReportRefused,
    ci_text,
    format_number,
    negated,
    number_rows,
    rebuild_report,
    start_report_job,
)
from benchmark.snapshots import start_export_job
from jobs.models import Job


def _report_for_researcher(request: HttpRequest, pk: int) -> Report:
    require_researcher(request)
    return get_object_or_404(Report, pk=pk)


def _campaign_for_researcher(request: HttpRequest, pk: int) -> Campaign:
    require_researcher(request)
    return get_object_or_404(Campaign, pk=pk)


def _export_job_for_researcher(request: HttpRequest, pk: int) -> Job:
    require_researcher(request)
    return get_object_or_404(Job, pk=pk, kind=Job.Kind.EXPORT)


# --- pages: reports --------------------------------------------------------------------------


class ReportForm(forms.Form):
    title = forms.CharField(max_length=200)
    campaigns = forms.ModelMultipleChoiceField(
        queryset=Campaign.objects.all(), widget=forms.CheckboxSelectMultiple
    )
    metric_versions = forms.ModelMultipleChoiceField(
        queryset=MetricVersion.objects.order_by("metric", "id"), widget=forms.CheckboxSelectMultiple
    )
    n_boot = forms.IntegerField(
        initial=DEFAULT_SETTINGS["n_boot"],
        min_value=10,
        max_value=100_000,
        help_text="Bootstrap resamples of prompts and annotators.",
    )
    seed = forms.IntegerField(
        initial=DEFAULT_SETTINGS["seed"],
        help_text="Seeds the bootstrap: the same seed rebuilds the same numbers.",
    )
    level = forms.FloatField(
        initial=DEFAULT_SETTINGS["level"],
        min_value=0.5,
        max_value=0.999,
        help_text="Confidence level of the intervals.",
    )
    image_aggregation = forms.ChoiceField(
        choices=[(a, a) for a in AGGREGATIONS],
        initial=DEFAULT_SETTINGS["image_aggregation"],
        help_text="Image-level value of a face-level metric: mean of its faces, the worst face, or the largest face.",
    )

    def report_settings(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {k: data[k] for k in ("n_boot", "seed", "level", "image_aggregation")}


@login_required
def report_list(request: HttpRequest) -> HttpResponse:
    require_researcher(request)
    form = ReportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = start_report_job(
                title=form.cleaned_data["title"],
                campaigns=form.cleaned_data["campaigns"],
                metric_versions=form.cleaned_data["metric_versions"],
                settings=form.report_settings(),
                created_by=request.user,
            )
        except ReportRefused as error:
            form.add_error(None, error.message)
        else:
            return redirect("report-detail", pk=job.config["report_id"])
    reports = Report.objects.select_related("job", "created_by").prefetch_related(
        "campaigns", "metric_versions"
    )[:50]
    # Refresh while a report is being built, so it turns "ready" without a reload.
    building = any(r.job and not r.job.is_finished for r in reports)
    return render(
        request,
        "benchmark/report_list.html",
        {"reports": reports, "form": form, "building": building},
    )


def headline_table(results: Mapping[str, Any]) -> dict[str, Any]:
    headline = results["headline"]
    columns = headline["columns"]
    rows = []
    for row in headline["rows"]:
        cells = [
            {
                "text": ci_text(row["values"].get(c)),
                "best": headline["best"].get(c) == row["metric"],
            }
            for c in columns
        ]
        rows.append({"metric": row["metric"], "cells": cells})
    ceiling = headline.get("human_ceiling", {})
    return {
        "columns": [{"key": c, "label": COLUMN_LABELS.get(c, c)} for c in columns],
        "rows": rows,
        "ceiling": [ci_text(ceiling.get(c)) if c in ceiling else "" for c in columns],
        "has_ceiling": bool(ceiling),
    }


def leaderboard_table(results: Mapping[str, Any]) -> dict[str, Any]:
    board = results["dm_leaderboard"]
    labels = results["dm_labels"]
    ranks = figures.dm_ranks(results)
    human_key = "human_mean" if "human_mean" in board else "bradley_terry_log_strength"
    human = board.get(human_key, [])
    info = {m["name"]: m for m in results.get("metric_info", [])}
    metrics = list(board.get("metric_mean", {}))
    rows = []
    for k, label in enumerate(labels):
        cells = []
        for m in metrics:
            ci = board["metric_mean"][m][k]
            if not info.get(m, {}).get("higher_is_better", True):
                ci = negated(ci)  # the engine saw the negated values; show the metric's own units
            cells.append({"text": ci_text(ci), "rank": ranks.get(m, [None] * len(labels))[k]})
        rows.append(
            {
                "dm": label,
                "human": ci_text(human[k]) if k < len(human) else "–",
                "human_rank": ranks.get("humans", [None] * len(labels))[k],
                "cells": cells,
            }
        )
    rows.sort(key=lambda r: (r["human_rank"] is None, r["human_rank"] or 0))
    return {
        "human_label": "Human mean rating"
        if human_key == "human_mean"
        else "Bradley–Terry log strength",
        "metrics": metrics,
        "rows": rows,
    }


def reliability_context(results: Mapping[str, Any]) -> dict[str, Any]:
    reliability = results.get("reliability", {})
    likert = reliability.get("likert", {})
    annotators = results.get("annotators", [])
    loo = likert.get("leave_one_out_per_annotator", {})
    self_consistency = (likert or reliability.get("pairwise", {})).get("self_consistency", {})
    gold = {g["annotator"]: g for g in results.get("gold", {}).get("per_annotator", [])}
    rows = []
    for a, alias in enumerate(annotators):
        g = gold.get(alias, {})
        rows.append(
            {
                "annotator": alias,
                "loo_spearman": format_number((loo.get("spearman") or [None] * len(annotators))[a]),
                "self_consistency": format_number(
                    (self_consistency.get("value") or [None] * len(annotators))[a]
                ),
                "gold": f"{g['gold_correct']} / {g['gold_judged']}"
                if g.get("gold_judged")
                else "–",
                "paused": g.get("paused", False),
            }
        )
    split = likert.get("split_half", {})
    return {
        "alpha_ordinal": format_number(likert.get("krippendorff_alpha_ordinal")),
        "alpha_interval": format_number(likert.get("krippendorff_alpha_interval")),
        "split_half": format_number(split.get("spearman_spearman_brown")),
        "has_likert": bool(likert),
        "rows": rows,
    }


def breakdown_tables(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    titles = {"dm": "By DM", "face_size": "By face size (tertiles of the face box's shorter side)"}
    metrics = results.get("metrics", [])
    tables = []
    for group, blocks in results.get("breakdowns", {}).items():
        rows = []
        for block in blocks:
            cells = []
            for m in metrics:
                values = block.get("metrics", {}).get(m, {})
                cells.append(
                    ci_text(
                        values.get("face_spearman") or values.get("campaign_accuracy_with_ties")
                    )
                )
            rows.append(
                {
                    "label": block["label"],
                    "n_faces": block["n_faces"],
                    "human": format_number(block.get("human_mean"), 2),
                    "cells": cells,
                }
            )
        tables.append({"title": titles.get(group, group), "rows": rows})
    return tables


def comparison(results: Mapping[str, Any], a: str, b: str) -> list[dict[str, Any]]:
    """Column by column: metric a, metric b, and a − b with the CI of the difference."""
    values = {r["metric"]: r["values"] for r in results["headline"]["rows"]}
    out = []
    for column in results["headline"]["columns"]:
        diff: dict[str, Any] | None = None
        for pair in results.get("differences", {}).get(column, []):
            if (pair["a"], pair["b"]) == (a, b):
                diff = pair
            elif (pair["a"], pair["b"]) == (b, a):
                diff = negated(pair)
        excludes_zero = bool(
            diff and diff.get("low") is not None and (diff["low"] > 0 or diff["high"] < 0)
        )
        out.append(
            {
                "label": COLUMN_LABELS.get(column, column),
                "a": ci_text(values[a].get(column)),
                "b": ci_text(values[b].get(column)),
                "difference": ci_text(diff),
                "excludes_zero": excludes_zero,
            }
        )
    return out


def default_pair(results: Mapping[str, Any]) -> tuple[str, str] | None:
    """Two versions of the same metric when the report has them (v1 vs v2), else the first two."""
    info = results.get("metric_info", [])
    plain = [m for m in info if not m.get("image_aggregation")]
    for i, first in enumerate(plain):
        for second in plain[i + 1 :]:
            if first["metric"] == second["metric"]:
                return first["name"], second["name"]
    names = [m["name"] for m in info]
    return (names[0], names[1]) if len(names) >= 2 else None


def figure_bytes(report: Report, name: str, fmt: str) -> bytes:
    """A figure of a finished report, drawn once per process and cached (reports are frozen)."""
    key = f"facebench:report-figure:{report.pk}:{report.job_id}:{report.created_at.timestamp()}:{name}:{fmt}"
    data = cache.get(key)
    if data is None:
        data = figures.render_figure(report.results, name, fmt)
        cache.set(key, data, timeout=None)
    return data


@login_required
def report_detail(request: HttpRequest, pk: int) -> HttpResponse:
    report = _report_for_researcher(request, pk)
    context: dict[str, Any] = {"report": report, "job": report.job}
    results = report.results
    if results.get("headline"):
        names = [m["name"] for m in results.get("metric_info", [])]
        pair = default_pair(results)
        a, b = request.GET.get("a", ""), request.GET.get("b", "")
        if a in names and b in names and a != b:
            pair = (a, b)
        context.update(
            headline=headline_table(results),
            leaderboard=leaderboard_table(results),
            reliability=reliability_context(results),
            breakdowns=breakdown_tables(results),
            metric_names=names,
            pair=pair,
            comparison=comparison(results, *pair) if pair else [],
            figures=[
                {
                    "name": name,
                    "title": figures.figure_title(results, name),
                    # Our own matplotlib output from stored numbers: safe to inline.
                    "svg": mark_safe(figure_bytes(report, name, "svg").decode()),  # noqa: S308
                }
                for name in figures.figure_names(results)
            ],
            metric_info=results.get("metric_info", []),
        )
    return render(request, "benchmark/report_detail.html", context)


@login_required
@require_POST
def report_rebuild(request: HttpRequest, pk: int) -> HttpResponse:
    report = _report_for_researcher(request, pk)
    try:
        job = rebuild_report(report, created_by=request.user)
    except ReportRefused as error:  # e.g. a campaign of the report was deleted since
        messages.error(request, f"Cannot rebuild: {error.message}")
        return redirect("report-detail", pk=report.pk)
    messages.success(request, "Rebuilding with the same campaigns, metric versions and settings.")
    return redirect("report-detail", pk=job.config["report_id"])


def report_csv(results: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in number_rows(results):
        writer.writerow({k: csv_safe(v) for k, v in row.items()})
    return buffer.getvalue()


def _finished_results(report: Report) -> dict[str, Any]:
    if not report.results.get("headline"):
        raise Http404("This report has no results yet.")
    return report.results


@login_required
def report_download(request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
    report = _report_for_researcher(request, pk)
    results = _finished_results(report)
    if fmt == "json":
        body = json.dumps(
            {
                "id": report.pk,
                "title": report.title,
                "settings": report.settings,
                "results": results,
            },
            indent=1,
            ensure_ascii=False,
        )
        response = HttpResponse(body, content_type="application/json")
    elif fmt == "csv":
        response = HttpResponse(report_csv(results), content_type="text/csv")
    else:
        raise Http404("Reports download as .json or .csv.")
    response["Content-Disposition"] = f'attachment; filename="report-{report.pk}.{fmt}"'
    return response


@login_required
def report_figure(request: HttpRequest, pk: int, name: str, fmt: str) -> HttpResponse:
    report = _report_for_researcher(request, pk)
    results = _finished_results(report)
    if fmt not in figures.FORMATS or name not in figures.figure_names(results):
        raise Http404("No such figure.")
    response = HttpResponse(figure_bytes(report, name, fmt), content_type=figures.FORMATS[fmt])
    if request.GET.get("download"):
        response["Content-Disposition"] = f'attachment; filename="report-{report.pk}-{name}.{fmt}"'
    return response


# --- pages: dashboard and snapshots ----------------------------------------------------------


@login_required
def campaign_dashboard_page(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign_for_researcher(request, pk)
    data = campaign_dashboard(campaign)
    exports = Job.objects.filter(kind=Job.Kind.EXPORT, config__campaign_id=campaign.pk)[:5]
    return render(
        request,
        "benchmark/campaign_dashboard.html",
        {
            "campaign": campaign,
            "d": data,
            "alpha": format_number(data["alpha"]["value"]),
            "exports": exports,
        },
    )


@login_required
@require_POST
def campaign_snapshot(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign_for_researcher(request, pk)
    job = start_export_job(campaign, created_by=request.user)
    return redirect("export-job", pk=job.pk)


@login_required
def export_job(request: HttpRequest, pk: int) -> HttpResponse:
    job = _export_job_for_researcher(request, pk)
    campaign = Campaign.objects.filter(pk=job.config.get("campaign_id")).first()
    # A list, not the dict: the template language would read rows.items as the "items" table.
    tables = sorted((job.result.get("rows") or {}).items())
    return render(
        request, "benchmark/export_job.html", {"job": job, "campaign": campaign, "tables": tables}
    )


def _snapshot_file(job: Job) -> FileResponse:
    zip_path = job.result.get("zip") if job.status == Job.Status.SUCCEEDED else None
    if not zip_path or not default_storage.exists(zip_path):
        raise Http404("This snapshot is not ready.")
    return FileResponse(
        default_storage.open(zip_path, "rb"),
        as_attachment=True,
        filename=f"facebench-campaign-{job.config.get('campaign_id')}-snapshot-{job.pk}.zip",
        content_type="application/zip",
    )


@login_required
def export_download(request: HttpRequest, pk: int) -> FileResponse:
    return _snapshot_file(_export_job_for_researcher(request, pk))


# --- API ---------------------------------------------------------------------------------------


class ReportRequestSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200)
    campaigns = serializers.PrimaryKeyRelatedField(queryset=Campaign.objects.all(), many=True)
    metric_versions = serializers.PrimaryKeyRelatedField(
        queryset=MetricVersion.objects.all(), many=True
    )
    n_boot = serializers.IntegerField(
        min_value=10, max_value=100_000, default=DEFAULT_SETTINGS["n_boot"]
    )
    seed = serializers.IntegerField(default=DEFAULT_SETTINGS["seed"])
    level = serializers.FloatField(
        min_value=0.5, max_value=0.999, default=DEFAULT_SETTINGS["level"]
    )
    image_aggregation = serializers.ChoiceField(
        choices=list(AGGREGATIONS), default=DEFAULT_SETTINGS["image_aggregation"]
    )


class ReportSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = [
            "id",
            "title",
            "campaigns",
            "metric_versions",
            "settings",
            "job",
            "status",
            "created_by",
            "created_at",
        ]

    def get_status(self, report: Report) -> str:
        if report.results.get("headline"):
            return "ready"
        return report.job.status if report.job else "missing"


class ReportDetailSerializer(ReportSerializer):
    class Meta(ReportSerializer.Meta):
        fields = [*ReportSerializer.Meta.fields, "results"]


class JobStartedSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    status = serializers.CharField()
    url = serializers.CharField(help_text="Follow the job here.")
    report = serializers.IntegerField(required=False)
    report_url = serializers.CharField(
        required=False, help_text="The report, with results once the job succeeded."
    )
    download = serializers.CharField(
        required=False, help_text="Where the result downloads once the job succeeded."
    )


class ReportListAPI(generics.ListAPIView):
    """Reports, newest first; POST builds a new one in a report job."""

    permission_classes = [permissions.IsAuthenticated, IsResearcher]
    serializer_class = ReportSerializer
    queryset = Report.objects.select_related("job").prefetch_related("campaigns", "metric_versions")

    @extend_schema(request=ReportRequestSerializer, responses={202: JobStartedSerializer})
    def post(self, request: Request) -> Response:
        body = ReportRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            job = start_report_job(
                title=data["title"],
                campaigns=data["campaigns"],
                metric_versions=data["metric_versions"],
                settings={k: data[k] for k in ("n_boot", "seed", "level", "image_aggregation")},
                created_by=request.user,
            )
        except ReportRefused as error:
            return Response({"detail": error.message}, status=status.HTTP_400_BAD_REQUEST)
        report_id = job.config["report_id"]
        return Response(
            {
                "job": job.pk,
                "status": job.status,
                "url": reverse("api-job", args=[job.pk]),
                "report": report_id,
                "report_url": reverse("api-report", args=[report_id]),
            },
            status=status.HTTP_202_ACCEPTED,
        )


class ReportDetailAPI(generics.RetrieveAPIView):
    """One report with every number (``results``, the same JSON as the page's report.json)."""

    permission_classes = [permissions.IsAuthenticated, IsResearcher]
    serializer_class = ReportDetailSerializer
    queryset = Report.objects.select_related("job").prefetch_related("campaigns", "metric_versions")


class CampaignSnapshotAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]

    @extend_schema(request=None, responses={202: JobStartedSerializer})
    def post(self, request: Request, pk: int) -> Response:
        """Start a dataset snapshot export (Parquet + card.json, zipped) of the campaign."""
        campaign = get_object_or_404(Campaign, pk=pk)
        job = start_export_job(campaign, created_by=request.user)
        return Response(
            {
                "job": job.pk,
                "status": job.status,
                "url": reverse("api-job", args=[job.pk]),
                "download": reverse("api-export-download", args=[job.pk]),
            },
            status=status.HTTP_202_ACCEPTED,
        )


class CampaignDashboardAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, pk: int) -> Response:
        """The live dashboard's numbers: coverage, throughput, annotators, gold, α so far."""
        return Response(campaign_dashboard(get_object_or_404(Campaign, pk=pk)))


class ExportDownloadAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    def get(self, request: Request, pk: int) -> FileResponse:
        """The snapshot zip of a finished export job."""
        return _snapshot_file(get_object_or_404(Job, pk=pk, kind=Job.Kind.EXPORT))


urlpatterns: list[URLPattern] = [
    path("research/reports/", report_list, name="report-list"),
    path("research/reports/<int:pk>/", report_detail, name="report-detail"),
    path("research/reports/<int:pk>/rebuild/", report_rebuild, name="report-rebuild"),
    path("research/reports/<int:pk>/report.<str:fmt>", report_download, name="report-download"),
    path(
        "research/reports/<int:pk>/figures/<str:name>.<str:fmt>",
        report_figure,
        name="report-figure",
    ),
    path(
        "research/campaigns/<int:pk>/dashboard/", campaign_dashboard_page, name="campaign-dashboard"
    ),
    path("research/campaigns/<int:pk>/snapshot/", campaign_snapshot, name="campaign-snapshot"),
    path("research/exports/<int:pk>/", export_job, name="export-job"),
    path("research/exports/<int:pk>/download/", export_download, name="export-download"),
    path("api/reports/", ReportListAPI.as_view(), name="api-reports"),
    path("api/reports/<int:pk>/", ReportDetailAPI.as_view(), name="api-report"),
    path(
        "api/campaigns/<int:pk>/snapshot/",
        CampaignSnapshotAPI.as_view(),
        name="api-campaign-snapshot",
    ),
    path(
        "api/campaigns/<int:pk>/dashboard/",
        CampaignDashboardAPI.as_view(),
        name="api-campaign-dashboard",
    ),
    path("api/exports/<int:pk>/download/", ExportDownloadAPI.as_view(), name="api-export-download"),
]
