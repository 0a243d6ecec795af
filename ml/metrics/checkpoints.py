"""Reading official checkpoints and loading them strictly, with errors a person can act on."""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ml.metrics.base import CheckpointMismatch

logger = logging.getLogger(__name__)

_KEYS_SHOWN = 5


def read_state_dict(path: Path, *, subkey: str | None = None) -> dict[str, torch.Tensor]:
    """`torch.load` with `weights_only=True` on the CPU; a damaged file gets a clear message.

    `subkey` picks a nested state dict (HPS checkpoints hold `{"state_dict": ...}`).
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CheckpointMismatch(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: "
            f"{_first_line(str(exc))})"
        ) from exc
    if subkey is not None:
        if not isinstance(loaded, Mapping) or subkey not in loaded:
            found = sorted(loaded)[:_KEYS_SHOWN] if isinstance(loaded, Mapping) else type(loaded)
            raise CheckpointMismatch(f"checkpoint {path} has no {subkey!r} entry (found {found})")
        loaded = loaded[subkey]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise CheckpointMismatch(f"checkpoint {path} is not a state dict of tensors")
    return dict(loaded)


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: Path | str,
    assign: bool = False,
) -> None:
    """`load_state_dict(strict=True)`, with a short message naming missing/unexpected/bad keys.

    `assign=True` takes the checkpoint's tensors as they are, for modules built on the meta device.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    bad_shapes = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    problems = []
    if missing:
        problems.append(_listing("missing key", missing))
    if unexpected:
        problems.append(_listing("unexpected key", unexpected))
    if bad_shapes:
        problems.append(_listing("shape mismatch", bad_shapes))
    if problems:
        raise CheckpointMismatch(
            f"checkpoint {source} does not match {type(module).__name__}: " + "; ".join(problems)
        )
    module.load_state_dict(state_dict, strict=True, assign=assign)
    logger.debug("loaded %d tensors from %s", len(state_dict), source)


def _listing(what: str, items: list[str]) -> str:
    shown = ", ".join(items[:_KEYS_SHOWN])
    more = f" (+{len(items) - _KEYS_SHOWN} more)" if len(items) > _KEYS_SHOWN else ""
    plural = "s" if len(items) != 1 else ""
    return f"{len(items)} {what}{plural}: {shown}{more}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""
