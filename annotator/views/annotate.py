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
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, reverse

from annotator.models import Campaign, Judgment, Membership
from annotator.roles import is_annotator, is_researcher


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


urlpatterns: list[URLPattern] = [
    path("", home, name="home"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("campaigns/<int:pk>/annotate/", annotate, name="annotate"),
]
