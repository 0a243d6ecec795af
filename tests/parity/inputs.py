"""Inputs shared by the parity reference script (run in a side venv) and the parity test.

Everything is rebuilt from seeds and from photos that ship inside installed wheels, so the
reference JSON stays small: it stores names, prompts, boxes and the upstream scores only.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

IMAGEREWARD_SEED = 0
FACE_SCORE_SEED = 1
HPS_SEED = 2
AESTHETIC_SEED = 3
MAGFACE_SEED = 5
CR_FIQA_SEED = 6

PROMPTS = {
    "astronaut": "a photo of an astronaut, smiling",
    "camera": "an old man with a camera",
    "noise": "red and blue",
    "tall_astronaut": "a close up portrait of the astronaut in a white suit with a red cat and a "
    "blue dog and an old man and a young woman on the photo",  # longer than 35 tokens
}

# x0, y0, x1, y1 boxes in the named image (fractional, as detectors give them).
FACE_BOXES = {
    "astronaut": [(180.4, 20.7, 300.2, 170.9), (0.6, 0.2, 90.5, 120.8)],
    "camera": [(200.3, 50.2, 290.9, 160.1)],
}


# 112×112 crops (left, top, right, bottom), the size of aligned FQA inputs.
FQA_CROPS = {
    "astronaut": (185, 40, 297, 152),
    "camera": (190, 40, 302, 152),
    "noise": (0, 0, 112, 112),
}


def images() -> dict[str, Image.Image]:
    from skimage import data as skdata

    rng = np.random.default_rng(7)
    astronaut = Image.fromarray(skdata.astronaut())
    return {
        "astronaut": astronaut,
        "camera": Image.fromarray(skdata.camera()),
        "noise": Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)),
        "tall_astronaut": astronaut.resize((150, 400), Image.Resampling.BILINEAR),
    }


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over keys and tensor bytes: tells whether tiny weights rebuilt today are the ones
    the reference was computed with (torch's RNG could change across versions)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()
