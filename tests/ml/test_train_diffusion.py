"""DM fine-tuning on face pairs: the guidance-loss and DPO algebra, LoRA/full training, resume,
outputs that diffusers loads. Tiny SD pipelines on the CPU (tests/ml/tiny_sd.py), 64 px."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from ml.train.diffusion import (
    FinetuneConfig,
    FinetunePair,
    StepContext,
    compute_loss,
    dpo_loss,
    finetune,
    guidance_loss,
    guidance_loss_terms,
    guidance_target,
    min_snr_weight,
    noisy_latents,
    predicted_original,
    prepare_unet,
    velocity,
)
from ml.train.latents import latent_mask
from tests.images import ASTRONAUT_FACE_CORE, astronaut
from tests.ml.tiny_sd import TINY_IMAGE_PX, tiny_components, write_tiny_sd

PREDICTION_TYPES = ["epsilon", "v_prediction"]


def _ddpm(prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type=prediction_type,
    )


def _latent_pair(seed: int = 0, count: int = 3, size: int = 8):
    generator = torch.Generator().manual_seed(seed)
    z_good = torch.randn(count, 4, size, size, generator=generator, dtype=torch.float64)
    z_bad = torch.randn(count, 4, size, size, generator=generator, dtype=torch.float64)
    noise = torch.randn(count, 4, size, size, generator=generator, dtype=torch.float64)
    return z_good, z_bad, noise


# --- the guidance target and loss -------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_guidance_target_makes_the_bad_state_predict_the_good_latent(prediction_type):
    z_good, z_bad, noise = _latent_pair()
    alphas = _ddpm().alphas_cumprod.double()[torch.tensor([3, 400, 990])]
    z_t_bad = noisy_latents(z_bad, noise, alphas)
    target = guidance_target(z_t_bad, z_good, alphas, prediction_type)
    torch.testing.assert_close(
        predicted_original(z_t_bad, target, alphas, prediction_type), z_good, rtol=0, atol=1e-9
    )
    # ε̃ = ε + √(ᾱ/(1−ᾱ)) (z_l − z_w), the closed form DESIGN.md writes
    a = alphas.reshape(-1, 1, 1, 1)
    eps_tilde = noise + (a / (1 - a)).sqrt() * (z_bad - z_good)
    expected = eps_tilde if prediction_type == "epsilon" else velocity(z_good, eps_tilde, alphas)
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_guidance_target_agrees_with_the_diffusers_scheduler_parameterisation(prediction_type):
    scheduler = _ddpm(prediction_type)
    z_good, z_bad, noise = (x.float()[:1] for x in _latent_pair(seed=1))
    timestep = torch.tensor([250])
    alphas = scheduler.alphas_cumprod[timestep]
    z_t_bad = noisy_latents(z_bad, noise, alphas)
    torch.testing.assert_close(z_t_bad, scheduler.add_noise(z_bad, noise, timestep))
    torch.testing.assert_close(
        velocity(z_good, noise, alphas), scheduler.get_velocity(z_good, noise, timestep)
    )
    target = guidance_target(z_t_bad, z_good, alphas, prediction_type)
    step = scheduler.step(target, int(timestep), z_t_bad)
    torch.testing.assert_close(step.pred_original_sample, z_good, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_guidance_term_reduces_to_the_standard_term_when_good_equals_bad(prediction_type):
    z_good, _, noise = _latent_pair(seed=2)
    alphas = _ddpm().alphas_cumprod.double()[torch.tensor([5, 500, 999])]
    pred = torch.randn(z_good.shape, dtype=torch.float64)  # same input state → same output
    full = torch.ones(3, 1, 8, 8, dtype=torch.float64)
    terms = guidance_loss_terms(
        pred,
        pred,
        z_good=z_good,
        z_bad=z_good,
        noise=noise,
        alphas_cumprod_t=alphas,
        latent_mask=full,
        prediction_type=prediction_type,
        guidance_weight=0.7,
        snr_gamma=5.0,
    )
    # ε̃ = ε and z_t^l = z_t^w: with m = 1 the guidance term is the standard term itself,
    # so L = mean over pairs of (1 + λ·w(t)) · standard
    torch.testing.assert_close(terms.guidance, terms.standard, rtol=1e-12, atol=0)
    weight = min_snr_weight(alphas, 5.0, prediction_type)
    torch.testing.assert_close(terms.loss, ((1 + 0.7 * weight) * terms.standard).mean())
    # with a binary mask it is the standard squared error averaged inside the mask
    box = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    box[..., 2:6, 1:5] = 1
    inside = guidance_loss_terms(
        pred,
        pred,
        z_good=z_good,
        z_bad=z_good,
        noise=noise,
        alphas_cumprod_t=alphas,
        latent_mask=box,
        prediction_type=prediction_type,
    ).guidance
    target = noise if prediction_type == "epsilon" else velocity(z_good, noise, alphas)
    expected = (pred - target)[..., 2:6, 1:5].pow(2).flatten(1).mean(1)
    torch.testing.assert_close(inside, expected)


def test_guidance_gradient_vanishes_outside_the_mask():
    z_good, z_bad, noise = (x.float() for x in _latent_pair(seed=3))
    alphas = _ddpm().alphas_cumprod[torch.tensor([100, 600, 900])]
    mask = torch.zeros(3, 1, 8, 8)
    mask[..., 3:7, 2:6] = 1.0
    mask[0, 0, 3, 2] = 0.25  # a feathered edge weighs in, too
    pred_good = torch.randn(z_good.shape, requires_grad=True)
    pred_bad = torch.randn(z_good.shape, requires_grad=True)
    loss = guidance_loss(
        pred_good,
        pred_bad,
        z_good=z_good,
        z_bad=z_bad,
        noise=noise,
        alphas_cumprod_t=alphas,
        latent_mask=mask,
    )
    loss.backward()
    outside = (mask == 0).expand_as(pred_bad)
    assert torch.count_nonzero(pred_bad.grad[outside]) == 0
    assert torch.all(pred_bad.grad[~outside] != 0)
    assert torch.all(pred_good.grad != 0)  # the standard term trains the whole good image


def test_an_empty_mask_leaves_only_the_standard_term():
    z_good, z_bad, noise = (x.float() for x in _latent_pair(seed=4))
    alphas = _ddpm().alphas_cumprod[torch.tensor([10, 20, 30])]
    pred = torch.randn(z_good.shape)
    terms = guidance_loss_terms(
        pred,
        pred,
        z_good=z_good,
        z_bad=z_bad,
        noise=noise,
        alphas_cumprod_t=alphas,
        latent_mask=torch.zeros(3, 8, 8),
    )
    assert torch.equal(terms.guidance, torch.zeros(3))
    torch.testing.assert_close(terms.loss, terms.standard.mean())


def test_min_snr_weight_matches_a_hand_computation():
    alphas = torch.tensor([0.8, 0.9, 0.5])  # SNR = 4, 9, 1
    torch.testing.assert_close(
        min_snr_weight(alphas, 5.0, "epsilon"), torch.tensor([1.0, 5 / 9, 1.0])
    )
    torch.testing.assert_close(
        min_snr_weight(alphas, 5.0, "v_prediction"), torch.tensor([4 / 5, 5 / 10, 1 / 2])
    )
    assert torch.equal(min_snr_weight(alphas, 0.0), torch.ones(3))
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weight(alphas, 5.0, "sample")


def test_latent_mask_is_the_covered_fraction_of_each_latent_cell():
    pixels = torch.zeros(1, 1, 16, 16)
    pixels[..., 0:8, 0:4] = 1.0  # half of the top-left 8×8 cell
    cells = latent_mask(pixels, (2, 2))
    assert cells.tolist() == [[[[0.5, 0.0], [0.0, 0.0]]]]


# --- Diffusion-DPO ------------------------------------------------------------------------------


def test_dpo_loss_follows_the_official_sign_and_half_beta():
    # model: winner error 1.0, loser 2.0; reference 1.5 for both → Δ_model − Δ_ref = −1
    loss = dpo_loss(
        torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([1.5]), torch.tensor([1.5]), beta=2.0
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-7)  # −log σ(+1)
    same = dpo_loss(*(torch.tensor([0.3, 0.7]),) * 2, *(torch.tensor([0.3, 0.7]),) * 2, beta=5000.0)
    assert same.item() == pytest.approx(math.log(2), abs=1e-7)


def _tiny_batch(seed: int = 0, count: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = TINY_IMAGE_PX // 2
    good = torch.randn(count, 4, size, size, generator=generator)
    mask = torch.zeros(count, 1, size, size)
    mask[..., 8:24, 8:24] = 1
    return {
        "good": good,
        "bad": good + mask * torch.randn(good.shape, generator=generator),
        "mask": mask,
        "text": torch.randn(count, 77, 32, generator=generator),
    }


def _context(
    config: FinetuneConfig, prediction_type: str = "epsilon", reference=None
) -> StepContext:
    return StepContext(
        config=config,
        prediction_type=prediction_type,
        alphas_cumprod=_ddpm().alphas_cumprod,
        device=torch.device("cpu"),
        compute_dtype=torch.float32,
        reference=reference,
    )


@pytest.mark.parametrize("lora_rank", [4, 0])
def test_dpo_loss_is_ln2_at_initialisation(lora_rank):
    config = FinetuneConfig(objective="dpo", lora_rank=lora_rank, resolution=64)
    unet = tiny_components()["unet"]
    _, reference = prepare_unet(
        unet, config, device=torch.device("cpu"), weight_dtype=torch.float32
    )
    loss, parts = compute_loss(
        unet, _tiny_batch(), _context(config, reference=reference), torch.Generator().manual_seed(0)
    )
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert parts["model_mse"].item() == parts["reference_mse"].item()
    assert parts["implicit_accuracy"].item() == 0.0


def test_a_lora_step_changes_the_adapters_and_no_frozen_bit():
    config = FinetuneConfig(lora_rank=4, lr=1e-3, resolution=64)
    unet = tiny_components()["unet"]
    params, _ = prepare_unet(unet, config, device=torch.device("cpu"), weight_dtype=torch.float32)
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    loss, _ = compute_loss(unet, _tiny_batch(), _context(config), torch.Generator().manual_seed(0))
    loss.backward()
    optimizer.step()
    lora_b = [n for n in before if "lora_B" in n]
    assert len(lora_b) == len([n for n in before if "lora_A" in n]) > 0
    for name, param in unet.named_parameters():
        if "lora_" in name:
            assert param.dtype == torch.float32 and param.requires_grad
            if "lora_B" in name:
                assert not torch.equal(param, before[name]), name
        else:
            assert not param.requires_grad
            assert torch.equal(param, before[name]), name


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        config = FinetuneConfig(lora_rank=4, gradient_checkpointing=checkpointing, resolution=64)
        unet = tiny_components()["unet"]
        params, _ = prepare_unet(
            unet, config, device=torch.device("cpu"), weight_dtype=torch.float32
        )
        assert unet.is_gradient_checkpointing == checkpointing
        with torch.no_grad():  # nonzero B, so every LoRA factor gets a gradient
            for name, param in unet.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.01, generator=torch.Generator().manual_seed(len(name)))
        loss, _ = compute_loss(
            unet, _tiny_batch(), _context(config), torch.Generator().manual_seed(0)
        )
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in params]))
    (loss_plain, grads_plain), (loss_checkpointed, grads_checkpointed) = results
    assert loss_checkpointed == pytest.approx(loss_plain, rel=1e-6)
    for plain, checkpointed in zip(grads_plain, grads_checkpointed, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-7)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    from ml.train.diffusion import _checkpoints, _save_checkpoint

    for step in (2, 4, 6):
        _save_checkpoint(tmp_path, {"step": step}, limit=2)
    assert [p.name for p in _checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]


# --- the finetune loop --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def face_pairs() -> list[FinetunePair]:
    """Two pairs cut from the astronaut photo: the bad face is blurred inside an ellipse mask."""
    x0, y0, x1, y1 = ASTRONAUT_FACE_CORE
    photo = Image.fromarray(astronaut())
    pairs = []
    for index, margin in enumerate((40, 60)):
        good = photo.crop((x0 - margin, y0 - margin, x1 + margin, y1 + margin)).resize((64, 64))
        mask = Image.new("L", good.size, 0)

        ImageDraw.Draw(mask).ellipse((16, 12, 48, 52), fill=255)
        bad = Image.composite(good.filter(ImageFilter.GaussianBlur(4)), good, mask)
        pairs.append(
            FinetunePair(
                good=good, bad=bad, mask=mask, prompt=["a photo of a face", "an astronaut"][index]
            )
        )
    return pairs


def _config(**changes) -> FinetuneConfig:
    settings = dict(
        lora_rank=4,
        lr=1e-3,
        max_steps=2,
        batch_size=2,
        checkpoint_every=100,
        resolution=64,
        validation_steps=2,
    )
    settings.update(changes)
    return FinetuneConfig(**settings)


def _generate(pipeline, seed: int = 7) -> np.ndarray:
    image = pipeline(
        "a photo of a face",
        num_inference_steps=2,
        guidance_scale=7.5,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    return np.asarray(image, dtype=np.int16)


STRAIGHT = dict(
    max_steps=3,
    accumulation=2,
    lr=3e-2,
    ema_decay=0.5,
    lr_schedule="cosine",
    lr_warmup_steps=1,
    checkpoint_every=2,
)


@pytest.fixture(scope="module")
def straight_run(tiny_model, face_pairs, tmp_path_factory):
    """Three LoRA steps in one go, validating at step 2 and after the last step."""
    config = _config(
        **STRAIGHT, validation_prompts=["a photo of a face"], validation_seed=7, validation_every=2
    )
    out_dir = tmp_path_factory.mktemp("straight")
    return out_dir, finetune(
        model_path=tiny_model, pairs=face_pairs, config=config, out_dir=out_dir, device="cpu"
    )


def test_save_then_resume_reproduces_the_next_step(tiny_model, face_pairs, straight_run, tmp_path):
    _, straight = straight_run
    config = _config(**STRAIGHT)  # validation draws no training randomness, so it can differ
    calls = []
    stopped = finetune(
        model_path=tiny_model,
        pairs=face_pairs,
        config=config,
        out_dir=tmp_path,
        device="cpu",
        on_step=calls.append,
        should_stop=lambda: len(calls) == 2,
    )
    assert stopped.stopped and stopped.output is None
    assert stopped.checkpoint == tmp_path / "checkpoints" / "checkpoint-2"
    assert calls == stopped.history == straight.history[:2]
    cache_files = list((tmp_path / "cache").iterdir())
    written = [p.stat().st_mtime_ns for p in cache_files]

    resumed = finetune(
        model_path=tiny_model, pairs=face_pairs, config=config, out_dir=tmp_path, device="cpu"
    )
    assert not resumed.stopped and resumed.output is not None
    assert [p.stat().st_mtime_ns for p in cache_files] == written  # the latents were reused
    assert [r["step"] for r in resumed.history] == [1, 2, 3]
    for key in ("loss", "standard_loss", "guidance_loss", "grad_norm", "lr"):
        assert resumed.history[2][key] == pytest.approx(straight.history[2][key], abs=1e-6), key


def test_lora_output_loads_into_the_base_pipeline_and_changes_its_images(tiny_model, straight_run):
    from diffusers import StableDiffusionPipeline

    out_dir, result = straight_run
    assert result.output == out_dir / "lora" / "pytorch_lora_weights.safetensors"
    assert result.output_kind == "lora" and not result.stopped
    assert [p.relative_to(out_dir).as_posix() for p in result.validation_images] == [
        "validation/step-000002/00.png",
        "validation/step-000003/00.png",
    ]
    with Image.open(result.validation_images[-1]) as image:
        assert image.size == (64, 64)
        final = np.asarray(image.convert("RGB"), dtype=np.int16)

    pipeline = StableDiffusionPipeline.from_pretrained(
        tiny_model, local_files_only=True, safety_checker=None
    )
    pipeline.set_progress_bar_config(disable=True)
    base = _generate(pipeline)
    pipeline.load_lora_weights(result.output.parent, weight_name=result.output.name)
    tuned = _generate(pipeline)
    assert np.abs(tuned - base).max() > 8
    # the file holds the weights the run ended with (EMA ones): the last validation image again
    assert np.abs(tuned - final).max() <= 1


def test_resuming_with_another_objective_is_refused(tiny_model, face_pairs, straight_run, tmp_path):
    out_dir, _ = straight_run
    shutil.copytree(out_dir / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(ValueError, match="^objective:"):
        finetune(
            model_path=tiny_model,
            pairs=face_pairs,
            config=_config(**{**STRAIGHT, "objective": "dpo"}),
            out_dir=tmp_path,
            device="cpu",
        )


def test_full_unet_dpo_on_a_v_prediction_model_writes_a_diffusers_folder(face_pairs, tmp_path):
    from diffusers import StableDiffusionPipeline

    model = write_tiny_sd(tmp_path / "v-model", prediction_type="v_prediction")
    config = _config(objective="dpo", lora_rank=0, lr=1e-4, max_steps=1, dpo_beta=50.0)
    result = finetune(
        model_path=model, pairs=face_pairs, config=config, out_dir=tmp_path / "out", device="cpu"
    )
    assert result.output_kind == "diffusers" and result.output == tmp_path / "out" / "model"
    # step 1 starts from the reference itself. Not to the last bit, unlike LoRA: the model pass
    # runs with weight gradients on and the CPU picks other kernels than for the frozen copy
    first = result.history[0]
    assert first["model_mse"] == pytest.approx(first["reference_mse"], rel=1e-6)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    tuned = StableDiffusionPipeline.from_pretrained(result.output, local_files_only=True)
    base = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    assert tuned.scheduler.config.prediction_type == "v_prediction"
    changed = [
        name
        for (name, p), q in zip(tuned.unet.named_parameters(), base.unet.parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert changed and all(p.dtype == torch.float32 for p in tuned.unet.parameters())
    for name, p in base.vae.state_dict().items():
        assert torch.equal(p, tuned.vae.state_dict()[name])


# --- settings -----------------------------------------------------------------------------------


def test_config_round_trips_through_a_dict():
    config = FinetuneConfig(
        objective="dpo", lora_rank=0, validation_prompts=["a face"], lora_alpha=8
    )
    assert FinetuneConfig.from_dict(config.to_dict()) == config
    assert FinetuneConfig.from_dict({"lr": 1, "snr_gamma": 0}).lr == 1.0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"objective": "ppo"}, "objective"),
        ({"lora_rank": -1}, "lora_rank"),
        ({"lora_rank": 2.5}, "lora_rank"),
        ({"lr": 0}, "lr"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"resolution": 500}, "resolution"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing"),
        ({"validation_prompts": ["ok", ""]}, "validation_prompts"),
        ({"checkpoints_total_limit": 0}, "checkpoints_total_limit"),
        ({"learning_rate": 1e-4}, "learning_rate"),
    ],
)
def test_config_refuses_bad_values_naming_the_field(data, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        FinetuneConfig.from_dict(data)
