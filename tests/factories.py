"""Small builders of annotation data for engine and API tests (no image decoding needed)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from annotator.models import Dataset, Face, Generation


def make_dataset(
    name: str = "ds",
    *,
    prompts: Sequence[str] = ("a portrait of a woman", "a man reading"),
    models: Sequence[str] = ("sd15", "rv51"),
    faces_per_generation: int = 1,
) -> Dataset:
    """One generation per (prompt, model), each with ``faces_per_generation`` faces."""
    dataset = Dataset.objects.create(name=name)
    for p, prompt in enumerate(prompts):
        for m, model in enumerate(models):
            sha = hashlib.sha256(f"{name}/{p}/{m}".encode()).hexdigest()
            generation = Generation.objects.create(
                dataset=dataset,
                image=f"generations/{sha[:2]}/{sha}.png",
                sha256=sha,
                width=512,
                height=512,
                prompt=prompt,
                model_name=model,
                seed=p,
            )
            for f in range(faces_per_generation):
                Face.objects.create(
                    generation=generation,
                    x0=10 + 100 * f,
                    y0=10,
                    x1=90 + 100 * f + m,
                    y1=100,
                    detector="test",
                    confidence=0.9,
                )
    return dataset
