"""Bradley–Terry with ties (Davidson 1970) recovers known strengths."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.stats import fit_bradley_terry


def _simulate(
    log_strength: np.ndarray, tie: float, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    k = len(log_strength)
    i = rng.integers(0, k, n)
    j = (i + rng.integers(1, k, n)) % k  # j ≠ i
    pi, pj = np.exp(log_strength[i]), np.exp(log_strength[j])
    pt = tie * np.sqrt(pi * pj)
    u = rng.random(n) * (pi + pj + pt)
    wins = np.zeros((k, k))
    ties = np.zeros((k, k))
    np.add.at(wins, (i[u < pi], j[u < pi]), 1)
    right = (u >= pi) & (u < pi + pj)
    np.add.at(wins, (j[right], i[right]), 1)
    np.add.at(ties, (i[u >= pi + pj], j[u >= pi + pj]), 1)
    return wins, ties


def test_recovers_known_strengths_and_tie_parameter_from_simulated_comparisons() -> None:
    rng = np.random.default_rng(0)
    truth = np.array([-1.0, -0.4, 0.0, 0.3, 1.1])
    truth -= truth.mean()
    wins, ties = _simulate(truth, tie=0.8, n=40_000, rng=rng)
    fit = fit_bradley_terry(wins, ties)
    assert fit.converged
    # ~8000 comparisons per item: standard errors of θ are about 0.02.
    np.testing.assert_allclose(fit.log_strength, truth, atol=0.06)
    assert np.exp(fit.log_tie) == pytest.approx(0.8, abs=0.05)


def test_strengths_have_geometric_mean_one() -> None:
    wins, ties = _simulate(np.array([0.5, 1.5, -2.0]), 0.3, 3000, np.random.default_rng(1))
    assert fit_bradley_terry(wins, ties).log_strength.sum() == pytest.approx(0.0, abs=1e-12)


def test_without_ties_it_is_the_plain_bradley_terry_maximum_likelihood() -> None:
    wins, _ = _simulate(np.array([0.0, 0.7, -0.5, 1.2]), 0.0, 5000, np.random.default_rng(2))
    fit = fit_bradley_terry(wins, prior=0.0)
    assert fit.log_tie == -np.inf
    # Zermelo's MM fixed point: π_i = W_i / Σ_j n_ij / (π_i + π_j).
    n = wins + wins.T
    pi = np.ones(4)
    for _ in range(5000):
        pi = wins.sum(axis=1) / (n / (pi[:, None] + pi[None, :])).sum(axis=1)
        pi /= np.exp(np.log(pi).mean())
    np.testing.assert_allclose(fit.log_strength, np.log(pi), atol=1e-8)


def test_batched_fit_equals_fitting_each_table_alone() -> None:
    rng = np.random.default_rng(3)
    tables = [_simulate(rng.normal(0, 1, 4), 0.5, 2000, rng) for _ in range(3)]
    batch = fit_bradley_terry(np.stack([w for w, _ in tables]), np.stack([t for _, t in tables]))
    for row, (wins, ties) in enumerate(tables):
        alone = fit_bradley_terry(wins, ties)
        np.testing.assert_allclose(batch.log_strength[row], alone.log_strength, atol=1e-9)
        assert batch.log_tie[row] == pytest.approx(alone.log_tie, abs=1e-9)


def test_an_item_that_never_wins_gets_a_finite_lowest_strength() -> None:
    wins, ties = _simulate(np.array([0.0, 0.5, 1.0]), 0.4, 2000, np.random.default_rng(4))
    wins[0, :] = 0.0
    fit = fit_bradley_terry(wins, ties)
    assert np.all(np.isfinite(fit.log_strength))
    assert fit.log_strength.argmin() == 0


def test_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        fit_bradley_terry(-np.ones((2, 2)))
