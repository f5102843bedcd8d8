"""The stats pass of the fast path: per-channel count, mean and biased variance.

Two-pass and exact to rounding: the mean is a per-channel (weighted) sum, the variance sums the
squares of ``x - mean`` formed a cache-sized block at a time, so no full-size temporary is made;
small float inputs take one ``torch.var_mean`` (Welford's update, accumulated in float64), where
a dozen small ops would cost more than the data. 16-bit inputs take ATen's statistics kernel
where it fits (also for per-example weights of NCHW inputs, row by row, and for ghost batches of
channels_last inputs, slice by slice) and are otherwise upcast one block at a time. The sums and
blocks are :mod:`batchnorm._reductions`; the readable statement of the same moments is
:func:`batchnorm._moments.compute_moments`.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch

from batchnorm import _thresholds
from batchnorm._aten import aten_input, aten_slices
from batchnorm._moments import accumulation_dtype, no_nan_divide, weight_total, weighted
from batchnorm._reductions import (
    blocked_channel_sum,
    channel_sum,
    channel_sum_of_squares,
    combine_blocks,
    keep_shape,
    memory_order,
    upcast_blocks,
)
from batchnorm._types import Moments

__all__ = ["stats_pass"]


# ``mse_loss`` without reduction is ``(a - b) ** 2`` elementwise (``b`` broadcast), rounded as a
# subtraction then a multiplication are: one pass over the block where ``sub`` then ``mul_``
# make two (the stats pass measured 10-20% faster, bit-identical results).
_NO_REDUCTION = 0


def _centered_square(block: torch.Tensor, mean: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    """``(block - mean) ** 2`` into ``out``, in one elementwise pass."""
    return torch.ops.aten.mse_loss.out(block, mean, _NO_REDUCTION, out=out)


def stats_pass(
    x: torch.Tensor, axes: Sequence[int], weights: torch.Tensor | None = None
) -> Moments:
    """The stats pass: per-channel count, mean and biased variance, two-pass, without a graph.

    The mean is a per-channel sum; the variance sums ``(x - mean) ** 2``, formed a cache-sized
    block at a time, so no full-size temporary is made; small float inputs (at most
    ``SMALL_INPUT_ELEMENTS``) take one ``torch.var_mean`` instead. 16-bit inputs take ATen's
    statistics kernel or blocks upcast one at a time. ``weights`` (broadcastable to ``x``)
    give weighted moments. Matches :func:`batchnorm._moments.compute_moments` (the readable
    statement) to rounding.

    Example:
        >>> moments = stats_pass(torch.tensor([[1.0, 10.0], [3.0, 30.0]]), [1])
        >>> moments.mean.tolist(), moments.var.round(decimals=4).tolist()
        ([[2.0, 20.0]], [[1.0, 100.0]])
    """
    with torch.no_grad():
        acc = accumulation_dtype(x.dtype)
        reduce_dims = [d for d in range(x.dim()) if d not in axes]
        if x.dtype != acc:
            if weights is None:
                moments = _native_moments(x, axes, reduce_dims, acc)
                moments = moments or _slice_moments(x, axes, reduce_dims, acc)
            else:
                weights = weights.to(acc)
                moments = _native_row_moments(x, weights, axes, reduce_dims, acc)
                moments = moments or _slice_moments(x, axes, reduce_dims, acc, weights)
            return moments or _upcast_moments(x, weights, axes, reduce_dims, acc)
        xs = x.to(acc)
        count = weight_total(weights, x.shape, reduce_dims).to(acc)
        if weights is None and 0 < xs.numel() <= _thresholds.SMALL_INPUT_ELEMENTS:
            var, mean = torch.var_mean(xs, dim=reduce_dims, correction=0, keepdim=True)
        elif weights is None:
            mean = channel_sum(xs, axes) / count
            var = blocked_channel_sum(_centered_square, axes, xs, mean) / count
        else:
            weights = weights.to(acc)
            mean = no_nan_divide(_weighted_channel_sum(axes, xs, weights), count)
            var = no_nan_divide(_weighted_channel_sum(axes, xs, weights, mean), count)
            count = count.expand_as(mean)
    return Moments(count=count, mean=mean, var=var)


def _native_moments(
    x: torch.Tensor, axes: Sequence[int], reduce_dims: Sequence[int], acc: torch.dtype
) -> Moments | None:
    """Moments of a 16-bit ``x`` from ATen's statistics kernel, or None without a block view.

    ``aten.batch_norm_update_stats`` reads the 16-bit input twice (mean, then centred squares)
    and accumulates in float32 when handed float32 running statistics (throw-away buffers,
    left unchanged by momentum 0). Its accumulation error, measured against float64 at most
    ``5e-4`` of the standard deviation for the mean and ``2e-4`` relative for the variance on
    (32, 64, 56, 56) inputs offset by 100, is below the resolution of the 16-bit input itself.
    """
    presented = aten_input(x, axes)
    if presented is None:
        return None
    block = presented[0]
    keep = keep_shape(x, axes)
    channels = prod(keep)
    unused = torch.zeros(channels, dtype=acc, device=x.device)
    mean, var = torch.ops.aten.batch_norm_update_stats(block, unused, unused.clone(), 0.0)
    count = weight_total(None, x.shape, reduce_dims).to(acc)
    return Moments(count=count, mean=mean.view(keep), var=var.view(keep))


def _slice_moments(
    x: torch.Tensor,
    axes: Sequence[int],
    reduce_dims: Sequence[int],
    acc: torch.dtype,
    weights: torch.Tensor | None = None,
) -> Moments | None:
    r"""(Weighted) moments of a 16-bit ``x`` from ATen's statistics of its slices.

    For inputs without a block view whose slices have one (:func:`batchnorm._aten.aten_slices`:
    ghost batches of channels_last inputs), and for weights constant within each slice
    (per-example weights of channels_last inputs, cut into examples). Each slice ``s`` gets its
    mean ``m_s`` and biased variance ``v_s`` from ATen's kernel as in :func:`_native_moments`,
    with no upcast copies, and the equally large slices of a group combine exactly with their
    weights ``w_s`` (1 without weights):

    .. math::

        \mu = \frac{\sum_s w_s m_s}{\sum_s w_s}, \quad
        \sigma^2 = \frac{\sum_s w_s \left(v_s + (m_s - \mu)^2\right)}{\sum_s w_s}

    Zero-weight slices contribute exactly 0 (:func:`batchnorm._moments.weighted`). None
    without such slices, or when the weights vary within a slice.
    """
    sliced = aten_slices(x, axes, regroup=weights is None)
    if sliced is None:
        return None
    slice_weights = None
    if weights is not None:
        if not sliced.constant_within(weights):
            return None
        keep = keep_shape(x, axes)
        per_kept = weights.expand([max(w, k) for w, k in zip(weights.shape, keep, strict=True)])
        slice_weights = sliced.per_slice(per_kept)
        total = sliced.kept_shaped(slice_weights)
    blocks = sliced.present(sliced.laid_out(x))
    unused = torch.zeros(sliced.channels, dtype=acc, device=x.device)
    parts = [
        torch.ops.aten.batch_norm_update_stats(blocks[i], unused, unused.clone(), 0.0)
        for i in range(sliced.count)
    ]

    def pooled(table: torch.Tensor) -> torch.Tensor:  # (slices, channels) -> per kept index
        if slice_weights is None:  # equally large slices: the plain mean
            return sliced.kept_shaped(table, mean=True)
        return no_nan_divide(sliced.kept_shaped(weighted(table, slice_weights)), total)

    means = torch.stack([mean for mean, _ in parts])
    mean = pooled(means)
    var = pooled(torch.stack([var for _, var in parts]) + (means - sliced.per_slice(mean)) ** 2)
    count = weight_total(weights, x.shape, reduce_dims).to(acc)
    return Moments(count=count if weights is None else count.expand_as(mean), mean=mean, var=var)


def _native_row_moments(
    x: torch.Tensor,
    weights: torch.Tensor,
    axes: Sequence[int],
    reduce_dims: Sequence[int],
    acc: torch.dtype,
) -> Moments | None:
    r"""Weighted moments of a 16-bit ``x`` from ATen's statistics of its weighted rows.

    Per-example weights (``batch_weights``) are constant along the rows of an NCHW input:
    ATen's statistics kernel gives each row ``r`` (each example and channel) its mean ``m_r``
    and biased variance ``v_r`` from the 16-bit input in float32 (:func:`_native_moments`),
    and the rows combine exactly:

    .. math::

        \mu = \frac{\sum_r w_r m_r}{\sum_r w_r}, \quad
        \sigma^2 = \frac{\sum_r w_r \left(v_r + (m_r - \mu)^2\right)}{\sum_r w_r}

    Zero-weight rows contribute exactly 0 (:func:`batchnorm._moments.weighted`). None unless
    the weights are constant along some reduced dimensions, vary along the others, and the
    kept and varying dimensions together have a block view.
    """
    varying = _varying_dims(weights, x, reduce_dims)
    if not varying:
        return None
    row_axes = sorted([*axes, *varying])
    within_rows = [d for d in reduce_dims if d not in varying]
    rows = _native_moments(x, row_axes, within_rows, acc)
    if rows is None:
        return None
    row_weights = weights.expand_as(rows.mean)
    total = channel_sum(row_weights, axes)
    mean = no_nan_divide(channel_sum(weighted(rows.mean, row_weights), axes), total)
    spread = rows.var + (rows.mean - mean) ** 2
    var = no_nan_divide(channel_sum(weighted(spread, row_weights), axes), total)
    count = weight_total(weights, x.shape, reduce_dims).to(acc)
    return Moments(count=count.expand_as(mean), mean=mean, var=var)


def _upcast_moments(
    x: torch.Tensor,
    weights: torch.Tensor | None,
    axes: Sequence[int],
    reduce_dims: Sequence[int],
    acc: torch.dtype,
) -> Moments:
    r"""(Weighted) moments of a 16-bit ``x`` in ``acc``, in one pass upcasting a block at a time.

    For weights, masks and layouts without a block view; no full-size float32 copy of ``x`` is
    made. Each block is upcast once; its (weighted) count ``n_b``, mean ``m_b`` and centred
    sum of squares ``M_b`` come from the ``acc`` sums while it is in cache (two-pass within the
    block), and the blocks combine exactly (Chan, Golub and LeVeque):

    .. math::

        n = \sum n_b, \quad \mu = \frac{1}{n} \sum n_b m_b, \quad
        \sigma^2 = \frac{1}{n} \sum \left(M_b + n_b (m_b - \mu)^2\right)

    Blocks along a kept dimension hold different channels and are concatenated instead.
    """
    counts, means, squares = [], [], []
    for _, block, sliced in upcast_blocks(x, acc, [] if weights is None else [weights]):
        if weights is None:
            count = weight_total(None, block.shape, reduce_dims).to(acc)
            mean = channel_sum(block, axes) / count
            squares.append(channel_sum_of_squares(block.sub_(mean), axes))
        else:
            count = weight_total(sliced[0], block.shape, reduce_dims).to(acc)
            mean = no_nan_divide(_weighted_channel_sum(axes, block, sliced[0]), count)
            squares.append(_weighted_channel_sum(axes, block, sliced[0], mean))
        counts.append(count.expand_as(mean))
        means.append(mean)
    dim = memory_order(x)[0]
    count = combine_blocks(counts, dim, axes)
    if len(means) == 1 or dim in axes:
        mean, total_squares = combine_blocks(means, dim, axes), combine_blocks(squares, dim, axes)
    else:
        weighted_means = [n * m for n, m in zip(counts, means, strict=True)]
        mean = no_nan_divide(combine_blocks(weighted_means, dim, axes), count)
        parts = zip(squares, counts, means, strict=True)
        spreads = [block_squares + n * (m - mean) ** 2 for block_squares, n, m in parts]
        total_squares = combine_blocks(spreads, dim, axes)
    var = no_nan_divide(total_squares, count)
    if weights is None:
        count = weight_total(None, x.shape, reduce_dims).to(acc)
    return Moments(count=count, mean=mean, var=var)


def _weighted_deviation_square(
    values: torch.Tensor, weights: torch.Tensor, mean: torch.Tensor, *, out: torch.Tensor
) -> torch.Tensor:
    return _centered_square(values, mean, out=out).mul_(weights)


def _safe_weighted_deviation_square(
    values: torch.Tensor, weights: torch.Tensor, mean: torch.Tensor, *, out: torch.Tensor
) -> torch.Tensor:
    return weighted(_centered_square(values, mean, out=out), weights)


def _safe_weighted(
    values: torch.Tensor, weights: torch.Tensor, *, out: torch.Tensor
) -> torch.Tensor:
    return torch.where(weights != 0, torch.mul(values, weights, out=out), 0.0)


def _weighted_channel_sum(
    axes: Sequence[int],
    values: torch.Tensor,
    weights: torch.Tensor,
    mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-channel sum of ``weights * values``, or of ``weights * (values - mean) ** 2``.

    The deviations are formed a block at a time in cache, never as a full-size tensor. Plain
    products first; only if the sum is not finite (a NaN or inf somewhere) is it redone with
    :func:`batchnorm._moments.weighted`, which makes zero-weight positions contribute exactly
    0, so masked-out garbage never reaches the statistics either way.
    """
    rows = _weighted_rows(axes, values, weights, mean)
    if rows is not None:
        return rows
    operands = (values, weights) if mean is None else (values, weights, mean)
    plain = torch.mul if mean is None else _weighted_deviation_square
    total = blocked_channel_sum(plain, axes, *operands)
    if bool(torch.isfinite(total).all()):
        return total
    safe = _safe_weighted if mean is None else _safe_weighted_deviation_square
    return blocked_channel_sum(safe, axes, *operands)


def _weighted_rows(
    axes: Sequence[int],
    values: torch.Tensor,
    weights: torch.Tensor,
    mean: torch.Tensor | None,
) -> torch.Tensor | None:
    """The weighted channel sum with the dimensions where the weights are constant summed first.

    Per-example weights (``batch_weights``, or a mask constant over some dimensions) share one
    weight across whole rows of the input: sum those rows (or their squared deviations) with
    the unweighted kernels, then weight the much smaller table. None when the weights vary
    along every reduced dimension.
    """
    reduce_dims = [d for d in range(values.dim()) if d not in axes]
    varying = _varying_dims(weights, values, reduce_dims)
    if varying is None:
        return None
    kept = sorted([*axes, *varying])
    if mean is None:
        rows = channel_sum(values, kept)
    else:
        rows = blocked_channel_sum(_centered_square, kept, values, mean)
    return channel_sum(weighted(rows, weights), axes)


def _varying_dims(
    weights: torch.Tensor, x: torch.Tensor, reduce_dims: Sequence[int]
) -> list[int] | None:
    """The reduced dimensions the weights vary along, or None if they vary along every one.

    The weights are constant along the others, so rows of ``x`` over those can be summed
    before weighting. None too when ``weights`` has a lower rank than ``x``.
    """
    if weights.dim() != x.dim():
        return None
    varying = [d for d in reduce_dims if weights.shape[d] != 1]
    return None if len(varying) == len(reduce_dims) else varying
