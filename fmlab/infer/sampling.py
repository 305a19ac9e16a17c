"""Turning logits into next tokens: greedy, temperature, top-k, top-p (nucleus).

`probabilities` is the one place logits become a distribution, so plain and speculative decoding
sample from exactly the same processed distribution (which is what makes speculative sampling exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-5  # Apple's generate treats temperatures at or below this as greedy


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_BELOW


def probabilities(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Processed next-token distribution (float32) for logits (..., V)."""
    logits = logits.float()
    if s.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = logits.topk(s.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= s.top_p  # keep the smallest set reaching top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (...,) from logits (..., V)."""
    if s.greedy:
        return logits.argmax(-1)
    probs = probabilities(logits, s)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(probs.shape[:-1])
