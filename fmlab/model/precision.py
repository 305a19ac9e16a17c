"""Device and precision: where a model runs and in which dtypes its weights, activations and KV cache
live, for training and for generation alike.

`f32` runs everything in fp32. `bf16-mixed` stores the frozen base matrices in bf16 (halving their
memory and sparing autocast a cast of every weight at every step), keeps LoRA weights, norms and
optimizer state in fp32, and runs matmuls under bf16 autocast; generation keeps its KV cache in bf16.
`f16-mixed` is the same with fp16 and a GradScaler; `bf16` casts the whole model.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

PRECISIONS = ("f32", "bf16-mixed", "bf16", "f16-mixed")
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "f16-mixed": torch.float16}


def resolve_device(name: str | None = None) -> torch.device:
    """`name` if given, else the best available: CUDA, then MPS, then CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type in ("cpu", "mps")


def autocast(precision: str, device: torch.device):
    """The autocast context of a mixed precision (a no-op for f32 and bf16), for training and generation."""
    dtype = _AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def cache_dtype(precision: str) -> torch.dtype | None:
    """The KV cache's dtype during generation; None keeps the model's (fp32)."""
    return torch.bfloat16 if precision == "bf16-mixed" else None


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store frozen matrices in `dtype` (bf16 halves memory and skips autocast's per-step weight casts);
    trainable weights, norms and buffers stay fp32."""
    for p in model.parameters():
        if p.ndim == 2 and not p.requires_grad:
            p.data = p.data.to(dtype)


def prepare_precision(model, precision: str):
    """Cast weights for training at `precision`; returns a GradScaler for f16-mixed (Apple's has none)."""
    device = next(model.parameters()).device
    if precision == "bf16-mixed":
        cast_frozen(model, torch.bfloat16)  # frozen matmul weights only; trainable stay fp32
    elif precision == "bf16":
        warnings.warn(
            "--precision bf16 trains bf16 weights, which is reported to degenerate; bf16-mixed is the safe default",
            stacklevel=2,
        )
        model.to(torch.bfloat16)
    elif precision == "f16-mixed":
        if device.type == "cpu":
            warnings.warn("f16 matmuls are very slow on CPU; use bf16-mixed", stacklevel=2)
        return torch.amp.GradScaler(device.type)
    return None
