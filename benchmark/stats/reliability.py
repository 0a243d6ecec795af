"""How much humans agree with each other: the ceiling a metric is compared against.

- Leave-one-out ceiling: each annotator's ratings against the mean of the *other* annotators on
  the same faces, one correlation per annotator, averaged over annotators.
- Split-half reliability: random annotator halves, correlation of the two half-means over the
  faces both halves rated, Spearman–Brown corrected to the full panel, 2r / (1 + r).
- Krippendorff's α (ordinal, interval, nominal) from the coincidence matrix, vectorised.
- Per-annotator gold accuracy and self-consistency on repeated items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse
import scipy.stats

from benchmark.stats.correlations import pearson, spearman
from benchmark.stats.data import LikertJudgments, PairOutcome, PairwiseJudgments
from benchmark.stats.pairwise import within_prompt_pairs

__all__ = [
    "AnnotatorCeiling",
    "AnnotatorScores",
    "SplitHalf",
    "gold_accuracy",
    "krippendorff_alpha",
    "leave_one_out_ceiling",
    "pairwise_gold_accuracy",
    "pairwise_self_consistency",
    "self_consistency",
    "split_half_reliability",
]


# --- Krippendorff's α ----------------------------------------------------------------------


def krippendorff_alpha(
    unit: npt.ArrayLike,
    value: npt.ArrayLike,
    *,
    level: str = "ordinal",
    value_domain: npt.ArrayLike | None = None,
) -> float:
    """Krippendorff's α from long-form data (one row per rating of a unit).

    α = 1 − D_o / D_e with D_o = Σ_ck o_ck δ²_ck and D_e = Σ_ck e_ck δ²_ck, where the coincidence
    matrix o = Σ_u (c_u c_uᵀ − diag c_u) / (m_u − 1) over units with m_u ≥ 2 pairable values
    (c_u: value counts of unit u), n_c = Σ_k o_ck, e = (n nᵀ − diag n) / (n.. − 1), and
    δ²_ck = (Σ_{g=c}^{k} n_g − (n_c + n_k)/2)² (ordinal), (v_c − v_k)² (interval),
    [c ≠ k] (nominal). The value domain defaults to the sorted distinct values, as in the
    ``krippendorff`` package.
    """
    unit_arr = np.asarray(unit, dtype=np.int64)
    value_arr = np.asarray(value, dtype=np.float64)
    if level == "interval" and value_domain is None:
        return _interval_alpha(unit_arr, value_arr)
    domain = np.unique(value_arr) if value_domain is None else np.asarray(value_domain, float)
    index = np.searchsorted(domain, value_arr)
    outside = np.any(index >= len(domain))
    if outside or np.any(domain[np.minimum(index, len(domain) - 1)] != value_arr):
        raise ValueError("every value must be in the value domain")
    if len(domain) < 2:
        raise ValueError("Krippendorff's alpha needs at least two distinct values")
    if len(domain) > 2000:
        raise ValueError(
            f"{len(domain)} distinct values: an ordinal/nominal alpha needs a discrete scale"
        )
    n_units = int(unit_arr.max()) + 1
    counts = scipy.sparse.csr_matrix(
        (np.ones(len(unit_arr)), (unit_arr, index)), shape=(n_units, len(domain))
    )
    pairable = np.asarray(counts.sum(axis=1)).ravel()
    keep = pairable >= 2
    if not keep.any():
        raise ValueError("Krippendorff's alpha needs a unit rated at least twice")
    scale = np.where(keep, 1.0 / np.maximum(pairable - 1.0, 1.0), 0.0)
    scaled = scipy.sparse.diags(scale) @ counts
    o = (counts.T @ scaled).toarray() - np.diag(np.asarray(scaled.sum(axis=0)).ravel())
    n_c = o.sum(axis=0)
    n_total = n_c.sum()
    e = (np.outer(n_c, n_c) - np.diag(n_c)) / (n_total - 1.0)
    if level == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        lo = np.minimum.outer(np.arange(len(domain)), np.arange(len(domain)))
        hi = np.maximum.outer(np.arange(len(domain)), np.arange(len(domain)))
        between = cum[hi + 1] - cum[lo]
        delta = (between - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2
    elif level == "interval":
        delta = np.subtract.outer(domain, domain) ** 2
    elif level == "nominal":
        delta = 1.0 - np.eye(len(domain))
    else:
        raise ValueError(f"unknown level of measurement {level!r}")
    return float(1.0 - (o * delta).sum() / (e * delta).sum())


def _interval_alpha(unit: np.ndarray, value: np.ndarray) -> float:
    """Interval α without the V×V matrices, so continuous ratings cost O(n):

    Σ o δ² = Σ_u 2 m_u Σ_{i∈u} (v_i − v̄_u)² / (m_u − 1) and
    Σ e δ² = 2 n Σ_i (v_i − v̄)² / (n − 1) over the n pairable values (units with m_u ≥ 2).
    """
    m = np.bincount(unit).astype(np.float64)
    pairable = m[unit] >= 2
    unit, value = unit[pairable], value[pairable]
    if len(value) == 0:
        raise ValueError("Krippendorff's alpha needs a unit rated at least twice")
    m_u = m[unit]
    unit_mean = np.bincount(unit, value, len(m))[unit] / m_u
    observed = np.sum(2.0 * m_u * (value - unit_mean) ** 2 / (m_u - 1.0))
    n = len(value)
    expected = 2.0 * n * np.sum((value - value.mean()) ** 2) / (n - 1.0)
    if expected == 0:
        raise ValueError("Krippendorff's alpha needs at least two distinct values")
    return float(1.0 - observed / expected)


# --- leave-one-out ceiling -----------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatorCeiling:
    """Per-annotator correlation with the mean of the other annotators, (A,) each, NaN where
    an annotator has fewer than three faces that others also rated."""

    pearson: np.ndarray
    spearman: np.ndarray
    kendall: np.ndarray
    n_faces: np.ndarray

    def mean(self) -> dict[str, float]:
        return {
            name: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            for name, values in (
                ("pearson", self.pearson),
                ("spearman", self.spearman),
                ("kendall", self.kendall),
            )
        }


def _grouped_average_ranks(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Average ranks of ``value`` within each group (1-based), one sort for all groups."""
    order = np.lexsort((value, group))
    g, v = group[order], value[order]
    n = len(g)
    new_group = np.ones(n, bool)
    new_group[1:] = g[1:] != g[:-1]
    first = new_group.copy()
    first[1:] |= v[1:] != v[:-1]
    last = np.ones(n, bool)
    last[:-1] = first[1:]
    cum = np.arange(1, n + 1, dtype=np.float64)
    below = np.maximum.accumulate(np.where(first, cum - 1.0, 0.0))
    through = np.minimum.accumulate(np.where(last, cum, np.inf)[::-1])[::-1]
    group_start = np.maximum.accumulate(np.where(new_group, cum - 1.0, 0.0))
    ranks = np.empty(n)
    ranks[order] = below + (through - below + 1.0) / 2.0 - group_start
    return ranks


def _grouped_pearson(group: np.ndarray, x: np.ndarray, y: np.ndarray, n_groups: int) -> np.ndarray:
    count = np.bincount(group, minlength=n_groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = x - (np.bincount(group, x, n_groups) / count)[group]
        dy = y - (np.bincount(group, y, n_groups) / count)[group]
        sxy = np.bincount(group, dx * dy, n_groups)
        sxx = np.bincount(group, dx * dx, n_groups)
        syy = np.bincount(group, dy * dy, n_groups)
        r = sxy / np.sqrt(sxx * syy)
    r[(sxx <= 0) | (syy <= 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def leave_one_out_ceiling(
    likert: LikertJudgments, n_faces: int, n_annotators: int | None = None, min_faces: int = 3
) -> AnnotatorCeiling:
    """For each annotator a: corr over faces f they rated of (their mean rating on f, the mean
    rating of everybody else on f). Repeated ratings by one annotator are averaged first, and
    removed whole from the "others" mean (otherwise an annotator would partly predict itself)."""
    n_annotators = n_annotators or int(likert.annotator.max()) + 1
    cell, cell_index = np.unique(
        likert.annotator * np.int64(n_faces) + likert.face, return_inverse=True
    )
    cell_sum = np.bincount(cell_index, likert.rating)
    cell_count = np.bincount(cell_index).astype(np.float64)
    annotator = cell // n_faces
    face = cell % n_faces
    face_sum = np.bincount(likert.face, likert.rating, n_faces)
    face_count = np.bincount(likert.face, minlength=n_faces).astype(np.float64)
    others = face_count[face] - cell_count
    keep = others > 0
    own = (cell_sum / cell_count)[keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        rest = ((face_sum[face] - cell_sum) / others)[keep]
    annotator = annotator[keep]
    n_cells = np.bincount(annotator, minlength=n_annotators)
    enough = n_cells >= min_faces
    r_pearson = _grouped_pearson(annotator, own, rest, n_annotators)
    r_spearman = _grouped_pearson(
        annotator,
        _grouped_average_ranks(annotator, own),
        _grouped_average_ranks(annotator, rest),
        n_annotators,
    )
    # τ-b has no closed grouped form; one O(n log n) scipy call per annotator (hundreds, not
    # bootstrap rows) is cheap.
    r_kendall = np.full(n_annotators, np.nan)
    order = np.argsort(annotator, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(n_cells)])
    for a in np.flatnonzero(enough):
        rows = order[bounds[a] : bounds[a + 1]]
        if np.ptp(own[rows]) > 0 and np.ptp(rest[rows]) > 0:
            r_kendall[a] = scipy.stats.kendalltau(own[rows], rest[rows]).statistic
    for values in (r_pearson, r_spearman):
        values[~enough] = np.nan
    return AnnotatorCeiling(r_pearson, r_spearman, r_kendall, n_cells)


# --- split-half ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitHalf:
    pearson: float  # half-vs-half r, averaged over splits
    spearman: float
    pearson_spearman_brown: float  # 2r / (1 + r): reliability of the full panel's mean
    spearman_spearman_brown: float
    n_splits: int

    def as_dict(self) -> dict[str, float | int]:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def split_half_reliability(
    likert: LikertJudgments, n_faces: int, *, n_splits: int = 20, seed: int = 0
) -> SplitHalf:
    """Random annotator halves (seeded), all splits at once as one (S, A) @ (A, F) product."""
    n_annotators = int(likert.annotator.max()) + 1
    rng = np.random.default_rng(seed)
    half = np.argsort(rng.random((n_splits, n_annotators)), axis=1) < n_annotators // 2
    shape = (n_annotators, n_faces)
    sums = scipy.sparse.csr_matrix((likert.rating, (likert.annotator, likert.face)), shape=shape)
    counts = scipy.sparse.csr_matrix(
        (np.ones(len(likert)), (likert.annotator, likert.face)), shape=shape
    )
    h = half.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        first = np.asarray((sums.T @ h.T).T) / np.asarray((counts.T @ h.T).T)
        second = np.asarray((sums.T @ (1 - h).T).T) / np.asarray((counts.T @ (1 - h).T).T)
    r_p = float(np.nanmean(pearson(first, second)))
    r_s = float(np.nanmean(spearman(first, second)))
    return SplitHalf(r_p, r_s, 2 * r_p / (1 + r_p), 2 * r_s / (1 + r_s), n_splits)


# --- gold and self-consistency -------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatorScores:
    """A per-annotator share (NaN where the annotator has no such item) and its count."""

    value: np.ndarray
    count: np.ndarray
    mean_abs_difference: np.ndarray | None = None

    def as_dict(self) -> dict[str, list[float | None] | list[int]]:
        out: dict[str, list[float | None] | list[int]] = {
            "value": [float(v) if np.isfinite(v) else None for v in self.value],
            "count": [int(c) for c in self.count],
        }
        if self.mean_abs_difference is not None:
            out["mean_abs_difference"] = [
                float(v) if np.isfinite(v) else None for v in self.mean_abs_difference
            ]
        return out


def _share(annotator: np.ndarray, hit: np.ndarray, n_annotators: int) -> AnnotatorScores:
    count = np.bincount(annotator, minlength=n_annotators)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.bincount(annotator, hit.astype(np.float64), n_annotators) / count
    return AnnotatorScores(value, count)


def gold_accuracy(
    likert: LikertJudgments, *, tolerance: float = 0.0, n_annotators: int | None = None
) -> AnnotatorScores:
    """Share of an annotator's gold judgments with |rating − expected| ≤ tolerance."""
    n_annotators = n_annotators or int(likert.annotator.max()) + 1
    if likert.gold is None:
        return AnnotatorScores(np.full(n_annotators, np.nan), np.zeros(n_annotators, np.int64))
    is_gold = np.isfinite(likert.gold)
    hit = np.abs(likert.rating[is_gold] - likert.gold[is_gold]) <= tolerance
    return _share(likert.annotator[is_gold], hit, n_annotators)


def pairwise_gold_accuracy(
    pairwise: PairwiseJudgments, *, n_annotators: int | None = None
) -> AnnotatorScores:
    """Share of an annotator's gold pairwise judgments that match the expected outcome."""
    n_annotators = n_annotators or int(pairwise.annotator.max()) + 1
    if pairwise.gold is None:
        return AnnotatorScores(np.full(n_annotators, np.nan), np.zeros(n_annotators, np.int64))
    is_gold = pairwise.gold >= 0
    hit = pairwise.outcome[is_gold] == pairwise.gold[is_gold]
    return _share(pairwise.annotator[is_gold], hit, n_annotators)


def _repeat_pairs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, cell = np.unique(key, return_inverse=True)
    return within_prompt_pairs(cell)


def self_consistency(
    likert: LikertJudgments, *, tolerance: float = 0.0, n_annotators: int | None = None
) -> AnnotatorScores:
    """Over every two judgments of the same face by the same annotator: the share that agree
    within ``tolerance`` and the mean |difference|, per annotator."""
    n_annotators = n_annotators or int(likert.annotator.max()) + 1
    n_faces = int(likert.face.max()) + 1
    first, second = _repeat_pairs(likert.annotator * np.int64(n_faces) + likert.face)
    diff = np.abs(likert.rating[first] - likert.rating[second])
    who = likert.annotator[first]
    scores = _share(who, diff <= tolerance, n_annotators)
    with np.errstate(invalid="ignore", divide="ignore"):
        mad = np.bincount(who, diff, n_annotators) / scores.count
    return AnnotatorScores(scores.value, scores.count, mad)


def pairwise_self_consistency(
    pairwise: PairwiseJudgments, *, n_annotators: int | None = None
) -> AnnotatorScores:
    """Share of repeated judgments of one pair by one annotator that agree, left/right order
    normalised (the same pair may be shown swapped)."""
    n_annotators = n_annotators or int(pairwise.annotator.max()) + 1
    low = np.minimum(pairwise.left_face, pairwise.right_face)
    high = np.maximum(pairwise.left_face, pairwise.right_face)
    swapped = pairwise.left_face > pairwise.right_face
    outcome = pairwise.outcome.copy()
    flip = {PairOutcome.LEFT: PairOutcome.RIGHT, PairOutcome.RIGHT: PairOutcome.LEFT}
    for before, after in flip.items():
        outcome[swapped & (pairwise.outcome == before)] = after
    n_faces = int(high.max()) + 1
    key = (pairwise.annotator * np.int64(n_faces) + low) * np.int64(n_faces) + high
    first, second = _repeat_pairs(key)
    return _share(pairwise.annotator[first], outcome[first] == outcome[second], n_annotators)
