"""The annotation API as the browser uses it: next items, idempotent judgments, skip, undo, export."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest
from rest_framework.test import APIClient

from annotator.campaigns import create_campaign
from annotator.models import Judgment
from tests.factories import make_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(annotator, annotator2):
    dataset = make_dataset(prompts=("=HYPERLINK(\"http://x\")", "p2"), models=("secret-dm", "other-dm"))
    return create_campaign(name="c", protocol="likert", datasets=[dataset], annotators=[annotator, annotator2], overlap_k=2)


def _client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)  # a session, as the browser has: reaches the image views too
    return client


def _next(client, campaign, count=1):
    response = client.post(f"/api/campaigns/{campaign.pk}/next/", {"count": count}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_next_returns_items_without_model_names_or_gold_flags(annotator, campaign):
    body = _next(_client(annotator), campaign, count=4)
    assert len(body["items"]) == 4 and body["paused"] is False
    item = body["items"][0]
    assert set(item) == {"item_id", "assignment_id", "display_index", "protocol", "expires_at", "faces"}
    assert set(item["faces"][0]) == {"position", "crop_url", "image_url", "box", "image_width", "image_height"}
    assert item["faces"][0]["crop_url"] == f"/images/items/{item['item_id']}/single/crop.png"
    assert item["faces"][0]["image_url"] == f"/images/items/{item['item_id']}/single/whole.png"
    assert "secret-dm" not in json.dumps(body) and "gold" not in json.dumps(body)


def test_judgment_post_is_idempotent(annotator, campaign):
    client = _client(annotator)
    item = _next(client, campaign)["items"][0]
    body = {"idempotency_key": str(uuid.uuid4()), "item": item["item_id"], "rating": 4, "time_on_screen_ms": 1500}
    first = client.post("/api/judgments/", body, format="json")
    again = client.post("/api/judgments/", body, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["duplicate"] is True and again.json()["judgment_id"] == first.json()["judgment_id"]
    assert Judgment.objects.count() == 1


@pytest.mark.parametrize(
    "body, status",
    [
        ({"rating": 9}, 400),
        ({"rating": "five"}, 400),
        ({"choice": "left"}, 400),
        ({"idempotency_key": "not-a-uuid", "rating": 3}, 400),
    ],
)
def test_bad_judgments_get_a_clear_error_and_store_nothing(annotator, campaign, body, status):
    client = _client(annotator)
    item = _next(client, campaign)["items"][0]
    payload = {"idempotency_key": str(uuid.uuid4()), "item": item["item_id"], **body}
    response = client.post("/api/judgments/", payload, format="json")
    assert response.status_code == status
    assert response.json()  # a message, not an empty body
    assert Judgment.objects.count() == 0


def test_skip_then_the_item_is_not_served_again(annotator, campaign):
    client = _client(annotator)
    first = _next(client, campaign)["items"][0]
    assert client.post(f"/api/campaigns/{campaign.pk}/skip/", {"item": first["item_id"]}, format="json").status_code == 200
    served = [_next(client, campaign)["items"][0]["item_id"]]
    assert first["item_id"] not in served


def test_undo_returns_the_item_to_show_again(annotator, campaign):
    client = _client(annotator)
    item = _next(client, campaign)["items"][0]
    client.post("/api/judgments/", {"idempotency_key": str(uuid.uuid4()), "item": item["item_id"], "rating": 2}, format="json")
    response = client.post(f"/api/campaigns/{campaign.pk}/undo/")
    assert response.status_code == 200 and response.json()["item"]["item_id"] == item["item_id"]
    assert client.post(f"/api/campaigns/{campaign.pk}/undo/").json() == {"detail": "Nothing to undo."}


def test_annotators_see_only_their_own_judgments(annotator, annotator2, campaign):
    for user in (annotator, annotator2):
        client = _client(user)
        item = _next(client, campaign)["items"][0]
        client.post("/api/judgments/", {"idempotency_key": str(uuid.uuid4()), "item": item["item_id"], "rating": 3}, format="json")
    mine = _client(annotator).get("/api/judgments/").json()["results"]
    assert len(mine) == 1 and Judgment.objects.get(pk=mine[0]["id"]).annotator == annotator
    other = Judgment.objects.get(annotator=annotator2)
    assert _client(annotator).get(f"/api/judgments/{other.pk}/").status_code == 404


def test_csv_export_neutralises_formulas_and_uses_pseudonyms(annotator, researcher, campaign):
    client = _client(annotator)
    for item in _next(client, campaign, count=4)["items"]:
        client.post("/api/judgments/", {"idempotency_key": str(uuid.uuid4()), "item": item["item_id"], "rating": 5, "time_on_screen_ms": 700}, format="json")
    response = _client(researcher).get(f"/api/campaigns/{campaign.pk}/export/?export_format=csv")
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 4
    assert all(row["annotator"].startswith("A-") and "ann1" not in row["annotator"] for row in rows)
    formula_rows = [row for row in rows if "HYPERLINK" in row["prompt"]]
    assert formula_rows and all(row["prompt"].startswith("'=") for row in formula_rows)
    assert {row["display_index"] for row in rows} == {"0", "1", "2", "3"}
    assert {row["time_on_screen_ms"] for row in rows} == {"700"}


def test_jsonl_export_has_one_object_per_judgment(annotator, researcher, campaign):
    client = _client(annotator)
    item = _next(client, campaign)["items"][0]
    client.post("/api/judgments/", {"idempotency_key": str(uuid.uuid4()), "item": item["item_id"], "flag": "broken"}, format="json")
    response = _client(researcher).get(f"/api/campaigns/{campaign.pk}/export/?export_format=jsonl")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert [json.loads(line)["flag"] for line in lines] == ["broken"]


def test_researcher_creates_a_pairwise_campaign_through_the_api(researcher, annotator):
    dataset = make_dataset(models=("a", "b"))
    response = _client(researcher).post(
        "/api/campaigns/",
        {"name": "pw", "protocol": "pairwise", "datasets": [dataset.pk], "annotators": ["ann1"], "overlap_k": 5},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["progress"]["items"] == 2 and response.json()["annotators"] == ["ann1"]


def test_campaign_settings_that_shaped_the_items_cannot_change(researcher, campaign):
    response = _client(researcher).patch(f"/api/campaigns/{campaign.pk}/", {"overlap_k": 9}, format="json")
    assert response.status_code == 400 and "overlap_k" in json.dumps(response.json())


def test_openapi_schema_is_served(researcher):
    response = _client(researcher).get("/api/schema/")
    assert response.status_code == 200 and b"/api/judgments/" in response.content


def test_item_images_are_served_only_to_the_annotator_holding_the_item(annotator, annotator2, researcher, campaign, tmp_path):
    from django.core.files.base import ContentFile

    from annotator.models import Item
    from tests.images import encode, flat_image

    client = _client(annotator)
    item = _next(client, campaign)["items"][0]
    generation = Item.objects.get(pk=item["item_id"]).face.generation
    generation.image.storage.save(generation.image.name, ContentFile(encode(flat_image(512, 512))))
    url = item["faces"][0]["crop_url"]
    assert client.get(url).status_code == 200
    assert client.get(item["faces"][0]["image_url"]).status_code == 200
    assert _client(annotator2).get(url).status_code == 403
    assert _client(researcher).get(url).status_code == 200
    assert client.get(url.replace("/single/", "/left/")).status_code == 404
