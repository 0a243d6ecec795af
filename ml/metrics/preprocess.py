"""The two image pipelines the upstream metrics use, reproduced op for op.

- `clip_center_crop`: OpenAI CLIP's `_transform(224)`, also used by ImageReward, FaceScore and the
  LAION aesthetic predictor: PIL bicubic resize of the shorter side, centre crop, RGB, [0, 1],
  CLIP mean/std.
- `hps_letterbox`: HPSv2's `preprocess_val` (its `img_score.py` builds the transforms with
  `light_augmentation=True`, i.e. `resize_longest_max=True`): RGB → tensor → bicubic tensor resize
  of the *longer* side to 224 (`round` per side) → zero padding to a square, split as upstream
  (left/top get the smaller half) → CLIP mean/std. No centre crop: nothing of the image is lost.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_center_crop(image: Image.Image, size: int = 224) -> torch.Tensor:
    # Resize and crop happen on the PIL image before the RGB conversion, in upstream's order.
    resized = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    cropped = TF.center_crop(resized, [size, size])
    return TF.normalize(TF.to_tensor(cropped.convert("RGB")), CLIP_MEAN, CLIP_STD)


def hps_letterbox(image: Image.Image, size: int = 224) -> torch.Tensor:
    tensor = TF.to_tensor(image.convert("RGB"))
    height, width = tensor.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = [round(height * scale), round(width * scale)]
        # antialias=True is torchvision's default since 0.17 (the versions this project allows);
        # spelled out so a future default change cannot move the scores.
        tensor = TF.resize(tensor, new_size, InterpolationMode.BICUBIC, antialias=True)
    # Upstream pads only when it resized; an image whose longer side is already `size` but is not
    # square would then reach the model unpadded and fail. Padding always is the evident intent.
    pad_h, pad_w = size - tensor.shape[1], size - tensor.shape[2]
    tensor = TF.pad(
        tensor, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0
    )
    return TF.normalize(tensor, CLIP_MEAN, CLIP_STD)
