"""Text-to-image generation in batches, reproducible per (model, prompt, seed, settings).

    pipeline = load_pipeline(path, task="text2img", device="cuda")
    for prompt, seed, image in generate(pipeline, [(p, 0) for p in HUMAN_PROMPTS], settings):
        ...

Each image draws its initial noise from its own ``torch.Generator`` seeded with its seed, so the
noise of an image does not depend on what else shares its batch: a base and a fine-tuned model
given the same (prompt, seed) list start from the same noise, which is what makes their images
comparable face for face. Batched kernels may still round differently for other batch shapes
(a grey level on a few pixels); the same requests with the same ``batch_size`` on the same
device give byte-identical images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ml.sd import settings_from_dict, settings_to_dict

logger = logging.getLogger(__name__)

__all__ = ["GenerateSettings", "generate"]


@dataclass(frozen=True)
class GenerateSettings:
    steps: int = 30
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    negative_prompt: str = ""
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, not {self.steps}")
        if not 0.0 <= self.guidance <= 50.0:
            raise ValueError(f"guidance must be between 0 and 50, not {self.guidance}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 64 or value > 4096 or value % 8:
                raise ValueError(f"{name} must be a multiple of 8 between 64 and 4096, not {value}")
        if not 1 <= self.batch_size <= 256:
            raise ValueError(f"batch_size must be between 1 and 256, not {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return settings_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateSettings:
        return settings_from_dict(cls, data)  # type: ignore[no-any-return]


def _pipeline_device(pipeline: Any) -> torch.device:
    device = getattr(pipeline, "_execution_device", None) or getattr(pipeline, "device", None)
    return torch.device(device or "cpu")


def generate(
    pipeline: Any,
    requests: Sequence[tuple[str, int]],
    settings: GenerateSettings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[str, int, Image.Image]]:
    """Yield ``(prompt, seed, image)`` for each request, in order, ``settings.batch_size`` per
    pipeline call. ``should_stop`` is asked before each batch (what was yielded is kept);
    ``on_progress(done, total)`` is called after each batch."""
    for prompt, seed in requests:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"empty prompt in request ({prompt!r}, {seed})")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be a whole number in [0, 2**64), not {seed!r}")
    device = _pipeline_device(pipeline)
    total = len(requests)
    done = 0
    for start in range(0, total, settings.batch_size):
        if should_stop is not None and should_stop():
            logger.info("generation stopped after %d of %d images", done, total)
            return
        batch = requests[start : start + settings.batch_size]
        generators = [torch.Generator(device=device).manual_seed(seed) for _, seed in batch]
        negative = [settings.negative_prompt] * len(batch) if settings.negative_prompt else None
        with torch.inference_mode():
            output = pipeline(
                prompt=[prompt for prompt, _ in batch],
                negative_prompt=negative,
                width=settings.width,
                height=settings.height,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                generator=generators,
                output_type="pil",
            )
        for (prompt, seed), image in zip(batch, output.images, strict=True):
            yield prompt, seed, image.convert("RGB")
        done += len(batch)
        if on_progress is not None:
            on_progress(done, total)
