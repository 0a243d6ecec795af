"""The evaluation report page of an ``evaluate_dm`` job and its one-click pairwise campaign.

Researchers and admins read the report and may open the campaign (the same people who may make
campaigns on the campaign pages); annotators and anonymous users reach neither.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path
from django.views.decorators.http import require_POST

from annotator.assignment import Refused
from annotator.models import Campaign
from annotator.roles import ANNOTATOR, require_researcher
from benchmark.evaluation import create_evaluation_campaign, difference_text
from jobs.models import Job


def _evaluation_for_researcher(request: HttpRequest, pk: int) -> Job:
    require_researcher(request)
    return get_object_or_404(Job, pk=pk, kind=Job.Kind.EVALUATE_DM)


class EvaluationCampaignForm(forms.Form):
    overlap_k = forms.IntegerField(
        initial=3, min_value=1, max_value=50, help_text="Judgments wanted per pair."
    )
    annotators = forms.ModelMultipleChoiceField(
        queryset=User.objects.filter(groups__name=ANNOTATOR).order_by("username"),
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )


def _rows(block: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, paired in block.items():
        info = metrics.get(name, {})
        rows.append(
            {
                "metric": name,
                "version": info.get("label", ""),
                "level": paired.get("level", ""),
                "aggregate": paired.get("aggregate", ""),
                "higher_is_better": info.get("higher_is_better", True),
                "text": difference_text(paired),
                "paired": paired,
                "excludes_zero": paired.get("low") is not None
                and (paired["low"] > 0 or paired["high"] < 0),
            }
        )
    return rows


@login_required
def evaluation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _evaluation_for_researcher(request, pk)
    result = job.result or {}
    metrics = result.get("metrics") or {}
    campaign = Campaign.objects.filter(pk=result.get("campaign") or 0).first()
    context = {
        "job": job,
        "result": result,
        "ready": "human" in result,
        "human_rows": _rows(result.get("human") or {}, metrics),
        "general_rows": _rows(result.get("general") or {}, metrics),
        "detection_rows": [
            {"metric": label, "text": difference_text(block)}
            for label, block in (
                ("Share of images with a face", (result.get("detection") or {}).get("faces_found")),
                ("Faces per image", (result.get("detection") or {}).get("faces_per_image")),
            )
            if block
        ],
        "skipped": {n: i for n, i in metrics.items() if i.get("status") == "skipped"},
        "campaign": campaign,
        "campaign_form": EvaluationCampaignForm(),
    }
    return render(request, "benchmark/evaluation.html", context)


@login_required
@require_POST
def evaluation_campaign(request: HttpRequest, pk: int) -> HttpResponse:
    job = _evaluation_for_researcher(request, pk)
    form = EvaluationCampaignForm(request.POST)
    if not form.is_valid():
        messages.error(
            request,
            "; ".join(f"{k}: {' '.join(str(e) for e in v)}" for k, v in form.errors.items()),
        )
        return redirect("evaluation-detail", pk=job.pk)
    try:
        campaign = create_evaluation_campaign(
            job=job,
            created_by=cast(User, request.user),
            overlap_k=form.cleaned_data["overlap_k"],
            annotators=list(form.cleaned_data["annotators"]),
        )
    except Refused as error:
        messages.error(request, error.message)
        return redirect("evaluation-detail", pk=job.pk)
    messages.success(
        request, f"Campaign “{campaign.name}” has {campaign.items.count()} base-vs-tuned pairs."
    )
    return redirect("campaign-detail", pk=campaign.pk)


urlpatterns: list[URLPattern] = [
    path("research/evaluations/<int:pk>/", evaluation_detail, name="evaluation-detail"),
    path(
        "research/evaluations/<int:pk>/campaign/",
        evaluation_campaign,
        name="evaluation-campaign",
    ),
]
