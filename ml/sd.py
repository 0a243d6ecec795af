"""Loading Stable Diffusion pipelines (SD 1.5 family, SD 2.x, SDXL) from local files only.

    pipeline = load_pipeline("/weights/realistic-vision-5.1", task="inpaint", device="cuda")

A model is either a diffusers folder (``model_index.json``, ``unet/``, ``vae/``, …) or one
original-layout checkpoint file (``.safetensors`` / ``.ckpt``, as Civitai and the original
repositories publish them). A single file carries weights but no configs, and nothing may be
downloaded, so it needs ``config=``: a local diffusers folder of the same architecture whose
configs (and tokenizer, scheduler) are used around the file's weights.

The pipeline class follows from the model and the task: SDXL when the UNet is conditioned on
2048-wide text embeddings with ``text_time`` added embeddings, the SD 1.5 classes otherwise;
``inpaint`` needs a 9-channel (image + mask + masked-image latents) UNet and ``text2img`` a
4-channel one. Every refusal is a :class:`ModelUnavailable` whose message says what is wrong
and what to do, so a job can show it to the admin who launched it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from ml.devices import resolve_device, resolve_dtype
from ml.weights import default_weights_dir, sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_ADAPTER_NAME",
    "SINGLE_FILE_SUFFIXES",
    "ModelUnavailable",
    "Task",
    "describe_model",
    "inspect_model",
    "load_pipeline",
]

Task = Literal["text2img", "inpaint"]
Architecture = Literal["sd15", "sd2", "sdxl"]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
# UNet input channels: noisy latents (4), or noisy latents + mask (1) + masked-image latents (4).
_CHANNELS = {"text2img": 4, "inpaint": 9}
# The first UNet convolution in the original (LDM / SGM) key layout; its input width says
# whether a single-file checkpoint is an inpainting model.
_LDM_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
_LDM_SDXL_MARKER = "conditioner.embedders.1.model.ln_final.weight"
LORA_ADAPTER_NAME = "lora"


class ModelUnavailable(RuntimeError):
    """The model cannot be used as asked; the message says why and what would fix it."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelUnavailable(f"{path} is not a readable JSON config: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelUnavailable(f"{path} is not a JSON object")
    return data


def _architecture(model_index: dict[str, Any], unet_config: dict[str, Any]) -> Architecture:
    # SDXL's UNet takes 2048-wide text embeddings (two CLIP encoders concatenated) plus the
    # "text_time" added embeddings (pooled text + size/crop conditioning).
    if (
        unet_config.get("addition_embed_type") == "text_time"
        or unet_config.get("cross_attention_dim") == 2048
        or "text_encoder_2" in model_index
    ):
        return "sdxl"
    if unet_config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd15"


def _diffusers_folder_info(folder: Path) -> dict[str, Any]:
    """Architecture, UNet input channels and prediction type of a diffusers folder."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelUnavailable(
            f"{folder} is not a diffusers model folder: it has no model_index.json "
            "(a single .safetensors/.ckpt checkpoint should be given as the file itself)"
        )
    model_index = _read_json(index_path)
    unet_config_path = folder / "unet" / "config.json"
    if not unet_config_path.is_file():
        raise ModelUnavailable(
            f"{folder} has no unet/config.json: only Stable Diffusion (UNet) pipelines are supported"
        )
    unet_config = _read_json(unet_config_path)
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(scheduler_path) if scheduler_path.is_file() else {}
    return dict(
        architecture=_architecture(model_index, unet_config),
        in_channels=int(unet_config.get("in_channels", 4)),
        prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        pipeline_class=model_index.get("_class_name"),
    )


def _single_file_keys_and_shape(path: Path) -> tuple[set[str], int | None]:
    """Key names and UNet input channels of an original-layout checkpoint, reading only the
    safetensors header (a .ckpt has to be unpickled, memory-mapped)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                keys = set(handle.keys())
                channels = (
                    int(handle.get_slice(_LDM_CONV_IN).get_shape()[1])
                    if _LDM_CONV_IN in keys
                    else None
                )
            return keys, channels
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # files saved before torch 1.6's zip format cannot be memory-mapped
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise many kinds for a damaged file
        hint = (
            "; a .ckpt that pickles more than tensors is refused (nothing is unpickled "
            "unsafely): convert it to .safetensors"
            if path.suffix == ".ckpt"
            else ""
        )
        raise ModelUnavailable(
            f"{path} is not a readable {path.suffix} checkpoint (corrupt, truncated or another "
            f"format): {type(exc).__name__}: {exc}{hint}"
        ) from exc
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ModelUnavailable(f"{path} does not hold a state dict")
    conv_in = checkpoint.get(_LDM_CONV_IN)
    return set(checkpoint), (int(conv_in.shape[1]) if conv_in is not None else None)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ModelUnavailable(f"model path {path} does not exist")
    if path.is_file() and path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ModelUnavailable(
            f"{path} is neither a diffusers folder nor a {'/'.join(SINGLE_FILE_SUFFIXES)} checkpoint"
        )


def inspect_model(
    path: str | os.PathLike[str], *, config: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Kind, architecture, UNet input channels and prediction type, from configs and headers.

    For a single file the architecture and channels come from the file's own keys; the
    prediction type (not stored in original checkpoints) from ``config`` when given, else None.
    """
    path = Path(path)
    _check_path(path)
    if path.is_dir():
        return dict(kind="folder", **_diffusers_folder_info(path))
    keys, channels = _single_file_keys_and_shape(path)
    if channels is None:
        raise ModelUnavailable(
            f"{path} is not a Stable Diffusion checkpoint in the original layout "
            f"(no {_LDM_CONV_IN}); a diffusers-layout model should be given as its folder"
        )
    config_info = _diffusers_folder_info(Path(config)) if config is not None else None
    if _LDM_SDXL_MARKER in keys:
        architecture: Architecture = "sdxl"
    elif config_info is not None:
        architecture = config_info["architecture"]
    else:
        architecture = "sd15"
    return dict(
        kind="single_file",
        architecture=architecture,
        in_channels=channels,
        prediction_type=config_info["prediction_type"] if config_info else None,
        pipeline_class=None,
    )


def _pipeline_class(architecture: Architecture, task: Task) -> Any:
    from diffusers import (
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    if architecture == "sdxl":
        return StableDiffusionXLInpaintPipeline if task == "inpaint" else StableDiffusionXLPipeline
    return StableDiffusionInpaintPipeline if task == "inpaint" else StableDiffusionPipeline


def _check_task(path: Path, task: Task, in_channels: int) -> None:
    if task not in _CHANNELS:
        raise ValueError(f"task must be one of {sorted(_CHANNELS)}, not {task!r}")
    if in_channels == _CHANNELS[task]:
        return
    if task == "inpaint" and in_channels == 4:
        raise ModelUnavailable(
            f"{path} is a text-to-image model (its UNet takes 4 input channels); inpainting needs "
            "an inpainting model whose UNet takes 9 (latents + mask + masked image). Use this model "
            "for generation (text2img) only."
        )
    if task == "text2img" and in_channels == 9:
        raise ModelUnavailable(
            f"{path} is an inpainting model (its UNet takes 9 input channels); text-to-image "
            "generation needs a 4-channel UNet. Use this model for pair crafting (inpaint) only."
        )
    raise ModelUnavailable(
        f"{path} has a UNet with {in_channels} input channels; {task} needs {_CHANNELS[task]}"
    )


def _variant(folder: Path) -> str | None:
    """``"fp16"`` when the UNet folder only has ``*.fp16.*`` weight files (a common download)."""
    names = [p.name for p in (folder / "unet").glob("*") if p.suffix in _WEIGHT_SUFFIXES]
    if names and all(".fp16." in name for name in names):
        return "fp16"
    return None


def _lora_file(lora: Path) -> Path:
    if lora.is_file():
        if lora.suffix not in (".safetensors", ".bin"):
            raise ModelUnavailable(f"LoRA {lora} is not a .safetensors (or .bin) file")
        return lora
    if lora.is_dir():
        preferred = lora / "pytorch_lora_weights.safetensors"
        if preferred.is_file():
            return preferred
        candidates = sorted(lora.glob("*.safetensors"))
        if len(candidates) == 1:
            return candidates[0]
        raise ModelUnavailable(
            f"LoRA folder {lora} must hold pytorch_lora_weights.safetensors or exactly one "
            f".safetensors file; found {[p.name for p in candidates]}"
        )
    raise ModelUnavailable(f"LoRA path {lora} does not exist")


def _from_files(
    pipeline_class: Any,
    path: Path,
    info: dict[str, Any],
    torch_dtype: torch.dtype,
    config: str | os.PathLike[str] | None,
    extra: dict[str, Any],
) -> Any:
    if path.is_dir():
        return pipeline_class.from_pretrained(
            str(path),
            local_files_only=True,
            torch_dtype=torch_dtype,
            variant=_variant(path),
            **extra,
        )
    assert config is not None
    config_info = _diffusers_folder_info(Path(config))
    if config_info["in_channels"] != info["in_channels"]:
        raise ModelUnavailable(
            f"config folder {config} has a {config_info['in_channels']}-channel UNet but "
            f"{path} a {info['in_channels']}-channel one; give the config of a matching "
            f"{'inpainting' if info['in_channels'] == 9 else 'text-to-image'} model"
        )
    if config_info["architecture"] != info["architecture"]:
        raise ModelUnavailable(
            f"config folder {config} is {config_info['architecture']} but {path} is "
            f"{info['architecture']}"
        )
    return pipeline_class.from_single_file(
        str(path),
        config=str(config),
        local_files_only=True,
        torch_dtype=torch_dtype,
        **extra,
    )


def load_pipeline(
    path: str | os.PathLike[str],
    *,
    task: Task,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None = None,
    lora: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> Any:
    """A ready diffusers pipeline on ``device``, from local files only.

    ``dtype`` defaults to bf16 on CUDA (fp16 on GPUs without bf16) and fp32 on the CPU; the
    weights are loaded in it. The safety checker is off (our inputs are faces we must see, and
    a blacked-out image would be silently scored) and so are progress bars (jobs log their own).
    """
    path = Path(path)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype)
    _check_path(path)
    if path.is_file() and config is None:
        raise ModelUnavailable(
            f"{path} is a single checkpoint file without configs; give config= a local diffusers "
            "folder of the same architecture (e.g. the base SD 1.5 / SDXL folder), since nothing "
            "is downloaded"
        )
    info = inspect_model(path, config=config)
    _check_task(path, task, info["in_channels"])
    pipeline_class = _pipeline_class(info["architecture"], task)
    if info["architecture"] == "sdxl":
        # SDXL has no safety checker; its invisible watermark (when the package is installed)
        # would change the pixels we score
        extra: dict[str, Any] = {"add_watermarker": False}
    else:
        extra = {
            "safety_checker": None,
            "requires_safety_checker": False,
            "feature_extractor": None,
        }

    try:
        with warnings.catch_warnings():
            # `torch_dtype` (deprecated in favour of `dtype` in recent diffusers) is the keyword
            # every diffusers version we support understands
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipeline = _from_files(pipeline_class, path, info, torch_dtype, config, extra)
    except ModelUnavailable:
        raise
    except Exception as exc:  # diffusers/transformers/safetensors raise OSError, ValueError, …
        raise ModelUnavailable(
            f"cannot load {path} as a {info['architecture']} {task} pipeline: "
            f"{type(exc).__name__}: {exc}"
        ) from exc

    if lora is not None:
        lora_file = _lora_file(Path(lora))
        try:
            pipeline.load_lora_weights(
                str(lora_file.parent),
                weight_name=lora_file.name,
                adapter_name=LORA_ADAPTER_NAME,
                local_files_only=True,
            )
        except Exception as exc:
            raise ModelUnavailable(
                f"cannot apply LoRA {lora_file} to {path}: {type(exc).__name__}: {exc}"
            ) from exc
        # diffusers only warns when no key of the file fits the pipeline: without this check a
        # wrong file would silently give the base model's images
        if not any(pipeline.get_list_adapters().values()):
            raise ModelUnavailable(
                f"cannot apply LoRA {lora_file} to {path}: none of its keys are LoRA weights of "
                "this model's UNet or text encoder"
            )

    vae = getattr(pipeline, "vae", None)
    if torch_dtype == torch.bfloat16 and vae is not None and vae.config.get("force_upcast"):
        # force_upcast guards the SDXL VAE against fp16 overflow; bf16 has fp32's range, and
        # the upcast would re-cast the VAE on every call
        vae.register_to_config(force_upcast=False)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(torch_device)
    logger.info(
        "loaded %s (%s, %s) as %s on %s in %s%s",
        path,
        info["kind"],
        info["architecture"],
        pipeline_class.__name__,
        torch_device,
        torch_dtype,
        f" with LoRA {lora}" if lora else "",
    )
    return pipeline


def _weight_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and not p.name.startswith(".")
    )


def describe_model(
    path: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    lora: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Provenance of a model: JSON-safe, stable across machines for the same bytes.

    ``sha256`` identifies the weights: the file's own digest for a single file; for a folder, the
    sha256 of the sorted ``"<relative path> <digest>"`` lines of its weight files (listed under
    ``files``). Digests are cached by (path, size, mtime), persistently in the weights dir.
    """
    path = Path(path)
    info = inspect_model(path, config=config)
    cache_dir = default_weights_dir()
    if path.is_dir():
        files = {
            p.relative_to(path).as_posix(): sha256_file(p, cache_dir=cache_dir)
            for p in _weight_files(path)
        }
        listing = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
        digest = hashlib.sha256(listing.encode()).hexdigest()
    else:
        digest = sha256_file(path, cache_dir=cache_dir)
        files = {path.name: digest}
    description: dict[str, Any] = {
        "path": str(path),
        "kind": info["kind"],
        "sha256": digest,
        "files": files,
        "architecture": info["architecture"],
        "task": "inpaint" if info["in_channels"] == 9 else "text2img",
        "in_channels": info["in_channels"],
        "prediction_type": info["prediction_type"],
    }
    if config is not None:
        description["config"] = str(config)
    if lora is not None:
        lora_file = _lora_file(Path(lora))
        description["lora"] = {
            "path": str(lora_file),
            "sha256": sha256_file(lora_file, cache_dir=cache_dir),
        }
    return description


# --- settings dataclasses shared by pairs.py and generate.py ---------------------------------


def settings_from_dict(cls: type[Any], data: Any, *, prefix: str = "") -> Any:
    """An instance of the settings dataclass ``cls`` from JSON-like ``data``.

    Unknown keys, wrong types and out-of-range values (checked by the class's ``__post_init__``)
    raise ValueError naming the field (``mask.margin`` for nested settings), so a form or the API
    can show the message as is. Missing keys take their defaults.
    """
    import dataclasses
    import typing

    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or cls.__name__} must be an object, not {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown setting {prefix}{unknown[0]}; known: {', '.join(sorted(fields))}"
        )
    missing = [
        name
        for name, field in fields.items()
        if name not in data
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{prefix}{missing[0]} is required")
    values: dict[str, Any] = {}
    for name, value in data.items():
        values[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**values)
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if prefix == "" else f"{prefix}{message}") from None


def _coerce(hint: Any, value: Any, field: str) -> Any:
    import dataclasses
    import typing

    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return settings_from_dict(hint, value, prefix=f"{field}.")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ValueError(
                f"{field} must be one of {', '.join(map(repr, choices))}, not {value!r}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{field} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{field} must be a whole number, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValueError(f"{field} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{field} must be text, not {value!r}")
        return value
    return value


def settings_to_dict(settings: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(settings)
