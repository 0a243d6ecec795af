"""Weighted, row-vectorised Pearson r, Spearman ρ and Kendall τ-b.

Every function takes ``(R, N)`` arrays (or 1-D ones, promoted to one row) and returns ``(R,)``.
Optional non-negative ``weights`` are *frequency* weights: an integer weight w means "this unit
appears w times", which is exactly what a bootstrap resample does to a unit. With integer weights
every statistic equals the unweighted one computed by scipy on the expanded data (``np.repeat``),
including the ties that duplicates create; with unit weights it equals scipy on the data itself.

Missing values: pairwise complete. A unit counts in a row only where x and y are both finite and
its weight is positive. A row with fewer than two usable units or a constant side gives NaN.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.stats

__all__ = [
    "all_pairs",
    "average_ranks",
    "kendall_tau_b",
    "kendall_tau_b_pairs",
    "pearson",
    "ranks_in_sorted_order",
    "spearman",
    "weighted_pearson_rows",
]


def _rows(values: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[None, :] if array.ndim == 1 else array


def _usable_weights(x: np.ndarray, y: np.ndarray, weights: npt.ArrayLike | None) -> np.ndarray:
    shape = np.broadcast_shapes(x.shape, y.shape)
    w = np.ones(shape) if weights is None else np.broadcast_to(_rows(weights), shape).copy()
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    w[~(np.isfinite(x) & np.isfinite(y))] = 0.0
    return w


def ranks_in_sorted_order(sorted_values: np.ndarray, sorted_weights: np.ndarray) -> np.ndarray:
    """Weighted average ranks of values already sorted along the last axis.

    rank_i = Σ_{v_j < v_i} w_j + (Σ_{v_j = v_i} w_j + 1) / 2, the mid-rank that scipy's
    ``rankdata(method="average")`` gives to unit i (and to each of its w_i copies) in the
    expanded data. Zero-weight units get a rank too; callers give them zero weight afterwards.
    """
    shape = np.broadcast_shapes(sorted_values.shape, sorted_weights.shape)
    weights = np.broadcast_to(sorted_weights, shape)
    cum = np.cumsum(weights, axis=-1)
    first = np.ones(shape, bool)
    np.not_equal(sorted_values[..., 1:], sorted_values[..., :-1], out=first[..., 1:])
    # Tie groups of all rows at once (the first unit of a row always starts a group): copy the
    # weight below each group and the weight through its end onto its members with one
    # ``repeat`` each (running max/min ufunc accumulations did the same, several times slower).
    starts = np.flatnonzero(first)
    sizes = np.diff(starts, append=first.size)
    flat_cum = cum.reshape(-1)
    below = np.repeat((flat_cum - weights.reshape(-1))[starts], sizes)
    through = np.repeat(flat_cum[starts + sizes - 1], sizes)
    return (below + (through - below + 1.0) / 2.0).reshape(shape)


def average_ranks(values: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> np.ndarray:
    """Weighted average ranks along the last axis; NaN values get NaN ranks."""
    x = _rows(values)
    w = np.ones(x.shape) if weights is None else np.broadcast_to(_rows(weights), x.shape)
    finite = np.isfinite(x)
    w = np.where(finite, w, 0.0)
    order = np.argsort(x, axis=-1)  # NaN sorts last
    sorted_ranks = ranks_in_sorted_order(
        np.take_along_axis(x, order, -1), np.take_along_axis(w, order, -1)
    )
    ranks = np.empty_like(sorted_ranks)
    np.put_along_axis(ranks, order, sorted_ranks, -1)
    ranks[~finite] = np.nan
    return ranks if np.ndim(values) > 1 else ranks[0]


def weighted_pearson_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """r = Σ w (x − x̄)(y − ȳ) / √(Σ w (x − x̄)² · Σ w (y − ȳ)²), x̄ = Σ w x / Σ w.

    ``w`` must already be zero wherever x or y is not finite. Two-pass (centre first) so that
    the result agrees with scipy to ~1e-15 rather than losing digits to cancellation.
    """
    total = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(w > 0, x, 0.0)
        y = np.where(w > 0, y, 0.0)
        dx = x - ((w * x).sum(axis=-1) / total)[..., None]
        dy = y - ((w * y).sum(axis=-1) / total)[..., None]
        wdx = w * dx
        sxy = (wdx * dy).sum(axis=-1)
        sxx = (wdx * dx).sum(axis=-1)
        syy = (w * dy * dy).sum(axis=-1)
        r = sxy / np.sqrt(sxx * syy)
    # Constant input has no correlation; scipy says NaN too.
    r[(sxx <= 0) | (syy <= 0) | ~(total > 1)] = np.nan
    return np.clip(r, -1.0, 1.0)


def pearson(x: npt.ArrayLike, y: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> np.ndarray:
    """Pearson r per row, pairwise complete, frequency-weighted."""
    xr, yr = _rows(x), _rows(y)
    xr, yr = np.broadcast_arrays(xr, yr)
    return weighted_pearson_rows(xr, yr, _usable_weights(xr, yr, weights))


def spearman(
    x: npt.ArrayLike, y: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> np.ndarray:
    """Spearman ρ per row: Pearson r of the weighted average ranks of the usable units.

    Ranks are taken among the usable units only (pairwise complete), as scipy does after
    dropping the NaN pairs.
    """
    xr, yr = np.broadcast_arrays(_rows(x), _rows(y))
    w = _usable_weights(xr, yr, weights)
    xm = np.where(w > 0, xr, np.nan)
    ym = np.where(w > 0, yr, np.nan)
    rx = np.nan_to_num(average_ranks(xm, w))
    ry = np.nan_to_num(average_ranks(ym, w))
    return weighted_pearson_rows(rx, ry, w)


def all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j), i < j, of all n(n−1)/2 unordered pairs."""
    i, j = np.triu_indices(n, k=1)
    return i.astype(np.int64), j.astype(np.int64)


def kendall_tau_b_pairs(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    chunk_pairs: int = 1 << 18,
) -> np.ndarray:
    """Kendall τ-b over a design of unit pairs, per row, frequency-weighted.

    τ_b = Σ_p w_i w_j sgn(x_i − x_j) sgn(y_i − y_j) / √(Σ_p w_i w_j [x_i≠x_j] · Σ_p w_i w_j [y_i≠y_j])

    With all pairs this is τ-b of the expanded data exactly: copies of one unit are tied on
    both sides, so they add to n₀ and to both tie counts, i.e. to neither bracket. With a random
    subset of pairs it is an incomplete U-statistic of τ-b (used for the bootstrap at scale).
    ``w`` must already be zero where x or y is missing.
    """
    numerator = np.zeros(x.shape[0])
    untied_x = np.zeros(x.shape[0])
    untied_y = np.zeros(x.shape[0])
    for start in range(0, len(first), chunk_pairs):
        a, b = first[start : start + chunk_pairs], second[start : start + chunk_pairs]
        pair_w = w[:, a] * w[:, b]
        with np.errstate(invalid="ignore"):
            sx = np.sign(x[:, a] - x[:, b])
            sy = np.sign(y[:, a] - y[:, b])
        # NaN differences only occur where the pair weight is already zero.
        sx = np.nan_to_num(sx)
        sy = np.nan_to_num(sy)
        numerator += (pair_w * sx * sy).sum(axis=-1)
        untied_x += (pair_w * np.abs(sx)).sum(axis=-1)
        untied_y += (pair_w * np.abs(sy)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = numerator / np.sqrt(untied_x * untied_y)
    tau[(untied_x <= 0) | (untied_y <= 0)] = np.nan
    return np.clip(tau, -1.0, 1.0)


def kendall_tau_b(
    x: npt.ArrayLike, y: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> np.ndarray:
    """Kendall τ-b per row, pairwise complete, frequency-weighted.

    Unweighted rows with many units go to scipy's O(n log n) ``kendalltau`` (same number);
    weighted or small rows use the all-pairs sign products, O(n²) per row.
    """
    xr, yr = np.broadcast_arrays(_rows(x), _rows(y))
    w = _usable_weights(xr, yr, weights)
    n = xr.shape[-1]
    if weights is None and n > 2000:
        out = np.empty(xr.shape[0])
        for row in range(xr.shape[0]):
            keep = w[row] > 0
            out[row] = (
                scipy.stats.kendalltau(xr[row, keep], yr[row, keep], variant="b").statistic
                if keep.sum() > 1
                else np.nan
            )
        return out
    first, second = all_pairs(n)
    return kendall_tau_b_pairs(np.nan_to_num(xr), np.nan_to_num(yr), w, first, second)
