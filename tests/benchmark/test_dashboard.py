"""The live campaign dashboard: coverage, throughput, annotators, gold, α so far, paused people."""

from __future__ import annotations

from datetime import timedelta

import krippendorff
import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotator.models import Item, Judgment, Membership
from benchmark.dashboard import campaign_dashboard
from tests.benchmark.synthetic_campaign import make_synthetic_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    return make_synthetic_campaign(n_prompts=10, k=3)


def test_dashboard_counts_match_the_database(world):
    campaign = world.campaign
    judgments = Judgment.objects.filter(item__campaign=campaign)
    # Age a few judgments so the hour and day windows differ.
    old = list(judgments.order_by("id").values_list("id", flat=True)[:5])
    Judgment.objects.filter(pk__in=old[:3]).update(created_at=timezone.now() - timedelta(hours=3))
    Judgment.objects.filter(pk__in=old[3:]).update(created_at=timezone.now() - timedelta(days=3))
    Membership.objects.filter(campaign=campaign, annotator=world.annotators[0]).update(
        paused_at=timezone.now(), pause_reason="gold"
    )
    d = campaign_dashboard(campaign)
    regular = Item.objects.filter(campaign=campaign, is_gold=False)
    assert sum(row["items"] for row in d["coverage"]) == regular.count()
    # Every regular item got its k = 3 judgments (the item counter; the extra flag is not counted).
    assert {row["judgments"]: row["items"] for row in d["coverage"] if row["items"]} == {
        3: regular.count()
    }
    assert [row["judgments"] for row in d["coverage"]] == [0, 1, 2, 3]
    total = judgments.count()
    assert d["throughput"] == {"total": total, "last_day": total - 2, "last_hour": total - 5}
    by_alias = {row["annotator"]: row for row in d["annotators"]}
    first = Membership.objects.get(campaign=campaign, annotator=world.annotators[0])
    mine = judgments.filter(annotator=world.annotators[0])
    assert by_alias[first.pseudonym]["judgments"] == mine.count()
    assert by_alias[first.pseudonym]["median_seconds"] == pytest.approx(
        np.median(list(mine.values_list("time_on_screen_ms", flat=True))) / 1000, abs=0.01
    )
    assert d["paused"] == [first.pseudonym]
    gold = judgments.filter(item__is_gold=True)
    assert d["gold"]["judged"] == gold.count() == len(world.annotators)
    assert d["gold"]["correct"] == gold.filter(gold_correct=True).count()
    assert d["flags"] == 1


def test_alpha_so_far_matches_the_krippendorff_package(world):
    d = campaign_dashboard(world.campaign)
    rows = Judgment.objects.filter(
        item__campaign=world.campaign, item__is_gold=False, flag=""
    ).values_list("annotator_id", "item_id", "rating")
    annotators = sorted({r[0] for r in rows})
    items = sorted({r[1] for r in rows})
    table = np.full((len(annotators), len(items)), np.nan)
    for a, i, rating in rows:
        table[annotators.index(a), items.index(i)] = rating
    expected = krippendorff.alpha(reliability_data=table, level_of_measurement="ordinal")
    assert d["alpha"]["value"] == pytest.approx(expected, abs=1e-9)
    assert d["alpha"]["items_with_two_or_more"] == len(items)


def test_pairwise_dashboard_uses_nominal_alpha(db):
    world = make_synthetic_campaign(name="pairs", protocol="pairwise", n_prompts=8, k=2)
    d = campaign_dashboard(world.campaign)
    assert d["alpha"]["level"] == "nominal" and d["alpha"]["value"] is not None


def test_empty_campaign_has_no_alpha_yet(db):
    from annotator.campaigns import create_campaign
    from tests.factories import make_dataset

    campaign = create_campaign(name="empty", protocol="likert", datasets=[make_dataset()])
    d = campaign_dashboard(campaign)
    assert d["alpha"]["value"] is None and d["median_seconds_per_item"] is None
    assert d["coverage"][0] == {"judgments": 0, "items": campaign.items.count()}


def test_dashboard_page_refreshes_and_shows_pseudonyms_only(world, researcher):
    client = Client()
    client.force_login(researcher)
    response = client.get(reverse("campaign-dashboard", args=[world.campaign.pk]))
    html = response.content.decode()
    assert response.status_code == 200 and '<meta http-equiv="refresh" content="10">' in html
    assert 'id="alpha"' in html and 'id="coverage"' in html
    assert world.annotators[0].username not in html
    assert (
        reverse("campaign-dashboard", args=[world.campaign.pk])
        in client.get(reverse("campaign-detail", args=[world.campaign.pk])).content.decode()
    )
    api = client.get(f"/api/campaigns/{world.campaign.pk}/dashboard/").json()
    assert (
        api["throughput"]["total"] == Judgment.objects.filter(item__campaign=world.campaign).count()
    )
