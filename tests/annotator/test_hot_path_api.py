"""The two hot-path endpoints (next items, submit) keep DRF's authentication rules, statuses, messages
and JSON shapes, for API tokens and browser sessions alike."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
import yaml
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from annotator.assignment import claim
from annotator.campaigns import create_campaign
from annotator.hot_path import lease_for_annotator
from annotator.models import Assignment, Judgment
from annotator.serializers import item_for_annotator
from tests.factories import make_dataset
from tests.users import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(annotator):
    dataset = make_dataset(prompts=("p1", "p2"), models=("secret-dm", "other-dm"))
    return create_campaign(
        name="c", protocol="likert", datasets=[dataset], annotators=[annotator], overlap_k=2
    )


def _token(user: User) -> str:
    return f"Token {Token.objects.create(user=user).key}"


def _post(client: Client, url: str, body: object, **headers: str):
    return client.post(url, json.dumps(body), content_type="application/json", **headers)


def _next(campaign, auth: str, count: int = 1):
    return _post(
        Client(), f"/api/campaigns/{campaign.pk}/next/", {"count": count}, HTTP_AUTHORIZATION=auth
    )


def test_a_token_client_claims_and_submits_with_the_browser_shapes(annotator, campaign):
    auth = _token(annotator)
    response = _next(campaign, auth, count=2)
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"items", "paused", "message"} and len(body["items"]) == 2
    item = body["items"][0]
    assert set(item) == {
        "item_id",
        "assignment_id",
        "display_index",
        "protocol",
        "expires_at",
        "faces",
    }
    assert item["protocol"] == "likert" and item["display_index"] == 0
    assert "secret-dm" not in response.content.decode()
    key = str(uuid.uuid4())
    submit = {
        "idempotency_key": key,
        "item": item["item_id"],
        "rating": 4,
        "time_on_screen_ms": 1234,
    }
    first = _post(Client(), "/api/judgments/", submit, HTTP_AUTHORIZATION=auth)
    again = _post(Client(), "/api/judgments/", submit, HTTP_AUTHORIZATION=auth)
    assert (first.status_code, again.status_code) == (201, 200)
    stored = Judgment.objects.get()
    assert first.json() == {
        "judgment_id": stored.pk,
        "item": item["item_id"],
        "duplicate": False,
        "gold_paused": False,
        "message": "",
    }
    assert again.json()["duplicate"] is True and again.json()["judgment_id"] == stored.pk
    assert (stored.rating, stored.time_on_screen_ms, str(stored.idempotency_key)) == (4, 1234, key)
    # The held lease comes back first, then one new one.
    queue = _next(campaign, auth, count=2).json()["items"]
    assert queue[0]["item_id"] == body["items"][1]["item_id"] and queue[1]["display_index"] == 2


def test_the_hot_path_item_shape_is_the_apis_item_shape(annotator, campaign):
    result = claim(campaign_id=campaign.pk, annotator_id=annotator.pk, count=3)
    assert len(result.leases) == 3
    for lease, assignment in zip(result.leases, result.assignments, strict=True):
        assert lease_for_annotator(lease, "likert") == item_for_annotator(assignment, "likert")


@pytest.mark.parametrize(
    "header, detail",
    [
        (None, "Authentication credentials were not provided."),
        ("Token", "Invalid token header. No credentials provided."),
        ("Token a b", "Invalid token header. Token string should not contain spaces."),
        ("Token not-a-real-key", "Invalid token."),
        ("Bearer abc", "Authentication credentials were not provided."),
    ],
)
def test_missing_or_bad_credentials_get_drfs_403_and_change_nothing(campaign, header, detail):
    headers = {"HTTP_AUTHORIZATION": header} if header else {}
    for url, body in (
        (f"/api/campaigns/{campaign.pk}/next/", {}),
        ("/api/judgments/", {"item": 1}),
    ):
        response = _post(Client(), url, body, **headers)
        assert response.status_code == 403 and response.json() == {"detail": detail}
    assert not Assignment.objects.exists()


def test_an_inactive_users_token_is_refused(annotator, campaign):
    auth = _token(annotator)
    User.objects.filter(pk=annotator.pk).update(is_active=False)
    response = _next(campaign, auth)
    assert response.status_code == 403 and response.json() == {
        "detail": "User inactive or deleted."
    }


def test_a_researcher_is_not_served_items_and_cannot_submit(researcher, campaign):
    auth = _token(researcher)
    assert _next(campaign, auth).json() == {"detail": "Only annotators are served items."}
    response = _post(Client(), "/api/judgments/", {"item": 1}, HTTP_AUTHORIZATION=auth)
    assert response.status_code == 403 and response.json() == {
        "detail": "Only annotators submit judgments."
    }


def test_an_annotator_outside_the_campaign_gets_404_and_no_lease(annotator2, campaign):
    response = _next(campaign, _token(annotator2))
    assert response.status_code == 404 and response.json() == {
        "detail": "You are not an annotator of this campaign."
    }
    missing = _post(
        Client(),
        "/api/campaigns/999999/next/",
        {},
        HTTP_AUTHORIZATION=_token(make_user("x", "annotator")),
    )
    assert missing.status_code == 404
    assert not Assignment.objects.exists()


def test_session_posts_need_the_csrf_token_and_token_posts_do_not(annotator, campaign):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(annotator)
    url = f"/api/campaigns/{campaign.pk}/next/"
    refused = _post(browser, url, {"count": 1})
    assert refused.status_code == 403 and refused.json()["detail"].startswith("CSRF Failed")
    assert not Assignment.objects.exists()
    assert (
        browser.get(f"/campaigns/{campaign.pk}/annotate/").status_code == 200
    )  # sets the CSRF cookie
    token = browser.cookies["csrftoken"].value
    assert _post(browser, url, {"count": 1}, HTTP_X_CSRFTOKEN=token).status_code == 200
    api = Client(enforce_csrf_checks=True)
    assert _post(api, url, {"count": 1}, HTTP_AUTHORIZATION=_token(annotator)).status_code == 200


def _logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_session_client_is_served_and_answers_vary_on_the_cookie(annotator, campaign):
    response = _post(_logged_in(annotator), f"/api/campaigns/{campaign.pk}/next/", {"count": 1})
    assert response.status_code == 200 and len(response.json()["items"]) == 1
    assert "Cookie" in response["Vary"]


@pytest.mark.parametrize(
    "spoil",
    [
        # A password change logs every other session out (the session hash no longer verifies).
        lambda user, client: (user.set_password("a new one"), user.save()),
        lambda user, client: User.objects.filter(pk=user.pk).update(is_active=False),
        lambda user, client: Session.objects.update(
            expire_date=timezone.now() - timedelta(seconds=1)
        ),
        lambda user, client: client.cookies["sessionid"].set("sessionid", "no-such-session", "x"),
        lambda user, client: Session.objects.update(session_data="tampered:data"),
    ],
    ids=["password-changed", "inactive", "expired", "unknown-key", "tampered"],
)
def test_a_session_that_django_would_not_accept_is_refused(annotator, campaign, spoil):
    client = _logged_in(annotator)
    # A request first, so this process has seen the session: the check must not lean on that.
    assert _post(client, "/api/judgments/", {}).status_code == 400
    spoil(annotator, client)
    response = _post(client, f"/api/campaigns/{campaign.pk}/next/", {"count": 1})
    assert response.status_code == 403
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert not Assignment.objects.exists()


def test_a_session_seen_before_follows_its_row_not_what_the_process_remembers(
    annotator, annotator2, campaign
):
    client = _logged_in(annotator)
    url = f"/api/campaigns/{campaign.pk}/next/"
    assert _post(client, url, {"count": 1}).status_code == 200
    # The row now names another user (as only a hand edit could): that user's row decides.
    other = _logged_in(annotator2)
    Session.objects.filter(session_key=client.cookies["sessionid"].value).update(
        session_data=Session.objects.get(session_key=other.cookies["sessionid"].value).session_data
    )
    response = _post(client, url, {"count": 1})
    assert response.status_code == 404  # annotator2 is not in this campaign
    again = _logged_in(annotator)
    assert _post(again, url, {"count": 1}).status_code == 200
    annotator.groups.clear()  # a role taken away counts at once
    assert _post(again, url, {}).json() == {"detail": "Only annotators are served items."}


def test_a_researchers_session_is_not_served_items(researcher, campaign):
    response = _post(_logged_in(researcher), f"/api/campaigns/{campaign.pk}/next/", {})
    assert response.status_code == 403 and response.json() == {
        "detail": "Only annotators are served items."
    }


def test_a_form_encoded_submit_is_read_like_json(annotator, campaign):
    client = Client()
    client.force_login(annotator)
    (item,) = _post(client, f"/api/campaigns/{campaign.pk}/next/", {}).json()["items"]
    form = {
        "idempotency_key": str(uuid.uuid4()),
        "item": str(item["item_id"]),
        "rating": "2",
        "flag": "",
    }
    response = client.post("/api/judgments/", form)
    assert response.status_code == 201, response.content
    assert Judgment.objects.get().rating == 2


MISSING = object()


@pytest.mark.parametrize(
    "body, errors",
    [
        (
            {"idempotency_key": MISSING, "item": MISSING},
            {"idempotency_key": ["This field is required."], "item": ["This field is required."]},
        ),
        ({"rating": 6}, {"rating": ["Ensure this value is less than or equal to 5."]}),
        ({"rating": True}, {"rating": ["A valid integer is required."]}),
        ({"choice": "up"}, {"choice": ['"up" is not a valid choice.']}),
        (
            {"time_on_screen_ms": -1},
            {"time_on_screen_ms": ["Ensure this value is greater than or equal to 0."]},
        ),
        ({"idempotency_key": "nope"}, {"idempotency_key": ["Must be a valid UUID."]}),
        ({"flag": None}, {"flag": ["This field may not be null."]}),
    ],
)
def test_invalid_submits_name_each_bad_field_and_store_nothing(annotator, campaign, body, errors):
    auth = _token(annotator)
    (item,) = _next(campaign, auth).json()["items"]
    payload = {"idempotency_key": str(uuid.uuid4()), "item": item["item_id"], "rating": 3, **body}
    payload = {name: value for name, value in payload.items() if value is not MISSING}
    response = _post(Client(), "/api/judgments/", payload, HTTP_AUTHORIZATION=auth)
    assert response.status_code == 400 and response.json() == errors
    assert not Judgment.objects.exists()


def test_bad_counts_and_bad_json_are_400(annotator, campaign):
    auth = _token(annotator)
    response = _post(
        Client(), f"/api/campaigns/{campaign.pk}/next/", {"count": 9}, HTTP_AUTHORIZATION=auth
    )
    assert response.status_code == 400
    assert response.json() == {"count": ["Ensure this value is less than or equal to 8."]}
    broken = Client().post(
        f"/api/campaigns/{campaign.pk}/next/",
        "{",
        content_type="application/json",
        HTTP_AUTHORIZATION=auth,
    )
    assert broken.status_code == 400 and broken.json()["detail"].startswith("JSON parse error")
    assert not Assignment.objects.exists()


def test_engine_refusals_keep_their_status_and_message(annotator, campaign):
    auth = _token(annotator)
    (item,) = _next(campaign, auth).json()["items"]
    others = campaign.items.exclude(pk=item["item_id"]).first()
    body = {"idempotency_key": str(uuid.uuid4()), "item": others.pk, "rating": 3}
    response = _post(Client(), "/api/judgments/", body, HTTP_AUTHORIZATION=auth)
    assert response.status_code == 409 and response.json() == {
        "detail": "This item was not assigned to you."
    }
    wrong = {"idempotency_key": str(uuid.uuid4()), "item": item["item_id"], "choice": "left"}
    response = _post(Client(), "/api/judgments/", wrong, HTTP_AUTHORIZATION=auth)
    assert response.status_code == 400 and response.json() == {
        "detail": "This campaign asks for a rating from 1 to 5."
    }


def test_get_on_next_is_405_and_get_on_judgments_still_lists_them(annotator, campaign):
    client = Client()
    client.force_login(annotator)
    response = client.get(f"/api/campaigns/{campaign.pk}/next/")
    assert response.status_code == 405 and response.json() == {
        "detail": 'Method "GET" not allowed.'
    }
    listing = client.get("/api/judgments/")
    assert listing.status_code == 200 and listing.json()["results"] == []


def test_the_openapi_schema_still_describes_both_endpoints(researcher):
    client = Client()
    client.force_login(researcher)
    schema = yaml.safe_load(client.get("/api/schema/").content)
    next_items = schema["paths"]["/api/campaigns/{id}/next/"]["post"]
    assert next_items["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/NextItemsRequest"
    )
    assert next_items["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/NextItems"
    )
    judgments = schema["paths"]["/api/judgments/"]
    assert judgments["post"]["requestBody"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/JudgmentCreate")
    assert set(judgments["post"]["responses"]) >= {"200", "201"} and "get" in judgments
