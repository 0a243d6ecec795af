"""OpenCV's frontal-face Haar cascade: the offline default detector (its model ships in the wheel).

Steps for one image: grey, histogram-equalised (as in OpenCV's own ``facedetect.py`` sample) and
downscaled so the long side is at most ``max_side`` px; ``detectMultiScale3`` with
``outputRejectLevels=True`` so every grouped window comes with the weight of the last cascade
stage; boxes scaled back to the input's pixels; overlapping boxes suppressed (the most
confident kept); sorted by confidence, then position, so equal inputs always give equal outputs.

Confidence: the last-stage weight ``w`` (a boosted-classifier margin, unbounded, roughly 0–10 for
the default cascade on real faces) is mapped through the logistic function ``1 / (1 + e^-w)``. It
is monotonic, so ranking and thresholds keep their meaning, it lands in [0, 1], and it is 0.5
where the margin is zero. It is not a calibrated probability.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import cv2
import numpy as np

from ml.faces import Detection, check_image, register_detector

logger = logging.getLogger(__name__)

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
WINDOW_PX = 24  # the cascade's training window: nothing smaller can be found


def cascade_path(filename: str = DEFAULT_CASCADE) -> str:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "") or ""
    path = os.path.join(folder, filename)
    if not folder or not os.path.isfile(path):
        raise RuntimeError(
            f"OpenCV's Haar cascade {filename} is not installed (looked in {folder or 'cv2.data'}); "
            f"opencv-python-headless {cv2.__version__} ships none — install a 4.x wheel "
            "(pip install 'opencv-python-headless>=4.9,<5')"
        )
    return path


def level_weight_to_confidence(weight: float) -> float:
    # Clamp the exponent so extreme margins cannot overflow math.exp.
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, weight))))


def _overlap_of_smaller(a: Detection, b: Detection) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    smaller = min(a.width * a.height, b.width * b.height)
    return (ix * iy) / smaller if smaller > 0 else 0.0


def suppress_overlaps(detections: list[Detection], max_overlap: float) -> list[Detection]:
    """Most confident first; drop a box that covers more than ``max_overlap`` of a kept (or its own) area."""
    ordered = sorted(detections, key=lambda d: (-d.confidence, d.y0, d.x0, d.y1, d.x1))
    kept: list[Detection] = []
    for det in ordered:
        if all(_overlap_of_smaller(det, k) <= max_overlap for k in kept):
            kept.append(det)
    return kept


class HaarFaceDetector:
    name = "haar"

    def __init__(
        self,
        *,
        cascade: str = DEFAULT_CASCADE,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.05,
        max_side: int = 1024,
        max_overlap: float = 0.3,
    ) -> None:
        self.cascade_file = cascade
        self._classifier = cv2.CascadeClassifier(cascade_path(cascade))
        if self._classifier.empty():
            raise RuntimeError(f"OpenCV could not load the Haar cascade {cascade}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction
        self.max_side = max_side
        self.max_overlap = max_overlap

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        # A cascade has no batch dimension; the batched signature is for detectors that do.
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> list[Detection]:
        check_image(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            grey = cv2.resize(
                grey,
                (max(1, round(width * scale)), max(1, round(height * scale))),
                interpolation=cv2.INTER_AREA,
            )
        grey = cv2.equalizeHist(grey)
        # Faces smaller than a fraction of the image are, in generated images, almost always
        # texture that happens to look like a face, and too small to judge anyway.
        min_px = max(WINDOW_PX, round(self.min_face_fraction * min(grey.shape[:2])))
        if min(grey.shape[:2]) < min_px:
            return []
        boxes, _levels, weights = self._classifier.detectMultiScale3(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_px, min_px),
            outputRejectLevels=True,
        )
        detections = []
        for box, weight in zip(
            np.asarray(boxes).reshape(-1, 4).tolist(),
            np.asarray(weights).reshape(-1).tolist(),
            strict=True,
        ):
            x, y, w, h = (float(v) for v in box)
            x0, y0 = max(0.0, x / scale), max(0.0, y / scale)
            x1, y1 = min(float(width), (x + w) / scale), min(float(height), (y + h) / scale)
            if x1 > x0 and y1 > y0:
                detections.append(
                    Detection(x0, y0, x1, y1, confidence=level_weight_to_confidence(weight))
                )
        return suppress_overlaps(detections, self.max_overlap)


@register_detector("haar")
def create_haar(**kwargs: object) -> HaarFaceDetector:
    return HaarFaceDetector(**kwargs)  # type: ignore[arg-type]
