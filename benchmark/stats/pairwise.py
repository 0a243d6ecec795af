"""Pairwise accuracy with ties and tie calibration (Deutsch, Foster & Freitag 2023, "Ties Matter").

A metric predicts "tie" for a pair when |m_a − m_b| ≤ ε and otherwise the sign of the
difference; acc_eq(ε) is the (weighted) share of pairs where the prediction equals the human
label in {+1 a better, −1 b better, 0 tie}. Tie calibration picks the ε that maximises acc_eq on
the data. Candidate thresholds are the distinct |differences| (plus ε = 0), so with the pairs
sorted by |difference| once, acc_eq at every candidate is one cumulative sum:

    correct(k) = Σ_{j ≤ k} w_j [label_j = 0] + Σ_{j > k} w_j [label_j = sgn(d_j)]

and the calibration is an argmax over k, for every bootstrap row at once (ε is re-calibrated in
each resample, so the interval includes the optimism of fitting ε on the same data).
Plain accuracy is the classic one on pairs that neither the humans nor the metric tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "PairDesign",
    "TieCalibratedAccuracy",
    "pairwise_accuracy_with_ties",
    "plain_pairwise_accuracy",
    "tie_calibrated_accuracy_sorted",
    "within_prompt_pairs",
]


def within_prompt_pairs(prompt: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """All unordered pairs (i, j), i < j, of units that share a prompt, vectorised.

    Units are grouped by a stable sort on prompt; a group of size g contributes g(g−1)/2 pairs.
    """
    prompt = np.asarray(prompt)
    order = np.argsort(prompt, kind="stable")
    sizes = np.bincount(prompt)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    # Loop over group *sizes* (a handful), not over prompts.
    for size in np.unique(sizes[sizes > 1]):
        group_starts = starts[sizes == size]
        a, b = np.triu_indices(size, k=1)
        firsts.append((group_starts[:, None] + a[None, :]).ravel())
        seconds.append((group_starts[:, None] + b[None, :]).ravel())
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = order[np.concatenate(firsts)]
    second = order[np.concatenate(seconds)]
    return np.minimum(first, second), np.maximum(first, second)


@dataclass(frozen=True)
class PairDesign:
    """Metric differences of a fixed set of pairs, pre-sorted by |difference| for calibration."""

    order: np.ndarray  # pairs sorted by |d|
    abs_diff_sorted: np.ndarray
    sign_sorted: np.ndarray  # sgn(d) in that order
    group_end: np.ndarray  # candidate split positions (last index of each |d| tie group)

    @classmethod
    def from_differences(cls, diff: npt.ArrayLike) -> PairDesign:
        d = np.asarray(diff, dtype=np.float64)
        if np.any(~np.isfinite(d)):
            raise ValueError("metric differences must be finite; drop pairs with missing scores")
        order = np.argsort(np.abs(d), kind="stable")
        abs_sorted = np.abs(d)[order]
        last = np.ones(len(d), bool)
        last[:-1] = abs_sorted[1:] != abs_sorted[:-1]
        return cls(order, abs_sorted, np.sign(d)[order].astype(np.int8), np.flatnonzero(last))


@dataclass(frozen=True)
class TieCalibratedAccuracy:
    accuracy: np.ndarray  # (R,) acc_eq at the calibrated ε
    epsilon: np.ndarray  # (R,) calibrated ε


def tie_calibrated_accuracy_sorted(
    design: PairDesign, label_sorted: np.ndarray, weight_sorted: np.ndarray
) -> TieCalibratedAccuracy:
    """acc_eq at the calibrated ε, per row, for labels and weights already in design order.

    correct(k) = S + Σ_{j ≤ k} w_j ([label_j = 0] − [label_j = sgn d_j]), S = Σ_j w_j [label_j =
    sgn d_j], so one cumulative sum per row scores every candidate split; k = −1 (no pair
    predicted tie beyond exact zeros, ε = 0) scores S. Exact-zero differences score the same
    under both readings, so they need no special case.
    """
    lab, w = np.broadcast_arrays(np.atleast_2d(label_sorted), np.atleast_2d(weight_sorted))
    sign = design.sign_sorted[None, :]
    gain = w * ((lab == 0).astype(np.float64) - (lab == sign))
    total = w.sum(axis=1)
    sign_total = (w * (lab == sign)).sum(axis=1)
    if lab.shape[1] == 0:
        return TieCalibratedAccuracy(np.full(len(lab), np.nan), np.zeros(len(lab)))
    cum = np.cumsum(gain, axis=1)
    ends = design.group_end
    at_ends = cum if len(ends) == lab.shape[1] else cum[:, ends]
    best = np.argmax(at_ends, axis=1)
    best_gain = at_ends[np.arange(len(best)), best]
    take_none = best_gain <= 0
    epsilon = np.where(take_none, 0.0, design.abs_diff_sorted[ends][best])
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = (sign_total + np.maximum(best_gain, 0.0)) / total
    return TieCalibratedAccuracy(accuracy, epsilon)


def pairwise_accuracy_with_ties(
    design: PairDesign, label: np.ndarray, weights: np.ndarray | None = None
) -> TieCalibratedAccuracy:
    """acc_eq with calibrated ε per row. ``label`` (+1, −1, 0) and ``weights`` are (R, K) or
    (K,) in the original pair order; weights are frequency weights (default 1)."""
    lab = np.atleast_2d(label)
    w = (
        np.ones(lab.shape)
        if weights is None
        else np.broadcast_to(np.atleast_2d(weights), lab.shape)
    )
    return tie_calibrated_accuracy_sorted(design, lab[:, design.order], w[:, design.order])


def plain_pairwise_accuracy(
    diff: npt.ArrayLike, label: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Share of pairs with the human's sign among pairs untied by humans *and* by the metric."""
    sign = np.sign(np.asarray(diff, dtype=np.float64))
    lab = np.atleast_2d(label)
    w = (
        np.ones(lab.shape)
        if weights is None
        else np.broadcast_to(np.atleast_2d(weights), lab.shape)
    )
    counted = w * ((lab != 0) & (sign[None, :] != 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counted * (lab == sign[None, :])).sum(axis=1) / counted.sum(axis=1)
