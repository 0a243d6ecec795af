"""The precomputed inputs of DM fine-tuning: VAE latents of each pair and prompt embeddings.

The VAE and the text encoder are frozen, so encoding every (good, bad) pair and prompt once
before training, instead of on every step, costs nothing in quality and removes both models from
the step. The result is cached on disk under a key that hashes the model files, the pair bytes
and the resolution, so a resumed or rerun job reuses it and a changed input never does.

Latents are the VAE posterior *mean* (not a sample) times ``scaling_factor``: the good and bad
image of a pair are pixel-identical outside the face, and two independent posterior samples would
differ everywhere, which the guidance loss would then learn to "fix" outside the mask.

SDXL conditions its UNet on more than the token states: the penultimate hidden states of its two
text encoders side by side, the pooled (projected) embedding of the second one, and six "time ids"
(original size, crop top-left, target size). All three are cached with the latents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached tensors change meaning


@dataclass(frozen=True)
class LatentPairs:
    """Everything a training step reads, in float32 (on the CPU as cached)."""

    good: torch.Tensor  # (N, 4, h, w) scaled VAE latents of the good images
    bad: torch.Tensor  # (N, 4, h, w) of the bad images
    mask: torch.Tensor  # (N, 1, h, w) face mask in [0, 1], area-averaged to latent size
    prompt_index: torch.Tensor  # (N,) long, row of ``text`` for each pair
    text: torch.Tensor  # (P, 77, D) text-encoder hidden states of the unique prompts
    # SDXL only (None for the SD 1.5 family):
    pooled: torch.Tensor | None = None  # (P, D2) pooled text embedding of text encoder 2
    time_ids: torch.Tensor | None = None  # (N, 6) original size, crop top-left, target size

    @property
    def sdxl(self) -> bool:
        return self.pooled is not None

    def __len__(self) -> int:
        return int(self.good.shape[0])

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows ``indices`` (on the tensors' device)."""
        rows = {
            "good": self.good[indices],
            "bad": self.bad[indices],
            "mask": self.mask[indices],
            "text": self.text[self.prompt_index[indices]],
        }
        if self.pooled is not None and self.time_ids is not None:
            rows["pooled"] = self.pooled[self.prompt_index[indices]]
            rows["time_ids"] = self.time_ids[indices]
        return rows

    def to(self, device: torch.device) -> LatentPairs:
        """A copy on ``device``: training indexes it there instead of copying every batch."""
        return LatentPairs(**{name: t.to(device) for name, t in self.state().items()})

    def state(self) -> dict[str, torch.Tensor]:
        state = {
            "good": self.good,
            "bad": self.bad,
            "mask": self.mask,
            "prompt_index": self.prompt_index,
            "text": self.text,
        }
        if self.pooled is not None and self.time_ids is not None:
            state["pooled"] = self.pooled
            state["time_ids"] = self.time_ids
        return state


def latent_mask(pixel_mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Pixel face mask (B, 1, H, W) in [0, 1] → latent mask by area averaging (an 8×8 patch that
    the feathered edge covers in part gets its covered fraction)."""
    return F.adaptive_avg_pool2d(pixel_mask.float(), latent_size)


def square_crop(image: Image.Image, resolution: int, resample: Image.Resampling) -> Image.Image:
    """Shorter side to ``resolution``, then the centre square (train_text_to_image's transform)."""
    width, height = image.size
    scale = resolution / min(width, height)
    resized = image.resize(
        (max(resolution, round(width * scale)), max(resolution, round(height * scale))), resample
    )
    left = (resized.width - resolution) // 2
    top = (resized.height - resolution) // 2
    return resized.crop((left, top, left + resolution, top + resolution))


def image_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB image → (3, R, R) in [−1, 1]."""
    array = np.asarray(
        square_crop(image.convert("RGB"), resolution, Image.Resampling.BICUBIC), dtype=np.float32
    )
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def mask_tensor(mask: Image.Image, resolution: int) -> torch.Tensor:
    """ "L" mask → (1, R, R) in [0, 1]."""
    array = np.asarray(
        square_crop(mask.convert("L"), resolution, Image.Resampling.BILINEAR), dtype=np.float32
    )
    return torch.from_numpy(array)[None] / 255.0


_ENCODER_FOLDERS = {"vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"}


def _file_fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of every weight/config file: cheap and changes with the file."""
    if folder.is_file():
        stat = folder.stat()
        return [(folder.name, stat.st_size, stat.st_mtime_ns)]
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.parent.name in _ENCODER_FOLDERS:
            stat = path.stat()
            entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return entries


def cache_key(
    model_path: Path, pairs: Sequence[Any], resolution: int, architecture: str = "sd15"
) -> str:
    """Hash of what the cache depends on: the VAE/text-encoder/tokenizer files, every pair's
    pixels, mask and prompt, the resolution, the architecture and the cache format."""
    digest = hashlib.sha256()
    header: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "model": str(Path(model_path).resolve()),
        "files": _file_fingerprint(Path(model_path)),
        "resolution": resolution,
        "pairs": len(pairs),
    }
    if architecture != "sd15":  # SD 1.5 keys stay what they were, so their caches stay valid
        header["architecture"] = architecture
    digest.update(json.dumps(header, sort_keys=True).encode())
    for pair in pairs:
        for image in (pair.good, pair.bad, pair.mask):
            digest.update(f"{image.mode}{image.size}".encode())
            digest.update(image.tobytes())
        digest.update(pair.prompt.encode("utf-8"))
    return digest.hexdigest()[:24]


@torch.no_grad()
def encode_prompts(
    prompts: Sequence[str],
    tokenizer: Any,
    text_encoder: Any,
    device: torch.device,
    *,
    batch_size: int = 16,
) -> torch.Tensor:
    """(P, 77, D) last hidden states, as StableDiffusionPipeline conditions the UNet."""
    chunks = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(
            list(prompts[start : start + batch_size]),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        chunks.append(text_encoder(ids)[0].float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def encode_prompts_sdxl(
    prompts: Sequence[str],
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    device: torch.device,
    *,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning, as StableDiffusionXLPipeline.encode_prompt computes it (no clip
    skip): ((P, 77, D1 + D2) penultimate hidden states of both encoders concatenated,
    (P, D2) pooled projected embedding of the second encoder), float32 on the CPU."""
    states, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        per_encoder = []
        for tokenizer, text_encoder in zip(tokenizers, text_encoders, strict=True):
            ids = tokenizer(
                chunk,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            output = text_encoder(ids, output_hidden_states=True)
            per_encoder.append(output.hidden_states[-2].float().cpu())
        # CLIPTextModelWithProjection's first output is the projected pooled embedding
        pooled.append(output[0].float().cpu())
        states.append(torch.cat(per_encoder, dim=-1))
    return torch.cat(states), torch.cat(pooled)


def sdxl_time_ids(resolution: int, count: int = 1) -> torch.Tensor:
    """(count, 6) SDXL size conditioning of a centre-resized square training image: original size
    (R, R), crop top-left (0, 0), target size (R, R). What the pipeline passes when it draws an
    R×R image, and what the official Diffusion-DPO SDXL training uses."""
    row = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)
    return row.repeat(count, 1)


@torch.no_grad()
def encode_images(images: torch.Tensor, vae: Any, *, batch_size: int = 8) -> torch.Tensor:
    """(N, 3, R, R) in [−1, 1] → (N, 4, R/8, R/8) scaled posterior means, float32 on the CPU,
    in the VAE's own dtype (SDXL's fp16-unsafe VAE is kept in fp32 by the caller)."""
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = images[start : start + batch_size].to(device, dtype)
        mean = vae.encode(pixels).latent_dist.mode()
        chunks.append(((mean.float() - shift) * scaling).cpu())
    return torch.cat(chunks)


def encode_pairs(
    pairs: Sequence[Any],
    *,
    vae: Any,
    tokenizer: Any,
    text_encoder: Any,
    resolution: int,
    device: torch.device,
    batch_size: int = 8,
    tokenizer_2: Any | None = None,
    text_encoder_2: Any | None = None,
) -> LatentPairs:
    """Encode every pair (good, bad, mask, prompt) once; with a second tokenizer and text
    encoder, SDXL's conditioning (concatenated states, pooled embedding, time ids)."""
    for index, pair in enumerate(pairs):
        if pair.good.size != pair.bad.size or pair.good.size != pair.mask.size:
            raise ValueError(
                f"pair {index}: good {pair.good.size}, bad {pair.bad.size} and mask {pair.mask.size} must have one size"
            )
    good, bad, masks = [], [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        good.append(
            encode_images(torch.stack([image_tensor(p.good, resolution) for p in chunk]), vae)
        )
        bad.append(
            encode_images(torch.stack([image_tensor(p.bad, resolution) for p in chunk]), vae)
        )
        masks.append(torch.stack([mask_tensor(p.mask, resolution) for p in chunk]))
    good_latents, bad_latents = torch.cat(good), torch.cat(bad)
    pixel_masks = torch.cat(masks)
    prompts = sorted({p.prompt for p in pairs})
    row = {prompt: index for index, prompt in enumerate(prompts)}
    pooled = time_ids = None
    if text_encoder_2 is not None:
        text, pooled = encode_prompts_sdxl(
            prompts, (tokenizer, tokenizer_2), (text_encoder, text_encoder_2), device
        )
        time_ids = sdxl_time_ids(resolution, len(pairs))
    else:
        text = encode_prompts(prompts, tokenizer, text_encoder, device)
    return LatentPairs(
        good=good_latents,
        bad=bad_latents,
        mask=latent_mask(pixel_masks, (int(good_latents.shape[-2]), int(good_latents.shape[-1]))),
        prompt_index=torch.tensor([row[p.prompt] for p in pairs], dtype=torch.long),
        text=text,
        pooled=pooled,
        time_ids=time_ids,
    )


def load_or_encode(
    cache_dir: Path,
    key: str,
    pairs: Sequence[Any],
    *,
    vae: Any,
    tokenizer: Any,
    text_encoder: Any,
    resolution: int,
    device: torch.device,
    tokenizer_2: Any | None = None,
    text_encoder_2: Any | None = None,
) -> tuple[LatentPairs, bool]:
    """The cached encodings for ``key``, computing and writing them when absent; also whether
    the cache was hit."""
    path = Path(cache_dir) / f"latents-{key}.pt"
    if path.exists():
        log.info("reusing the latent cache %s", path)
        return LatentPairs(**torch.load(path, map_location="cpu", weights_only=True)), True
    encoded = encode_pairs(
        pairs,
        vae=vae,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        resolution=resolution,
        device=device,
        tokenizer_2=tokenizer_2,
        text_encoder_2=text_encoder_2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save(encoded.state(), partial)
    os.replace(partial, path)  # a crash mid-write never leaves a truncated cache behind
    log.info("encoded %d pairs into %s", len(encoded), path)
    return encoded, False
