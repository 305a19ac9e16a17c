"""AFMTextV7, Apple's on-device foundation model architecture (docs/afm-format.md §1), in plain PyTorch.

Pre-norm blocks with fp32 RMSNorm; GQA attention with interleaved (GPT-J) RoPE applied *before* the
per-head QK RMSNorm; SwiGLU MLP (gate first); tied embedding/output; no biases. The first
`num_layers - num_kv_reuse_layers` blocks (Apple's `segment_0`) are regular; the rest (`segment_1`)
have no K/V projections and attend to the K/V exported by segment_0's last block (after RoPE, QK-norm
and int8 KV fake-quant). Attention is document-masked from segment ids, with positions restarting
per document, so packed rows never see each other.

Internal names are short (`attn.qkv`, `mlp.gate_up`); `fmlab.checkpoints.apple_format` maps them to Apple's keys.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fmlab.model.attention import attend
from fmlab.model.config import ModelConfig
from fmlab.model.kv_cache import KVCache, layout_from_segments
from fmlab.model.lora import Linear, apply_lora, is_lora_name, linear


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 whatever the input dtype, as tamm does, then cast back
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps) * self.weight
        return y.to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float):
    """cos, sin of shape (B, 1, T, head_dim/2) for integer positions (B, T)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions[:, None, :, None].float() * inv_freq  # (B, 1, T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved rotation: dims (2i, 2i+1) form the pair rotated by angle i. x: (B, H, T, hd).
    The reference form; the model uses `rotate`, which computes the same numbers in fewer ops."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, T, hd/2) each
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def rotation_tables(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """`rope_tables` as complex rotations cos + i sin, shaped (B, T, 1, hd/2) for `rotate`."""
    cos, sin = rope_tables(positions, head_dim, theta)  # (B, 1, T, hd/2)
    return torch.complex(cos, sin).transpose(1, 2)


# under torch.compile the complex product below runs as ATen's vectorised kernel; inductor's warning that
# this "may be worse than eager" does not hold here (measured against real-valued forms it generates)
warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")


def rotate(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE on x (B, T, heads, hd) in fp32 as one complex product: pair (x0, x1) is
    x0 + i x1, and (x0 + i x1)(c + i s) = (x0 c - x1 s) + i (x0 s + x1 c), the same products and sums as
    `apply_rope` (bit for bit), in one kernel instead of a dozen."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, T, heads, hd/2)
    return torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    """Identity gradient for the rounding, clipped values included: tamm's `FakeQuantize.backward`
    passes every gradient through (ATen's fake-quant op zeroes it where the int8 range clips)."""

    @staticmethod
    def forward(ctx, x, quantised):
        return quantised

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quant_int8(x: torch.Tensor, value_range: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 fake-quantisation with a frozen [min, max] range (zero point 0), as tamm computes it:
    in fp32, scale = range times the fp32 reciprocals of -128 and 127 (`range[1] / 127` can be one ulp
    off), then `round(x / scale)` (a multiply by 1/scale rounds differently near .5 steps), clamp to
    [-128, 127], times scale. Plain ops, which inductor fuses; the gradient is the identity."""
    with torch.no_grad():
        scale = torch.maximum(value_range[0] * (1.0 / -128.0), value_range[1] * (1.0 / 127.0))
        quantised = (x.float() / scale).round_().clamp_(-128, 127).mul_(scale).to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        return _StraightThrough.apply(x, quantised)
    return quantised


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, reuse_kv: bool, index: int = 0):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.reuse_kv, self.index, self.eps = reuse_kv, index, cfg.norm_eps
        q_dim, kv_dim = self.n_heads * self.hd, self.n_kv * self.hd
        if reuse_kv:
            self.q = Linear(cfg.hidden_dim, {"q": q_dim})
        else:
            self.qkv = Linear(cfg.hidden_dim, {"q": q_dim, "k": kv_dim, "v": kv_dim})
            self.k_norm = RMSNorm(self.hd, cfg.norm_eps)
        self.q_norm = RMSNorm(self.hd, cfg.norm_eps)
        self.out = Linear(q_dim, {"o": cfg.hidden_dim})
        self.kv_quant = cfg.kv_quant and not reuse_kv
        self._kv_quant_key, self._kv_quant_on = None, False
        if self.kv_quant:
            # frozen observer state as in Apple's checkpoints; all zeros = not calibrated = identity
            for name in ("k", "v"):
                self.register_buffer(f"{name}_range", torch.zeros(2))
                self.register_buffer(f"{name}_samples", torch.zeros((), dtype=torch.int64))

    def kv_quant_active(self) -> bool:
        """Calibrated (non-zero) ranges switch the quantiser on. The answer is kept until a range tensor
        is replaced or written in place (its version counter moves), so decoding pays no host sync."""
        if not self.kv_quant:
            return False
        r = (self.k_range, self.v_range)
        key = None if any(t.is_inference() for t in r) else tuple((t.data_ptr(), t._version) for t in r)
        if key is None or key != self._kv_quant_key:
            self._kv_quant_key, self._kv_quant_on = key, bool(self.k_range.any() or self.v_range.any())
        return self._kv_quant_on

    def quantise_kv(self, k, v):
        if torch.compiler.is_compiling():
            # branch-free under torch.compile: no host sync and no graph break (ranges are buffers)
            on = self.k_range.any() | self.v_range.any()
            return (
                torch.where(on, fake_quant_int8(k, self.k_range), k),
                torch.where(on, fake_quant_int8(v, self.v_range), v),
            )
        if self.kv_quant_active():
            return fake_quant_int8(k, self.k_range), fake_quant_int8(v, self.v_range)
        return k, v

    def qk_norm(self, qk: torch.Tensor) -> torch.Tensor:
        """q_norm on the first n_heads heads and k_norm on the rest of qk (B, T, H + KV, hd), in one
        pass: the same per-head RMSNorm with the two weights side by side."""
        w = torch.cat([self.q_norm.weight.expand(self.n_heads, -1), self.k_norm.weight.expand(self.n_kv, -1)])
        return (F.rms_norm(qk.float(), (self.hd,), eps=self.eps) * w).to(qk.dtype)

    def forward(self, x, rope, mask, kv=None, cache: KVCache | None = None, slots=None):
        B, T, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv, self.hd
        if self.reuse_kv:
            q = self.q_norm(rotate(self.q(x).view(B, T, H, hd), rope)).transpose(1, 2)  # (B, H, T, hd)
            k, v = kv
        else:
            qk, v = self.qkv(x).split([(H + KV) * hd, KV * hd], -1)
            qk = self.qk_norm(rotate(qk.view(B, T, H + KV, hd), rope))  # RoPE before QK-norm, as in AFM
            q, k = qk.transpose(1, 2).split([H, KV], 1)  # (B, H, T, hd), (B, KV, T, hd)
            v = v.view(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
            if self.kv_quant:
                k, v = self.quantise_kv(k, v)
            if cache is not None:
                k, v = cache.store(self.index, slots, k, v)
        y = attend(q, k.to(q.dtype), v.to(q.dtype), mask)
        return self.out(y.transpose(1, 2).reshape(B, T, -1)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = Linear(cfg.hidden_dim, {"gate": cfg.ffn_dim, "up": cfg.ffn_dim})
        self.down = Linear(cfg.ffn_dim, {"down": cfg.hidden_dim})

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, reuse_kv: bool, index: int = 0):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_dim, cfg.norm_eps)
        self.attn = Attention(cfg, reuse_kv, index)
        self.mlp_norm = RMSNorm(cfg.hidden_dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, mask, kv=None, cache=None, slots=None):
        h, kv = self.attn(self.attn_norm(x), rope, mask, kv, cache, slots)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), kv


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_dim, padding_idx=0)
        n0 = cfg.num_regular_layers
        self.layers = nn.ModuleList(Block(cfg, reuse_kv=i >= n0, index=i) for i in range(cfg.num_layers))
        self.output_norm = RMSNorm(cfg.hidden_dim, cfg.norm_eps)
        self.checkpoint_every = 0  # activation checkpointing on every n-th block; 0 = off
        if self.embedding.weight.device.type != "meta":
            self.apply(self._init_weights)
        if cfg.lora is not None:
            apply_lora(self, cfg.lora)
        self._build_rope()

    def _build_rope(self):
        """The RoPE rotations (complex64) of every position of the context, on the weights' device: a
        lookup costs less than the trigonometry, and under torch.compile a table computed inside the
        graph is recomputed, unvectorised, in every kernel that reads it (forward and backward)."""
        device = self.embedding.weight.device
        self._rope = None
        if device.type != "meta":
            with torch.inference_mode(False), torch.no_grad():
                positions = torch.arange(self.config.context_length, device=device)[None]
                self._rope = rotation_tables(positions, self.config.head_dim, self.config.rope_theta)[0, :, 0]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # .to(device / dtype): rebuild the tables there, still fp32
        self._build_rope()
        return self

    def rope(self, positions: torch.Tensor, limit: int):
        """`rotation_tables(positions)`, looked up; `limit` bounds the positions (T, or the cache length)."""
        table = self._rope  # (ctx, hd/2)
        if table is None or limit > table.shape[0] or table.device != positions.device:
            return rotation_tables(positions, self.config.head_dim, self.config.rope_theta)
        return table[positions].unsqueeze(2)  # (B, T, 1, hd/2)

    def _init_weights(self, module):
        # GPT-2 style: N(0, 0.02), residual output projections scaled down by depth
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02
            if isinstance(module, Linear) and set(module.parts) & {"o", "down"}:
                std /= (2 * self.config.num_layers) ** 0.5
            nn.init.normal_(module.weight, 0.0, std)

    def forward(
        self,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab), or the final normed hidden states (B, T, C) with `return_hidden`.

        `segment_ids` (B, T): documents in a row (0 = padding); positions restart per document and
        attention stays inside it. None means one document per row. With `cache`, the tokens are
        appended to the cache (prefill, decode, or a speculative block).
        """
        B, T = input_ids.shape
        if cache is None:
            positions, mask = layout_from_segments(segment_ids, B, T, input_ids.device)
            return self.step(input_ids, self.rope(positions, T), mask, return_hidden=return_hidden)
        positions, mask, slots = cache.advance(segment_ids, T)
        return self.step(input_ids, self.rope(positions, cache.max_len), mask, cache, slots, return_hidden)

    def step(
        self, input_ids, rope, mask, cache: KVCache | None = None, slots=None, return_hidden: bool = False
    ) -> torch.Tensor:
        """The forward pass over a given layout (what `forward` computes from segment ids or the cache):
        `rope` from `self.rope`, `mask` and `slots` from the cache. Everything here is tensor work, so
        generation can `torch.compile` it for the decode step."""
        # the residual stream keeps the norms' dtype (fp32 unless the whole model is bf16), even when
        # the frozen embedding is stored in bf16
        x = self.embedding(input_ids).to(self.output_norm.weight.dtype)  # (B, T, C)
        kv = None
        for i, block in enumerate(self.layers):
            if self.checkpoint_every and self.training and cache is None and i % self.checkpoint_every == 0:
                x, kv = checkpoint(block, x, rope, mask, kv, use_reentrant=False)
            else:
                x, kv = block(x, rope, mask, kv, cache, slots)
        h = self.output_norm(x)
        return h if return_hidden else self.logits(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.embedding.weight)  # tied output layer

    def new_cache(self, batch_size: int, max_len: int, dtype=None) -> KVCache:
        w = self.embedding.weight
        return KVCache(self.config, batch_size, max_len, w.device, dtype or w.dtype)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = None) -> Transformer:
    """A model with fresh weights (on `device`; "meta" allocates nothing)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        return Transformer(cfg)


def count_parameters(model: Transformer) -> dict[str, int]:
    """Parameters per component: embedding, segment_0, segment_1 (base weights only), and LoRA."""
    n0 = model.config.num_regular_layers
    counts = {"embedding": 0, "segment_0": 0, "segment_1": 0, "output_norm": 0, "lora": 0}
    for name, p in model.named_parameters():
        if is_lora_name(name):
            counts["lora"] += p.numel()
        elif name.startswith("layers."):
            counts["segment_0" if int(name.split(".")[1]) < n0 else "segment_1"] += p.numel()
        else:
            counts[name.split(".")[0]] += p.numel()
    counts["base_total"] = sum(v for k, v in counts.items() if k != "lora")
    return counts


def unwrap(model):
    """The plain fmlab model inside torch.compile and DDP wrappers."""
    while hasattr(model, "_orig_mod") or hasattr(model, "module"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model
