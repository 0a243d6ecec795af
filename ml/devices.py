"""Device and dtype policy shared by every model in `ml`.

One rule everywhere: weights stay float32 (so one loaded model serves training and scoring and
checkpoints round-trip exactly); the forward pass runs under autocast in bf16 on GPUs that support
it, fp16 on older GPUs, and plain fp32 on the CPU, where half precision is slow and inexact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` means the CPU: a caller that wants a GPU says so (workers pin one per process)."""
    resolved = torch.device(device or "cpu")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {resolved} was asked for but CUDA is not available here")
    return resolved


def resolve_dtype(
    device: torch.device,
    dtype: str | torch.dtype | None,
    *,
    cuda_default: torch.dtype = torch.bfloat16,
) -> torch.dtype:
    """The compute dtype: an explicit choice wins; otherwise fp32 on the CPU and `cuda_default`
    on CUDA (metrics whose upstream inference ran in fp16 ask for fp16), with bf16 falling back
    to fp16 on GPUs without bf16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        try:
            return _DTYPE_NAMES[dtype.lower()]
        except KeyError:
            raise ValueError(
                f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_NAMES)}"
            ) from None
    if device.type == "cuda":
        if cuda_default == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return torch.float16
        return cuda_default
    return torch.float32


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast to `dtype` when it is a half type, a no-op for fp32 (the exact CPU path)."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
