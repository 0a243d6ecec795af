"""FaceBench statistics engine: pure numpy/scipy, vectorised, no Django.

How well does each metric agree with the humans, and how sure are we? See ``report`` for the
whole pipeline (``alignment_report``) and the modules for each statistic.
"""

from __future__ import annotations

from benchmark.stats.bootstrap import Interval, ResampleCounts, interval, iter_resample_counts
from benchmark.stats.bradley_terry import BradleyTerryFit, fit_bradley_terry
from benchmark.stats.correlations import (
    average_ranks,
    kendall_tau_b,
    kendall_tau_b_pairs,
    pearson,
    spearman,
)
from benchmark.stats.data import Faces, LikertJudgments, PairOutcome, PairwiseJudgments
from benchmark.stats.pairwise import (
    PairDesign,
    pairwise_accuracy_with_ties,
    plain_pairwise_accuracy,
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
from benchmark.stats.report import alignment_report

__all__ = [
    "BradleyTerryFit",
    "Faces",
    "Interval",
    "LikertJudgments",
    "PairDesign",
    "PairOutcome",
    "PairwiseJudgments",
    "ResampleCounts",
    "alignment_report",
    "average_ranks",
    "fit_bradley_terry",
    "gold_accuracy",
    "interval",
    "iter_resample_counts",
    "kendall_tau_b",
    "kendall_tau_b_pairs",
    "krippendorff_alpha",
    "leave_one_out_ceiling",
    "pairwise_accuracy_with_ties",
    "pairwise_gold_accuracy",
    "pairwise_self_consistency",
    "pearson",
    "plain_pairwise_accuracy",
    "self_consistency",
    "spearman",
    "split_half_reliability",
    "within_prompt_pairs",
]
