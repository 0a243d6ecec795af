"""DM fine-tuning of an SDXL model (the FaceScore paper's Diffusion-DPO route): the cached
two-encoder conditioning and size time ids, DPO at initialisation, LoRA-only updates, resume, and
outputs that the SDXL pipeline loads. A tiny SDXL folder on the CPU (tests/ml/tiny_sd.py), 64 px."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml.sd import load_pipeline
from ml.train.diffusion import (
    FinetuneConfig,
    StepContext,
    compute_loss,
    finetune,
    prepare_unet,
)
from ml.train.latents import LatentPairs, cache_key, encode_pairs
from tests.benchmark.test_finetune_dm_job import _data as _job_data
from tests.benchmark.test_finetune_dm_job import crafted
from tests.ml.test_train_diffusion import _config, _generate, face_pairs
from tests.ml.tiny_sd import TINY_IMAGE_PX, write_tiny_sd, write_tiny_sdxl

__all__ = ["crafted", "face_pairs"]  # fixtures, imported for pytest


@pytest.fixture(scope="module")
def sdxl_model(tmp_path_factory) -> Path:
    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "model")


@pytest.fixture(scope="module")
def sdxl_pipeline(sdxl_model):
    return load_pipeline(sdxl_model, task="text2img", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def encoded(sdxl_pipeline, face_pairs) -> LatentPairs:
    return encode_pairs(
        face_pairs,
        vae=sdxl_pipeline.vae,
        tokenizer=sdxl_pipeline.tokenizer,
        text_encoder=sdxl_pipeline.text_encoder,
        tokenizer_2=sdxl_pipeline.tokenizer_2,
        text_encoder_2=sdxl_pipeline.text_encoder_2,
        resolution=TINY_IMAGE_PX,
        device=torch.device("cpu"),
    )


def _context(config: FinetuneConfig, reference=None) -> StepContext:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return StepContext(
        config=config,
        prediction_type="epsilon",
        alphas_cumprod=scheduler.alphas_cumprod,
        device=torch.device("cpu"),
        compute_dtype=torch.float32,
        reference=reference,
    )


def _fresh_unet(sdxl_model: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(sdxl_model / "unet", local_files_only=True)


# --- the cache -----------------------------------------------------------------------------------


def test_the_cache_holds_what_the_sdxl_pipeline_conditions_its_unet_on(
    sdxl_pipeline, face_pairs, encoded
):
    prompts = sorted({pair.prompt for pair in face_pairs})
    assert encoded.sdxl and encoded.text.shape == (2, 77, 64) and encoded.pooled is not None
    for row, prompt in enumerate(prompts):
        embeds, _, pooled, _ = sdxl_pipeline.encode_prompt(
            prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        # both prompts go through the encoders as one batch here, one by one in the pipeline:
        # equal up to the batched matmul's rounding
        torch.testing.assert_close(encoded.text[row], embeds[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(encoded.pooled[row], pooled[0], rtol=0, atol=1e-6)
    # (original size, crop top-left, target size) of a 64-px square: what the pipeline passes
    # when it draws a 64×64 image
    expected = sdxl_pipeline._get_add_time_ids(
        (64, 64), (0, 0), (64, 64), dtype=torch.float32, text_encoder_projection_dim=32
    )
    assert encoded.time_ids.tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2
    torch.testing.assert_close(encoded.time_ids, expected.repeat(2, 1), rtol=0, atol=0)
    batch = encoded.batch(torch.tensor([1, 0]))
    assert set(batch) == {"good", "bad", "mask", "text", "pooled", "time_ids"}
    row = encoded.prompt_index[1]
    assert torch.equal(batch["pooled"][0], encoded.pooled[row])
    # the SDXL latents are 4-channel VAE means at the VAE's own scale (2 for the tiny one)
    assert encoded.good.shape == (2, 4, 32, 32)


def test_the_cache_key_tells_the_architectures_apart(sdxl_model, face_pairs):
    assert cache_key(sdxl_model, face_pairs, 64, "sdxl") != cache_key(sdxl_model, face_pairs, 64)


# --- one step ------------------------------------------------------------------------------------


def test_sdxl_dpo_loss_is_ln2_at_initialisation_and_a_step_moves_only_the_adapters(
    sdxl_model, encoded
):
    config = FinetuneConfig(objective="dpo", lora_rank=4, lr=1e-3, resolution=64)
    unet = _fresh_unet(sdxl_model)
    params, reference = prepare_unet(
        unet, config, device=torch.device("cpu"), weight_dtype=torch.float32
    )
    assert reference is None
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    loss, parts = compute_loss(
        unet,
        encoded.batch(torch.tensor([0, 1])),
        _context(config),
        torch.Generator().manual_seed(0),
    )
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert parts["model_mse"].item() == parts["reference_mse"].item()
    loss.backward()
    torch.optim.AdamW(params, lr=config.lr).step()
    assert any("lora_B" in name for name in before)
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            assert not torch.equal(param, before[name]), name
        elif "lora_" not in name:
            assert not param.requires_grad and torch.equal(param, before[name]), name


def test_the_pooled_embedding_and_time_ids_reach_the_unet(sdxl_model, encoded):
    config = FinetuneConfig(lora_rank=0, resolution=64)
    unet = _fresh_unet(sdxl_model)
    batch = encoded.batch(torch.tensor([0, 1]))
    losses = []
    for change in (None, "pooled", "time_ids"):
        changed = dict(batch)
        if change is not None:
            changed[change] = batch[change] * 2
        with torch.no_grad():
            loss, _ = compute_loss(
                unet, changed, _context(config), torch.Generator().manual_seed(0)
            )
        losses.append(loss.item())
    assert losses[0] != losses[1] and losses[0] != losses[2]


# --- the finetune loop ---------------------------------------------------------------------------

STRAIGHT = dict(
    objective="dpo",
    max_steps=3,
    lr=3e-2,
    dpo_beta=500.0,
    ema_decay=0.5,
    checkpoint_every=2,
)


@pytest.fixture(scope="module")
def dpo_run(sdxl_model, face_pairs, tmp_path_factory):
    """Three LoRA DPO steps in one go, validating after the last step."""
    config = _config(**STRAIGHT, validation_prompts=["a photo of a face"], validation_seed=7)
    out_dir = tmp_path_factory.mktemp("sdxl-dpo")
    return out_dir, finetune(
        model_path=sdxl_model, pairs=face_pairs, config=config, out_dir=out_dir, device="cpu"
    )


def test_an_sdxl_dpo_run_starts_at_ln2_and_caches_the_sdxl_conditioning(dpo_run, encoded):
    out_dir, result = dpo_run
    assert [r["step"] for r in result.history] == [1, 2, 3]
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert result.history[0]["model_mse"] == result.history[0]["reference_mse"]
    (cache_file,) = (out_dir / "cache").iterdir()
    cached = torch.load(cache_file, weights_only=True)
    assert sorted(cached) == sorted(
        ["good", "bad", "mask", "prompt_index", "text", "pooled", "time_ids"]
    )
    for name, tensor in encoded.state().items():
        torch.testing.assert_close(cached[name], tensor, rtol=0, atol=0)


def test_sdxl_save_then_resume_reproduces_the_next_step(sdxl_model, face_pairs, dpo_run, tmp_path):
    _, straight = dpo_run
    config = _config(**STRAIGHT)
    calls: list[dict] = []
    stopped = finetune(
        model_path=sdxl_model,
        pairs=face_pairs,
        config=config,
        out_dir=tmp_path,
        device="cpu",
        on_step=calls.append,
        should_stop=lambda: len(calls) == 2,
    )
    assert stopped.stopped and stopped.history == straight.history[:2]
    resumed = finetune(
        model_path=sdxl_model, pairs=face_pairs, config=config, out_dir=tmp_path, device="cpu"
    )
    assert [r["step"] for r in resumed.history] == [1, 2, 3]
    for key in ("loss", "model_mse", "reference_mse", "grad_norm", "lr"):
        assert resumed.history[2][key] == pytest.approx(straight.history[2][key], abs=1e-6), key


def test_the_sdxl_lora_loads_through_load_pipeline_and_changes_a_fixed_seed_image(
    sdxl_model, dpo_run
):
    out_dir, result = dpo_run
    assert result.output == out_dir / "lora" / "pytorch_lora_weights.safetensors"
    assert result.output_kind == "lora"
    assert [p.relative_to(out_dir).as_posix() for p in result.validation_images] == [
        "validation/step-000003/00.png"
    ]
    with Image.open(result.validation_images[0]) as image:
        final = np.asarray(image.convert("RGB"), dtype=np.int16)

    base = load_pipeline(sdxl_model, task="text2img", device="cpu")
    tuned = load_pipeline(sdxl_model, task="text2img", device="cpu", lora=result.output)
    assert type(tuned).__name__ == "StableDiffusionXLPipeline"
    base_image, tuned_image = _generate(base), _generate(tuned)
    assert np.abs(tuned_image - base_image).max() > 8
    # the file holds the weights the run ended with (the EMA ones): the validation image again
    assert np.abs(tuned_image - final).max() <= 1


def test_the_guidance_objective_trains_the_full_sdxl_unet_into_a_diffusers_folder(
    sdxl_model, face_pairs, tmp_path
):
    from diffusers import StableDiffusionXLPipeline

    config = _config(objective="guidance", lora_rank=0, lr=1e-4, max_steps=1)
    result = finetune(
        model_path=sdxl_model, pairs=face_pairs, config=config, out_dir=tmp_path, device="cpu"
    )
    assert result.output_kind == "diffusers" and result.output == tmp_path / "model"
    record = result.history[0]
    assert math.isfinite(record["loss"]) and record["guidance_loss"] > 0
    tuned = load_pipeline(result.output, task="text2img", device="cpu")
    base = StableDiffusionXLPipeline.from_pretrained(sdxl_model, local_files_only=True)
    assert type(tuned).__name__ == "StableDiffusionXLPipeline"
    changed = [
        name
        for (name, p), q in zip(tuned.unet.named_parameters(), base.unet.parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert changed
    for name, p in base.text_encoder_2.state_dict().items():
        assert torch.equal(p, tuned.text_encoder_2.state_dict()[name])


def test_an_sd15_cache_has_no_sdxl_conditioning(tmp_path, face_pairs):
    from ml.train.latents import load_or_encode

    pipeline = load_pipeline(write_tiny_sd(tmp_path / "sd"), task="text2img", device="cpu")
    cached, hit = load_or_encode(
        tmp_path / "cache",
        "k",
        face_pairs,
        vae=pipeline.vae,
        tokenizer=pipeline.tokenizer,
        text_encoder=pipeline.text_encoder,
        resolution=64,
        device=torch.device("cpu"),
    )
    assert not hit and not cached.sdxl
    assert sorted(torch.load(tmp_path / "cache" / "latents-k.pt", weights_only=True)) == sorted(
        ["good", "bad", "mask", "prompt_index", "text"]
    )


# --- the launch form and the job ----------------------------------------------------------------


@pytest.fixture
def roots(tmp_path, settings, sdxl_model) -> Path:
    """The job tests' roots (tests/benchmark/test_finetune_dm_job.py) with the tiny SDXL model
    as the launchable "tiny-text2img" and an SD 2 look-alike beside it."""
    import json
    import shutil

    models = tmp_path / "models"
    shutil.copytree(sdxl_model, models / "tiny-text2img")
    sd2 = write_tiny_sd(models / "tiny-sd2")
    unet_config = json.loads((sd2 / "unet" / "config.json").read_text())
    unet_config["cross_attention_dim"] = 1024  # what inspect_model reads as SD 2
    (sd2 / "unet" / "config.json").write_text(json.dumps(unet_config))
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    settings.FACEBENCH_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.FACEBENCH_INPUT_DIRS = [models]
    settings.FACEBENCH_WEIGHTS_DIR.mkdir()
    return models


@pytest.mark.django_db
def test_an_sdxl_dpo_job_launches_from_the_form_and_writes_a_lora_that_loads(
    roots, crafted, admin_user
):
    from benchmark import launch
    from benchmark.finetuning import tuned_model
    from jobs.models import Job

    data = _job_data(roots, crafting_jobs=[crafted.pk], objective="dpo", dpo_beta=500.0)
    job = launch.launch("finetune_dm", data, created_by=admin_user, fill_defaults=True)
    launch.run_launched_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error + job.log_tail
    assert job.result["model"]["architecture"] == "sdxl" and job.result["output_kind"] == "lora"
    paths = tuned_model(job)
    tuned = load_pipeline(paths["model"], task="text2img", device="cpu", lora=paths["lora"])
    assert type(tuned).__name__ == "StableDiffusionXLPipeline"
    assert any(tuned.get_list_adapters().values())


@pytest.mark.django_db
def test_the_launch_form_still_refuses_an_sd2_model(roots, crafted):
    from benchmark import launch

    data = _job_data(roots, crafting_jobs=[crafted.pk], model=str(roots / "tiny-sd2"))
    with pytest.raises(launch.LaunchInvalid) as refused:
        launch.launch("finetune_dm", data, fill_defaults=True)
    assert "sd2 model" in " ".join(refused.value.form.errors["model"])
