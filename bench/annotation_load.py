"""Load benchmark: N concurrent simulated annotators over HTTP against gunicorn + PostgreSQL.

Steps:
1. Clone a fresh benchmark database (``<name>_bench`` next to ``DATABASE_URL``'s database) from a
   seeded template, made once per schema and size: annotators, generations with one face each,
   an earlier campaign over them that is finished (a deployment has history, and the planner's
   choices depend on it), and the likert campaign the bench runs. Each run logs the annotators
   in afresh: an API token and a browser session (cookie and CSRF token) each.
2. Start gunicorn on a free local port against that database (the command is printed): by
   default 4 sync workers.
3. Run N annotators concurrently, each doing what the browser does: ask for its queue (``next``
   with count 4: the held leases plus one new), submit a judgment with a fresh idempotency key,
   and now and then resend the same submit (a lost acknowledgement). Connections are kept alive
   where the server allows it (gthread; sync workers close them, as behind a proxy). Without
   ``--rate`` or ``--think-ms`` they go as fast as the server answers (saturation: latency is
   then queueing, N / (2 × throughput)); with ``--rate R`` they start judgments on a Poisson
   schedule of R judgments/s in all (an offered load), and latency is measured from the moment
   each request is sent.
4. Print judgments/s, p50/p95/p99 latency of next and submit separately, and where the CPU went:
   the load generator itself, the gunicorn workers and the PostgreSQL backends, in CPU ms per
   judgment, with the machine's load average before and after.
5. Check integrity in the database: no item over k, no annotator twice on an item, every
   acknowledged submit stored exactly once, every item's counter equal to its judgments, no item
   with more judgments plus live leases than k. Exit non-zero if any check fails.

The load generator is a small asyncio HTTP/1.1 client (no HTTP library in the loop) on uvloop
where it is installed, so that its own CPU, which shares the machine with the server, stays a
small part of the total.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/facebench .venv/bin/python bench/annotation_load.py
    ... bench/annotation_load.py --rate 300            # latency at an offered 300 judgments/s
    ... bench/annotation_load.py --auth session        # the browser's way in
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import uvloop
except ImportError:  # the generator then runs on asyncio's own loop, at more CPU per request
    uvloop = None

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CSRF_SECRET = "b" * 32  # the bench's CSRF cookie; the browser gets a random one


def _bench_database_url(base_url: str) -> str:
    head, _, name = base_url.rpartition("/")
    return f"{head}/{name.split('?')[0]}_bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_database(
    url: str, *, annotators: int, prompts: int, models: int, k: int
) -> tuple[int, list[dict[str, str]]]:
    """A fresh bench database, cloned from a seeded template (made once per schema and size);
    returns the campaign id and, per annotator, the headers of token auth and of a browser
    session (cookie + CSRF header)."""
    import hashlib

    import psycopg

    head, name = url.rsplit("/", 1)
    migrations = sorted(str(p.relative_to(REPO)) for p in REPO.glob("*/migrations/0*.py"))
    shape = json.dumps([SEED_VERSION, annotators, prompts, models, k, migrations])
    template = f"{name}_seed_{hashlib.sha1(shape.encode()).hexdigest()[:10]}"
    with psycopg.connect(f"{head}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template]).fetchone():
            conn.execute(f'CREATE DATABASE "{template}"')
            seed = [
                sys.executable, __file__, "--seed-into", f"{head}/{template}", "--annotators", str(annotators),
                "--prompts", str(prompts), "--models", str(models), "--k", str(k),
            ]  # fmt: skip
            if subprocess.run(seed, cwd=REPO).returncode != 0:
                conn.execute(f'DROP DATABASE "{template}"')
                raise SystemExit("seeding the bench database failed")
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    _django(url)
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from rest_framework.authtoken.models import Token

    from annotator.models import Campaign

    auth = []
    for user in User.objects.filter(username__startswith="bench").order_by("id"):
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        auth.append(
            {
                "token": f"Authorization: Token {Token.objects.create(user=user).key}\r\n",
                "session": f"Cookie: {settings.SESSION_COOKIE_NAME}={session.session_key}; "
                f"{settings.CSRF_COOKIE_NAME}={CSRF_SECRET}\r\nX-CSRFToken: {CSRF_SECRET}\r\n",
            }
        )
    return Campaign.objects.get(name="bench").pk, auth


SEED_VERSION = 1  # bump when the seed below changes


def _django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def seed(url: str, *, annotators: int, prompts: int, models: int, k: int) -> None:
    """Migrate an empty database and fill it: annotators, generations with one face each, an
    earlier finished campaign over them, and the likert campaign the bench runs."""
    _django(url)
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connection

    from annotator.campaigns import create_campaign
    from tests.factories import make_dataset

    call_command("migrate", verbosity=0)
    group = Group.objects.get_or_create(name="annotator")[0]
    users = []
    for i in range(annotators):
        # No password to hash: the bench logs in by token, or by a session made as login() would.
        user = User(username=f"bench{i}")
        user.set_unusable_password()
        user.save()
        user.groups.add(group)
        users.append(user)
    dataset = make_dataset(
        "bench",
        prompts=[f"prompt {i}" for i in range(prompts)],
        models=[f"dm{i}" for i in range(models)],
    )
    _seed_finished_campaign(dataset, users, k)
    create_campaign(
        name="bench", protocol="likert", datasets=[dataset], annotators=users, overlap_k=k
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # give the planner real row counts, as autovacuum would


def _seed_finished_campaign(dataset: Any, users: list[Any], k: int) -> None:
    """An earlier campaign over the same faces, finished: every item judged k times.

    Any deployment past its first day has such history, and it matters to the measurement: on
    near-empty lease and judgment tables the planner picks sequential scans, and prepared
    statements keep those plans until autovacuum's next ANALYZE, which a 20-second run never sees.
    """
    from django.utils import timezone

    from annotator.campaigns import create_campaign
    from annotator.models import Assignment, Campaign, Item, Judgment

    earlier = create_campaign(
        name="earlier", protocol="likert", datasets=[dataset], annotators=users, overlap_k=k
    )
    now = timezone.now()
    items = list(earlier.items.values_list("id", flat=True))
    for start in range(0, len(items), 1000):
        chunk = items[start : start + 1000]
        leases = Assignment.objects.bulk_create(
            Assignment(
                item_id=item,
                annotator=users[(n + j) % len(users)],
                status=Assignment.Status.SUBMITTED,
                display_index=n,
                created_at=now,
                expires_at=now,
            )  # fmt: skip
            for n, item in enumerate(chunk, start)
            for j in range(k)
        )
        Judgment.objects.bulk_create(
            Judgment(
                item_id=lease.item_id,
                annotator_id=lease.annotator_id,
                assignment=lease,
                rating=3,
                display_index=lease.display_index,
                time_on_screen_ms=1000,
            )  # fmt: skip
            for lease in leases
        )
    Item.objects.filter(campaign=earlier).update(judgment_count=k)
    Campaign.objects.filter(pk=earlier.pk).update(status=Campaign.Status.FINISHED)


class _HttpClient(asyncio.Protocol):
    """The client side of one connection, as a bare protocol (no stream objects): just enough
    HTTP/1.1 for these JSON requests (Content-Length bodies, no chunking)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def expect(self) -> asyncio.Future[tuple[int, bytes, bool]]:
        self.buffer = b""
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        if len(self.buffer) >= end + 4 + length:
            status = int(lines[0].split(" ", 2)[1])
            close = headers.get("connection", "").lower() == "close"
            self.waiter.set_result((status, self.buffer[end + 4 : end + 4 + length], close))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))


class Connection:
    """An annotator's connection: kept alive where the server allows it (gthread), as a browser
    keeps one; opened anew per request where it does not (sync workers, as behind a proxy)."""

    def __init__(self, port: int, auth_headers: str) -> None:
        self.port = port
        self.auth_headers = auth_headers
        self.client: _HttpClient | None = None

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        payload = json.dumps(body).encode()
        request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n{self.auth_headers}\r\n"
        ).encode() + payload
        for attempt in (1, 2):
            if self.client is None or self.client.transport is None:
                loop = asyncio.get_running_loop()
                _, self.client = await loop.create_connection(_HttpClient, "127.0.0.1", self.port)
            assert self.client.transport is not None
            answer = self.client.expect()
            self.client.transport.write(request)
            try:
                status, data, close = await answer
            except ConnectionError:
                # The server closed an idle keep-alive connection: reconnect and send again
                # (both requests are safe to repeat: next returns held leases, submit has its key).
                self.close()
                if attempt == 2:
                    raise
                continue
            if close:
                self.close()
            return status, json.loads(data) if data else {}
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()
        self.client = None


@dataclass
class Annotator:
    conn: Connection
    campaign: int
    seed: int
    retry_share: float
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    acked: list[tuple[str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def _post(self, path: str, body: dict, latencies: list[float]) -> tuple[int, dict]:
        start = time.perf_counter()
        status, data = await self.conn.post(path, body)
        latencies.append((time.perf_counter() - start) * 1000)
        return status, data

    async def judge_one(self) -> bool:
        """One screen: the queue, then one answer (sometimes sent twice). False when nothing is left."""
        status, data = await self._post(
            f"/api/campaigns/{self.campaign}/next/", {"count": 4}, self.next_ms
        )
        if status != 200:
            self.errors.append(f"next answered {status} {str(data)[:200]}")
            return False
        if not data["items"]:
            return False
        body = {
            "idempotency_key": str(uuid.uuid4()),
            "item": data["items"][0]["item_id"],
            "rating": self.rng.randint(1, 5),
            "time_on_screen_ms": self.rng.randint(500, 4000),
        }
        status, ack = await self._post("/api/judgments/", body, self.submit_ms)
        if self.rng.random() < self.retry_share:
            again_status, again = await self._post("/api/judgments/", body, self.submit_ms)
            if again_status != 200 or again.get("judgment_id") != ack.get("judgment_id"):
                self.errors.append(f"retry answered {again_status} {str(again)[:200]}")
        if status == 201:
            self.acked.append((body["idempotency_key"], ack["judgment_id"]))
        else:
            self.errors.append(f"submit answered {status} {str(ack)[:200]}")
        return True

    async def run(self, deadline: float, *, think_s: float, rate_each: float) -> None:
        if think_s or rate_each:
            # People do not all press "start" in the same millisecond.
            await asyncio.sleep(self.rng.uniform(0, think_s or 1 / rate_each))
        due = time.perf_counter()
        while time.perf_counter() < deadline:
            if rate_each:
                due += self.rng.expovariate(rate_each)
                if due >= deadline:
                    return
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            if not await self.judge_one():
                return
            if think_s:
                # A person looks at the next face before answering: exponential, mean think_s
                # (cut at the deadline, so the run's length is the length asked for).
                pause = min(self.rng.expovariate(1 / think_s), deadline - time.perf_counter())
                await asyncio.sleep(max(0.0, pause))


@dataclass
class Measured:
    annotators: list[Annotator]
    elapsed: float
    load_cpu_s: float  # the load generator's own CPU
    server_cpu_s: float
    database_cpu_s: float


async def drive(
    port: int,
    campaign: int,
    auth: list[str],
    args: argparse.Namespace,
    server: int,
    database_url: str,
) -> Measured:
    """Warm up, then run the annotators on the same connections: every gunicorn worker that
    serves the run has served requests before the clock starts (its first request loads the
    URL configuration and with it the ML stack, seconds of CPU that would land in the run)."""
    annotators = [
        Annotator(Connection(port, a), campaign, i, args.retry_share) for i, a in enumerate(auth)
    ]
    for _ in range(2):
        await asyncio.gather(
            *(a.conn.post(f"/api/campaigns/{campaign}/next/", {"count": 1}) for a in annotators)
        )
    workers = {p: _cpu_seconds(p) for p in _children(server)}
    backends = {p: _cpu_seconds(p) for p in _backend_pids(database_url)}
    rate_each = args.rate / len(annotators) if args.rate else 0.0
    wall0, own0 = time.perf_counter(), time.process_time()
    deadline = wall0 + args.seconds
    await asyncio.gather(
        *(a.run(deadline, think_s=args.think_ms / 1000, rate_each=rate_each) for a in annotators)
    )
    elapsed, own = time.perf_counter() - wall0, time.process_time() - own0
    for a in annotators:
        a.conn.close()
    return Measured(
        annotators,
        elapsed,
        own,
        sum(_cpu_seconds(p) - workers.get(p, 0.0) for p in _children(server)),
        sum(_cpu_seconds(p) - backends.get(p, 0.0) for p in _backend_pids(database_url)),
    )


async def _answers(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


def check_integrity(campaign: int, acked: list[tuple[str, int]], k: int) -> list[str]:
    from django.db import connection
    from django.db.models import Count

    from annotator.models import Item, Judgment

    problems = []
    if Item.objects.filter(judgment_count__gt=k).exists():
        problems.append("an item has more than k judgments")
    if (
        Judgment.objects.values("item", "annotator")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .exists()
    ):
        problems.append("an annotator judged an item twice")
    stored = dict(
        Judgment.objects.filter(item__campaign_id=campaign).values_list("idempotency_key", "id")
    )
    acked_map = {uuid.UUID(key): jid for key, jid in acked}
    if len(acked_map) != len(acked):
        problems.append("one key acknowledged twice as new")
    if acked_map != stored:
        lost = set(acked_map) - set(stored)
        extra = set(stored) - set(acked_map)
        problems.append(
            f"stored judgments differ from acknowledged ones: {len(lost)} lost, {len(extra)} unacknowledged"
        )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM annotator_item i WHERE i.judgment_count <>"
            " (SELECT count(*) FROM annotator_judgment j WHERE j.item_id = i.id)"
        )
        if cursor.fetchone()[0]:
            problems.append("Item.judgment_count disagrees with the judgments stored")
        cursor.execute(
            "SELECT count(*) FROM annotator_item i WHERE NOT i.is_gold AND i.judgment_count + (SELECT count(*)"
            " FROM annotator_assignment a WHERE a.item_id = i.id AND a.status = 'active' AND a.expires_at > now())"
            " > i.judgments_wanted"
        )
        if cursor.fetchone()[0]:
            problems.append("an item has more judgments plus live leases than k")
    return problems


def percentiles(values: list[float]) -> str:
    if not values:
        return "no requests"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return f"p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  p99 {p99:6.1f} ms  (n={len(values)})"


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _backend_pids(url: str) -> list[int]:
    """The PostgreSQL backends connected to the bench database (not this process's own)."""
    import psycopg

    head, name = url.rsplit("/", 1)
    with psycopg.connect(f"{head}/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", [name]
        ).fetchall()
    from django.db import connections

    own = {c.connection.info.backend_pid for c in connections.all() if c.connection is not None}
    return [pid for (pid,) in rows if pid not in own]


def _run_loop(main: Any) -> Any:
    """Run the annotators on uvloop (a dev dependency) when it is installed: its connections and
    transports are C, which takes about a third off the generator's CPU per request on the cores
    it shares with the server."""
    return uvloop.run(main) if uvloop is not None else asyncio.run(main)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    # Sync workers, two per core: a request holds its worker while it waits on PostgreSQL (now
    # one to six round trips), and threads in one process would share one interpreter lock (gthread
    # 3×4 measured p95 ~3× higher at the same offered load on this 2-core machine). More workers
    # only add context switches: at an offered 300/s, 4 workers spent 3.3-3.4 ms of CPU per
    # judgment and 6 workers 3.7-3.8, 8 workers 3.9.
    parser.add_argument("--workers", type=int, default=int(os.getenv("WEB_CONCURRENCY", "4")))
    parser.add_argument("--worker-class", default="sync", choices=["sync", "gthread"])
    parser.add_argument("--threads", type=int, default=4, help="per worker, gthread only")
    parser.add_argument(
        "--auth", default="token", choices=["token", "session"], help="API token or browser session"
    )
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed-into", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--retry-share", type=float, default=0.05)
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="offered judgments/s in all (0: as fast as the server allows)",
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0,
        help="mean time an annotator looks before answering (0: no pause)",
    )
    args = parser.parse_args()
    logging.getLogger("django").setLevel(logging.ERROR)
    if args.seed_into:
        seed(
            args.seed_into,
            annotators=args.annotators,
            prompts=args.prompts,
            models=args.models,
            k=args.k,
        )
        return 0

    base = os.getenv("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        print(
            "Set DATABASE_URL=postgres://… (the benchmark makes its own <name>_bench database next to it)."
        )
        return 2
    url = _bench_database_url(base)
    # Items for at least 600 judgments/s with room to spare, in steps of 4000 so that runs of
    # similar length share one seeded template.
    wanted = (args.rate or 600) * args.seconds * 1.5 / args.k
    items = 4000 * max(2, math.ceil(wanted / 4000))
    campaign, auth = setup_database(
        url, annotators=args.annotators, prompts=items // 4, models=4, k=args.k
    )
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    env.pop("PYTEST_VERSION", None)
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(args.workers),
        "-k", args.worker_class, "--preload", "--log-level", "warning",
    ]  # fmt: skip
    if args.worker_class == "gthread":  # (gunicorn turns sync with threads > 1 into gthread)
        command += ["--threads", str(args.threads), "--keep-alive", "75"]
    gunicorn = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    chosen = [a[args.auth] for a in auth]
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                asyncio.run(_answers(port))
                break
            except OSError:
                if time.monotonic() > deadline or gunicorn.poll() is not None:
                    raise SystemExit("gunicorn did not start") from None
                time.sleep(0.2)
        pace = (
            f"offered {args.rate:.0f} judgments/s"
            if args.rate
            else (
                f"think time {args.think_ms:.0f} ms"
                if args.think_ms
                else "no think time (saturation)"
            )
        )
        print(f"gunicorn: {' '.join(command[2:]).replace(str(port), 'PORT')}")
        print(
            f"{args.annotators} annotators ({args.auth} auth), {pace}, {args.seconds:.0f} s, PostgreSQL, "
            f"{os.cpu_count()} CPUs, client loop {'uvloop' if uvloop is not None else 'asyncio'}; load average before: {_load()}"
        )
        run = _run_loop(drive(port, campaign, chosen, args, gunicorn.pid, url))
        load_after = _load()
    finally:
        os.killpg(gunicorn.pid, signal.SIGTERM)
        gunicorn.wait()
    annotators, elapsed, own, server, pg = (
        run.annotators,
        run.elapsed,
        run.load_cpu_s,
        run.server_cpu_s,
        run.database_cpu_s,
    )
    acked = [pair for a in annotators for pair in a.acked]
    errors = [e for a in annotators for e in a.errors]
    n = max(len(acked), 1)
    print(f"judgments/s: {len(acked) / elapsed:8.1f}   ({len(acked)} judgments in {elapsed:.1f} s)")
    print(f"next item:   {percentiles([v for a in annotators for v in a.next_ms])}")
    print(f"submit:      {percentiles([v for a in annotators for v in a.submit_ms])}")
    medians = sorted(float(np.median(a.next_ms + a.submit_ms)) for a in annotators if a.next_ms)
    if medians:
        print(
            f"per annotator, median latency: fastest {medians[0]:.1f} ms, middle {medians[len(medians) // 2]:.1f} ms, "
            f"slowest {medians[-1]:.1f} ms"
        )
    print(
        f"CPU per judgment: gunicorn {1000 * server / n:.2f} ms, PostgreSQL {1000 * pg / n:.2f} ms, "
        f"load generator {1000 * own / n:.2f} ms ({own / elapsed:.0%} of one core)"
    )
    print(f"load average after: {load_after}")
    problems = check_integrity(campaign, acked, args.k) + errors[:10]
    print(
        "integrity:  ",
        "OK — no item over k, no double judgment, every acknowledged submit stored once, counters and leases agree"
        if not problems
        else "FAILED",
    )
    for problem in problems:
        print("   ", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
