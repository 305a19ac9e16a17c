"""The statistics of `fmlab eval`: is a checkpoint's score, and its difference from the base, more than
noise on this many samples?

- `bootstrap_ci`: the mean and its percentile-bootstrap interval (Efron & Tibshirani 1993): resample the
  samples with replacement `resamples` times, take the 2.5th and 97.5th percentiles of the means.
- `paired_bootstrap_ci`: the same for the per-sample difference model − base, resampling the samples (so
  both models are scored on the same resampled set each time: the pairing is kept).
- `mcnemar_exact`: McNemar's test (1947) in its exact form on the pass/fail flips. Only the discordant
  samples count: b = passed by the base and failed by the model (regressions), c = the other way round
  (improvements). Under "no difference" each flip goes either way with probability 1/2, so
  p = min(1, 2 · P[X ≤ min(b, c)]) for X ~ Binomial(b + c, 1/2), computed exactly with integers.

Indices are drawn once per seed and shared by every model of a run, so intervals of different models
come from the same resamples.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n) sample indices drawn with replacement, deterministic for `seed`."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(scores, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0, indices=None):
    """(mean, low, high): the mean of `scores` and its percentile-bootstrap interval at `level`."""
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return math.nan, math.nan, math.nan
    idx = resample_indices(scores.size, resamples, seed) if indices is None else indices
    return (float(scores.mean()), *_interval(scores[idx].mean(axis=1), level))


def paired_bootstrap_ci(
    scores, base_scores, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0, indices=None
):
    """(mean difference, low, high) of `scores - base_scores`, paired sample by sample."""
    diff = np.asarray(scores, dtype=float) - np.asarray(base_scores, dtype=float)
    return bootstrap_ci(diff, level, resamples, seed, indices)


def mcnemar_exact(regressed: int, improved: int) -> float:
    """Two-sided exact McNemar p-value for `regressed` (base pass → fail) and `improved` (fail → pass)."""
    n = regressed + improved
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(regressed, improved) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def flip_counts(passed, base_passed) -> tuple[int, int]:
    """(regressed, improved): samples the base passes and the model fails, and the other way round."""
    passed, base_passed = np.asarray(passed, dtype=bool), np.asarray(base_passed, dtype=bool)
    return int((base_passed & ~passed).sum()), int((~base_passed & passed).sum())
