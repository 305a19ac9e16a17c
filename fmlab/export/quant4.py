"""The 4-bit weight formats of Apple's draft template (docs/afm-format.md §8.3), computed the way the
toolkit computes them so that the stored bytes are the same, and their inverses.

- `int4` (`linear_4bits`, the embedding): symmetric per column, in fp32: scale = max(max|w| / 7, 1e-6),
  codes = clip(round(w / scale), -8, 7) with that unrounded fp32 scale (round half to even); the scale
  is rounded to fp16 only when it is stored.
- `lut4` (`lut_4bits`, every linear kernel): grouped-channel palettisation (Deep Compression, Han et al.
  2016), in float64: each output channel is divided by its max |w|, and each group of 16 output channels
  gets a 16-entry palette from coremltools' 1-D k-means (`kmeans_lut`: the exact dynamic programme of
  the `kmeans1d` package coremltools ships, Grønlund et al. 2017), called as the toolkit calls it.
  Palettes and scales become fp16 only when stored, by numpy's direct float64 -> fp16 rounding
  (`to_fp16`; torch rounds float64 to float32 first, which can land on the other side of a tie).

The one intended difference from the toolkit: an all-zero output channel. The toolkit divides it by its
max |w| = 0, so its group's palette is NaN; fmlab divides it by 1 (as coremltools' own per-channel scale
does), stores its scale 0, and the channel decodes to exact zeros. Every other channel is unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fmlab.errors import FmlabError


@contextlib.contextmanager
def quiet():
    """coremltools logs version warnings and draws progress bars on stderr: keep them out of reports."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def import_coremltools():
    try:
        with quiet():
            import coremltools as ct
    except ImportError:
        raise FmlabError(
            "the draft export needs coremltools (pip install coremltools==9.0): its k-means makes the 4-bit "
            "palettes and the Core ML draft"
        ) from None
    return ct


def coremltools_kmeans():
    import_coremltools()  # once, outside any thread: it swaps sys.stderr while importing
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    return _get_kmeans_lookup_table_and_weight


def kmeans_lut(values: np.ndarray, nbits: int = 4, kmeans=None) -> tuple[np.ndarray, np.ndarray]:
    """coremltools' 1-D k-means as the toolkit calls it (`force_kmeans1d=True`, `cluster_dim=1`): returns
    (palette (2^nbits,) in the values' dtype, ascending, zero-padded when there are fewer distinct values;
    indices (values.size,) uint8, in the values' flattened order)."""
    kmeans = kmeans or coremltools_kmeans()
    lut, idx = kmeans(nbits, values, force_kmeans1d=True, cluster_dim=1, vector_axis=0)
    return lut.reshape(-1).astype(values.dtype), np.asarray(idx, np.uint8).reshape(-1)


def to_fp16(x) -> np.ndarray:
    """float64/fp32 values as stored: numpy's direct, correctly rounded conversion to fp16."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.astype(np.float16)


# --- lut_4bits: per-output-channel scale + 16-channel grouped LUT ---------------------------------


def lut4_quantize(w, group_size: int = 16, nbits: int = 4, workers: int | None = None):
    """w (out, ...) -> (scale (out,) float64, palette (out / group, 2^nbits) float64, indices (out, in)
    uint8), all unrounded; store `to_fp16(scale)`, `to_fp16(palette)` and the indices as uint4.
    Groups are clustered on `workers` threads (the k-means runs in C without the GIL); the result does
    not depend on how many."""
    w = torch.as_tensor(w).detach().cpu().double().reshape(len(w), -1).numpy()
    out, inp = w.shape
    if out % group_size:
        raise ValueError(f"{out} output channels are not divisible by the LUT group size {group_size}")
    peak = np.abs(w).max(1)
    normed = w / np.where(peak == 0, 1.0, peak)[:, None]  # the all-zero-channel guard (module docstring)
    groups = normed.reshape(out // group_size, group_size * inp)
    kmeans = coremltools_kmeans()
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda g: kmeans_lut(g, nbits, kmeans), groups))
    lut = np.stack([r[0] for r in results])
    idx = np.stack([r[1] for r in results]).reshape(out, inp)
    return peak, lut, idx


def lut4_dequantize(scale, lut, indices, group_size: int = 16) -> torch.Tensor:
    """Inverse of `lut4_quantize`: w_hat[o, i] = lut[o // group, idx[o, i]] * scale[o] (float32)."""
    indices = torch.as_tensor(np.asarray(indices)).long()
    out, inp = indices.shape
    lut = torch.as_tensor(np.asarray(lut, np.float32)).reshape(out // group_size, -1)
    w = lut.gather(1, indices.reshape(out // group_size, group_size * inp)).reshape(out, inp)
    return w * torch.as_tensor(np.asarray(scale, np.float32)).reshape(out, 1)


# --- linear_4bits: symmetric int4 per column --------------------------------------------------------


def int4_quantize(w):
    """w (rows, cols) -> (q (rows, cols) int8 in [-8, 7], scale (cols,) fp32, unrounded: store
    `to_fp16(scale)`); one scale per column."""
    w = torch.as_tensor(w).detach().float()
    scale = (w.abs().amax(0) / 7).clamp_min(1e-6)
    q = torch.clamp(torch.round(w / scale), -8, 7).to(torch.int8)
    return q, scale


def int4_dequantize(q, scale) -> torch.Tensor:
    return torch.as_tensor(np.asarray(q)).float() * torch.as_tensor(np.asarray(scale, np.float32))


# --- error measures ---------------------------------------------------------------------------------


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||w - w_hat|| / ||w|| (Frobenius)."""
    w, w_hat = w.detach().float(), w_hat.detach().float()
    return float((w - w_hat).norm() / w.norm().clamp_min(1e-12))
