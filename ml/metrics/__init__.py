"""The metric zoo: `create(name, weights_dir=..., device=..., dtype=...) -> Metric`.

A registry in the spirit of open_clip's `create_model`: each entry names its factory (imported
only when the metric is created, so listing metrics and their files stays cheap) and the weight
files it needs relative to the weights dir. Missing files raise `MetricUnavailable` before any
model is built; nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ml.metrics.base import (
    CheckpointMismatch,
    FaceCrop,
    Level,
    Metric,
    MetricInput,
    MetricUnavailable,
)
from ml.weights import locate, resolve_weights_dir

if TYPE_CHECKING:  # torch is imported by the metrics themselves: listing stays cheap
    import torch

__all__ = [
    "CheckpointMismatch",
    "FaceCrop",
    "Metric",
    "MetricInput",
    "MetricSpec",
    "MetricUnavailable",
    "available",
    "create",
    "get_spec",
    "missing_files",
    "register",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    factory: str  # "module:function", called as function(weights_dir, device=..., dtype=...)
    level: Level
    higher_is_better: bool
    required_files: tuple[str, ...]
    description: str


_REGISTRY: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"metric {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def available() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> MetricSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(_REGISTRY)}") from None


def missing_files(name: str, weights_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Expected files found neither in the weights dir nor in the Hugging Face cache."""
    root = resolve_weights_dir(weights_dir)
    return [root / rel for rel in get_spec(name).required_files if locate(rel, root) is None]


def create(
    name: str,
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
) -> Metric:
    """Build a loaded metric. `weights_dir` defaults to `$FACEBENCH_WEIGHTS_DIR` (or var/weights);
    `dtype` defaults to bf16/fp16 autocast on CUDA and fp32 on the CPU."""
    spec = get_spec(name)
    root = resolve_weights_dir(weights_dir)
    missing = missing_files(name, root)
    if missing:
        raise MetricUnavailable(name, missing, root)
    module_name, function_name = spec.factory.split(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    metric: Metric = factory(root, device=device, dtype=dtype)
    if (metric.name, metric.level) != (spec.name, spec.level):
        raise RuntimeError(
            f"factory of {name!r} built {metric!r}; registry says level {spec.level}"
        )
    metric.required_files = spec.required_files
    logger.info("created metric %s", metric.version)
    return metric


_IR = "ml.metrics.imagereward"
_BLIP_TOKENIZER = "bert-base-uncased/vocab.txt"
_AESTHETIC_FILES = (
    "aesthetic/sac+logos+ava1-l14-linearMSE.pth",
    "CLIP/ViT-L-14.pt",
)

for _spec in (
    MetricSpec(
        "imagereward",
        f"{_IR}:create_image_reward",
        "image",
        True,
        ("ImageReward/ImageReward.pt", "ImageReward/med_config.json", _BLIP_TOKENIZER),
        "THUDM ImageReward v1.0: normalised reward of (image, prompt)",
    ),
    MetricSpec(
        "face_score",
        f"{_IR}:create_face_score",
        "face",
        True,
        ("FaceScore/FS_model.pt", "FaceScore/med_config.json", _BLIP_TOKENIZER),
        "OPPO FaceScore: ImageReward fine-tuned on face pairs, raw reward per face crop",
    ),
    MetricSpec(
        "hps_v2",
        "ml.metrics.hps:create_hps_v2",
        "image",
        True,
        ("HPSv2/HPS_v2_compressed.pt",),
        "HPS v2: cosine of open_clip ViT-H-14 image and prompt embeddings",
    ),
    MetricSpec(
        "hps_v2.1",
        "ml.metrics.hps:create_hps_v21",
        "image",
        True,
        ("HPSv2/HPS_v2.1_compressed.pt",),
        "HPS v2.1: cosine of open_clip ViT-H-14 image and prompt embeddings",
    ),
    MetricSpec(
        "aesthetic",
        "ml.metrics.aesthetic:create_aesthetic",
        "image",
        True,
        _AESTHETIC_FILES,
        "LAION improved aesthetic predictor on OpenAI CLIP ViT-L/14, whole image",
    ),
    MetricSpec(
        "aesthetic_face",
        "ml.metrics.aesthetic:create_face_aesthetic",
        "face",
        True,
        _AESTHETIC_FILES,
        "LAION improved aesthetic predictor on a face crop",
    ),
    MetricSpec(
        "magface",
        "ml.metrics.fqa:create_magface",
        "face",
        True,
        ("MagFace/magface_epoch_00025.pth",),
        "MagFace iResNet-100: feature magnitude of the ArcFace-aligned 112 px face",
    ),
    MetricSpec(
        "cr_fiqa",
        "ml.metrics.fqa:create_cr_fiqa",
        "face",
        True,
        ("CR-FIQA/181952backbone.pth",),
        "CR-FIQA(L) iResNet-100: quality head output on the ArcFace-aligned 112 px face",
    ),
    MetricSpec(
        "face_size",
        "ml.metrics.baselines:create_face_size",
        "face",
        True,
        (),
        "baseline: shorter side of the face box in pixels",
    ),
    MetricSpec(
        "detector_confidence",
        "ml.metrics.baselines:create_detector_confidence",
        "face",
        True,
        (),
        "baseline: the face detector's confidence",
    ),
    MetricSpec(
        "sharpness",
        "ml.metrics.baselines:create_sharpness",
        "face",
        True,
        (),
        "baseline: variance of the Laplacian of the grey face crop at 128x128",
    ),
):
    register(_spec)
