"""Crafting (good, bad) face pairs by inpainting the face of a good image.

    tasks, skipped = plan_pairs(sources, settings)
    pipeline = load_pipeline(settings.model, task="inpaint", device="cuda")
    for pair in craft_pairs(pipeline, tasks, settings):
        ...  # pair.good, pair.bad, pair.mask, pair.seed

Algorithm, per face (FaceScore paper, section 3):

1. Skip faces the detector is unsure of (``min_confidence``) or that are too small to matter
   (``min_face_px``, the face box's shorter side), counting each reason.
2. Mask the face: the box grown by ``margin`` on each side, as a box or the ellipse inscribed in
   it, feathered by a Gaussian blur whose width is ``feather`` × the face's size. The mask is 0
   everywhere outside the grown box by construction.
3. Cut a context crop around the face (``context`` × the face size, clamped to the image), resize
   it to the model's ``resolution``, inpaint the masked face there, and resize the result back.
4. Paste the original back everywhere the mask is 0 and blend in the feathered band, so the bad
   image differs from the good one only in the face.

Each pair draws its noise from its own ``torch.Generator`` seeded by :func:`pair_seed`, a hash of
(base seed, source key, face index): the noise of a pair does not depend on which other pairs
share its batch. With the same tasks, settings (batch size included) and device, two runs give
byte-identical pairs. Batched GPU/CPU kernels may round differently for other batch shapes, so
a different batch size can move a few pixels by one grey level; ``batch_size=1`` is the setting
whose results are independent of batching altogether.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ml.sd import settings_from_dict, settings_to_dict

logger = logging.getLogger(__name__)

__all__ = [
    "SKIP_REASONS",
    "CraftSettings",
    "CraftedPair",
    "MaskSettings",
    "PairSource",
    "PairTask",
    "context_crop",
    "craft_pairs",
    "face_mask",
    "margin_filter",
    "pair_seed",
    "paste_back",
    "plan_pairs",
]

Box = tuple[float, float, float, float]
SKIP_REASONS = ("no_face", "low_confidence", "small_face")
# The blur kernel is cut at this many standard deviations, so its reach is known exactly.
_TRUNCATE_SIGMAS = 3.0


@dataclass(frozen=True)
class MaskSettings:
    """How much of a face is repainted: ``margin`` grows the box by that fraction of its width
    (height) on each side; ``feather`` is the width of the soft edge as a fraction of the face
    size (0 = a hard edge); faces whose shorter side is under ``min_face_px`` are skipped."""

    shape: Literal["ellipse", "box"] = "ellipse"
    margin: float = 0.2
    feather: float = 0.1
    min_face_px: int = 48

    def __post_init__(self) -> None:
        if self.shape not in ("ellipse", "box"):
            raise ValueError(f"shape must be 'ellipse' or 'box', not {self.shape!r}")
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError(f"margin must be between 0 and 2, not {self.margin}")
        if not 0.0 <= self.feather <= 1.0:
            raise ValueError(f"feather must be between 0 and 1, not {self.feather}")
        if self.min_face_px < 1:
            raise ValueError(f"min_face_px must be at least 1, not {self.min_face_px}")

    def to_dict(self) -> dict[str, Any]:
        return settings_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskSettings:
        return settings_from_dict(cls, data)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class CraftSettings:
    """Everything that decides the pixels of a crafted pair (stored with each pair set).

    ``model`` is the inpainting model's path (see :func:`ml.sd.load_pipeline`); ``resolution``
    the side its context crops are resized to (512 for SD 1.5, 1024 for SDXL); ``context`` the
    crop's side as a multiple of the face size, so the model sees hair, neck and light.
    ``prompt_source="source"`` inpaints with each source's own prompt (``prompt`` when it has
    none), ``"fixed"`` always with ``prompt``.
    """

    model: str
    strength: float = 0.75
    steps: int = 30
    guidance: float = 7.5
    prompt_source: Literal["source", "fixed"] = "source"
    prompt: str = "a photo of a face"
    negative_prompt: str = ""
    seed: int = 0
    resolution: int = 512
    batch_size: int = 4
    min_confidence: float = 0.5
    mask: MaskSettings = field(default_factory=MaskSettings)
    context: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must name an inpainting model path")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], not {self.strength}")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, not {self.steps}")
        if not 0.0 <= self.guidance <= 50.0:
            raise ValueError(f"guidance must be between 0 and 50, not {self.guidance}")
        if self.prompt_source not in ("source", "fixed"):
            raise ValueError(
                f"prompt_source must be 'source' or 'fixed', not {self.prompt_source!r}"
            )
        if self.prompt_source == "fixed" and not self.prompt.strip():
            raise ValueError("prompt must not be empty when prompt_source is 'fixed'")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be between 0 and 2**63 - 1, not {self.seed}")
        if self.resolution < 64 or self.resolution % 8 or self.resolution > 4096:
            raise ValueError(
                f"resolution must be a multiple of 8 between 64 and 4096, not {self.resolution}"
            )
        if not 1 <= self.batch_size <= 256:
            raise ValueError(f"batch_size must be between 1 and 256, not {self.batch_size}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be between 0 and 1, not {self.min_confidence}")
        if not 1.0 <= self.context <= 10.0:
            raise ValueError(f"context must be between 1 and 10, not {self.context}")
        if not isinstance(self.mask, MaskSettings):
            raise ValueError("mask must be mask settings")

    def to_dict(self) -> dict[str, Any]:
        return settings_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CraftSettings:
        return settings_from_dict(cls, data)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PairSource:
    """A good image and its detected faces; ``key`` is stable provenance ("generation:12")."""

    key: str
    image: Image.Image
    faces: Sequence[tuple[Box, float]]  # (x0, y0, x1, y1) in pixels, detector confidence
    prompt: str = ""


@dataclass(frozen=True)
class PairTask:
    """One face to inpaint, with everything that decides its pixels except the settings."""

    source: PairSource
    face_index: int  # index into source.faces, stable whatever else is skipped
    box: Box
    confidence: float
    seed: int
    prompt: str


@dataclass(frozen=True)
class CraftedPair:
    """``good`` is the original image, ``bad`` the same image with the face inpainted: every
    pixel where ``mask`` is 0 is identical in both."""

    source_key: str
    face_index: int
    box: Box
    good: Image.Image
    bad: Image.Image
    mask: Image.Image  # "L", 255 = repainted, feathered edge
    seed: int
    prompt: str
    confidence: float = 1.0

    def good_crop(self) -> Image.Image:
        """The Face Score input for the good face (official crop of ``box``)."""
        from ml.metrics.imagereward import crop_face

        return crop_face(self.good, self.box)

    def bad_crop(self) -> Image.Image:
        from ml.metrics.imagereward import crop_face

        return crop_face(self.bad, self.box)

    def provenance(self) -> dict[str, Any]:
        return {
            "source_key": self.source_key,
            "face_index": self.face_index,
            "box": [float(v) for v in self.box],
            "confidence": float(self.confidence),
            "seed": self.seed,
            "prompt": self.prompt,
        }


# --- seeds ----------------------------------------------------------------------------------


def pair_seed(base_seed: int, source_key: str, face_index: int) -> int:
    """A 63-bit seed from (base seed, source key, face index): stable across processes and
    machines (unlike ``hash()``) and independent of which pairs are crafted together."""
    digest = hashlib.sha256(f"{base_seed}:{source_key}:{face_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


# --- masks ----------------------------------------------------------------------------------


def _grown_box(box: Box, margin: float) -> Box:
    x0, y0, x1, y1 = box
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return (x0 - dx, y0 - dy, x1 + dx, y1 + dy)


def _face_size(box: Box) -> float:
    return max(box[2] - box[0], box[3] - box[1])


def _shape_mask(
    shape: str, region: Box, inset: float, origin: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """A hard 0/1 mask (float32, ``size`` = (w, h), top-left at ``origin``) of ``shape`` filling
    ``region`` shrunk by ``inset`` px on every side, sampled at pixel centres."""
    left, top = origin
    xs = np.arange(size[0], dtype=np.float64) + left + 0.5
    ys = np.arange(size[1], dtype=np.float64) + top + 0.5
    x0, y0, x1, y1 = region
    x0, y0, x1, y1 = x0 + inset, y0 + inset, x1 - inset, y1 - inset
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size[1], size[0]), dtype=np.float32)
    if shape == "box":
        inside_x = (xs >= x0) & (xs < x1)
        inside_y = (ys >= y0) & (ys < y1)
        return (inside_y[:, None] & inside_x[None, :]).astype(np.float32)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    inside = ((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2 <= 1.0
    return inside.astype(np.float32)


def face_mask(size: tuple[int, int], box: Box, settings: MaskSettings) -> Image.Image:
    """The inpainting mask ("L", ``size`` = (width, height)) of one face: 255 over the face, 0
    outside the box grown by ``settings.margin``, a Gaussian-feathered band in between.

    The blur's width is ``settings.feather`` × the face size; the hard shape is first shrunk by
    the blur's full reach (3σ, where the kernel is cut), so no blurred value leaks past the grown
    box, and pixels deeper inside than the reach stay exactly 255.
    """
    from scipy.ndimage import gaussian_filter

    width, height = size
    region = _grown_box(box, settings.margin)
    band = settings.feather * _face_size(box)
    # the band may not eat the whole shape: keep at least its inner half solid
    band = min(band, 0.5 * min(region[2] - region[0], region[3] - region[1]))
    sigma = band / (2 * _TRUNCATE_SIGMAS)
    reach = math.ceil(_TRUNCATE_SIGMAS * sigma + 0.5) if sigma > 0 else 0
    # work on the grown box's pixels only (plus the kernel's reach): the rest is 0
    left = max(0, math.floor(region[0]) - reach)
    top = max(0, math.floor(region[1]) - reach)
    right = min(width, math.ceil(region[2]) + reach)
    bottom = min(height, math.ceil(region[3]) + reach)
    mask = np.zeros((height, width), dtype=np.uint8)
    if right <= left or bottom <= top:
        return Image.fromarray(mask, "L")
    window = (right - left, bottom - top)
    outer = _shape_mask(settings.shape, region, 0.0, (left, top), window)
    if sigma > 0:
        inner = _shape_mask(settings.shape, region, float(reach), (left, top), window)
        soft = gaussian_filter(inner, sigma=sigma, mode="constant", truncate=_TRUNCATE_SIGMAS)
        soft *= outer  # belt and braces: 0 outside the grown box whatever the rounding
    else:
        soft = outer
    mask[top:bottom, left:right] = np.clip(np.rint(soft * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(mask, "L")


def paste_back(original: Image.Image, inpainted: Image.Image, mask: Image.Image) -> Image.Image:
    """``inpainted`` where ``mask`` is 255, ``original`` where it is 0, blended in between.

    Every pixel with mask 0 is copied from ``original`` byte for byte (the same guarantee as
    diffusers' ``VaeImageProcessor.apply_overlay``, without its RGBA round trip).
    """
    if original.size != inpainted.size or original.size != mask.size:
        raise ValueError(
            f"sizes differ: original {original.size}, inpainted {inpainted.size}, mask {mask.size}"
        )
    good = np.asarray(original.convert("RGB"), dtype=np.float32)
    bad = np.asarray(inpainted.convert("RGB"), dtype=np.float32)
    mask_u8 = np.asarray(mask.convert("L"))
    alpha = (mask_u8.astype(np.float32) / 255.0)[:, :, None]
    blended = np.clip(np.rint(good + alpha * (bad - good)), 0, 255).astype(np.uint8)
    keep = mask_u8 == 0
    blended[keep] = np.asarray(original.convert("RGB"))[keep]
    return Image.fromarray(blended, "RGB")


# --- crops ----------------------------------------------------------------------------------


def _round8(value: float) -> int:
    return max(8, int(round(value / 8.0)) * 8)


def context_crop(
    image_size: tuple[int, int], box: Box, settings: CraftSettings
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The crop (left, top, right, bottom) the model sees around a face and the size (w, h) it is
    resized to: a square of ``context`` × the face size (never smaller than the mask's grown box)
    centred on the face, shifted and clamped to fit the image; resized so its long side is
    ``resolution`` (sides rounded to multiples of 8, which the VAE needs)."""
    width, height = image_size
    region = _grown_box(box, settings.mask.margin)
    side = max(settings.context * _face_size(box), region[2] - region[0], region[3] - region[1])
    crop_w = min(width, math.ceil(side))
    crop_h = min(height, math.ceil(side))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    left = min(max(0, int(round(cx - crop_w / 2))), width - crop_w)
    top = min(max(0, int(round(cy - crop_h / 2))), height - crop_h)
    scale = settings.resolution / max(crop_w, crop_h)
    target = (_round8(crop_w * scale), _round8(crop_h * scale))
    return (left, top, left + crop_w, top + crop_h), target


# --- planning -------------------------------------------------------------------------------


def plan_pairs(
    sources: Iterable[PairSource], settings: CraftSettings
) -> tuple[list[PairTask], dict[str, int]]:
    """One task per usable face, in source order; ``skipped`` counts sources without faces and
    faces under ``min_confidence`` or ``min_face_px`` (each face counted once, confidence
    first)."""
    tasks: list[PairTask] = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    for source in sources:
        if not source.faces:
            skipped["no_face"] += 1
            continue
        prompt = (
            source.prompt.strip() or settings.prompt
            if settings.prompt_source == "source"
            else settings.prompt
        )
        for index, (box, confidence) in enumerate(source.faces):
            box = tuple(float(v) for v in box)  # type: ignore[assignment]
            if confidence < settings.min_confidence:
                skipped["low_confidence"] += 1
                continue
            if min(box[2] - box[0], box[3] - box[1]) < settings.mask.min_face_px:
                skipped["small_face"] += 1
                continue
            tasks.append(
                PairTask(
                    source=source,
                    face_index=index,
                    box=box,
                    confidence=float(confidence),
                    seed=pair_seed(settings.seed, source.key, index),
                    prompt=prompt,
                )
            )
    return tasks, skipped


# --- crafting -------------------------------------------------------------------------------


@dataclass
class _Prepared:
    task: PairTask
    good: Image.Image
    mask: Image.Image
    crop: tuple[int, int, int, int]
    target: tuple[int, int]
    crop_image: Image.Image  # the context crop at the model's resolution
    crop_mask: Image.Image


def _prepare(task: PairTask, settings: CraftSettings) -> _Prepared:
    good = task.source.image.convert("RGB")
    mask = face_mask(good.size, task.box, settings.mask)
    crop, target = context_crop(good.size, task.box, settings)
    return _Prepared(
        task=task,
        good=good,
        mask=mask,
        crop=crop,
        target=target,
        crop_image=good.crop(crop).resize(target, Image.Resampling.LANCZOS),
        crop_mask=mask.crop(crop).resize(target, Image.Resampling.BILINEAR),
    )


def _pipeline_device(pipeline: Any) -> torch.device:
    device = getattr(pipeline, "_execution_device", None) or getattr(pipeline, "device", None)
    return torch.device(device or "cpu")


def _inpaint(pipeline: Any, batch: list[_Prepared], settings: CraftSettings) -> list[Image.Image]:
    """Inpaint one batch of same-size crops, each with its own generator."""
    device = _pipeline_device(pipeline)
    generators = [torch.Generator(device=device).manual_seed(p.task.seed) for p in batch]
    width, height = batch[0].target
    negative = [settings.negative_prompt] * len(batch) if settings.negative_prompt else None
    with torch.inference_mode():
        output = pipeline(
            prompt=[p.task.prompt for p in batch],
            negative_prompt=negative,
            image=[p.crop_image for p in batch],
            mask_image=[p.crop_mask for p in batch],
            height=height,
            width=width,
            strength=settings.strength,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            generator=generators,
            output_type="pil",
        )
    return list(output.images)


def _finish(prepared: _Prepared, inpainted_crop: Image.Image) -> CraftedPair:
    left, top, right, bottom = prepared.crop
    back = inpainted_crop.convert("RGB").resize(
        (right - left, bottom - top), Image.Resampling.LANCZOS
    )
    composite = prepared.good.copy()
    composite.paste(back, (left, top))
    task = prepared.task
    return CraftedPair(
        source_key=task.source.key,
        face_index=task.face_index,
        box=task.box,
        good=prepared.good,
        bad=paste_back(prepared.good, composite, prepared.mask),
        mask=prepared.mask,
        seed=task.seed,
        prompt=task.prompt,
        confidence=task.confidence,
    )


def craft_pairs(
    pipeline: Any,
    tasks: Sequence[PairTask],
    settings: CraftSettings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[CraftedPair]:
    """Inpaint ``tasks`` ``settings.batch_size`` at a time (a batch holds crops of one size) and
    yield the pairs in task order. ``should_stop`` is asked before each batch; when it says
    yes, the pairs already yielded are all there is. ``on_progress(done, total)`` after each
    batch."""
    total = len(tasks)
    done = 0
    for start in range(0, total, settings.batch_size):
        if should_stop is not None and should_stop():
            logger.info("pair crafting stopped after %d of %d faces", done, total)
            return
        chunk = [_prepare(task, settings) for task in tasks[start : start + settings.batch_size]]
        # group by target size (rare: only crops clamped by a small or narrow image differ),
        # keeping task order for what is yielded
        results: dict[int, Image.Image] = {}
        sizes = sorted({p.target for p in chunk})
        for size in sizes:
            members = [i for i, p in enumerate(chunk) if p.target == size]
            images = _inpaint(pipeline, [chunk[i] for i in members], settings)
            results.update(zip(members, images, strict=True))
        for i, prepared in enumerate(chunk):
            yield _finish(prepared, results[i])
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, total)


def margin_filter(
    pairs: Iterable[CraftedPair],
    score_faces: Callable[[list[Image.Image]], list[float]],
    min_margin: float,
    *,
    batch_size: int = 32,
) -> Iterator[tuple[CraftedPair, float, float]]:
    """Keep the pairs whose current Face Score prefers the good face by at least ``min_margin``:
    yields ``(pair, FS(good), FS(bad))`` for FS(good) − FS(bad) ≥ ``min_margin``, in order.

    ``score_faces`` scores a list of face crops; it is called with up to ``batch_size`` pairs'
    good and bad crops at once.
    """
    buffer: list[CraftedPair] = []

    def flush() -> Iterator[tuple[CraftedPair, float, float]]:
        crops = [p.good_crop() for p in buffer] + [p.bad_crop() for p in buffer]
        scores = list(score_faces(crops))
        if len(scores) != len(crops):
            raise ValueError(f"score_faces returned {len(scores)} scores for {len(crops)} crops")
        n = len(buffer)
        for pair, good, bad in zip(buffer, scores[:n], scores[n:], strict=True):
            if float(good) - float(bad) >= min_margin:
                yield pair, float(good), float(bad)
        buffer.clear()

    for pair in pairs:
        buffer.append(pair)
        if len(buffer) >= batch_size:
            yield from flush()
    if buffer:
        yield from flush()
