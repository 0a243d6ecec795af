"""The annotator's server-rendered pages: login, my campaigns, the annotation shell."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from annotator.assignment import claim_items, submit_judgment
from annotator.campaigns import create_campaign
from annotator.models import Campaign, Membership
from tests.factories import make_dataset
from tests.users import PASSWORD

pytestmark = pytest.mark.django_db

SECRET_MODELS = ("hushmodel-xl", "quietdiffusion-2")


def _campaign(name: str, annotators: list[User], *, protocol: str = "likert", **kw) -> Campaign:
    dataset = make_dataset(f"ds-{name}", prompts=("p1", "p2"), models=SECRET_MODELS)
    return create_campaign(
        name=name, protocol=protocol, datasets=[dataset], annotators=annotators, **kw
    )


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_home_lists_only_my_active_campaigns_with_progress(annotator, annotator2):
    mine = _campaign("Portraits round 1", [annotator], overlap_k=3)
    _campaign("Someone else's campaign", [annotator2])
    _campaign("Paused campaign", [annotator], status=Campaign.Status.PAUSED)
    (lease,) = claim_items(campaign=mine, annotator=annotator).assignments
    submit_judgment(
        annotator=annotator, item_id=lease.item_id, idempotency_key=uuid.uuid4(), rating=4
    )

    response = _client(annotator).get(reverse("home"))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Portraits round 1" in html
    assert "Someone else&#x27;s campaign" not in html and "Someone else's campaign" not in html
    assert "Paused campaign" not in html
    assert [row["done_by_me"] for row in response.context["rows"]] == [1]
    assert "1 / 12 judgments" in html  # 4 faces × k=3
    assert reverse("annotate", args=[mine.pk]) in html


def test_home_says_when_i_am_paused_in_a_campaign(annotator):
    campaign = _campaign("Gold check", [annotator])
    Membership.objects.filter(campaign=campaign).update(
        paused_at="2026-01-01T00:00Z", pause_reason="Too many misses."
    )
    html = _client(annotator).get(reverse("home")).content.decode()
    assert "Paused for you" in html and "Too many misses." in html


def test_annotate_page_renders_for_a_member_with_keys_and_api_config(annotator):
    campaign = _campaign("Pairs", [annotator], protocol="pairwise")
    response = _client(annotator).get(reverse("annotate", args=[campaign.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="annotate-config"' in html and f"/api/campaigns/{campaign.pk}/next/" in html
    assert "Left better" in html and 'aria-keyshortcuts="ArrowLeft"' in html
    assert "annotate.js" in html


def test_annotate_page_404s_for_a_campaign_i_am_not_a_member_of(annotator, annotator2):
    theirs = _campaign("Theirs", [annotator2])
    assert _client(annotator).get(reverse("annotate", args=[theirs.pk])).status_code == 404
    assert _client(annotator).get(reverse("annotate", args=[theirs.pk + 1000])).status_code == 404


def test_annotate_page_of_a_paused_campaign_sends_me_home_with_a_message(annotator):
    campaign = _campaign("On hold", [annotator], status=Campaign.Status.PAUSED)
    response = _client(annotator).get(reverse("annotate", args=[campaign.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("home")
    assert "nothing to annotate now" in response.content.decode()


def test_annotate_page_shows_my_pause_reason_prominently(annotator):
    campaign = _campaign("Checked", [annotator])
    Membership.objects.filter(campaign=campaign).update(
        paused_at="2026-01-01T00:00Z", pause_reason="Gold accuracy 40%."
    )
    html = _client(annotator).get(reverse("annotate", args=[campaign.pk])).content.decode()
    assert 'role="alert"' in html and "Gold accuracy 40%." in html


@pytest.mark.parametrize("role", ["researcher", "admin_user"])
def test_researchers_and_admins_are_refused_the_annotate_page(role, request, annotator):
    user = request.getfixturevalue(role)
    campaign = _campaign("Research only", [annotator])
    assert _client(user).get(reverse("annotate", args=[campaign.pk])).status_code == 403


@pytest.mark.parametrize("role", ["researcher", "admin_user"])
def test_home_sends_researchers_and_admins_to_the_research_campaigns(role, request):
    user = request.getfixturevalue(role)
    response = _client(user).get(reverse("home"))
    assert response.status_code == 302
    assert response["Location"] == reverse("research-campaigns")


def test_user_without_a_role_sees_an_explanation_not_an_error(db):
    user = User.objects.create_user("nobody", password=PASSWORD)
    response = _client(user).get(reverse("home"))
    assert response.status_code == 200
    assert "no role yet" in response.content.decode()


def test_anonymous_users_are_sent_to_the_login_page(annotator):
    campaign = _campaign("Public?", [annotator])
    for url in (reverse("home"), reverse("annotate", args=[campaign.pk])):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login") + "?next=")


def test_login_form_enforces_csrf(annotator):
    client = Client(enforce_csrf_checks=True)
    forged = client.post(reverse("login"), {"username": "ann1", "password": PASSWORD})
    assert forged.status_code == 403
    assert "_auth_user_id" not in client.session

    page = client.get(reverse("login"))
    token = page.context["csrf_token"]
    response = client.post(
        reverse("login"),
        {"username": "ann1", "password": PASSWORD, "csrfmiddlewaretoken": str(token)},
    )
    assert response.status_code == 302 and response["Location"] == reverse("home")
    assert client.session["_auth_user_id"] == str(annotator.pk)


def test_login_form_shows_an_error_for_a_wrong_password(annotator):
    response = Client().post(reverse("login"), {"username": "ann1", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_logout_is_a_post_and_ends_the_session(annotator):
    client = _client(annotator)
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert "_auth_user_id" not in client.session


def test_blind_campaign_pages_never_show_model_names(annotator):
    likert = _campaign("Blind likert", [annotator], blind=True)
    pairwise = _campaign("Blind pairs", [annotator], protocol="pairwise", blind=True)
    client = _client(annotator)
    pages = [client.get(reverse("home"))]
    pages += [client.get(reverse("annotate", args=[c.pk])) for c in (likert, pairwise)]
    # The screen's data comes from the API: the items it serves must be blind too.
    pages += [
        client.post(f"/api/campaigns/{c.pk}/next/", {"count": 4}, content_type="application/json")
        for c in (likert, pairwise)
    ]
    for response in pages:
        assert response.status_code == 200
        body = response.content.decode().lower()
        for model in SECRET_MODELS:
            assert model not in body
        assert "sd15" not in body and "score" not in body
