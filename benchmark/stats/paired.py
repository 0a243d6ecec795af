"""Paired differences (tuned − base) with bootstrap intervals that resample prompts.

An evaluation generates one (prompt, seed) list with two models, so every image of one model has
a twin from the other, drawn from the same initial noise. The difference of a metric between
twins takes the prompt and the seed out of the comparison. Twins of one prompt are not
independent (a hard prompt is hard for both models and for every seed), so the interval
resamples prompts, as clusters, with replacement, and recomputes the mean difference over the
pairs of the drawn prompts:

    d* = Σ_p c_p S_p / Σ_p c_p N_p

with c_p how often prompt p was drawn, S_p the sum of its differences and N_p their count. With
one pair per prompt this is the ordinary bootstrap of a mean. The draws are
``rng.integers(0, P, (rows, P))`` blocks of one seeded ``default_rng`` stream and the interval is
the plain percentile interval (linear quantiles), exactly what ``scipy.stats.bootstrap`` computes
with ``method="percentile"``, ``paired=True`` and ``batch=chunk`` (the tests check this).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PairedDifference", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """Mean of tuned − base over complete pairs, with its prompt-bootstrap interval."""

    difference: float
    low: float  # NaN when fewer than two prompts (resampling one cluster says nothing)
    high: float
    mean_base: float
    mean_tuned: float
    tuned_better: float  # share of pairs where tuned > base (ties count half)
    n_pairs: int
    n_prompts: int
    n_dropped: int  # pairs left out because one side had no value
    level: float
    n_boot: int

    def as_dict(self) -> dict[str, Any]:
        def plain(value: float) -> float | None:
            return float(value) if np.isfinite(value) else None  # JSON has no NaN

        return {
            "difference": plain(self.difference),
            "low": plain(self.low),
            "high": plain(self.high),
            "mean_base": plain(self.mean_base),
            "mean_tuned": plain(self.mean_tuned),
            "tuned_better": plain(self.tuned_better),
            "n_pairs": self.n_pairs,
            "n_prompts": self.n_prompts,
            "n_dropped": self.n_dropped,
            "level": self.level,
            "n_boot": self.n_boot,
        }


def _cluster_totals(differences: np.ndarray, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt (in sorted order of the prompt keys): the sum of its differences and their count."""
    _, codes = np.unique(prompts, return_inverse=True)
    codes = codes.reshape(-1)
    n_prompts = int(codes.max()) + 1
    sums = np.bincount(codes, weights=differences, minlength=n_prompts)
    counts = np.bincount(codes, minlength=n_prompts).astype(np.float64)
    return sums, counts


def bootstrap_ratio(
    sums: np.ndarray, counts: np.ndarray, *, n_boot: int, seed: int, chunk: int
) -> np.ndarray:
    """``n_boot`` replicates of Σ c_p S_p / Σ c_p N_p, c drawn by resampling clusters."""
    n_clusters = sums.shape[0]
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        drawn = rng.integers(0, n_clusters, (rows, n_clusters))
        # how often each cluster was drawn, row by row, as one bincount over offset codes
        offsets = drawn + (np.arange(rows) * n_clusters)[:, None]
        weights = np.bincount(offsets.ravel(), minlength=rows * n_clusters).reshape(
            rows, n_clusters
        )
        replicates[start : start + rows] = (weights @ sums) / (weights @ counts)
    return replicates


def paired_difference(
    base: Sequence[float] | np.ndarray,
    tuned: Sequence[float] | np.ndarray,
    prompts: Sequence[Hashable] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 1000,
) -> PairedDifference:
    """Mean of ``tuned − base`` over the pairs where both are finite, and its interval.

    ``prompts[i]`` is the cluster of pair i (its prompt). Same inputs and seed, same interval.
    """
    base_values = np.asarray(base, dtype=np.float64).reshape(-1)
    tuned_values = np.asarray(tuned, dtype=np.float64).reshape(-1)
    keys = np.asarray(prompts).reshape(-1)
    if not base_values.shape == tuned_values.shape == keys.shape:
        raise ValueError(
            f"base, tuned and prompts must have one length, not {base_values.size}, "
            f"{tuned_values.size} and {keys.size}"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), not {level}")
    if n_boot < 1 or chunk < 1:
        raise ValueError("n_boot and chunk must be at least 1")
    complete = np.isfinite(base_values) & np.isfinite(tuned_values)
    base_values, tuned_values, keys = (
        base_values[complete],
        tuned_values[complete],
        keys[complete],
    )
    n_dropped = int((~complete).sum())
    if base_values.size == 0:
        nan = float("nan")
        return PairedDifference(nan, nan, nan, nan, nan, nan, 0, 0, n_dropped, level, n_boot)
    differences = tuned_values - base_values
    sums, counts = _cluster_totals(differences, keys)
    low = high = float("nan")
    if sums.size >= 2:
        replicates = bootstrap_ratio(sums, counts, n_boot=n_boot, seed=seed, chunk=chunk)
        alpha = (1.0 - level) / 2.0
        low, high = (float(q) for q in np.quantile(replicates, [alpha, 1.0 - alpha]))
    better = float(np.mean((differences > 0) + 0.5 * (differences == 0)))
    return PairedDifference(
        difference=float(differences.mean()),
        low=low,
        high=high,
        mean_base=float(base_values.mean()),
        mean_tuned=float(tuned_values.mean()),
        tuned_better=better,
        n_pairs=int(differences.size),
        n_prompts=int(sums.size),
        n_dropped=n_dropped,
        level=level,
        n_boot=n_boot,
    )
