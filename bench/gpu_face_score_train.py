"""Bench section ``face_score_train``: full Face Score training steps, pairs/s.

The full-size ImageReward architecture (BLIP ViT-L/16 + BERT-base with cross-attention) with
random weights, frozen as `ml.train.face_score.freeze_layers(model, 0.7)` freezes it; one step is
forward of the good and bad crops as one batch of 2B at 224 px, Bradley–Terry loss, backward,
gradient clipping and an AdamW step over the trainable parameters, in train mode (dropout on).

- baseline: fp32, 8 pairs, the prompt padded to 35 tokens, foreach AdamW (the upstream way).
- optimised: bf16 autocast over fp32 master weights, `batch` pairs, the prompt's padding columns
  trimmed (5 of 35 tokens for "A face."), fused AdamW, TF32 for the matmuls left in fp32 (the
  reward head); `--compile` adds torch.compile (compile time is not counted, but is long).
channels_last is not used: the only convolution is the patch embedding, a negligible share.

Run alone with ``python bench/gpu_face_score_train.py`` or as a section of ``bench/gpu.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ml` and `bench` from the checkout

from bench.gpu import TOKENS, full_size_reward_model, timed  # noqa: E402
from ml.metrics.imagereward import ImageRewardModel  # noqa: E402
from ml.train.face_score import bt_loss, freeze_layers, pair_rewards, trim_padding  # noqa: E402

BASELINE_PAIRS = 8
# bert-base-uncased ids of "[CLS] a face . [SEP]", the Face Score prompt.
FACE_PROMPT_IDS = (101, 1037, 2227, 1012, 102)


def prompt_ids(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 35) ids and mask of "A face.", padded as ImageReward's tokenizer call pads it."""
    ids = torch.zeros(1, TOKENS, dtype=torch.long, device=device)
    ids[0, : len(FACE_PROMPT_IDS)] = torch.tensor(FACE_PROMPT_IDS, device=device)
    return ids, (ids != 0).long()


def make_train_step(
    model: ImageRewardModel,
    params: list[torch.nn.Parameter],
    device: torch.device,
    *,
    pairs: int,
    amp_dtype: torch.dtype,
    trim: bool,
    fused: bool,
) -> Callable[[], torch.Tensor]:
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-4, fused=fused)
    generator = torch.Generator(device=device).manual_seed(0)
    pixels = torch.randn(2 * pairs, 3, 224, 224, device=device, generator=generator)
    good, bad = pixels[:pairs], pixels[pairs:]
    ids, mask = prompt_ids(device)
    if trim:
        ids, mask = trim_padding(ids, mask)

    def step() -> torch.Tensor:
        r_good, r_bad = pair_rewards(model, good, bad, ids, mask, amp_dtype=amp_dtype)
        loss = bt_loss(r_good, r_bad)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def bench_face_score_training(
    device: torch.device, *, batch: int, seconds: float, compile_model: bool = False
) -> None:
    on_gpu = device.type == "cuda"
    started = time.perf_counter()
    model = full_size_reward_model(device)
    params = [param for _, param in freeze_layers(model, 0.7)]
    model.train()
    trainable = sum(p.numel() for p in params) / 1e6
    total = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"face_score_train  {trainable:.0f}M of {total:.0f}M parameters trainable (fix_rate 0.7); "
        f"model built in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    min_iters = 2 if on_gpu else 1
    base_pairs = min(BASELINE_PAIRS, batch)
    baseline = make_train_step(
        model, params, device, pairs=base_pairs, amp_dtype=torch.float32, trim=False, fused=False
    )
    base = timed(baseline, device, seconds=seconds, min_iters=min_iters)
    print(
        f"face_score_train  fp32 {base_pairs:>4} pairs, 35 tokens, foreach AdamW "
        f"{base_pairs / base:9.1f} pairs/s",
        flush=True,
    )
    del baseline
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    half = torch.bfloat16 if (not on_gpu or torch.cuda.is_bf16_supported()) else torch.float16
    previous_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 for the fp32 reward head
    try:
        runner = torch.compile(model) if compile_model else model
        fast_step = make_train_step(
            runner,  # type: ignore[arg-type]
            params,
            device,
            pairs=batch,
            amp_dtype=half,
            trim=True,
            fused=on_gpu,
        )
        if compile_model:
            compile_started = time.perf_counter()
            fast_step()
            print(f"face_score_train  compiled in {time.perf_counter() - compile_started:.0f} s")
        fast = timed(fast_step, device, seconds=seconds, min_iters=min_iters)
    finally:
        torch.set_float32_matmul_precision(previous_precision)
    memory = f"; peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if on_gpu else ""
    name = str(half).replace("torch.", "")
    print(
        f"face_score_train  {name} {batch:>4} pairs, trimmed tokens, "
        f"{'fused' if on_gpu else 'foreach'} AdamW{' + compile' if compile_model else ''} "
        f"{batch / fast:9.1f} pairs/s   ({base_pairs / base:.1f} → {batch / fast:.1f}, "
        f"{(batch / fast) / (base_pairs / base):.1f}x{memory})",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="pairs; default 128 CUDA, 2 CPU")
    parser.add_argument("--seconds", type=float, default=None, help="default 10 CUDA, 1 CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the optimised path")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    bench_face_score_training(
        device,
        batch=args.batch or (128 if on_gpu else 2),
        seconds=args.seconds if args.seconds is not None else (10.0 if on_gpu else 1.0),
        compile_model=args.compile,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
