"""Which outside services this test run can reach, and how a test that needs one skips.

Without PostgreSQL, Redis or Chromium a test that needs them skips with a reason naming the
service. CI sets ``FACEBENCH_REQUIRE_SERVICES=1``, which turns every such skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
from urllib.parse import urlparse

import pytest
from django.db import connection

CHROMIUM = os.getenv("FACEBENCH_CHROMIUM", "/usr/bin/chromium")


def _services_required() -> bool:
    return os.getenv("FACEBENCH_REQUIRE_SERVICES", "") not in ("", "0", "False", "false")


def need(service: str, available: bool, how: str) -> None:
    """Skip (or fail, in CI) unless ``service`` is available."""
    if available:
        return
    message = f"needs {service}: {how}"
    if _services_required():
        pytest.fail(f"FACEBENCH_REQUIRE_SERVICES is set but this test {message}", pytrace=False)
    pytest.skip(message)


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


def need_postgres() -> None:
    need("PostgreSQL", on_postgres(), "run with DATABASE_URL=postgres://127.0.0.1/facebench")


def _answers(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def redis_url() -> str | None:
    url = os.getenv("CELERY_BROKER_URL", "")
    return url if url.startswith("redis://") and _answers(url, 6379) else None


def need_redis() -> None:
    need("Redis", redis_url() is not None, "run with CELERY_BROKER_URL=redis://127.0.0.1:6379/0")


def need_chromium() -> None:
    need("Chromium", shutil.which(CHROMIUM) is not None, f"install it (apt-get install -y chromium) at {CHROMIUM}")
