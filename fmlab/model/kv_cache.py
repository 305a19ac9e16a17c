"""Attention layout (positions + mask) from segment ids, and the static KV cache used for generation.

The cache is position-indexed (gpt-fast style): one preallocated buffer per regular layer, written at
slots [start, end). Rolling back (rejected speculative tokens) only moves `end`; stale slots are
masked out and overwritten later, nothing is copied. KV-reuse layers keep no cache of their own:
they read the last regular layer's buffer.

The prefill attends over the prompt's slots only (plain causal when no row is padded). A later call
(decode, a speculative block) attends over the slots filled so far, masking the future. A compiled
step attends over *all* slots instead, with the unused ones masked too, so its shapes never change
from one token to the next: `torch.compile` captures the decode step once instead of recompiling for
every cache length.
"""

from __future__ import annotations

import torch

from fmlab.model.config import ModelConfig


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
    mask = (seg[:, :, None] == seg[:, None, :]) & causal  # same document and not in the future
    return positions_from_segments(seg), mask[:, None]


class KVCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        # one (B, KV, max_len, hd) buffer per regular layer: separate tensors (not views of one) let
        # torch.compile write the new slots in place instead of copying a whole layer's buffer
        shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_regular_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_regular_layers)]
        self.seg = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.slot = torch.arange(max_len, device=device)
        self.max_len = max_len
        self.start = self.end = 0
        self.span = max_len  # the slots a later call attends over
        self.padded = False

    def advance(self, segment_ids: torch.Tensor | None, T: int, static: bool = False):
        """Reserve slots for T new tokens; return their (positions (B, T), mask, slots).

        The first call (prefill) gets `slots` as a slice and attends over those slots only; later
        calls get `slots` as a tensor and a mask over the filled slots, or with `static` (a compiled
        step) over all `max_len` slots, so that the shapes never change."""
        start, end = self.end, self.end + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > {self.max_len} slots")
        self.start, self.end = start, end
        self.span = self.max_len if static else end
        if start == 0:
            seg = (
                segment_ids
                if segment_ids is not None
                else torch.ones(self.seg.shape[0], T, dtype=torch.long, device=self.seg.device)
            )
            positions = positions_from_segments(seg)
            self.padded = bool((seg != seg[:, -1:]).any())  # one host sync per prompt, not per token
            self.seg[:, :T] = seg
            self.next_pos = positions[:, -1] + 1
            mask = layout_from_segments(seg, *seg.shape, seg.device)[1] if self.padded else None
            return positions, mask, slice(0, T)
        positions = self.next_pos[:, None] + self.slot[:T]  # (B, T)
        self.next_pos = self.next_pos + T
        slots = self.slot[start:end]
        mask = self.slot[: self.span] <= slots[:, None]  # (T, S): no future slot, no stale one past `end`
        if not self.padded:
            return positions, mask, slots
        seg = self.seg[:, start - 1 : start]  # continuing the last document of each row
        self.seg[:, start:end] = seg
        mask = mask & (self.seg[:, None, : self.span] == seg[:, :, None])  # (B, T, S)
        return positions, mask[:, None], slots  # (B, 1, T, S)

    def store(self, layer: int, slots, k: torch.Tensor, v: torch.Tensor):
        """Write this step's K/V (B, KV, T, hd) for `layer` at `slots`; return what to attend over:
        the prompt's slots for a prefill (slice), else the buffers' first `span` slots (B, KV, S, hd)."""
        k_all, v_all = self.k[layer], self.v[layer]
        if isinstance(slots, slice):
            k_all[:, :, slots] = k
            v_all[:, :, slots] = v
            return k_all[:, :, : slots.stop], v_all[:, :, : slots.stop]
        k_all.index_copy_(2, slots, k)
        v_all.index_copy_(2, slots, v)
        return k_all[:, :, : self.span], v_all[:, :, : self.span]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (indices, in order): a batch drops the rows that have finished."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.seg, self.next_pos = self.seg.index_select(0, rows), self.next_pos.index_select(0, rows)

    def rollback(self, end: int) -> None:
        """Forget every slot from `end` on (e.g. rejected draft tokens)."""
        self.next_pos = self.next_pos - (self.end - end)
        self.end = end
