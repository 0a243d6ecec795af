"""The two requests every annotation screen makes: next items and submit a judgment.

They answer the same URLs, JSON shapes, statuses and messages as the rest of the API (the browser
and API clients cannot tell), but as plain Django views: DRF's request wrapping, content
negotiation, serializers and permission classes cost several times the engine's own work on
these two endpoints. Authentication is DRF's, done by hand in the same order: the session first
(with CSRF enforced, as SessionAuthentication does), then ``Authorization: Token <key>``. A
session costs one prepared statement that also returns the annotator role; a token none of its
own (the engine's first statement checks it, see ``_annotator``); a session that is
anything but plain (see ``_plain_session_user``) goes through Django's ``request.user``. The
OpenAPI schema still describes both endpoints: each view carries a schema-only DRF class
(``_documented_by``) that drf-spectacular reads and requests never reach.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, QueryDict
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import path
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.views import APIView

from annotator import assignment as engine
from annotator.api import JudgmentViewSet
from annotator.models import Judgment
from annotator.roles import ANNOTATOR, is_annotator
from annotator.serializers import (
    JudgmentAckSerializer,
    JudgmentCreateSerializer,
    NextItemsRequestSerializer,
    NextItemsSerializer,
)

Body = dict[str, Any]
Result = TypeVar("Result")
MAX_TIME_ON_SCREEN_MS = 24 * 3600 * 1000
_INTEGER = re.compile(r"^\s*[+-]?\d+(\.0*)?\s*$")  # what DRF's IntegerField accepts from a string


def lease_for_annotator(lease: engine.Lease, protocol: str) -> Body:
    """``serializers.item_for_annotator`` for a lease the engine has not made a model instance
    of: the same keys and values (a test holds the two together)."""
    item_id = lease.item_id
    return {
        "item_id": item_id,
        "assignment_id": lease.assignment_id,
        "display_index": lease.display_index,
        "protocol": protocol,
        "expires_at": lease.expires_at.isoformat(),
        "faces": [
            {
                **face,
                "crop_url": f"/images/items/{item_id}/{face['position']}/crop.png",
                "image_url": f"/images/items/{item_id}/{face['position']}/whole.png",
            }
            for face in lease.screen
        ],
    }


def _json(body: Body, status: int = 200) -> HttpResponse:
    return HttpResponse(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
    )


def _detail(message: str, status: int) -> HttpResponse:
    return _json({"detail": message}, status)


class _CsrfCheck(CsrfViewMiddleware):
    """CSRF for session-authenticated API posts, as DRF's SessionAuthentication enforces it."""

    def _reject(self, request: HttpRequest, reason: str) -> str:  # type: ignore[override]
        return reason


def _csrf_failure(request: HttpRequest) -> str | None:
    check = _CsrfCheck(lambda request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, None, (), {})  # type: ignore[arg-type, return-value]


_IS_ANNOTATOR = (
    "EXISTS (SELECT 1 FROM auth_user_groups ug JOIN auth_group g ON g.id = ug.group_id"
    " WHERE ug.user_id = u.id AND g.name = %s)"
)
_TOKEN_USER_SQL = (
    f"SELECT u.id, u.is_active, {_IS_ANNOTATOR}"
    " FROM authtoken_token t JOIN auth_user u ON u.id = t.user_id WHERE t.key = %s"
)
_SESSION_SQL = "SELECT session_data FROM django_session WHERE session_key = %s AND expire_date > %s"
_SESSION_USER_SQL = (
    f"SELECT u.password, u.is_active, {_IS_ANNOTATOR} FROM auth_user u WHERE u.id = %s"
)
# With the user's id known, the session row and the user row come back in one statement.
_SESSION_AND_USER_SQL = (
    f"SELECT s.session_data, u.password, u.is_active, {_IS_ANNOTATOR}"
    " FROM django_session s LEFT JOIN auth_user u ON u.id = %s"
    " WHERE s.session_key = %s AND s.expire_date > %s"
)
# The user id each session key was last verified to carry, in this process. A key never passes
# to another user (Django gives the session a new key when someone else logs in on it), so the
# id only says which user row to read beside the session row: everything the rows say is checked
# again on every request, and a session whose data names another user reads that user's row.
_SESSION_USERS: dict[str, int] = {}
# (session data, password hash) pairs verified in this process, with the user id they name:
# decoding signed session data and hashing the password cost more than the statement, and the
# same two strings always give the same verdict (activity and role are read fresh each time).
_VERIFIED: dict[tuple[str, str], int] = {}
_SESSION_USERS_MAX = 10_000
_DB_SESSIONS = "django.contrib.sessions.backends.db"
_MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _plain_session_user(request: HttpRequest) -> tuple[int, bool] | None:
    """(user id, is annotator) when the session cookie names a session that
    ``django.contrib.auth.get_user`` would accept as it stands: database sessions, logged in
    through ModelBackend, an active user, the session hash verified with the current secret.

    One prepared statement (two for a session this process has not seen) instead of the three
    ORM queries behind ``request.user`` and the role check. Anything else (no cookie, an expired
    or tampered session, another backend, a hash that only a fallback secret verifies) returns
    None and is left to Django's own code.
    """
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if (
        not key
        or settings.SESSION_ENGINE != _DB_SESSIONS
        or _MODEL_BACKEND not in settings.AUTHENTICATION_BACKENDS
    ):
        return None
    known = _SESSION_USERS.get(key)
    with engine.statements() as db:
        now = db.when(timezone.now())
        if known is None:
            row = db.one(_SESSION_SQL, (key, now))
        else:
            row = db.one(_SESSION_AND_USER_SQL, (ANNOTATOR, known, key, now))
        if row is None:
            return None
        if known is not None and _VERIFIED.get((row[0], row[1])) == known:
            # This session data verified against this password hash before: it would again.
            user_id, user = known, row[1:]
        else:
            verified = _verify_session(request, db, row, known)
            if verified is None:
                return None
            user_id, user = verified
    if not user[1]:  # inactive
        return None
    if len(_SESSION_USERS) >= _SESSION_USERS_MAX:
        _SESSION_USERS.clear()
        _VERIFIED.clear()
    _SESSION_USERS[key] = user_id
    _VERIFIED[(row[0], user[0])] = user_id
    return user_id, bool(user[2])


def _verify_session(
    request: HttpRequest, db: engine.Statements, row: tuple[Any, ...], known: int | None
) -> tuple[int, tuple[Any, ...]] | None:
    """(user id, user row) when the session data decodes and its hash matches the user's
    password hash, as ``django.contrib.auth.get_user`` checks them."""
    session = request.session.decode(row[0])  # the engine's own decoding: {} if tampered with
    session_hash = session.get(HASH_SESSION_KEY)
    if session.get(BACKEND_SESSION_KEY) != _MODEL_BACKEND or not session_hash:
        return None
    try:
        user_id = User._meta.pk.to_python(session[SESSION_KEY])
    except (KeyError, ValidationError):
        return None
    user = row[1:] if user_id == known else db.one(_SESSION_USER_SQL, (ANNOTATOR, user_id))
    if user is None or user[0] is None:
        return None
    if not constant_time_compare(
        session_hash, User(pk=user_id, password=user[0]).get_session_auth_hash()
    ):
        return None
    return user_id, user


def _token_user(request: HttpRequest) -> tuple[int, bool] | HttpResponse | None:
    """(user id, is annotator) for a valid ``Authorization: Token`` header, DRF's 403 for a bad
    one, None when there is none."""
    header = request.META.get("HTTP_AUTHORIZATION", "").split()
    if not header or header[0].lower() != "token":
        return None
    if len(header) != 2:
        problem = (
            "No credentials provided."
            if len(header) == 1
            else "Token string should not contain spaces."
        )
        return _detail(f"Invalid token header. {problem}", 403)
    with engine.statements() as db:
        row = db.one(_TOKEN_USER_SQL, (ANNOTATOR, header[1]))
    if row is None:
        return _detail("Invalid token.", 403)
    user_id, is_active, annotator = row
    if not is_active:
        return _detail("User inactive or deleted.", 403)
    return user_id, bool(annotator)


# The annotator an API token names, as the engine's first statement runs it (see
# ``engine.AnnotatorQuery``): an active user in the annotator group, or no row.
_TOKEN_ANNOTATOR_SQL = (
    f"SELECT u.id FROM authtoken_token t JOIN auth_user u ON u.id = t.user_id"
    f" WHERE t.key = %s AND u.is_active AND {_IS_ANNOTATOR}"
)


def _annotator(request: HttpRequest, refusal: str) -> int | engine.AnnotatorQuery | HttpResponse:
    """Who is asking, as cheaply as it can be known: a session is checked here (with CSRF); a
    well-formed token is handed to the engine unchecked, whose first statement checks it. A
    token the engine finds nothing for is checked again by ``_annotator_id``, for the reason."""
    header = request.META.get("HTTP_AUTHORIZATION", "").split()
    if (
        len(header) == 2
        and header[0].lower() == "token"
        and settings.SESSION_COOKIE_NAME not in request.COOKIES
    ):
        return engine.AnnotatorQuery(_TOKEN_ANNOTATOR_SQL, (header[1], ANNOTATOR))
    return _annotator_id(request, refusal)


def _annotator_id(request: HttpRequest, refusal: str) -> int | HttpResponse:
    """The requesting annotator's id, or the 403 DRF would answer: the session first (CSRF
    enforced), then the token."""
    found = _plain_session_user(request)
    if found is None and request.user.is_authenticated:  # inactive users never get here
        found = request.user.pk, is_annotator(request.user)
    if found is not None:
        request.session_authenticated = True  # type: ignore[attr-defined]
        reason = _csrf_failure(request)
        if reason:
            return _detail(f"CSRF Failed: {reason}", 403)
    else:
        token = _token_user(request)
        if token is None:
            return _detail("Authentication credentials were not provided.", 403)
        if isinstance(token, HttpResponse):
            return token
        found = token
    user_id, annotator = found
    return user_id if annotator else _detail(refusal, 403)


def _as_annotator(
    request: HttpRequest,
    annotator: int | engine.AnnotatorQuery,
    refusal: str,
    call: Callable[[int | engine.AnnotatorQuery], Result],
) -> Result | HttpResponse:
    """``call`` the engine as the annotator; if a token handed to it names nobody, the reason
    (DRF's 403), or the call again with the annotator found the slow way."""
    try:
        return call(annotator)
    except engine.Unidentified:
        checked = _annotator_id(request, refusal)
        return checked if isinstance(checked, HttpResponse) else call(checked)


def _unless_unidentified(
    request: HttpRequest,
    annotator: int | engine.AnnotatorQuery,
    refusal: str,
    response: HttpResponse,
) -> HttpResponse:
    """A refusal of the request's body, unless the credentials are refused first (as DRF
    authenticates before it parses): a token not checked yet is checked now."""
    if isinstance(annotator, engine.AnnotatorQuery):
        checked = _annotator_id(request, refusal)
        if isinstance(checked, HttpResponse):
            return checked
    return response


def _body(request: HttpRequest) -> Body | QueryDict | HttpResponse:
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError as error:
            return _detail(f"JSON parse error - {error}", 400)
        return (
            data if isinstance(data, dict) else _detail("Invalid data. Expected a dictionary.", 400)
        )
    return request.POST


class _Invalid(Exception):
    pass


def _integer(value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """DRF IntegerField's rules and messages."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid("A valid integer is required.")
    if isinstance(value, float):
        if not value.is_integer():
            raise _Invalid("A valid integer is required.")
        value = int(value)
    elif isinstance(value, str):
        if len(value) > 1000 or not _INTEGER.match(value):
            raise _Invalid("A valid integer is required.")
        value = int(value.strip().split(".")[0])
    if low is not None and value < low:
        raise _Invalid(f"Ensure this value is greater than or equal to {low}.")
    if high is not None and value > high:
        raise _Invalid(f"Ensure this value is less than or equal to {high}.")
    return value


_REQUIRED = object()


def _field(
    data: Body | QueryDict,
    name: str,
    errors: dict[str, list[str]],
    parse: Callable[[Any], Any],
    *,
    default: Any = _REQUIRED,
    allow_null: bool = False,
) -> Any:
    """One field as DRF's serializer reads it; a problem goes into ``errors`` under its name."""
    required = default is _REQUIRED
    if name not in data or (not required and isinstance(data, QueryDict) and data[name] == ""):
        if required:
            errors[name] = ["This field is required."]
        return None if required or (allow_null and name in data) else default
    value = data[name]
    if value is None:
        if not allow_null:
            errors[name] = ["This field may not be null."]
        return None
    try:
        return parse(value)
    except _Invalid as error:
        errors[name] = [str(error)]
        return None


def _choice(choices: list[str]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value == "" or str(value) in choices:
            return str(value)
        raise _Invalid(f'"{value}" is not a valid choice.')

    return parse


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value)) if not isinstance(value, int) else uuid.UUID(int=value)
    except (ValueError, AttributeError):
        raise _Invalid("Must be a valid UUID.") from None


def _vary_on_session(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """``Vary: Cookie`` on answers that depended on the session, as SessionMiddleware adds when a
    view reads ``request.session`` (the lean session check reads the row itself)."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        if getattr(request, "session_authenticated", False):
            patch_vary_headers(response, ("Cookie",))
        return response

    return wrapped


def _documented_by(
    schema_view: type[APIView],
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Let drf-spectacular describe a plain view through a DRF class that only carries its schema."""

    def mark(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        view.cls = schema_view  # type: ignore[attr-defined]
        view.initkwargs = {}  # type: ignore[attr-defined]
        return view

    return mark


class _NextItemsSchema(APIView):
    """Schema only: ``next_items`` answers these requests."""

    @extend_schema(
        operation_id="campaigns_next_create",
        tags=["campaigns"],
        parameters=[
            OpenApiParameter("id", int, OpenApiParameter.PATH, description="The campaign.")
        ],
        request=NextItemsRequestSerializer,
        responses=NextItemsSerializer,
    )
    def post(self, request: Any, id: int) -> None:
        """Lease up to ``count`` items (held leases first), for the screen and its prefetch."""
        raise NotImplementedError


class _SubmitSchema(APIView):
    """Schema only: ``judgments`` answers POST."""

    @extend_schema(
        operation_id="judgments_create",
        tags=["judgments"],
        request=JudgmentCreateSerializer,
        responses={
            201: JudgmentAckSerializer,
            200: JudgmentAckSerializer,
            409: OpenApiTypes.OBJECT,
        },
    )
    def post(self, request: Any) -> None:
        """Idempotent on ``idempotency_key``: a retry answers 200 with the stored judgment."""
        raise NotImplementedError


@_documented_by(_NextItemsSchema)
@csrf_exempt
@_vary_on_session
def next_items(request: HttpRequest, id: int) -> HttpResponse:
    """POST ``{"count": n}``: the annotator's held leases, topped up with new ones, up to n."""
    if request.method != "POST":
        return _detail(f'Method "{request.method}" not allowed.', 405)
    refusal = "Only annotators are served items."
    annotator = _annotator(request, refusal)
    if isinstance(annotator, HttpResponse):
        return annotator
    data = _body(request)
    if isinstance(data, HttpResponse):
        return _unless_unidentified(request, annotator, refusal, data)
    errors: dict[str, list[str]] = {}
    count = _field(
        data, "count", errors, lambda v: _integer(v, low=1, high=engine.MAX_CLAIM_COUNT), default=1
    )
    if errors:
        return _unless_unidentified(request, annotator, refusal, _json(errors, 400))
    try:
        result = _as_annotator(
            request,
            annotator,
            refusal,
            lambda who: engine.claim(campaign_id=id, annotator_id=who, count=count),
        )
    except engine.Refused as error:
        return _detail(error.message, error.status)
    if isinstance(result, HttpResponse):
        return result
    items = [lease_for_annotator(lease, result.protocol) for lease in result.leases]
    return _json({"items": items, "paused": result.paused, "message": result.message})


_judgment_list = JudgmentViewSet.as_view({"get": "list"})


@_documented_by(_SubmitSchema)
@csrf_exempt
@_vary_on_session
def judgments(request: HttpRequest) -> HttpResponse:
    """POST stores a judgment (idempotent on its key); GET lists judgments (the DRF view)."""
    if request.method != "POST":
        return _judgment_list(request)
    refusal = "Only annotators submit judgments."
    annotator = _annotator(request, refusal)
    if isinstance(annotator, HttpResponse):
        return annotator
    data = _body(request)
    if isinstance(data, HttpResponse):
        return _unless_unidentified(request, annotator, refusal, data)
    errors: dict[str, list[str]] = {}
    key = _field(data, "idempotency_key", errors, _uuid)
    item_id = _field(data, "item", errors, _integer)
    rating = _field(
        data, "rating", errors, lambda v: _integer(v, low=1, high=5), default=None, allow_null=True
    )
    choice = _field(data, "choice", errors, _choice(Judgment.Choice.values), default="")
    flag = _field(data, "flag", errors, _choice(Judgment.Flag.values), default="")
    shown_ms = _field(
        data,
        "time_on_screen_ms",
        errors,
        lambda v: _integer(v, low=0, high=MAX_TIME_ON_SCREEN_MS),
        default=0,
    )
    if errors:
        return _unless_unidentified(request, annotator, refusal, _json(errors, 400))
    try:
        result = _as_annotator(
            request,
            annotator,
            refusal,
            lambda who: engine.submit(
                annotator_id=who,
                item_id=item_id,
                idempotency_key=key,
                rating=rating,
                choice=choice or "",
                flag=flag or "",
                time_on_screen_ms=shown_ms,
            ),
        )
    except engine.Refused as error:
        return _detail(error.message, error.status)
    if isinstance(result, HttpResponse):
        return result
    ack = {
        "judgment_id": result.judgment.pk,
        "item": result.judgment.item_id,
        "duplicate": not result.created,
        "gold_paused": result.paused,
        "message": result.message,
    }
    return _json(ack, 201 if result.created else 200)


# Ahead of the API router's patterns (see annotator/urls.py), which no longer route these.
urlpatterns = [
    path("api/campaigns/<int:id>/next/", next_items, name="api-campaign-next"),
    path("api/judgments/", judgments, name="api-judgment-list"),
]
