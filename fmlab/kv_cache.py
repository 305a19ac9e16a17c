"""Attention layout (positions + mask) from segment ids, and the static KV cache used for generation.

The cache is position-indexed (gpt-fast style): one preallocated buffer per regular layer, written at
slots [start, end). Rolling back (rejected speculative tokens) only moves `end`; stale slots are
masked out and overwritten later, nothing is copied. KV-reuse layers keep no cache of their own:
they read the last regular layer's buffer.
"""
from __future__ import annotations

import torch

from .config import ModelConfig


def positions_from_segments(seg: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 at every new segment id along each row. seg: (B, T)."""
    B, T = seg.shape
    idx = torch.arange(T, device=seg.device).expand(B, T)
    new_doc = torch.ones_like(seg, dtype=torch.bool)
    new_doc[:, 1:] = seg[:, 1:] != seg[:, :-1]
    start = torch.where(new_doc, idx, 0).cummax(dim=1).values
    return idx - start


def layout_from_segments(seg: torch.Tensor | None, B: int, T: int, device):
    """(positions (B, T), mask (B, 1, T, T) or None for plain causal) for a full forward."""
    if seg is None:
        return torch.arange(T, device=device).expand(B, T), None
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal          # same document and not in the future
    return positions_from_segments(seg), mask[:, None]


class KVCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        shape = (cfg.num_regular_layers, batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.seg = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.last_layer = cfg.num_regular_layers - 1
        self.max_len = max_len
        self.start = self.end = 0
        self.padded = False

    def advance(self, segment_ids: torch.Tensor | None, T: int):
        """Reserve slots for T new tokens; return their (positions, mask)."""
        start, end = self.end, self.end + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > {self.max_len} slots")
        B = self.seg.shape[0]
        if start == 0:
            seg = segment_ids if segment_ids is not None else torch.ones(B, T, dtype=torch.long,
                                                                          device=self.seg.device)
            positions = positions_from_segments(seg)
            self.padded = bool((seg != seg[:, -1:]).any())      # one host sync per prompt, not per token
        else:   # continuing the last document of each row
            seg = self.seg[:, start - 1:start].expand(B, T)
            positions = self.next_pos[:, None] + torch.arange(T, device=seg.device)
        self.seg[:, start:end] = seg
        self.next_pos = positions[:, -1] + 1
        self.start, self.end = start, end
        if not self.padded and (start == 0 or T == 1):
            return positions, None                   # plain causal (prefill) or sees everything (decode)
        q_slot = torch.arange(start, end, device=seg.device)
        kv_slot = torch.arange(end, device=seg.device)
        mask = (kv_slot[None, :] <= q_slot[:, None]) & (self.seg[:, None, :end] == seg[:, :, None])
        return positions, mask[:, None]                                          # (B, 1, T, end)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write this step's K/V (B, KV, T, hd) for `layer`; return the filled views (B, KV, end, hd)."""
        self.k[layer, :, :, self.start:self.end] = k
        self.v[layer, :, :, self.start:self.end] = v
        return self.k[layer, :, :, :self.end], self.v[layer, :, :, :self.end]

    def rollback(self, end: int) -> None:
        """Forget every slot from `end` on (e.g. rejected draft tokens)."""
        self.next_pos = self.next_pos - (self.end - end)
        self.end = end
