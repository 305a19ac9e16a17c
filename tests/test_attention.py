"""The chunked causal attention equals SDPA: values and gradients, plain causal and document-masked, GQA,
sequence lengths that are not a multiple of the chunk."""

import pytest
import torch
import torch.nn.functional as F

from fmlab.model.attention import causal_attention_by_chunks
from fmlab.model.kv_cache import layout_from_segments


def _qkv(T, B=2, H=4, KV=2, hd=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, hd, generator=g, dtype=torch.float64, requires_grad=True) for h in (H, KV, KV)]


@pytest.mark.parametrize("T, chunk", [(37, 8), (64, 64), (20, 64)])
@pytest.mark.parametrize("packed", [False, True])
def test_chunked_attention_equals_sdpa(T, chunk, packed):
    q, k, v = _qkv(T)
    mask = None
    if packed:  # two documents and right padding in row 0; one document in row 1
        seg = torch.ones(2, T, dtype=torch.long)
        seg[0, T // 3 :] = 2
        seg[0, T - 3 :] = 0
        mask = layout_from_segments(seg, 2, T, "cpu")[1]
    ours = causal_attention_by_chunks(q, k, v, mask, chunk=chunk)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
    torch.testing.assert_close(ours, ref)
    grad = torch.randn_like(ref)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_chunked_attention_in_bf16_stays_within_rounding():
    q, k, v = (t.detach().to(torch.bfloat16) for t in _qkv(100, hd=64))
    ours = causal_attention_by_chunks(q, k, v).float()
    ref = F.scaled_dot_product_attention(*(t.float() for t in (q, k, v)), is_causal=True, enable_gqa=True)
    assert (ours - ref).abs().max() < 0.02  # bf16 has 8 bits of mantissa: ~2 ulps at |x| ~ 1
