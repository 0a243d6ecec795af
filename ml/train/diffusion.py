"""Fine-tuning a diffusion model (SD 1.5 family) on (good, bad) face pairs.

Two objectives, both on VAE latents of a pair that differ only inside the face mask:

- ``guidance``: the face guidance loss of DESIGN.md ("Improving faces"): learn the ordinary
  denoising task on the good image and, inside the face, steer the noisy *bad* state towards the
  *good* face.
- ``dpo``: Diffusion-DPO (Wallace et al. 2023) with the LoRA-disabled UNet as the reference.

The loss functions below are pure tensor functions (no model inside), so the tests check their
algebra exactly and the GPU bench times the same code the training loop runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction")


def _per_sample(alphas_cumprod_t: Tensor, like: Tensor) -> Tensor:
    """ᾱ_t of shape (B,) broadcast against a (B, C, H, W) latent, in the latent's precision."""
    return alphas_cumprod_t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


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
    a = alphas_cumprod_t.float()
    if snr_gamma <= 0:
        return torch.ones_like(a)
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=snr_gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


def latent_mask(pixel_mask: Tensor, latent_size: tuple[int, int]) -> Tensor:
    """Pixel face mask (B, 1, H, W) in [0, 1] → latent mask by area averaging (a feathered or
    partly covered 8×8 patch gets its covered fraction)."""
    return F.adaptive_avg_pool2d(pixel_mask.float(), latent_size)


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
    ``latent_mask`` is (B, 1, h, w) or (B, h, w) in [0, 1]. Computed in float32."""
    pred_good, pred_bad = pred_good.float(), pred_bad.float()
    z_good, z_bad, noise = z_good.float(), z_bad.float(), noise.float()
    mask = latent_mask.float()
    if mask.ndim == z_good.ndim - 1:
        mask = mask.unsqueeze(1)
    target_good = training_target(z_good, noise, alphas_cumprod_t, prediction_type)
    standard = (pred_good - target_good).pow(2).flatten(1).mean(1)
    z_t_bad = noisy_latents(z_bad, noise, alphas_cumprod_t)
    target_bad = guidance_target(z_t_bad, z_good, alphas_cumprod_t, prediction_type)
    masked = (mask * (pred_bad - target_bad)).pow(2).flatten(1).mean(1)
    # an empty mask gives 0/ε = 0: such a pair only trains the standard term
    guidance = masked / mask.flatten(1).mean(1).clamp_min(1e-8)
    weight = min_snr_weight(alphas_cumprod_t, snr_gamma, prediction_type).to(standard.device)
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
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


# Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908), per pair with one shared t and ε:
#   Δ = err(z_t^w) − err(z_t^l) with err = ‖ε_·(z_t) − target‖² (mean over elements)
#   L = −log σ(−β/2 · (Δ_model − Δ_ref))
# The official train.py (SalesforceAIResearch/DiffusionDPO) computes exactly this:
# ``scale_term = -0.5 * beta_dpo; inside = scale_term * (model_diff - ref_diff)`` with per-element
# mean errors; the paper's β·T·ω(λ_t) is folded into beta_dpo (5000 for SD 1.5 in their launchers),
# the ½ is the Gaussian log-likelihood's. Lower model error on the winner than the reference has
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
