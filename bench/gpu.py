"""GPU benchmark: full-size models with random weights, baseline and optimised side by side.

Sections (each prints its numbers; the device and dtype are printed first; pick with --sections):
- ``face_score``: Face Score / ImageReward scoring (BLIP ViT-L/16 + BERT-base with cross-attention)
  at 224 px, faces/s for batch 1 in fp32 (the upstream way: one face at a time) against batched
  bf16 (fp16 where bf16 is missing) autocast, with the max abs difference of the scores.
- ``face_score_train``: one Face Score training step (bench/gpu_face_score_train.py), pairs/s.
- ``sd_train``: SD 1.5 UNet training steps at 512 px (bench/gpu_diffusion.py): the standard step
  (the anchor), the face guidance-loss step and the Diffusion-DPO step, img/s.
- ``sd_generate``: SD 1.5 generation (UNet with CFG + VAE decode), img/s.

Run on a lent GPU as one prepared script, e.g. ``python bench/gpu.py``; on the CPU it runs too
(tiny configs, a few iterations) so the script itself is tested here. A section that fails (out of
memory, a compile error) prints its error and the next one runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ml` and `bench` from the checkout

from ml.devices import autocast, resolve_dtype  # noqa: E402
from ml.metrics.blip import TextConfig, VisionConfig  # noqa: E402
from ml.metrics.imagereward import ImageRewardModel  # noqa: E402

# bert-base-uncased with BLIP's cross-attention (ImageReward's med_config.json)
MED_CONFIG = {
    "vocab_size": 30524,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}
TOKENS = 35  # ImageReward's max prompt length


def full_size_reward_model(device: torch.device) -> ImageRewardModel:
    vision = VisionConfig()
    text = TextConfig(
        **MED_CONFIG,
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        pad_token_id=0,
        encoder_width=vision.width,
    )
    torch.manual_seed(0)
    model = ImageRewardModel(vision, text)
    for (
        layer
    ) in model.mlp.modules():  # unit-gain head: the official init gives near-constant scores
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
    return model.to(device).eval()


def timed(
    fn: Callable[[], torch.Tensor], device: torch.device, *, seconds: float, min_iters: int = 2
) -> float:
    """Seconds per call: one warm-up, then repeat until ``seconds`` have passed."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    iters, start = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < seconds:
        fn()
        iters += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def bench_face_score(device: torch.device, *, batch: int, seconds: float) -> None:
    model = full_size_reward_model(device)
    half = resolve_dtype(device, None) if device.type == "cuda" else torch.bfloat16
    pixels = torch.randn(batch, 3, 224, 224, device=device)
    ids = torch.randint(1000, 2000, (batch, TOKENS), device=device)
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones(batch, TOKENS, dtype=torch.long, device=device)

    @torch.inference_mode()
    def one_at_a_time() -> torch.Tensor:
        return torch.cat(
            [model(pixels[i : i + 1], ids[i : i + 1], mask[i : i + 1]) for i in range(batch)]
        )

    @torch.inference_mode()
    def batched() -> torch.Tensor:
        with autocast(device, half):
            return model(pixels, ids, mask)

    difference = (one_at_a_time() - batched()).abs().max().item()
    base = timed(one_at_a_time, device, seconds=seconds)
    fast = timed(batched, device, seconds=seconds)
    print(f"face_score  batch 1 fp32       {batch / base:9.1f} faces/s")
    print(
        f"face_score  batch {batch:<4} {str(half).replace('torch.', ''):<9} {batch / fast:9.1f} faces/s"
        f"   ({base / fast:.1f}x; max |score difference| {difference:.3g})"
    )


SECTIONS = ("face_score", "face_score_train", "sd_train", "sd_generate")


def run_section(name: str, device: torch.device, *, batch: int | None, seconds: float) -> None:
    on_gpu = device.type == "cuda"
    if name == "face_score":
        bench_face_score(device, batch=batch or (256 if on_gpu else 8), seconds=seconds)
    elif name == "face_score_train":
        from bench.gpu_face_score_train import bench_face_score_training

        bench_face_score_training(device, batch=batch or (128 if on_gpu else 2), seconds=seconds)
    elif name == "sd_train":
        from bench.gpu_diffusion import bench_sd_training

        bench_sd_training(device, batch=batch or (16 if on_gpu else 2), seconds=seconds)
    elif name == "sd_generate":
        from bench.gpu_diffusion import bench_sd_generation

        bench_sd_generation(device, batch=batch or (16 if on_gpu else 1), seconds=seconds)
    else:
        raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in order")
    parser.add_argument(
        "--batch", type=int, default=None, help="override each section's default batch"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="per measurement; default 10 on CUDA, 1 on CPU"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    seconds = args.seconds if args.seconds is not None else (10.0 if on_gpu else 1.0)
    name = (
        torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    failed = 0
    for section in args.sections.split(","):
        started = time.perf_counter()
        try:
            run_section(section.strip(), device, batch=args.batch, seconds=seconds)
        except Exception as exc:  # one section's OOM or compile error must not hide the others
            failed += 1
            print(f"{section}: FAILED {type(exc).__name__}: {exc}")
        if on_gpu:
            torch.cuda.empty_cache()
        print(f"({section}: {time.perf_counter() - started:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
