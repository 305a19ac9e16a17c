"""4-bit weight formats of Apple's draft export (docs/afm-format.md §8.3) and their inverses, in PyTorch.

- `lut4`: grouped-channel palettisation (k-means weight clustering as in Deep Compression, Han et al.
  2016): each output channel is divided by its max |w| (fp16 scale), then every group of 16 output
  channels shares a 16-entry fp16 look-up table found by 1-D k-means; indices are uint4.
- `int4`: symmetric linear int4 per column (the embedding): scale = max(max|w| / 7, 1e-6), q in [-8, 7].

`kmeans_1d` is fmlab's stand-in for coremltools' `_get_kmeans_lookup_table_and_weight(nbits=4,
force_kmeans1d=True)` (whose `kmeans1d` dependency may be missing): Lloyd's algorithm on sorted values
from quantile starting points, batched over groups, deterministic. Sorting makes each step a
`searchsorted` over cluster boundaries plus prefix sums, so one step costs O(k log n) per group.
"""

from __future__ import annotations

import torch


def kmeans_1d(values: torch.Tensor, k: int = 16, iters: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each row of `values` (G, N) into `k` scalars; returns (centroids (G, k) ascending,
    indices (G, N) int64). Rows with at most k distinct values are represented exactly."""
    x = values.detach().double()
    G, N = x.shape
    xs, _ = x.sort(dim=1)
    csum = torch.cat([x.new_zeros(G, 1), xs.cumsum(1)], 1)  # (G, N + 1)
    # start at the quantile midpoints of the data: spreads clusters where the mass is
    q = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * N).long().clamp_max(N - 1)
    c = xs[:, q]  # (G, k)
    rows = torch.arange(G)[:, None]
    for _ in range(iters):
        bounds = torch.searchsorted(xs, (c[:, 1:] + c[:, :-1]) / 2)  # (G, k - 1) split points
        edges = torch.cat([x.new_zeros(G, 1, dtype=torch.long), bounds, torch.full((G, 1), N)], 1)
        counts = edges[:, 1:] - edges[:, :-1]
        sums = csum[rows, edges[:, 1:]] - csum[rows, edges[:, :-1]]
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        new, _ = new.sort(dim=1)
        if torch.equal(new, c):
            break
        c = new
    # few distinct values: use them exactly (as kmeans1d does with n_clusters = min(unique, k))
    distinct = (xs[:, 1:] != xs[:, :-1]).sum(1) + 1
    for g in torch.nonzero(distinct <= k).flatten().tolist():
        u = xs[g].unique()
        c[g] = torch.cat([u, u[-1:].expand(k - len(u))])
    idx = nearest(x, c)
    return c.to(values.dtype), idx


def nearest(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of each row's ascending `lut` (G, k) for values x (G, N)."""
    mids = (lut[:, 1:] + lut[:, :-1]) / 2
    return torch.searchsorted(mids.contiguous(), x.to(mids.dtype).contiguous())


# --- lut_4bits: per-output-channel scale + 16-channel grouped LUT ---------------------------------


def lut4_quantize(w: torch.Tensor, group_size: int = 16, nbits: int = 4):
    """w (out, in) -> (scale (out,) fp16, lut (out/group, 2^nbits) fp16, indices (out, in) uint8)."""
    w = w.detach().float().reshape(w.shape[0], -1)
    out, inp = w.shape
    if out % group_size:
        raise ValueError(f"{out} output channels are not divisible by the LUT group size {group_size}")
    scale = w.abs().amax(1).clamp_min(1e-8).half()  # stored in fp16
    normed = w / scale.float()[:, None]
    groups = normed.reshape(out // group_size, group_size * inp)
    lut, _ = kmeans_1d(groups, 1 << nbits)
    lut = lut.half()  # rounding is monotone: still ascending
    idx = nearest(groups, lut.float())
    return scale, lut, idx.reshape(out, inp).to(torch.uint8)


def lut4_dequantize(scale: torch.Tensor, lut: torch.Tensor, indices: torch.Tensor, group_size: int = 16):
    """Inverse of `lut4_quantize`: w_hat[o, i] = lut[o // group, idx[o, i]] * scale[o] (float32)."""
    out, inp = indices.shape
    groups = indices.long().reshape(out // group_size, group_size * inp)
    w = lut.float().reshape(out // group_size, -1).gather(1, groups).reshape(out, inp)
    return w * scale.float().reshape(out, 1)


# --- linear_4bits: symmetric int4 per column --------------------------------------------------------


def int4_quantize(w: torch.Tensor):
    """w (rows, cols) -> (q (rows, cols) int8 in [-8, 7], scale (cols,) fp16); one scale per column."""
    w = w.detach().float()
    scale = (w.abs().amax(0) / 7).clamp_min(1e-6).half()
    q = torch.clamp(torch.round(w / scale.float()), -8, 7).to(torch.int8)
    return q, scale


def int4_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()


# --- error measures ---------------------------------------------------------------------------------


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||w - w_hat|| / ||w|| (Frobenius)."""
    w, w_hat = w.detach().float(), w_hat.detach().float()
    return float((w - w_hat).norm() / w.norm().clamp_min(1e-12))
