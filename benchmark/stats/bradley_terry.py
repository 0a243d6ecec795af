"""Bradley–Terry with ties (Davidson 1970), fitted by batched Newton steps.

For items i, j with strengths π = exp(θ) and tie parameter ν = exp(λ):

    P(i ≻ j) = π_i / D,   P(j ≻ i) = π_j / D,   P(i ~ j) = ν √(π_i π_j) / D,
    D = π_i + π_j + ν √(π_i π_j).

Each comparison is a three-outcome multinomial logit with linear predictors θ_i, θ_j and
λ + (θ_i + θ_j)/2, so the log-likelihood is concave in (θ, λ), its gradient is
"observed − expected" feature counts and its negative Hessian is Σ n_ij Cov_p(features).
Newton therefore converges in a handful of steps. The strengths are identified by fixing the
geometric mean of π to 1 (Σθ = 0); the gradient of the likelihood always sums to zero over θ,
so a Gaussian prior N(0, 1/prior) on θ keeps that constraint and makes items that never win (or
never lose) finite instead of diverging — needed for bootstrap resamples.
Many count tables are fitted at once: arrays carry a leading batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BradleyTerryFit", "fit_bradley_terry"]


@dataclass(frozen=True)
class BradleyTerryFit:
    log_strength: np.ndarray  # (..., K), Σ = 0
    log_tie: np.ndarray  # (...,) λ = log ν; −inf when no ties were observed
    iterations: int
    converged: bool


def fit_bradley_terry(
    wins: npt.ArrayLike,
    ties: npt.ArrayLike | None = None,
    *,
    prior: float = 1e-3,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> BradleyTerryFit:
    """Maximum a-posteriori Davidson model from count tables.

    ``wins[..., i, j]`` counts comparisons that i won against j; ``ties[..., i, j]`` counts ties
    between i and j (either triangle or both; it is symmetrised). With ``ties`` None or all
    zero the model is plain Bradley–Terry (ν = 0).
    """
    w = np.asarray(wins, dtype=np.float64)
    single = w.ndim == 2
    w = w[None] if single else w
    k = w.shape[-1]
    if w.shape[-2] != k:
        raise ValueError(f"wins must be (..., K, K), got {w.shape}")
    t = np.zeros_like(w) if ties is None else np.broadcast_to(np.asarray(ties, np.float64), w.shape)
    if np.any(w < 0) or np.any(t < 0):
        raise ValueError("counts must be non-negative")
    batch = w.shape[0]
    iu, ju = np.triu_indices(k, k=1)
    wins_ij = w[:, iu, ju]
    wins_ji = w[:, ju, iu]
    ties_ij = t[:, iu, ju] + t[:, ju, iu]
    n_ij = wins_ij + wins_ji + ties_ij
    has_ties = ties_ij.sum(axis=1) > 0

    # Feature vectors of the three outcomes on the (θ_1..θ_K, λ) scale: (pairs, 3, K+1).
    n_par = k + 1
    features = np.zeros((len(iu), 3, n_par))
    pairs = np.arange(len(iu))
    features[pairs, 0, iu] = 1.0
    features[pairs, 1, ju] = 1.0
    features[pairs, 2, iu] = 0.5
    features[pairs, 2, ju] = 0.5
    features[:, 2, k] = 1.0
    observed = (
        np.einsum("bp,pf->bf", wins_ij, features[:, 0])
        + np.einsum("bp,pf->bf", wins_ji, features[:, 1])
        + np.einsum("bp,pf->bf", ties_ij, features[:, 2])
    )

    theta = np.zeros((batch, n_par))
    # Without ties λ → −∞; fit plain BT by keeping the tie outcome out (λ fixed very low).
    theta[:, k] = np.where(has_ties, 0.0, -np.inf)
    penalty = np.full(n_par, prior)
    penalty[k] = 0.0
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007  (reported after the loop)
        eta = np.einsum("pof,bf->bpo", features[:, :, :k], theta[:, :k])
        eta[:, :, 2] += theta[:, k, None]
        eta -= eta.max(axis=2, keepdims=True)
        prob = np.exp(eta)
        prob /= prob.sum(axis=2, keepdims=True)
        mean_feat = np.einsum("bpo,pof->bpf", prob, features)
        expected = np.einsum("bp,bpf->bf", n_ij, mean_feat)
        grad = observed - expected - penalty * np.nan_to_num(theta, neginf=0.0)
        # −Hessian = Σ_p n_p (E[f fᵀ] − E[f] E[f]ᵀ) + prior.
        second = np.einsum("bp,bpo,pof,pog->bfg", n_ij, prob, features, features)
        outer = np.einsum("bp,bpf,bpg->bfg", n_ij, mean_feat, mean_feat)
        neg_hess = second - outer + np.diag(penalty)[None]
        # Rows without ties: λ is not a free parameter; pin it with an identity block.
        no_tie = ~has_ties
        neg_hess[no_tie, k, :] = 0.0
        neg_hess[no_tie, :, k] = 0.0
        neg_hess[no_tie, k, k] = 1.0
        grad[no_tie, k] = 0.0
        # Σθ direction: the likelihood is flat there; with prior = 0 fix it by a tiny ridge.
        neg_hess[:, :k, :k] += 1e-12 * np.eye(k)
        step = np.linalg.solve(neg_hess, grad[..., None])[..., 0]
        step[no_tie, k] = 0.0
        # Damp very long steps: Newton on a logit likelihood can overshoot far from the optimum.
        longest = np.max(np.abs(step), axis=1, keepdims=True)
        step *= np.minimum(1.0, 3.0 / np.maximum(longest, 1e-300))
        theta[:, :k] += step[:, :k]
        theta[has_ties, k] += step[has_ties, k]
        theta[:, :k] -= theta[:, :k].mean(axis=1, keepdims=True)
        if np.max(np.abs(step)) < tol:
            converged = True
            break
    log_strength = theta[:, :k]
    log_tie = theta[:, k]
    if single:
        return BradleyTerryFit(log_strength[0], log_tie[0], iteration, converged)
    return BradleyTerryFit(log_strength, log_tie, iteration, converged)
