"""The annotator's screens: log in, the list of my campaigns, and the annotation page.

The annotation page is a shell: the items, answers, skips and undos all go through the JSON API
(``annotator/api.py``) from ``annotate.js``. These views never read a generation, so a model name
or a metric cannot reach an annotator's page even by mistake (blind campaigns).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, re_path, reverse

from annotator.models import Assignment, Campaign, Item, Judgment, Membership
from annotator.roles import is_annotator, is_researcher
from annotator.views.imports import face_crop_response, generation_image_response


def _get_membership_for_annotator(request: HttpRequest, pk: int) -> Membership:
    """The user's membership of campaign ``pk``: 403 for non-annotators, 404 for non-members."""
    if not is_annotator(request.user):
        raise PermissionDenied("Only annotators annotate.")
    return get_object_or_404(
        Membership.objects.select_related("campaign"), campaign_id=pk, annotator_id=request.user.pk
    )


def _campaign_summary(membership: Membership) -> dict[str, Any]:
    campaign = membership.campaign
    progress = campaign.progress()
    wanted = progress["wanted"]
    judged = min(progress["judged"], wanted) if wanted else progress["judged"]
    return {
        "campaign": campaign,
        "membership": membership,
        "done_by_me": Judgment.objects.filter(
            item__campaign=campaign, annotator=membership.annotator
        ).count(),
        "judged": judged,
        "wanted": wanted,
        "left": max(wanted - judged, 0),
        "percent": round(100 * judged / wanted) if wanted else 0,
    }


@login_required
def home(request: HttpRequest) -> HttpResponse:
    if not is_annotator(request.user) and is_researcher(request.user):
        return redirect("research-campaigns")
    memberships = (
        Membership.objects.filter(
            annotator_id=request.user.pk, campaign__status=Campaign.Status.ACTIVE
        )
        .select_related("campaign")
        .order_by("campaign__name", "campaign_id")
    )
    rows = [_campaign_summary(m) for m in memberships] if is_annotator(request.user) else []
    return render(
        request,
        "annotator/home.html",
        {"rows": rows, "has_role": is_annotator(request.user) or is_researcher(request.user)},
    )


@login_required
def annotate(request: HttpRequest, pk: int) -> HttpResponse:
    membership = _get_membership_for_annotator(request, pk)
    campaign = membership.campaign
    if campaign.status != Campaign.Status.ACTIVE:
        messages.info(
            request,
            f"“{campaign.name}” is {campaign.get_status_display().lower()}: nothing to annotate now.",
        )
        return redirect("home")
    summary = _campaign_summary(membership)
    # Everything the script needs, passed through json_script (never string-built JS).
    config = {
        "campaignId": campaign.pk,
        "userId": request.user.pk,
        "protocol": campaign.protocol,
        "nextUrl": f"/api/campaigns/{campaign.pk}/next/",
        "skipUrl": f"/api/campaigns/{campaign.pk}/skip/",
        "undoUrl": f"/api/campaigns/{campaign.pk}/undo/",
        "judgmentsUrl": "/api/judgments/",
        "homeUrl": reverse("home"),
        "loginUrl": reverse("login"),
        "doneByMe": summary["done_by_me"],
        "left": summary["left"],
        "paused": membership.is_paused,
        "pauseReason": membership.pause_reason,
    }
    return render(request, "annotator/annotate.html", {**summary, "config": config})


@login_required
def item_image(request: HttpRequest, item_id: int, position: str, kind: str) -> HttpResponseBase:
    """A face of an item (``crop``) or its whole image (``whole``), for the annotator who holds
    that item and for researchers. Image ids never appear in what annotators are sent."""
    if not is_researcher(request.user) and not Assignment.objects.filter(
        item_id=item_id, annotator_id=request.user.pk
    ).exists():
        raise PermissionDenied("This item is not assigned to you.")
    item = get_object_or_404(
        Item.objects.select_related("face__generation", "left_face__generation", "right_face__generation"),
        pk=item_id,
    )
    face = {"single": item.face, "left": item.left_face, "right": item.right_face}.get(position)
    if face is None:
        raise Http404("This item has no face at that position.")
    return face_crop_response(face) if kind == "crop" else generation_image_response(face.generation)


urlpatterns: list[URLPattern] = [
    path("", home, name="home"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("campaigns/<int:pk>/annotate/", annotate, name="annotate"),
    re_path(
        r"^images/items/(?P<item_id>[0-9]+)/(?P<position>single|left|right)/(?P<kind>crop|whole)\.png$",
        item_image,
        name="item-image",
    ),
]
