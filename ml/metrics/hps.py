"""HPS v2 / v2.1 (tgxs002/HPSv2): open_clip ViT-H-14 fine-tuned on human preferences.

score = cosine(image embedding, prompt embedding), no ×100 (upstream `img_score.score` takes the
diagonal of `image_features @ text_features.T` of normalised features). Preprocessing is
upstream's `preprocess_val`, a letterbox (see `ml.metrics.preprocess.hps_letterbox`), not
open_clip's centre crop. The checkpoints hold `{"state_dict": ...}` with stock open_clip ViT-H-14
key names; no LAION base weights are needed (upstream builds and loads them first, a download,
then overwrites every tensor).

Weights dir layout:
    HPSv2/HPS_v2_compressed.pt, HPSv2/HPS_v2.1_compressed.pt
    HPSv2/open_clip_config.json   optional (tiny test models)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ml.devices import autocast, resolve_device, resolve_dtype
from ml.metrics.base import Metric, MetricInput, cat_scores, split_prompted
from ml.metrics.openclip import load_clip, tokenizer_for
from ml.metrics.preprocess import hps_letterbox
from ml.weights import require, sha256_file

logger = logging.getLogger(__name__)

HPS_DIR = "HPSv2"


class HPSMetric(Metric):
    level = "image"
    needs_prompt = True
    batch_size = 16
    checkpoint_file: str

    def __init__(
        self,
        weights_dir: Path,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.device = resolve_device(device)
        # upstream img_score runs under torch.cuda.amp.autocast (fp16)
        self.dtype = resolve_dtype(self.device, dtype, cuda_default=torch.float16)
        checkpoint = require(self.checkpoint_file, weights_dir)
        model, config = load_clip(
            "ViT-H-14",
            checkpoint.parent / "open_clip_config.json",
            checkpoint,
            quick_gelu=False,
            subkey="state_dict",
        )
        self.model = model.to(self.device).requires_grad_(False)
        self.image_size = int(config["vision_cfg"].get("image_size", 224))
        self.tokenizer = tokenizer_for(config)
        self.weights_sha256 = sha256_file(checkpoint, cache_dir=weights_dir)

    @torch.inference_mode()
    def score(self, batch: Sequence[MetricInput]) -> torch.Tensor:
        images, prompts = split_prompted(batch, self.name)
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            pixels = torch.stack([hps_letterbox(image, self.image_size) for image in images[chunk]])
            tokens = self.tokenizer(prompts[chunk])
            with autocast(self.device, self.dtype):
                image_features = self.model.encode_image(pixels.to(self.device), normalize=True)
                text_features = self.model.encode_text(tokens.to(self.device), normalize=True)
            similarity = (image_features.float() * text_features.float()).sum(dim=-1)
            results.append(similarity.cpu())
        return cat_scores(results)


class HPSv2Metric(HPSMetric):
    name = "hps_v2"
    checkpoint_file = f"{HPS_DIR}/HPS_v2_compressed.pt"


class HPSv21Metric(HPSMetric):
    name = "hps_v2.1"
    checkpoint_file = f"{HPS_DIR}/HPS_v2.1_compressed.pt"


def create_hps_v2(weights_dir: Path, device=None, dtype=None) -> HPSv2Metric:
    return HPSv2Metric(weights_dir, device=device, dtype=dtype)


def create_hps_v21(weights_dir: Path, device=None, dtype=None) -> HPSv21Metric:
    return HPSv21Metric(weights_dir, device=device, dtype=dtype)
