"""Seeded synthetic studies with known answers, for tests and ``bench/stats.py``.

Every face has a true quality q = DM effect + prompt effect + face effect. Annotators rate
q + bias_a + N(0, σ_a²) (optionally rounded and clipped to a 1–5 likert scale); pairwise
judgments prefer the face with the higher q + noise and call a tie within a margin. Metrics are
a + b·q + N(0, σ²) with chosen signal b (0 = unrelated to quality).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from benchmark.stats.data import Faces, LikertJudgments, PairOutcome, PairwiseJudgments

__all__ = ["SimulatedStudy", "simulate_study"]


@dataclass(frozen=True)
class SimulatedStudy:
    faces: Faces
    likert: LikertJudgments
    pairwise: PairwiseJudgments | None
    metrics: dict[str, np.ndarray]
    true_quality: np.ndarray  # (F,)
    dm_effect: np.ndarray  # (K,)
    annotator_noise: np.ndarray  # (A,)


def simulate_study(
    *,
    n_prompts: int = 200,
    n_dms: int = 4,
    max_faces_per_image: int = 2,
    n_annotators: int = 30,
    judgments_per_face: int = 5,
    annotator_noise: float = 1.0,
    quality_sd: float = 1.0,
    dm_spread: float = 0.5,
    round_to_likert: bool = True,
    metrics: Mapping[str, tuple[float, float]] | None = None,
    n_pairwise: int = 0,
    tie_margin: float = 0.3,
    seed: int = 0,
) -> SimulatedStudy:
    """Build a study: ``n_prompts`` prompts × ``n_dms`` images (one per DM) × 1..max faces.

    ``metrics`` maps a name to (signal, noise_sd): metric = signal · q + N(0, noise_sd²).
    Each face gets ``judgments_per_face`` likert judgments from distinct random annotators.
    """
    rng = np.random.default_rng(seed)
    metrics = metrics or {"tracks_quality": (1.0, 0.5), "unrelated": (0.0, 1.0)}
    faces_per_image = rng.integers(1, max_faces_per_image + 1, n_prompts * n_dms)
    image = np.repeat(np.arange(n_prompts * n_dms), faces_per_image)
    image_prompt = np.repeat(np.arange(n_prompts), n_dms)
    image_dm = np.tile(np.arange(n_dms), n_prompts)
    prompt, dm = image_prompt[image], image_dm[image]
    n_faces = len(image)
    dm_effect = np.linspace(-dm_spread, dm_spread, n_dms)[rng.permutation(n_dms)]
    prompt_effect = rng.normal(0.0, 0.5 * quality_sd, n_prompts)
    quality = dm_effect[dm] + prompt_effect[prompt] + rng.normal(0.0, quality_sd, n_faces)

    noise = np.full(n_annotators, annotator_noise) * rng.uniform(0.5, 1.5, n_annotators)
    bias = rng.normal(0.0, 0.2 * annotator_noise, n_annotators)
    k = min(judgments_per_face, n_annotators)
    # k distinct annotators per face: the first k of a random permutation.
    annotators = np.argsort(rng.random((n_faces, n_annotators)), axis=1)[:, :k]
    face = np.repeat(np.arange(n_faces), k)
    annotator = annotators.ravel()
    rating = (
        3.0 + quality[face] + bias[annotator] + rng.normal(0.0, 1.0, len(face)) * noise[annotator]
    )
    if round_to_likert:
        rating = np.clip(np.round(rating), 1, 5)
    likert = LikertJudgments(face=face, annotator=annotator, rating=rating)

    pairwise = None
    if n_pairwise:
        # Pairs of faces from different images (so different DMs) of the same prompt.
        left = rng.integers(0, n_faces, n_pairwise)
        order = np.argsort(prompt, kind="stable")
        starts = np.searchsorted(prompt[order], np.arange(n_prompts))
        ends = np.searchsorted(prompt[order], np.arange(n_prompts), side="right")
        p = prompt[left]
        right = order[starts[p] + (rng.random(n_pairwise) * (ends[p] - starts[p])).astype(np.int64)]
        keep = image[left] != image[right]
        left, right = left[keep], right[keep]
        who = rng.integers(0, n_annotators, len(left))
        diff = quality[left] - quality[right] + rng.normal(0.0, 1.0, len(left)) * noise[who]
        outcome = np.where(diff > 0, PairOutcome.LEFT, PairOutcome.RIGHT)
        tie = np.abs(diff) <= tie_margin
        both_low = np.maximum(quality[left], quality[right]) < -1.5
        outcome = np.where(tie, np.where(both_low, PairOutcome.BOTH_BAD, PairOutcome.TIE), outcome)
        pairwise = PairwiseJudgments(
            left_face=left, right_face=right, annotator=who, outcome=outcome.astype(np.int64)
        )

    values = {
        name: signal * quality + rng.normal(0.0, noise_sd, n_faces)
        for name, (signal, noise_sd) in metrics.items()
    }
    return SimulatedStudy(
        faces=Faces(prompt=prompt, image=image, dm=dm),
        likert=likert,
        pairwise=pairwise,
        metrics=values,
        true_quality=quality,
        dm_effect=dm_effect,
        annotator_noise=noise,
    )
