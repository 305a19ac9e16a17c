"""The losses fmlab trains with, over assistant target tokens only (labels != IGNORE and != pad):

- `token_loss`: summed token cross-entropy, the adapter and pretraining loss (docs/afm-format.md §6.1);
- `reverse_kl`, `forward_kl`, `jsd`: per-token divergences for draft distillation (docs/afm-format.md §7);
- `linear_cross_entropy`: the cross-entropy of a linear head in row chunks, without keeping the logits.

`F.cross_entropy(F.linear(h, W), y)` keeps the (rows, vocab) fp32 logits for the backward and runs a
separate log-softmax backward over them. Here each chunk's logits are used at once: the forward takes
the loss *and* the gradient with respect to h (and W, when it trains) while the softmax is at hand, so
only a (rows, hidden) gradient is kept. Same products and roundings as the autocast reference: the
matmuls run in the autocast dtype, the softmax in fp32, its gradient is cast back before the matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fmlab.data.chat_template import IGNORE
from fmlab.model.transformer import unwrap

CHUNK_ELEMENTS = 1 << 21  # logits per chunk (8 MiB in fp32): stays in cache, keeps the matmuls large
MIN_CHUNK_ROWS = 256  # with a large vocabulary, still enough rows per pass over the head weight


def chunk_rows(vocab_size: int) -> int:
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // vocab_size)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    device = h.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype


def _loss_and_grads(hidden, weight, labels, want_h: bool, want_w: bool):
    """(summed loss, d loss / d hidden or None, d loss / d weight or None), chunk by chunk."""
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        h, w = hidden.to(dtype), weight.to(dtype)
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=w.device) if want_w else None
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        rows = chunk_rows(w.shape[0])
        for i in range(0, h.shape[0], rows):
            x, y = h[i : i + rows], labels[i : i + rows]
            logits = (x @ w.t()).float()  # (n, V)
            lse = logits.logsumexp(-1)
            loss += (lse - logits.gather(1, y[:, None])[:, 0]).sum()
            if not (want_h or want_w):
                continue
            g = logits.sub_(lse[:, None]).exp_()  # softmax - one-hot
            g[torch.arange(len(y), device=y.device), y] -= 1
            g = g.to(dtype)
            if want_h:
                torch.mm(g, w, out=grad_h[i : i + rows])
            if want_w:
                grad_w += (g.t() @ x).float()
    return loss, grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels):
        loss, grad_h, grad_w = _loss_and_grads(hidden, weight, labels, *ctx.needs_input_grad[:2])
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (
            None if grad_h is None else (grad_h * grad_loss).to(h_dtype),
            None if grad_w is None else (grad_w * grad_loss).to(w_dtype),
            None,
        )


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum_i CE(hidden[i] @ weight.T, labels[i]) for hidden (N, C), weight (V, C), labels (N,)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, labels)
    return _loss_and_grads(hidden, weight, labels, False, False)[0]  # evaluation: no gradients


def token_loss(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over target tokens. Labels are pre-shifted (Apple's layout), so position t
    predicts label t; only target positions go through the LM head, in chunks that never keep the
    (targets, vocab) logits (`linear_cross_entropy`)."""

    hidden = model(batch["input_ids"], segment_ids=batch.get("segment_ids"), return_hidden=True)
    labels = batch["label_ids"]
    keep = target_mask(labels)
    return linear_cross_entropy(hidden[keep], unwrap(model).embedding.weight, labels[keep]), keep.sum()


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """beta * KL(p || m) + (1 - beta) * KL(q || m), m = beta * p + (1 - beta) * q (GKD's JSD(beta))."""
    log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    return beta * (log_p.exp() * (log_p - log_m)).sum(-1) + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(-1)


DIVERGENCES = {"reverse_kl": reverse_kl, "forward_kl": forward_kl, "jsd": jsd}


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """Assistant target tokens: labels that are neither ignored nor pad (as Apple's InverseKLLoss)."""
    return (labels != IGNORE) & (labels != 0)
