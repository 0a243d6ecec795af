"""Face crops: a detected box grown by a margin, clamped to the image, and bounded in size."""

from __future__ import annotations

from PIL import Image

Box = tuple[float, float, float, float]


def expand_box(box: Box, *, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` × its own width/height on each side, as whole pixels in the image.

    Rounds outwards so the crop never cuts into the detected face; never empty.
    """
    x0, y0, x1, y1 = box
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    left = max(0, int(x0 - dx))
    top = max(0, int(y0 - dy))
    right = min(width, -int(-(x1 + dx) // 1))  # ceil without importing math for one call
    bottom = min(height, -int(-(y1 + dy) // 1))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_face(
    image: Image.Image, box: Box, *, margin: float = 0.25, max_side: int = 512
) -> Image.Image:
    """The face with ``margin`` around it, downscaled (never upscaled) so its long side ≤ ``max_side``."""
    crop = image.crop(expand_box(box, margin=margin, width=image.width, height=image.height))
    long_side = max(crop.size)
    if long_side > max_side:
        scale = max_side / long_side
        size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
        crop = crop.resize(size, Image.Resampling.LANCZOS)
    return crop
