"""Many annotators claim and submit at once, each thread on its own database connection.

Runs on the default database: PostgreSQL in CI (row locks, SKIP LOCKED), SQLite locally
(one IMMEDIATE writer at a time). Some submits are sent twice at the same moment with the same
key, as a browser does when an acknowledgement is lost.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections
from django.db.models import Count

from annotator.assignment import Refused, claim_items, submit_judgment
from annotator.campaigns import create_campaign
from annotator.models import Item, Judgment
from tests.factories import make_dataset
from tests.users import make_user

N_ANNOTATORS = 12
K = 3


def _annotate_until_done(campaign, user, barrier: threading.Barrier, seed: int) -> list[tuple[uuid.UUID, int]]:
    rng = random.Random(seed)
    acked: list[tuple[uuid.UUID, int]] = []
    try:
        barrier.wait()
        while True:
            assignments = claim_items(campaign=campaign, annotator=user, count=2).assignments
            if not assignments:
                return acked
            for assignment in assignments:
                key = uuid.uuid4()
                kwargs = dict(annotator=user, item_id=assignment.item_id, idempotency_key=key, rating=rng.randint(1, 5))
                if rng.random() < 0.3:
                    # The same submit twice at once (a retry racing the original).
                    with ThreadPoolExecutor(2) as pool:
                        results = list(pool.map(_submit_closing, [kwargs, kwargs]))
                    assert sorted(r.created for r in results) == [False, True]
                    assert results[0].judgment.pk == results[1].judgment.pk
                    result = results[0]
                else:
                    result = submit_judgment(**kwargs)
                    if rng.random() < 0.3:
                        again = submit_judgment(**kwargs)  # a retry after a lost acknowledgement
                        assert not again.created and again.judgment.pk == result.judgment.pk
                acked.append((key, result.judgment.pk))
    finally:
        connection.close()


def _submit_closing(kwargs):
    try:
        return submit_judgment(**kwargs)
    except Refused:
        raise
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_and_submits_keep_every_invariant():
    dataset = make_dataset(prompts=[f"prompt {i}" for i in range(10)], models=("a", "b", "c"))
    users = [make_user(f"ann{i}", "annotator") for i in range(N_ANNOTATORS)]
    campaign = create_campaign(name="load", protocol="likert", datasets=[dataset], annotators=users, overlap_k=K)
    n_items = campaign.items.count()
    barrier = threading.Barrier(N_ANNOTATORS)
    with ThreadPoolExecutor(N_ANNOTATORS) as pool:
        futures = [pool.submit(_annotate_until_done, campaign, u, barrier, i) for i, u in enumerate(users)]
        acked = [pair for f in futures for pair in f.result()]
    connections.close_all()

    # Every acknowledged submit is stored exactly once, under its key.
    keys = Counter(key for key, _ in acked)
    assert max(keys.values()) == 1
    stored = dict(Judgment.objects.values_list("idempotency_key", "id"))
    assert {key: jid for key, jid in acked} == stored
    # At most k judgments per item, and with 12 annotators every item reaches exactly k.
    per_item = Judgment.objects.values("item").annotate(n=Count("id"))
    assert {row["n"] for row in per_item} == {K} and len(per_item) == n_items
    assert set(Item.objects.values_list("judgment_count", flat=True)) == {K}
    # Nobody judged an item twice.
    assert not Judgment.objects.values("item", "annotator").annotate(n=Count("id")).filter(n__gt=1).exists()
