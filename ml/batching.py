"""Scoring many inputs with one metric: background decoding, batching, OOM back-off, poison items.

Inputs arrive as loader callables (decode a file, crop a face), run in a small thread pool ahead
of the model like a DataLoader's workers, so the GPU does not wait for PIL. A loader that raises
marks only its own input as failed (a poison item: it gets an error, never a retry loop). A CUDA
out-of-memory error halves the batch and retries that batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ml.metrics.base import Metric, MetricInput

logger = logging.getLogger(__name__)

Loader = Callable[[], MetricInput]


@dataclass(frozen=True)
class Outcome:
    value: float | None
    error: str = ""


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def score_inputs(
    metric: Metric,
    loaders: Sequence[Loader],
    *,
    batch_size: int = 32,
    decode_workers: int = 4,
    on_batch: Callable[[int], None] | None = None,
) -> list[Outcome]:
    """One ``Outcome`` per loader, in order. ``on_batch(n_done)`` is called after every batch."""
    outcomes: list[Outcome | None] = [None] * len(loaders)
    with ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode") as pool:
        # Submitting everything up front keeps decoding ahead of the model; results are
        # consumed in order, batch by batch.
        futures: list[Future[MetricInput]] = [pool.submit(load) for load in loaders]
        done = 0
        for span in _chunks(len(loaders), batch_size):
            ready: list[tuple[int, MetricInput]] = []
            for i in span:
                try:
                    ready.append((i, futures[i].result()))
                except Exception as exc:  # this input alone is unusable
                    outcomes[i] = Outcome(None, f"cannot load input: {type(exc).__name__}: {exc}")
            for i, value in _score_with_backoff(metric, ready, batch_size):
                outcomes[i] = value
            done += len(span)
            if on_batch:
                on_batch(done)
    return [o if o is not None else Outcome(None, "not scored") for o in outcomes]


def _score_with_backoff(
    metric: Metric, ready: list[tuple[int, MetricInput]], batch_size: int
) -> list[tuple[int, Outcome]]:
    results: list[tuple[int, Outcome]] = []
    pending = [ready]
    while pending:
        batch = pending.pop(0)
        if not batch:
            continue
        try:
            values = metric.score([item for _, item in batch])
        except Exception as exc:
            if _is_out_of_memory(exc) and len(batch) > 1:
                half = len(batch) // 2
                logger.warning("%s: out of memory at batch %d, retrying as %d + %d", metric.name, len(batch), half, len(batch) - half)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                pending[:0] = [batch[:half], batch[half:]]
                continue
            if len(batch) > 1:
                # One bad input must not sink its neighbours: score them one by one.
                pending[:0] = [[pair] for pair in batch]
                continue
            results.append((batch[0][0], Outcome(None, f"{type(exc).__name__}: {exc}")))
            continue
        for (i, _), value in zip(batch, values.detach().float().cpu().tolist(), strict=True):
            finite = value == value and abs(value) != float("inf")
            results.append((i, Outcome(float(value)) if finite else Outcome(None, f"metric returned {value}")))
    return results
