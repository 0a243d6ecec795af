"""Load benchmark: N concurrent simulated annotators over HTTP against gunicorn + PostgreSQL.

Steps:
1. Create a fresh benchmark database (``<name>_bench`` next to ``DATABASE_URL``'s database),
   migrate it, and seed annotators with API tokens, generations, faces and a likert campaign.
2. Start gunicorn on a free local port against that database.
3. Run N annotators concurrently (asyncio + httpx), each doing what the browser does: ask for its
   queue (``next`` with count 4: the held leases plus one new), submit a judgment with a fresh
   idempotency key, and now and then resend the same submit (a lost acknowledgement).
4. Print judgments/s and p50/p95/p99 latency of next and submit separately.
5. Check integrity in the database: no item over k, no annotator twice on an item, every
   acknowledged submit stored exactly once. Exit non-zero if any check fails.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/facebench .venv/bin/python bench/annotation_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _bench_database_url(base_url: str) -> str:
    head, _, name = base_url.rpartition("/")
    return f"{head}/{name.split('?')[0]}_bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_database(url: str, *, annotators: int, prompts: int, models: int, k: int) -> tuple[int, list[str]]:
    """Recreate the bench database and seed it; returns the campaign id and the annotators' tokens."""
    import psycopg

    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from annotator.campaigns import create_campaign
    from tests.factories import make_dataset
    from tests.users import make_user

    call_command("migrate", verbosity=0)
    users = [make_user(f"bench{i}", "annotator") for i in range(annotators)]
    tokens = [Token.objects.create(user=u).key for u in users]
    dataset = make_dataset(
        "bench", prompts=[f"prompt {i}" for i in range(prompts)], models=[f"dm{i}" for i in range(models)]
    )
    campaign = create_campaign(name="bench", protocol="likert", datasets=[dataset], annotators=users, overlap_k=k)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # fresh tables: give the planner real row counts, as autovacuum would
    return campaign.pk, tokens


class Annotator:
    def __init__(
        self, client: httpx.AsyncClient, campaign: int, token: str, seed: int, retry_share: float, think_s: float
    ) -> None:
        self.client = client
        self.campaign = campaign
        self.headers = {"Authorization": f"Token {token}"}
        self.rng = random.Random(seed)
        self.retry_share = retry_share
        self.think_s = think_s
        self.next_ms: list[float] = []
        self.submit_ms: list[float] = []
        self.acked: list[tuple[str, int]] = []
        self.errors: list[str] = []

    async def _post(self, url: str, body: dict, latencies: list[float]) -> httpx.Response:
        start = time.perf_counter()
        response = await self.client.post(url, json=body, headers=self.headers)
        latencies.append((time.perf_counter() - start) * 1000)
        return response

    async def run(self, deadline: float) -> None:
        if self.think_s:
            # People do not all press "start" in the same millisecond.
            await asyncio.sleep(self.rng.uniform(0, self.think_s))
        while time.perf_counter() < deadline:
            response = await self._post(f"/api/campaigns/{self.campaign}/next/", {"count": 4}, self.next_ms)
            items = response.json()["items"]
            if not items:
                return
            body = {
                "idempotency_key": str(uuid.uuid4()),
                "item": items[0]["item_id"],
                "rating": self.rng.randint(1, 5),
                "time_on_screen_ms": self.rng.randint(500, 4000),
            }
            if self.think_s:
                # A person looks at the face before answering: exponential, mean think_s.
                await asyncio.sleep(self.rng.expovariate(1 / self.think_s))
            response = await self._post("/api/judgments/", body, self.submit_ms)
            if self.rng.random() < self.retry_share:
                again = await self._post("/api/judgments/", body, self.submit_ms)
                if again.status_code != 200 or again.json()["judgment_id"] != response.json().get("judgment_id"):
                    self.errors.append(f"retry answered {again.status_code} {again.text[:200]}")
            if response.status_code == 201:
                self.acked.append((body["idempotency_key"], response.json()["judgment_id"]))
            else:
                self.errors.append(f"submit answered {response.status_code} {response.text[:200]}")


async def drive(
    base_url: str, campaign: int, tokens: list[str], seconds: float, retry_share: float, think_s: float
) -> list[Annotator]:
    limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens))
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        annotators = [Annotator(client, campaign, t, i, retry_share, think_s) for i, t in enumerate(tokens)]
        # Warm up each gunicorn worker's connection before the clock starts.
        await asyncio.gather(*(client.get("/api/", headers=a.headers) for a in annotators))
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(a.run(deadline) for a in annotators))
    return annotators


def check_integrity(acked: list[tuple[str, int]], k: int) -> list[str]:
    from django.db.models import Count

    from annotator.models import Item, Judgment

    problems = []
    if Item.objects.filter(judgment_count__gt=k).exists():
        problems.append("an item has more than k judgments")
    if Judgment.objects.values("item", "annotator").annotate(n=Count("id")).filter(n__gt=1).exists():
        problems.append("an annotator judged an item twice")
    stored = dict(Judgment.objects.values_list("idempotency_key", "id"))
    acked_map = {uuid.UUID(key): jid for key, jid in acked}
    if len(acked_map) != len(acked):
        problems.append("one key acknowledged twice as new")
    if acked_map != stored:
        lost = set(acked_map) - set(stored)
        extra = set(stored) - set(acked_map)
        problems.append(f"stored judgments differ from acknowledged ones: {len(lost)} lost, {len(extra)} unacknowledged")
    counts = dict(Judgment.objects.values("item").annotate(n=Count("id")).values_list("item", "n"))
    if any(Item.objects.get(pk=i).judgment_count != n for i, n in list(counts.items())[:200]):
        problems.append("Item.judgment_count disagrees with the judgments stored")
    return problems


def percentiles(values: list[float]) -> str:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return f"p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  p99 {p99:6.1f} ms  (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=int(os.getenv("WEB_CONCURRENCY", "3")))
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--retry-share", type=float, default=0.05)
    parser.add_argument(
        "--think-ms", type=float, default=0, help="mean time an annotator looks before answering (0: as fast as the server allows)"
    )
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    base = os.getenv("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        print("Set DATABASE_URL=postgres://… (the benchmark makes its own <name>_bench database next to it).")
        return 2
    url = _bench_database_url(base)
    n_items_needed = int(args.annotators * args.seconds * 20 / args.k) + 1000
    models = 4
    campaign, tokens = setup_database(
        url, annotators=args.annotators, prompts=n_items_needed // models, models=models, k=args.k
    )
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    env.pop("PYTEST_VERSION", None)
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(args.workers),
         "-k", "gthread", "--threads", str(args.threads), "--keep-alive", "60", "--log-level", "warning"],
        cwd=REPO, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("gunicorn did not start") from None
                time.sleep(0.2)
        pace = f"think time {args.think_ms:.0f} ms" if args.think_ms else "no think time (saturation)"
        print(f"{args.annotators} annotators, {pace}, {args.seconds:.0f} s, gunicorn {args.workers} workers × "
              f"{args.threads} threads, PostgreSQL, {os.cpu_count()} CPUs")
        start = time.perf_counter()
        annotators = asyncio.run(
            drive(f"http://127.0.0.1:{port}", campaign, tokens, args.seconds, args.retry_share, args.think_ms / 1000)
        )
        elapsed = time.perf_counter() - start
    finally:
        os.killpg(gunicorn.pid, signal.SIGTERM)
        gunicorn.wait()
    acked = [pair for a in annotators for pair in a.acked]
    errors = [e for a in annotators for e in a.errors]
    print(f"judgments/s: {len(acked) / elapsed:8.1f}   ({len(acked)} judgments in {elapsed:.1f} s)")
    print(f"next item:   {percentiles([v for a in annotators for v in a.next_ms])}")
    print(f"submit:      {percentiles([v for a in annotators for v in a.submit_ms])}")
    problems = check_integrity(acked, args.k) + errors[:10]
    print("integrity:  ", "OK — no item over k, no double judgment, every acknowledged submit stored once"
          if not problems else "FAILED")
    for problem in problems:
        print("   ", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
