"""Researcher pages and API for metrics and scoring jobs."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path
from django.views.decorators.http import require_POST
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator.models import Dataset, Generation
from annotator.roles import IsResearcher, require_researcher
from benchmark.models import MetricVersion, Score, ScoringChunk
from benchmark.scoring import ScoringRefused, resume_scoring_job, start_scoring_job
from jobs.models import Job
from ml import metrics as metric_zoo


def metric_catalogue() -> list[dict[str, Any]]:
    """Every registered metric with its level and whether its weight files are here."""
    rows = []
    for name in metric_zoo.available():
        spec = metric_zoo.get_spec(name)
        missing = metric_zoo.missing_files(name, settings.FACEBENCH_WEIGHTS_DIR)
        rows.append(
            {
                "name": name,
                "level": spec.level,
                "description": spec.description,
                "files": list(spec.required_files),
                "missing": [str(p) for p in missing],
                "available": not missing,
            }
        )
    return rows


class ScoringForm(forms.Form):
    metrics = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple)
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())
    chunk_size = forms.IntegerField(initial=64, min_value=1, max_value=4096, help_text="Targets per GPU task.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["metrics"].choices = [  # type: ignore[attr-defined]
            (m["name"], m["name"] + ("" if m["available"] else " (weights missing)")) for m in metric_catalogue()
        ]


def _scoring_jobs() -> QuerySet[Job]:
    return Job.objects.filter(kind=Job.Kind.SCORE).select_related("created_by")[:20]


@login_required
def metric_list(request: HttpRequest) -> HttpResponse:
    require_researcher(request)
    form = ScoringForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = start_scoring_job(
                metrics=form.cleaned_data["metrics"],
                dataset=form.cleaned_data["dataset"],
                chunk_size=form.cleaned_data["chunk_size"],
                created_by=request.user,
            )
        except ScoringRefused as error:
            form.add_error(None, error.message)
        else:
            return redirect("scoring-job", pk=job.pk)
    versions = MetricVersion.objects.annotate(
        n_scores=Count("scores"), n_unscorable=Count("scores", filter=Q(scores__value__isnull=True))
    )
    context = {
        "catalogue": metric_catalogue(),
        "weights_dir": settings.FACEBENCH_WEIGHTS_DIR,
        "versions": versions,
        "form": form,
        "jobs": _scoring_jobs(),
    }
    return render(request, "benchmark/metrics.html", context)


def _scoring_job(request: HttpRequest, pk: int) -> Job:
    require_researcher(request)
    return get_object_or_404(Job, pk=pk, kind=Job.Kind.SCORE)


@login_required
def scoring_job(request: HttpRequest, pk: int) -> HttpResponse:
    job = _scoring_job(request, pk)
    chunks = (
        ScoringChunk.objects.filter(job=job)
        .values("metric", "status")
        .annotate(n=Count("id"))
        .order_by("metric", "status")
    )
    return render(request, "benchmark/scoring_job.html", {"job": job, "chunks": chunks})


@login_required
@require_POST
def scoring_job_resume(request: HttpRequest, pk: int) -> HttpResponse:
    job = _scoring_job(request, pk)
    n = resume_scoring_job(job)
    messages.success(request, f"Sent {n} unfinished chunks to the GPU queue again.")
    return redirect("scoring-job", pk=job.pk)


@login_required
@require_POST
def scoring_job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = _scoring_job(request, pk)
    Job.objects.filter(pk=job.pk).exclude(status__in=Job.FINISHED).update(cancel_requested=True)
    messages.success(request, "Cancel requested: chunks not started yet will be dropped.")
    return redirect("scoring-job", pk=job.pk)


# --- API -----------------------------------------------------------------------------------


class ScoringJobRequestSerializer(serializers.Serializer):
    metrics = serializers.ListField(child=serializers.CharField(), min_length=1)
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all(), required=False)
    generations = serializers.PrimaryKeyRelatedField(queryset=Generation.objects.all(), many=True, required=False)
    chunk_size = serializers.IntegerField(min_value=1, max_value=4096, default=64)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("dataset" in attrs) == ("generations" in attrs):
            raise serializers.ValidationError("Give either dataset or generations.")
        return attrs


class MetricSerializer(serializers.Serializer):
    name = serializers.CharField()
    level = serializers.CharField()
    description = serializers.CharField()
    files = serializers.ListField(child=serializers.CharField())
    missing = serializers.ListField(child=serializers.CharField())
    available = serializers.BooleanField()


class MetricVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = MetricVersion
        fields = ["id", "metric", "label", "level", "higher_is_better", "weights_sha256", "code_version", "settings", "created_at"]


class ScoreSerializer(serializers.ModelSerializer):
    class Meta:
        model = Score
        fields = ["id", "metric_version", "generation", "face", "value", "error", "updated_at"]


class MetricListAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]

    @extend_schema(responses=MetricSerializer(many=True))
    def get(self, request: Request) -> Response:
        """Every metric FaceBench knows, with the weight files it needs and which are missing."""
        return Response(metric_catalogue())


class MetricVersionListAPI(generics.ListAPIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]
    serializer_class = MetricVersionSerializer
    queryset = MetricVersion.objects.order_by("id")


class ScoreListAPI(generics.ListAPIView):
    """Scores, filtered by ``metric_version`` and/or ``dataset``."""

    permission_classes = [permissions.IsAuthenticated, IsResearcher]
    serializer_class = ScoreSerializer

    def get_queryset(self) -> QuerySet[Score]:
        scores = Score.objects.order_by("id")
        params = self.request.query_params
        if (version := params.get("metric_version", "")).isdigit():
            scores = scores.filter(metric_version_id=int(version))
        if (dataset := params.get("dataset", "")).isdigit():
            scores = scores.filter(
                Q(generation__dataset_id=int(dataset)) | Q(face__generation__dataset_id=int(dataset))
            )
        return scores


class ScoringJobAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]

    @extend_schema(request=ScoringJobRequestSerializer, responses={202: serializers.DictField()})
    def post(self, request: Request) -> Response:
        """Start a scoring job; follow it at ``/api/jobs/{id}/``."""
        body = ScoringJobRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            job = start_scoring_job(
                metrics=data["metrics"],
                dataset=data.get("dataset"),
                generation_ids=[g.pk for g in data["generations"]] if "generations" in data else None,
                chunk_size=data["chunk_size"],
                created_by=request.user,
            )
        except ScoringRefused as error:
            return Response({"detail": error.message}, status=status.HTTP_400_BAD_REQUEST)
        return Response(
            {"job": job.pk, "status": job.status, "progress_total": job.progress_total, "url": f"/api/jobs/{job.pk}/"},
            status=status.HTTP_202_ACCEPTED,
        )


urlpatterns: list[URLPattern] = [
    path("research/metrics/", metric_list, name="metrics"),
    path("research/scoring/<int:pk>/", scoring_job, name="scoring-job"),
    path("research/scoring/<int:pk>/resume/", scoring_job_resume, name="scoring-job-resume"),
    path("research/scoring/<int:pk>/cancel/", scoring_job_cancel, name="scoring-job-cancel"),
    path("api/metrics/", MetricListAPI.as_view(), name="api-metrics"),
    path("api/metric-versions/", MetricVersionListAPI.as_view(), name="api-metric-versions"),
    path("api/scores/", ScoreListAPI.as_view(), name="api-scores"),
    path("api/scoring-jobs/", ScoringJobAPI.as_view(), name="api-scoring-jobs"),
]
