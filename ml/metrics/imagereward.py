"""ImageReward (THUDM) and Face Score (OPPO), which share one architecture.

reward = MLP(BERT-with-cross-attention(prompt, ViT(image))[:, 0]), MLP 768→1024→128→64→16→1 with
dropouts and no activations. ImageReward normalises the reward, `(r − 0.16717) / 1.03334`; Face
Score returns the raw MLP output of each face crop under the fixed prompt "A face.".

Matches the official inference code (`ImageReward.score` / `FaceScore.score`): CLIP-style
preprocessing (bicubic resize of the shorter side to 224 px, centre crop, CLIP mean/std) and
`BertTokenizer` padding to 35 tokens. Note the official inference feeds the tokenizer's ids as they
are ([CLS] first); BLIP's `[ENC]` token is added to the vocabulary but never substituted.

Weights dir layout (relative paths):
    ImageReward/ImageReward.pt, ImageReward/med_config.json
    FaceScore/FS_model.pt,      FaceScore/med_config.json
    bert-base-uncased/vocab.txt  (tokenizer shared by both)
    <model dir>/vision_config.json  optional: vision tower size, ViT-L/16 when absent
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

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
    split_prompted,
)
from ml.metrics.blip import BLIPEncoder, TextConfig, VisionConfig
from ml.metrics.checkpoints import load_strict, read_state_dict
from ml.metrics.preprocess import clip_center_crop
from ml.weights import require, sha256_file

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
MAX_PROMPT_TOKENS = 35
# The mean and std of ImageReward's raw rewards on its training set (ImageReward.py).
IMAGE_REWARD_MEAN = 0.16717362830052426
IMAGE_REWARD_STD = 1.0333394966054072
FACE_SCORE_PROMPT = "A face."
TOKENIZER_DIR = "bert-base-uncased"
VISION_CONFIG_FILENAME = "vision_config.json"


# --- model ----------------------------------------------------------------------------------


class RewardMLP(nn.Module):
    """ImageReward's head: linear layers and dropouts, no activations (upstream commented them out)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )
        # Upstream init: N(0, 1/(input_size+1)) weights, zero biases.
        for name, param in self.layers.named_parameters():
            if name.endswith("weight"):
                nn.init.normal_(param, std=1.0 / (input_size + 1))
            else:
                nn.init.zeros_(param)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ImageRewardModel(nn.Module):
    """`blip` + `mlp`, the module layout of the official ImageReward / FaceScore state dicts."""

    def __init__(self, vision: VisionConfig, text: TextConfig) -> None:
        super().__init__()
        self.blip = BLIPEncoder(vision, text)
        self.mlp = RewardMLP(text.hidden_size)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Raw rewards, shape (batch,), float32."""
        features = self.blip(pixels, input_ids, attention_mask)
        # The head runs in fp32, as upstream does (`.float()` before the MLP).
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            return self.mlp(features.float()).squeeze(-1)

    @classmethod
    def from_files(
        cls, checkpoint: Path, med_config: Path, vision_config: Path | None = None
    ) -> ImageRewardModel:
        """Build from configs and load the checkpoint strictly (eval mode, CPU, fp32)."""
        vision = VisionConfig.from_json_file(vision_config) if vision_config else VisionConfig()
        text = TextConfig.from_med_config(med_config, encoder_width=vision.width)
        # Built on the meta device: no time spent on a random init that the checkpoint replaces
        # (seconds for ViT-L), then the checkpoint's tensors are assigned in.
        with torch.device("meta"):
            model = cls(vision, text)
        state_dict = read_state_dict(checkpoint)
        # `position_ids` is a constant arange; med.py saves it, but checkpoints written by newer
        # BERT code may not. Supplying it changes no number.
        position_key = "blip.text_encoder.embeddings.position_ids"
        if position_key not in state_dict:
            state_dict[position_key] = torch.arange(text.max_position_embeddings)[None]
        load_strict(model, state_dict, source=checkpoint, assign=True)
        return model.float().eval()


# --- preprocessing --------------------------------------------------------------------------


def preprocess_image(image: Image.Image) -> torch.Tensor:
    """Upstream `_transform(224)`: resize shorter side (bicubic, PIL) → centre crop → RGB →
    [0, 1] → CLIP mean/std. Runs on PIL so that pixels match the official code exactly."""
    return clip_center_crop(image, IMAGE_SIZE)


def load_tokenizer(folder: Path):  # -> transformers BertTokenizer
    """bert-base-uncased from a local folder plus BLIP's `[DEC]` / `[ENC]` tokens (ids 30522/30523
    for the real vocab), as BLIP's `init_tokenizer` adds them. Never touches the network."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def tokenize(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """ids and attention mask, padded/truncated to 35 tokens, exactly as upstream."""
    encoded = tokenizer(
        list(prompts),
        padding="max_length",
        truncation=True,
        max_length=MAX_PROMPT_TOKENS,
        return_tensors="pt",
    )
    return encoded["input_ids"], encoded["attention_mask"]


# --- faces ----------------------------------------------------------------------------------


def crop_face(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The official FaceScore crop: the detector's raw box grown by 1 px on each side, with the
    same int() truncation; Face Score's preprocessing then resizes and centre-crops it to 224.

    Unlike upstream, the box is clamped to the image (upstream slices with negative indices for
    boxes touching the left/top edge, and silently drops greyscale crops; we convert to RGB).
    """
    x0, y0, x1, y1 = (float(value) for value in box)
    left, top = int(x0 - 1), int(y0 - 1)
    right, bottom = int(x1 + 1), int(y1 + 1)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, image.width), min(bottom, image.height)
    if right <= left or bottom <= top:
        raise ValueError(f"face box {tuple(box)} is empty inside a {image.size} image")
    return image.convert("RGB").crop((left, top, right, bottom))


def face_crops(
    image: Image.Image, detections: Sequence[Any], *, min_confidence: float = 0.9
) -> list[FaceCrop]:
    """Face Score inputs for the detected faces of one image, cropped the official way.

    `detections` are `ml.faces.Detection`-like (`.box`, `.confidence`). Official FaceScore keeps
    RetinaFace detections with confidence ≥ 0.9; other detectors' scales differ, hence the knob.
    """
    crops = []
    for detection in detections:
        if detection.confidence < min_confidence:
            continue
        x0, y0, x1, y1 = (float(value) for value in detection.box)
        crops.append(
            FaceCrop(crop_face(image, (x0, y0, x1, y1)), (x0, y0, x1, y1), detection.confidence)
        )
    return crops


Aggregate = Literal["mean", "min", "largest"]


def aggregate_faces(
    scores: Sequence[float],
    boxes: Sequence[Sequence[float]] | None = None,
    how: Aggregate = "mean",
) -> float | None:
    """One image-level Face Score from its faces' scores; None when the image has no face.

    `largest` takes the face with the largest box area and needs `boxes`.
    """
    if len(scores) == 0:
        return None
    if how == "mean":
        return float(sum(scores) / len(scores))
    if how == "min":
        return float(min(scores))
    if how == "largest":
        if boxes is None or len(boxes) != len(scores):
            raise ValueError("aggregate 'largest' needs one box per face score")
        areas = [max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0) for b in boxes]
        return float(scores[max(range(len(areas)), key=areas.__getitem__)])
    raise ValueError(f"unknown aggregate {how!r}; use mean, min or largest")


def aggregate_images(
    per_image: Sequence[tuple[Sequence[float], Sequence[Sequence[float]]]],
    how: Aggregate = "mean",
) -> tuple[list[float | None], int]:
    """Image-level scores for many images, and how many images had no face (no score)."""
    values = [aggregate_faces(scores, boxes, how) for scores, boxes in per_image]
    return values, sum(value is None for value in values)


# --- metrics --------------------------------------------------------------------------------


class _BLIPRewardMetric(Metric):
    checkpoint_file: str
    med_config_file: str
    batch_size = 16

    def __init__(
        self,
        weights_dir: Path,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        checkpoint = require(self.checkpoint_file, weights_dir)
        vision_config = checkpoint.parent / VISION_CONFIG_FILENAME
        self.model = ImageRewardModel.from_files(
            checkpoint,
            require(self.med_config_file, weights_dir),
            vision_config if vision_config.is_file() else None,
        ).to(self.device)
        self.model.requires_grad_(False)
        tokenizer_dir = require(f"{TOKENIZER_DIR}/vocab.txt", weights_dir).parent
        self.tokenizer = load_tokenizer(tokenizer_dir)
        vocab_size = self.model.blip.text_encoder.config.vocab_size
        if len(self.tokenizer) > vocab_size:
            raise CheckpointMismatch(
                f"tokenizer in {tokenizer_dir} has {len(self.tokenizer)} tokens "
                f"with [DEC]/[ENC], more than the model's vocab_size {vocab_size}"
            )
        self.weights_sha256 = sha256_file(checkpoint, cache_dir=weights_dir)
        logger.info("loaded %s from %s on %s (%s)", self.name, checkpoint, self.device, self.dtype)

    @torch.inference_mode()
    def _raw_rewards(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            pixels = torch.stack([preprocess_image(image) for image in images[chunk]])
            input_ids, attention_mask = tokenize(self.tokenizer, prompts[chunk])
            with autocast(self.device, self.dtype):
                rewards = self.model(
                    pixels.to(self.device, non_blocking=True),
                    input_ids.to(self.device),
                    attention_mask.to(self.device),
                )
            results.append(rewards.float().cpu())
        return cat_scores(results)


class ImageRewardMetric(_BLIPRewardMetric):
    name = "imagereward"
    level = "image"
    needs_prompt = True
    checkpoint_file = "ImageReward/ImageReward.pt"
    med_config_file = "ImageReward/med_config.json"

    def score(self, batch: Sequence[MetricInput]) -> torch.Tensor:
        images, prompts = split_prompted(batch, self.name)
        raw = self._raw_rewards(images, prompts)
        return (raw - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD


class FaceScoreMetric(_BLIPRewardMetric):
    name = "face_score"
    level = "face"
    checkpoint_file = "FaceScore/FS_model.pt"
    med_config_file = "FaceScore/med_config.json"

    def score(self, batch: Sequence[MetricInput]) -> torch.Tensor:
        crops = [crop.image for crop in face_crops_of(batch, self.name)]
        return self._raw_rewards(crops, [FACE_SCORE_PROMPT] * len(crops))

    def score_image_faces(
        self, image: Image.Image, boxes: Sequence[Sequence[float]]
    ) -> torch.Tensor:
        """Scores of the faces at `boxes` in `image`, cropped the official way."""
        crops = []
        for box in boxes:
            x0, y0, x1, y1 = (float(value) for value in box)
            crops.append(FaceCrop(crop_face(image, box), (x0, y0, x1, y1)))
        return self.score(crops)


def create_image_reward(weights_dir: Path, device=None, dtype=None) -> ImageRewardMetric:
    return ImageRewardMetric(weights_dir, device=device, dtype=dtype)


def create_face_score(weights_dir: Path, device=None, dtype=None) -> FaceScoreMetric:
    return FaceScoreMetric(weights_dir, device=device, dtype=dtype)
