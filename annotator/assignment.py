"""The assignment engine: claiming items, submitting, skipping and undoing judgments.

Claiming the next item for an annotator, in one transaction:
1. Lock the annotator's ``Membership`` row: one annotator's claims never interleave, and a paused
   annotator gets nothing.
2. Return the leases they already hold (a reload shows the same queue), then top up to ``count``:
3. Decide gold or regular: a gold item is due while gold served < gold share × items served.
4. Pick a candidate the annotator has not answered, skipped or still holds, with room left
   (judgments + live leases < k), nearest completion first; lock it with
   ``select_for_update(skip_locked=True)`` so concurrent claimers take different rows, then
   recount its live leases under the lock (a lease is only ever created while its item row is
   locked, so the recount is exact) and move on if it filled up meanwhile.
5. Create the ``Assignment`` (lease) with an expiry; expired leases simply stop counting.

Submitting locks the item row, checks the lease, the cap and the idempotency key, then stores the
judgment and bumps ``Item.judgment_count``, which a CHECK constraint keeps ``<= k``.

On SQLite ``select_for_update`` is a no-op, but every transaction begins IMMEDIATE (see settings),
so all of this runs one writer at a time and stays correct.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotator.models import Assignment, Campaign, Item, Judgment, Membership

logger = logging.getLogger(__name__)

# How many locked-but-full candidates to step over before giving up on one claim.
MAX_CANDIDATES_PER_CLAIM = 50
MAX_CLAIM_COUNT = 8


class Refused(Exception):
    """A request the engine will not carry out; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class ClaimResult:
    assignments: list[Assignment] = field(default_factory=list)
    paused: bool = False
    message: str = ""


@dataclass
class SubmitResult:
    judgment: Judgment
    created: bool
    paused: bool = False
    message: str = ""


def _locked(qs: QuerySet, *, skip_locked: bool = False) -> QuerySet:
    if connection.features.has_select_for_update:
        if skip_locked and connection.features.has_select_for_update_skip_locked:
            return qs.select_for_update(skip_locked=True, of=("self",))
        return qs.select_for_update(of=("self",)) if connection.features.has_select_for_update_of else qs.select_for_update()
    return qs


def _live_leases(now: datetime) -> Q:
    return Q(status=Assignment.Status.ACTIVE, expires_at__gt=now)


def _membership_for_update(campaign: Campaign, annotator: User) -> Membership:
    try:
        return _locked(Membership.objects.filter(campaign=campaign, annotator=annotator)).get()
    except Membership.DoesNotExist:
        raise Refused("You are not an annotator of this campaign.", status=404) from None


def _pause_message(membership: Membership) -> str:
    return membership.pause_reason or "You are paused in this campaign. A researcher will review your work."


def claim_items(
    *, campaign: Campaign, annotator: User, count: int = 1, now: datetime | None = None
) -> ClaimResult:
    """Leases for up to ``count`` items, in the order the annotator should see them."""
    now = now or timezone.now()
    count = max(1, min(count, MAX_CLAIM_COUNT))
    with transaction.atomic():
        membership = _membership_for_update(campaign, annotator)
        if membership.is_paused:
            return ClaimResult(paused=True, message=_pause_message(membership))
        if campaign.status != Campaign.Status.ACTIVE:
            return ClaimResult(message=f"This campaign is {campaign.status}; there is nothing to annotate.")
        held = list(
            Assignment.objects.filter(annotator=annotator, item__campaign=campaign)
            .filter(_live_leases(now))
            .select_related("item")
            .order_by("display_index")[:count]
        )
        while len(held) < count:
            assignment = _claim_one(campaign, membership, now)
            if assignment is None:
                break
            held.append(assignment)
    message = "" if held else "No more items for you in this campaign. Thank you!"
    return ClaimResult(assignments=held, message=message)


def _claim_one(campaign: Campaign, membership: Membership, now: datetime) -> Assignment | None:
    gold_due = campaign.gold_share > 0 and membership.gold_served < campaign.gold_share * (membership.items_served + 1)
    # Gold first when due (falling back to regular items); never a stream of gold items alone,
    # which would tell the annotator which items are the checks.
    for is_gold in (True, False) if gold_due else (False,):
        item = _lock_candidate(campaign, membership, is_gold=is_gold, now=now)
        if item is not None:
            # A lease of this annotator's that expired unanswered is renewed in place (one row per
            # item and annotator, ever), at a new position in their sequence.
            assignment, _ = Assignment.objects.update_or_create(
                item=item,
                annotator_id=membership.annotator_id,
                defaults={
                    "status": Assignment.Status.ACTIVE,
                    "display_index": membership.items_served,
                    "created_at": now,
                    "expires_at": now + timedelta(seconds=campaign.lease_seconds),
                },
            )
            Membership.objects.filter(pk=membership.pk).update(
                items_served=F("items_served") + 1, gold_served=F("gold_served") + int(is_gold)
            )
            membership.items_served += 1
            membership.gold_served += int(is_gold)
            return assignment
    return None


def _lock_candidate(campaign: Campaign, membership: Membership, *, is_gold: bool, now: datetime) -> Item | None:
    live_leases = (
        Assignment.objects.filter(item=OuterRef("pk"))
        .filter(_live_leases(now))
        .values("item")
        .annotate(n=Count("id"))
        .values("n")
    )
    # Never an item this annotator answered, skipped or holds now; one whose lease expired
    # unanswered may come back to them like to anyone else.
    not_again = (
        Assignment.objects.filter(annotator_id=membership.annotator_id, item__campaign=campaign)
        .exclude(status=Assignment.Status.ACTIVE, expires_at__lte=now)
        .values("item_id")
    )
    candidates = Item.objects.filter(campaign=campaign, is_gold=is_gold).exclude(pk__in=not_again)
    if is_gold:
        candidates = candidates.order_by("judgment_count", "id")
    else:
        candidates = (
            candidates.annotate(leases=Coalesce(Subquery(live_leases), Value(0)))
            .filter(judgment_count__lt=F("judgments_wanted") - F("leases"))
            .order_by("-judgment_count", "id")  # nearest completion first
        )
    skipped: list[int] = []
    for _ in range(MAX_CANDIDATES_PER_CLAIM):
        item = _locked(candidates.exclude(pk__in=skipped), skip_locked=True).first()
        if item is None:
            return None
        if is_gold:
            return item
        leases = Assignment.objects.filter(item=item).filter(_live_leases(now)).count()
        if item.judgments_wanted is not None and item.judgment_count + leases < item.judgments_wanted:
            return item
        skipped.append(item.pk)
    return None


def _gold_correct(item: Item, judgment: Judgment, tolerance: int) -> bool:
    expected = item.gold_answer
    if judgment.rating is not None:
        try:
            return abs(judgment.rating - int(expected)) <= tolerance
        except ValueError:
            return False
    return judgment.answer == expected


def _answer_fields(protocol: str, *, rating: int | None, choice: str, flag: str) -> dict[str, object]:
    given = [name for name, value in (("rating", rating), ("choice", choice), ("flag", flag)) if value not in (None, "")]
    if len(given) != 1:
        raise Refused("Give exactly one of rating, choice or flag.", status=400)
    if flag:
        if flag not in Judgment.Flag.values:
            raise Refused(f"Unknown flag {flag!r}; use one of {', '.join(Judgment.Flag.values)}.", status=400)
        return {"flag": flag}
    if protocol == Campaign.Protocol.LIKERT:
        if rating is None or not 1 <= rating <= 5:
            raise Refused("This campaign asks for a rating from 1 to 5.", status=400)
        return {"rating": rating}
    if choice not in Judgment.Choice.values:
        raise Refused(f"This campaign asks for a choice: one of {', '.join(Judgment.Choice.values)}.", status=400)
    return {"choice": choice}


def _existing_for_key(key: uuid.UUID, annotator: User, item_id: int) -> Judgment | None:
    existing = Judgment.objects.filter(idempotency_key=key).first()
    if existing is None:
        return None
    if existing.annotator_id != annotator.pk or existing.item_id != item_id:
        raise Refused("This idempotency key was already used for another judgment.", status=409)
    return existing


def submit_judgment(
    *,
    annotator: User,
    item_id: int,
    idempotency_key: uuid.UUID,
    rating: int | None = None,
    choice: str = "",
    flag: str = "",
    time_on_screen_ms: int = 0,
    now: datetime | None = None,
) -> SubmitResult:
    """Store one judgment exactly once. A retry with the same key returns the stored judgment."""
    now = now or timezone.now()
    existing = _existing_for_key(idempotency_key, annotator, item_id)
    if existing is not None:
        return _replayed(existing)
    try:
        with transaction.atomic():
            return _submit_locked(
                annotator=annotator,
                item_id=item_id,
                idempotency_key=idempotency_key,
                rating=rating,
                choice=choice,
                flag=flag,
                time_on_screen_ms=time_on_screen_ms,
                now=now,
            )
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its judgment.
        existing = _existing_for_key(idempotency_key, annotator, item_id)
        if existing is None:
            raise
        return _replayed(existing)


def _replayed(judgment: Judgment) -> SubmitResult:
    """The answer to a retried submit: the stored judgment, and the pause state as it is now, so
    a client whose first acknowledgement was lost still learns that this answer paused it."""
    membership = Membership.objects.filter(campaign__items=judgment.item_id, annotator_id=judgment.annotator_id).first()
    if membership is None or not membership.is_paused:
        return SubmitResult(judgment=judgment, created=False)
    return SubmitResult(judgment=judgment, created=False, paused=True, message=_pause_message(membership))


def _submit_locked(
    *,
    annotator: User,
    item_id: int,
    idempotency_key: uuid.UUID,
    rating: int | None,
    choice: str,
    flag: str,
    time_on_screen_ms: int,
    now: datetime,
) -> SubmitResult:
    item = _locked(Item.objects.filter(pk=item_id).select_related("campaign")).first()
    if item is None:
        raise Refused("No such item.", status=404)
    campaign = item.campaign
    answer = _answer_fields(campaign.protocol, rating=rating, choice=choice, flag=flag)
    assignment = _locked(Assignment.objects.filter(item=item, annotator=annotator)).first()
    if assignment is None:
        raise Refused("This item was not assigned to you.", status=409)
    if assignment.status == Assignment.Status.SUBMITTED:
        # A retry that raced its original here (both passed the unlocked key check) gets the
        # stored judgment; a second answer under a new key is refused.
        existing = _existing_for_key(idempotency_key, annotator, item_id)
        if existing is not None:
            return _replayed(existing)
        raise Refused("You already judged this item.", status=409)
    if assignment.status == Assignment.Status.SKIPPED:
        raise Refused("You skipped this item; it cannot be judged any more.", status=409)
    membership = _membership_for_update(campaign, annotator)
    if membership.is_paused:
        raise Refused(_pause_message(membership), status=403)
    if campaign.status != Campaign.Status.ACTIVE:
        raise Refused(f"This campaign is {campaign.status}; judgments are closed.", status=409)
    if item.is_complete():
        raise Refused(
            "Your lease on this item expired and it has since received all its judgments; "
            "this answer was not stored.",
            status=409,
        )
    judgment = Judgment(
        item=item,
        annotator=annotator,
        assignment=assignment,
        shown_left_face_id=item.left_face_id,
        display_index=assignment.display_index,
        time_on_screen_ms=max(0, int(time_on_screen_ms)),
        idempotency_key=idempotency_key,
        **answer,
    )
    if item.is_gold:
        judgment.gold_correct = _gold_correct(item, judgment, campaign.gold_tolerance)
    judgment.save()
    Item.objects.filter(pk=item.pk).update(judgment_count=F("judgment_count") + 1)
    Assignment.objects.filter(pk=assignment.pk).update(status=Assignment.Status.SUBMITTED)
    paused = False
    if item.is_gold:
        paused = _record_gold(membership, campaign, correct=bool(judgment.gold_correct), now=now)
    return SubmitResult(
        judgment=judgment, created=True, paused=paused, message=_pause_message(membership) if paused else ""
    )


def _record_gold(membership: Membership, campaign: Campaign, *, correct: bool, now: datetime) -> bool:
    membership.gold_judged += 1
    membership.gold_correct += int(correct)
    accuracy = membership.gold_correct / membership.gold_judged
    fields = ["gold_judged", "gold_correct"]
    if membership.gold_judged >= campaign.pause_min_gold and accuracy < campaign.pause_threshold:
        membership.paused_at = now
        membership.pause_reason = (
            f"You are paused: your answers agreed with the check items {membership.gold_correct} of "
            f"{membership.gold_judged} times ({accuracy:.0%}), under this campaign's "
            f"{campaign.pause_threshold:.0%} threshold. A researcher will review your work and can resume you."
        )
        fields += ["paused_at", "pause_reason"]
    membership.save(update_fields=fields)
    return membership.is_paused


def skip_item(*, campaign: Campaign, annotator: User, item_id: int) -> None:
    """Give an item back; this annotator will not be served it again. Idempotent."""
    with transaction.atomic():
        updated = Assignment.objects.filter(
            item_id=item_id, item__campaign=campaign, annotator=annotator, status=Assignment.Status.ACTIVE
        ).update(status=Assignment.Status.SKIPPED)
        if not updated and not Assignment.objects.filter(
            item_id=item_id, item__campaign=campaign, annotator=annotator
        ).exists():
            raise Refused("This item was not assigned to you.", status=409)


def undo_last_judgment(*, campaign: Campaign, annotator: User, now: datetime | None = None) -> Assignment:
    """Delete the annotator's last judgment in the campaign while its lease still holds.

    The item's lease becomes active again, so the item is shown again with the same position.
    """
    now = now or timezone.now()
    with transaction.atomic():
        last = (
            Judgment.objects.filter(item__campaign=campaign, annotator=annotator).order_by("-created_at", "-id").first()
        )
        if last is None:
            raise Refused("Nothing to undo.")
        item = _locked(Item.objects.filter(pk=last.item_id)).get()
        assignment = _locked(Assignment.objects.filter(pk=last.assignment_id)).get()
        if not assignment.lease_holds(now):
            raise Refused("Too late to undo: the lease on that item has expired.")
        membership = _membership_for_update(campaign, annotator)
        if item.is_gold:
            Membership.objects.filter(pk=membership.pk).update(
                gold_judged=F("gold_judged") - 1, gold_correct=F("gold_correct") - int(bool(last.gold_correct))
            )
        last.delete()
        Item.objects.filter(pk=item.pk).update(judgment_count=F("judgment_count") - 1)
        assignment.status = Assignment.Status.ACTIVE
        assignment.save(update_fields=["status"])
    return assignment
