"""Face image quality assessment (FQA) on ArcFace-aligned 112×112 crops: MagFace and CR-FIQA.

Both are iResNet-100 face-recognition backbones whose parameter names follow the upstream
`iresnet.py` files (IrvingMeng/MagFace `models/iresnet.py`, fdbtrs/CR-FIQA `backbones/iresnet.py`):
- MagFace: quality = L2 norm of the 512-d feature (magnitude-aware margin training makes the norm
  track quality). Upstream reads crops with cv2 (BGR), scales to [0, 1], no mean/std. Checkpoint
  `magface_epoch_00025.pth`: `{"state_dict": ...}` with the backbone under `features.module.` (or
  `module.features.`) and the MagLinear classifier under `fc.` — the classifier is training-only
  and dropped, by name; anything else unexpected is an error.
- CR-FIQA (L): quality = the `qs` head's output. Trained on RGB crops scaled to [-1, 1] (its
  README; the evaluation script's BGR default contradicts the training data). Checkpoint
  `181952backbone.pth`: the backbone state dict itself.
BatchNorm eps differ: 2e-5 for MagFace, 1e-5 for CR-FIQA.

Inputs are face crops. For meaningful numbers pass `align_face(image, landmarks)` crops (the
insightface 5-point similarity alignment both models were trained on); any other crop is
resized to 112×112 as CR-FIQA's own `get_feature` does.

Weights dir layout:
    MagFace/magface_epoch_00025.pth, CR-FIQA/181952backbone.pth
    <model dir>/iresnet_config.json   optional (tiny test models), iResNet-100 when absent
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ml.devices import autocast, resolve_device, resolve_dtype
from ml.metrics.base import (
    CheckpointMismatch,
    FaceCrop,
    Metric,
    MetricInput,
    cat_scores,
    face_crops_of,
)
from ml.metrics.checkpoints import load_strict, read_state_dict
from ml.weights import require, sha256_file

logger = logging.getLogger(__name__)

FACE_SIZE = 112
CONFIG_FILENAME = "iresnet_config.json"
# insightface's ArcFace template: eyes, nose tip, mouth corners in a 112×112 crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def align_face(image: Image.Image, landmarks: Sequence[Sequence[float]]) -> Image.Image:
    """insightface `norm_crop`: similarity transform of the 5 landmarks onto the ArcFace
    template, warped to 112×112 with a black border."""
    import cv2
    from skimage.transform import SimilarityTransform

    source = np.asarray(landmarks, dtype=np.float32)
    if source.shape != (5, 2):
        raise ValueError(f"expected 5 (x, y) landmarks, got shape {source.shape}")
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        transform = SimilarityTransform.from_estimate(source, ARCFACE_TEMPLATE)
        estimated = bool(transform)
    else:
        transform = SimilarityTransform()
        estimated = transform.estimate(source, ARCFACE_TEMPLATE)
    if not estimated:
        raise ValueError(f"landmarks {source.tolist()} do not define a similarity transform")
    pixels = np.asarray(image.convert("RGB"))
    aligned = cv2.warpAffine(pixels, transform.params[:2], (FACE_SIZE, FACE_SIZE), borderValue=0.0)
    return Image.fromarray(aligned)


def aligned_face_crops(image: Image.Image, detections: Sequence[Any]) -> list[FaceCrop]:
    """FQA inputs for detected faces (`ml.faces.Detection`-like: `.box`, `.confidence`,
    `.landmarks`): aligned with the 5 landmarks when the detector gave them; otherwise the box
    crop, which the metrics resize to 112×112 — unaligned, so less faithful (logged)."""
    crops = []
    for detection in detections:
        x0, y0, x1, y1 = (float(value) for value in detection.box)
        landmarks = getattr(detection, "landmarks", None)
        if landmarks is not None:
            face = align_face(image, landmarks)
        else:
            logger.debug("no landmarks for face %s: FQA sees an unaligned crop", detection.box)
            face = image.convert("RGB").crop((round(x0), round(y0), round(x1), round(y1)))
        crops.append(FaceCrop(face, (x0, y0, x1, y1), detection.confidence))
    return crops


@dataclass(frozen=True)
class IResNetConfig:
    layers: tuple[int, ...] = (3, 13, 30, 3)  # iResNet-100
    widths: tuple[int, ...] = (64, 128, 256, 512)
    num_features: int = 512
    bn_eps: float = 1e-5
    quality_head: bool = False  # CR-FIQA's `qs`

    @classmethod
    def from_json_file(cls, path: Path, *, bn_eps: float, quality_head: bool) -> IResNetConfig:
        raw = json.loads(path.read_text())
        # eps and the head are facts of the metric, not of a checkpoint's size.
        known = {"layers", "widths", "num_features"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(
                f"{path}: unknown iResNet config keys {unknown}; known {sorted(known)}"
            )
        return cls(
            layers=tuple(raw.get("layers", cls.layers)),
            widths=tuple(raw.get("widths", cls.widths)),
            num_features=int(raw.get("num_features", cls.num_features)),
            bn_eps=bn_eps,
            quality_head=quality_head,
        )


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, eps: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=eps)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=eps)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=eps),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class IResNet(nn.Module):
    """The insightface iResNet; forward returns (features, quality head output or None)."""

    def __init__(self, config: IResNetConfig) -> None:
        super().__init__()
        eps = config.bn_eps
        stem = config.widths[0]
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=eps)
        self.prelu = nn.PReLU(stem)
        inplanes = stem
        for index, (depth, planes) in enumerate(zip(config.layers, config.widths, strict=True)):
            blocks = [IBasicBlock(inplanes, planes, 2, eps)]
            blocks += [IBasicBlock(planes, planes, 1, eps) for _ in range(depth - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=eps)
        self.fc = nn.Linear(inplanes * 7 * 7, config.num_features)
        self.features = nn.BatchNorm1d(config.num_features, eps=eps)
        self.qs = nn.Linear(config.num_features, 1) if config.quality_head else None
        self.stages = len(config.layers)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.prelu(self.bn1(self.conv1(pixels)))
        for index in range(self.stages):
            x = getattr(self, f"layer{index + 1}")(x)
        x = torch.flatten(self.bn2(x), 1)
        # The embedding head runs in fp32 (upstream CR-FIQA leaves autocast before `fc`).
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            features = self.features(self.fc(x.float()))
            quality = self.qs(features) if self.qs is not None else None
        return features, quality


def _face_pixels(image: Image.Image) -> np.ndarray:
    rgb = image.convert("RGB")
    if rgb.size != (FACE_SIZE, FACE_SIZE):
        rgb = rgb.resize((FACE_SIZE, FACE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32)


class _FQAMetric(Metric):
    level = "face"
    batch_size = 64
    checkpoint_file: str
    bn_eps: float
    quality_head: bool

    def __init__(
        self,
        weights_dir: Path,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        checkpoint = require(self.checkpoint_file, weights_dir)
        config_file = checkpoint.parent / CONFIG_FILENAME
        if config_file.is_file():
            config = IResNetConfig.from_json_file(
                config_file, bn_eps=self.bn_eps, quality_head=self.quality_head
            )
        else:
            config = IResNetConfig(bn_eps=self.bn_eps, quality_head=self.quality_head)
        with torch.device("meta"):
            model = IResNet(config)
        load_strict(model, self._backbone_state(checkpoint), source=checkpoint, assign=True)
        self.model = model.float().eval().to(self.device).requires_grad_(False)
        self.weights_sha256 = sha256_file(checkpoint, cache_dir=weights_dir)

    def _backbone_state(self, checkpoint: Path) -> dict[str, torch.Tensor]:
        return read_state_dict(checkpoint)

    def _to_input(self, pixels: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _quality(self, features: torch.Tensor, head: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, batch: Sequence[MetricInput]) -> torch.Tensor:
        crops = [crop.image for crop in face_crops_of(batch, self.name)]
        results = []
        for start in range(0, len(crops), self.batch_size):
            pixels = np.stack(
                [_face_pixels(crop) for crop in crops[start : start + self.batch_size]]
            )
            inputs = self._to_input(pixels).to(self.device)
            with autocast(self.device, self.dtype):
                features, head = self.model(inputs)
            results.append(self._quality(features.float(), head).float().cpu())
        return cat_scores(results)


class MagFaceMetric(_FQAMetric):
    name = "magface"
    checkpoint_file = "MagFace/magface_epoch_00025.pth"
    bn_eps = 2e-5
    quality_head = False
    # Prefixes of the backbone in MagFace training checkpoints (DataParallel / DDP wrappers), and
    # of the training-only MagLinear classifier, which inference drops.
    _BACKBONE_PREFIXES = ("features.module.", "module.features.")
    _CLASSIFIER_PREFIXES = ("fc.", "module.fc.")

    def _backbone_state(self, checkpoint: Path) -> dict[str, torch.Tensor]:
        raw = read_state_dict(checkpoint, subkey="state_dict")
        state: dict[str, torch.Tensor] = {}
        unexpected = []
        for key, tensor in raw.items():
            prefix = next((p for p in self._BACKBONE_PREFIXES if key.startswith(p)), None)
            if prefix is not None:
                state[key[len(prefix) :]] = tensor
            elif not key.startswith(self._CLASSIFIER_PREFIXES):
                unexpected.append(key)
        if unexpected:
            raise CheckpointMismatch(
                f"checkpoint {checkpoint}: {len(unexpected)} keys are neither backbone "
                f"({' / '.join(self._BACKBONE_PREFIXES)}) nor classifier: {unexpected[:5]}"
            )
        return state

    def _to_input(self, pixels: np.ndarray) -> torch.Tensor:
        # cv2 order (BGR), [0, 1]: upstream ToTensor + Normalize(mean 0, std 1) on cv2.imread.
        return torch.from_numpy(pixels[..., ::-1].copy()).permute(0, 3, 1, 2) / 255.0

    def _quality(self, features: torch.Tensor, head: torch.Tensor | None) -> torch.Tensor:
        return features.norm(dim=1)


class CRFIQAMetric(_FQAMetric):
    name = "cr_fiqa"
    checkpoint_file = "CR-FIQA/181952backbone.pth"
    bn_eps = 1e-5
    quality_head = True

    def _to_input(self, pixels: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5

    def _quality(self, features: torch.Tensor, head: torch.Tensor | None) -> torch.Tensor:
        assert head is not None
        return head.squeeze(-1)


def create_magface(weights_dir: Path, device=None, dtype=None) -> MagFaceMetric:
    return MagFaceMetric(weights_dir, device=device, dtype=dtype)


def create_cr_fiqa(weights_dir: Path, device=None, dtype=None) -> CRFIQAMetric:
    return CRFIQAMetric(weights_dir, device=device, dtype=dtype)
