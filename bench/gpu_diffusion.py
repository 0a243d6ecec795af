"""GPU benchmark sections for SD 1.5 fine-tuning and generation (full size, random weights).

Sections (each prints ``name  config  value unit`` lines and catches its own failure, so an OOM or
a compile error in one still lets the others run):

- ``bench_sd_training``: img/s of one optimizer step, counting every UNet sample evaluation as
  an image, at 512 px (latents 4×64×64, text 77×768):
  (a) ``sd_train anchor``: the standard SD 1.5 step (diffusers' train_text_to_image): full UNet in
      fp32, bf16 autocast, AdamW (foreach), eager — the issue's anchor (69.8 img/s, one H100);
  (b) ``sd_train guidance``: the fine-tuning loop's own step (ml.train.diffusion.optimizer_step
      with the face guidance loss) on a device-resident latent cache: both states of batch/2
      pairs in one UNet call; LoRA rank 16 (prepare_unet: frozen bf16 base, fp32 adapters,
      channels_last), SDPA attention, fused AdamW, gradient clipping, torch.compile (its time
      printed apart as "first 2 steps", excluded from the throughput); also pairs/s;
  (c) ``sd_train dpo``: the same step with Diffusion-DPO on the same compiled LoRA UNet: the model
      call (w and l, with grad) and the reference call (adapters off, no grad) — 4 samples/pair.
- ``bench_sd_generation``: img/s of the sampling loop: 30 DDIM steps with classifier-free guidance
  (one UNet call on 2×batch) in bf16, channels_last, then the VAE decode to 512 px.

On the CPU the same code runs with a tiny UNet/VAE config and 1–2 iterations so it is tested
here. Standalone: ``python bench/gpu_diffusion.py [--no-compile] [--seconds S] [--batch B]``;
through bench/gpu.py, ``BENCH_COMPILE=0`` runs the LoRA sections eager.
The device image has no diffusers: carry a copy of its package folder and put it on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.train.diffusion import (  # noqa: E402
    FinetuneConfig,
    StepContext,
    make_optimizer,
    noisy_latents,
    optimizer_step,
    prepare_unet,
    squared_error,
)
from ml.train.latents import LatentPairs  # noqa: E402

TEXT_TOKENS = 77


def unet_config(device: torch.device) -> dict[str, Any]:
    """SD 1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json); a tiny one on the CPU."""
    config: dict[str, Any] = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }
    if device.type == "cpu":
        config.update(
            sample_size=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
        )
    return config


def vae_config(device: torch.device) -> dict[str, Any]:
    """SD 1.5's VAE (vae/config.json): 512 px images from 64×64 latents; tiny on the CPU."""
    config: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }
    if device.type == "cpu":
        config.update(
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            block_out_channels=[32, 64],
            layers_per_block=1,
            sample_size=16,
        )
    return config


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(
    step: Callable[[], object], device: torch.device, *, seconds: float, min_iters: int = 2
) -> float:
    """Seconds per call over at least ``min_iters`` calls and ``seconds`` (warm-up done by caller)."""
    _synchronize(device)
    iters, start = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < seconds:
        step()
        iters += 1
    _synchronize(device)
    return (time.perf_counter() - start) / iters


def _warm_up(step: Callable[[], object], device: torch.device, *, calls: int = 2) -> float:
    """Run the first calls (compilation, autotuning, allocator growth); their wall time."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        step()
    _synchronize(device)
    return time.perf_counter() - start


def _memory(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return f"   (peak {peak:.1f} GiB)"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@contextlib.contextmanager
def _section(name: str, device: torch.device) -> Iterator[None]:
    """Print a section's failure (OOM, compile error) instead of ending the whole bench."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 — a bench reports and moves on
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        print(f"{name}  failed  {type(error).__name__}: {message}")
    finally:
        _free(device)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _build_unet(device: torch.device, dtype: torch.dtype) -> Any:
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # random weights: its "keep in float32" notes say nothing

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: 860 M parameters are slow on the CPU
        unet: Any = UNet2DConditionModel(**unet_config(device))
    return unet.to(dtype=dtype)


def _alphas_cumprod(device: torch.device) -> torch.Tensor:
    from diffusers import DDPMScheduler

    scheduler: Any = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    return scheduler.alphas_cumprod.to(device)


def _inputs(device: torch.device, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    config = unet_config(device)
    size = config["sample_size"]
    latents = torch.randn(batch, 4, size, size, device=device)
    text = torch.randn(batch, TEXT_TOKENS, config["cross_attention_dim"], device=device)
    return latents, text


def bench_sd_training(
    device: torch.device, *, seconds: float, batch: int, compile: bool | None = None
) -> None:
    """Sections (a) anchor, (b) guidance, (c) DPO; ``batch`` UNet samples per step for the
    anchor and per model pass (batch/2 pairs) for the LoRA steps."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if compile is None:  # BENCH_COMPILE=0/1 reaches this through bench/gpu.py, which has no flag
        compile = os.environ.get("BENCH_COMPILE", "1" if on_gpu else "0") != "0"
    use_compile = compile
    pairs = max(batch // 2, 1)
    alphas_cumprod = _alphas_cumprod(device)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    with _section("sd_train anchor", device):
        _bench_anchor(device, seconds=seconds, batch=batch, alphas_cumprod=alphas_cumprod)
    with _section("sd_train lora", device):
        # one LoRA UNet (and one compilation) serves both objectives, as a job would
        unet, params, model = _lora_unet(device, use_compile=use_compile)
        for objective in ("guidance", "dpo"):
            with _section(f"sd_train {objective}", device):
                _bench_lora_step(
                    device,
                    unet,
                    params,
                    model,
                    objective=objective,
                    seconds=seconds,
                    pairs=pairs,
                    mode="compiled" if use_compile else "eager",
                    alphas_cumprod=alphas_cumprod,
                )
        del unet, params, model


def _bench_anchor(
    device: torch.device, *, seconds: float, batch: int, alphas_cumprod: torch.Tensor
) -> None:
    """diffusers' train_text_to_image step: fp32 weights, bf16 autocast, AdamW, MSE to ε."""
    unet = _build_unet(device, torch.float32).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    latents, text = _inputs(device, batch)

    def step() -> None:
        noise = torch.randn_like(latents)
        t = torch.randint(0, len(alphas_cumprod), (batch,), device=device)
        with _autocast(device):
            pred = unet(noisy_latents(latents, noise, alphas_cumprod[t]), t, text).sample
        loss = squared_error(pred, noise).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _warm_up(step, device)
    per_step = _timed(step, device, seconds=seconds)
    precision = "bf16-autocast" if device.type == "cuda" else "fp32"
    print(
        f"sd_train anchor     full-UNet fp32 AdamW {precision} eager batch {batch:<3} "
        f"{batch / per_step:8.1f} img/s{_memory(device)}"
    )


def _train_config(objective: str, pairs: int) -> FinetuneConfig:
    return FinetuneConfig(
        objective=objective, lora_rank=16, lr=1e-4, batch_size=pairs, max_steps=10**6
    )


def _lora_unet(
    device: torch.device, *, use_compile: bool
) -> tuple[Any, list[torch.nn.Parameter], Any]:
    """The training loop's own LoRA set-up (prepare_unet): frozen base in bf16 on CUDA,
    rank-16 adapters in fp32, channels_last; plus the compiled module when asked."""
    on_gpu = device.type == "cuda"
    unet = _build_unet(device, torch.float32)
    params, _ = prepare_unet(
        unet,
        _train_config("guidance", 1),
        device=device,
        weight_dtype=torch.bfloat16 if on_gpu else torch.float32,
    )
    # compilation is lazy: it happens in the first steps, timed apart as "first 2 steps"
    model = torch.compile(unet) if use_compile else unet
    return unet, params, model


def _lora_label(device: torch.device, mode: str, pairs: int) -> str:
    if device.type == "cuda":
        return f"LoRA-16 bf16-base channels_last fused-AdamW {mode} pairs {pairs}"
    return f"LoRA-16 fp32-base AdamW {mode} pairs {pairs}"


def _random_pairs(device: torch.device, pairs: int) -> LatentPairs:
    """A device-resident latent cache of 4 batches of random pairs that differ in a face box."""
    count = 4 * pairs
    z_good, text = _inputs(device, count)
    size = z_good.shape[-1]
    mask = torch.zeros(count, 1, size, size, device=device)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return LatentPairs(
        good=z_good,
        bad=z_good + mask * torch.randn_like(z_good),
        mask=mask,
        prompt_index=torch.arange(count, device=device),
        text=text,
    )


def _bench_lora_step(
    device: torch.device,
    unet: Any,
    params: list[torch.nn.Parameter],
    model: Any,
    *,
    objective: str,
    seconds: float,
    pairs: int,
    mode: str,
    alphas_cumprod: torch.Tensor,
) -> None:
    """ml.train.diffusion.optimizer_step itself: the guidance step is one UNet call on both
    states of every pair (2 samples per pair); DPO adds the reference call on the same states
    with the adapters off and no grad (4 samples per pair)."""
    config = _train_config(objective, pairs)
    on_gpu = device.type == "cuda"
    context = StepContext(
        config=config,
        prediction_type="epsilon",
        alphas_cumprod=alphas_cumprod,
        device=device,
        compute_dtype=torch.bfloat16 if on_gpu else torch.float32,
    )
    cached = _random_pairs(device, pairs)
    optimizer = make_optimizer(params, config, device)
    generator = torch.Generator(device).manual_seed(0)
    steps = iter(range(10**9))

    def step() -> None:
        optimizer_step(model, params, optimizer, cached, context, generator, next(steps))

    first = _warm_up(step, device)
    per_step = _timed(step, device, seconds=seconds)
    samples = (2 if objective == "guidance" else 4) * pairs
    label = f"sd_train {objective:<10} {_lora_label(device, mode, pairs)}"
    print(
        f"{label}  first 2 steps {first:.1f} s ({'compile' if mode == 'compiled' else 'warm-up'})"
    )
    print(
        f"{label}  {samples / per_step:8.1f} img/s  {pairs / per_step:8.1f} pairs/s{_memory(device)}"
    )


def bench_sd_generation(
    device: torch.device,
    *,
    seconds: float,
    batch: int,
    steps: int | None = None,
    compile: bool = False,
) -> None:
    """(d) img/s of text-to-image sampling: ``steps`` DDIM steps with CFG + VAE decode, bf16."""
    device = torch.device(device)
    with _section("sd_generate", device):
        _bench_generation(device, seconds=seconds, batch=batch, steps=steps, use_compile=compile)


def _bench_generation(
    device: torch.device, *, seconds: float, batch: int, steps: int | None, use_compile: bool
) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler

    on_gpu = device.type == "cuda"
    steps = steps or (30 if on_gpu else 2)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    unet = _build_unet(device, dtype).eval()
    with torch.device(device):
        vae: Any = AutoencoderKL(**vae_config(device))
    vae = vae.to(dtype=dtype).eval()
    if on_gpu:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if use_compile:
        unet = torch.compile(unet)
    scheduler: Any = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    latents0, text = _inputs(device, batch)
    text2 = torch.cat([torch.randn_like(text), text]).to(dtype)  # unconditional, conditional
    scaling = vae_config(device)["scaling_factor"]

    @torch.inference_mode()
    def generate() -> torch.Tensor:
        scheduler.set_timesteps(steps, device=device)
        latents = latents0.to(dtype)
        for t in scheduler.timesteps:
            pred = unet(torch.cat([latents, latents]), t, text2).sample
            uncond, cond = pred.chunk(2)
            latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
        return vae.decode(latents / scaling).sample

    first = _warm_up(generate, device, calls=1)
    per_batch = _timed(generate, device, seconds=seconds, min_iters=1 if on_gpu else 2)
    precision = "bf16 channels_last" if on_gpu else "fp32"
    config = f"{steps} DDIM steps CFG 7.5 + VAE decode {vae_config(device)['sample_size']}px {precision} {'compiled' if use_compile else 'eager'} batch {batch}"
    print(f"sd_generate         {config}  first batch {first:.1f} s")
    print(f"sd_generate         {config}  {batch / per_batch:8.2f} img/s{_memory(device)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="UNet samples per training step; default 16 on CUDA, 2 on CPU",
    )
    parser.add_argument(
        "--generation-batch",
        type=int,
        default=None,
        help="images per sampling batch; default 16 on CUDA, 1 on CPU",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="per measurement; default 5 on CUDA, 0 on CPU"
    )
    compiling = parser.add_mutually_exclusive_group()
    compiling.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="torch.compile the LoRA UNet (default on CUDA)",
    )
    compiling.add_argument(
        "--no-compile", dest="compile", action="store_false", help="eager LoRA sections"
    )
    parser.add_argument("--compile-generation", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], choices=["training", "generation"])
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    seconds = args.seconds if args.seconds is not None else (5.0 if on_gpu else 0.0)
    name = (
        torch.cuda.get_device_name(device)
        if on_gpu
        else f"CPU ({torch.get_num_threads()} threads, tiny config)"
    )
    print(f"device: {name}; torch {torch.__version__}")
    if "training" not in args.skip:
        bench_sd_training(
            device, seconds=seconds, batch=args.batch or (16 if on_gpu else 2), compile=args.compile
        )
    if "generation" not in args.skip:
        bench_sd_generation(
            device,
            seconds=seconds,
            batch=args.generation_batch or (16 if on_gpu else 1),
            compile=args.compile_generation,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
