"""Weight-free face baselines: size, detector confidence, Laplacian sharpness."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data as skdata

from ml import metrics
from ml.metrics import FaceCrop
from ml.metrics.baselines import SHARPNESS_SIZE


def _face() -> Image.Image:
    return Image.fromarray(skdata.astronaut()).crop((170, 20, 310, 180))


def test_baselines_need_no_weights(tmp_path):
    for name in ("face_size", "detector_confidence", "sharpness"):
        metric = metrics.create(name, weights_dir=tmp_path)
        assert metric.level == "face"
        assert metric.version == f"{name}-code1"


def test_face_size_is_the_shorter_side_of_the_box_or_of_the_crop():
    metric = metrics.create("face_size")
    crop = _face()
    scores = metric.score([crop, FaceCrop(crop, box=(10.0, 20.0, 60.5, 100.0))])
    torch.testing.assert_close(scores, torch.tensor([140.0, 50.5]))


def test_detector_confidence_is_passed_through_and_required():
    metric = metrics.create("detector_confidence")
    crop = _face()
    scores = metric.score([FaceCrop(crop, confidence=0.93), FaceCrop(crop, confidence=0.5)])
    torch.testing.assert_close(scores, torch.tensor([0.93, 0.5]))
    with pytest.raises(ValueError, match="face 0 has no detector confidence"):
        metric.score([crop])


def test_sharpness_is_the_variance_of_the_laplacian_of_the_resized_grey_crop():
    crop = _face()
    grey = np.asarray(
        crop.convert("L").resize((SHARPNESS_SIZE, SHARPNESS_SIZE), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    reference = cv2.Laplacian(grey, cv2.CV_32F, ksize=1)[1:-1, 1:-1].var()
    score = metrics.create("sharpness").score([crop])
    assert score.item() == pytest.approx(float(reference), rel=1e-4)


def test_blurred_faces_are_less_sharp_whatever_their_size():
    metric = metrics.create("sharpness")
    crop = _face()
    blurred = crop.filter(ImageFilter.GaussianBlur(3))
    big = crop.resize((crop.width * 3, crop.height * 3), Image.Resampling.BICUBIC)
    scores = metric.score([crop, blurred, big])
    assert scores[1] < scores[0] / 3
    # the fixed resize makes the value about blur, not pixel count
    assert scores[0] / 2 < scores[2] < scores[0] * 2
    single = torch.cat([metric.score([c]) for c in (crop, blurred, big)])
    torch.testing.assert_close(scores, single)
