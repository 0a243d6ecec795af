"""Fine-tuning a diffusion model (SD 1.5 family or SDXL) on (good, bad) face pairs.

Two objectives, both on VAE latents of a pair that differ only inside the face mask:

- ``guidance``: the face guidance loss of DESIGN.md ("Improving faces"): learn the ordinary
  denoising task on the good image and, inside the face, steer the noisy *bad* state towards the
  *good* face.
- ``dpo``: Diffusion-DPO (Wallace et al. 2023) with the LoRA-disabled UNet as the reference.

SDXL differs only in what conditions the UNet (two text encoders' states, a pooled embedding and
size "time ids", all cached with the latents) and in its pipeline classes; the losses are the same.

The loss functions below are pure tensor functions (no model inside), so the tests check their
algebra exactly and the GPU bench times the same code the training loop runs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ml.devices import autocast, resolve_device
from ml.train.latents import LatentPairs, cache_key, latent_mask, load_or_encode

log = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction")
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")

__all__ = [
    "FinetuneConfig",
    "FinetunePair",
    "FinetuneResult",
    "GuidanceTerms",
    "dpo_logits",
    "dpo_loss",
    "finetune",
    "guidance_loss",
    "guidance_loss_terms",
    "guidance_target",
    "latent_mask",
    "min_snr_weight",
    "noisy_latents",
    "predicted_original",
    "squared_error",
    "training_target",
    "velocity",
]


def _per_sample(alphas_cumprod_t: Tensor, like: Tensor) -> Tensor:
    """ᾱ_t of shape (B,) broadcast against a (B, C, H, W) latent, in the latent's precision."""
    return alphas_cumprod_t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _at_least_fp32(x: Tensor) -> Tensor:
    """bf16 autocast outputs are upcast for the loss; float64 (tests) stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}"
        )


def noisy_latents(z0: Tensor, noise: Tensor, alphas_cumprod_t: Tensor) -> Tensor:
    """q(z_t | z_0): √ᾱ_t z_0 + √(1−ᾱ_t) ε (what DDPMScheduler.add_noise computes)."""
    a = _per_sample(alphas_cumprod_t, z0)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def velocity(z0: Tensor, noise: Tensor, alphas_cumprod_t: Tensor) -> Tensor:
    """The v-prediction target v = √ᾱ_t ε − √(1−ᾱ_t) z_0 (DDPMScheduler.get_velocity)."""
    a = _per_sample(alphas_cumprod_t, z0)
    return a.sqrt() * noise - (1 - a).sqrt() * z0


def training_target(
    z0: Tensor, noise: Tensor, alphas_cumprod_t: Tensor, prediction_type: str
) -> Tensor:
    """What the UNet is trained to output for the state q(z_t | z_0, ε)."""
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    return velocity(z0, noise, alphas_cumprod_t)


def predicted_original(
    z_t: Tensor, model_output: Tensor, alphas_cumprod_t: Tensor, prediction_type: str
) -> Tensor:
    """x̂_0 implied by a model output at z_t (the schedulers' ``pred_original_sample``)."""
    _check_prediction_type(prediction_type)
    a = _per_sample(alphas_cumprod_t, z_t)
    if prediction_type == "epsilon":
        return (z_t - (1 - a).sqrt() * model_output) / a.sqrt()
    return a.sqrt() * z_t - (1 - a).sqrt() * model_output


def guidance_target(
    z_t_bad: Tensor, z_good: Tensor, alphas_cumprod_t: Tensor, prediction_type: str = "epsilon"
) -> Tensor:
    """The output that, at the noisy bad state z_t^l, predicts the good latent z_w as x̂_0.

    ε̃ = (z_t^l − √ᾱ_t z_w) / √(1−ᾱ_t); for v-prediction the v of the state (x_0 = z_w, noise ε̃):
    ṽ = √ᾱ_t ε̃ − √(1−ᾱ_t) z_w. Either way ``predicted_original(z_t_bad, target) == z_good``.
    """
    _check_prediction_type(prediction_type)
    a = _per_sample(alphas_cumprod_t, z_t_bad)
    eps_tilde = (z_t_bad - a.sqrt() * z_good) / (1 - a).sqrt()
    if prediction_type == "epsilon":
        return eps_tilde
    return velocity(z_good, eps_tilde, alphas_cumprod_t)


def min_snr_weight(
    alphas_cumprod_t: Tensor, snr_gamma: float, prediction_type: str = "epsilon"
) -> Tensor:
    """Min-SNR-γ loss weight (Hang et al. 2023), per sample; ``snr_gamma <= 0`` turns it off (1).

    SNR = ᾱ/(1−ᾱ); ε-prediction: min(SNR, γ)/SNR; v-prediction: min(SNR, γ)/(SNR + 1) — the
    same division diffusers' training examples make. For the guidance term this matters: the
    target shift ε̃ − ε = √SNR (z_l − z_w) has squared size SNR·‖z_l − z_w‖² (for v: (SNR+1)·…),
    which explodes as t → 0; times this weight it is min(SNR, γ)·‖z_l − z_w‖², bounded by γ.
    """
    _check_prediction_type(prediction_type)
    a = _at_least_fp32(alphas_cumprod_t)
    if snr_gamma <= 0:
        return torch.ones_like(a)
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=snr_gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


@dataclass(frozen=True)
class GuidanceTerms:
    loss: Tensor  # scalar: batch mean of standard + λ·weight·guidance
    standard: Tensor  # (B,) ‖ε_θ(z_t^w) − target‖² (mean over elements)
    guidance: Tensor  # (B,) ‖m ⊙ (ε_θ(z_t^l) − ε̃)‖² / mean(m)
    weight: Tensor  # (B,) w(t)


# Face guidance loss (DESIGN.md, "Improving faces"), per pair with one shared t and ε:
#   z_t^w = √ᾱ z_w + √(1−ᾱ) ε,   z_t^l = √ᾱ z_l + √(1−ᾱ) ε
#   ε̃ = (z_t^l − √ᾱ z_w)/√(1−ᾱ) = ε + √(ᾱ/(1−ᾱ)) (z_l − z_w)      (x̂_0(z_t^l, ε̃) = z_w)
#   L = ‖ε_θ(z_t^w) − ε‖² + λ · w(t) · ‖m ⊙ (ε_θ(z_t^l) − ε̃)‖² / mean(m)
# ‖·‖² is the mean over latent elements (as diffusers' MSE), mean(m) over the mask's pixels, so
# the masked term is the mean squared error inside the face; w(t) = min-SNR-γ weight. For
# v-prediction ε and ε̃ become the v targets of (z_w, ε) and of (x_0 = z_w, noise ε̃).
def guidance_loss_terms(
    pred_good: Tensor,
    pred_bad: Tensor,
    *,
    z_good: Tensor,
    z_bad: Tensor,
    noise: Tensor,
    alphas_cumprod_t: Tensor,
    latent_mask: Tensor,
    prediction_type: str = "epsilon",
    guidance_weight: float = 1.0,
    snr_gamma: float = 5.0,
) -> GuidanceTerms:
    """The loss and its parts. ``pred_good``/``pred_bad`` are the UNet outputs at z_t^w/z_t^l;
    ``latent_mask`` is (B, 1, h, w) or (B, h, w) in [0, 1]. Computed in float32 (or float64)."""
    pred_good, pred_bad, z_good, z_bad, noise, mask = (
        _at_least_fp32(x) for x in (pred_good, pred_bad, z_good, z_bad, noise, latent_mask)
    )
    if mask.ndim == z_good.ndim - 1:
        mask = mask.unsqueeze(1)
    target_good = training_target(z_good, noise, alphas_cumprod_t, prediction_type)
    standard = (pred_good - target_good).pow(2).flatten(1).mean(1)
    z_t_bad = noisy_latents(z_bad, noise, alphas_cumprod_t)
    target_bad = guidance_target(z_t_bad, z_good, alphas_cumprod_t, prediction_type)
    masked = (mask * (pred_bad - target_bad)).pow(2).flatten(1).mean(1)
    # an empty mask gives 0/ε = 0: such a pair only trains the standard term
    guidance = masked / mask.flatten(1).mean(1).clamp_min(1e-8)
    weight = min_snr_weight(alphas_cumprod_t, snr_gamma, prediction_type).to(standard)
    loss = (standard + guidance_weight * weight * guidance).mean()
    return GuidanceTerms(loss=loss, standard=standard, guidance=guidance, weight=weight)


def guidance_loss(
    pred_good: Tensor,
    pred_bad: Tensor,
    *,
    z_good: Tensor,
    z_bad: Tensor,
    noise: Tensor,
    alphas_cumprod_t: Tensor,
    latent_mask: Tensor,
    prediction_type: str = "epsilon",
    guidance_weight: float = 1.0,
    snr_gamma: float = 5.0,
) -> Tensor:
    """Scalar face guidance loss (see ``guidance_loss_terms``)."""
    return guidance_loss_terms(
        pred_good,
        pred_bad,
        z_good=z_good,
        z_bad=z_bad,
        noise=noise,
        alphas_cumprod_t=alphas_cumprod_t,
        latent_mask=latent_mask,
        prediction_type=prediction_type,
        guidance_weight=guidance_weight,
        snr_gamma=snr_gamma,
    ).loss


def squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared error in float32, the ‖·‖² of both objectives."""
    return (_at_least_fp32(pred) - _at_least_fp32(target)).pow(2).flatten(1).mean(1)


# Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908), per pair with one shared t and ε:
#   Δ = err(z_t^w) − err(z_t^l) with err = ‖ε_·(z_t) − target‖² (mean over elements)
#   L = −log σ(−β/2 · (Δ_model − Δ_ref))
# The official train.py (SalesforceAIResearch/DiffusionDPO) computes exactly this:
# ``scale_term = -0.5 * beta_dpo; inside = scale_term * (model_diff - ref_diff)`` with per-element
# mean errors; the paper's β·T·ω(λ_t) is folded into beta_dpo (5000 for SD 1.5 and for SDXL in
# their launchers), the ½ is the Gaussian log-likelihood's. Lower model error on the winner than the reference has
# makes the logit positive. With the model equal to the reference the logit is 0: loss = ln 2.
def dpo_logits(
    model_err_good: Tensor,
    model_err_bad: Tensor,
    ref_err_good: Tensor,
    ref_err_bad: Tensor,
    *,
    beta: float,
) -> Tensor:
    """(B,) −β/2·(Δ_model − Δ_ref); > 0 means the model prefers the winner more than the reference."""
    return -0.5 * beta * ((model_err_good - model_err_bad) - (ref_err_good - ref_err_bad))


def dpo_loss(
    model_err_good: Tensor,
    model_err_bad: Tensor,
    ref_err_good: Tensor,
    ref_err_bad: Tensor,
    *,
    beta: float,
) -> Tensor:
    """Scalar Diffusion-DPO loss from per-sample squared errors (see ``squared_error``)."""
    return -F.logsigmoid(
        dpo_logits(model_err_good, model_err_bad, ref_err_good, ref_err_bad, beta=beta)
    ).mean()


# ---------------------------------------------------------------------------------------------
# The fine-tuning loop
# ---------------------------------------------------------------------------------------------
#
# Plain PyTorch rather than accelerate's Accelerator: a job trains on one device in one process
# (one Celery worker per GPU), so the Accelerator would only wrap autocast, backward and
# save_state; doing those three explicitly keeps the dtype policy visible, the checkpoint a single
# file we can test for exact resume, and the CPU path identical to the GPU one.
#
# Dtype policy (diffusers' train_text_to_image_lora.py): the frozen VAE, text encoder and LoRA base
# UNet in bf16 on CUDA (fp32 on the CPU), trainable parameters in fp32, the forward under bf16
# autocast, losses in fp32. The trainable parameters are a list, never a filter() iterator that
# the first pass consumes (DESIGN.md trap: clipping would silently see nothing).

OBJECTIVES = ("guidance", "dpo")
LR_SCHEDULES = ("constant", "cosine", "linear")
MIXED_PRECISION = ("bf16", "no")


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run. ``lora_rank=0`` trains the full UNet."""

    objective: str = "guidance"
    lora_rank: int = 16
    lora_alpha: int | None = None  # None: equal to the rank (scale 1, diffusers' convention)
    lr: float = 1e-4  # 1e-4 suits LoRA; use ~1e-5 for the full UNet
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    max_steps: int = 1000
    batch_size: int = 4  # pairs per micro-batch
    accumulation: int = 1
    weight_decay: float = 1e-2
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    guidance_weight: float = 1.0  # λ
    snr_gamma: float = 5.0  # γ of the min-SNR weight w(t); 0 turns it off
    dpo_beta: float = 5000.0
    ema_decay: float = 0.0  # 0: no EMA; else the output and validation use the EMA weights
    gradient_checkpointing: bool = False
    # torch.compile the UNet for the training steps (CUDA only): minutes of compiling up front,
    # then 1.7x the eager LoRA guidance step on one H100 (bench/gpu.py, README "GPU figures").
    compile: bool = False
    mixed_precision: str = "bf16"  # on CUDA; the CPU always computes in fp32
    seed: int = 0
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = 3  # None keeps every checkpoint
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 0  # 0: only once, after the last step (when there are prompts)
    validation_seed: int = 0
    validation_steps: int = 30
    validation_guidance: float = 7.5
    resolution: int = 512

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        for item in fields(self):
            value = getattr(self, item.name)
            kind = _FIELD_KINDS[item.name]
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                fail(item.name, "must be an integer")
            if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
                fail(item.name, "must be a number")
            if kind is bool and not isinstance(value, bool):
                fail(item.name, "must be true or false")
            if kind is str and not isinstance(value, str):
                fail(item.name, "must be a string")
        choices = {
            "objective": OBJECTIVES,
            "lr_schedule": LR_SCHEDULES,
            "mixed_precision": MIXED_PRECISION,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(name, f"must be one of {', '.join(allowed)}")
        for name in (
            "max_steps",
            "batch_size",
            "accumulation",
            "checkpoint_every",
            "validation_steps",
            "resolution",
        ):
            if getattr(self, name) < 1:
                fail(name, "must be at least 1")
        for name in ("lora_rank", "lr_warmup_steps", "validation_every", "seed", "validation_seed"):
            if getattr(self, name) < 0:
                fail(name, "must not be negative")
        for name in (
            "weight_decay",
            "grad_clip",
            "guidance_weight",
            "snr_gamma",
            "validation_guidance",
        ):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "must be a finite number ≥ 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            fail("lr", "must be a positive number")
        if not (math.isfinite(self.dpo_beta) and self.dpo_beta > 0):
            fail("dpo_beta", "must be a positive number")
        if not 0 <= self.ema_decay < 1:
            fail("ema_decay", "must be in [0, 1)")
        if self.lora_alpha is not None and (
            isinstance(self.lora_alpha, bool)
            or not isinstance(self.lora_alpha, int)
            or self.lora_alpha <= 0
        ):
            fail("lora_alpha", "must be a positive integer or null")
        if self.checkpoints_total_limit is not None and (
            isinstance(self.checkpoints_total_limit, bool)
            or not isinstance(self.checkpoints_total_limit, int)
            or self.checkpoints_total_limit < 1
        ):
            fail("checkpoints_total_limit", "must be an integer ≥ 1 or null")
        if not isinstance(self.validation_prompts, list) or not all(
            isinstance(p, str) and p.strip() for p in self.validation_prompts
        ):
            fail("validation_prompts", "must be a list of non-empty strings")
        if self.resolution % 8:
            fail("resolution", "must be a multiple of 8 (the VAE downsamples by 8)")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["validation_prompts"] = list(self.validation_prompts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        if not isinstance(data, dict):
            raise ValueError(f"finetune settings must be an object, not {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELD_KINDS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown setting (known: {', '.join(_FIELD_KINDS)})")
        values = dict(data)
        for name, kind in _FIELD_KINDS.items():  # JSON has one number type: 2.0 is a fine float
            if (
                kind is float
                and isinstance(values.get(name), int)
                and not isinstance(values.get(name), bool)
            ):
                values[name] = float(values[name])
        return cls(**values)


_FIELD_KINDS: dict[str, type | None] = {
    "objective": str,
    "lora_rank": int,
    "lora_alpha": None,
    "lr": float,
    "lr_schedule": str,
    "lr_warmup_steps": int,
    "max_steps": int,
    "batch_size": int,
    "accumulation": int,
    "weight_decay": float,
    "grad_clip": float,
    "guidance_weight": float,
    "snr_gamma": float,
    "dpo_beta": float,
    "ema_decay": float,
    "gradient_checkpointing": bool,
    "compile": bool,
    "mixed_precision": str,
    "seed": int,
    "checkpoint_every": int,
    "checkpoints_total_limit": None,
    "validation_prompts": None,
    "validation_every": int,
    "validation_seed": int,
    "validation_steps": int,
    "validation_guidance": float,
    "resolution": int,
}


@dataclass(frozen=True)
class FinetunePair:
    """One training pair: ``good`` and ``bad`` differ only inside ``mask`` ("L", 255 = face)."""

    good: Image.Image
    bad: Image.Image
    mask: Image.Image
    prompt: str


@dataclass
class FinetuneResult:
    output: Path | None  # LoRA .safetensors file or diffusers folder; None when stopped early
    output_kind: str  # "lora" | "diffusers"
    history: list[dict[str, Any]]
    validation_images: list[Path]
    stopped: bool
    checkpoint: Path | None = None  # the newest checkpoint folder, if any


# --- model preparation -----------------------------------------------------------------------


def _load_sd_pipeline(model_path: Path, config_dir: Path | None) -> Any:
    """The text-to-image pipeline on the CPU in fp32 (components move to the device later)."""
    from ml.sd import load_pipeline

    return load_pipeline(
        model_path, task="text2img", device="cpu", dtype=torch.float32, config=config_dir
    )


def _is_sdxl(pipeline: Any) -> bool:
    return getattr(pipeline, "text_encoder_2", None) is not None


def prepare_unet(
    unet: Any,
    config: FinetuneConfig,
    *,
    device: torch.device,
    weight_dtype: torch.dtype,
) -> tuple[list[torch.nn.Parameter], Any | None]:
    """Make ``unet`` trainable per ``config``; returns (trainable parameters, DPO reference).

    LoRA: base frozen in ``weight_dtype``, adapters on the attention projections in fp32, with
    B = 0 so the model starts equal to the base (the DPO reference is the same UNet with its
    adapters switched off, hence None). Full UNet: every parameter in fp32, and for DPO a frozen
    copy in ``weight_dtype`` as the reference.
    """
    unet.requires_grad_(False)
    reference = None
    if config.lora_rank > 0:
        from peft import LoraConfig

        unet.to(device)
        if weight_dtype != torch.float32:
            unet.to(dtype=weight_dtype)
        unet.add_adapter(
            LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha or config.lora_rank,
                init_lora_weights="gaussian",
                target_modules=list(LORA_TARGET_MODULES),
            )
        )
        params = [p for p in unet.parameters() if p.requires_grad]
        for param in params:
            param.data = param.data.float()
    else:
        unet.to(device)
        if config.objective == "dpo":
            reference = copy.deepcopy(unet).eval()
            if weight_dtype != torch.float32:
                reference.to(dtype=weight_dtype)
        unet.requires_grad_(True)
        params = list(unet.parameters())
    if device.type == "cuda":  # NHWC convolutions are the fast ones on tensor cores
        for model in (unet, reference):
            if model is not None:
                model.to(memory_format=torch.channels_last)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return params, reference


@contextlib.contextmanager
def adapters_disabled(unet: Any) -> Iterator[None]:
    """The UNet without its LoRA: the frozen base model, Diffusion-DPO's reference."""
    base = getattr(unet, "_orig_mod", unet)  # a torch.compile'd UNet keeps the module here
    base.disable_adapters()
    try:
        yield
    finally:
        base.enable_adapters()


# --- one step ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepContext:
    """What ``compute_loss`` needs besides the UNet and the batch."""

    config: FinetuneConfig
    prediction_type: str
    alphas_cumprod: Tensor  # (T,) float32 on the device
    device: torch.device
    compute_dtype: torch.dtype  # autocast dtype; fp32 = no autocast
    reference: Any | None = None  # full-UNet DPO reference; None = LoRA adapters disabled


def compute_loss(
    unet: Any, batch: dict[str, Tensor], context: StepContext, generator: torch.Generator
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of one micro-batch of pairs and its logged parts (detached 0-d tensors, so the
    caller syncs once per step). t and ε come from ``generator`` (on the device: no host copy
    in the step), one shared t and ε per pair; both states go through the UNet in one call."""
    config, device = context.config, context.device
    z_good, z_bad, text = batch["good"], batch["bad"], batch["text"]
    count = z_good.shape[0]
    timesteps = torch.randint(
        0, len(context.alphas_cumprod), (count,), generator=generator, device=device
    )
    noise = torch.randn(tuple(z_good.shape), generator=generator, device=device)
    alphas = context.alphas_cumprod[timesteps]
    states = torch.cat([noisy_latents(z_good, noise, alphas), noisy_latents(z_bad, noise, alphas)])
    timesteps2, text2 = torch.cat([timesteps, timesteps]), torch.cat([text, text])
    extra = _added_conditions(batch)
    with autocast(device, context.compute_dtype):
        prediction = unet(states, timesteps2, text2, **extra).sample
    pred_good, pred_bad = prediction.chunk(2)
    if config.objective == "guidance":
        terms = guidance_loss_terms(
            pred_good,
            pred_bad,
            z_good=z_good,
            z_bad=z_bad,
            noise=noise,
            alphas_cumprod_t=alphas,
            latent_mask=batch["mask"],
            prediction_type=context.prediction_type,
            guidance_weight=config.guidance_weight,
            snr_gamma=config.snr_gamma,
        )
        return terms.loss, {
            "standard_loss": terms.standard.detach().mean(),
            "guidance_loss": terms.guidance.detach().mean(),
        }
    target = training_target(
        torch.cat([z_good, z_bad]),
        torch.cat([noise, noise]),
        torch.cat([alphas, alphas]),
        context.prediction_type,
    )
    model_err = squared_error(prediction, target)
    with torch.no_grad(), autocast(device, context.compute_dtype):
        if context.reference is not None:
            ref_prediction = context.reference(states, timesteps2, text2, **extra).sample
        else:
            with adapters_disabled(unet):
                ref_prediction = unet(states, timesteps2, text2, **extra).sample
    ref_err = squared_error(ref_prediction, target)
    logits = dpo_logits(*model_err.chunk(2), *ref_err.chunk(2), beta=config.dpo_beta)
    loss = -F.logsigmoid(logits).mean()
    return loss, {
        "implicit_accuracy": (logits.detach() > 0).float().mean(),
        "model_mse": model_err.detach().mean(),
        "reference_mse": ref_err.mean(),
    }


def _added_conditions(batch: dict[str, Tensor]) -> dict[str, Any]:
    """SDXL's extra UNet inputs for the doubled (good, bad) batch; nothing for SD 1.5."""
    if "pooled" not in batch:
        return {}
    pooled, time_ids = batch["pooled"], batch["time_ids"]
    return {
        "added_cond_kwargs": {
            "text_embeds": torch.cat([pooled, pooled]),
            "time_ids": torch.cat([time_ids, time_ids]),
        }
    }


def batch_indices(micro_batch: int, batch_size: int, count: int, seed: int) -> list[int]:
    """Pair indices of the ``micro_batch``-th micro-batch: the run reads an endless sequence of
    per-epoch shuffles (each seeded by (seed, epoch)), so the order needs no state to resume."""
    indices: list[int] = []
    permutations: dict[int, np.ndarray] = {}
    for position in range(micro_batch * batch_size, (micro_batch + 1) * batch_size):
        epoch, offset = divmod(position, count)
        if epoch not in permutations:
            permutations[epoch] = np.random.default_rng([seed, epoch]).permutation(count)
        indices.append(int(permutations[epoch][offset]))
    return indices


class _EMA:
    """Exponential moving average of the trainable parameters (fp32 shadows)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, params: Sequence[torch.nn.Parameter]) -> None:
        for shadow, param in zip(self.shadow, params, strict=True):
            shadow.lerp_(param.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def swap(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Exchange the live and the averaged weights (twice = back to where it was)."""
        for shadow, param in zip(self.shadow, params, strict=True):
            live = param.detach().clone()
            param.copy_(shadow)
            shadow.copy_(live)


# --- checkpoints ---------------------------------------------------------------------------------

_CHECKPOINT_PREFIX = "checkpoint-"


def _checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in folder.glob(f"{_CHECKPOINT_PREFIX}*") if (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(_CHECKPOINT_PREFIX)))


def _save_checkpoint(folder: Path, state: dict[str, Any], limit: int | None) -> Path:
    target = folder / f"{_CHECKPOINT_PREFIX}{state['step']}"
    partial = folder / f".partial-{state['step']}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save(state, partial / "state.pt")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)  # a checkpoint is there whole or not at all
    if limit is not None:
        for old in _checkpoints(folder)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    log.info("saved %s", target)
    return target


def _lr_scheduler(optimizer: torch.optim.Optimizer, config: FinetuneConfig) -> Any:
    from diffusers.optimization import get_scheduler

    name = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}[
        config.lr_schedule
    ]
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_steps,
    )


# --- validation and output -----------------------------------------------------------------------


def _validation_images(
    pipeline_parts: dict[str, Any],
    unet: Any,
    config: FinetuneConfig,
    *,
    step: int,
    folder: Path,
    device: torch.device,
    compute_dtype: torch.dtype,
    sdxl: bool = False,
) -> list[Path]:
    """One image per validation prompt with the current weights, seeds fixed per prompt."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline: Any
    if sdxl:
        pipeline = StableDiffusionXLPipeline(**pipeline_parts, unet=unet, add_watermarker=False)
    else:
        pipeline = StableDiffusionPipeline(
            **pipeline_parts,
            unet=unet,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipeline.set_progress_bar_config(disable=True)
    target = folder / f"step-{step:06d}"
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    was_training = unet.training
    unet.eval()
    try:
        for index, prompt in enumerate(config.validation_prompts):
            generator = torch.Generator("cpu").manual_seed(config.validation_seed + index)
            with autocast(device, compute_dtype):
                image = pipeline(
                    prompt,
                    num_inference_steps=config.validation_steps,
                    guidance_scale=config.validation_guidance,
                    height=config.resolution,
                    width=config.resolution,
                    generator=generator,
                ).images[0]
            path = target / f"{index:02d}.png"
            image.save(path)
            paths.append(path)
    finally:
        unet.train(was_training)
    return paths


def _save_output(
    unet: Any,
    config: FinetuneConfig,
    out_dir: Path,
    *,
    model_path: Path,
    config_dir: Path | None,
    sdxl: bool = False,
) -> tuple[Path, str]:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if config.lora_rank > 0:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        folder = out_dir / "lora"
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        layers = {
            name: tensor.detach().float().cpu().contiguous() for name, tensor in layers.items()
        }
        # UNet-only LoRA; the SDXL class writes the same "unet." keys that its loader expects
        saver = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
        saver.save_lora_weights(
            folder,
            unet_lora_layers=layers,
            safe_serialization=True,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        )
        return folder / "pytorch_lora_weights.safetensors", "lora"
    # a fresh fp32 copy of the other components: the ones used in training may be bf16
    base = _load_sd_pipeline(model_path, config_dir)
    unet.disable_gradient_checkpointing()
    parts = {**base.components, "unet": unet.to("cpu", dtype=torch.float32)}
    folder = out_dir / "model"
    if sdxl:
        # the base's own settings (force_zeros_for_empty_prompt) carry over with its config
        base.register_modules(unet=parts["unet"])
        base.save_pretrained(folder, safe_serialization=True)
        return folder, "diffusers"
    pipeline: Any = StableDiffusionPipeline(
        **{
            **parts,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder, "diffusers"


# --- the loop ----------------------------------------------------------------------------------


def finetune(
    *,
    model_path: str | os.PathLike[str],
    pairs: Sequence[FinetunePair],
    config: FinetuneConfig,
    out_dir: str | os.PathLike[str],
    device: str | torch.device | None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> FinetuneResult:
    """Fine-tune an SD 1.5-family or SDXL model on face pairs with the guidance loss or
    Diffusion-DPO.

    1. Load the pipeline (local files only); prediction type and noise schedule from its scheduler.
    2. Encode every pair (VAE posterior mean × scaling factor, latent face mask) and prompt once
       (SDXL: both encoders' states, the pooled embedding and the size time ids), cached under
       ``out_dir/cache`` by a hash of model files, pairs, resolution and architecture.
    3. LoRA on the attention projections (or the full UNet), AdamW, warmup + constant/cosine lr.
    4. Each optimizer step: ``accumulation`` micro-batches of ``batch_size`` pairs, gradient
       clipping, EMA; a record per step to ``on_step``; a checkpoint every ``checkpoint_every``
       steps (the newest resumes automatically); validation images every ``validation_every``.
    5. ``should_stop()`` after each step: checkpoint and return with ``stopped=True``.
    6. Output: LoRA weights (``out_dir/lora/pytorch_lora_weights.safetensors``, for
       ``pipe.load_lora_weights``) or a full diffusers folder (``out_dir/model``).
    """
    from diffusers import DDPMScheduler

    model_path = Path(model_path)
    config_path = Path(config_dir) if config_dir is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not pairs:
        raise ValueError("pairs: fine-tuning needs at least one pair")
    torch_device = resolve_device(device)
    on_gpu = torch_device.type == "cuda"
    compute_dtype = torch.bfloat16 if on_gpu and config.mixed_precision == "bf16" else torch.float32
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")

    pipeline = _load_sd_pipeline(model_path, config_path)
    prediction_type = pipeline.scheduler.config.get("prediction_type", "epsilon")
    _check_prediction_type(prediction_type)
    noise_schedule: Any = DDPMScheduler.from_config(pipeline.scheduler.config)
    alphas_cumprod = noise_schedule.alphas_cumprod.float().to(torch_device)
    sdxl = _is_sdxl(pipeline)
    vae, text_encoder = pipeline.vae, pipeline.text_encoder
    text_encoder_2 = pipeline.text_encoder_2 if sdxl else None
    for frozen in (vae, text_encoder, text_encoder_2):
        if frozen is None:
            continue
        frozen.requires_grad_(False).eval()
        frozen.to(torch_device)
        # SDXL's VAE overflows in half precision (force_upcast): it encodes once, so fp32 is cheap
        upcast = sdxl and frozen is vae and vae.config.get("force_upcast", False)
        if compute_dtype != torch.float32 and not upcast:
            frozen.to(dtype=compute_dtype)

    key = cache_key(model_path, pairs, config.resolution, "sdxl" if sdxl else "sd15")
    cached, _ = load_or_encode(
        out / "cache",
        key,
        pairs,
        vae=vae,
        tokenizer=pipeline.tokenizer,
        text_encoder=text_encoder,
        resolution=config.resolution,
        device=torch_device,
        tokenizer_2=pipeline.tokenizer_2 if sdxl else None,
        text_encoder_2=text_encoder_2,
    )

    torch.manual_seed(config.seed)  # LoRA A initialisation
    unet = pipeline.unet
    params, reference = prepare_unet(unet, config, device=torch_device, weight_dtype=compute_dtype)
    named = [name for name, p in unet.named_parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config, torch_device)
    lr_scheduler = _lr_scheduler(optimizer, config)
    ema = _EMA(params, config.ema_decay) if config.ema_decay > 0 else None
    generator = torch.Generator(torch_device).manual_seed(config.seed)
    cached = cached.to(torch_device)
    context = StepContext(
        config=config,
        prediction_type=prediction_type,
        alphas_cumprod=alphas_cumprod,
        device=torch_device,
        compute_dtype=compute_dtype,
        reference=reference,
    )

    checkpoint_dir = out / "checkpoints"
    step, history = 0, list[dict[str, Any]]()
    latest = (
        _checkpoints(checkpoint_dir)[-1]
        if checkpoint_dir.exists() and _checkpoints(checkpoint_dir)
        else None
    )
    if latest is not None:
        step, history = _resume(
            latest, unet, params, named, optimizer, lr_scheduler, ema, generator, config, key
        )
    validation_parts: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": pipeline.tokenizer,
        "scheduler": pipeline.scheduler,
    }
    if sdxl:
        validation_parts.update(
            text_encoder_2=text_encoder_2,
            tokenizer_2=pipeline.tokenizer_2,
            force_zeros_for_empty_prompt=pipeline.config.get("force_zeros_for_empty_prompt", True),
        )
    validation_images: list[Path] = []
    validated_at = -1

    def validate() -> None:
        nonlocal validated_at
        if ema is not None:
            ema.swap(params)
        try:
            validation_images.extend(
                _validation_images(
                    validation_parts,
                    unet,
                    config,
                    step=step,
                    folder=out / "validation",
                    device=torch_device,
                    compute_dtype=compute_dtype,
                    sdxl=sdxl,
                )
            )
        finally:
            if ema is not None:
                ema.swap(params)
        validated_at = step

    def checkpoint() -> Path:
        state = {
            "step": step,
            "trainable": {name: p.detach().cpu() for name, p in zip(named, params, strict=True)},
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "generator": generator.get_state(),
            "ema": [t.cpu() for t in ema.shadow] if ema is not None else None,
            "history": history,
            "config": config.to_dict(),
            "cache_key": key,
        }
        return _save_checkpoint(checkpoint_dir, state, config.checkpoints_total_limit)

    log.info(
        "fine-tuning %s (%s%s, %s) on %d pairs: %s, %s, steps %d → %d",
        model_path,
        "SDXL, " if sdxl else "",
        prediction_type,
        f"LoRA rank {config.lora_rank}" if config.lora_rank else "full UNet",
        len(cached),
        config.objective,
        torch_device,
        step,
        config.max_steps,
    )
    # The compiled module shares its parameters with `unet`: checkpoints, EMA and validation use
    # `unet` as before. On the CPU compiling costs more than it saves, so it is CUDA only.
    step_model = torch.compile(unet) if config.compile and torch_device.type == "cuda" else unet
    last_checkpoint: Path | None = latest
    while step < config.max_steps:
        record = optimizer_step(step_model, params, optimizer, cached, context, generator, step)
        record["lr"] = lr_scheduler.get_last_lr()[0]
        lr_scheduler.step()
        if ema is not None:
            ema.update(params)
        step += 1
        history.append(record)
        if on_step is not None:
            on_step(record)
        stop = should_stop is not None and should_stop()
        if stop or step % config.checkpoint_every == 0:
            last_checkpoint = checkpoint()
        if (
            config.validation_prompts
            and config.validation_every
            and step % config.validation_every == 0
        ):
            validate()
        if stop:
            log.info(
                "stopped at step %d on request; resume continues from %s", step, last_checkpoint
            )
            return FinetuneResult(
                output=None,
                output_kind="lora" if config.lora_rank else "diffusers",
                history=history,
                validation_images=validation_images,
                stopped=True,
                checkpoint=last_checkpoint,
            )

    if config.validation_prompts and validated_at != step:
        validate()
    if ema is not None:
        ema.swap(params)  # the output carries the averaged weights
    output, kind = _save_output(
        unet, config, out, model_path=model_path, config_dir=config_path, sdxl=sdxl
    )
    log.info("wrote %s (%s)", output, kind)
    return FinetuneResult(
        output=output,
        output_kind=kind,
        history=history,
        validation_images=validation_images,
        stopped=False,
        checkpoint=last_checkpoint,
    )


def make_optimizer(
    params: list[torch.nn.Parameter], config: FinetuneConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the fp32 trainable parameters; the fused CUDA kernel on GPUs."""
    return torch.optim.AdamW(
        params,
        lr=config.lr,
        weight_decay=config.weight_decay,
        fused=True if device.type == "cuda" else None,
    )


def optimizer_step(
    unet: Any,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    cached: LatentPairs,
    context: StepContext,
    generator: torch.Generator,
    step: int,
) -> dict[str, Any]:
    """Optimizer step number ``step + 1``: ``accumulation`` micro-batches, clipping, update.
    ``cached`` lives on the device; the record (losses averaged over micro-batches) is read
    back in one transfer at the end."""
    config = context.config
    totals: dict[str, Tensor] = {}
    optimizer.zero_grad(set_to_none=True)
    for micro in range(config.accumulation):
        positions = batch_indices(
            step * config.accumulation + micro, config.batch_size, len(cached), config.seed
        )
        batch = cached.batch(_to_device(torch.tensor(positions), context.device))
        loss, parts = compute_loss(unet, batch, context, generator)
        (loss / config.accumulation).backward()
        for name, value in {"loss": loss.detach(), **parts}.items():
            share = value.float() / config.accumulation
            totals[name] = totals[name] + share if name in totals else share
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_norm)
    values = torch.stack(list(totals.values())).tolist()  # the step's one host sync
    record = {"step": step + 1, **dict(zip(totals, values, strict=True))}
    if not math.isfinite(record["loss"]):
        raise FloatingPointError(
            f"step {step + 1}: the loss is {record['loss']}; lower lr or check the pairs"
        )
    optimizer.step()
    return record


def _to_device(indices: Tensor, device: torch.device) -> Tensor:
    # a pageable host→GPU copy waits for the stream to drain; a pinned one does not
    if device.type == "cuda":
        return indices.pin_memory().to(device, non_blocking=True)
    return indices.to(device)


def _resume(
    folder: Path,
    unet: Any,
    params: list[torch.nn.Parameter],
    named: list[str],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    ema: _EMA | None,
    generator: torch.Generator,
    config: FinetuneConfig,
    key: str,
) -> tuple[int, list[dict[str, Any]]]:
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    saved = state["config"]
    for name in ("objective", "lora_rank", "lora_alpha", "resolution"):
        if saved.get(name) != getattr(config, name):
            raise ValueError(
                f"{name}: {folder} was trained with {saved.get(name)!r}, now {getattr(config, name)!r}; "
                "use a new output folder or the same setting"
            )
    if (state["ema"] is None) != (ema is None):
        raise ValueError(f"ema_decay: {folder} and this run disagree on whether EMA is on")
    if state["cache_key"] != key:
        log.warning(
            "resuming %s with different pairs or model files than it was trained on", folder
        )
    if sorted(state["trainable"]) != sorted(named):
        raise ValueError(f"{folder} holds other trainable parameters than this model has")
    with torch.no_grad():
        for name, param in zip(named, params, strict=True):
            param.copy_(state["trainable"][name])
        if ema is not None:
            for shadow, saved_shadow in zip(ema.shadow, state["ema"], strict=True):
                shadow.copy_(saved_shadow)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    generator.set_state(state["generator"])
    log.info("resumed from %s at step %d", folder, state["step"])
    return int(state["step"]), list(state["history"])
