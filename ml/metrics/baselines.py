"""Weight-free face-level baselines: what any learned metric has to beat.

- face_size: the shorter side of the face box in pixels (of the crop when no box is given);
  bigger faces are drawn with more detail, so a metric that only tracks size learns nothing.
- detector_confidence: the detector's own confidence, passed in with the crop.
- sharpness: variance of the Laplacian of the grey crop resized to a fixed size, so the value
  measures blur rather than face size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ml.metrics.base import Metric, MetricInput, face_crops_of

SHARPNESS_SIZE = 128
# The 4-neighbour Laplacian, cv2.Laplacian(ksize=1).
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


class FaceSizeMetric(Metric):
    name = "face_size"
    level = "face"

    def score(self, batch: Sequence[MetricInput]) -> torch.Tensor:
        sizes = []
        for crop in face_crops_of(batch, self.name):
            if crop.box is not None:
                x0, y0, x1, y1 = crop.box
                sizes.append(min(x1 - x0, y1 - y0))
            else:
                sizes.append(min(crop.image.size))
        return torch.tensor(sizes, dtype=torch.float32)


class DetectorConfidenceMetric(Metric):
    name = "detector_confidence"
    level = "face"

    def score(self, batch: Sequence[MetricInput]) -> torch.Tensor:
        values = []
        for position, crop in enumerate(face_crops_of(batch, self.name)):
            if crop.confidence is None:
                raise ValueError(
                    f"{self.name}: face {position} has no detector confidence (pass FaceCrop(...,"
                    " confidence=...))"
                )
            values.append(crop.confidence)
        return torch.tensor(values, dtype=torch.float32)


def _grey(image: Image.Image) -> np.ndarray:
    resized = image.convert("L").resize((SHARPNESS_SIZE, SHARPNESS_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


class SharpnessMetric(Metric):
    name = "sharpness"
    level = "face"

    def score(self, batch: Sequence[MetricInput]) -> torch.Tensor:
        crops = face_crops_of(batch, self.name)
        if not crops:
            return torch.empty(0, dtype=torch.float32)
        greys = torch.from_numpy(np.stack([_grey(crop.image) for crop in crops]))[:, None]
        # Valid convolution only: border pixels would see padding, not the face.
        response = F.conv2d(greys, _LAPLACIAN)
        return response.flatten(1).var(dim=1, unbiased=False)


def create_face_size(weights_dir: Path, device=None, dtype=None) -> FaceSizeMetric:
    return FaceSizeMetric()


def create_detector_confidence(
    weights_dir: Path, device=None, dtype=None
) -> DetectorConfidenceMetric:
    return DetectorConfidenceMetric()


def create_sharpness(weights_dir: Path, device=None, dtype=None) -> SharpnessMetric:
    return SharpnessMetric()
