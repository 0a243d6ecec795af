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


def import_photos(folder, *, name: str = "photos", copies: int = 1):
    """A dataset of the wheel-shipped photos (and ``copies`` shifted framings of each), imported
    through the real import service, faces not yet detected."""
    from annotator.demo import PHOTOS, shifted_crop
    from annotator.imports import import_generations
    from tests.images import encode, jsonl, write_folder

    files, rows = {}, []
    for photo, (load, prompt) in PHOTOS.items():
        for seed in range(copies):
            file = f"{photo}-{seed}.png"
            files[file] = encode(shifted_crop(load(), seed))
            rows.append({"file": file, "prompt": prompt, "model": "photo", "seed": seed})
    write_folder(folder, {**files, "manifest.jsonl": jsonl(rows)})
    dataset = Dataset.objects.create(name=name)
    report = import_generations(dataset=dataset, source=folder)
    assert report.imported == len(files), report.problems
    return dataset
