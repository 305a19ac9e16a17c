"""Attention for the model: which implementation serves which shape, on which device.

SDPA's fused kernels are the default. On CPU two cases do better with plain matmuls: a few queries
against the static KV cache (decoding), and training on causal rows of up to a few hundred tokens, where
the fused kernel's forward and backward run at a fraction of the speed the same work reaches as batched
matrix products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmlab.model.lora import SHORT_ROWS

CHUNK = 64  # queries per chunk: measured fastest of 32..256 for 512-token rows
CHUNKED_MAX_LEN = 512  # measured faster than SDPA at 128..512 tokens, slower at 1024
# the chunked path keeps the probabilities for backward (6 bytes per score: fp32 and bf16), about
# B*H*T^2/2 of them a layer: a bound on that memory
SCORE_BUDGET = 2**26


def chunks_pay_off(batch: int, heads: int, seq_len: int) -> bool:
    """Whether training rows of this shape on CPU attend by `causal_attention_by_chunks`."""
    return SHORT_ROWS < seq_len <= CHUNKED_MAX_LEN and batch * heads * seq_len**2 // 2 <= SCORE_BUDGET


def attend(q, k, v, mask):
    """SDPA with GQA. `mask` None means causal when q and k have equal length, else no mask.

    A few queries against the static cache on CPU (decoding, speculative blocks) attend in fp32: the
    bf16 SDPA kernel is several times slower there for one query. Under torch.compile they take the
    plain softmax(q k^T / sqrt(hd)) v, which inductor fuses with its neighbours. Training on CPU attends
    whole rows of up to 512 tokens a chunk of queries at a time (`causal_attention_by_chunks`)."""
    B, H, T, hd = q.shape
    if mask is not None and T <= SHORT_ROWS and q.device.type == "cpu":
        with torch.autocast("cpu", enabled=False):
            q, k, v, dtype = q.float(), k.float(), v.float(), q.dtype
            if not torch.compiler.is_compiling():
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != k.shape[1]).to(dtype)
            KV, S = k.shape[1], k.shape[2]
            s = (q.reshape(B, KV, H // KV * T, hd) @ k.transpose(-1, -2)).view(B, KV, H // KV, T, S)
            p = (s * hd**-0.5).masked_fill(~mask.unsqueeze(-3), float("-inf")).softmax(-1)
            return (p.view(B, KV, H // KV * T, S) @ v).view(B, H, T, hd).to(dtype)  # heads grouped by KV head
    if q.device.type == "cpu" and torch.is_grad_enabled() and T == k.shape[2] and chunks_pay_off(B, H, T):
        return causal_attention_by_chunks(q, k, v, mask)
    causal = mask is None and T > 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=H != k.shape[1])


def causal_attention_by_chunks(q, k, v, mask=None, chunk: int = CHUNK):
    """softmax(q k^T / sqrt(hd) + mask) v for a full causal forward, q (B, H, T, hd), k, v (B, KV, T, hd),
    `mask` (B, 1, T, T) boolean or None (plain causal). Each chunk of queries meets only the keys up to
    its own end, so about half the scores of a full product are computed, as batched matmuls at BLAS
    speed; the softmax is taken in fp32. On 2 CPU cores, 8 rows of 512 tokens, 4 heads of 64, bf16, it
    runs forward + backward ~1.6x faster than SDPA's fused kernel (24 vs 39 ms a layer)."""
    B, H, T, hd = q.shape
    KV = k.shape[1]
    G = H // KV  # query heads per KV head, grouped without copying K/V
    q = (q * hd**-0.5).view(B, KV, G, T, hd)
    positions = torch.arange(T, device=q.device)
    softmax_dtype = torch.promote_types(q.dtype, torch.float32)
    out = []
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        scores = q[:, :, :, s:e].reshape(B, KV, G * (e - s), hd) @ k[:, :, :e].transpose(-1, -2)
        scores = scores.view(B, KV, G, e - s, e)
        allowed = mask[:, :, s:e, :e].unsqueeze(2) if mask is not None else positions[:e] <= positions[s:e, None]
        p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1, dtype=softmax_dtype)
        out.append((p.to(v.dtype).view(B, KV, G * (e - s), e) @ v[:, :, :e]).view(B, KV, G, e - s, hd))
    return torch.cat(out, 3).view(B, H, T, hd)
