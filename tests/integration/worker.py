"""A real Celery worker process for integration tests, on the test database and broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

REPO = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=_database_url(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        FACEBENCH_VAR_DIR=str(settings.VAR_DIR),
        FACEBENCH_QUEUE_PREFIX=settings.FACEBENCH_QUEUE_PREFIX,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        PYTHONPATH=str(REPO),
    )
    return env


@contextmanager
def celery_worker(name: str = "test", log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``celery worker`` (prefork, -c 1) on this run's queues; stop it with SIGTERM, then SIGKILL."""
    queues = ",".join(settings.FACEBENCH_QUEUES.values())
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-c", "1",
         "--prefetch-multiplier=1", "-n", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
         "--loglevel=INFO"],
        cwd=REPO,
        env=worker_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
