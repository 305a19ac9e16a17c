"""4-bit draft formats (docs/afm-format.md §8.3): k-means LUTs per 16-channel group and int4 per column."""

import numpy as np
import pytest
import torch

from fmlab.export.quant4 import (
    int4_dequantize,
    int4_quantize,
    kmeans_1d,
    lut4_dequantize,
    lut4_quantize,
    relative_error,
)


def test_kmeans_is_exact_with_few_distinct_values():
    x = torch.tensor([[1.0, 1, 2, 2, 3] * 10, [0.5] * 50])
    lut, idx = kmeans_1d(x)
    assert torch.equal(torch.gather(lut, 1, idx), x)


def test_kmeans_centroids_are_the_means_of_their_clusters():
    x = torch.randn(3, 4096, generator=torch.Generator().manual_seed(0))
    lut, idx = kmeans_1d(x)
    for g in range(3):
        for c in idx[g].unique():
            assert abs(float(x[g][idx[g] == c].mean() - lut[g, c])) < 1e-5  # Lloyd fixed point
    assert (lut[:, 1:] >= lut[:, :-1]).all()


def test_kmeans_is_as_good_as_coremltools_helper():
    qu = pytest.importorskip("coremltools.models.neural_network.quantization_utils")
    pytest.importorskip("sklearn.cluster")
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    x = (w / w.abs().amax(1, keepdim=True)).reshape(1, -1)
    lut, idx = kmeans_1d(x)
    ours = float(((x - lut[0][idx]) ** 2).mean())
    their_lut, their_idx = qu._get_kmeans_lookup_table_and_weight(4, x.numpy().reshape(-1))
    theirs = float(((x.numpy().reshape(-1) - their_lut.reshape(-1)[their_idx.reshape(-1)]) ** 2).mean())
    assert ours <= 1.02 * theirs


def test_lut4_layout_and_error():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(2)) * 0.02
    w[5] *= 10  # one loud channel: the per-channel scale absorbs it
    scale, lut, idx = lut4_quantize(w, group_size=16)
    assert scale.dtype == torch.float16 and scale.shape == (64,)
    assert lut.dtype == torch.float16 and lut.shape == (4, 16)
    assert idx.dtype == torch.uint8 and idx.shape == (64, 48) and int(idx.max()) <= 15
    assert torch.allclose(scale.float(), w.abs().amax(1), rtol=1e-3)
    w_hat = lut4_dequantize(scale, lut, idx, 16)
    assert relative_error(w, w_hat) < 0.13
    # rows of one group share a table: at most 16 distinct normalised values per group
    normed = (w_hat / scale.float()[:, None]).reshape(4, -1)
    assert all(len(torch.unique(g)) <= 16 for g in normed)


def test_lut4_rejects_channels_not_divisible_by_the_group():
    with pytest.raises(ValueError, match="divisible"):
        lut4_quantize(torch.randn(24, 8), group_size=16)


def test_int4_per_column_matches_the_spec():
    w = torch.randn(100, 8, generator=torch.Generator().manual_seed(3))
    w[:, 3] = 0  # an all-zero column gets the 1e-6 floor
    q, scale = int4_quantize(w)
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    expected = (w.abs().amax(0) / 7).clamp_min(1e-6).half()
    assert torch.equal(scale, expected)
    assert torch.equal(q, torch.clamp(torch.round(w / expected.float()), -8, 7).to(torch.int8))
    assert relative_error(w, int4_dequantize(q, scale)) < 0.2
    assert np.isclose(float(scale[3]), 1e-6, rtol=1e-2)
