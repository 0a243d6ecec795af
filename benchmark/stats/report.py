"""``alignment_report``: every number a report page shows, with two-way cluster bootstrap CIs.

Algorithm (one pass per block of resamples; the point estimate is the block whose only row
draws every prompt and every annotator once, so points and replicates share one code path):

1. Draw prompt counts (B, P) and annotator counts (B, A) from one seeded stream.
2. Human mean per face in each resample, h = (W_a R) / (W_a N), with R, N the (A, F) rating-sum
   and count tables: one matrix product per block of 64 resamples (float32 when that is
   exact: integer ratings and small sums; float64 otherwise).
3. Face weight = count of its prompt (zero if no drawn annotator rated it); image level: the
   mean of its faces' means, weight = count of its prompt.
4. Per level and metric, frequency-weighted (so a replicate equals scipy on the materialised
   resample): Pearson from weighted moments, all metrics in a few matrix products; Spearman
   from weighted mid-ranks (one sort of h per row shared by all metrics; the metric's order
   never changes, so its ranks are a running sum of prompt counts); Kendall τ-b over a pair
   design — all pairs when there are at most ``kendall_max_pairs``, otherwise a fixed seeded
   sample of pairs (an incomplete U-statistic) whose extra spread is removed with the
   covariance of its two halves (``_design_corrected``); the point τ-b is always exact.
5. Pairwise accuracy with tie calibration on within-prompt face pairs (labels from h) and on
   the pairwise campaign (labels from judgments; weight = prompt count × annotator count).
6. DM level: human mean per DM and Bradley–Terry-with-ties strengths from the campaign, against
   each metric's mean per DM (Spearman and Kendall across DMs).
7. Human ceiling (leave-one-out per annotator; CI by resampling annotators), split-half,
   Krippendorff's α, gold accuracy and self-consistency.
8. Intervals: replicate percentiles centred on the point estimate (``bootstrap.interval``
   says why), and for every column the interval of each metric-minus-metric difference.

Blocks run in this process, or with ``workers`` > 1 in forked worker processes (one BLAS
thread each) while this process computes the point estimates and step 7.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse
import scipy.stats

from benchmark.stats.bootstrap import Interval, ResampleCounts, interval, iter_resample_counts
from benchmark.stats.bradley_terry import fit_bradley_terry
from benchmark.stats.correlations import (
    all_pairs,
    kendall_tau_b,
    ranks_in_sorted_order,
    spearman,
)
from benchmark.stats.data import Faces, LikertJudgments, PairwiseJudgments
from benchmark.stats.pairwise import (
    PairDesign,
    tie_calibrated_accuracy_sorted,
    within_prompt_pairs,
)
from benchmark.stats.reliability import (
    gold_accuracy,
    krippendorff_alpha,
    leave_one_out_ceiling,
    pairwise_gold_accuracy,
    pairwise_self_consistency,
    self_consistency,
    split_half_reliability,
)

__all__ = ["alignment_report"]

CORRELATIONS = ("spearman", "kendall", "pearson")
Results = dict[tuple[str, ...], np.ndarray]


# --- small array helpers -------------------------------------------------------------------


def _take(matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """matrix[r, columns] (1-D columns) or matrix[r, columns[r]] (2-D), row by row.

    One contiguous 1-D ``take`` per row is 3–4× faster than fancy indexing on the second axis
    or a flat take with row offsets (no index arithmetic, the source row stays in cache).
    """
    out = np.empty((matrix.shape[0], columns.shape[-1]), matrix.dtype)
    for row in range(matrix.shape[0]):
        index = columns if columns.ndim == 1 else columns[row]
        matrix[row].take(index, out=out[row])
    return out


def _put(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Inverse of ``_take`` for per-row permutations: out[r, columns[r]] = values[r]."""
    out = np.empty_like(values)
    for row in range(values.shape[0]):
        out[row, columns[row]] = values[row]
    return out


def _argsort_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row argsort and sorted values of a NaN-free float64 matrix.

    Sorts the float32 keys of the values with two stable counting-sort passes over their
    16-bit halves (numpy's radix sort for 16-bit keys), low half first: the order of
    (key, index), ~1.5× faster than ``argsort`` on float64 or a sort of (key, index) packed
    into uint64. float32 rounding is monotone, so that order is exact except among values
    that share a float32 key; the float64 values are checked afterwards and a row out of
    order is repaired by a stable sort of its (nearly sorted) values, a linear-time merge
    pass. Means of means (the image level) often share a key with a 1-ulp neighbour, so
    repairs are common there and must stay cheap. The order among equal values may differ
    from ``argsort``'s; the mid-ranks built on it do not.
    """
    bits = values.astype(np.float32).view(np.uint32)
    # IEEE order to unsigned order: flip every bit of negatives, set the sign bit of the rest.
    key = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    by_low = np.argsort((key & np.uint32(0xFFFF)).astype(np.uint16), axis=1, kind="stable")
    high = _take((key >> np.uint32(16)).astype(np.uint16), by_low)
    order = _take(by_low, np.argsort(high, axis=1, kind="stable"))
    ordered = _take(values, order)
    for row in np.flatnonzero(np.any(ordered[:, 1:] < ordered[:, :-1], axis=1)):
        repair = np.argsort(ordered[row], kind="stable")
        order[row] = order[row, repair]
        ordered[row] = ordered[row, repair]
    return order, ordered


def _row_dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y)


# --- precomputed, resample-independent structure ------------------------------------------


@dataclass
class _Level:
    """Units (faces or images) with their prompt and metric values, and the fixed designs."""

    name: str
    prompt: np.ndarray
    metric: np.ndarray  # (M, N), NaN = missing
    finite: np.ndarray  # (M, N)
    order: np.ndarray  # (M, N) argsort of each metric (NaN last)
    metric_sorted: np.ndarray  # (M, N)
    metric_filled: np.ndarray  # (M, N), 0 where missing (those units get weight 0)
    metric_has_ties: np.ndarray  # (M,) bool
    prompt_sorted: np.ndarray  # (M, N) prompt of each unit in each metric's order
    finite_t: np.ndarray  # (N, M) float: 1 where the metric has a value
    centred_t: np.ndarray  # (N, M) metric minus its mean, 0 where missing
    mask_group: np.ndarray  # (M,) metrics with identical missing patterns share human ranks
    pair_first: np.ndarray
    pair_second: np.ndarray
    pair_sign: np.ndarray  # (K, M) sgn(m_a − m_b), 0 where either is missing
    pair_valid: np.ndarray  # (K, M)
    # The same three design matrices in float32 (|sign| too): exact, and half the traffic.
    pair_matrices_32: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False)
    exhaustive_pairs: bool
    pair_prompts: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.pair_matrices_32 = (
            self.pair_sign.astype(np.float32),
            np.abs(self.pair_sign).astype(np.float32),
            self.pair_valid.astype(np.float32),
        )

    @classmethod
    def build(
        cls,
        name: str,
        prompt: np.ndarray,
        metric: np.ndarray,
        *,
        kendall_max_pairs: int,
        rng: np.random.Generator,
    ) -> _Level:
        n = metric.shape[1]
        finite = np.isfinite(metric)
        order = np.argsort(metric, axis=1)
        metric_sorted = np.take_along_axis(metric, order, axis=1)
        patterns: dict[bytes, int] = {}
        mask_group = np.array([patterns.setdefault(row.tobytes(), len(patterns)) for row in finite])
        if n * (n - 1) // 2 <= kendall_max_pairs:
            first, second = all_pairs(n)
            exhaustive = True
        else:
            first = rng.integers(0, n, kendall_max_pairs)
            second = rng.integers(0, n - 1, kendall_max_pairs)
            second += second >= first  # uniform over j ≠ i
            exhaustive = False
            # The halves must be random subsets of the design (their covariance estimates
            # the complete statistic's variance); draw them, then sort the pairs by their
            # first unit so that half of the per-resample gathers read memory in order.
            in_first_half = np.arange(kendall_max_pairs) < kendall_max_pairs // 2
            by_first = np.argsort(first, kind="stable")
            first, second, in_first_half = (
                first[by_first],
                second[by_first],
                in_first_half[by_first],
            )
        with np.errstate(invalid="ignore"):
            centred = np.where(finite, metric - np.nanmean(metric, axis=1, keepdims=True), 0.0)
        has_ties = np.array(
            [np.any(np.diff(row[np.isfinite(row)]) == 0) for row in metric_sorted], bool
        )
        valid = (finite[:, first] & finite[:, second]).T.astype(np.float64)
        with np.errstate(invalid="ignore"):
            sign = np.nan_to_num(np.sign(metric[:, first] - metric[:, second])).T * valid
        if not exhaustive:
            # Two halves of the design side by side: (K, 2M), zero outside each half.
            half = in_first_half[:, None]
            sign = np.concatenate([sign * half, sign * ~half], axis=1)
            valid = np.concatenate([valid * half, valid * ~half], axis=1)
        return cls(
            name,
            prompt,
            metric,
            finite,
            order,
            metric_sorted,
            np.where(finite, metric, 0.0),
            has_ties,
            prompt[order],
            finite.T.astype(np.float64),
            centred.T.copy(),
            mask_group,
            first,
            second,
            sign * valid,
            valid.astype(np.float64),
            exhaustive,
            (prompt[first], prompt[second]),
        )


@dataclass
class _Campaign:
    """Pairwise judgments with per-metric tie-calibration designs."""

    prompt: np.ndarray  # (J,)
    annotator: np.ndarray  # (J,)
    label: np.ndarray  # (J,) +1 / −1 / 0
    designs: list[PairDesign | None]
    design_rows: list[np.ndarray]  # judgment indices in each design's sorted order
    plain_hits: np.ndarray  # (J, M)
    plain_counted: np.ndarray  # (J, M)
    cells: scipy.sparse.csr_matrix  # (J, 2·K·K) one-hot: win (i, j) or tie (i, j)
    n_dms: int


@dataclass
class _LikertPairs:
    """Within-prompt face pairs of different images, for accuracy from likert means.

    Pairs are kept in one canonical order (the human labels are computed once per resample);
    each metric has the canonical indices of its scored pairs sorted by |difference|.
    """

    first: np.ndarray  # (K,)
    second: np.ndarray
    prompt: np.ndarray
    valid: np.ndarray  # (K, M) 1 where both faces have the metric
    sign: np.ndarray  # (K, M) sgn(m_a − m_b), 0 where not valid
    sorted_index: list[np.ndarray]
    designs: list[PairDesign | None]
    gain_index: list[np.ndarray]  # per metric: (sgn d + 1)·K + canonical index, in |d| order
    signs_used: frozenset[float]
    # (K, 2M) [valid | sgn d ≠ 0] in float64 and float32, and its sums over the pairs of each
    # prompt (P, 2M): the label-free totals of a resample are then a (rows, P) product.
    scored_columns: dict[type, np.ndarray]
    prompt_scored: np.ndarray


@dataclass
class _Plan:
    faces: Faces
    n_annotators: int
    metric_names: list[str]
    face_level: _Level
    image_level: _Level
    face_to_image: scipy.sparse.csr_matrix  # (I, F)
    image_prompt: np.ndarray
    dm_onehot: np.ndarray  # (F, K)
    prompt_dm_metric: np.ndarray  # (P, 2·M·K) per prompt: Σ metric, then count, per (metric, DM)
    likert_sums: np.ndarray | scipy.sparse.csr_matrix | None = None  # (A, F)
    likert_counts: np.ndarray | scipy.sparse.csr_matrix | None = None
    likert_exact_float32: bool = False
    likert_rating_bound: float = 0.0
    likert_face_count_max: float = 0.0
    likert_pairs: _LikertPairs | None = None
    campaign: _Campaign | None = None
    ceiling_values: dict[str, np.ndarray] = field(default_factory=dict)


def _build_likert_tables(plan: _Plan, likert: LikertJudgments) -> None:
    a, f = plan.n_annotators, plan.faces.n_faces
    sums = scipy.sparse.csr_matrix((likert.rating, (likert.annotator, likert.face)), shape=(a, f))
    counts = scipy.sparse.csr_matrix(
        (np.ones(len(likert)), (likert.annotator, likert.face)), shape=(a, f)
    )
    integer = bool(np.all(likert.rating == np.round(likert.rating)))
    plan.likert_exact_float32 = integer
    # Each face is rated by a few of many annotators: the sparse product does nnz
    # multiply-adds per resample against A·F for dense BLAS, and wins below ~20% density
    # (measured 6× faster at 4%). Dense for small, well-filled tables.
    if sums.nnz < 0.2 * a * f or a * f > 60_000_000:
        # (2F, A) CSR: sums on top of counts, one sparse × dense product per block.
        plan.likert_sums = scipy.sparse.vstack([sums.T, counts.T]).tocsr()
        plan.likert_counts = None
    else:
        dtype = np.float32 if integer else np.float64
        plan.likert_sums = sums.toarray().astype(dtype)
        plan.likert_counts = counts.toarray().astype(dtype)
    plan.likert_rating_bound = float(np.abs(likert.rating).max()) if len(likert) else 0.0
    plan.likert_face_count_max = float(counts.sum(axis=0).max()) if len(likert) else 0.0


def _build_likert_pairs(plan: _Plan) -> _LikertPairs:
    faces = plan.faces
    first, second = within_prompt_pairs(faces.prompt)
    different = faces.image[first] != faces.image[second]
    first, second = first[different], second[different]
    metric = plan.face_level.metric
    valid = np.isfinite(metric[:, first]) & np.isfinite(metric[:, second])  # (M, K)
    with np.errstate(invalid="ignore"):
        diff = metric[:, first] - metric[:, second]
    sorted_index: list[np.ndarray] = []
    designs: list[PairDesign | None] = []
    for m in range(len(plan.metric_names)):
        scored = np.flatnonzero(valid[m])
        design = PairDesign.from_differences(diff[m, scored]) if len(scored) else None
        designs.append(design)
        sorted_index.append(scored[design.order] if design else scored)
    sign = np.where(valid, np.sign(np.where(valid, diff, 0.0)), 0.0)
    gain_index = [
        ((sign[m, index] + 1).astype(np.int64) * len(first) + index)
        for m, index in enumerate(sorted_index)
    ]
    signs_used = frozenset(
        float(v) for m, index in enumerate(sorted_index) for v in np.unique(sign[m, index])
    )
    scored = np.concatenate([valid, sign != 0]).T.astype(np.float64)  # (K, 2M)
    prompt_scored = np.zeros((faces.n_prompts, 2 * len(plan.metric_names)))
    np.add.at(prompt_scored, faces.prompt[first], scored)
    return _LikertPairs(
        first,
        second,
        faces.prompt[first],
        valid.T.astype(np.float64),
        sign.T.copy(),
        sorted_index,
        designs,
        gain_index,
        signs_used,
        {np.float64: scored, np.float32: scored.astype(np.float32)},
        prompt_scored,
    )


def _build_campaign(plan: _Plan, pairwise: PairwiseJudgments) -> _Campaign:
    faces = plan.faces
    label = pairwise.human_label()
    metric = plan.face_level.metric
    diffs = metric[:, pairwise.left_face] - metric[:, pairwise.right_face]  # (M, J)
    designs: list[PairDesign | None] = []
    rows: list[np.ndarray] = []
    n_metrics = len(plan.metric_names)
    plain_hits = np.zeros((len(pairwise), n_metrics))
    plain_counted = np.zeros((len(pairwise), n_metrics))
    for m in range(n_metrics):
        keep = np.flatnonzero(np.isfinite(diffs[m]))
        design = PairDesign.from_differences(diffs[m, keep]) if len(keep) else None
        designs.append(design)
        rows.append(keep[design.order] if design else keep)
        sign = np.sign(np.nan_to_num(diffs[m]))
        counted = np.isfinite(diffs[m]) & (label != 0) & (sign != 0)
        plain_counted[:, m] = counted
        plain_hits[:, m] = counted & (label == sign)
    k = faces.n_dms
    dm_left, dm_right = faces.dm[pairwise.left_face], faces.dm[pairwise.right_face]
    winner = np.where(label >= 0, dm_left, dm_right)
    loser = np.where(label >= 0, dm_right, dm_left)
    tie = label == 0
    cell = np.where(tie, k * k, 0) + winner * k + loser
    cells = scipy.sparse.csr_matrix(
        (np.ones(len(pairwise)), (np.arange(len(pairwise)), cell)), shape=(len(pairwise), 2 * k * k)
    )
    return _Campaign(
        faces.prompt[pairwise.left_face],
        pairwise.annotator,
        label,
        designs,
        rows,
        plain_hits,
        plain_counted,
        cells,
        k,
    )


# --- the per-block computation -------------------------------------------------------------


def _human_face_means(plan: _Plan, counts: ResampleCounts) -> np.ndarray:
    """h[b, f] = Σ_a w_ba s_af / Σ_a w_ba n_af, NaN (0/0) where no drawn annotator rated f."""
    weights = counts.annotator
    sums, cnts = plan.likert_sums, plan.likert_counts
    assert sums is not None
    if isinstance(sums, np.ndarray) and isinstance(cnts, np.ndarray):
        exact = (
            plan.likert_exact_float32
            and weights.max() * plan.likert_face_count_max * max(plan.likert_rating_bound, 1.0)
            < 2**24
        )
        dtype = np.float32 if exact else np.float64
        w = weights.astype(dtype)
        num = (w @ sums.astype(dtype, copy=False)).astype(np.float64)
        den = (w @ cnts.astype(dtype, copy=False)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / den
    # Divide in the product's (2F, rows) layout, then transpose once: half the passes over
    # the widest array of the block. A face no drawn annotator rated has num = den = 0, and
    # 0/0 is the NaN it needs.
    both = sums @ np.ascontiguousarray(weights.T)  # (2F, rows)
    n_faces = plan.faces.n_faces
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.ascontiguousarray((both[:n_faces] / both[n_faces:]).T)


def _rho(s_mh: np.ndarray, s_mm: np.ndarray, s_hh: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        value = s_mh / np.sqrt(s_mm * s_hh)
    value[~((s_mm > 0) & (s_hh > 0) & (total > 1))] = np.nan
    return np.clip(value, -1.0, 1.0)


@dataclass
class _UntiedSpearmanTerms:
    """The parts of ``_spearman_untied_prompt_weights`` that every metric of a level shares."""

    total: np.ndarray  # W = Σ w per row
    centre: np.ndarray  # W(W+1)²/4
    s_mm: np.ndarray  # Σ w r² of the metric ranks (the same for every untied metric)
    cross_offset: np.ndarray  # ½ (Σ w² h − W(W+1)/2)

    @classmethod
    def build(cls, weight: np.ndarray, weighted_rank_h: np.ndarray) -> _UntiedSpearmanTerms:
        total = weight.sum(axis=1)
        s_mm = total * (total + 1.0) * (2.0 * total + 1.0) / 6.0
        # w³ by two multiplications: ``weight**3`` goes through pow(), several times slower.
        s_mm -= ((weight * weight * weight).sum(axis=1) - total) / 12.0
        return cls(
            total,
            total * (total + 1.0) ** 2 / 4.0,
            s_mm,
            0.5 * (_row_dot(weight, weighted_rank_h) - total * (total + 1.0) / 2.0),
        )


def _spearman_untied_prompt_weights(
    level: _Level,
    m: int,
    small_counts: np.ndarray,
    weighted_rank_h: np.ndarray,
    s_hh: np.ndarray,
    terms: _UntiedSpearmanTerms,
) -> np.ndarray:
    """ρ of metric m when its values are untied and every unit's weight is its prompt count.

    In the metric's order the mid-rank of unit i is r_i = C_i − (w_i − 1)/2, C the running sum
    of the weights (an int8 → int32 cumsum, vectorised, from the L1-resident prompt counts).
    Then, with W = Σ w and everything else shared by all metrics of the level (``terms``),
      Σ w r² = W(W+1)(2W+1)/6 − Σ (w³ − w)/12              (copies of a unit tie together)
      Σ w r h = Σ_j (w h)_j C_j − ½ (Σ w² h − W(W+1)/2)    (h: the human mid-ranks)
    so a metric costs one gather of (w h), one running sum and one dot product.
    """
    counts_sorted = _take(small_counts, level.prompt_sorted[m])
    running = np.cumsum(counts_sorted, axis=1, dtype=np.int32)
    cross = np.einsum("ij,ij->i", _take(weighted_rank_h, level.order[m]), running)
    cross -= terms.cross_offset
    centre = terms.centre
    return _rho(cross - centre, terms.s_mm - centre, s_hh - centre, terms.total)


def _correlations(
    level: _Level,
    human: np.ndarray,
    weight: np.ndarray,
    prompt_counts: np.ndarray,
    out: Results,
) -> np.ndarray:
    """Spearman, Kendall (pair design) and Pearson of every metric against ``human``, per row.

    Pearson for all metrics at once from six (rows, N) @ (N, M) products of weighted moments;
    pairwise completeness enters through the (N, M) 0/1 "metric has a value" matrix. Both
    sides are centred first (the metric by its mean, the human side by its row mean), so the
    one-pass moment formula loses no digits.
    Spearman: ranks of the human side need one sort per row (shared by metrics with the same
    missing pattern); the metric's order never changes, so its weighted mid-ranks are a
    cumulative sum in that order. Σ_i w_i r_i = W(W+1)/2 for mid-ranks of total weight W, so
    ρ = (Σ w r s − W(W+1)²/4) / √((Σ w r² − W(W+1)²/4)(Σ w s² − W(W+1)²/4)).

    Returns the human side's comparison key (see ``_comparison_key``) for the pair labels.
    """
    rows = human.shape[0]
    n_metrics = level.metric.shape[0]
    valid = np.isfinite(human)
    all_valid = bool(valid.all())
    small_counts = (
        prompt_counts.astype(np.int8)
        if prompt_counts.max(initial=0) <= 127 and human.shape[1] * 127 < 2**31
        else None
    )
    base = np.where(valid, weight, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        row_mean = np.where(valid, human, 0.0).sum(axis=1) / valid.sum(axis=1)
    centred = np.where(valid, human - np.nan_to_num(row_mean)[:, None], 0.0)
    wx = base * centred
    s_w = base @ level.finite_t
    s_x = wx @ level.finite_t
    s_xx = (wx * centred) @ level.finite_t
    s_y = base @ level.centred_t
    s_yy = base @ (level.centred_t**2)
    s_xy = wx @ level.centred_t
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = s_xy - s_x * s_y / s_w
        var_x = s_xx - s_x**2 / s_w
        var_y = s_yy - s_y**2 / s_w
        r = cov / np.sqrt(var_x * var_y)
    r[~((var_x > 0) & (var_y > 0) & (s_w > 1))] = np.nan
    out[(level.name, "pearson")] = np.clip(r, -1.0, 1.0).T

    order_h, human_sorted = _argsort_rows(np.where(valid, human, np.inf))
    ranks_h: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    untied_terms: dict[int, _UntiedSpearmanTerms] = {}
    rho = np.full((n_metrics, rows), np.nan)
    for m in range(n_metrics):
        group = int(level.mask_group[m])
        w = base * level.finite[m] if not level.finite[m].all() else base
        if group not in ranks_h:
            rank = _put(ranks_in_sorted_order(human_sorted, _take(w, order_h)), order_h)
            weighted = w * rank
            ranks_h[group] = (rank, weighted, _row_dot(weighted, rank))
        rank_h, weighted_rank_h, s_hh = ranks_h[group]
        if (
            all_valid
            and level.finite[m].all()
            and not level.metric_has_ties[m]
            and small_counts is not None
        ):
            if group not in untied_terms:
                untied_terms[group] = _UntiedSpearmanTerms.build(base, weighted_rank_h)
            rho[m] = _spearman_untied_prompt_weights(
                level, m, small_counts, weighted_rank_h, s_hh, untied_terms[group]
            )
            continue
        w_sorted = _take(w, level.order[m])
        if level.metric_has_ties[m]:
            rank_m = ranks_in_sorted_order(level.metric_sorted[m][None, :], w_sorted)
        else:
            # No ties between units: only the copies of one unit tie with each other.
            rank_m = np.cumsum(w_sorted, axis=1)
            rank_m -= (w_sorted - 1.0) / 2.0
        total = w_sorted.sum(axis=1)
        weighted_rank = w_sorted * rank_m
        centre = total * (total + 1.0) ** 2 / 4.0
        s_mm = _row_dot(weighted_rank, rank_m) - centre
        s_mh = _row_dot(weighted_rank, _take(rank_h, level.order[m])) - centre
        rho[m] = _rho(s_mh, s_mm, s_hh - centre, total)
    out[(level.name, "spearman")] = rho
    filled = np.where(valid, human, 0.0)
    # With every metric missing somewhere no ranks were weighted by ``base`` alone.
    full_group = next((g for m, g in enumerate(level.mask_group) if level.finite[m].all()), None)
    key = _comparison_key(filled, None if full_group is None else ranks_h[int(full_group)][0])

    # τ-b for all metrics at once: three (rows, K) @ (K, M) products.
    # A sampled design is split into two halves (columns M.. of the sign matrices hold the
    # second half) whose replicate covariance corrects the interval, see _kendall_replicates.
    a, b = level.pair_first, level.pair_second
    # Pair weights are products of two integer weights, and the sums below are exact in
    # float32 while they stay under 2²⁴ (then the τ-b are the float64 ones to the last bit):
    # float32 halves the traffic of the widest arrays of the level.
    weights_of_units = prompt_counts if all_valid else base
    exact32 = weights_of_units.max(initial=0.0) ** 2 * max(len(a), 1) < 2**24
    dtype = np.float32 if exact32 else np.float64
    if all_valid:
        # Both weights are prompt counts: gather from the short (rows, P) table.
        counts = prompt_counts.astype(dtype)
        pair_w = _take(counts, level.pair_prompts[0])
        pair_w *= _take(counts, level.pair_prompts[1])
    else:
        units = base.astype(dtype)
        pair_w = _take(units, a)
        pair_w *= _take(units, b)
    weighted_sign = np.sign(_take(key, a) - _take(key, b)).astype(dtype, copy=False)
    weighted_sign *= pair_w
    if exact32:
        sign_m, abs_sign_m, valid_m = level.pair_matrices_32
    else:
        sign_m, abs_sign_m, valid_m = level.pair_sign, np.abs(level.pair_sign), level.pair_valid
    numerator = (weighted_sign @ sign_m).astype(np.float64, copy=False)
    untied_m = (pair_w @ abs_sign_m).astype(np.float64, copy=False)
    untied_h = (np.abs(weighted_sign) @ valid_m).astype(np.float64, copy=False)
    parts = [(numerator, untied_m, untied_h)]
    if not level.exhaustive_pairs:
        m = n_metrics
        parts = [
            (
                numerator[:, :m] + numerator[:, m:],
                untied_m[:, :m] + untied_m[:, m:],
                untied_h[:, :m] + untied_h[:, m:],
            ),
            (numerator[:, :m], untied_m[:, :m], untied_h[:, :m]),
            (numerator[:, m:], untied_m[:, m:], untied_h[:, m:]),
        ]
    for name, (num, um, uh) in zip(
        ("kendall_design", "kendall_half_a", "kendall_half_b"), parts, strict=False
    ):
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = num / np.sqrt(um * uh)
        tau[~((um > 0) & (uh > 0))] = np.nan
        out[(level.name, name)] = np.clip(tau, -1, 1).T
    return key


def _comparison_key(filled: np.ndarray, base_ranks: np.ndarray | None) -> np.ndarray:
    """What the pair statistics compare instead of the human values: the mid-ranks weighted
    by the units' own weights, in float32, when those are exact.

    Between two units of positive weight, mid-ranks order and tie exactly as the values do,
    and a pair with a unit of zero weight has zero weight itself, so every pair statistic is
    unchanged; the float32 gathers of the (rows, K) pair arrays move half the bytes. Mid-ranks
    are multiples of ½, exact in float32 below 2²³; beyond, or without such ranks, the
    float64 values.
    """
    if base_ranks is None or base_ranks.max(initial=0.0) >= 2**23:
        return filled
    return base_ranks.astype(np.float32)


def _likert_pair_accuracy(
    plan: _Plan, human: np.ndarray, key: np.ndarray, prompt_counts: np.ndarray, out: Results
) -> None:
    """Tie-calibrated and plain accuracy on within-prompt pairs, labels from the human means
    (compared through ``key``, their face-level comparison key, see ``_comparison_key``).

    Labels and pair weights are computed once in canonical order; each metric then needs one
    gather of its gains, one cumulative sum and a max. Sums of integer weights are exact in
    float32 below 2²⁴, which halves the memory traffic of the widest arrays of the report.
    """
    pairs = plan.likert_pairs
    assert pairs is not None
    n_metrics, rows = len(plan.metric_names), human.shape[0]
    valid = np.isfinite(human)
    all_valid = bool(valid.all())
    weight = _take(prompt_counts, pairs.prompt)
    if not all_valid:
        weight *= _take(valid, pairs.first) & _take(valid, pairs.second)
    k = len(pairs.first)
    exact32 = weight.max(initial=0.0) * max(k, 1) < 2**24
    dtype = np.float32 if exact32 else np.float64
    weight = weight.astype(dtype)
    # Human labels from exact comparisons (never of a rounded copy of the means: ties stay
    # ties): a better (+1), b better (−1), or tied.
    first_h, second_h = _take(key, pairs.first), _take(key, pairs.second)
    tie_weight = weight * (first_h == second_h)
    # gain_j = w_j ([label_j = 0] − [label_j = sgn d_j]) (see tie_calibrated_accuracy_sorted)
    # depends on the metric only through sgn d_j ∈ {−1, 0, 1}: build the gains for each sign
    # once, side by side, and let each metric gather its own in |d| order with one take.
    # Pair weights are prompt counts, small integers: int8 gains make the per-metric gather
    # and running sum several times cheaper (an int8 → int32 cumsum is vectorised; a float
    # one is bound by the latency of each addition).
    small = weight.max(initial=0.0) <= 127
    gain_dtype = np.int8 if small else dtype
    gains = np.empty((rows, 3 * k), gain_dtype)
    weight_g, tie_g = weight.astype(gain_dtype), tie_weight.astype(gain_dtype)
    for slot, (sign, same_sign) in enumerate(
        ((-1.0, first_h < second_h), (0.0, None), (1.0, first_h > second_h))
    ):
        if sign in pairs.signs_used:
            part = gains[:, slot * k : (slot + 1) * k]
            if same_sign is None:
                part.fill(0)  # a human tie scores a metric tie either way
            else:
                np.multiply(weight_g, same_sign, out=part)
                np.subtract(tie_g, part, out=part)
    # Totals over each metric's scored pairs (columns: valid, sgn d ≠ 0), all integer sums,
    # exact in either dtype. Only the human-tied weight needs a product over pairs; all pair
    # weights are prompt counts when every face has a mean, so their totals are per prompt.
    # The sign-agreeing weight ("hits") is the tied weight minus the gains' sum, below.
    columns = pairs.scored_columns[dtype]
    tie_sums = (tie_weight @ columns).T.astype(np.float64)  # (2M, rows)
    if all_valid:
        weight_sums = (prompt_counts @ pairs.prompt_scored).T
    else:
        weight_sums = (weight @ columns).T.astype(np.float64)
    total, tie_total = weight_sums[:n_metrics], tie_sums[:n_metrics]
    counted = weight_sums[n_metrics:] - tie_sums[n_metrics:]
    hits = tie_sums[n_metrics:].copy()
    acc = np.full((n_metrics, rows), np.nan)
    eps = np.full((n_metrics, rows), np.nan)
    for m, design in enumerate(pairs.designs):
        if design is None:
            continue
        cum = np.cumsum(
            _take(gains, pairs.gain_index[m]), axis=1, dtype=np.int32 if small else None
        )
        ends = design.group_end
        at_ends = cum if len(ends) == cum.shape[1] else cum[:, ends]
        best = np.argmax(at_ends, axis=1)
        best_gain = at_ends[np.arange(rows), best]
        sign_total = tie_total[m] - cum[:, -1]
        hits[m] -= cum[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            acc[m] = (sign_total + np.maximum(best_gain, 0.0)) / total[m]
        eps[m] = np.where(best_gain > 0, design.abs_diff_sorted[ends][best], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        plain = hits / counted
    out[("likert_pairs", "accuracy_with_ties")] = acc
    out[("likert_pairs", "epsilon")] = eps
    out[("likert_pairs", "accuracy_without_ties")] = plain


def _campaign_statistics(
    plan: _Plan, counts: ResampleCounts, metric_dm: np.ndarray, out: Results
) -> None:
    campaign = plan.campaign
    assert campaign is not None
    weight = _take(counts.prompt, campaign.prompt) * _take(counts.annotator, campaign.annotator)
    n_metrics, rows = len(plan.metric_names), weight.shape[0]
    acc = np.full((n_metrics, rows), np.nan)
    eps = np.full((n_metrics, rows), np.nan)
    for m, design in enumerate(campaign.designs):
        if design is None:
            continue
        sorted_rows = campaign.design_rows[m]
        result = tie_calibrated_accuracy_sorted(
            design, campaign.label[sorted_rows][None, :], _take(weight, sorted_rows)
        )
        acc[m], eps[m] = result.accuracy, result.epsilon
    with np.errstate(invalid="ignore", divide="ignore"):
        plain = (weight @ campaign.plain_hits) / (weight @ campaign.plain_counted)
    out[("campaign", "accuracy_with_ties")] = acc
    out[("campaign", "epsilon")] = eps
    out[("campaign", "accuracy_without_ties")] = plain.T
    k = campaign.n_dms
    table = np.asarray((campaign.cells.T @ weight.T).T).reshape(rows, 2, k, k)
    fit = fit_bradley_terry(table[:, 0], table[:, 1])
    out[("bt", "log_strength")] = fit.log_strength.T
    out[("bt", "log_tie")] = fit.log_tie[None, :]
    _dm_agreement(fit.log_strength, metric_dm, "bt_agreement", out)


def _dm_agreement(human_dm: np.ndarray, metric_dm: np.ndarray, name: str, out: Results) -> None:
    """Spearman and Kendall across DMs between the human and each metric's DM scores.

    All metrics in one call of each (rows of a few DMs: the per-call overhead is the cost).
    """
    n_metrics, rows, k = metric_dm.shape
    human = np.broadcast_to(human_dm, (n_metrics, rows, k)).reshape(n_metrics * rows, k)
    metric = metric_dm.reshape(n_metrics * rows, k)
    unit = np.ones_like(human)  # weighted path: exact all-pairs τ-b on a few DMs
    out[(name, "spearman")] = spearman(human, metric).reshape(n_metrics, rows)
    out[(name, "kendall")] = kendall_tau_b(human, metric, unit).reshape(n_metrics, rows)


def _prompt_dm_metric_tables(faces: Faces, metric: np.ndarray) -> np.ndarray:
    """(P, 2·M·K): per prompt, the sum of each metric over its scored faces of each DM, then
    the number of those faces. A face's resample weight is its prompt's count, so the DM means
    of every resample are one (rows, P) @ (P, 2·M·K) product instead of M products over faces.
    """
    n_metrics, k = metric.shape[0], faces.n_dms
    finite = np.isfinite(metric)
    width = 2 * n_metrics * k
    column = np.arange(n_metrics)[:, None] * k + faces.dm[None, :]  # (M, F)
    cell = faces.prompt[None, :] * width + column
    size = faces.n_prompts * width
    sums = np.bincount(cell.ravel(), np.where(finite, metric, 0.0).ravel(), size)
    counts = np.bincount((cell + n_metrics * k).ravel(), finite.ravel().astype(np.float64), size)
    return (sums + counts).reshape(faces.n_prompts, width)


def _metric_dm_means(plan: _Plan, prompt_counts: np.ndarray) -> np.ndarray:
    """(M, rows, K): mean metric per DM over faces with a score, weighted by prompt counts."""
    n_metrics, k = len(plan.metric_names), plan.faces.n_dms
    table = (prompt_counts @ plan.prompt_dm_metric).reshape(len(prompt_counts), 2, n_metrics, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (table[:, 0] / table[:, 1]).transpose(1, 0, 2)


def _image_means(plan: _Plan, human: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image human value: the mean of its rated faces' means (each face counts once), and the
    number of rated faces per image."""
    valid = np.isfinite(human)
    num = np.asarray(plan.face_to_image @ np.where(valid, human, 0.0).T).T
    den = np.asarray(plan.face_to_image @ valid.T.astype(np.float64)).T
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.ascontiguousarray(means), den


def _block(plan: _Plan, counts: ResampleCounts, sub_rows: int | None = None) -> Results:
    """All statistics of a block of resamples, ``sub_rows`` rows at a time.

    The human means come from one product for the whole block: it streams the (A, F) tables
    from memory once, so it wants many rows; the rest wants few rows, to stay in cache.
    """
    human_all = _human_face_means(plan, counts) if plan.likert_sums is not None else None
    step = sub_rows or len(counts)
    parts = []
    for start in range(0, len(counts), step):
        rows = slice(start, start + step)
        sub = ResampleCounts(counts.prompt[rows], counts.annotator[rows])
        parts.append(_block_statistics(plan, sub, None if human_all is None else human_all[rows]))
    if len(parts) == 1:
        return parts[0]
    return {key: np.concatenate([p[key] for p in parts], axis=-1) for key in parts[0]}


def _block_statistics(plan: _Plan, counts: ResampleCounts, human: np.ndarray | None) -> Results:
    out: Results = {}
    face_prompt_counts = _take(counts.prompt, plan.faces.prompt)
    metric_dm = _metric_dm_means(plan, counts.prompt)
    if human is not None:
        human = np.ascontiguousarray(human)
        valid = np.isfinite(human)
        face_weight = np.where(valid, face_prompt_counts, 0.0)
        face_key = _correlations(plan.face_level, human, face_weight, counts.prompt, out)
        filled = np.where(valid, human, 0.0)
        image_human, rated_faces = _image_means(plan, human)
        image_weight = np.where(rated_faces > 0, _take(counts.prompt, plan.image_prompt), 0.0)
        _correlations(plan.image_level, image_human, image_weight, counts.prompt, out)
        if plan.likert_pairs is not None:
            _likert_pair_accuracy(plan, human, face_key, counts.prompt, out)
        with np.errstate(invalid="ignore", divide="ignore"):
            human_dm = ((face_weight * filled) @ plan.dm_onehot) / (face_weight @ plan.dm_onehot)
        out[("dm", "human_mean")] = human_dm.T
        _dm_agreement(human_dm, metric_dm, "dm_agreement", out)
    for m in range(len(plan.metric_names)):
        out[("dm", "metric_mean", str(m))] = metric_dm[m].T
    if plan.campaign is not None:
        _campaign_statistics(plan, counts, metric_dm, out)
    return out


# --- assembling the report -----------------------------------------------------------------


def _exact_kendall(level: _Level, human: np.ndarray) -> np.ndarray:
    """Point τ-b per metric: the design value when it is exhaustive, scipy otherwise."""
    out = np.full(level.metric.shape[0], np.nan)
    for m in range(level.metric.shape[0]):
        keep = level.finite[m] & np.isfinite(human)
        if keep.sum() > 1:
            out[m] = scipy.stats.kendalltau(level.metric[m, keep], human[keep]).statistic
    return out


def _design_corrected(full: np.ndarray, half_a: np.ndarray, half_b: np.ndarray) -> np.ndarray:
    """Replicates of τ-b on a sampled pair design, shrunk to the complete statistic's spread.

    Across resamples the design estimate moves with the complete τ-b *plus* noise from the
    resampled weights of its own K pairs (w_i w_j varies pair by pair). That extra noise is
    independent between two disjoint halves of the design while the complete statistic's
    movement is shared, so Cov(τ*_a, τ*_b) estimates the complete statistic's bootstrap
    variance; deviations from the median are scaled by √(Cov / Var τ*).
    """
    usable = np.isfinite(full) & np.isfinite(half_a) & np.isfinite(half_b)
    if usable.sum() < 3:
        return full
    variance = np.var(full[usable])
    if variance <= 0:
        return full
    covariance = np.cov(half_a[usable], half_b[usable])[0, 1]
    scale = np.sqrt(np.clip(covariance / variance, 0.0, 1.0))
    middle = np.median(full[usable])
    return middle + (full - middle) * scale


def _one_blas_thread() -> None:
    """Ask every OpenBLAS in this process for one thread (a forked worker's initializer).

    The workers already share the cores; OpenBLAS's own threads (one per core by default) on
    top of them spin-wait between the many small products of a block: with 2 workers on 2
    cores they added ~75% CPU time and slowed the wall clock. numpy has no API for this and
    threadpoolctl is not a dependency, so find the loaded libraries and call their setter;
    best effort: a BLAS without one (or a system without /proc) is left as it is.
    """
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return
    setters = (
        "scipy_openblas_set_num_threads64_",
        "scipy_openblas_set_num_threads",
        "openblas_set_num_threads64_",
        "openblas_set_num_threads",
    )
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(library, n) for n in setters if hasattr(library, n)), None)
        if setter is not None:
            setter(1)


_FORKED_PLAN: _Plan | None = None
_FORKED_SUB_ROWS: int | None = None


def _forked_block(counts: ResampleCounts) -> Results:
    assert _FORKED_PLAN is not None
    return _block(_FORKED_PLAN, counts, _FORKED_SUB_ROWS)


@contextlib.contextmanager
def _forked_workers(plan: _Plan, workers: int, sub_rows: int) -> Iterator[Pool | None]:
    """A pool of forked processes that inherit the plan (no pickling of the big arrays), or
    None for ``workers`` < 2 (the caller runs the blocks inline).

    Processes, not threads: a block is hundreds of short numpy calls, and two threads
    contending for the GIL between them ran slower than one thread. Blocks go one at a time
    (chunksize 1 in the caller): a worker left alone with the last large chunk idled the other
    core for a second.
    """
    global _FORKED_PLAN, _FORKED_SUB_ROWS
    if workers < 2:
        yield None
        return
    _FORKED_PLAN, _FORKED_SUB_ROWS = plan, sub_rows
    try:
        with multiprocessing.get_context("fork").Pool(workers, _one_blas_thread) as pool:
            yield pool
    finally:
        _FORKED_PLAN = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, Interval):
        return value.as_dict()
    return value


def alignment_report(
    *,
    faces: Faces,
    metrics: Mapping[str, npt.ArrayLike],
    likert: LikertJudgments | None = None,
    pairwise: PairwiseJudgments | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    resample_annotators: bool = True,
    kendall_max_pairs: int = 100_000,
    gold_tolerance: float = 0.0,
    split_half_splits: int = 20,
    chunk: int | None = None,
    workers: int = 1,
    return_replicates: bool = False,
) -> dict[str, Any]:
    """Alignment of each metric with the humans, with ``level`` bootstrap intervals.

    ``metrics`` maps a metric name to its per-face values (F,), NaN = not scored; an image-level
    metric repeats the image's value on each of its faces. Returns plain JSON-able data (floats,
    lists, None for a statistic that does not exist):

    - ``headline``: ``columns``; ``rows`` (per metric, per column: point, low, high, n_valid);
      ``best`` (metric with the highest point per column); ``human_ceiling`` (face level).
    - ``differences``: per column, every metric pair a − b with its interval on the same
      resamples (the way to say one metric beats another).
    - ``tie_thresholds``: calibrated ε per metric for the pairwise accuracies.
    - ``dm_leaderboard``: human mean rating per DM, Bradley–Terry log-strengths and tie
      parameter (pairwise campaigns), each metric's mean per DM, all with intervals.
    - ``reliability``: Krippendorff's α, split-half, leave-one-out per annotator, gold
      accuracy and self-consistency per annotator.
    - ``data``, ``settings``, ``timings_s``; ``replicates`` with ``return_replicates``.

    Settings: ``n_boot`` resamples drawn from ``seed`` (same seed, same report, whatever
    ``chunk`` or ``workers``); ``resample_annotators`` False resamples prompts only (narrower,
    but misses annotator-to-annotator variation); ``kendall_max_pairs`` caps the τ-b pair
    design of the bootstrap; ``gold_tolerance`` is the |rating − expected| counted as right
    and as self-consistent; ``chunk`` sets the rows per sub-block (memory);
    ``workers`` > 1 forks that many processes (not inside daemonic processes such as Celery
    prefork children, where it runs inline).
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if likert is None and pairwise is None:
        raise ValueError("alignment_report needs likert or pairwise judgments")
    names = list(metrics)
    if not names:
        raise ValueError("alignment_report needs at least one metric")
    metric = np.stack([np.asarray(metrics[n], dtype=np.float64) for n in names])
    if metric.shape[1] != faces.n_faces:
        raise ValueError(f"metric arrays must have {faces.n_faces} values, got {metric.shape[1]}")
    for judgments in (likert, pairwise):
        if judgments is not None:
            judgments.check_against(faces)
    n_annotators = 1 + max(
        int(j.annotator.max()) if j is not None and len(j) else 0 for j in (likert, pairwise)
    )
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])

    image_count = np.bincount(faces.image, minlength=faces.n_images)
    face_to_image = scipy.sparse.csr_matrix(
        (np.ones(faces.n_faces), (faces.image, np.arange(faces.n_faces))),
        shape=(faces.n_images, faces.n_faces),
    )
    finite = np.isfinite(metric)
    with np.errstate(invalid="ignore", divide="ignore"):
        image_metric = np.stack(
            [
                (face_to_image @ np.where(finite[m], metric[m], 0.0)) / (face_to_image @ finite[m])
                for m in range(len(names))
            ]
        )
    image_prompt = np.zeros(faces.n_images, np.int64)
    image_prompt[faces.image] = faces.prompt
    has_faces = image_count > 0
    image_metric[:, ~has_faces] = np.nan
    plan = _Plan(
        faces=faces,
        n_annotators=n_annotators,
        metric_names=names,
        face_level=_Level.build(
            "face", faces.prompt, metric, kendall_max_pairs=kendall_max_pairs, rng=rng
        ),
        image_level=_Level.build(
            "image", image_prompt, image_metric, kendall_max_pairs=kendall_max_pairs, rng=rng
        ),
        face_to_image=face_to_image,
        image_prompt=image_prompt,
        dm_onehot=np.eye(faces.n_dms)[faces.dm],
        prompt_dm_metric=_prompt_dm_metric_tables(faces, metric),
    )
    if likert is not None:
        _build_likert_tables(plan, likert)
        plan.likert_pairs = _build_likert_pairs(plan)
    if pairwise is not None:
        plan.campaign = _build_campaign(plan, pairwise)
    widest = max(
        faces.n_faces,
        len(plan.face_level.pair_first),
        len(pairwise) if pairwise is not None else 0,
        len(plan.likert_pairs.first) if plan.likert_pairs else 0,
    )
    # Sub-blocks small enough that the widest (rows, K) arrays stay near the cache; blocks of
    # 64 rows for the human-mean product.
    sub_rows = chunk or max(1, min(64, (1 << 20) // max(widest, 1)))
    chunk = max(sub_rows, 64)
    blocks = list(
        iter_resample_counts(
            n_prompts=faces.n_prompts,
            n_annotators=n_annotators,
            n_boot=n_boot,
            seed=seed,
            chunk=chunk,
            resample_annotators=resample_annotators,
        )
    )
    timings["prepare"] = time.perf_counter() - clock

    can_fork = "fork" in multiprocessing.get_all_start_methods()
    # A daemonic process (a Celery prefork child) may not start children: run inline there.
    fork = (
        workers > 1
        and len(blocks) > 1
        and can_fork
        and not multiprocessing.current_process().daemon
    )
    bootstrap_clock = time.perf_counter()
    with _forked_workers(plan, workers if fork else 0, sub_rows) as pool:
        # The workers start on the resamples at once; meanwhile this process computes what
        # does not depend on them (it would otherwise wait, a core idle, for ~10% of the run).
        pending = pool.map_async(_forked_block, blocks, chunksize=1) if pool else None

        clock = time.perf_counter()
        identity = ResampleCounts.identity(faces.n_prompts, n_annotators)
        point = _block(plan, identity)
        if likert is not None:
            # Exact τ-b for the point estimate (the centred interval absorbs a sampled design's
            # offset from it).
            human = _human_face_means(plan, identity)
            image_human, _ = _image_means(plan, human)
            for level_obj, values in ((plan.face_level, human), (plan.image_level, image_human)):
                point[(level_obj.name, "kendall")] = (
                    point[(level_obj.name, "kendall_design")]
                    if level_obj.exhaustive_pairs
                    else _exact_kendall(level_obj, values[0])[:, None]
                )
        timings["point_estimates"] = time.perf_counter() - clock

        clock = time.perf_counter()
        if likert is not None:
            ceiling = leave_one_out_ceiling(likert, faces.n_faces, n_annotators)
            plan.ceiling_values = {
                "spearman": ceiling.spearman,
                "kendall": ceiling.kendall,
                "pearson": ceiling.pearson,
            }
        reliability = _reliability(
            plan=plan,
            likert=likert,
            pairwise=pairwise,
            gold_tolerance=gold_tolerance,
            split_half_splits=split_half_splits,
            seed=seed,
        )
        timings["reliability"] = time.perf_counter() - clock

        if pending is None:
            bootstrap_clock = time.perf_counter()  # inline, the resamples start only now
        parts = pending.get() if pending else [_block(plan, c, sub_rows) for c in blocks]
    replicates: Results = (
        {key: np.concatenate([p[key] for p in parts], axis=-1) for key in parts[0]} if parts else {}
    )
    if blocks and plan.ceiling_values:
        # The ceiling resamples annotators only: its replicates are annotator-weighted means
        # of the leave-one-out values, for all resamples in one product.
        annotator_counts = np.concatenate([c.annotator for c in blocks])
        for stat, values in plan.ceiling_values.items():
            usable = np.isfinite(values)
            with np.errstate(invalid="ignore", divide="ignore"):
                replicates[("ceiling", stat)] = (
                    (annotator_counts @ np.where(usable, values, 0.0)) / (annotator_counts @ usable)
                )[None, :]
    for level_obj in (plan.face_level, plan.image_level):
        key = (level_obj.name, "kendall_design")
        if key in replicates and not level_obj.exhaustive_pairs:
            halves = (
                replicates[(level_obj.name, "kendall_half_a")],
                replicates[(level_obj.name, "kendall_half_b")],
            )
            replicates[(level_obj.name, "kendall_design_raw")] = replicates[key]
            replicates[key] = np.stack(
                [
                    _design_corrected(replicates[key][m], halves[0][m], halves[1][m])
                    for m in range(len(names))
                ]
            )
    timings["bootstrap"] = time.perf_counter() - bootstrap_clock

    clock = time.perf_counter()
    report = _assemble(
        plan=plan,
        point=point,
        replicates=replicates,
        reliability=reliability,
        level=level,
        likert=likert,
        pairwise=pairwise,
        return_replicates=return_replicates,
    )
    timings["assembly"] = time.perf_counter() - clock
    report["timings_s"] = timings
    report["settings"] = {
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "resample_annotators": resample_annotators,
        "kendall_max_pairs": kendall_max_pairs,
        "kendall_bootstrap": "exhaustive pairs"
        if plan.face_level.exhaustive_pairs
        else "random pair design (incomplete U-statistic), split-half variance corrected, "
        "centred on the exact point estimate",
        "gold_tolerance": gold_tolerance,
    }
    return _jsonable(report)


def _ci(
    point: Results,
    replicates: Results,
    key: tuple[str, ...],
    index: int,
    level: float,
    design_key: tuple[str, ...] | None = None,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> Interval:
    p = float(point[key][index, 0]) if key in point else float("nan")
    reps = replicates.get(design_key or key)
    if reps is None:
        return Interval(p, np.nan, np.nan, 0)
    return interval(p, reps[index], level=level, bounds=bounds)


def _headline_columns(
    likert: LikertJudgments | None, pairwise: PairwiseJudgments | None
) -> list[tuple[str, tuple[str, ...], tuple[str, ...] | None, tuple[float, float]]]:
    """(column name, point key, replicate key if different, bounds) of the headline table."""
    corr, share = (-1.0, 1.0), (0.0, 1.0)
    columns: list[tuple[str, tuple[str, ...], tuple[str, ...] | None, tuple[float, float]]] = []
    if likert is not None:
        for lvl in ("face", "image"):
            for stat in CORRELATIONS:
                design = (lvl, "kendall_design") if stat == "kendall" else None
                columns.append((f"{lvl}_{stat}", (lvl, stat), design, corr))
        for stat in ("accuracy_with_ties", "accuracy_without_ties"):
            columns.append((f"likert_pairs_{stat}", ("likert_pairs", stat), None, share))
    if pairwise is not None:
        for stat in ("accuracy_with_ties", "accuracy_without_ties"):
            columns.append((f"campaign_{stat}", ("campaign", stat), None, share))
    if likert is not None:
        for stat in ("spearman", "kendall"):
            columns.append((f"dm_{stat}_vs_human_mean", ("dm_agreement", stat), None, corr))
    if pairwise is not None:
        for stat in ("spearman", "kendall"):
            columns.append((f"dm_{stat}_vs_bradley_terry", ("bt_agreement", stat), None, corr))
    return columns


def _reliability(
    *,
    plan: _Plan,
    likert: LikertJudgments | None,
    pairwise: PairwiseJudgments | None,
    gold_tolerance: float,
    split_half_splits: int,
    seed: int,
) -> dict[str, Any]:
    """Krippendorff's α, split-half, leave-one-out, gold accuracy and self-consistency: the
    statistics without bootstrap intervals (they run while the workers resample)."""
    reliability: dict[str, Any] = {}
    if likert is not None:
        split = split_half_reliability(
            likert, plan.faces.n_faces, n_splits=split_half_splits, seed=seed
        )
        distinct = len(np.unique(likert.rating))
        reliability["likert"] = {
            # Ordinal α needs a discrete scale (its distance matrix is V × V).
            "krippendorff_alpha_ordinal": krippendorff_alpha(
                likert.face, likert.rating, level="ordinal"
            )
            if 1 < distinct <= 100
            else None,
            "krippendorff_alpha_interval": krippendorff_alpha(
                likert.face, likert.rating, level="interval"
            )
            if distinct > 1
            else None,
            "split_half": split.as_dict(),
            "leave_one_out_per_annotator": {
                stat: plan.ceiling_values[stat] for stat in CORRELATIONS
            },
            "gold_accuracy": gold_accuracy(
                likert, tolerance=gold_tolerance, n_annotators=plan.n_annotators
            ).as_dict(),
            "self_consistency": self_consistency(
                likert, tolerance=gold_tolerance, n_annotators=plan.n_annotators
            ).as_dict(),
        }
    if pairwise is not None:
        pair_alpha_ok = len(pairwise) > 1
        reliability["pairwise"] = {
            "gold_accuracy": pairwise_gold_accuracy(
                pairwise, n_annotators=plan.n_annotators
            ).as_dict(),
            "self_consistency": pairwise_self_consistency(
                pairwise, n_annotators=plan.n_annotators
            ).as_dict(),
            "n_judgments": len(pairwise) if pair_alpha_ok else len(pairwise),
        }

    return reliability


def _assemble(
    *,
    plan: _Plan,
    point: Results,
    replicates: Results,
    reliability: dict[str, Any],
    level: float,
    likert: LikertJudgments | None,
    pairwise: PairwiseJudgments | None,
    return_replicates: bool,
) -> dict[str, Any]:
    names = plan.metric_names
    table: dict[str, dict[str, Interval]] = {name: {} for name in names}
    best = {}
    differences: dict[str, list[dict[str, Any]]] = {}
    for column, key, design, bounds in _headline_columns(likert, pairwise):
        for m, name in enumerate(names):
            table[name][column] = _ci(point, replicates, key, m, level, design, bounds)
        points = np.array([table[n][column].point for n in names])
        if np.isfinite(points).any():
            best[column] = names[int(np.nanargmax(points))]
        reps = replicates.get(design or key)
        if reps is None:
            continue
        raw = replicates.get((key[0], "kendall_design_raw")) if design else None
        # Metric-minus-metric on the same resamples: the CI that says whether one metric
        # really beats another (the two intervals alone overlap far more often).
        width = bounds[1] - bounds[0]
        rows = []
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                diff_point = table[names[i]][column].point - table[names[j]][column].point
                diff_reps = reps[i] - reps[j]
                if raw is not None:
                    half_a = replicates[(key[0], "kendall_half_a")]
                    half_b = replicates[(key[0], "kendall_half_b")]
                    diff_reps = _design_corrected(
                        raw[i] - raw[j], half_a[i] - half_a[j], half_b[i] - half_b[j]
                    )
                ci = interval(diff_point, diff_reps, level=level, bounds=(-width, width))
                rows.append({"a": names[i], "b": names[j], **ci.as_dict()})
        differences[column] = rows

    ceiling: dict[str, Interval] = {}
    if likert is not None:
        for stat in CORRELATIONS:
            values = plan.ceiling_values[stat]
            p = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            reps = replicates.get(("ceiling", stat))
            ceiling[f"face_{stat}"] = (
                interval(p, reps[0], level=level, bounds=(-1.0, 1.0))
                if reps is not None
                else Interval(p, np.nan, np.nan, 0)
            )

    leaderboard: dict[str, Any] = {"dms": list(range(plan.faces.n_dms))}
    if likert is not None:
        leaderboard["human_mean"] = [
            _ci(point, replicates, ("dm", "human_mean"), k, level) for k in range(plan.faces.n_dms)
        ]
    if pairwise is not None:
        leaderboard["bradley_terry_log_strength"] = [
            _ci(point, replicates, ("bt", "log_strength"), k, level)
            for k in range(plan.faces.n_dms)
        ]
        leaderboard["bradley_terry_log_tie"] = _ci(point, replicates, ("bt", "log_tie"), 0, level)
    leaderboard["metric_mean"] = {
        name: [
            _ci(point, replicates, ("dm", "metric_mean", str(m)), k, level)
            for k in range(plan.faces.n_dms)
        ]
        for m, name in enumerate(names)
    }

    epsilons = {
        group: {
            name: _ci(point, replicates, (group, "epsilon"), m, level)
            for m, name in enumerate(names)
        }
        for group in ("likert_pairs", "campaign")
        if (group, "epsilon") in point
    }
    report: dict[str, Any] = {
        "metrics": names,
        "data": {
            "n_faces": plan.faces.n_faces,
            "n_images": plan.faces.n_images,
            "n_prompts": plan.faces.n_prompts,
            "n_dms": plan.faces.n_dms,
            "n_annotators": plan.n_annotators,
            "n_likert_judgments": len(likert) if likert is not None else 0,
            "n_pairwise_judgments": len(pairwise) if pairwise is not None else 0,
        },
        "headline": {
            "columns": list(table[names[0]]),
            "rows": [{"metric": name, "values": table[name]} for name in names],
            "best": best,
            "human_ceiling": ceiling,
        },
        "differences": differences,
        "tie_thresholds": epsilons,
        "dm_leaderboard": leaderboard,
        "reliability": reliability,
    }
    if return_replicates:
        report["replicates"] = {"|".join(k): v for k, v in replicates.items()}
    return report
