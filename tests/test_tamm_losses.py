"""Loss parity on the shipped data and models.

- Adapter loss: tamm 0.1.0's `FlattenedCrossEntropyLoss` (the loss layer tamm has) on tamm's own AFMTextV7
  logits, with the toolkit's label rule (pad labels count as -100, no extra shift; docs/afm-format.md
  §6.1), against fmlab's chunked `token_loss` divided by its target count.
- Draft loss: tamm has no KL loss; the toolkit's `InverseKLLoss` (§7) is written out here literally,
  `CE(target, q) - CE(draft, q)` with `q = softmax(draft)` not detached, and fmlab's `reverse_kl` and
  `DistillLoss` must give its per-token values and gradients. The toolkit averages per sequence and then
  over the batch; fmlab averages over target tokens (a strict xfail names the difference).
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_lora

pytest.importorskip("tamm")
import tamm.utils.json as tamm_json
from tamm.layers.loss import FlattenedCrossEntropyLoss

from fmlab.checkpoints.apple_format import to_apple
from fmlab.checkpoints.assets import BASE_CONFIG, REPO_ASSETS, load_base, load_draft, load_tokenizer
from fmlab.data.chat_template import IGNORE
from fmlab.data.dataset import tokenize_dataset
from fmlab.data.packing import Batches
from fmlab.data.validate import read_messages
from fmlab.train.distill import DistillLoss
from fmlab.train.losses import reverse_kl, target_mask, token_loss

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def batch():
    """Two greedy-packed rows of shipped training samples (several documents each) plus padding."""
    tok = load_tokenizer()
    samples = read_messages(ROOT / "data" / "train.jsonl")[:12]
    batches = Batches(tokenize_dataset(tok, samples, max_len=1024), batch_size=2, pack=True, strategy="greedy")
    out = next(iter(batches))
    assert out["segment_ids"].max() > 3 and (out["input_ids"] == tok.pad_id).any()
    return out


def toolkit_labels(labels: torch.Tensor) -> torch.Tensor:
    return labels.masked_fill(labels == 0, IGNORE)  # the toolkit maps pad labels to -100


@torch.no_grad()
def test_token_loss_matches_tamm_cross_entropy(batch):
    fm = randomize_lora(load_base(), 0.02, seed=0).eval()
    tm = tamm_json.loads((REPO_ASSETS / BASE_CONFIG).read_text()).create_model()
    tm.load_state_dict(to_apple(fm.state_dict(), fm.config), strict=True)
    logits = tm.eval()(batch["input_ids"], segment_ids=batch["segment_ids"]).predictions
    expected = FlattenedCrossEntropyLoss()(logits, toolkit_labels(batch["label_ids"]))
    total, count = token_loss(fm, batch)
    assert count == int((toolkit_labels(batch["label_ids"]) != IGNORE).sum()) > 0
    torch.testing.assert_close(total / count, expected, rtol=2e-6, atol=0)


def toolkit_inverse_kl(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per token: CE(target_logits, q) - CE(draft_logits, q), CE(z, q) = -sum q log_softmax(z), q = softmax(draft)."""
    q = F.softmax(draft_logits, -1)

    def ce(z):
        return -(q * F.log_softmax(z, -1)).sum(-1)

    return ce(target_logits) - ce(draft_logits)


@pytest.fixture(scope="module")
def distill_logits(batch):
    teacher, student = load_base().eval(), load_draft().eval()
    mask = target_mask(batch["label_ids"])
    with torch.no_grad():
        t = teacher(batch["input_ids"], segment_ids=batch["segment_ids"])[mask]
        s = student(batch["input_ids"], segment_ids=batch["segment_ids"])[mask]
    return teacher, student, s, t


def _value_and_grad(fn, s, t, dtype):
    x = s.detach().to(dtype).clone().requires_grad_(True)
    per_token = fn(x, t.to(dtype))
    (per_token * torch.linspace(0.5, 1.5, len(s), dtype=dtype)).sum().backward()
    return per_token.detach().double(), x.grad.double()


def test_reverse_kl_matches_the_toolkit_per_token_with_gradients(distill_logits):
    """Values and gradients (q is not detached on either side) against the toolkit's formula in float64:
    fmlab's fp32 error is at most twice the toolkit's own fp32 error (its two cross-entropies cancel)."""
    _, _, s, t = distill_logits
    exact = _value_and_grad(toolkit_inverse_kl, s, t, torch.float64)
    toolkit = _value_and_grad(toolkit_inverse_kl, s, t, torch.float32)
    ours = _value_and_grad(reverse_kl, s, t, torch.float32)
    assert exact[0].mean() > 1e-2  # not vacuous: the draft is not the teacher
    for what, e, tk, mine in zip(("values", "gradients"), exact, toolkit, ours):
        ours_err, toolkit_err = (mine - e).abs().max().item(), (tk - e).abs().max().item()
        assert ours_err <= 2 * toolkit_err + 1e-7, f"{what}: fmlab {ours_err:.3g}, toolkit fp32 {toolkit_err:.3g}"


def test_distill_loss_sums_the_toolkit_per_token_loss(batch, distill_logits):
    teacher, student, s, t = distill_logits
    total, count = DistillLoss(teacher, teacher_precision="f32")(student.eval(), batch)
    assert count == len(s)
    torch.testing.assert_close(total, toolkit_inverse_kl(s, t).sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.xfail(
    strict=True,
    reason="reduction: the toolkit's InverseKLLoss averages over each sequence's target tokens, then over "
    "the batch; fmlab's loop divides the summed loss by all target tokens (a token mean), so rows with "
    "fewer targets weigh more in the toolkit's loss (the per-token values and gradients are equal)",
)
def test_distill_reduction_is_the_toolkit_per_sequence_mean(batch, distill_logits):
    teacher, student, s, t = distill_logits
    total, count = DistillLoss(teacher, teacher_precision="f32")(student.eval(), batch)
    mask = target_mask(batch["label_ids"])
    per_token = toolkit_inverse_kl(s, t)
    rows = mask.nonzero()[:, 0]
    per_row = torch.zeros(len(mask)).index_add(0, rows, per_token) / mask.sum(1).clamp_min(1)
    torch.testing.assert_close(total / count, per_row.mean(), rtol=1e-5, atol=0)
