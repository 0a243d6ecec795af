"""On PostgreSQL the common submit is one statement (``_submit_at_once``); every other submit is
left, untouched, to the transaction that explains it. These tests hold the line between the two:
what the statement stores, and what it must store nothing for."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from annotator import assignment as engine
from annotator.assignment import AnnotatorQuery, claim_items, skip_item, submit_judgment
from annotator.campaigns import create_campaign
from annotator.models import Assignment, Campaign, Item, Judgment, Membership
from tests.factories import make_dataset
from tests.services import need_postgres

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _postgres() -> None:
    need_postgres()


def _campaign(annotators, protocol="likert", k=2):
    dataset = make_dataset(prompts=("p1", "p2"), models=("a", "b"))
    return create_campaign(
        name="c", protocol=protocol, datasets=[dataset], annotators=annotators, overlap_k=k
    )


def _at_once(annotator, item_id, key=None, **answer):
    answer = {"rating": None, "choice": "", "flag": "", **answer}
    return engine._submit_at_once(
        annotator_id=annotator if isinstance(annotator, AnnotatorQuery) else annotator.pk,
        item_id=item_id,
        idempotency_key=key or uuid.uuid4(),
        answer=answer,
        time_on_screen_ms=700,
    )


def test_a_regular_submit_is_stored_by_the_one_statement(annotator):
    campaign = _campaign([annotator])
    first, second = claim_items(campaign=campaign, annotator=annotator, count=2).assignments
    key = uuid.uuid4()
    result = _at_once(annotator, second.item_id, key, rating=4)
    assert result is not None and result.created
    stored = Judgment.objects.get()
    assert (stored.pk, stored.idempotency_key, stored.rating, stored.time_on_screen_ms) == (
        result.judgment.pk, key, 4, 700,
    )  # fmt: skip
    assert (stored.assignment_id, stored.display_index, stored.annotator_id) == (
        second.pk, 1, annotator.pk,
    )  # fmt: skip
    assert Item.objects.get(pk=second.item_id).judgment_count == 1
    assert Assignment.objects.get(pk=second.pk).status == Assignment.Status.SUBMITTED
    assert Assignment.objects.get(pk=first.pk).status == Assignment.Status.ACTIVE


def test_a_token_query_names_the_annotator_and_a_bad_one_stores_nothing(annotator):
    from rest_framework.authtoken.models import Token

    from annotator.hot_path import _TOKEN_ANNOTATOR_SQL

    campaign = _campaign([annotator])
    (lease,) = claim_items(campaign=campaign, annotator=annotator).assignments
    nobody = AnnotatorQuery(_TOKEN_ANNOTATOR_SQL, ("no-such-token", "annotator"))
    assert _at_once(nobody, lease.item_id, rating=2) is None
    assert not Judgment.objects.exists()
    token = AnnotatorQuery(
        _TOKEN_ANNOTATOR_SQL, (Token.objects.create(user=annotator).key, "annotator")
    )
    result = _at_once(token, lease.item_id, rating=2)
    assert result is not None and result.judgment.annotator_id == annotator.pk


def _paused_annotator(campaign, annotator):
    Membership.objects.filter(campaign=campaign, annotator=annotator).update(
        paused_at=timezone.now(), pause_reason="checked"
    )


def _paused_campaign(campaign, annotator):
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.PAUSED)


def _skipped(campaign, annotator):
    item_id = Assignment.objects.get(annotator=annotator).item_id
    skip_item(campaign=campaign, annotator=annotator, item_id=item_id)


def _filled_by_others(campaign, annotator):
    Item.objects.filter(campaign=campaign).update(judgments_wanted=0)


def _gold(campaign, annotator):
    item = Assignment.objects.get(annotator=annotator).item
    Item.objects.filter(pk=item.pk).update(is_gold=True, gold_answer="3", judgments_wanted=None)


@pytest.mark.parametrize(
    "spoil, answer",
    [
        (None, {"choice": "left"}),  # a likert campaign takes no choice
        (None, {"rating": 6}),
        (_paused_annotator, {"rating": 3}),
        (_paused_campaign, {"rating": 3}),
        (_skipped, {"rating": 3}),
        (_filled_by_others, {"rating": 3}),
        (_gold, {"rating": 3}),
    ],
)
def test_an_unusual_submit_is_left_to_the_transaction_and_changes_nothing(annotator, spoil, answer):
    campaign = _campaign([annotator])
    (lease,) = claim_items(campaign=campaign, annotator=annotator).assignments
    if spoil:
        spoil(campaign, annotator)
    before = list(Assignment.objects.values_list("id", "status"))
    assert _at_once(annotator, lease.item_id, **answer) is None
    assert not Judgment.objects.exists()
    assert Item.objects.get(pk=lease.item_id).judgment_count == 0
    assert list(Assignment.objects.values_list("id", "status")) == before


def test_a_retried_key_and_an_unleased_item_are_left_to_the_transaction(annotator, annotator2):
    campaign = _campaign([annotator, annotator2])
    (lease,) = claim_items(campaign=campaign, annotator=annotator).assignments
    key = uuid.uuid4()
    stored = submit_judgment(
        annotator=annotator, item_id=lease.item_id, idempotency_key=key, rating=5
    )
    assert _at_once(annotator, lease.item_id, key, rating=5) is None  # the retry replays instead
    assert _at_once(annotator2, lease.item_id, rating=5) is None  # annotator2 holds no lease on it
    assert list(Judgment.objects.values_list("pk", flat=True)) == [stored.judgment.pk]
    assert Item.objects.get(pk=lease.item_id).judgment_count == 1


def test_a_lease_that_expired_unanswered_is_still_stored_while_the_item_has_room(annotator):
    campaign = _campaign([annotator])
    (lease,) = claim_items(campaign=campaign, annotator=annotator).assignments
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert _at_once(annotator, lease.item_id, rating=1) is not None


def test_a_pairwise_choice_is_stored_and_the_shown_left_face_recorded(annotator):
    campaign = _campaign([annotator], protocol="pairwise")
    (lease,) = claim_items(campaign=campaign, annotator=annotator).assignments
    result = _at_once(annotator, lease.item_id, choice="left")
    assert result is not None
    stored = Judgment.objects.get()
    assert stored.choice == "left" and stored.shown_left_face_id == lease.item.left_face_id
