"""Demo data from real face photos that ship inside installed wheels, and degraded variants.

The photos (scikit-image's astronaut and camera, matplotlib's grace_hopper) play the "real" DM;
each degradation plays a weaker demo DM, so the demo has a known quality order:
original > jpeg > blur > warp > inpaint (OpenCV inpainting of the face region).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def camera() -> np.ndarray:
    """The cameraman, greyscale 512×512, repeated to RGB."""
    from skimage import data

    return np.ascontiguousarray(np.repeat(data.camera()[:, :, None], 3, axis=2))


def grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.asarray(Image.open(path).convert("RGB"))


PHOTOS: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "astronaut": (astronaut, "a portrait photo of a smiling astronaut in a white spacesuit"),
    "camera": (camera, "a black and white photo of a man with a camera on a tripod"),
    "grace_hopper": (grace_hopper, "a portrait photo of a woman in a navy uniform"),
}


def _face_mask(shape: tuple[int, ...], box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros(shape[:2], np.uint8)
    center = ((x0 + x1) // 2, (y0 + y1) // 2)
    axes = (max(1, (x1 - x0) * 4 // 10), max(1, (y1 - y0) * 45 // 100))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 255, -1)
    return mask


def blur(image: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(rng.uniform(3.0, 5.0)))


def jpeg(image: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=int(rng.integers(4, 9)))
    return np.asarray(Image.open(buffer).convert("RGB"))


def warp(image: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement of the face region only, like a DM's melted features."""
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    strength = float(rng.uniform(10, 14)) * (x1 - x0) / 100
    weight = cv2.GaussianBlur(_face_mask(image.shape, box).astype(np.float32) / 255, (0, 0), (x1 - x0) / 8)
    phase = rng.uniform(0, 2 * np.pi, 2)
    dx = strength * np.sin(yy / (y1 - y0) * 3 * np.pi + phase[0]) * weight
    dy = strength * np.cos(xx / (x1 - x0) * 3 * np.pi + phase[1]) * weight
    map_x, map_y = (xx + dx).astype(np.float32), (yy + dy).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def inpaint(image: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Fill the inner face (eyes, nose, mouth) from its surroundings: a face with no features."""
    x0, y0, x1, y1 = box
    inner = (x0 + (x1 - x0) // 5, y0 + (y1 - y0) // 4, x1 - (x1 - x0) // 5, y1 - (y1 - y0) // 8)
    return cv2.inpaint(image, _face_mask(image.shape, inner), 5, cv2.INPAINT_TELEA)


DEGRADATIONS: dict[str, Callable[[np.ndarray, tuple[int, int, int, int], np.random.Generator], np.ndarray]] = {
    "demo-jpeg": jpeg,
    "demo-blur": blur,
    "demo-warp": warp,
    "demo-inpaint": inpaint,
}
ORIGINAL_DM = "demo-photo"


def shifted_crop(image: np.ndarray, seed: int) -> np.ndarray:
    """A slightly different framing per seed, so one prompt has several distinct images."""
    if seed == 0:
        return image
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    dx, dy = (int(v) for v in rng.integers(0, max(1, w // 12), 2))
    return np.ascontiguousarray(image[dy : h - (w // 12 - dy), dx : w - (w // 12 - dx)])


def write_demo_folder(
    folder: Path, face_box: Callable[[np.ndarray], tuple[int, int, int, int] | None], *, seeds: int = 2
) -> Path:
    """Images plus ``manifest.jsonl`` in ``folder``; ``face_box`` finds the face to degrade."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (load, prompt) in PHOTOS.items():
        for seed in range(seeds):
            photo = shifted_crop(load(), seed)
            box = face_box(photo)
            variants = {ORIGINAL_DM: photo}
            if box is not None:
                rng = np.random.default_rng(seed)
                variants.update({dm: degrade(photo, box, rng) for dm, degrade in DEGRADATIONS.items()})
            for dm, pixels in variants.items():
                file = f"{name}-{seed}-{dm}.png"
                Image.fromarray(pixels).save(folder / file)
                rows.append({"file": file, "prompt": prompt, "model": dm, "model_version": "1", "seed": seed, "source_photo": name})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder
