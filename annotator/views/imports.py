"""Datasets and imports for researchers (pages + API), and the image endpoints every user needs.

Researchers (and admins) list datasets, upload generations (a zip, or a manifest and its images)
and follow the import job; the import itself always runs in a Celery worker. The two image
views serve stored PNGs and face crops through the storage API to any logged-in user: they
carry no model name, so blind annotation screens can use them.
"""

from __future__ import annotations

import io
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST
from drf_spectacular.utils import extend_schema, extend_schema_field
from PIL import Image
from rest_framework import generics, permissions, serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator.detection import start_detection_job
from annotator.imports import ImportRejected, start_import_job
from annotator.models import Dataset, Face, Generation
from annotator.roles import IsResearcher, is_researcher, require_researcher
from jobs.models import Job
from ml.faces.crops import crop_face

IMAGE_CACHE_CONTROL = "private, max-age=3600"
THUMBNAILS_PER_PAGE = 60
FACE_CROP_MARGIN = 0.25
FACE_CROP_MAX_SIDE = 512


# --- access ----------------------------------------------------------------------------------


def _may_see_job(user: Any, job: Job) -> bool:
    return is_researcher(user) or (user.is_authenticated and job.created_by_id == user.pk)


def _get_job_for_user(request: HttpRequest, pk: int) -> Job:
    job = get_object_or_404(Job, pk=pk)
    if not _may_see_job(request.user, job):
        raise PermissionDenied("Only researchers and the job's creator can see this job.")
    return job


# --- reads -------------------------------------------------------------------------------------


def datasets_with_counts() -> QuerySet[Dataset]:
    return Dataset.objects.annotate(
        n_generations=Count("generations", distinct=True),
        n_faces=Count("generations__faces", distinct=True),
        n_scanned=Count(
            "generations", filter=Q(generations__faces_detected_at__isnull=False), distinct=True
        ),
        n_no_face=Count(
            "generations",
            filter=Q(generations__faces_detected_at__isnull=False, generations__faces__isnull=True),
            distinct=True,
        ),
    ).order_by("name")


def last_import_jobs(dataset_ids: list[int]) -> dict[int, Job]:
    latest: dict[int, Job] = {}
    jobs = Job.objects.filter(kind=Job.Kind.IMPORT, config__dataset_id__in=dataset_ids).order_by(
        "-created_at", "-id"
    )
    for job in jobs:
        latest.setdefault(job.config.get("dataset_id"), job)
    return latest


def dataset_jobs(dataset: Dataset) -> QuerySet[Job]:
    return Job.objects.filter(
        Q(kind=Job.Kind.IMPORT) | Q(kind=Job.Kind.DETECT), config__dataset_id=dataset.pk
    ).order_by("-created_at", "-id")


# --- pages -------------------------------------------------------------------------------------


@login_required
def dataset_list(request: HttpRequest) -> HttpResponse:
    require_researcher(request)
    datasets = list(datasets_with_counts())
    latest = last_import_jobs([d.pk for d in datasets])
    rows = [
        {
            "dataset": d,
            "last_import": latest.get(d.pk),
            "not_scanned": d.n_generations - d.n_scanned,  # type: ignore[attr-defined]
        }
        for d in datasets
    ]
    return render(request, "annotator/imports/dataset_list.html", {"rows": rows})


@login_required
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    require_researcher(request)
    dataset = get_object_or_404(datasets_with_counts(), pk=pk)
    generations = dataset.generations.annotate(n_faces=Count("faces")).order_by("id")
    page = Paginator(generations, THUMBNAILS_PER_PAGE).get_page(request.GET.get("page"))
    no_face = (
        dataset.generations.filter(faces_detected_at__isnull=False, faces__isnull=True)
        .order_by("id")
        .only("id", "original_filename", "prompt", "model_name")[:500]
    )
    return render(
        request,
        "annotator/imports/dataset_detail.html",
        {
            "dataset": dataset,
            "page": page,
            "no_face": no_face,
            "jobs": dataset_jobs(dataset)[:10],
        },
    )


@login_required
@require_POST
def dataset_detect(request: HttpRequest, pk: int) -> HttpResponse:
    require_researcher(request)
    dataset = get_object_or_404(Dataset, pk=pk)
    job = start_detection_job(dataset=dataset, created_by=request.user)
    messages.info(request, f"Face detection queued for {dataset.name} (job {job.pk}).")
    return redirect("import-job", pk=job.pk)


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    widget = MultipleFileInput

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        files = data if isinstance(data, list | tuple) else [data]
        return [super(MultipleFileField, self).clean(f, initial) for f in files if f]


class UploadForm(forms.Form):
    dataset_name = forms.CharField(
        max_length=200, label="Dataset", help_text="An existing dataset's name, or a new one."
    )
    file = forms.FileField(
        required=False,
        label="Zip",
        help_text="A .zip with manifest.jsonl or manifest.csv at its root and the images.",
        widget=forms.ClearableFileInput(attrs={"accept": ".zip,application/zip"}),
    )
    manifest = forms.FileField(
        required=False,
        help_text="…or a manifest (.jsonl or .csv: file, prompt, model; optional model_version, seed, sampler)",
        widget=forms.ClearableFileInput(attrs={"accept": ".jsonl,.json,.csv"}),
    )
    images = MultipleFileField(
        required=False,
        help_text="…and the images it lists.",
        widget=MultipleFileInput(attrs={"accept": "image/*"}),
    )

    def clean_dataset_name(self) -> str:
        name = self.cleaned_data["dataset_name"].strip()
        if not name:
            raise forms.ValidationError("Name the dataset.")
        return name

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        has_zip, has_manifest = bool(data.get("file")), bool(data.get("manifest"))
        if has_zip == has_manifest:
            raise forms.ValidationError("Upload either one .zip, or a manifest and its images.")
        if has_zip and not data["file"].name.lower().endswith(".zip"):
            self.add_error("file", "This must be a .zip file.")
        if has_manifest and not data.get("images"):
            self.add_error("images", "Add the images the manifest lists.")
        return data


def _start_upload(*, dataset_name: str, user: Any, **files: Any) -> Job:
    """Find or create the dataset and queue the import; a refused upload creates nothing."""
    with transaction.atomic():
        dataset, _ = Dataset.objects.get_or_create(name=dataset_name, defaults={"created_by": user})
        return start_import_job(dataset=dataset, created_by=user, **files)


@login_required
def dataset_upload(request: HttpRequest) -> HttpResponse:
    require_researcher(request)
    initial = {}
    if request.GET.get("dataset"):
        initial["dataset_name"] = (
            Dataset.objects.filter(pk=request.GET["dataset"]).values_list("name", flat=True).first()
            or ""
        )
    form = UploadForm(request.POST or None, request.FILES or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            job = _start_upload(
                dataset_name=form.cleaned_data["dataset_name"],
                user=request.user,
                zip_file=form.cleaned_data.get("file"),
                manifest_file=form.cleaned_data.get("manifest"),
                image_files=form.cleaned_data.get("images") or [],
            )
        except ImportRejected as exc:
            form.add_error(None, exc.reason)
        else:
            return redirect("import-job", pk=job.pk)
    datasets = Dataset.objects.order_by("name").values_list("name", flat=True)
    return render(request, "annotator/imports/upload.html", {"form": form, "datasets": datasets})


@login_required
def import_job(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    dataset = Dataset.objects.filter(pk=job.config.get("dataset_id")).first()
    problems = job.result.get("problems", []) if isinstance(job.result, dict) else []
    detect_job_id = job.result.get("detect_job_id") if isinstance(job.result, dict) else None
    return render(
        request,
        "annotator/imports/job.html",
        {
            "job": job,
            "dataset": dataset,
            "problems": problems,
            "detect_job_id": detect_job_id,
            "status_url": reverse("api-job", args=[job.pk]),
        },
    )


# --- images ------------------------------------------------------------------------------------


def _image_response(response: HttpResponseBase) -> HttpResponseBase:
    response["Cache-Control"] = IMAGE_CACHE_CONTROL
    response["X-Content-Type-Options"] = "nosniff"
    return response


def generation_image_response(generation: Generation) -> HttpResponseBase:
    try:
        handle = generation.image.open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404("The image file is missing.") from None
    return _image_response(FileResponse(handle, content_type="image/png"))


def face_crop_response(face: Face) -> HttpResponseBase:
    try:
        with face.generation.image.open("rb") as fh:
            image = Image.open(fh)
            image.load()
    except (FileNotFoundError, ValueError):
        raise Http404("The image file is missing.") from None
    crop = crop_face(
        image.convert("RGB"), face.box, margin=FACE_CROP_MARGIN, max_side=FACE_CROP_MAX_SIDE
    )
    buffer = io.BytesIO()
    crop.save(buffer, "PNG")
    return _image_response(HttpResponse(buffer.getvalue(), content_type="image/png"))


# Researchers reach any image by id; annotators reach images only through the items they hold
# (annotator/views/annotate.py), so ids never let them browse a dataset or line images up by DM.
@login_required
def generation_image(request: HttpRequest, pk: int) -> HttpResponseBase:
    require_researcher(request)
    return generation_image_response(get_object_or_404(Generation.objects.only("id", "image"), pk=pk))


@login_required
def face_crop(request: HttpRequest, pk: int) -> HttpResponseBase:
    require_researcher(request)
    return face_crop_response(get_object_or_404(Face.objects.select_related("generation"), pk=pk))


# --- API ---------------------------------------------------------------------------------------


class JobRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = ["id", "kind", "status", "created_at", "finished_at"]


class DatasetSerializer(serializers.ModelSerializer):
    generations = serializers.IntegerField(source="n_generations", read_only=True)
    faces = serializers.IntegerField(source="n_faces", read_only=True)
    scanned = serializers.IntegerField(
        source="n_scanned", read_only=True, help_text="Generations face detection has run on."
    )
    no_face = serializers.IntegerField(
        source="n_no_face", read_only=True, help_text="Scanned generations with no face found."
    )
    last_import = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "description",
            "created_at",
            "generations",
            "faces",
            "scanned",
            "no_face",
            "last_import",
        ]
        read_only_fields = ["id", "created_at"]

    @extend_schema_field(JobRefSerializer(allow_null=True))
    def get_last_import(self, dataset: Dataset) -> dict[str, Any] | None:
        job = self.context.get("last_imports", {}).get(dataset.pk)
        if job is None:
            job = last_import_jobs([dataset.pk]).get(dataset.pk)
        return JobRefSerializer(job).data if job else None


class DatasetCreateSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ["name", "description"]


class ImportUploadSerializer(serializers.Serializer):
    file = serializers.FileField(required=False, help_text="A .zip with the manifest at its root.")
    manifest = serializers.FileField(required=False, help_text="Or: a .jsonl/.csv manifest…")
    images = serializers.ListField(
        child=serializers.FileField(), required=False, help_text="…and its images."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("file")) == bool(attrs.get("manifest")):
            raise serializers.ValidationError("Send either file (a .zip), or manifest and images.")
        if attrs.get("manifest") and not attrs.get("images"):
            raise serializers.ValidationError({"images": "Send the images the manifest lists."})
        return attrs


class ImportAcceptedSerializer(serializers.Serializer):
    job_id = serializers.IntegerField()
    url = serializers.CharField(help_text="The job's API URL: poll it for progress.")
    page = serializers.CharField(help_text="The job's page for people.")


class JobSerializer(serializers.ModelSerializer):
    percent = serializers.FloatField(read_only=True)
    is_finished = serializers.BooleanField(read_only=True)
    per_second = serializers.FloatField(read_only=True, allow_null=True)
    eta_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "status",
            "is_finished",
            "progress_done",
            "progress_total",
            "percent",
            "per_second",
            "eta_seconds",
            "result",
            "error",
            "log_tail",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


def _datasets_api_queryset() -> QuerySet[Dataset]:
    return datasets_with_counts()


class DatasetListCreateAPI(generics.ListCreateAPIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]
    serializer_class = DatasetSerializer

    def get_queryset(self) -> QuerySet[Dataset]:
        return _datasets_api_queryset()

    @extend_schema(summary="List datasets with generation, face and no-face counts")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        assert page is not None  # the project always paginates
        context = {
            **self.get_serializer_context(),
            # One query for every dataset's last import instead of one per row.
            "last_imports": last_import_jobs([d.pk for d in page]),
        }
        return self.get_paginated_response(DatasetSerializer(page, many=True, context=context).data)

    @extend_schema(
        summary="Create a dataset",
        request=DatasetCreateSerializer,
        responses={201: DatasetSerializer},
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        incoming = DatasetCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        dataset = incoming.save(created_by=request.user)
        data = DatasetSerializer(_datasets_api_queryset().get(pk=dataset.pk)).data
        return Response(data, status=status.HTTP_201_CREATED)


class DatasetDetailAPI(generics.RetrieveAPIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]
    serializer_class = DatasetSerializer

    def get_queryset(self) -> QuerySet[Dataset]:
        return _datasets_api_queryset()

    @extend_schema(summary="One dataset with its counts and last import")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class DatasetImportAPI(APIView):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        summary="Upload generations into a dataset (runs as an import job)",
        request={"multipart/form-data": ImportUploadSerializer},
        responses={202: ImportAcceptedSerializer},
    )
    def post(self, request: Request, pk: int) -> Response:
        dataset = get_object_or_404(Dataset, pk=pk)
        upload = ImportUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        try:
            job = start_import_job(
                dataset=dataset,
                created_by=request.user,
                zip_file=upload.validated_data.get("file"),
                manifest_file=upload.validated_data.get("manifest"),
                image_files=upload.validated_data.get("images") or [],
            )
        except ImportRejected as exc:
            raise serializers.ValidationError({"detail": exc.reason}) from None
        body = {
            "job_id": job.pk,
            "url": reverse("api-job", args=[job.pk]),
            "page": reverse("import-job", args=[job.pk]),
        }
        return Response(body, status=status.HTTP_202_ACCEPTED)


class JobDetailAPI(generics.RetrieveAPIView):
    permission_classes = [permissions.IsAuthenticated]
    serializer_class = JobSerializer
    queryset = Job.objects.all()

    def get_object(self) -> Job:
        job = super().get_object()
        if not _may_see_job(self.request.user, job):
            raise PermissionDenied("Only researchers and the job's creator can see this job.")
        return job

    @extend_schema(summary="A job's status, progress, result and error")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


urlpatterns: list[URLPattern] = [
    path("datasets/", dataset_list, name="datasets"),
    path("datasets/upload/", dataset_upload, name="dataset-upload"),
    path("datasets/<int:pk>/", dataset_detail, name="dataset-detail"),
    path("datasets/<int:pk>/detect/", dataset_detect, name="dataset-detect"),
    path("datasets/jobs/<int:pk>/", import_job, name="import-job"),
    path("images/generations/<int:pk>.png", generation_image, name="generation-image"),
    path("images/faces/<int:pk>/crop.png", face_crop, name="face-crop"),
    path("api/datasets/", DatasetListCreateAPI.as_view(), name="api-datasets"),
    path("api/datasets/<int:pk>/", DatasetDetailAPI.as_view(), name="api-dataset"),
    path("api/datasets/<int:pk>/imports/", DatasetImportAPI.as_view(), name="api-dataset-imports"),
    path("api/jobs/<int:pk>/", JobDetailAPI.as_view(), name="api-job"),
]
