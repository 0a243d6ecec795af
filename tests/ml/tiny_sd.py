"""Tiny Stable Diffusion pipelines written to disk in the diffusers folder layout, offline.

Built the way diffusers' own pipeline tests build theirs (a two-block UNet and VAE, a five-layer
CLIP text encoder), with a hand-written CLIP BPE vocabulary instead of a download. The folder has
the same files as a real SD 1.5 / Realistic Vision folder (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/), so the real loading code is what the tests exercise.

``write_tiny_sdxl`` writes the SDXL layout (text_encoder_2/, tokenizer_2/, a "text_time" UNet).
Images are 64 px (VAE scale factor 2, UNet sample size 32); every model is random but seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_IMAGE_PX = 64

# A byte-level BPE vocabulary that covers the words our prompts use. Every single character is a
# token (with and without the end-of-word marker), so any ASCII prompt tokenizes without <unk>.
_WORDS = [
    "a", "photo", "of", "face", "person", "portrait", "the", "man", "woman", "smiling",
    "an", "astronaut", "with", "in", "detailed", "close", "up", "landscape", "mountain", "cat",
]


def _clip_vocab() -> tuple[dict[str, int], list[str]]:
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    printable = [chr(c) for c in range(33, 127)]
    tokens += printable + [f"{c}</w>" for c in printable]
    merges: list[str] = []
    for word in _WORDS:
        # merge the word left to right: ("p","h") → "ph", ("ph","o") → "pho", …, last with </w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merged = current + piece
            rule = f"{current} {piece}"
            if rule not in merges:
                merges.append(rule)
            if merged not in tokens:
                tokens.append(merged)
            current = merged
    return {token: index for index, token in enumerate(tokens)}, merges


def write_tokenizer(folder: Path) -> Path:
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # from_pretrained on the folder (not vocab_file=…, which transformers 5 ignores); always 77.
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_components(
    *, inpaint: bool = False, prediction_type: str = "epsilon", seed: int = 0
) -> dict[str, object]:
    """The modules of a tiny SD 1.5-architecture pipeline (tokenizer excluded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = len(_clip_vocab()[0])
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=TINY_IMAGE_PX // 2,
        in_channels=9 if inpaint else 4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=TINY_IMAGE_PX,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=vocab_size,
            max_position_embeddings=77,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def write_tiny_sd(
    folder: Path, *, inpaint: bool = False, prediction_type: str = "epsilon", seed: int = 0
) -> Path:
    """A tiny StableDiffusion(Inpaint)Pipeline folder at ``folder``; returns ``folder``."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(folder / "tokenizer"), model_max_length=77)
    pipeline_class = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipeline = pipeline_class(
        **tiny_components(inpaint=inpaint, prediction_type=prediction_type, seed=seed),
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_sdxl(folder: Path, *, inpaint: bool = False) -> Path:
    """A tiny SDXL pipeline folder (two text encoders, text_time added embeddings), built like
    diffusers' own SDXL pipeline tests build theirs, with the tiny CLIP vocabulary."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=TINY_IMAGE_PX // 2,
        in_channels=9 if inpaint else 4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 size/crop ids × 8 + pooled text 32
        cross_attention_dim=64,  # the two encoders' 32 + 32
        norm_num_groups=32,
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=TINY_IMAGE_PX,
    )
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(_clip_vocab()[0]),
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=32,
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    tokenizer = CLIPTokenizer.from_pretrained(
        write_tokenizer(folder / "tokenizer"), model_max_length=77
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipeline_class = StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline
    pipeline = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
