"""The assignment engine: claiming items, submitting, skipping and undoing judgments.

Claiming and submitting are the annotation hot path (every screen does one of each), so they are
a few hand-written SQL statements rather than ORM chains, prepared once per connection on
PostgreSQL (see ``Statements``); the rules are the same on both databases, and only PostgreSQL's
row-lock clauses and its data-modifying CTEs (one statement where SQLite takes two to four)
differ.

Claiming the next items for an annotator, in one transaction:
1. Lock the annotator's ``Membership`` row (with the campaign's settings): one annotator's claims
   never interleave, and a paused annotator gets nothing.
2. In the next statement (whose snapshot sees everything committed before the lock was granted),
   read the leases they already hold (a reload shows the same queue) and, if those are fewer
   than ``count``, lock the first candidate:
3. gold or regular: a gold item is due while gold served < gold share × items served;
4. an item the annotator has not answered, skipped or still holds, with room left (judgments +
   live leases < k), nearest completion first, locked with ``FOR UPDATE SKIP LOCKED`` so
   concurrent claimers take different rows.
5. Create (or renew, if their own lease of it expired unanswered) the ``Assignment`` in a new
   statement that recounts the item's live leases, bumping the membership's served counters with
   it: a new statement sees every lease committed before it, and a lease is only ever created
   while its item row is locked, so the recount is exact. If the item filled up meanwhile, step
   over it and lock the next candidate; repeat until ``count`` leases are held.

Submitting, in one transaction: one statement locks the item, the lease and the membership (in
that order, like undo) and reads the campaign and any judgment already stored under the
idempotency key; the rules are checked in Python on that row; one more statement stores the
judgment (``ON CONFLICT DO NOTHING``) and, only if it was stored, bumps ``Item.judgment_count``
(which a CHECK constraint keeps ``<= k``), closes the lease and records a gold answer. On
PostgreSQL the common case (a regular item, everything in order) is first tried as a single
statement that locks, checks and stores at once (``_submit_at_once``); when it stores nothing,
the transaction above decides why.

On SQLite ``FOR UPDATE`` does not exist, but every transaction begins IMMEDIATE (see settings),
so all of this runs one writer at a time and stays correct.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from annotator.models import Assignment, Campaign, Item, Judgment, Membership

logger = logging.getLogger(__name__)

# How many locked-but-full candidates to step over before giving up on one claim.
MAX_CANDIDATES_PER_CLAIM = 50
MAX_CLAIM_COUNT = 8

ACTIVE, SUBMITTED, SKIPPED = (
    Assignment.Status.ACTIVE,
    Assignment.Status.SUBMITTED,
    Assignment.Status.SKIPPED,
)

_ITEM = Item._meta.db_table
_ASSIGNMENT = Assignment._meta.db_table
_MEMBERSHIP = Membership._meta.db_table
_CAMPAIGN = Campaign._meta.db_table
_JUDGMENT = Judgment._meta.db_table

# Every Item column, so claimed items come back as whole model instances.
_ITEM_FIELDS = [f.attname for f in Item._meta.concrete_fields]
_ITEM_COLUMNS = ", ".join(f"i.{name}" for name in _ITEM_FIELDS)
_IS_GOLD, _JUDGMENTS_WANTED, _SCREEN, _CREATED_AT = (
    _ITEM_FIELDS.index(name) for name in ("is_gold", "judgments_wanted", "screen", "created_at")
)


class Refused(Exception):
    """A request the engine will not carry out; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Lease:
    """A live lease as a claim read or made it: the assignment's columns and its item's row
    (values in ``_ITEM_FIELDS`` order). The hot path answers from these; model instances are
    built only for callers that ask for them."""

    assignment_id: int
    annotator_id: int
    display_index: int
    created_at: datetime
    expires_at: datetime
    item: list[Any]

    @property
    def item_id(self) -> int:
        return int(self.item[0])

    @property
    def screen(self) -> list[dict[str, Any]]:
        return list(self.item[_SCREEN])

    def assignment(self) -> Assignment:
        """The lease as an ``Assignment`` with its ``Item``, both complete (nothing deferred)."""
        values = [
            self.assignment_id, self.item_id, self.annotator_id, ACTIVE,
            self.display_index, self.created_at, self.expires_at,
        ]  # fmt: skip
        assignment = Assignment.from_db(DEFAULT_DB_ALIAS, _ASSIGNMENT_FIELDS, values)
        assignment.item = Item.from_db(DEFAULT_DB_ALIAS, _ITEM_FIELDS, list(self.item))
        return assignment


@dataclass(frozen=True, slots=True)
class AnnotatorQuery:
    """An annotator the caller has not identified yet, as SQL that yields their user id (or no
    row): the hot path hands over its credential check this way, and the engine's first statement
    runs it as a subquery, which saves a round trip per request. When it yields nothing, the
    engine raises ``Unidentified`` before anything is written, and the caller identifies the
    annotator the slow way (with the reason when there is none) and calls again with the id."""

    sql: str
    params: tuple[Any, ...]


class Unidentified(Exception):
    """An ``AnnotatorQuery`` found no annotator, or the request needs one identified first."""


def _who(annotator: int | AnnotatorQuery) -> tuple[str, list[Any]]:
    """The annotator's id in a statement: a parameter, or the caller's subquery."""
    if isinstance(annotator, AnnotatorQuery):
        return f"({annotator.sql})", list(annotator.params)
    return "%s", [annotator]


@dataclass
class ClaimResult:
    leases: list[Lease] = field(default_factory=list)
    paused: bool = False
    message: str = ""
    protocol: str = ""

    @property
    def assignments(self) -> list[Assignment]:
        """The leases as model instances, in the order the annotator should see them."""
        return [lease.assignment() for lease in self.leases]


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
        return (
            qs.select_for_update(of=("self",))
            if connection.features.has_select_for_update_of
            else qs.select_for_update()
        )
    return qs


def _py_datetime(value: Any) -> datetime:
    """A timestamp read by a raw cursor: aware already on PostgreSQL, UTC text on SQLite."""
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value, UTC)
    parsed = parse_datetime(value)
    assert parsed is not None, value
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


class Statements:
    """One cursor for a run of the hot path's hand-written statements (``%s`` placeholders), on
    the two databases FaceBench runs on, with what differs between them looked up once.

    On PostgreSQL it is a psycopg cursor with server-side parameters, whose statements are
    prepared once per connection (when the ``prepare_threshold`` database option allows it, see
    settings): with persistent connections the planner then runs once per statement, where
    Django's client-side binding plans every query anew, and planning costs PostgreSQL more than
    running these statements does.
    """

    def __init__(self, cursor: Any, wrapper: BaseDatabaseWrapper) -> None:
        self.cursor = cursor
        self.wrapper = wrapper
        self.alias = wrapper.alias
        self.postgres = wrapper.vendor == "postgresql"
        self.options = {"prepare": True} if self.postgres else {}

    def run(self, sql: str, params: Sequence[Any]) -> None:
        self.cursor.execute(sql, params, **self.options)

    def one(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        self.cursor.execute(sql, params, **self.options)
        return self.cursor.fetchone()

    def all(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self.cursor.execute(sql, params, **self.options)
        return self.cursor.fetchall()

    def lock(self, aliases: str, *, skip_locked: bool = False) -> str:
        """The row-lock clause; nothing on SQLite, where the whole transaction holds the write
        lock from BEGIN IMMEDIATE."""
        if not self.postgres:
            return ""
        return f" FOR UPDATE OF {aliases}" + (" SKIP LOCKED" if skip_locked else "")

    def when(self, value: datetime) -> Any:
        """A timestamp parameter (UTC text on SQLite)."""
        return value if self.postgres else self.wrapper.ops.adapt_datetimefield_value(value)

    def key(self, value: uuid.UUID) -> Any:
        """An idempotency-key parameter (32 hex digits on SQLite)."""
        return _KEY_FIELD.get_db_prep_value(value, self.wrapper)


_KEY_FIELD = Judgment._meta.get_field("idempotency_key")


@contextmanager
def statements() -> Iterator[Statements]:
    wrapper = connections[DEFAULT_DB_ALIAS]
    if wrapper.vendor != "postgresql":
        with wrapper.cursor() as cursor:
            yield Statements(cursor, wrapper)
        return
    import psycopg

    # What Django's own cursor() does first: the once-per-request health check (CONN_HEALTH_CHECKS)
    # of a persistent connection, then connect.
    wrapper.close_if_health_check_failed()
    wrapper.ensure_connection()
    with wrapper.wrap_database_errors, psycopg.Cursor(wrapper.connection) as cursor:
        yield Statements(cursor, wrapper)


def _item_row(values: Sequence[Any]) -> list[Any]:
    """The ``_ITEM_COLUMNS`` of a raw row as the values of an Item's fields."""
    row = list(values)
    row[_IS_GOLD] = bool(row[_IS_GOLD])  # 0/1 on SQLite
    if isinstance(row[_SCREEN], str):
        row[_SCREEN] = json.loads(row[_SCREEN])  # JSON text from either backend's raw cursor
    row[_CREATED_AT] = _py_datetime(row[_CREATED_AT])
    return row


def _membership_for_update(campaign: Campaign, annotator: User) -> Membership:
    try:
        return _locked(Membership.objects.filter(campaign=campaign, annotator=annotator)).get()
    except Membership.DoesNotExist:
        raise Refused("You are not an annotator of this campaign.", status=404) from None


def _pause_message(reason: str) -> str:
    return reason or "You are paused in this campaign. A researcher will review your work."


# --- Claiming --------------------------------------------------------------------------------


def claim_items(
    *, campaign: Campaign, annotator: User, count: int = 1, now: datetime | None = None
) -> ClaimResult:
    """Leases for up to ``count`` items, in the order the annotator should see them."""
    return claim(campaign_id=campaign.pk, annotator_id=annotator.pk, count=count, now=now)


def claim(
    *,
    campaign_id: int,
    annotator_id: int | AnnotatorQuery,
    count: int = 1,
    now: datetime | None = None,
) -> ClaimResult:
    """``claim_items`` by ids, for callers (the hot-path views) that have no model instances."""
    now = now or timezone.now()
    count = max(1, min(count, MAX_CLAIM_COUNT))
    who, who_params = _who(annotator_id)
    with transaction.atomic(), statements() as db:
        row = db.one(
            f"SELECT m.annotator_id, m.id, m.items_served, m.gold_served, m.paused_at, m.pause_reason,"
            f" c.status, c.protocol, c.overlap_k, c.gold_share, c.lease_seconds"
            f" FROM {_MEMBERSHIP} m JOIN {_CAMPAIGN} c ON c.id = m.campaign_id"
            f" WHERE m.campaign_id = %s AND m.annotator_id = {who}" + db.lock("m"),
            (campaign_id, *who_params),
        )
        if row is None:
            if isinstance(annotator_id, AnnotatorQuery):
                raise Unidentified
            raise Refused("You are not an annotator of this campaign.", status=404)
        (
            member_id,
            membership_id,
            items_served,
            gold_served,
            paused_at,
            pause_reason,
            status,
            protocol,
            k,
            gold_share,
            lease_s,
        ) = row
        if paused_at is not None:
            return ClaimResult(paused=True, message=_pause_message(pause_reason), protocol=protocol)
        if status != Campaign.Status.ACTIVE:
            return ClaimResult(
                message=f"This campaign is {status}; there is nothing to annotate.",
                protocol=protocol,
            )
        claimer = _Claimer(
            db,
            campaign_id,
            member_id,
            membership_id,
            items_served,
            gold_served,
            k,
            gold_share,
            lease_s,
            now,
        )
        held, prefetched = claimer.queue(count)
        while len(held) < count:
            lease = claimer.claim_one(prefetched)
            prefetched = None
            if lease is None:
                break
            held.append(lease)
    message = "" if held else "No more items for you in this campaign. Thank you!"
    return ClaimResult(leases=held, message=message, protocol=protocol)


# The lease status as a literal, not a parameter: PostgreSQL can then use the partial index on
# active leases (``assignment_held_leases``) in the generic plan of a prepared statement, which it
# cannot prove a parameter matches (the claim statement was otherwise planned afresh every time).
_ACTIVE = f"'{ACTIVE.value}'"
assert ACTIVE.value.isidentifier()

# Live leases of item ``i``; expired leases simply stop counting.
_LIVE_LEASES = f"(SELECT COUNT(*) FROM {_ASSIGNMENT} l WHERE l.item_id = i.id AND l.status = {_ACTIVE} AND l.expires_at > %s)"

# (kind, item row) of a candidate locked ahead: the row is None when there was none of that kind.
Prefetched = tuple[bool, list[Any] | None]


@dataclass
class _Claimer:
    """One claim transaction: its statements and the membership row it has locked."""

    db: Statements
    campaign_id: int
    annotator_id: int
    membership_id: int
    items_served: int
    gold_served: int
    overlap_k: int
    gold_share: float
    lease_seconds: int
    now: datetime

    def gold_due(self) -> bool:
        return self.gold_share > 0 and self.gold_served < self.gold_share * (self.items_served + 1)

    def queue(self, count: int) -> tuple[list[Lease], Prefetched | None]:
        """The live leases held (up to ``count``) and, if they are fewer, the first candidate,
        locked: one statement for what a steady ``next`` needs before its insert."""
        now = self.db.when(self.now)
        kind = self.gold_due()
        candidate, candidate_params = self._candidate_sql(
            is_gold=kind,
            skipped=(),
            limit="(SELECT CASE WHEN COUNT(*) < %s THEN 1 ELSE 0 END FROM held)",
        )
        rows = self.db.all(
            f"WITH held AS (SELECT a.id, a.display_index, a.created_at, a.expires_at, {_ITEM_COLUMNS}"
            f" FROM {_ASSIGNMENT} a JOIN {_ITEM} i ON i.id = a.item_id"
            f" WHERE a.annotator_id = %s AND i.campaign_id = %s AND a.status = {_ACTIVE} AND a.expires_at > %s"
            f" ORDER BY a.display_index LIMIT %s), candidate AS ({candidate})"
            f" SELECT * FROM held UNION ALL SELECT NULL, NULL, NULL, NULL, * FROM candidate",
            [self.annotator_id, self.campaign_id, now, count, *candidate_params, count],
        )
        held = [
            Lease(
                row[0],
                self.annotator_id,
                row[1],
                _py_datetime(row[2]),
                _py_datetime(row[3]),
                _item_row(row[4:]),
            )
            for row in rows
            if row[0] is not None
        ]
        held.sort(key=lambda lease: lease.display_index)
        if len(held) >= count:
            return held, None
        found = [_item_row(row[4:]) for row in rows if row[0] is None]
        return held, (kind, found[0] if found else None)

    def claim_one(self, prefetched: Prefetched | None) -> Lease | None:
        # Gold first when due (falling back to regular items); never a stream of gold items alone,
        # which would tell the annotator which items are the checks.
        for is_gold in (True, False) if self.gold_due() else (False,):
            skipped: list[int] = []
            if prefetched is not None and prefetched[0] == is_gold:
                item = prefetched[1]
            else:
                item = self._lock_candidate(is_gold=is_gold, skipped=skipped)
            prefetched = None
            for _ in range(MAX_CANDIDATES_PER_CLAIM):
                if item is None:
                    break
                lease = self._insert_lease(item)
                if lease is not None:
                    self.items_served += 1
                    self.gold_served += int(is_gold)
                    return lease
                skipped.append(item[0])  # it filled up since the candidate query's snapshot
                item = self._lock_candidate(is_gold=is_gold, skipped=skipped)
        return None

    def _candidate_sql(
        self, *, is_gold: bool, skipped: Sequence[int], limit: str
    ) -> tuple[str, list[Any]]:
        now = self.db.when(self.now)
        # Never an item this annotator answered, skipped or holds now; one whose lease expired
        # unanswered may come back to them like to anyone else.
        not_again = (
            f"NOT EXISTS (SELECT 1 FROM {_ASSIGNMENT} a WHERE a.item_id = i.id AND a.annotator_id = %s"
            f" AND (a.status <> {_ACTIVE} OR a.expires_at > %s))"
        )
        params: list[Any] = [self.campaign_id, is_gold, self.annotator_id, now]
        if is_gold:
            # Gold items have no k: every annotator may see each once; least-seen first.
            room, order = "", "i.judgment_count, i.id"
        else:
            # Items are made with judgments_wanted = the campaign's k, so complete items sit at the
            # top of the claim-order index: the first bound lets the scan start below them.
            room = f" AND i.judgment_count < %s AND i.judgment_count + {_LIVE_LEASES} < i.judgments_wanted"
            order = "i.judgment_count DESC, i.id"  # nearest completion first
            params += [self.overlap_k, now]
        stepped_over = f" AND i.id NOT IN ({', '.join(['%s'] * len(skipped))})" if skipped else ""
        sql = (
            f"SELECT {_ITEM_COLUMNS} FROM {_ITEM} i WHERE i.campaign_id = %s AND i.is_gold = %s AND {not_again}"
            f"{room}{stepped_over} ORDER BY {order} LIMIT {limit}"
            + self.db.lock("i", skip_locked=True)
        )
        return sql, [*params, *skipped]

    def _lock_candidate(self, *, is_gold: bool, skipped: Sequence[int]) -> list[Any] | None:
        sql, params = self._candidate_sql(is_gold=is_gold, skipped=skipped, limit="1")
        row = self.db.one(sql, params)
        return None if row is None else _item_row(row)

    def _insert_lease(self, item: list[Any]) -> Lease | None:
        """The lease, unless the item filled up since the candidate query's snapshot (this new
        statement sees every lease committed before it), with the membership's counters bumped.

        A lease of this annotator's that expired unanswered is renewed in place (one row per item
        and annotator, ever), at a new position in their sequence.
        """
        expires_at = self.now + timedelta(seconds=self.lease_seconds)
        insert = (
            f"INSERT INTO {_ASSIGNMENT} (item_id, annotator_id, status, display_index, created_at, expires_at)"
            f" SELECT %s, %s, %s, %s, %s, %s"
            f" WHERE %s OR (SELECT judgment_count + {_LIVE_LEASES} FROM {_ITEM} i WHERE i.id = %s) < %s"
            f" ON CONFLICT (item_id, annotator_id) DO UPDATE SET status = excluded.status,"
            f" display_index = excluded.display_index, created_at = excluded.created_at, expires_at = excluded.expires_at"
            f" RETURNING id"
        )
        now = self.db.when(self.now)
        item_id, is_gold, wanted = item[0], item[_IS_GOLD], item[_JUDGMENTS_WANTED]
        insert_params = [
            item_id, self.annotator_id, ACTIVE, self.items_served, now, self.db.when(expires_at),
            is_gold, now, item_id, wanted or 0,
        ]  # fmt: skip
        serve = f"UPDATE {_MEMBERSHIP} SET items_served = items_served + 1, gold_served = gold_served + %s WHERE id = %s"
        serve_params = [int(is_gold), self.membership_id]
        if self.db.postgres:  # one round trip
            row = self.db.one(
                f"WITH lease AS ({insert}), served AS ({serve} AND EXISTS (SELECT 1 FROM lease)) SELECT id FROM lease",
                [*insert_params, *serve_params],
            )
        else:
            row = self.db.one(insert, insert_params)
            if row is not None:
                self.db.run(serve, serve_params)
        if row is None:
            return None
        return Lease(row[0], self.annotator_id, self.items_served, self.now, expires_at, item)


_ASSIGNMENT_FIELDS = [f.attname for f in Assignment._meta.concrete_fields]
assert _ASSIGNMENT_FIELDS == [
    "id",
    "item_id",
    "annotator_id",
    "status",
    "display_index",
    "created_at",
    "expires_at",
]


# --- Submitting ------------------------------------------------------------------------------


def _gold_correct(gold_answer: str, *, rating: int | None, answer: str, tolerance: int) -> bool:
    if rating is not None:
        try:
            return abs(rating - int(gold_answer)) <= tolerance
        except ValueError:
            return False
    return answer == gold_answer


def _answer_fields(*, rating: int | None, choice: str, flag: str) -> dict[str, Any]:
    """The one answer given, checked as far as it can be without knowing the campaign."""
    given = [
        name
        for name, value in (("rating", rating), ("choice", choice), ("flag", flag))
        if value not in (None, "")
    ]
    if len(given) != 1:
        raise Refused("Give exactly one of rating, choice or flag.", status=400)
    if flag and flag not in Judgment.Flag.values:
        raise Refused(
            f"Unknown flag {flag!r}; use one of {', '.join(Judgment.Flag.values)}.", status=400
        )
    return {"rating": rating, "choice": choice or "", "flag": flag or ""}


def _check_answer_fits(protocol: str, answer: dict[str, Any]) -> None:
    if answer["flag"]:
        return
    if protocol == Campaign.Protocol.LIKERT:
        rating = answer["rating"]
        if rating is None or not 1 <= rating <= 5:
            raise Refused("This campaign asks for a rating from 1 to 5.", status=400)
    elif answer["choice"] not in Judgment.Choice.values:
        raise Refused(
            f"This campaign asks for a choice: one of {', '.join(Judgment.Choice.values)}.",
            status=400,
        )


def _stored_judgment(judgment_id: int, annotator_id: int, item_id: int) -> Judgment:
    """The judgment a retried key refers to, as far as the acknowledgement needs it (the rest
    loads on access)."""
    return Judgment.from_db(
        connection.alias, ["id", "annotator_id", "item_id"], [judgment_id, annotator_id, item_id]
    )


def _existing_for_key(
    db: Statements, key: uuid.UUID, annotator_id: int, item_id: int
) -> Judgment | None:
    row = db.one(
        f"SELECT id, annotator_id, item_id FROM {_JUDGMENT} WHERE idempotency_key = %s",
        (db.key(key),),
    )
    if row is None:
        return None
    return _replay_or_refuse(row, annotator_id, item_id)


def _replay_or_refuse(row: Sequence[Any], annotator_id: int, item_id: int) -> Judgment:
    judgment_id, owner_id, judged_item_id = row
    if owner_id != annotator_id or judged_item_id != item_id:
        raise Refused("This idempotency key was already used for another judgment.", status=409)
    return _stored_judgment(judgment_id, owner_id, judged_item_id)


def _replayed(judgment: Judgment) -> SubmitResult:
    """The answer to a retried submit: the stored judgment, and the pause state as it is now, so
    a client whose first acknowledgement was lost still learns that this answer paused it."""
    membership = Membership.objects.filter(
        campaign__items=judgment.item_id, annotator_id=judgment.annotator_id
    ).first()
    return _replay_result(
        judgment, membership.pause_reason if membership and membership.is_paused else None
    )


def _replay_result(judgment: Judgment, pause_reason: str | None) -> SubmitResult:
    if pause_reason is None:
        return SubmitResult(judgment=judgment, created=False)
    return SubmitResult(
        judgment=judgment, created=False, paused=True, message=_pause_message(pause_reason)
    )


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
    return submit(
        annotator_id=annotator.pk,
        item_id=item_id,
        idempotency_key=idempotency_key,
        rating=rating,
        choice=choice,
        flag=flag,
        time_on_screen_ms=time_on_screen_ms,
        now=now,
    )


def submit(
    *,
    annotator_id: int | AnnotatorQuery,
    item_id: int,
    idempotency_key: uuid.UUID,
    rating: int | None = None,
    choice: str = "",
    flag: str = "",
    time_on_screen_ms: int = 0,
    now: datetime | None = None,
) -> SubmitResult:
    """``submit_judgment`` by ids, for callers (the hot-path views) that have no model instances."""
    now = now or timezone.now()
    answer = _answer_fields(rating=rating, choice=choice, flag=flag)
    shown_ms = max(0, int(time_on_screen_ms))
    if connection.vendor == "postgresql":
        stored = _submit_at_once(
            annotator_id=annotator_id,
            item_id=item_id,
            idempotency_key=idempotency_key,
            answer=answer,
            time_on_screen_ms=shown_ms,
        )
        if stored is not None:
            return stored
    if isinstance(annotator_id, AnnotatorQuery):
        raise Unidentified  # the rest of the rules need to know who is asking
    try:
        with transaction.atomic(), statements() as db:
            return _submit_locked(
                db,
                annotator_id=annotator_id,
                item_id=item_id,
                idempotency_key=idempotency_key,
                answer=answer,
                time_on_screen_ms=shown_ms,
                now=now,
            )
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its judgment.
        with statements() as db:
            existing = _existing_for_key(db, idempotency_key, annotator_id, item_id)
        if existing is None:
            raise
        return _replayed(existing)


_JUDGMENT_COLUMNS = (
    "item_id, annotator_id, assignment_id, rating, choice, flag, shown_left_face_id, display_index,"
    " time_on_screen_ms, idempotency_key, gold_correct, created_at"
)


# Which campaigns an answer fits without a look at the campaign: a flag fits any.
_PROTOCOL_OF_ANSWER = {"rating": Campaign.Protocol.LIKERT, "choice": Campaign.Protocol.PAIRWISE}

# ``{who}`` is the annotator's id in the statement (``_who``: a parameter or the caller's subquery).
_SUBMIT_AT_ONCE = (
    "WITH target AS (SELECT i.id AS item_id, a.annotator_id, a.id AS assignment_id, a.display_index,"
    " i.left_face_id"
    f" FROM {_ITEM} i"
    f" JOIN {_ASSIGNMENT} a ON a.item_id = i.id AND a.annotator_id = {{who}}"
    f" JOIN {_MEMBERSHIP} m ON m.campaign_id = i.campaign_id AND m.annotator_id = a.annotator_id"
    f" JOIN {_CAMPAIGN} c ON c.id = i.campaign_id"
    f" WHERE i.id = %s AND NOT i.is_gold AND a.status = {_ACTIVE} AND m.paused_at IS NULL"
    f" AND c.status = '{Campaign.Status.ACTIVE.value}' AND (%s::text IS NULL OR c.protocol = %s::text)"
    f" AND (i.judgments_wanted IS NULL OR i.judgment_count < i.judgments_wanted)"
    f" FOR UPDATE OF i, a, m),"
    f" ins AS (INSERT INTO {_JUDGMENT} ({_JUDGMENT_COLUMNS})"
    " SELECT item_id, annotator_id, assignment_id, %s, %s, %s, left_face_id, display_index, %s, %s, NULL, %s"
    " FROM target ON CONFLICT DO NOTHING"
    " RETURNING id, annotator_id, assignment_id, display_index, shown_left_face_id),"
    f" counted AS (UPDATE {_ITEM} SET judgment_count = judgment_count + 1"
    f" WHERE id = %s AND EXISTS (SELECT 1 FROM ins)),"
    f" closed AS (UPDATE {_ASSIGNMENT} SET status = '{SUBMITTED.value}' WHERE id = (SELECT assignment_id FROM ins))"
    f" SELECT * FROM ins"
)


def _submit_at_once(
    *,
    annotator_id: int | AnnotatorQuery,
    item_id: int,
    idempotency_key: uuid.UUID,
    answer: dict[str, Any],
    time_on_screen_ms: int,
) -> SubmitResult | None:
    """The common submit on PostgreSQL, in one statement and so one round trip (autocommit: no
    BEGIN, no COMMIT): a regular item, its lease active, the annotator not paused, the campaign
    active and taking this kind of answer, room left on the item, the key new. It locks the rows
    ``_submit_locked`` locks, with the same clause; a row another transaction changed first is
    re-read after the wait (READ COMMITTED re-checks the conditions on its newest version).
    Anything else stores nothing and returns None, and ``_submit_locked`` decides: a retried key,
    a gold item, a refusal with its reason."""
    rating, choice = answer["rating"], answer["choice"]
    if (rating is not None and not 1 <= rating <= 5) or (
        choice and choice not in Judgment.Choice.values
    ):
        return None  # no campaign takes it: ``_submit_locked`` says so
    protocol = next((_PROTOCOL_OF_ANSWER[k] for k in ("rating", "choice") if answer[k]), None)
    created_at = timezone.now()
    who, who_params = _who(annotator_id)
    with statements() as db:
        row = db.one(
            _SUBMIT_AT_ONCE.replace("{who}", who),
            [
                *who_params, item_id, protocol, protocol,
                answer["rating"], answer["choice"], answer["flag"],
                time_on_screen_ms, db.key(idempotency_key), created_at,
                item_id,
            ],
        )  # fmt: skip
    if row is None:
        return None
    judgment_id, judged_by, assignment_id, display_index, left_face_id = row
    judgment = Judgment(
        pk=judgment_id,
        item_id=item_id,
        annotator_id=judged_by,
        assignment_id=assignment_id,
        shown_left_face_id=left_face_id,
        display_index=display_index,
        time_on_screen_ms=time_on_screen_ms,
        idempotency_key=idempotency_key,
        created_at=created_at,
        **answer,
    )
    judgment._state.adding = False
    judgment._state.db = db.alias
    return SubmitResult(judgment=judgment, created=True)


def _submit_locked(
    db: Statements,
    *,
    annotator_id: int,
    item_id: int,
    idempotency_key: uuid.UUID,
    answer: dict[str, Any],
    time_on_screen_ms: int,
    now: datetime,
) -> SubmitResult:
    # Locks in the order undo takes them (item, lease, membership), so the two cannot deadlock.
    row = db.one(
        f"SELECT i.campaign_id, i.is_gold, i.gold_answer, i.judgments_wanted, i.judgment_count, i.left_face_id,"
        f" a.id, a.status, a.display_index,"
        f" m.id, m.paused_at, m.pause_reason, m.gold_judged, m.gold_correct,"
        f" c.protocol, c.status, c.gold_tolerance, c.pause_threshold, c.pause_min_gold,"
        f" j.id, j.annotator_id, j.item_id"
        f" FROM {_ITEM} i"
        f" JOIN {_ASSIGNMENT} a ON a.item_id = i.id AND a.annotator_id = %s"
        f" JOIN {_MEMBERSHIP} m ON m.campaign_id = i.campaign_id AND m.annotator_id = %s"
        f" JOIN {_CAMPAIGN} c ON c.id = i.campaign_id"
        f" LEFT JOIN {_JUDGMENT} j ON j.idempotency_key = %s"
        f" WHERE i.id = %s" + db.lock("i, a, m"),
        (annotator_id, annotator_id, db.key(idempotency_key), item_id),
    )
    if row is None:
        return _submit_refused(
            db,
            annotator_id=annotator_id,
            item_id=item_id,
            idempotency_key=idempotency_key,
            answer=answer,
        )
    (
        campaign_id,
        is_gold,
        gold_answer,
        judgments_wanted,
        judgment_count,
        left_face_id,
        assignment_id,
        assignment_status,
        display_index,
        membership_id,
        paused_at,
        pause_reason,
        gold_judged,
        gold_correct,
        protocol,
        campaign_status,
        gold_tolerance,
        pause_threshold,
        pause_min_gold,
        *prior,
    ) = row
    pause = pause_reason if paused_at is not None else None
    if prior[0] is not None:
        return _replay_result(_replay_or_refuse(prior, annotator_id, item_id), pause)
    _check_answer_fits(protocol, answer)
    if assignment_status == SUBMITTED:
        # A retry that raced its original here (both read the key before either stored it)
        # gets the stored judgment; a second answer under a new key is refused.
        existing = _existing_for_key(db, idempotency_key, annotator_id, item_id)
        if existing is not None:
            return _replay_result(existing, pause)
        raise Refused("You already judged this item.", status=409)
    if assignment_status == SKIPPED:
        raise Refused("You skipped this item; it cannot be judged any more.", status=409)
    if pause is not None:
        raise Refused(_pause_message(pause), status=403)
    if campaign_status != Campaign.Status.ACTIVE:
        raise Refused(f"This campaign is {campaign_status}; judgments are closed.", status=409)
    if judgments_wanted is not None and judgment_count >= judgments_wanted:
        raise Refused(
            "Your lease on this item expired and it has since received all its judgments; "
            "this answer was not stored.",
            status=409,
        )
    judgment = Judgment(
        item_id=item_id,
        annotator_id=annotator_id,
        assignment_id=assignment_id,
        shown_left_face_id=left_face_id,
        display_index=display_index,
        time_on_screen_ms=time_on_screen_ms,
        idempotency_key=idempotency_key,
        created_at=timezone.now(),
        **answer,
    )
    gold: tuple[int, int, datetime | None, str] | None = None
    if is_gold:
        judgment.gold_correct = _gold_correct(
            gold_answer, rating=judgment.rating, answer=judgment.answer, tolerance=gold_tolerance
        )
        gold = _gold_record(
            gold_judged + 1,
            gold_correct + int(judgment.gold_correct),
            threshold=pause_threshold,
            min_gold=pause_min_gold,
            now=now,
        )
    judgment_id = _store(db, judgment, membership_id=membership_id, gold=gold)
    if judgment_id is None:
        # Another request stored this key (or this item for this annotator) first.
        existing = _existing_for_key(db, idempotency_key, annotator_id, item_id)
        if existing is not None:
            return _replay_result(existing, pause)
        raise Refused("You already judged this item.", status=409)
    judgment.pk = judgment_id
    judgment._state.adding = False
    judgment._state.db = db.alias
    paused = gold is not None and gold[2] is not None
    return SubmitResult(
        judgment=judgment,
        created=True,
        paused=paused,
        message=_pause_message(gold[3]) if paused and gold else "",
    )


def _gold_record(
    judged: int, correct: int, *, threshold: float, min_gold: int, now: datetime
) -> tuple[int, int, datetime | None, str]:
    """The membership's gold record after one more gold answer: (judged, correct, paused_at,
    pause_reason); paused when the accuracy falls under the campaign's threshold."""
    accuracy = correct / judged
    if judged >= min_gold and accuracy < threshold:
        reason = (
            f"You are paused: your answers agreed with the check items {correct} of "
            f"{judged} times ({accuracy:.0%}), under this campaign's "
            f"{threshold:.0%} threshold. A researcher will review your work and can resume you."
        )
        return judged, correct, now, reason
    return judged, correct, None, ""


def _store(
    db: Statements,
    judgment: Judgment,
    *,
    membership_id: int,
    gold: tuple[int, int, datetime | None, str] | None,
) -> int | None:
    """Insert the judgment; only if it went in, count it on the item, close the lease and write
    the gold record. One statement on PostgreSQL (data-modifying CTEs), four on SQLite."""
    insert = (
        f"INSERT INTO {_JUDGMENT} ({_JUDGMENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        f" ON CONFLICT DO NOTHING RETURNING id"
    )
    insert_params = [
        judgment.item_id,
        judgment.annotator_id,
        judgment.assignment_id,
        judgment.rating,
        judgment.choice,
        judgment.flag,
        judgment.shown_left_face_id,
        judgment.display_index,
        judgment.time_on_screen_ms,
        db.key(judgment.idempotency_key),
        judgment.gold_correct,
        db.when(judgment.created_at),
    ]
    count_it = f"UPDATE {_ITEM} SET judgment_count = judgment_count + 1 WHERE id = %s"
    close_lease = f"UPDATE {_ASSIGNMENT} SET status = %s WHERE id = %s"
    record_gold = f"UPDATE {_MEMBERSHIP} SET gold_judged = %s, gold_correct = %s, paused_at = %s, pause_reason = %s WHERE id = %s"
    gold_params = (
        [gold[0], gold[1], db.when(gold[2]) if gold[2] else None, gold[3], membership_id]
        if gold
        else []
    )
    if db.postgres:  # one round trip
        stored = " AND EXISTS (SELECT 1 FROM ins)"
        sql = (
            f"WITH ins AS ({insert}), counted AS ({count_it}{stored}), closed AS ({close_lease}{stored})"
            + (f", gold AS ({record_gold}{stored})" if gold else "")
            + " SELECT id FROM ins"
        )
        row = db.one(
            sql, [*insert_params, judgment.item_id, SUBMITTED, judgment.assignment_id, *gold_params]
        )
        return row[0] if row else None
    row = db.one(insert, insert_params)
    if row is None:
        return None
    db.run(count_it, [judgment.item_id])
    db.run(close_lease, [SUBMITTED, judgment.assignment_id])
    if gold:
        db.run(record_gold, gold_params)
    return row[0]


def _submit_refused(
    db: Statements,
    *,
    annotator_id: int,
    item_id: int,
    idempotency_key: uuid.UUID,
    answer: dict[str, Any],
) -> SubmitResult:
    """Why the locking statement found nothing, checked in the order a submit's rules apply: a
    retried key, a missing item, an answer the campaign does not take, no lease, no membership."""
    existing = _existing_for_key(db, idempotency_key, annotator_id, item_id)
    if existing is not None:
        return _replayed(existing)
    protocol = Item.objects.filter(pk=item_id).values_list("campaign__protocol", flat=True).first()
    if protocol is None:
        raise Refused("No such item.", status=404)
    _check_answer_fits(protocol, answer)
    if not Assignment.objects.filter(item_id=item_id, annotator_id=annotator_id).exists():
        raise Refused("This item was not assigned to you.", status=409)
    raise Refused("You are not an annotator of this campaign.", status=404)


def skip_item(*, campaign: Campaign, annotator: User, item_id: int) -> None:
    """Give an item back; this annotator will not be served it again. Idempotent."""
    with transaction.atomic():
        updated = Assignment.objects.filter(
            item_id=item_id,
            item__campaign=campaign,
            annotator=annotator,
            status=Assignment.Status.ACTIVE,
        ).update(status=Assignment.Status.SKIPPED)
        if (
            not updated
            and not Assignment.objects.filter(
                item_id=item_id, item__campaign=campaign, annotator=annotator
            ).exists()
        ):
            raise Refused("This item was not assigned to you.", status=409)


def undo_last_judgment(
    *, campaign: Campaign, annotator: User, now: datetime | None = None
) -> Assignment:
    """Delete the annotator's last judgment in the campaign while its lease still holds.

    The item's lease becomes active again, so the item is shown again with the same position.
    """
    now = now or timezone.now()
    with transaction.atomic():
        last = (
            Judgment.objects.filter(item__campaign=campaign, annotator=annotator)
            .order_by("-created_at", "-id")
            .first()
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
                gold_judged=F("gold_judged") - 1,
                gold_correct=F("gold_correct") - int(bool(last.gold_correct)),
            )
        last.delete()
        Item.objects.filter(pk=item.pk).update(judgment_count=F("judgment_count") - 1)
        assignment.status = Assignment.Status.ACTIVE
        assignment.save(update_fields=["status"])
    return assignment
