"""The statistics of fmlab eval against values computed independently: the exact McNemar p-value by
hand-worked binomial sums (and scipy's binomial test), the bootstrap interval of a pass rate against the
quantiles of the binomial distribution it converges to, and the paired difference."""

import math

import numpy as np
import pytest

from fmlab.eval.stats import bootstrap_ci, flip_counts, mcnemar_exact, paired_bootstrap_ci, resample_indices


def test_mcnemar_exact_by_hand():
    # b=1, c=9: n=10, P[X<=1] = (1 + 10) / 1024, two-sided doubles it
    assert mcnemar_exact(1, 9) == 22 / 1024
    assert mcnemar_exact(9, 1) == 22 / 1024  # symmetric
    # b=0, c=6: 2 * 1/64
    assert mcnemar_exact(0, 6) == 2 / 64
    # b=2, c=8: n=10, P[X<=2] = (1 + 10 + 45) / 1024
    assert mcnemar_exact(2, 8) == pytest.approx(2 * 56 / 1024)
    assert mcnemar_exact(5, 5) == 1.0  # capped at 1
    assert mcnemar_exact(0, 0) == 1.0  # no flips: no evidence
    assert mcnemar_exact(0, 1) == 1.0


def test_mcnemar_matches_scipy_binomtest_and_stays_exact_for_many_flips():
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(3, 17), (12, 30), (40, 41), (0, 25), (150, 190)]:
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact(0, 1000) == 2.0**-999  # integers all the way: no overflow on the way


def _binomial_quantile(n: int, p: float, q: float) -> int:
    """The smallest k with P[X <= k] >= q for X ~ Binomial(n, p), summed by hand."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


def test_bootstrap_interval_of_a_pass_rate_is_the_binomial_one():
    # Resampling n pass/fail flags with replacement gives Binomial(n, p̂) / n: its 2.5% and 97.5%
    # quantiles are the interval the bootstrap converges to.
    n, passes = 50, 30
    scores = np.array([1.0] * passes + [0.0] * (n - passes))
    mean, low, high = bootstrap_ci(scores, resamples=20000, seed=1)
    assert mean == 0.6
    assert low == pytest.approx(_binomial_quantile(n, 0.6, 0.025) / n, abs=1.01 / n)
    assert high == pytest.approx(_binomial_quantile(n, 0.6, 0.975) / n, abs=1.01 / n)
    assert low < mean < high


def test_bootstrap_edges_and_determinism():
    assert bootstrap_ci([1.0] * 20) == (1.0, 1.0, 1.0)  # no spread, no interval
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    scores = np.random.default_rng(0).random(40)
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    narrow = bootstrap_ci(scores, level=0.5, seed=3)
    wide = bootstrap_ci(scores, level=0.99, seed=3)
    assert wide[1] < narrow[1] < narrow[2] < wide[2]
    assert resample_indices(5, 7, seed=0).shape == (7, 5)


def test_paired_difference_keeps_the_pairs():
    rng = np.random.default_rng(0)
    base = rng.random(60)
    model = base + 0.1  # every sample exactly 0.1 better
    assert paired_bootstrap_ci(model, base) == pytest.approx((0.1, 0.1, 0.1))
    # unpaired, the same shift would drown in the spread of the scores; paired it is certain
    noisy = base + rng.normal(0.05, 0.01, 60)
    diff, low, high = paired_bootstrap_ci(noisy, base)
    assert 0 < low < diff < high < 0.1


def test_flip_counts():
    base = [True, True, False, False, True]
    model = [True, False, True, True, True]
    assert flip_counts(model, base) == (1, 2)  # (regressed, improved)
