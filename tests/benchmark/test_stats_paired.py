"""Paired differences tuned − base with prompt-bootstrap intervals, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from benchmark.stats.paired import paired_difference


def _ratio(sums, counts, axis=-1):
    return sums.sum(axis=axis) / counts.sum(axis=axis)


def test_one_pair_per_prompt_gives_scipys_percentile_bootstrap_of_the_mean_exactly():
    rng = np.random.default_rng(3)
    base = rng.normal(0.0, 1.0, 40)
    tuned = base + rng.normal(0.2, 0.5, 40)
    prompts = [f"prompt {i:02d}" for i in range(40)]
    result = paired_difference(base, tuned, prompts, n_boot=999, seed=11, chunk=250)
    expected = stats.bootstrap(
        (tuned - base,),
        np.mean,
        n_resamples=999,
        batch=250,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(11),
    )
    assert result.difference == pytest.approx(np.mean(tuned - base), abs=1e-12)
    assert result.low == pytest.approx(expected.confidence_interval.low, abs=1e-12)
    assert result.high == pytest.approx(expected.confidence_interval.high, abs=1e-12)
    assert result.mean_base == pytest.approx(base.mean()) and result.mean_tuned == pytest.approx(
        tuned.mean()
    )
    assert (result.n_pairs, result.n_prompts, result.n_dropped) == (40, 40, 0)


def test_several_seeds_per_prompt_resample_whole_prompts_like_scipys_paired_bootstrap():
    rng = np.random.default_rng(5)
    prompts = np.repeat([f"p{i}" for i in range(15)], rng.integers(1, 5, 15))
    base = rng.normal(size=prompts.size)
    tuned = base + rng.normal(0.1, 1.0, prompts.size)
    result = paired_difference(base, tuned, prompts, n_boot=500, level=0.9, seed=2, chunk=500)
    keys = sorted(set(prompts.tolist()))
    sums = np.array([(tuned - base)[prompts == k].sum() for k in keys])
    counts = np.array([(prompts == k).sum() for k in keys], dtype=float)
    expected = stats.bootstrap(
        (sums, counts),
        _ratio,
        paired=True,
        vectorized=True,
        n_resamples=500,
        batch=500,
        method="percentile",
        confidence_level=0.9,
        rng=np.random.default_rng(2),
    )
    assert result.difference == pytest.approx(np.mean(tuned - base), abs=1e-12)
    assert result.low == pytest.approx(expected.confidence_interval.low, abs=1e-12)
    assert result.high == pytest.approx(expected.confidence_interval.high, abs=1e-12)
    assert result.n_prompts == 15 and result.n_pairs == prompts.size


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    rng = np.random.default_rng(0)
    base, tuned = rng.normal(size=30), rng.normal(size=30)
    prompts = np.arange(30) // 2
    first = paired_difference(base, tuned, prompts, n_boot=300, seed=4)
    again = paired_difference(base, tuned, prompts, n_boot=300, seed=4, chunk=7)
    other = paired_difference(base, tuned, prompts, n_boot=300, seed=5)
    assert first.as_dict() == paired_difference(base, tuned, prompts, n_boot=300, seed=4).as_dict()
    assert again.difference == first.difference  # chunking changes the draws, not the estimate
    assert (other.low, other.high) != (first.low, first.high)


def test_pairs_with_a_missing_side_are_dropped_and_counted():
    base = [1.0, np.nan, 3.0, 4.0]
    tuned = [2.0, 5.0, np.nan, 6.0]
    result = paired_difference(base, tuned, ["a", "b", "c", "d"], n_boot=100)
    assert result.difference == pytest.approx(1.5)
    assert (result.n_pairs, result.n_prompts, result.n_dropped) == (2, 2, 2)
    assert result.tuned_better == 1.0


def test_ties_count_half_towards_tuned_better():
    result = paired_difference([1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 1.0, 3.0], list("abcd"), n_boot=50)
    assert result.tuned_better == pytest.approx((0.5 + 1 + 0 + 0.5) / 4)
    assert result.difference == 0.0


def test_one_prompt_or_no_pairs_have_no_interval():
    single = paired_difference([1.0, 2.0], [2.0, 4.0], ["a", "a"], n_boot=50)
    assert single.difference == 1.5 and single.as_dict()["low"] is None
    empty = paired_difference([np.nan], [1.0], ["a"], n_boot=50).as_dict()
    assert empty["difference"] is None and empty["n_pairs"] == 0 and empty["n_dropped"] == 1


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one length"):
        paired_difference([1.0, 2.0], [1.0], ["a", "b"])


def test_the_95_percent_interval_covers_the_true_difference_about_95_percent_of_the_time():
    # 300 simulated evaluations: 25 prompts with a prompt effect shared by both models and a
    # true improvement of 0.3. The percentile bootstrap is a little narrow at this size, so the
    # band is generous; an interval that ignored the clusters covers 86% here, below the band.
    rng = np.random.default_rng(42)
    covered = 0
    runs = 300
    for run in range(runs):
        prompt_effect = np.repeat(rng.normal(0.0, 1.0, 25), 3)
        prompt_shift = np.repeat(rng.normal(0.0, 0.4, 25), 3)  # the tuning helps some prompts more
        base = prompt_effect + rng.normal(0.0, 0.5, 75)
        tuned = prompt_effect + 0.3 + prompt_shift + rng.normal(0.0, 0.5, 75)
        result = paired_difference(base, tuned, np.arange(75) // 3, n_boot=400, seed=run)
        covered += result.low <= 0.3 <= result.high
    assert 0.88 <= covered / runs <= 0.99
