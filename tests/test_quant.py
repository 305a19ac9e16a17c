"""4-bit draft formats (docs/afm-format.md §8.3), pinned to coremltools' own quantisation calls with the
toolkit's recipe: LUTs per 16-channel group from its 1-D k-means in float64, int4 per column with the
unrounded fp32 scale; fp16 only when stored; and fmlab's one intended difference, the all-zero channel."""

import numpy as np
import pytest
import torch

from fmlab.export.quant4 import (
    int4_dequantize,
    int4_quantize,
    kmeans_lut,
    lut4_dequantize,
    lut4_quantize,
    relative_error,
    to_fp16,
)

pytest.importorskip("coremltools")


def coremltools_lut4(w64: np.ndarray):
    """The toolkit's recipe through coremltools: per-channel max, then grouped k-means (float64)."""
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    def kmeans(v):
        return _get_kmeans_lookup_table_and_weight(4, v, force_kmeans1d=True, cluster_dim=1, vector_axis=0)

    scale = np.abs(w64).max(1, keepdims=True)
    params = palettize_weights.grouped_channelwise_compress(w64 / scale, "CUSTOM", None, 0, 16, kmeans)
    return scale.reshape(-1), params.lut.reshape(len(w64) // 16, 16), params.indices


def weights(rows, cols, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.02
    w[5] *= 10  # one loud channel: the per-channel scale absorbs it
    return w


def test_lut4_equals_coremltools_grouped_palettisation():
    w = weights(64, 48, 2)
    scale, lut, idx = lut4_quantize(w)
    their_scale, their_lut, their_idx = coremltools_lut4(w.double().numpy())
    assert scale.dtype == lut.dtype == np.float64 and idx.dtype == np.uint8
    np.testing.assert_array_equal(scale, their_scale)
    np.testing.assert_array_equal(lut, their_lut)
    np.testing.assert_array_equal(idx, their_idx)
    assert (np.diff(lut, axis=1) > 0).all() and idx.shape == (64, 48) and idx.max() <= 15


def test_lut4_result_does_not_depend_on_the_threads():
    w = weights(96, 40, 3)
    one, many = lut4_quantize(w, workers=1), lut4_quantize(w, workers=4)
    assert all(np.array_equal(a, b) for a, b in zip(one, many))


def test_lut4_stored_values_reconstruct_the_weights():
    w = weights(64, 48, 4)
    scale, lut, idx = lut4_quantize(w)
    w_hat = lut4_dequantize(to_fp16(scale), to_fp16(lut), idx)
    assert relative_error(w, w_hat) < 0.13
    normed = (w_hat / torch.from_numpy(to_fp16(scale).astype(np.float32))[:, None]).reshape(4, -1)
    assert all(len(torch.unique(g)) <= 16 for g in normed)  # one 16-entry table per 16-row group


def test_lut4_few_distinct_values_are_exact_and_the_palette_zero_padded():
    w = torch.tensor([[1.0, -1.0, 0.5, 1.0]] * 16)
    scale, lut, idx = lut4_quantize(w)
    assert list(lut[0, :3]) == [-1.0, 0.5, 1.0] and not lut[0, 3:].any()  # coremltools pads with 0
    assert torch.equal(lut4_dequantize(scale, lut, idx), w)


def test_lut4_all_zero_channel_guard():
    """The one intended difference: the toolkit's 0/0 gives a NaN palette for the group; fmlab divides
    the zero channel by 1, stores its scale 0, and it decodes to exact zeros. Other groups: unchanged."""
    w = weights(32, 24, 5)
    w[20] = 0
    scale, lut, idx = lut4_quantize(w)
    assert scale[20] == 0 and np.isfinite(lut).all()
    assert torch.equal(lut4_dequantize(to_fp16(scale), to_fp16(lut), idx)[20], torch.zeros(24))
    with np.errstate(invalid="ignore", divide="ignore"):
        _, their_lut, their_idx = coremltools_lut4(w.double().numpy())
    assert np.isnan(their_lut[1]).any()  # what the toolkit's recipe does with it
    np.testing.assert_array_equal(lut[0], their_lut[0])
    np.testing.assert_array_equal(idx[:16], their_idx[:16])


def test_lut4_rejects_channels_not_divisible_by_the_group():
    with pytest.raises(ValueError, match="divisible"):
        lut4_quantize(torch.randn(24, 8), group_size=16)


def test_kmeans_lut_keeps_the_dtype_and_order():
    values = np.array([0.5, -1.0, 0.5, 2.0], np.float16)
    lut, idx = kmeans_lut(values)
    assert lut.dtype == np.float16 and lut.shape == (16,) and idx.dtype == np.uint8
    assert np.array_equal(lut[idx], values)


def test_int4_equals_coremltools_symmetric_per_column():
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights

    w = torch.randn(512, 256, generator=torch.Generator().manual_seed(3)) * 0.05
    q, scale = int4_quantize(w)
    theirs = linear_quantize_weights.blockwise_compress(w.numpy(), 4, "LINEAR_SYMMETRIC", True, [0, 1])
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (256,)
    np.testing.assert_array_equal(scale.numpy(), theirs.scale.reshape(-1))  # fp32, unrounded
    np.testing.assert_array_equal(q.numpy(), theirs.data)
    # dividing by the fp16-rounded scale instead (fmlab's old rule) changes some codes
    rounded = torch.clamp(torch.round(w / scale.half().float()), -8, 7).to(torch.int8)
    assert (rounded != q).any()
    assert relative_error(w, int4_dequantize(q, to_fp16(scale))) < 0.2


def test_int4_all_zero_column_gets_the_floor():
    w = torch.randn(100, 8, generator=torch.Generator().manual_seed(3))
    w[:, 3] = 0
    q, scale = int4_quantize(w)
    assert int(q.min()) >= -8 and int(q.max()) <= 7 and not q[:, 3].any()
    assert scale[3] == torch.tensor(1e-6, dtype=torch.float32)


def test_fp16_is_rounded_once_from_float64():
    """numpy rounds float64 straight to fp16 (torch 2.13 goes through fp32 and gives 1.0 here)."""
    x = np.float64(1 + 2.0**-11 + 2.0**-40)  # just above the fp16 tie between 1 and 1 + 2^-10
    assert to_fp16(np.array([x]))[0] == np.float16(1 + 2.0**-10)
    assert to_fp16(torch.tensor([x], dtype=torch.float64))[0] == np.float16(1 + 2.0**-10)
