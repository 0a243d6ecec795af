"""The annotation API: campaigns, next item, judgments, gold items, exports, generations, faces.

Annotators reach only their own campaigns, items and judgments, and never a model name or a gold
flag; researchers (and admins) reach everything here.
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, include, path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import DefaultRouter

from annotator import assignment as engine
from annotator import campaigns as campaign_services
from annotator.exports import FORMATS, judgment_export_response
from annotator.models import Campaign, Face, Generation, Judgment, Membership
from annotator.roles import IsResearcher, is_annotator, is_researcher
from annotator.serializers import (
    AnnotatorCampaignSerializer,
    CampaignSerializer,
    FaceSerializer,
    GenerationSerializer,
    GoldItemSerializer,
    ItemRefSerializer,
    JudgmentSerializer,
    ResearcherJudgmentSerializer,
    item_for_annotator,
)


def _user(request: Request) -> User:
    """The requesting user; every view here requires authentication first."""
    return cast(User, request.user)


def _refused(error: engine.Refused) -> Response:
    return Response({"detail": error.message}, status=error.status)


def _member_campaign(request: Request, pk: int) -> Campaign:
    """The campaign if the requesting annotator is a member of it, else 404 (no existence leak)."""
    if not is_annotator(request.user):
        raise PermissionDenied("Only annotators are served items.")
    return get_object_or_404(Campaign, pk=pk, memberships__annotator=_user(request))


# POST /api/campaigns/{id}/next/ is annotator.hot_path.next_items, not an action here.
class CampaignViewSet(viewsets.ModelViewSet):
    """Researchers manage campaigns; annotators list theirs and work through them."""

    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[Campaign]:
        user = _user(self.request)
        if is_researcher(user):
            return Campaign.objects.all().prefetch_related("datasets", "annotators")
        return Campaign.objects.filter(memberships__annotator=user).annotate(
            my_judgments=Count("items__judgments", filter=Q(items__judgments__annotator=user))
        )

    def get_serializer_class(self) -> type:
        return CampaignSerializer if is_researcher(self.request.user) else AnnotatorCampaignSerializer

    def get_permissions(self) -> list[permissions.BasePermission]:
        if self.action in ("list", "retrieve", "skip", "undo"):
            return [permissions.IsAuthenticated()]
        return [permissions.IsAuthenticated(), IsResearcher()]

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        try:
            serializer.instance = campaign_services.create_campaign(
                created_by=_user(self.request),
                annotators=data.pop("annotators", []),
                **data,
            )
        except engine.Refused as error:
            raise ValidationError(error.message) from None

    def perform_update(self, serializer: Any) -> None:
        annotators = serializer.validated_data.pop("annotators", None)
        campaign = serializer.save()
        if annotators is not None:
            try:
                campaign_services.add_annotators(campaign=campaign, users=annotators)
            except engine.Refused as error:
                raise ValidationError(error.message) from None

    @extend_schema(request=ItemRefSerializer, responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"])
    def skip(self, request: Request, pk: int) -> Response:
        campaign = _member_campaign(request, pk)
        body = ItemRefSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            engine.skip_item(campaign=campaign, annotator=_user(request), item_id=body.validated_data["item"])
        except engine.Refused as error:
            return _refused(error)
        return Response({"ok": True})

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"])
    def undo(self, request: Request, pk: int) -> Response:
        campaign = _member_campaign(request, pk)
        try:
            assignment = engine.undo_last_judgment(campaign=campaign, annotator=_user(request))
        except engine.Refused as error:
            return _refused(error)
        return Response({"item": item_for_annotator(assignment, campaign.protocol)})

    @extend_schema(request=GoldItemSerializer(many=True), responses={201: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"])
    def gold(self, request: Request, pk: int) -> Response:
        """Add gold (check) items with their expected answers."""
        campaign = self.get_object()
        rows = GoldItemSerializer(data=request.data, many=True)
        rows.is_valid(raise_exception=True)
        answers: dict[Any, str] = {}
        for row in rows.validated_data:
            target = row.get("face") if campaign.protocol == Campaign.Protocol.LIKERT else (row.get("left_face"), row.get("right_face"))
            if target is None or target == (None, None) or (isinstance(target, tuple) and None in target):
                field = "face" if campaign.protocol == Campaign.Protocol.LIKERT else "left_face and right_face"
                raise ValidationError(f"Each gold item of a {campaign.protocol} campaign needs {field}.")
            answers[target] = row["answer"]
        try:
            items = campaign_services.add_gold_items(campaign=campaign, answers=answers)
        except engine.Refused as error:
            return _refused(error)
        return Response({"created": [item.pk for item in items]}, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"], url_path=r"annotators/(?P<username>[^/]+)/resume")
    def resume(self, request: Request, pk: int, username: str) -> Response:
        """Lift an annotator's gold pause."""
        campaign = self.get_object()
        user = get_object_or_404(User, username=username, memberships__campaign=campaign)
        campaign_services.resume_annotator(campaign=campaign, annotator=user)
        return Response({"ok": True})

    @extend_schema(
        parameters=[OpenApiParameter("export_format", str, enum=["csv", "jsonl"], default="csv")],
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/x-ndjson"): OpenApiTypes.STR},
    )
    @action(detail=True, methods=["get"], url_path="export")
    def export(self, request: Request, pk: int) -> StreamingHttpResponse:
        """Every raw judgment, with annotator pseudonym, display order and time on screen."""
        campaign = self.get_object()
        fmt = request.query_params.get("export_format", "csv")
        if fmt not in FORMATS:
            raise ValidationError("export_format must be csv or jsonl.")
        return judgment_export_response(campaign, fmt)


# POST /api/judgments/ (submit) is annotator.hot_path.judgments, which hands GET to this viewset.
class JudgmentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Annotators see their own judgments; researchers see every judgment."""

    def get_queryset(self) -> QuerySet[Judgment]:
        user = self.request.user
        judgments = Judgment.objects.order_by("id")
        if not is_researcher(user):
            judgments = judgments.filter(annotator=cast(User, user))
        campaign = self.request.query_params.get("campaign")
        if campaign:
            if not campaign.isdigit():
                raise ValidationError("campaign must be an id.")
            judgments = judgments.filter(item__campaign_id=int(campaign))
        return judgments

    def get_serializer_class(self) -> type:
        return ResearcherJudgmentSerializer if is_researcher(self.request.user) else JudgmentSerializer

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        if is_researcher(self.request.user):
            context["pseudonyms"] = {
                (m.annotator_id): m.pseudonym for m in Membership.objects.only("annotator_id", "pseudonym")
            }
        return context


class GenerationViewSet(viewsets.ReadOnlyModelViewSet):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]
    serializer_class = GenerationSerializer

    def get_queryset(self) -> QuerySet[Generation]:
        generations = Generation.objects.order_by("id")
        dataset = self.request.query_params.get("dataset")
        return generations.filter(dataset_id=dataset) if dataset and dataset.isdigit() else generations


class FaceViewSet(viewsets.ReadOnlyModelViewSet):
    permission_classes = [permissions.IsAuthenticated, IsResearcher]
    serializer_class = FaceSerializer

    def get_queryset(self) -> QuerySet[Face]:
        faces = Face.objects.order_by("id")
        generation = self.request.query_params.get("generation")
        return faces.filter(generation_id=generation) if generation and generation.isdigit() else faces


router = DefaultRouter()
# "api-" basenames keep these names apart from the pages' (campaign-detail is a page).
router.register("campaigns", CampaignViewSet, basename="api-campaign")
router.register("judgments", JudgmentViewSet, basename="api-judgment")
router.register("generations", GenerationViewSet, basename="api-generation")
router.register("faces", FaceViewSet, basename="api-face")

urlpatterns: list[URLPattern] = [path("api/", include(router.urls))]  # type: ignore[list-item]
