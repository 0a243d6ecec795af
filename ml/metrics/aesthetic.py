"""The LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor).

score = MLP(normalize(CLIP-ViT-L/14-openai.encode_image(image))), the MLP of ImageReward's shape
(768→1024→128→64→16→1, dropouts, no activations) with the keys of
`sac+logos+ava1-l14-linearMSE.pth` (`layers.0.weight` … `layers.7.bias`). Preprocessing is
OpenAI CLIP's (`clip.load` preprocess). Upstream L2-normalises in numpy with a zero-norm guard;
so do we, in torch.

Weights dir layout:
    aesthetic/sac+logos+ava1-l14-linearMSE.pth   (in the upstream repository)
    CLIP/ViT-L-14.pt                             OpenAI's CLIP ViT-L/14 as `clip.load("ViT-L/14")`
        caches it (TorchScript), or a state dict with open_clip key names
    CLIP/ViT-L-14.open_clip_config.json          optional (tiny test models)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ml.devices import autocast, resolve_device, resolve_dtype
from ml.metrics.base import CheckpointMismatch, Level, Metric, MetricInput, cat_scores, images_of
from ml.metrics.checkpoints import load_strict, read_state_dict
from ml.metrics.imagereward import RewardMLP
from ml.metrics.openclip import load_clip
from ml.metrics.preprocess import clip_center_crop
from ml.weights import require, sha256_file

logger = logging.getLogger(__name__)

HEAD_FILE = "aesthetic/sac+logos+ava1-l14-linearMSE.pth"
CLIP_FILE = "CLIP/ViT-L-14.pt"
CLIP_CONFIG_FILE = "CLIP/ViT-L-14.open_clip_config.json"


class AestheticMetric(Metric):
    name = "aesthetic"
    level: Level = "image"
    batch_size = 32

    def __init__(
        self,
        weights_dir: Path,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.device = resolve_device(device)
        # upstream runs OpenAI's CLIP as loaded on CUDA: fp16
        self.dtype = resolve_dtype(self.device, dtype, cuda_default=torch.float16)
        clip, config = load_clip(
            "ViT-L-14",
            weights_dir / CLIP_CONFIG_FILE,
            require(CLIP_FILE, weights_dir),
            quick_gelu=True,
        )
        self.image_size = int(config["vision_cfg"].get("image_size", 224))
        # Only the image tower is used; the text tower is loaded (strictness) and dropped.
        self.visual = clip.visual.to(self.device).requires_grad_(False)
        head_file = require(HEAD_FILE, weights_dir)
        with torch.device("meta"):
            self.head = RewardMLP(config["embed_dim"])
        head_state = read_state_dict(head_file)
        first = head_state.get("layers.0.weight")
        if first is not None and first.shape[1] != config["embed_dim"]:
            raise CheckpointMismatch(
                f"{head_file} expects {first.shape[1]}-d CLIP embeddings, the CLIP tower gives "
                f"{config['embed_dim']}"
            )
        load_strict(self.head, head_state, source=head_file, assign=True)
        self.head = self.head.float().eval().to(self.device).requires_grad_(False)
        self.weights_sha256 = sha256_file(head_file, cache_dir=weights_dir)
        self.clip_sha256 = sha256_file(require(CLIP_FILE, weights_dir), cache_dir=weights_dir)

    @property
    def version(self) -> str:
        # Both files shape the score: the head and the CLIP tower under it.
        return f"{super().version}-clip:{self.clip_sha256[:16]}"

    @torch.inference_mode()
    def score(self, batch: Sequence[MetricInput]) -> torch.Tensor:
        images = images_of(batch, self.name)
        results = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack(
                [
                    clip_center_crop(image, self.image_size)
                    for image in images[start : start + self.batch_size]
                ]
            ).to(self.device)
            with autocast(self.device, self.dtype):
                embeddings = self.visual(pixels)
            embeddings = embeddings.float()
            norms = embeddings.norm(dim=-1, keepdim=True)
            embeddings = embeddings / torch.where(norms == 0, torch.ones_like(norms), norms)
            results.append(self.head(embeddings).squeeze(-1).cpu())
        return cat_scores(results)


class FaceAestheticMetric(AestheticMetric):
    """The same predictor applied to face crops."""

    name = "aesthetic_face"
    level = "face"


def create_aesthetic(weights_dir: Path, device=None, dtype=None) -> AestheticMetric:
    return AestheticMetric(weights_dir, device=device, dtype=dtype)


def create_face_aesthetic(weights_dir: Path, device=None, dtype=None) -> FaceAestheticMetric:
    return FaceAestheticMetric(weights_dir, device=device, dtype=dtype)
