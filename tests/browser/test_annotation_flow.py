"""The annotation screen in headless Chromium against a live server: keyboard only, offline and back.

Screenshots for the README are written to ``docs/screenshots/`` when
``FACEBENCH_SCREENSHOTS=1`` (otherwise to a temporary folder, so a plain test run leaves the
checkout untouched): ``FACEBENCH_SCREENSHOTS=1 make test PYTEST_ARGS=tests/browser``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Route, expect

from annotator.campaigns import add_gold_items
from annotator.models import Assignment, Campaign, Face, Item, Judgment, Membership
from tests.browser.conftest import SECRET_MODELS, log_in, make_photo_campaign

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# The sender retries after 1 s, 2 s, 4 s…: "All saved" comes well within this.
SAVE_TIMEOUT_MS = 30_000


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.getenv("FACEBENCH_SCREENSHOTS", "") not in ("", "0"):
        folder = REPO / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path


def current_item(page: Any) -> int:
    """Wait until an item is on screen with its images loaded; return its id."""
    page.wait_for_selector('#annotate[data-state="ready"]')
    return int(page.get_attribute("#annotate", "data-item"))


def answer_with_key(page: Any, key: str) -> int:
    """Press ``key`` on the item on screen and wait for the screen to move on; return the item id."""
    item = current_item(page)
    page.keyboard.press(key)
    page.wait_for_function(
        "id => document.getElementById('annotate').dataset.item !== String(id)", arg=item
    )
    return item


def save_status(page: Any) -> Any:
    return page.locator("#save-status")


def open_campaign(page: Any, base_url: str, campaign_pk: int) -> None:
    page.goto(f"{base_url}/campaigns/{campaign_pk}/annotate/")
    expect(page.locator("#annotate")).to_have_attribute("data-queued", "4")
    current_item(page)


def assert_no_model_names(page: Any) -> None:
    html = page.content().lower()
    for model in SECRET_MODELS:
        assert model not in html


def test_likert_answers_survive_offline_lost_responses_and_a_reload(
    live_server, page, browser_context, annotator, shots
):
    campaign = make_photo_campaign("likert", annotator, prompts=5)  # 10 faces
    pressed: dict[int, str] = {}  # item id -> answer, in the order given

    make_photo_campaign("pairwise", annotator, prompts=2)  # a second campaign on the home page

    log_in(page, live_server.url, "ann1")
    expect(page.get_by_role("row")).to_have_count(3)  # header + two campaigns
    likert_row = page.get_by_role("row", name=re.compile("Faces of likert"))
    likert_row.get_by_role("link", name="Start").click()
    expect(page.locator("#annotate")).to_have_attribute("data-queued", "4")
    current_item(page)
    assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight"), (
        "likert must fit 1280×800"
    )
    assert_no_model_names(page)
    page.screenshot(path=str(shots / "annotate-likert.png"))

    for key in ("4", "2", "5"):
        pressed[answer_with_key(page, key)] = key
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)
    # The queue is full again before the network drops.
    expect(page.locator("#annotate")).to_have_attribute("data-queued", "4")

    # Offline: answers go on from the prefetched queue and wait in the outbox.
    browser_context.set_offline(True)
    for key in ("1", "3"):
        pressed[answer_with_key(page, key)] = key
    expect(save_status(page)).to_have_text("2 waiting to send (offline)")
    assert Judgment.objects.filter(item__campaign=campaign).count() == 3
    browser_context.set_offline(False)
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)

    # The server stores an answer but the response is lost: the retry reuses the key, so it is
    # stored once (the server answers "duplicate").
    lost: list[int] = []

    def lose_first_response(route: Route) -> None:
        if lost:
            route.continue_()
            return
        lost.append(route.fetch().status)
        route.abort()

    page.route("**/api/judgments/", lose_first_response)
    pressed[answer_with_key(page, "f")] = "broken"
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)
    assert lost == [201]
    page.unroute("**/api/judgments/")

    # A reload with an unsent answer: the outbox lives in localStorage and is sent on load.
    page.route("**/api/judgments/", lambda route: route.abort())
    pending_item = answer_with_key(page, "2")
    pressed[pending_item] = "2"
    expect(save_status(page)).to_contain_text("1 waiting to send")
    page.reload()
    expect(save_status(page)).to_contain_text("1 waiting to send")
    assert current_item(page) != pending_item  # the answered item is not shown again
    page.unroute("**/api/judgments/")
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)

    judgments = list(Judgment.objects.filter(item__campaign=campaign).order_by("display_index"))
    assert len(judgments) == len(pressed) == 7
    assert len({j.idempotency_key for j in judgments}) == len(judgments)
    assert {j.item_id: j.answer for j in judgments} == pressed
    assert [j.item_id for j in judgments] == list(pressed)  # in the order shown
    assert all(j.time_on_screen_ms > 0 for j in judgments)
    for judgment in judgments:
        assert (
            judgment.display_index
            == Assignment.objects.get(pk=judgment.assignment_id).display_index
        )
    assert page.locator("#done-by-me").inner_text() == "7"
    assert page.js_errors == []

    page.goto(f"{live_server.url}/")
    expect(likert_row.get_by_role("link", name="Continue")).to_be_visible()
    expect(likert_row).to_contain_text("7 / 10 judgments")
    page.screenshot(path=str(shots / "home.png"))


def test_pairwise_is_answered_with_the_arrow_keys(live_server, page, annotator, shots):
    campaign = make_photo_campaign("pairwise", annotator, prompts=5)  # 5 cross-model pairs
    log_in(page, live_server.url, "ann1")
    open_campaign(page, live_server.url, campaign.pk)
    expect(page.locator(".face-panel")).to_have_count(2)
    expect(page.locator(".face-panel").first).to_contain_text("Left face")
    assert_no_model_names(page)
    page.screenshot(path=str(shots / "annotate-pairwise.png"))

    keys = {"ArrowLeft": "left", "ArrowRight": "right", "ArrowDown": "tie", "ArrowUp": "both_bad"}
    pressed = {answer_with_key(page, key): choice for key, choice in keys.items()}
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)

    judgments = Judgment.objects.filter(item__campaign=campaign).select_related("item")
    assert {j.item_id: j.choice for j in judgments} == pressed
    assert all(j.shown_left_face_id == j.item.left_face_id for j in judgments)
    assert all(j.time_on_screen_ms > 0 for j in judgments)
    assert page.js_errors == []


def test_undo_takes_back_an_unsent_answer_locally_and_a_stored_one_on_the_server(
    live_server, page, annotator
):
    campaign = make_photo_campaign("likert", annotator, prompts=3)
    log_in(page, live_server.url, "ann1")
    open_campaign(page, live_server.url, campaign.pk)
    first = current_item(page)

    # Not sent yet (the network refuses it): undo removes it from the outbox and shows the item again.
    page.route("**/api/judgments/", lambda route: route.abort())
    answer_with_key(page, "3")
    page.keyboard.press("u")
    expect(page.locator("#annotate")).to_have_attribute("data-item", str(first))
    expect(save_status(page)).to_have_text("All saved")
    page.unroute("**/api/judgments/")
    assert not Judgment.objects.filter(item_id=first).exists()

    # Stored: undo asks the server, which deletes it and hands the item back.
    answer_with_key(page, "2")
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)
    assert Judgment.objects.get(item_id=first).rating == 2
    page.keyboard.press("u")
    expect(page.locator("#annotate")).to_have_attribute("data-item", str(first))
    assert not Judgment.objects.filter(item_id=first).exists()
    answer_with_key(page, "5")

    # Skip gives the item back for good.
    skipped = answer_with_key(page, "s")
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)
    assert Judgment.objects.get(item_id=first).rating == 5
    assert Judgment.objects.filter(item__campaign=campaign).count() == 1
    assert (
        Assignment.objects.get(item_id=skipped, annotator=annotator).status
        == Assignment.Status.SKIPPED
    )
    assert page.js_errors == []


def test_buttons_mirror_the_keys_and_a_paused_annotator_sees_why(live_server, page, annotator):
    campaign = make_photo_campaign("likert", annotator, prompts=2)
    log_in(page, live_server.url, "ann1")
    open_campaign(page, live_server.url, campaign.pk)
    item = current_item(page)
    page.get_by_role("button", name="4 Good").click()
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)
    assert Judgment.objects.get(item_id=item).rating == 4

    Membership.objects.filter(campaign=campaign).update(
        paused_at="2026-01-01T00:00Z", pause_reason="Your answers disagreed with the check items."
    )
    page.reload()
    expect(page.locator("#banner")).to_contain_text("Your answers disagreed with the check items.")
    expect(page.locator("#annotate")).to_have_attribute("data-state", "paused")
    page.keyboard.press("3")
    assert Judgment.objects.filter(item__campaign=campaign).count() == 1
    assert page.js_errors == []


def test_held_keys_count_once_and_refused_answers_are_listed_not_retried(
    live_server, page, annotator
):
    campaign = make_photo_campaign("likert", annotator, prompts=3)
    log_in(page, live_server.url, "ann1")
    open_campaign(page, live_server.url, campaign.pk)

    # A key held down (auto-repeat) answers one item, not several.
    first = current_item(page)
    page.keyboard.down("4")
    page.wait_for_function(
        "id => document.getElementById('annotate').dataset.item !== String(id)", arg=first
    )
    next_item = current_item(page)
    page.keyboard.down("4")  # still held: the browser sends it with repeat = true
    page.keyboard.up("4")
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)
    assert list(Judgment.objects.values_list("item_id", "rating")) == [(first, 4)]
    assert current_item(page) == next_item

    # A server error is retried with the same key until it goes through.
    failures: list[int] = []

    def fail_once(route: Route) -> None:
        if failures:
            route.continue_()
            return
        failures.append(503)
        route.fulfill(status=503, json={"detail": "Service unavailable"})

    page.route("**/api/judgments/", fail_once)
    second = answer_with_key(page, "2")
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)
    assert failures == [503]
    assert Judgment.objects.get(item_id=second).rating == 2
    page.unroute("**/api/judgments/")

    # An answer that can never be stored (the campaign closed meanwhile) is dropped and listed.
    campaign.status = Campaign.Status.FINISHED
    campaign.save(update_fields=["status"])
    answer_with_key(page, "5")
    expect(page.locator("#rejections")).to_be_visible()
    expect(page.locator("#rejection-list")).to_contain_text("judgments are closed")
    expect(save_status(page)).to_have_text("All saved")
    assert Judgment.objects.count() == 2
    assert page.locator("#done-by-me").inner_text() == "2"
    assert page.js_errors == []


def test_failing_the_gold_checks_pauses_the_screen_with_the_reason(live_server, page, annotator):
    campaign = make_photo_campaign(
        "likert", annotator, prompts=3, gold_share=1.0, pause_min_gold=1, pause_threshold=1.0
    )
    face = Face.objects.filter(generation__dataset__campaigns=campaign).first()
    add_gold_items(campaign=campaign, answers={face: "5"})
    log_in(page, live_server.url, "ann1")
    page.goto(f"{live_server.url}/campaigns/{campaign.pk}/annotate/")
    gold = current_item(page)
    assert Item.objects.get(pk=gold).is_gold
    assert "gold" not in page.content().lower()  # nothing tells the annotator it is a check

    page.keyboard.press("1")  # far from the expected 5
    expect(page.locator("#annotate")).to_have_attribute("data-state", "paused")
    expect(page.locator("#banner")).to_contain_text("You are paused")
    assert Membership.objects.get(campaign=campaign).is_paused
    page.keyboard.press("3")  # nothing to answer any more
    assert Judgment.objects.count() == 1
    assert page.js_errors == []


def test_an_expired_session_keeps_the_answers_until_the_annotator_logs_in_again(
    live_server, page, browser_context, annotator
):
    campaign = make_photo_campaign("likert", annotator, prompts=2)
    log_in(page, live_server.url, "ann1")
    open_campaign(page, live_server.url, campaign.pk)

    browser_context.clear_cookies()  # the session ends (expiry, logout in another tab)
    item = answer_with_key(page, "3")
    expect(save_status(page)).to_have_text("1 waiting to send (logged out)")
    expect(page.locator("#banner")).to_contain_text("Your session has ended")
    assert not Judgment.objects.exists()

    log_in(browser_context.new_page(), live_server.url, "ann1")
    page.reload()
    expect(save_status(page)).to_have_text("All saved", timeout=SAVE_TIMEOUT_MS)
    assert list(Judgment.objects.values_list("item_id", "rating")) == [(item, 3)]
    assert page.js_errors == []
