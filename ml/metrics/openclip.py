"""open_clip towers for the CLIP-based metrics (HPS v2, the LAION aesthetic predictor).

The architecture comes from open_clip's built-in config (`ViT-H-14`, `ViT-L-14`) unless an
`open_clip_config.json` sits next to the weights: the file open_clip itself writes to Hugging Face
hub repos (`{"model_cfg": {...}}`), which is also how tiny test models describe themselves.
Weights are loaded by us, strictly, never through open_clip's `pretrained=` (which downloads).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ml.metrics.base import CheckpointMismatch
from ml.metrics.checkpoints import load_strict, read_state_dict

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "open_clip_config.json"


def model_config(arch: str, folder: Path, *, quick_gelu: bool) -> dict[str, Any]:
    """The open_clip model config: `folder/open_clip_config.json` when present, else built-in."""
    import open_clip

    config_file = folder / CONFIG_FILENAME
    if config_file.is_file():
        raw = json.loads(config_file.read_text())
        config = dict(raw.get("model_cfg", raw))
        logger.info("open_clip architecture from %s instead of built-in %s", config_file, arch)
    else:
        built_in = open_clip.get_model_config(arch)
        if built_in is None:
            raise ValueError(f"open_clip has no built-in config {arch!r}")
        config = dict(built_in)
    # OpenAI's CLIP weights were trained with QuickGELU, LAION's (HPS's base) with GELU; the
    # built-in configs leave it to `pretrained=`, which we never use, so the metric says which.
    config.setdefault("quick_gelu", quick_gelu)
    if config.get("custom_text") or "hf_model_name" in config.get("text_cfg", {}):
        raise ValueError(f"{arch}: only plain open_clip CLIP towers are supported")
    return config


def build_clip(config: dict[str, Any]):  # -> open_clip.CLIP
    import open_clip

    return open_clip.CLIP(**config)


def read_weights(path: Path, *, subkey: str | None = None) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointMismatch(f"checkpoint {path} is truncated or corrupt ({exc})") from exc
    return read_state_dict(path, subkey=subkey)


def load_clip(
    arch: str, folder: Path, weights: Path, *, quick_gelu: bool, subkey: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """A loaded, eval-mode open_clip CLIP (fp32, CPU) and its config."""
    config = model_config(arch, folder, quick_gelu=quick_gelu)
    model = build_clip(config)
    state_dict = read_weights(weights, subkey=subkey)
    load_strict(model, state_dict, source=weights)
    return model.eval(), config


def tokenizer_for(config: dict[str, Any]):
    """open_clip's BPE tokenizer (its vocabulary ships inside the wheel: no download)."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=config["text_cfg"].get("context_length", 77))
