"""A persistent PostgreSQL connection that the server dropped is replaced before a request uses
it, without the ``SELECT 1`` round trip Django's health check sends on every request."""

from __future__ import annotations

import json

import psycopg
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.test import RequestFactory
from rest_framework.authtoken.models import Token

from annotator.campaigns import create_campaign
from tests.factories import make_dataset
from tests.services import need_postgres

pytestmark = pytest.mark.django_db(transaction=True)


def _server_terminates(backend_pid: int) -> None:
    """What a server restart or an administrator does to one connection."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
        # The backend is gone once pg_stat_activity no longer lists it.
        for _ in range(200):
            row = admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [backend_pid]
            ).fetchone()
            if row is None:
                return
            admin.execute("SELECT pg_sleep(0.01)")
    raise AssertionError("the backend was not terminated")


def test_a_healthy_connection_is_usable_without_a_query():
    need_postgres()
    connection.ensure_connection()
    before = connection.connection.info.backend_pid
    sent = []
    original = connection.connection.cursor
    connection.connection.cursor = lambda *a, **k: sent.append(1) or original(*a, **k)
    try:
        assert connection.is_usable()
    finally:
        connection.connection.cursor = original
    assert sent == [] and connection.connection.info.backend_pid == before


def test_a_connection_the_server_dropped_is_found_unusable():
    need_postgres()
    connection.ensure_connection()
    _server_terminates(connection.connection.info.backend_pid)
    assert not connection.is_usable()
    connection.close()


def _serve(request_environ: dict) -> tuple[str, bytes]:
    """One request through the WSGI application, as gunicorn runs it: unlike the test client,
    with Django's per-request connection handling (and so its health check)."""
    statuses: list[str] = []

    def start_response(status: str, headers: list, exc_info: object = None) -> object:
        statuses.append(status)
        return None

    body = WSGIHandler()(request_environ, start_response)  # type: ignore[arg-type]
    try:
        return statuses[0], b"".join(body)
    finally:
        body.close()


def test_the_next_request_after_the_server_dropped_the_connection_is_served(annotator):
    need_postgres()
    campaign = create_campaign(
        name="c",
        protocol="likert",
        datasets=[make_dataset(prompts=("p1",))],
        annotators=[annotator],
        overlap_k=1,
    )
    token = f"Token {Token.objects.create(user=annotator).key}"

    def next_item() -> tuple[str, bytes]:
        request = RequestFactory().post(
            f"/api/campaigns/{campaign.pk}/next/",
            {"count": 1},
            content_type="application/json",
            HTTP_AUTHORIZATION=token,
        )
        return _serve(request.environ)

    assert next_item()[0] == "200 OK"
    old_pid = connection.connection.info.backend_pid
    _server_terminates(old_pid)
    status, body = next_item()
    assert status == "200 OK" and len(json.loads(body)["items"]) == 1
    assert connection.connection.info.backend_pid != old_pid
