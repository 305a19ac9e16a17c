"""LoRA (Hu et al. 2021) as a module swap: `apply_lora` replaces each targeted projection with a
`LoRALinear` that keeps the base weight under its own key and adds `scale * (x @ A) @ B`.

A projection may be *fused* (QKV, gate/up): its output is a concatenation of named parts and each
adapted part gets its own A [in, r] and B [r, out_part], as Apple's toolkit does (`lora_0/1/2`).
The parts share one matmul with the concatenated A's. Inference then takes one matmul with a
block-diagonal B (fewer kernels for a few rows); training takes each part's own B, so that neither the
forward nor the backward multiplies the zero blocks.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from fmlab.model.config import LoRAConfig

SHORT_ROWS = 16  # at most this many rows (tokens) per call count as decoding


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear, except for a few rows under torch.compile on CPU (decoding, speculative blocks): there
    one multiply-and-sum per row of x. Inductor fuses the row sums into one kernel that loads each weight
    row once, at memory speed, and reduces it against every row of x; decoding a small model is bound by
    weight reads, and the BLAS calls read the weights several times slower. A single (rows, out, in)
    product would instead be reduced row after row, reading the weights once per row (a 6-token
    speculative check cost 2.1 one-token steps that way, 1.5 this way with `_stored`). Same products,
    summed in fp32."""
    if _decoding(x):
        rows = _stored(x).reshape(-1, x.shape[-1]).unbind(0)
        out = torch.stack([(row * weight).sum(-1) for row in rows])  # each (in,) * (out, in) → (out,)
        return out.reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w for w (in, out), decoding as in `linear`: summed over `in`, vectorised along `out`."""
    if _decoding(x):
        return (_stored(x).unsqueeze(-1) * w).sum(-2)  # (..., in, 1) * (in, out) → (..., out)
    return x @ w


def _stored(x: torch.Tensor) -> torch.Tensor:
    """x written to memory before a reduction reads it. Inductor would otherwise inline the ops that
    made x (an RMSNorm: a square root per element) into the reduction, and redo them for every weight row.
    The op is inductor's own prim (a copy only where the strides differ, so a no-op outside inductor)."""
    if x.requires_grad:  # the op has no backward; training steps are not bound by weight reads anyway
        return x
    return torch.ops.prims.inductor_force_stride_order(x, x.stride())


def _decoding(x: torch.Tensor) -> bool:
    return (
        torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.shape[:-1].numel() <= SHORT_ROWS
        and not torch.is_autocast_enabled("cpu")
    )


class Linear(nn.Linear):
    """A bias-free linear layer whose output is the concatenation of named `parts` (e.g. q, k, v)."""

    def __init__(self, in_features: int, parts: dict[str, int], device=None, dtype=None):
        super().__init__(in_features, sum(parts.values()), bias=False, device=device, dtype=dtype)
        self.parts = dict(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)


class LoRALinear(nn.Module):
    def __init__(self, base: Linear, config: LoRAConfig):
        super().__init__()
        self.weight = base.weight  # same key as the base layer: `...weight`
        self.parts = base.parts
        self.in_features, self.out_features = base.in_features, base.out_features
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.adapted = [p for p in self.parts if p in config.targets]  # in output order
        kw = dict(device=base.weight.device, dtype=torch.float32)  # LoRA weights are always fp32
        self.lora_a = nn.ParameterDict(
            {p: nn.Parameter(torch.empty(self.in_features, config.rank, **kw)) for p in self.adapted}
        )
        self.lora_b = nn.ParameterDict(
            {p: nn.Parameter(torch.empty(config.rank, self.parts[p], **kw)) for p in self.adapted}
        )
        self.merged = False
        self.reset_lora()

    def reset_lora(self):
        """A ~ Normal(0, sqrt(1/in)), B = 0: a fresh adapter changes nothing."""
        with torch.no_grad():
            for a in self.lora_a.values():
                if a.device.type != "meta":
                    a.normal_(0.0, math.sqrt(1.0 / self.in_features))
            for b in self.lora_b.values():
                b.zero_()

    def delta_weight(self, part: str) -> torch.Tensor:
        """The change LoRA makes to the rows of `part`, shaped like those rows: scale * (A @ B).T."""
        return self.scale * (self.lora_a[part] @ self.lora_b[part]).t()

    def _a(self) -> torch.Tensor:
        """A of all adapted parts side by side [in, n*r]: one matmul gives every part's x @ A."""
        if len(self.adapted) == 1:
            return self.lora_a[self.adapted[0]]
        return torch.cat([self.lora_a[p] for p in self.adapted], dim=1)

    def _build_ab(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`_a()` and a block-diagonal B [n*r, out]: adapted part i reads its own r columns of x @ A;
        unadapted parts get zero columns."""
        a = self._a()
        blocks = [
            self.lora_b[part] if part in self.lora_b else self.lora_b[self.adapted[0]].new_zeros(0, size)
            for part, size in self.parts.items()
        ]
        b = blocks[0] if len(blocks) == 1 else torch.block_diag(*blocks)
        # the scale goes into the small B rather than onto the (tokens, out) result: one pass fewer
        return a, b * self.scale

    def _ab(self) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            # compiled decoding reads the A/B that `frozen_adapters` refreshed; anything else builds them
            # in the graph (dynamo guards on the flag, so the two never share a compiled graph)
            return self._ab_cache[1:] if _FROZEN_ADAPTERS else self._build_ab()
        # inference: reuse the fused A/B until a LoRA tensor changes (decode is overhead-bound)
        key = tuple((t.data_ptr(), t._version) for t in (*self.lora_a.values(), *self.lora_b.values()))
        if getattr(self, "_ab_cache", (None,))[0] != key:
            self._ab_cache = (key, *self._build_ab())
        return self._ab_cache[1], self._ab_cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear(x, self.weight)
        if self.merged or not self.adapted:
            return out
        if torch.is_grad_enabled():
            return out + self._delta_by_part(self.dropout(x))
        a, b = self._ab()  # b carries the scale
        return out + matmul(matmul(self.dropout(x), a), b)

    def _delta_by_part(self, x: torch.Tensor) -> torch.Tensor:
        """scale * (x @ A) @ B part by part, for training: a block-diagonal B would multiply (and
        differentiate) its zero blocks too, 2-3x the work of the B products of a fused projection."""
        h = x @ self._a()
        r = h.shape[-1] // len(self.adapted)
        pieces = []
        for part, size in self.parts.items():
            if part in self.lora_b:
                i = self.adapted.index(part)
                pieces.append(h[..., i * r : (i + 1) * r] @ (self.lora_b[part] * self.scale))
            else:
                pieces.append(h.new_zeros(*h.shape[:-1], size))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, -1)

    def _rows(self):
        start = 0
        for part, size in self.parts.items():
            yield part, slice(start, start + size)
            start += size

    @torch.no_grad()
    def merge(self, sign: float = 1.0):
        for part, rows in self._rows():
            if part in self.lora_a:
                w = self.weight[rows]
                w.copy_((w.float() + sign * self.delta_weight(part)).to(w.dtype))
        self.merged = sign > 0

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.parts}, lora on {list(self.lora_a)}, scale={self.scale}"


_FROZEN_ADAPTERS = False


@contextlib.contextmanager
def frozen_adapters(model: nn.Module):
    """For a generation call: refresh every adapter's fused A/B now (eager) and let compiled decode steps
    take them as inputs instead of rebuilding them at every token. Adapters must not change inside."""
    global _FROZEN_ADAPTERS
    with torch.no_grad():
        for m in lora_modules(model):
            if not m.merged and m.adapted:
                m._ab()
    previous, _FROZEN_ADAPTERS = _FROZEN_ADAPTERS, True
    try:
        yield
    finally:
        _FROZEN_ADAPTERS = previous


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Swap every `Linear` that has a targeted part for a `LoRALinear` (in place); returns `model`."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Linear) and set(child.parts) & set(config.targets):
                setattr(module, child_name, LoRALinear(child, config))
    return model


def lora_modules(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def is_lora_name(name: str) -> bool:
    """Is this parameter name a LoRA tensor (A or B)? The one test, for state dicts and key maps."""
    return ".lora_a." in name or ".lora_b." in name


def is_lora_b(name: str) -> bool:
    """A LoRA B tensor: zero in a fresh adapter, so zeroing all of them gives the base model."""
    return ".lora_b." in name


def mark_only_lora_trainable(model: nn.Module) -> dict[str, int]:
    """Freeze everything but the LoRA tensors; returns trainable / frozen parameter counts."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora_name(name))
    return parameter_split(model)


def parameter_split(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if is_lora_name(k)}


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (for export or faster inference); `unmerge_lora` undoes it."""
    for m in lora_modules(model):
        if not m.merged:
            m.merge(+1.0)


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model):
        if m.merged:
            m.merge(-1.0)


def reset_lora(model: nn.Module, seed: int | None = None) -> None:
    if seed is not None:
        torch.manual_seed(seed)
    for m in lora_modules(model):
        m.reset_lora()


def replace_lora(model: nn.Module, config: LoRAConfig) -> None:
    """Give every adapted projection a fresh adapter with `config` (rank, alpha, targets, dropout)."""
    unmerge_lora(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                plain = Linear(child.in_features, child.parts, device=child.weight.device, dtype=child.weight.dtype)
                plain.weight = child.weight
                setattr(module, child_name, plain)
    apply_lora(model, config)
    model.config.lora = config
