"""The chunked linear cross-entropy equals F.cross_entropy(F.linear(h, W), y) in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from fmlab.train import losses as linear_ce
from fmlab.train.losses import linear_cross_entropy


def reference(h, w, y):
    return F.cross_entropy(F.linear(h, w).float(), y, reduction="sum")


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("train_weight", [False, True], ids=["frozen-head", "trained-head"])
def test_loss_and_gradients_match_reference(monkeypatch, autocast, train_weight):
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", 40 * 64)  # several chunks, a ragged last one
    monkeypatch.setattr(linear_ce, "MIN_CHUNK_ROWS", 16)
    torch.manual_seed(0)
    h0, w0, y = torch.randn(150, 32), torch.randn(64, 32) * 0.3, torch.randint(0, 64, (150,))
    results = []
    for fn in (reference, linear_cross_entropy):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_(train_weight)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = fn(h, w, y)
        (loss * 0.5).backward()
        results.append((loss.detach(), h.grad, w.grad))
    tol = dict(atol=2e-2, rtol=2e-2) if autocast else dict(atol=1e-4, rtol=1e-5)
    for ours, ref in zip(results[1], results[0]):
        if ref is None:
            assert ours is None
        else:
            torch.testing.assert_close(ours, ref, **tol)


def test_no_grad_gives_the_loss_only():
    h, w, y = torch.randn(20, 8, requires_grad=True), torch.randn(16, 8), torch.randint(0, 16, (20,))
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, y)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(h, w, y).detach())
