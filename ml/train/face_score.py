"""Face Score training: ImageReward fine-tuned on (good, bad) face crops.

The objective is Bradley–Terry on pairs. Under the fixed prompt "A face." the model gives a raw
reward r = f(crop); the probability that the good crop wins is σ(r_good − r_bad), so

    L = mean over pairs of  −log σ(r_good − r_bad)

which is exactly ImageReward's own training loss (a two-way cross-entropy over [r_better, r_worse]).

Steps of `train_face_score`:
1. Load the starting weights (ImageReward.pt, or an earlier FS_model.pt) strictly.
2. Freeze as ImageReward's training code does (`freeze_layers`): the embeddings and the first
   `fix_rate` of the text layers and of the ViT blocks, and every `*_proj` parameter.
3. Preprocess every crop once (PIL resize + centre crop, cached as uint8 224 px; normalised on the
   device), tokenize the prompt once.
4. Loop over optimizer steps: `accumulation` micro-batches of `batch_size` pairs (good and bad crops
   in one forward pass), bf16 autocast on CUDA over fp32 master weights, gradient-norm clipping,
   AdamW over the trainable parameters only, cosine schedule with linear warmup.
5. Every `val_every` steps and at the end: pairwise accuracy on each validation set (eval mode);
   the best model by the first validation set (by mean training loss without one) is written to
   out_dir/FS_model.pt in the official key layout with med_config.json (and vision_config.json)
   beside it, so out_dir works as a `FaceScore/` weights folder.
6. Every `checkpoint_every` steps, at the end and when `should_stop()` says so: a full training
   checkpoint in out_dir/checkpoints/ (trainable weights, optimizer, scheduler, data order, RNG
   states, history); a new call with the same out_dir resumes from the newest one.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ml.devices import autocast, resolve_device
from ml.metrics.imagereward import (
    FACE_SCORE_PROMPT,
    IMAGE_SIZE,
    VISION_CONFIG_FILENAME,
    ImageRewardModel,
    load_tokenizer,
    tokenize,
)
from ml.metrics.preprocess import CLIP_MEAN, CLIP_STD
from ml.weights import sha256_file

logger = logging.getLogger(__name__)

Pair = tuple[Image.Image, Image.Image]
CHECKPOINT_FORMAT = "facebench-face-score-train/1"
BEST_CHECKPOINT_NAME = "FS_model.pt"
CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^step-(\d+)\.pt$")


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceScoreTrainConfig:
    """Face Score training settings. Effective batch = batch_size × accumulation pairs."""

    fix_rate: float = 0.7
    lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    max_steps: int = 1000
    batch_size: int = 32  # pairs per micro-batch (2× crops per forward pass)
    accumulation: int = 2
    grad_clip: float = 1.0  # max gradient L2 norm; 0 = no clipping (the norm is still logged)
    mixed_precision: str = "bf16"  # "bf16" (CUDA only; the CPU always runs fp32) or "no"
    seed: int = 0
    val_every: int = 100
    val_batch_size: int = 64  # pairs per validation forward pass
    checkpoint_every: int = 200
    checkpoints_total_limit: int = 2
    prompt: str = FACE_SCORE_PROMPT
    flip: bool = True  # random horizontal flip of both crops of a pair

    def __post_init__(self) -> None:
        for spec in fields(self):
            _check_type(spec.name, getattr(self, spec.name), _FIELD_TYPES[spec.name])
        if not 0.0 <= self.fix_rate <= 1.0:
            raise ValueError(f"fix_rate: must be between 0 and 1, got {self.fix_rate}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: must be ≥ 0, got {self.weight_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip: must be ≥ 0 (0 = off), got {self.grad_clip}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be ≥ 0, got {self.warmup_steps}")
        for name in (
            "max_steps",
            "batch_size",
            "accumulation",
            "val_every",
            "val_batch_size",
            "checkpoint_every",
            "checkpoints_total_limit",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps: {self.warmup_steps} is more than max_steps {self.max_steps}"
            )
        if self.mixed_precision not in ("bf16", "no"):
            raise ValueError(f"mixed_precision: use 'bf16' or 'no', got {self.mixed_precision!r}")
        if not self.prompt.strip():
            raise ValueError("prompt: must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaceScoreTrainConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"config: expected a mapping, got {type(data).__name__}")
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown setting; known: {', '.join(sorted(known))}")
        return cls(**data)


_FIELD_TYPES: dict[str, type] = {
    "fix_rate": float,
    "lr": float,
    "weight_decay": float,
    "warmup_steps": int,
    "max_steps": int,
    "batch_size": int,
    "accumulation": int,
    "grad_clip": float,
    "mixed_precision": str,
    "seed": int,
    "val_every": int,
    "val_batch_size": int,
    "checkpoint_every": int,
    "checkpoints_total_limit": int,
    "prompt": str,
    "flip": bool,
}


def _check_type(name: str, value: Any, expected: type) -> None:
    # bool is an int subclass: `batch_size=True` must not pass as 1; ints are fine for floats.
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ValueError(f"{name}: expected {expected.__name__}, got {value!r}")


@dataclass
class FaceScoreTrainResult:
    best_checkpoint: Path | None  # out_dir/FS_model.pt, None if no best was ever kept
    best_step: int | None  # 0 = the starting weights were never beaten
    best_validation: dict[str, float]
    initial_validation: dict[str, float]  # accuracies of the starting weights
    final_validation: dict[str, float]  # of the final weights; empty when stopped
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    stopped: bool = False


# --- the loss, the schedule and the freezing rule ---------------------------------------------


def bt_loss(r_good: torch.Tensor, r_bad: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss of (good, bad) reward pairs: mean of −log σ(r_good − r_bad)."""
    return (-F.logsigmoid(r_good.float() - r_bad.float())).mean()


def cosine_with_warmup(step: int, *, warmup_steps: int, max_steps: int) -> float:
    """LR factor for 0-based optimizer step `step`: linear warmup reaching 1 at the last warmup
    step (no wasted step at lr 0), then a cosine from 1 towards 0 at `max_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def freeze_layers(model: ImageRewardModel, fix_rate: float) -> list[tuple[str, nn.Parameter]]:
    """Freeze as ImageReward's `train/src/ImageReward.py` does; returns the trainable parameters.

    - Every parameter of `blip` whose name contains `_proj` (our names are upstream's, so this
      is `vision_proj` and `text_proj`; the ViT's `attn.proj` and `patch_embed.proj` do not match,
      as upstream).
    - When fix_rate > 0, in each tower every parameter registered before layer
      n = int(count × fix_rate): text embeddings + `encoder.layer.0..n-1`; the ViT's cls token,
      position embedding, patch embedding + `blocks.0..n-1`. n = count freezes the whole tower
      (the ViT's final norm too), as upstream. `count` is the model's own (upstream hard-codes 12
      text layers; identical for the real model).
    One deliberate difference: upstream's loop freezes a parameter *before* testing whether it
    belongs to layer n, so it also freezes the first tensor of layer n (text layer 8's query
    weight, ViT block 16's norm1 weight at fix_rate 0.7); here layer n is trainable as a whole.
    """
    if not 0.0 <= fix_rate <= 1.0:
        raise ValueError(f"fix_rate: must be between 0 and 1, got {fix_rate}")
    model.requires_grad_(True)
    blip = model.blip
    if fix_rate > 0:
        text_layers = len(blip.text_encoder.encoder.layer)
        vision_blocks = len(blip.visual_encoder.blocks)
        _freeze_before(blip.text_encoder, f"encoder.layer.{int(text_layers * fix_rate)}.")
        _freeze_before(blip.visual_encoder, f"blocks.{int(vision_blocks * fix_rate)}.")
    for name, param in blip.named_parameters():
        if "_proj" in name:
            param.requires_grad_(False)
    # A list, never a consumed iterator: clipping and the optimizer both walk it.
    return [(name, param) for name, param in model.named_parameters() if param.requires_grad]


def _freeze_before(tower: nn.Module, stop_prefix: str) -> None:
    # named_parameters runs in registration order: embeddings, then layers 0, 1, ...
    for name, param in tower.named_parameters():
        if name.startswith(stop_prefix):
            return
        param.requires_grad_(False)


# --- pixels and tokens ----------------------------------------------------------------------


def crop_pixels(image: Image.Image) -> torch.Tensor:
    """The crop as Face Score sees it before normalisation: uint8 (3, 224, 224).

    Same PIL steps as `preprocess_image` (bicubic resize of the shorter side, centre crop, RGB);
    `normalize_pixels` finishes it with the same float32 ops, so the result equals
    `preprocess_image(image)` exactly at a quarter of the memory for the cached training set.
    """
    resized = TF.resize(image, IMAGE_SIZE, interpolation=InterpolationMode.BICUBIC)
    cropped = TF.center_crop(resized, [IMAGE_SIZE, IMAGE_SIZE]).convert("RGB")
    return torch.from_numpy(np.array(cropped, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) → float32 CLIP-normalised, as `to_tensor` + `normalize` compute it."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=pixels.device)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=pixels.device)[:, None, None]
    return pixels.to(torch.float32).div(255).sub(mean).div(std)


def cache_pairs(pairs: Sequence[Pair], *, workers: int | None = None) -> torch.Tensor:
    """uint8 tensor (pairs, 2, 3, 224, 224): [:, 0] good crops, [:, 1] bad crops.

    PIL resizing releases the GIL, so a thread pool spreads it over the cores. Each distinct
    image object is processed once, by one thread: a lazily opened PIL image must not be loaded
    by two threads at once, and one crop often appears in several pairs.
    """
    if len(pairs) == 0:
        raise ValueError("no pairs")
    slots: dict[int, list[tuple[int, int]]] = {}
    unique: list[Image.Image] = []
    for index, pair in enumerate(pairs):
        for side, image in enumerate(_checked_pair(pair)):
            if id(image) not in slots:
                slots[id(image)] = []
                unique.append(image)
            slots[id(image)].append((index, side))
    cached = torch.empty((len(pairs), 2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for image, pixels in zip(unique, pool.map(crop_pixels, unique), strict=True):
            for index, side in slots[id(image)]:
                cached[index, side] = pixels
    return cached


def _checked_pair(pair: Pair) -> Pair:
    if len(pair) != 2 or not all(isinstance(image, Image.Image) for image in pair):
        raise ValueError("each pair must be (good_crop, bad_crop) PIL images")
    return pair


def trim_padding(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no row uses. Exact for the first-token feature: padded keys get
    a −10000 bias (exp underflows to 0), and padded queries never feed the unpadded positions.
    "A face." is 5 tokens of 35, so this saves a share of the text encoder's work."""
    length = int(attention_mask.sum(dim=1).max())
    return input_ids[:, :length], attention_mask[:, :length]


def prompt_tokens(
    tokenizer, prompt: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt's ids and mask, (1, tokens), padding trimmed, on `device`."""
    input_ids, attention_mask = trim_padding(*tokenize(tokenizer, [prompt]))
    return input_ids.to(device), attention_mask.to(device)


def pair_rewards(
    model: ImageRewardModel,
    good: torch.Tensor,
    bad: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    amp_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of normalised good and bad crops (B, 3, 224, 224) in one forward pass of 2B."""
    count = good.shape[0]
    pixels = torch.cat([good, bad])
    with autocast(pixels.device, amp_dtype):
        rewards = model(
            pixels,
            input_ids.expand(2 * count, -1),
            attention_mask.expand(2 * count, -1),
        )
    return rewards[:count], rewards[count:]


def _correct(r_good: torch.Tensor, r_bad: torch.Tensor) -> torch.Tensor:
    # An exact tie is half right: a constant model scores 0.5, not 0.
    return (r_good > r_bad).float().sum() + 0.5 * (r_good == r_bad).float().sum()


# --- training step pieces -------------------------------------------------------------------


def accumulate_gradients(
    model: ImageRewardModel,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    amp_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward over the micro-batches of one optimizer step (normalised crops).

    Each micro-batch's mean loss is weighted by its share of the step's pairs, so the summed
    gradients are those of one batch holding every pair. Returns the step's mean loss and
    accuracy as 0-d tensors (no device sync here).
    """
    total = sum(good.shape[0] for good, _ in micro_batches)
    loss_sum = torch.zeros((), device=input_ids.device)
    correct = torch.zeros((), device=input_ids.device)
    for good, bad in micro_batches:
        r_good, r_bad = pair_rewards(
            model, good, bad, input_ids, attention_mask, amp_dtype=amp_dtype
        )
        loss = bt_loss(r_good, r_bad)
        (loss * (good.shape[0] / total)).backward()
        loss_sum += loss.detach() * good.shape[0]
        correct += _correct(r_good.detach(), r_bad.detach())
    return loss_sum / total, correct / total


@torch.no_grad()
def _accuracy_of_cached(
    model: ImageRewardModel,
    cached: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    batch_size: int,
    amp_dtype: torch.dtype,
) -> float:
    was_training = model.training
    model.eval()  # dropout and stochastic depth off
    device = input_ids.device
    correct = torch.zeros((), device=device)
    try:
        for start in range(0, cached.shape[0], batch_size):
            chunk = cached[start : start + batch_size].to(device, non_blocking=True)
            pixels = normalize_pixels(chunk)
            r_good, r_bad = pair_rewards(
                model, pixels[:, 0], pixels[:, 1], input_ids, attention_mask, amp_dtype=amp_dtype
            )
            correct += _correct(r_good, r_bad)
    finally:
        model.train(was_training)
    return float(correct) / cached.shape[0]


def pairwise_accuracy(
    model: ImageRewardModel,
    tokenizer,
    pairs: Sequence[Pair],
    device: str | torch.device,
    *,
    prompt: str = FACE_SCORE_PROMPT,
    batch_size: int = 32,
    amp_dtype: torch.dtype = torch.float32,
) -> float:
    """Share of (good, bad) crop pairs whose good crop gets the higher reward (ties count ½).

    Eval mode and no gradients; the model's mode is restored afterwards. The model must already
    be on `device`.
    """
    device = resolve_device(device)
    input_ids, attention_mask = prompt_tokens(tokenizer, prompt, device)
    return _accuracy_of_cached(
        model,
        cache_pairs(pairs),
        input_ids,
        attention_mask,
        batch_size=batch_size,
        amp_dtype=amp_dtype,
    )


class PairOrder:
    """An endless, seeded stream of pair indices: a fresh permutation for every pass over the
    data, drawn from its own generator so that resuming restores the exact order."""

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation = torch.randperm(count, generator=self.generator)
        self.position = 0

    def take(self, size: int) -> torch.Tensor:
        taken = []
        while size > 0:
            if self.position == self.count:
                self.permutation = torch.randperm(self.count, generator=self.generator)
                self.position = 0
            part = self.permutation[self.position : self.position + size]
            self.position += part.numel()
            size -= part.numel()
            taken.append(part)
        return torch.cat(taken)

    def state_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "generator": self.generator.get_state(),
            "permutation": self.permutation.clone(),
            "position": self.position,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["count"] != self.count:
            raise ValueError(
                f"the checkpoint was trained on {state['count']} pairs, this run has {self.count}"
            )
        self.generator.set_state(state["generator"])
        self.permutation = state["permutation"].clone()
        self.position = int(state["position"])


# --- checkpoints ----------------------------------------------------------------------------


def _atomic_save(obj: Any, path: Path) -> None:
    # A crash mid-write must never leave a truncated file under the final name.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the training checkpoints under out_dir/checkpoints, oldest first."""
    folder = Path(out_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_best_model(model: ImageRewardModel, out_dir: Path) -> Path:
    """The whole model's state dict (official key layout) as out_dir/FS_model.pt."""
    state = {
        key: tensor.detach().to("cpu", copy=True) for key, tensor in model.state_dict().items()
    }
    path = Path(out_dir) / BEST_CHECKPOINT_NAME
    _atomic_save(state, path)
    return path


# --- the loop -------------------------------------------------------------------------------


@dataclass
class _Best:
    score: float | None = None  # higher is better: accuracy, or −mean training loss
    step: int | None = None
    validation: dict[str, float] = field(default_factory=dict)


def train_face_score(
    *,
    init_checkpoint: Path,
    med_config: Path,
    tokenizer_dir: Path,
    train_pairs: Sequence[Pair],
    val_sets: Mapping[str, Sequence[Pair]] | None,
    config: FaceScoreTrainConfig,
    out_dir: Path,
    device: str | torch.device,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    vision_config: Path | None = None,
) -> FaceScoreTrainResult:
    """Fine-tune ImageReward (or an earlier Face Score) on (good_crop, bad_crop) pairs.

    `vision_config` defaults to the `vision_config.json` beside `init_checkpoint` (tiny test
    models); absent means ViT-L/16. See the module docstring for the algorithm.
    """
    init_checkpoint, med_config, out_dir = Path(init_checkpoint), Path(med_config), Path(out_dir)
    if vision_config is None and (init_checkpoint.parent / VISION_CONFIG_FILENAME).is_file():
        vision_config = init_checkpoint.parent / VISION_CONFIG_FILENAME
    best_path = out_dir / BEST_CHECKPOINT_NAME
    if best_path.exists() and init_checkpoint.resolve() == best_path.resolve():
        raise ValueError(
            f"init_checkpoint: {init_checkpoint} would be overwritten by this run's best "
            "checkpoint; start from a copy or use another out_dir"
        )
    if len(train_pairs) == 0:
        raise ValueError("train_pairs: no training pairs")
    val_sets = dict(val_sets or {})
    for name, pairs in val_sets.items():
        if len(pairs) == 0:
            raise ValueError(f"val_sets: validation set {name!r} is empty")
    device = resolve_device(device)
    amp_dtype = torch.float32
    if config.mixed_precision == "bf16" and device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            amp_dtype = torch.bfloat16
        else:
            logger.warning("bf16 is not supported on %s; training in fp32", device)

    model = ImageRewardModel.from_files(init_checkpoint, med_config, vision_config).to(device)
    trainable = freeze_layers(model, config.fix_rate)
    trainable_names = [name for name, _ in trainable]
    params = [param for _, param in trainable]
    tokenizer = load_tokenizer(Path(tokenizer_dir))
    vocab_size = model.blip.text_encoder.config.vocab_size
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"tokenizer_dir: {len(tokenizer)} tokens with [DEC]/[ENC], more than the model's "
            f"vocab_size {vocab_size}"
        )
    input_ids, attention_mask = prompt_tokens(tokenizer, config.prompt, device)
    logger.info(
        "face score training: %d trainable tensors (%.1fM of %.1fM parameters), %d pairs, %s",
        len(params),
        sum(p.numel() for p in params) / 1e6,
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(train_pairs),
        amp_dtype,
    )

    optimizer = torch.optim.AdamW(
        [
            # No decay on biases and norm weights (the usual BERT/ViT practice).
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=config.lr,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: cosine_with_warmup(
            step, warmup_steps=config.warmup_steps, max_steps=config.max_steps
        ),
    )
    order = PairOrder(len(train_pairs), config.seed)
    flip_generator = torch.Generator().manual_seed(config.seed + 1)
    init_sha256 = sha256_file(init_checkpoint)

    history: list[dict[str, Any]] = []
    initial_validation: dict[str, float] = {}
    best = _Best()
    losses_since_eval: list[float] = []
    step = 0

    def validate() -> dict[str, float]:
        return {
            name: _accuracy_of_cached(
                model,
                cached,
                input_ids,
                attention_mask,
                batch_size=config.val_batch_size,
                amp_dtype=amp_dtype,
            )
            for name, cached in val_cached.items()
        }

    def consider_best(validation: dict[str, float]) -> bool:
        if validation:
            score = next(iter(validation.values()))
        elif losses_since_eval:
            score = -sum(losses_since_eval) / len(losses_since_eval)
        else:
            return False
        losses_since_eval.clear()
        if best.score is not None and score <= best.score:
            return False
        best.score, best.step, best.validation = score, step, dict(validation)
        save_best_model(model, out_dir)
        _write_configs(out_dir, med_config, vision_config)
        logger.info("step %d: new best (%s), saved %s", step, validation or score, best_path)
        return True

    def checkpoint() -> Path:
        path = out_dir / CHECKPOINTS_DIR / f"step-{step:07d}.pt"
        _atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "config": config.to_dict(),
                "init_sha256": init_sha256,
                "trainable": {name: p.detach().cpu() for name, p in trainable},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "pair_order": order.state_dict(),
                "flip_generator": flip_generator.get_state(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "history": history,
                "initial_validation": initial_validation,
                "best": asdict(best),
                "losses_since_eval": list(losses_since_eval),
            },
            path,
        )
        for _, old in list_checkpoints(out_dir)[: -config.checkpoints_total_limit]:
            old.unlink(missing_ok=True)
        logger.info("step %d: checkpoint %s", step, path)
        return path

    resumed = _latest_state(out_dir)
    is_resume = resumed is not None
    if resumed is not None:
        _check_resumable(resumed, config, init_sha256, trainable_names)
        with torch.no_grad():
            for name, param in trainable:
                param.copy_(resumed["trainable"][name])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        order.load_state_dict(resumed["pair_order"])
        flip_generator.set_state(resumed["flip_generator"])
        torch.set_rng_state(resumed["rng_cpu"])
        if device.type == "cuda" and resumed["rng_cuda"] is not None:
            torch.cuda.set_rng_state(resumed["rng_cuda"], device)
        step = int(resumed["step"])
        history = list(resumed["history"])
        initial_validation = dict(resumed["initial_validation"])
        best = _Best(**resumed["best"])
        losses_since_eval = list(resumed["losses_since_eval"])
        logger.info("resumed face score training at step %d from %s", step, out_dir)
    else:
        # Dropout and stochastic depth draw from torch's global generators; seed them so a run is
        # a function of its config (a resume restores their saved states instead).
        torch.manual_seed(config.seed)

    train_cached = cache_pairs(train_pairs)
    val_cached = {name: cache_pairs(pairs) for name, pairs in val_sets.items()}

    del resumed  # its tensors are copied into the model and optimizer
    if not is_resume and val_cached:
        initial_validation = validate()
        logger.info("step 0 validation: %s", initial_validation)
        consider_best(initial_validation)

    model.train()
    optimizer.zero_grad(set_to_none=True)
    stopped = False
    last_checkpoint_step = step if is_resume else -1
    while step < config.max_steps:
        micro_batches = []
        for _ in range(config.accumulation):
            indices = order.take(config.batch_size)
            batch = train_cached[indices]
            if config.flip:
                flips = torch.rand(len(indices), generator=flip_generator) < 0.5
                batch[flips] = batch[flips].flip(-1)
            pixels = normalize_pixels(batch.to(device, non_blocking=True))
            micro_batches.append((pixels[:, 0], pixels[:, 1]))
        lr = scheduler.get_last_lr()[0]
        loss, accuracy = accumulate_gradients(
            model, micro_batches, input_ids, attention_mask, amp_dtype=amp_dtype
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, config.grad_clip if config.grad_clip > 0 else math.inf
        )
        record: dict[str, Any] = {"step": step + 1, "loss": float(loss), "lr": lr}
        record["accuracy"] = float(accuracy)
        if torch.isfinite(grad_norm):
            optimizer.step()
            record["grad_norm"] = float(grad_norm)
        else:
            # A non-finite gradient would poison AdamW's moments: skip this update.
            logger.warning("step %d: non-finite gradient norm, update skipped", step + 1)
            record["grad_norm"] = None
            record["skipped"] = True
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        losses_since_eval.append(record["loss"])

        if step % config.val_every == 0 or step == config.max_steps:
            validation = validate() if val_cached else {}
            if validation:
                record["val_accuracy"] = validation
            record["best"] = consider_best(validation)
        history.append(record)
        if on_step is not None:
            on_step(record)
        if step % 10 == 0 or step == config.max_steps:
            logger.info("step %d/%d %s", step, config.max_steps, record)
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            checkpoint()
            last_checkpoint_step = step
        if should_stop is not None and should_stop():
            if last_checkpoint_step != step:
                checkpoint()
            stopped = True
            logger.info("face score training stopped at step %d", step)
            break

    final_validation: dict[str, float] = {}
    if not stopped:
        last = history[-1] if history else {}
        if last.get("step") == step and "val_accuracy" in last:
            final_validation = dict(last["val_accuracy"])
        elif val_cached:  # resumed after the end: validate the final weights again
            final_validation = validate()
    model.eval()
    return FaceScoreTrainResult(
        best_checkpoint=best_path if best.step is not None and best_path.is_file() else None,
        best_step=best.step,
        best_validation=dict(best.validation),
        initial_validation=dict(initial_validation),
        final_validation=final_validation,
        history=history,
        steps=step,
        stopped=stopped,
    )


def _write_configs(out_dir: Path, med_config: Path, vision_config: Path | None) -> None:
    # So out_dir is a complete `FaceScore/` weights folder next to FS_model.pt.
    if med_config.resolve() != (out_dir / "med_config.json").resolve():
        shutil.copyfile(med_config, out_dir / "med_config.json")
    target = out_dir / VISION_CONFIG_FILENAME
    if vision_config is not None:
        if Path(vision_config).resolve() != target.resolve():
            shutil.copyfile(vision_config, target)
    else:
        target.unlink(missing_ok=True)  # a stale one would describe the wrong vision tower


def _latest_state(out_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint; an unreadable one is skipped with a warning."""
    for step, path in reversed(list_checkpoints(out_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any damage means: try the older one
            logger.warning("checkpoint %s is unreadable (%s); trying an older one", path, exc)
            continue
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            logger.warning("%s is not a face score training checkpoint; skipped", path)
            continue
        if int(state["step"]) != step:
            logger.warning("%s holds step %s; skipped", path, state["step"])
            continue
        return state
    return None


def _check_resumable(
    state: Mapping[str, Any],
    config: FaceScoreTrainConfig,
    init_sha256: str,
    trainable_names: list[str],
) -> None:
    if state["init_sha256"] != init_sha256:
        raise ValueError(
            "init_checkpoint: differs from the one the checkpoints in this out_dir started from; "
            "use a new out_dir"
        )
    if sorted(state["trainable"]) != sorted(trainable_names):
        raise ValueError(
            "fix_rate: the checkpoints in this out_dir train other parameters "
            f"(fix_rate {state['config'].get('fix_rate')}); use a new out_dir"
        )
    changed = {
        key: (value, state["config"].get(key))
        for key, value in config.to_dict().items()
        if state["config"].get(key) != value
    }
    if changed:
        logger.warning("resuming with changed settings (new, old): %s", changed)
