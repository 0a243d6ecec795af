"""open_clip towers for the CLIP-based metrics (HPS v2, the LAION aesthetic predictor).

The architecture comes from open_clip's built-in config (`ViT-H-14`, `ViT-L-14`) unless a config
file sits next to the weights, in the format open_clip itself writes to Hugging Face hub repos
(`open_clip_config.json`, `{"model_cfg": {...}}`); that is how tiny test models describe
themselves. Weights are loaded by us, strictly, never through open_clip's `pretrained=` (which
downloads). Accepted weight files: a state dict with open_clip key names (torch or safetensors),
or OpenAI's original TorchScript archive (`ViT-L-14.pt`, what `clip.load` fetches), whose state
dict is open_clip's plus three metadata entries.
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ml.metrics.base import CheckpointMismatch
from ml.metrics.checkpoints import load_strict, read_state_dict

logger = logging.getLogger(__name__)

# Non-tensor facts OpenAI stored as tensors in its TorchScript CLIP archives.
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def model_config(arch: str, config_file: Path, *, quick_gelu: bool) -> dict[str, Any]:
    """The open_clip model config: `config_file` when present, else open_clip's built-in one."""
    import open_clip

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


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_weights(path: Path, *, subkey: str | None = None) -> dict[str, torch.Tensor]:
    if _is_torchscript(path):
        # OpenAI's archives are TorchScript, which torch.load refuses with weights_only=True.
        # torch.jit.load runs TorchScript, not pickled Python; only the tensors are kept.
        try:
            with warnings.catch_warnings():
                # torch deprecates TorchScript; OpenAI's weights exist only in that format.
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise CheckpointMismatch(f"checkpoint {path} is truncated or corrupt ({exc})") from exc
        state = {key: value.detach().clone() for key, value in scripted.state_dict().items()}
        for key in _OPENAI_METADATA_KEYS:
            state.pop(key, None)
        return state
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointMismatch(f"checkpoint {path} is truncated or corrupt ({exc})") from exc
    return read_state_dict(path, subkey=subkey)


def load_clip(
    arch: str, config_file: Path, weights: Path, *, quick_gelu: bool, subkey: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """A loaded, eval-mode open_clip CLIP (fp32, CPU) and its config."""
    config = model_config(arch, config_file, quick_gelu=quick_gelu)
    model = build_clip(config)
    state_dict = read_weights(weights, subkey=subkey)
    load_strict(model, state_dict, source=weights)
    return model.eval(), config


def tokenizer_for(config: dict[str, Any]):
    """open_clip's BPE tokenizer (its vocabulary ships inside the wheel: no download)."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=config["text_cfg"].get("context_length", 77))
