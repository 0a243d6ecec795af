"""Researcher pages for campaigns: list, create, detail (progress, annotators, gold), exports."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.db.models import Avg, Count, Q
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path
from django.views.decorators.http import require_POST

from annotator.assignment import Refused
from annotator.campaigns import create_campaign, resume_annotator
from annotator.exports import FORMATS, judgment_export_response
from annotator.models import Campaign, Dataset, Judgment, Membership
from annotator.roles import ANNOTATOR, require_researcher


def _get_campaign_for_researcher(request: HttpRequest, pk: int) -> Campaign:
    require_researcher(request)
    return get_object_or_404(Campaign, pk=pk)


class CampaignForm(forms.ModelForm):
    datasets = forms.ModelMultipleChoiceField(queryset=Dataset.objects.all(), widget=forms.CheckboxSelectMultiple)
    annotators = forms.ModelMultipleChoiceField(
        queryset=User.objects.filter(groups__name=ANNOTATOR).order_by("username"),
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    min_face_px = forms.FloatField(initial=0, min_value=0, help_text="Leave out faces smaller than this (pixels).")
    min_confidence = forms.FloatField(initial=0.5, min_value=0, max_value=1, help_text="Leave out detections less certain than this.")
    max_pairs_per_prompt = forms.IntegerField(required=False, min_value=1, help_text="Pairwise: cap on pairs per prompt.")
    seed = forms.IntegerField(initial=0, help_text="Seeds the left/right order of pairs.")

    class Meta:
        model = Campaign
        fields = Campaign.SETTINGS


@login_required
def campaign_list(request: HttpRequest) -> HttpResponse:
    require_researcher(request)
    campaigns = Campaign.objects.annotate(
        n_items=Count("items", filter=Q(items__is_gold=False), distinct=True),
        n_annotators=Count("memberships", distinct=True),
    )
    rows = [(c, c.progress()) for c in campaigns]
    return render(request, "annotator/research/campaign_list.html", {"rows": rows})


@login_required
def campaign_create(request: HttpRequest) -> HttpResponse:
    require_researcher(request)
    form = CampaignForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        try:
            campaign = create_campaign(created_by=cast(User, request.user), **data)
        except Refused as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, f"Campaign “{campaign.name}” created with {campaign.items.count()} items.")
            return redirect("campaign-detail", pk=campaign.pk)
    return render(request, "annotator/research/campaign_form.html", {"form": form})


def annotator_rows(campaign: Campaign) -> list[dict[str, Any]]:
    stats = {
        row["annotator"]: row
        for row in Judgment.objects.filter(item__campaign=campaign)
        .values("annotator")
        .annotate(n=Count("id"), mean_ms=Avg("time_on_screen_ms"))
    }
    rows = []
    for m in Membership.objects.filter(campaign=campaign).select_related("annotator").order_by("annotator__username"):
        s: dict[str, Any] = dict(stats.get(m.annotator_id, {}))
        rows.append({"membership": m, "judgments": s.get("n", 0), "mean_seconds": (s.get("mean_ms") or 0) / 1000})
    return rows


@login_required
def campaign_detail(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _get_campaign_for_researcher(request, pk)
    context = {
        "campaign": campaign,
        "progress": campaign.progress(),
        "annotators": annotator_rows(campaign),
        "gold_items": campaign.items.filter(is_gold=True).count(),
        "flags": Judgment.objects.filter(item__campaign=campaign).exclude(flag="").count(),
    }
    return render(request, "annotator/research/campaign_detail.html", context)


@login_required
@require_POST
def campaign_resume_annotator(request: HttpRequest, pk: int, user_id: int) -> HttpResponse:
    campaign = _get_campaign_for_researcher(request, pk)
    membership = get_object_or_404(Membership, campaign=campaign, annotator_id=user_id)
    resume_annotator(campaign=campaign, annotator=membership.annotator)
    messages.success(request, f"{membership.annotator.username} can annotate again.")
    return redirect("campaign-detail", pk=campaign.pk)


@login_required
@require_POST
def campaign_set_status(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _get_campaign_for_researcher(request, pk)
    new_status = request.POST.get("status", "")
    if new_status not in Campaign.Status.values:
        messages.error(request, f"Unknown status {new_status!r}.")
    else:
        Campaign.objects.filter(pk=campaign.pk).update(status=new_status)
        messages.success(request, f"Campaign is now {new_status}.")
    return redirect("campaign-detail", pk=campaign.pk)


@login_required
def campaign_export(request: HttpRequest, pk: int, fmt: str) -> StreamingHttpResponse:
    campaign = _get_campaign_for_researcher(request, pk)
    if fmt not in FORMATS:
        raise Http404("Exports are .csv or .jsonl.")
    return judgment_export_response(campaign, fmt)


urlpatterns: list[URLPattern] = [
    path("research/campaigns/", campaign_list, name="research-campaigns"),
    path("research/campaigns/new/", campaign_create, name="campaign-create"),
    path("research/campaigns/<int:pk>/", campaign_detail, name="campaign-detail"),
    path("research/campaigns/<int:pk>/status/", campaign_set_status, name="campaign-status"),
    path(
        "research/campaigns/<int:pk>/annotators/<int:user_id>/resume/",
        campaign_resume_annotator,
        name="campaign-resume-annotator",
    ),
    path("research/campaigns/<int:pk>/export.<str:fmt>", campaign_export, name="campaign-export"),
]
