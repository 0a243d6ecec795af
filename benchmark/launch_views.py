"""Launch pages and API for the jobs in ``benchmark.launch``'s registry, and the live job page.

Admins launch and cancel; researchers (and admins) read jobs, their curves, logs and artifacts;
annotators and anonymous users reach none of it. Every page works for every registered kind:
a new kind needs no view code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_POST
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator.roles import IsResearcher, is_admin, require_researcher
from benchmark import launch
from benchmark.models import FacePair
from jobs.models import Job, JobRecord

RECENT_JOBS = 50
MAX_CHART_POINTS = 600
PAIR_PREVIEWS = 6


# --- access ----------------------------------------------------------------------------------


def _require_admin(request: HttpRequest) -> None:
    if not is_admin(request.user):
        raise PermissionDenied("Only admins can launch or cancel jobs.")


def _kind_or_404(kind: str) -> launch.LaunchKind:
    if not launch.is_launchable(kind):
        raise Http404(f"{kind!r} is not a job kind that can be launched.")
    return launch.get_kind(kind)


def _job_for_reader(request: HttpRequest, pk: int) -> Job:
    require_researcher(request)
    return get_object_or_404(Job.objects.select_related("created_by"), pk=pk)


class IsAdmin(permissions.BasePermission):
    message = "Only admins can launch or cancel jobs."

    def has_permission(self, request: Any, view: Any) -> bool:
        return is_admin(request.user)


# --- reads: records, charts, the job's state as JSON -----------------------------------------


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[f"{prefix}{key}"] = float(value)
    return out


def job_records(job: Job, *, max_points: int = MAX_CHART_POINTS) -> list[dict[str, Any]]:
    """The job's step records (flattened: ``val_accuracy/crafted``), thinned to about
    ``max_points`` training steps; every record with a validation result is kept."""
    rows = JobRecord.objects.filter(job=job)
    count = rows.count()
    every = max(1, math.ceil(count / max_points))
    if every > 1:
        last = rows.order_by("-step").values_list("step", flat=True).first() or 0
        kept = [
            r
            for r in rows.values_list("step", "values")
            if r[0] % every == 0 or r[0] == last or _has_validation(r[1])
        ]
    else:
        kept = list(rows.values_list("step", "values"))
    return [{"step": step, **_flat(values)} for step, values in kept]


def _has_validation(values: Mapping[str, Any]) -> bool:
    return any(key.startswith("val") for key in values)


def _series(
    records: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> dict[str, list[tuple[float, float]]]:
    return {
        key: [(r["step"], r[key]) for r in records if key in r]
        for key in keys
        if any(key in r for r in records)
    }


def chart_specs(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Which charts a job's records make: loss (and training accuracy), validation accuracy,
    learning rate and gradient norm; each only when the records have its numbers."""
    keys = sorted({k for r in records for k in r if k != "step"})
    validation = [k for k in keys if k.startswith("val_accuracy/") or k.startswith("val_")]
    specs: list[dict[str, Any]] = [
        {"title": "Loss", "series": _series(records, ["loss"]), "y_range": None},
        {
            "title": "Validation accuracy",
            "series": _series(records, validation),
            "y_range": (0.0, 1.0),
        },
        {
            "title": "Training accuracy (batch)",
            "series": _series(records, ["accuracy"]),
            "y_range": (0.0, 1.0),
        },
        {"title": "Learning rate", "series": _series(records, ["lr"]), "y_range": None},
        {"title": "Gradient norm", "series": _series(records, ["grad_norm"]), "y_range": None},
    ]
    return [spec for spec in specs if spec["series"]]


PALETTE = ("#2457c5", "#d1495b", "#00798c", "#edae49", "#66a182", "#8d6a9f")


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def svg_line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    y_range: tuple[float, float] | None = None,
    width: int = 560,
    height: int = 200,
) -> SafeString:
    """A small server-side line chart (inline SVG): one polyline per series, step on x. Points
    of a series with a single value are drawn as dots, so a lone validation result shows."""
    points = [p for values in series.values() for p in values]
    left, right, top, bottom = 52, 12, 22, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    x_min = min(p[0] for p in points)
    x_max = max(p[0] for p in points)
    y_min, y_max = y_range if y_range else (min(p[1] for p in points), max(p[1] for p in points))
    if y_max <= y_min:
        y_min, y_max = y_min - 0.5, y_max + 0.5
    x_span = (x_max - x_min) or 1.0

    def xy(point: tuple[float, float]) -> str:
        x = left + (point[0] - x_min) / x_span * plot_w
        y = top + (1 - (point[1] - y_min) / (y_max - y_min)) * plot_h
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" class="chart" style="max-width:100%;height:auto">',
        f'<text x="{left}" y="14" font-size="12" font-weight="600">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#c4c9d0"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{_fmt(y_max)}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">{_fmt(y_min)}</text>',
        f'<text x="{left}" y="{height - 10}" font-size="10">step {int(x_min)}</text>',
        f'<text x="{left + plot_w}" y="{height - 10}" font-size="10" text-anchor="end">step {int(x_max)}</text>',
    ]
    for index, (name, values) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        coords = " ".join(xy(p) for p in values)
        if len(values) > 1:
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>'
            )
        for point in values if len(values) <= 40 else values[-1:]:
            x, y = xy(point).split(",")
            parts.append(
                f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"><title>{escape(name)} {_fmt(point[1])} at step {int(point[0])}</title></circle>'
            )
        label = name.split("/", 1)[-1]
        parts.append(
            f'<text x="{left + plot_w - 4}" y="{top + 12 + 12 * index}" font-size="10" text-anchor="end" fill="{color}">'
            f"{escape(label)}: {_fmt(values[-1][1])}</text>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every text above went through escape()


def job_charts(job: Job) -> list[SafeString]:
    return [
        svg_line_chart(spec["series"], title=spec["title"], y_range=spec["y_range"])
        for spec in chart_specs(job_records(job))
    ]


def job_state(job: Job, *, request: HttpRequest | None = None) -> dict[str, Any]:
    """What the live page polls and the API returns: status, progress, ETA, records, log, files."""
    spec = launch.get_kind(job.kind) if launch.is_launchable(job.kind) else None
    records = job_records(job)
    return {
        "id": job.pk,
        "kind": job.kind,
        "status": job.status,
        "is_finished": job.is_finished,
        "cancel_requested": job.cancel_requested,
        "progress_done": job.progress_done,
        "progress_total": job.progress_total,
        "percent": job.percent,
        "per_second": job.per_second,
        "eta_seconds": job.eta_seconds,
        "config": job.config,
        "result": job.result,
        "error": job.error,
        "log_tail": job.log_tail,
        "records": records,
        "last_step": records[-1]["step"] if records else None,
        "summary": [
            {"label": label, "text": text, "url": url}
            for label, text, url in (spec.summary(job) if spec and spec.summary else [])
        ],
        "artifacts": [
            {**f, "url": reverse("job-artifact", args=[job.pk, f["path"]])}
            for f in launch.artifact_files(job)
        ],
        "page": reverse("job-detail", args=[job.pk]),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _launched_jobs() -> Any:
    kinds = [k.kind for k in launch.kinds()]
    return Job.objects.filter(kind__in=kinds).select_related("created_by")[:RECENT_JOBS]


# --- pages -----------------------------------------------------------------------------------


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    require_researcher(request)
    return render(
        request,
        "benchmark/launch/job_list.html",
        {"jobs": _launched_jobs(), "kinds": launch.kinds()},
    )


@login_required
def launch_index(request: HttpRequest) -> HttpResponse:
    _require_admin(request)
    return render(
        request, "benchmark/launch/index.html", {"kinds": launch.kinds(), "jobs": _launched_jobs()}
    )


@login_required
def launch_kind(request: HttpRequest, kind: str) -> HttpResponse:
    _require_admin(request)
    spec = _kind_or_404(kind)
    if request.method == "POST":
        try:
            job = launch.launch(kind, request.POST, created_by=request.user)
        except launch.LaunchInvalid as invalid:
            form = invalid.form
        else:
            messages.success(request, f"{spec.title} job #{job.pk} queued.")
            return redirect("job-detail", pk=job.pk)
    else:
        initial: dict[str, Any] = {}
        source = request.GET.get("from", "")
        if source.isdigit():
            previous = Job.objects.filter(pk=int(source), kind=kind).first()
            if previous is not None:
                initial = spec.form_class.initial_from_config(previous.config)
        form = spec.form_class(initial=initial)
    return render(request, "benchmark/launch/form.html", {"spec": spec, "form": form})


@login_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for_reader(request, pk)
    spec = launch.get_kind(job.kind) if launch.is_launchable(job.kind) else None
    context = {
        "job": job,
        "spec": spec,
        "charts": job_charts(job),
        "summary": spec.summary(job) if spec and spec.summary else [],
        "artifacts": launch.artifact_files(job),
        "config_json": json.dumps(job.config, indent=2, sort_keys=True, ensure_ascii=False),
        "pairs": FacePair.objects.filter(crafting_job=job).order_by("id")[:PAIR_PREVIEWS],
        "n_pairs": FacePair.objects.filter(crafting_job=job).count(),
        "may_cancel": is_admin(request.user) and not job.is_finished,
        "may_launch": is_admin(request.user) and spec is not None,
    }
    if request.GET.get("part") == "charts":  # the live page swaps this part in while the job runs
        return render(request, "benchmark/launch/_charts.html", context)
    return render(request, "benchmark/launch/job.html", context)


@login_required
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    _require_admin(request)
    job = get_object_or_404(Job, pk=pk)
    if launch.cancel(job):
        messages.success(
            request, "Cancel requested: the job stops at its next step and keeps what it saved."
        )
    else:
        messages.info(request, "The job had already finished.")
    return redirect("job-detail", pk=job.pk)


@login_required
def job_artifact(request: HttpRequest, pk: int, relative: str) -> FileResponse:
    job = _job_for_reader(request, pk)
    try:
        path = launch.artifact_file(job, relative)
    except FileNotFoundError:
        raise Http404("No such file in this job's artifacts.") from None
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)


@login_required
def pair_image(request: HttpRequest, pk: int, which: str) -> FileResponse:
    require_researcher(request)
    pair = get_object_or_404(FacePair, pk=pk)
    field = {"good": pair.good_image, "bad": pair.bad_image, "mask": pair.mask_image}.get(which)
    if field is None:
        raise Http404("Choose good, bad or mask.")
    try:
        handle = field.open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404("The image file is missing.") from None
    response = FileResponse(handle, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


# --- API -------------------------------------------------------------------------------------


class LaunchAcceptedSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    status = serializers.CharField()
    url = serializers.CharField(help_text="Poll this for progress and step records.")
    page = serializers.CharField()


def _field_description(name: str, field: Any) -> dict[str, Any]:
    initial = field.initial() if callable(field.initial) else field.initial
    choices = getattr(field, "choices", None)
    return {
        "name": name,
        "label": str(field.label or name),
        "required": field.required,
        "default": launch.json_safe(initial),
        "help": str(field.help_text),
        "choices": [c[0] for c in choices]
        if choices is not None and not hasattr(field, "queryset")
        else None,
    }


class LaunchKindsAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsAdmin]

    @extend_schema(responses=OpenApiResponse(description="Launchable kinds with their settings"))
    def get(self, request: Request) -> Response:
        """Every job kind an admin can launch, with each setting's default, help and choices."""
        body = []
        for spec in launch.kinds():
            form = spec.form_class()
            body.append(
                {
                    "kind": spec.kind,
                    "title": spec.title,
                    "description": spec.description,
                    "queue": spec.queue,
                    "url": reverse("api-launch", args=[spec.kind]),
                    "fields": [
                        _field_description(name, field) for name, field in form.fields.items()
                    ],
                }
            )
        return Response(body)


class LaunchAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsAdmin]

    @extend_schema(
        request={"application/json": {"type": "object"}},
        responses={
            202: LaunchAcceptedSerializer,
            400: OpenApiResponse(description="Errors by field"),
        },
    )
    def post(self, request: Request, kind: str) -> Response:
        """Launch a job of this kind. The body names the settings to change; the rest take their
        defaults (``GET /api/launch/`` lists them). Errors come back by field, nothing is created."""
        _kind_or_404(kind)
        if not isinstance(request.data, Mapping):
            return Response(
                {"detail": "Send a JSON object of settings."}, status=status.HTTP_400_BAD_REQUEST
            )
        data = _querydict(request.data) if hasattr(request.data, "lists") else dict(request.data)
        try:
            job = launch.launch(kind, data, created_by=request.user, fill_defaults=True)
        except launch.LaunchInvalid as invalid:
            return Response(
                {"errors": invalid.form.errors.get_json_data()}, status=status.HTTP_400_BAD_REQUEST
            )
        body = {
            "job": job.pk,
            "status": job.status,
            "url": reverse("api-job-progress", args=[job.pk]),
            "page": reverse("job-detail", args=[job.pk]),
        }
        return Response(body, status=status.HTTP_202_ACCEPTED)


def _querydict(data: Any) -> dict[str, Any]:
    """A form-encoded body as a dict: lists where a key repeats."""
    return {key: values if len(values) > 1 else values[0] for key, values in data.lists()}


class JobProgressAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]

    @extend_schema(
        responses=OpenApiResponse(
            description="Status, progress, ETA, step records, log tail, artifacts"
        )
    )
    def get(self, request: Request, pk: int) -> Response:
        """A job's live state: status, progress and ETA, its step records (loss, lr, grad norm,
        validation accuracy, thinned for long runs), log tail, summary and artifact files."""
        job = get_object_or_404(Job, pk=pk)
        return Response(job_state(job))


class JobCancelAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsAdmin]

    @extend_schema(
        request=None,
        responses={
            202: OpenApiResponse(description="Cancel requested"),
            409: OpenApiResponse(description="Already finished"),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        """Ask a job to stop: a queued job is cancelled at once, a running one at its next step."""
        job = get_object_or_404(Job, pk=pk)
        if not launch.cancel(job):
            return Response(
                {"detail": f"Job {job.pk} already finished ({job.status})."},
                status=status.HTTP_409_CONFLICT,
            )
        job.refresh_from_db()
        return Response(
            {"job": job.pk, "status": job.status, "cancel_requested": True},
            status=status.HTTP_202_ACCEPTED,
        )


urlpatterns: list[URLPattern] = [
    path("jobs/", job_list, name="jobs"),
    path("launch/", launch_index, name="launch"),
    path("launch/<slug:kind>/", launch_kind, name="launch-kind"),
    path("jobs/<int:pk>/", job_detail, name="job-detail"),
    path("jobs/<int:pk>/cancel/", job_cancel, name="job-cancel"),
    path("jobs/<int:pk>/artifacts/<path:relative>", job_artifact, name="job-artifact"),
    path("pairs/<int:pk>/<slug:which>.png", pair_image, name="pair-image"),
    path("api/launch/", LaunchKindsAPI.as_view(), name="api-launch-kinds"),
    path("api/launch/<slug:kind>/", LaunchAPI.as_view(), name="api-launch"),
    path("api/jobs/<int:pk>/progress/", JobProgressAPI.as_view(), name="api-job-progress"),
    path("api/jobs/<int:pk>/cancel/", JobCancelAPI.as_view(), name="api-job-cancel"),
]
