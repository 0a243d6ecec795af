"""The assignment engine on the default database (SQLite locally, PostgreSQL in CI)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotator.assignment import (
    Refused,
    claim_items,
    skip_item,
    submit_judgment,
    undo_last_judgment,
)
from annotator.campaigns import add_gold_items, create_campaign, resume_annotator
from annotator.models import Assignment, Campaign, Item, Judgment, Membership
from tests.factories import make_dataset
from tests.users import make_user

pytestmark = pytest.mark.django_db


def _likert(annotators, k=2, **kw):
    dataset = make_dataset(prompts=("p1", "p2", "p3"), models=("a", "b"))
    return create_campaign(name="c", protocol="likert", datasets=[dataset], annotators=annotators, overlap_k=k, **kw)


def _rate(user, assignment, rating=3, **kw):
    return submit_judgment(annotator=user, item_id=assignment.item_id, idempotency_key=uuid.uuid4(), rating=rating, **kw)


def test_likert_campaign_has_one_item_per_face_with_k_wanted(annotator):
    campaign = _likert([annotator], k=3)
    assert campaign.items.count() == 6
    assert set(campaign.items.values_list("judgments_wanted", flat=True)) == {3}


def test_pairwise_campaign_pairs_faces_of_one_prompt_across_models(annotator):
    dataset = make_dataset(prompts=("p1", "p2"), models=("a", "b", "c"))
    campaign = create_campaign(name="pw", protocol="pairwise", datasets=[dataset], annotators=[annotator])
    items = list(campaign.items.select_related("left_face__generation", "right_face__generation"))
    assert len(items) == 2 * 3  # C(3, 2) model pairs per prompt
    for item in items:
        left, right = item.left_face.generation, item.right_face.generation
        assert left.prompt == right.prompt and left.model_name != right.model_name
    # left/right is randomised, not always in id order
    assert {item.left_face_id < item.right_face_id for item in items} == {True, False}


def test_claim_returns_held_leases_first_so_a_reload_shows_the_same_queue(annotator):
    campaign = _likert([annotator])
    first = claim_items(campaign=campaign, annotator=annotator, count=3).assignments
    again = claim_items(campaign=campaign, annotator=annotator, count=4).assignments
    assert [a.pk for a in again[:3]] == [a.pk for a in first]
    assert [a.display_index for a in again] == [0, 1, 2, 3]


def test_items_nearest_completion_go_first(annotator, annotator2):
    campaign = _likert([annotator, annotator2], k=2)
    (a1,) = claim_items(campaign=campaign, annotator=annotator).assignments
    _rate(annotator, a1)
    (a2,) = claim_items(campaign=campaign, annotator=annotator2).assignments
    assert a2.item_id == a1.item_id  # the half-done item before the untouched ones


def test_an_annotator_never_gets_the_same_item_twice(annotator):
    campaign = _likert([annotator], k=3)
    seen = []
    while result := claim_items(campaign=campaign, annotator=annotator).assignments:
        seen.append(result[0].item_id)
        if len(seen) % 2:
            _rate(annotator, result[0])
        else:
            skip_item(campaign=campaign, annotator=annotator, item_id=result[0].item_id)
    assert sorted(seen) == sorted(campaign.items.values_list("id", flat=True))


def test_live_leases_count_against_k_and_expired_leases_return_to_the_pool(annotator, annotator2):
    campaign = _likert([annotator, annotator2], k=1)
    mine = claim_items(campaign=campaign, annotator=annotator, count=6).assignments
    assert len(mine) == 6
    assert claim_items(campaign=campaign, annotator=annotator2).assignments == []
    later = timezone.now() + timedelta(seconds=campaign.lease_seconds + 1)
    theirs = claim_items(campaign=campaign, annotator=annotator2, count=6, now=later).assignments
    assert {a.item_id for a in theirs} == {a.item_id for a in mine}


def test_an_item_whose_lease_expired_unanswered_comes_back_to_the_same_annotator(annotator):
    campaign = _likert([annotator], k=1)
    first = claim_items(campaign=campaign, annotator=annotator, count=6).assignments
    later = timezone.now() + timedelta(seconds=campaign.lease_seconds + 1)
    again = claim_items(campaign=campaign, annotator=annotator, count=6, now=later).assignments
    assert sorted(a.item_id for a in again) == sorted(a.item_id for a in first)
    assert [a.display_index for a in again] == list(range(6, 12))  # shown anew, later in the sequence
    assert Assignment.objects.count() == 6  # renewed in place
    result = submit_judgment(annotator=annotator, item_id=again[0].item_id, idempotency_key=uuid.uuid4(), rating=4, now=later)
    assert result.created and result.judgment.display_index == 6


def test_late_submit_after_the_item_filled_up_is_refused_and_changes_nothing(annotator, annotator2):
    campaign = _likert([annotator, annotator2], k=1)
    (mine,) = claim_items(campaign=campaign, annotator=annotator).assignments
    later = timezone.now() + timedelta(seconds=campaign.lease_seconds + 1)
    theirs = claim_items(campaign=campaign, annotator=annotator2, count=6, now=later).assignments
    stolen = next(a for a in theirs if a.item_id == mine.item_id)
    _rate(annotator2, stolen)
    with pytest.raises(Refused, match="received all its judgments"):
        _rate(annotator, mine)
    assert Judgment.objects.filter(item_id=mine.item_id).count() == 1


def test_retried_submit_with_the_same_key_stores_one_judgment(annotator):
    campaign = _likert([annotator])
    (a,) = claim_items(campaign=campaign, annotator=annotator).assignments
    key = uuid.uuid4()
    first = submit_judgment(annotator=annotator, item_id=a.item_id, idempotency_key=key, rating=4, time_on_screen_ms=812)
    second = submit_judgment(annotator=annotator, item_id=a.item_id, idempotency_key=key, rating=4)
    assert first.created and not second.created
    assert second.judgment.pk == first.judgment.pk
    assert Judgment.objects.count() == 1
    stored = Judgment.objects.get()
    assert (stored.rating, stored.time_on_screen_ms, stored.display_index) == (4, 812, 0)
    assert Item.objects.get(pk=a.item_id).judgment_count == 1


def test_a_key_reused_for_another_item_is_refused(annotator):
    campaign = _likert([annotator])
    a, b = claim_items(campaign=campaign, annotator=annotator, count=2).assignments
    key = uuid.uuid4()
    submit_judgment(annotator=annotator, item_id=a.item_id, idempotency_key=key, rating=4)
    with pytest.raises(Refused, match="already used"):
        submit_judgment(annotator=annotator, item_id=b.item_id, idempotency_key=key, rating=4)


def test_second_judgment_of_one_item_under_a_new_key_is_refused(annotator):
    campaign = _likert([annotator])
    (a,) = claim_items(campaign=campaign, annotator=annotator).assignments
    _rate(annotator, a)
    with pytest.raises(Refused, match="already judged"):
        _rate(annotator, a)


def test_submit_without_a_lease_is_refused(annotator):
    campaign = _likert([annotator])
    item = campaign.items.first()
    with pytest.raises(Refused, match="not assigned"):
        submit_judgment(annotator=annotator, item_id=item.pk, idempotency_key=uuid.uuid4(), rating=3)


@pytest.mark.parametrize(
    "answer, message",
    [({"rating": 6}, "1 to 5"), ({"choice": "left"}, "1 to 5"), ({}, "exactly one"), ({"rating": 2, "flag": "broken"}, "exactly one")],
)
def test_invalid_answers_are_refused(annotator, answer, message):
    campaign = _likert([annotator])
    (a,) = claim_items(campaign=campaign, annotator=annotator).assignments
    with pytest.raises(Refused, match=message):
        submit_judgment(annotator=annotator, item_id=a.item_id, idempotency_key=uuid.uuid4(), **answer)
    assert Judgment.objects.count() == 0


def test_flag_is_stored_as_an_answer(annotator):
    campaign = _likert([annotator])
    (a,) = claim_items(campaign=campaign, annotator=annotator).assignments
    result = submit_judgment(annotator=annotator, item_id=a.item_id, idempotency_key=uuid.uuid4(), flag="broken")
    assert result.judgment.answer == "broken"


def test_undo_deletes_the_last_judgment_and_shows_the_item_again(annotator):
    campaign = _likert([annotator])
    (a,) = claim_items(campaign=campaign, annotator=annotator).assignments
    _rate(annotator, a)
    back = undo_last_judgment(campaign=campaign, annotator=annotator)
    assert back.pk == a.pk and back.status == Assignment.Status.ACTIVE
    assert Judgment.objects.count() == 0 and Item.objects.get(pk=a.item_id).judgment_count == 0
    assert claim_items(campaign=campaign, annotator=annotator).assignments[0].pk == a.pk
    _rate(annotator, a, rating=5)
    assert Judgment.objects.get().rating == 5


def test_undo_after_the_lease_expired_is_refused(annotator):
    campaign = _likert([annotator])
    (a,) = claim_items(campaign=campaign, annotator=annotator).assignments
    _rate(annotator, a)
    with pytest.raises(Refused, match="expired"):
        undo_last_judgment(campaign=campaign, annotator=annotator, now=a.expires_at + timedelta(seconds=1))
    assert Judgment.objects.count() == 1


def test_gold_items_are_mixed_in_at_the_configured_share(annotator):
    campaign = _likert([annotator], k=1, gold_share=0.25)
    faces = [item.face for item in campaign.items.all()[:2]]
    add_gold_items(campaign=campaign, answers={faces[0]: "5", faces[1]: "1"})
    served = []
    while result := claim_items(campaign=campaign, annotator=annotator).assignments:
        served.append(result[0].item.is_gold)
        _rate(annotator, result[0], rating=5 if result[0].item.gold_answer != "1" else 1)
    assert served[0] is True and served.count(True) == 2 and len(served) == 8
    assert served[1:4] == [False, False, False]


def test_annotator_failing_gold_is_paused_with_a_message_and_resumed_by_a_researcher(annotator):
    campaign = _likert([annotator], k=1, gold_share=1.0, pause_min_gold=2, pause_threshold=0.75, gold_tolerance=0)
    add_gold_items(campaign=campaign, answers={item.face: "5" for item in campaign.items.all()[:3]})
    for rating in (5, 1):
        (a,) = claim_items(campaign=campaign, annotator=annotator).assignments
        assert a.item.is_gold
        result = _rate(annotator, a, rating=rating)
    assert result.paused and "1 of 2" in result.message
    claimed = claim_items(campaign=campaign, annotator=annotator)
    assert claimed.paused and claimed.assignments == [] and "50%" in claimed.message
    resume_annotator(campaign=campaign, annotator=annotator)
    assert claim_items(campaign=campaign, annotator=annotator).assignments


def test_a_retried_gold_submit_still_reports_the_pause(annotator):
    campaign = _likert([annotator], k=1, gold_share=1.0, pause_min_gold=1, pause_threshold=1.0, gold_tolerance=0)
    add_gold_items(campaign=campaign, answers={campaign.items.first().face: "5"})
    (a,) = claim_items(campaign=campaign, annotator=annotator).assignments
    key = uuid.uuid4()
    first = submit_judgment(annotator=annotator, item_id=a.item_id, idempotency_key=key, rating=1)
    retry = submit_judgment(annotator=annotator, item_id=a.item_id, idempotency_key=key, rating=1)
    assert first.paused and retry.paused and not retry.created
    assert retry.message == first.message


def test_finished_campaign_serves_nothing(annotator):
    campaign = _likert([annotator])
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.FINISHED)
    campaign.refresh_from_db()
    result = claim_items(campaign=campaign, annotator=annotator)
    assert result.assignments == [] and "finished" in result.message


def test_non_member_cannot_claim(annotator, annotator2):
    campaign = _likert([annotator])
    with pytest.raises(Refused) as err:
        claim_items(campaign=campaign, annotator=annotator2)
    assert err.value.status == 404


def test_database_refuses_more_than_k_judgments_even_past_the_engine(annotator):
    campaign = _likert([annotator], k=1)
    item = campaign.items.first()
    with pytest.raises(IntegrityError), transaction.atomic():
        Item.objects.filter(pk=item.pk).update(judgment_count=2)


def test_only_annotators_can_join_a_campaign(annotator):
    researcher = make_user("r", "researcher")
    with pytest.raises(Refused, match="Not annotators: r"):
        _likert([researcher])
    assert not Membership.objects.exists()
