"""The live campaign dashboard: how a campaign is doing right now (a selector: it only reads).

It lives in ``benchmark`` because it uses the statistics engine (Krippendorff's α), and
``annotator`` must never import ``benchmark``.
"""

from __future__ import annotations

import statistics
import warnings
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.db.models import Count, Q
from django.utils import timezone

from annotator.models import Campaign, Item, Judgment, Membership
from benchmark.stats import krippendorff_alpha

CHOICE_CODE = {choice: code for code, choice in enumerate(Judgment.Choice.values)}


def _median_seconds(times_ms: list[int]) -> float | None:
    return round(statistics.median(times_ms) / 1000, 2) if times_ms else None


def alpha_so_far(campaign: Campaign) -> dict[str, Any]:
    """Krippendorff's α over the regular items judged so far (ordinal for ratings, nominal for
    pairwise choices, whose left/right order is stored on the item and so shared by everybody)."""
    rows = list(
        Judgment.objects.filter(item__campaign=campaign, item__is_gold=False, flag="")
        .order_by("id")
        .values_list("item_id", "rating", "choice")
    )
    if campaign.protocol == Campaign.Protocol.LIKERT:
        values = [float(r[1]) for r in rows if r[1] is not None]
        units = [r[0] for r in rows if r[1] is not None]
        level = "ordinal"
    else:
        values = [float(CHOICE_CODE[r[2]]) for r in rows if r[2]]
        units = [r[0] for r in rows if r[2]]
        level = "nominal"
    _, unit_code = np.unique(np.array(units, np.int64), return_inverse=True)
    pairable = int((np.bincount(unit_code) >= 2).sum()) if units else 0
    out: dict[str, Any] = {"level": level, "value": None, "items_with_two_or_more": pairable}
    if pairable and len(set(values)) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            alpha = krippendorff_alpha(unit_code, np.array(values), level=level)
        out["value"] = alpha if np.isfinite(alpha) else None
    return out


def campaign_dashboard(campaign: Campaign, *, now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    judgments = Judgment.objects.filter(item__campaign=campaign)
    regular = Item.objects.filter(campaign=campaign, is_gold=False)
    coverage = {
        row["judgment_count"]: row["n"]
        for row in regular.values("judgment_count")
        .annotate(n=Count("id"))
        .order_by("judgment_count")
    }
    most = max([campaign.overlap_k, *coverage]) if coverage else campaign.overlap_k
    coverage_rows = [{"judgments": k, "items": coverage.get(k, 0)} for k in range(most + 1)]
    times: dict[int, list[int]] = {}
    for annotator_id, ms in judgments.order_by("id").values_list(
        "annotator_id", "time_on_screen_ms"
    ):
        times.setdefault(annotator_id, []).append(ms)
    per_annotator = []
    stats_by_user: dict[int, Any] = {
        row["annotator_id"]: row
        for row in judgments.values("annotator_id").annotate(
            n=Count("id"),
            last_hour=Count("id", filter=Q(created_at__gte=now - timedelta(hours=1))),
            flags=Count("id", filter=~Q(flag="")),
        )
    }
    for m in Membership.objects.filter(campaign=campaign).order_by("pseudonym"):
        row = stats_by_user.get(m.annotator_id, {})
        per_annotator.append(
            {
                "annotator": m.pseudonym,
                "judgments": row.get("n", 0),
                "last_hour": row.get("last_hour", 0),
                "flags": row.get("flags", 0),
                "median_seconds": _median_seconds(times.get(m.annotator_id, [])),
                "gold_judged": m.gold_judged,
                "gold_correct": m.gold_correct,
                "gold_accuracy": m.gold_accuracy,
                "paused": m.is_paused,
                "pause_reason": m.pause_reason,
            }
        )
    gold = judgments.filter(item__is_gold=True).aggregate(
        judged=Count("id"), correct=Count("id", filter=Q(gold_correct=True))
    )
    all_times = [ms for ms_list in times.values() for ms in ms_list]
    return {
        "campaign": {
            "id": campaign.pk,
            "name": campaign.name,
            "protocol": campaign.protocol,
            "status": campaign.status,
            "overlap_k": campaign.overlap_k,
        },
        "generated_at": now.isoformat(),
        "progress": campaign.progress(),
        "coverage": coverage_rows,
        "throughput": {
            "last_hour": judgments.filter(created_at__gte=now - timedelta(hours=1)).count(),
            "last_day": judgments.filter(created_at__gte=now - timedelta(days=1)).count(),
            "total": judgments.count(),
        },
        "median_seconds_per_item": _median_seconds(all_times),
        "gold": {
            "judged": gold["judged"],
            "correct": gold["correct"],
            "accuracy": gold["correct"] / gold["judged"] if gold["judged"] else None,
        },
        "flags": judgments.exclude(flag="").count(),
        "alpha": alpha_so_far(campaign),
        "annotators": per_annotator,
        "paused": [row["annotator"] for row in per_annotator if row["paused"]],
    }
