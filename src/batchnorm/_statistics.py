"""The stats pass of the fast path: per-channel count, mean and biased variance.

Two-pass and exact to rounding: the mean is a per-channel (weighted) sum, the variance sums the
squares of ``x - mean`` formed a cache-sized block at a time, so no full-size temporary is made
(corrected for the first mean's error where a channel's offset is large, unweighted float inputs);
small float inputs take one ``torch.var_mean`` (Welford's update, accumulated in float64), where
a dozen small ops would cost more than the data; the mean is taken from a float64 total of the
float32 partial sums. 16-bit inputs take ATen's statistics kernel where it fits (with the rows of
channels-innermost inputs folded into its channels, for per-example weights of NCHW inputs row
by row, and for ghost batches of channels_last inputs slice by slice) and are otherwise upcast
one block at a time. The sums and
blocks are :mod:`batchnorm._reductions`; the readable statement of the same moments is
:func:`batchnorm._moments.compute_moments`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from batchnorm import _thresholds
from batchnorm._aten import aten_input, aten_slices, folded_rows
from batchnorm._moments import accumulation_dtype, no_nan_divide, weight_total, weighted
from batchnorm._nonfinite import all_finite
from batchnorm._plan import Plan, plan_for, varying_dims
from batchnorm._reductions import (
    blocked_channel_sum,
    blocks,
    channel_sum,
    channel_sum_of_squares,
    combine_blocks,
    keep_shape,
    memory_order,
    scratch_space,
    upcast_blocks,
)
from batchnorm._types import Moments

__all__ = ["STATS_ROUTES", "stats_pass"]


# ``mse_loss`` without reduction is ``(a - b) ** 2`` elementwise (``b`` broadcast), rounded as a
# subtraction then a multiplication are: one pass over the block where ``sub`` then ``mul_``
# make two (the stats pass measured 10-20% faster, bit-identical results).
_NO_REDUCTION = 0


def _centered_square(block: torch.Tensor, mean: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    """``(block - mean) ** 2`` into ``out``, in one elementwise pass."""
    return torch.ops.aten.mse_loss.out(block, mean, _NO_REDUCTION, out=out)


def stats_pass(
    x: torch.Tensor,
    axes: Sequence[int],
    weights: torch.Tensor | None = None,
    plan: Plan | None = None,
) -> Moments:
    """The stats pass: per-channel count, mean and biased variance, two-pass, without a graph.

    The mean is a per-channel sum; the variance sums ``(x - mean) ** 2``, formed a cache-sized
    block at a time, so no full-size temporary is made; small float inputs (at most
    ``SMALL_INPUT_ELEMENTS``) take one ``torch.var_mean`` instead. 16-bit inputs take ATen's
    statistics kernel or blocks upcast one at a time. ``weights`` (broadcastable to ``x``)
    give weighted moments. The route is ``plan.stats`` (:func:`batchnorm._plan.plan_for`
    when no plan is given; :data:`STATS_ROUTES`). Matches
    :func:`batchnorm._moments.compute_moments` (the readable statement) to rounding.

    Example:
        >>> moments = stats_pass(torch.tensor([[1.0, 10.0], [3.0, 30.0]]), [1])
        >>> moments.mean.tolist(), moments.var.round(decimals=4).tolist()
        ([[2.0, 20.0]], [[1.0, 100.0]])
    """
    plan = plan or plan_for(x, axes, weights)
    with torch.no_grad():
        acc = accumulation_dtype(x.dtype)
        weights = None if weights is None else weights.to(acc)
        reduce_dims = [d for d in range(x.dim()) if d not in axes]
        return STATS_ROUTES[plan.stats](x, tuple(axes), weights, reduce_dims, acc)


def _var_mean(
    x: torch.Tensor,
    axes: tuple[int, ...],
    weights: None,
    reduce_dims: list[int],
    acc: torch.dtype,
) -> Moments:
    """One ``torch.var_mean`` (Welford, float64 accumulation): small float inputs."""
    count = weight_total(None, x.shape, reduce_dims).to(acc)
    var, mean = torch.var_mean(x, dim=reduce_dims, correction=0, keepdim=True)
    return Moments(count=count, mean=mean, var=var)


def _two_pass(
    x: torch.Tensor,
    axes: tuple[int, ...],
    weights: None,
    reduce_dims: list[int],
    acc: torch.dtype,
) -> Moments:
    r"""The channel sum, then the blocked sum of centred squares: float inputs.

    The first pass's mean ``m`` is summed without a shift and rounded, so its error
    ``\delta`` grows with the channels' offset, and the centred squares sum to
    ``n (\sigma^2 + \delta^2)``: at an offset of 1e5 standard deviations float32's
    ``\delta^2`` was 3e-4 of the variance, 20 times native's Welford error. Where a channel's
    offset makes that more than about a unit of roundoff (:func:`_offset_is_large`), the
    second pass is Chan, Golub and LeVeque's corrected one instead (:func:`_corrected`),
    which costs 7% (NCHW) to 19% (channels innermost) more than this one.
    """
    count = weight_total(None, x.shape, reduce_dims).to(acc)
    # The mean from the float64 total (channel_sum), rounded once: half a unit of roundoff.
    mean = (channel_sum(x, axes, torch.float64) / count).to(acc)
    var = blocked_channel_sum(_centered_square, axes, x, mean) / count
    if _offset_is_large(mean, var):
        return _corrected(x, axes, count, mean)
    return Moments(count=count, mean=mean, var=var)


def _rescaled(x: torch.Tensor, axes: tuple[int, ...], moments: Moments) -> Moments:
    r"""``moments`` again from ``x`` scaled by a power of two, where its sums overflowed.

    Finite values whose squares (or sums) pass the dtype's range, such as float32 data spread
    by 1e18, make the two-pass sums infinite although the moments may be representable. With
    ``s = 2^{-e}``, ``e`` the exponent of ``max |x|``, the scaled copy's sums stay in range, and
    ``mean = mean(s x) / s``, ``var = var(s x) / s^2`` are exact (powers of two), infinite only
    where the variance itself is beyond the dtype. Reads two values on the host, on this rare
    path only (the CPU; elsewhere the moments stay as they are). Inputs holding NaN or Inf
    keep their moments (:mod:`batchnorm._nonfinite` decides what the update does).
    """
    if x.device.type != "cpu" or bool(all_finite(moments.mean, moments.var)):
        return moments
    largest = torch.linalg.vector_norm(x, float("inf"))  # max |x|
    if not math.isfinite(float(largest)) or float(largest) == 0.0:
        return moments
    exponent = int(torch.frexp(largest).exponent)
    scaled = _corrected(x * 2.0**-exponent, axes, moments.count, None)
    up = 2.0**exponent  # in float64: the factor (and the square) may pass float32's range
    mean, var = (
        (t.double() * factor).to(t.dtype)
        for t, factor in ((scaled.mean, up), (scaled.var, up * up))
    )
    return Moments(count=moments.count, mean=mean, var=var)


def _offset_is_large(mean: torch.Tensor, var: torch.Tensor) -> bool:
    r"""Whether some channel's ``|mean| / \sigma`` exceeds ``OFFSET_LIMIT_SCALE / \sqrt{\epsilon}``.

    ``\epsilon`` is the dtype's machine epsilon: 724 for float32, where the first pass's
    ``\delta^2 / \sigma^2`` (``\delta`` about 3 roundoff units of the mean, measured) passes
    one unit of roundoff. True for NaN and for constant channels (``\sigma = 0``). Reads one
    value on the host on the CPU; on other devices True, without reading (the corrected pass
    always runs there).
    """
    if mean.numel() == 0:
        return False
    if mean.device.type != "cpu":
        return True
    limit = _thresholds.OFFSET_LIMIT_SCALE / math.sqrt(torch.finfo(mean.dtype).eps)
    # (+ 0 * var: NaN for an infinite variance, so the corrected pass, then the rescaled one.)
    ratio = torch.add(mean * torch.rsqrt(var), var, alpha=0)
    largest = torch.linalg.vector_norm(ratio, float("inf"))
    return not largest.item() <= limit


def _corrected(
    x: torch.Tensor, axes: tuple[int, ...], count: torch.Tensor, first: torch.Tensor | None
) -> Moments:
    r"""Moments from the corrected sums of ``d = x - m``, rescaled where they overflow.

    ``m`` is the first pass's mean (computed here when ``first`` is None); sums beyond the
    dtype's range are taken again from a rescaled copy (:func:`_rescaled`).

    .. math::

        \mu = m + \frac{\sum d}{n}, \quad
        \sigma^2 = \frac{\sum d^2}{n} - \left(\frac{\sum d}{n}\right)^2

    as accurate at every offset as at none (``tests/test_kernels.py``).
    """
    if first is None:
        first = channel_sum(x, axes) / count
    sum_d, sum_d2 = _centred_sums(x, axes, first)
    shift = sum_d / count
    var = torch.clamp_min(sum_d2 / count - shift * shift, 0.0)
    return _rescaled(x, axes, Moments(count=count, mean=first + shift, var=var))


def _centred_sums(
    x: torch.Tensor, axes: tuple[int, ...], mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``sum(x - mean)`` and ``sum((x - mean) ** 2)``, ``x - mean`` formed once a block.

    Each block of ``x`` is centred into a reused scratch buffer of its own (the squares'
    blocked sum may need the product buffer) that stays in cache, which both sums then read.
    """
    sums: list[torch.Tensor] = []
    squares: list[torch.Tensor] = []
    dims = set()
    for dim, (block, centre) in blocks(x, (x, mean)):
        centred = torch.sub(block, centre, out=scratch_space.like(block, block.dtype, "centred"))
        sums.append(channel_sum(centred, axes))
        squares.append(channel_sum_of_squares(centred, axes))
        dims.add(dim)
    (dim,) = dims  # the blocks' dimension
    return combine_blocks(sums, dim, axes), combine_blocks(squares, dim, axes)


def _weighted_moments(
    weighted_sum: Callable[..., torch.Tensor],
) -> Callable[..., Moments]:
    """The weighted moments of a float input from a weighted channel sum route.

    Two passes, and where a channel's offset is large a third over ``x - mean`` (a full-size
    temporary, on that rare path only) for the corrected variance of :func:`_corrected`.
    """

    def route(
        x: torch.Tensor,
        axes: tuple[int, ...],
        weights: torch.Tensor,
        reduce_dims: list[int],
        acc: torch.dtype,
    ) -> Moments:
        count = weight_total(weights, x.shape, reduce_dims).to(acc)
        mean = no_nan_divide(weighted_sum(axes, x, weights), count)
        var = no_nan_divide(weighted_sum(axes, x, weights, mean), count)
        if _offset_is_large(mean, var):  # correct for the mean's error (see _two_pass)
            shift = no_nan_divide(weighted_sum(axes, x - mean, weights), count)
            mean, var = mean + shift, torch.clamp_min(var - shift * shift, 0.0)
        return Moments(count=count.expand_as(mean), mean=mean, var=var)

    route.__doc__ = f"Weighted moments of a float input by :func:`{weighted_sum.__name__}`."
    return route


def _aten(
    x: torch.Tensor,
    axes: tuple[int, ...],
    weights: None,
    reduce_dims: list[int],
    acc: torch.dtype,
) -> Moments:
    """Moments of a 16-bit ``x`` that has a block view, from ATen's statistics kernel.

    ``aten.batch_norm_update_stats`` reads the 16-bit input twice (mean, then centred squares)
    and accumulates in float32 when handed float32 running statistics (throw-away buffers,
    left unchanged by momentum 0). Its accumulation error, measured against float64 at most
    ``5e-4`` of the standard deviation for the mean and ``2e-4`` relative for the variance on
    (32, 64, 56, 56) inputs offset by 100, is below the resolution of the 16-bit input itself.
    """
    block, _ = aten_input(x, axes)  # the plan checked that it has one
    keep = keep_shape(x, axes)
    mean, var = _kernel_moments(block, acc)
    count = weight_total(None, x.shape, reduce_dims).to(acc)
    return Moments(count=count, mean=mean.view(keep), var=var.view(keep))


def _kernel_moments(block: torch.Tensor, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ATen's per-channel mean and biased variance of ``block`` (channels on dimension 1).

    Accumulated in ``acc`` (float32 for 16-bit blocks): the kernel takes throw-away running
    statistics of that dtype, which momentum 0 leaves unchanged.
    """
    unused = torch.zeros(block.shape[1], dtype=acc, device=block.device)
    return torch.ops.aten.batch_norm_update_stats(block, unused, unused.clone(), 0.0)


def _aten_folded_rows(
    x: torch.Tensor,
    axes: tuple[int, ...],
    weights: None,
    reduce_dims: list[int],
    acc: torch.dtype,
) -> Moments:
    r"""Moments of a 16-bit ``x`` whose channels are innermost, from ATen's kernel on folded rows.

    ATen's statistics kernel for channels-innermost inputs sums each thread's share of rows
    one after another, and rounds worse the more rows there are (3-6x native's NCHW kernel
    on bfloat16 (32, 64, 56, 56) channels_last data). :func:`batchnorm._aten.folded_rows`
    hands it ``k`` rows side by side as ``k`` times the channels: one call, as in
    :func:`_aten`, whose ``k`` groups per channel are ``k`` times shorter. The groups hold
    equally many rows, so their means ``m_g`` and biased variances ``v_g`` combine exactly:

    .. math::

        \mu = \frac{1}{k} \sum_g m_g, \quad
        \sigma^2 = \frac{1}{k} \sum_g \left(v_g + (m_g - \mu)^2\right)

    within 2e-6 of float64 where the unfolded kernel was 4e-5 to 3e-4 off
    (``tests/test_kernels.py``).
    """
    view, k = folded_rows(x, axes)  # the plan checked that it folds
    means, variances = (t.view(k, -1) for t in _kernel_moments(view, acc))
    mean = means.mean(dim=0)
    spread = torch.sub(means, mean).square_().add_(variances)
    keep = keep_shape(x, axes)
    count = weight_total(None, x.shape, reduce_dims).to(acc)
    return Moments(count=count, mean=mean.view(keep), var=spread.mean(dim=0).view(keep))


def _aten_slices(
    x: torch.Tensor,
    axes: tuple[int, ...],
    weights: torch.Tensor | None,
    reduce_dims: list[int],
    acc: torch.dtype,
) -> Moments:
    r"""(Weighted) moments of a 16-bit ``x`` from ATen's statistics of its slices.

    For inputs without a block view whose slices have one (:func:`batchnorm._aten.aten_slices`:
    ghost batches of channels_last inputs; unweighted, slices of a regrouped copy when the
    examples are small), and for weights constant within each slice (per-example weights of
    channels_last inputs, cut into examples). Each slice ``s`` gets its mean ``m_s`` and biased
    variance ``v_s`` from ATen's kernel as in :func:`_aten`, with no upcast copies, and the
    equally large slices of a group combine exactly with their weights ``w_s`` (1 without
    weights):

    .. math::

        \mu = \frac{\sum_s w_s m_s}{\sum_s w_s}, \quad
        \sigma^2 = \frac{\sum_s w_s \left(v_s + (m_s - \mu)^2\right)}{\sum_s w_s}

    Zero-weight slices contribute exactly 0 (:func:`batchnorm._moments.weighted`).
    """
    sliced = aten_slices(x, axes, regroup=weights is None)
    slice_weights = total = None
    if weights is not None:
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


def _aten_rows(
    x: torch.Tensor,
    axes: tuple[int, ...],
    weights: torch.Tensor,
    reduce_dims: list[int],
    acc: torch.dtype,
) -> Moments:
    r"""Weighted moments of a 16-bit ``x`` from ATen's statistics of its weighted rows.

    Per-example weights (``batch_weights``) are constant along the rows of an NCHW input:
    ATen's statistics kernel gives each row ``r`` (each example and channel) its mean ``m_r``
    and biased variance ``v_r`` from the 16-bit input in float32 (:func:`_aten`), and the rows
    combine exactly:

    .. math::

        \mu = \frac{\sum_r w_r m_r}{\sum_r w_r}, \quad
        \sigma^2 = \frac{\sum_r w_r \left(v_r + (m_r - \mu)^2\right)}{\sum_r w_r}

    Zero-weight rows contribute exactly 0 (:func:`batchnorm._moments.weighted`). The plan
    takes it when the weights are constant along some reduced dimensions, vary along the
    others, and the kept and varying dimensions together have a block view.
    """
    varying = varying_dims(weights, x, reduce_dims) or []
    row_axes = tuple(sorted([*axes, *varying]))
    within_rows = [d for d in reduce_dims if d not in varying]
    rows = _aten(x, row_axes, None, within_rows, acc)
    row_weights = weights.expand_as(rows.mean)
    total = channel_sum(row_weights, axes)
    mean = no_nan_divide(channel_sum(weighted(rows.mean, row_weights), axes), total)
    spread = rows.var + (rows.mean - mean) ** 2
    var = no_nan_divide(channel_sum(weighted(spread, row_weights), axes), total)
    count = weight_total(weights, x.shape, reduce_dims).to(acc)
    return Moments(count=count.expand_as(mean), mean=mean, var=var)


def _upcast_blocks(
    x: torch.Tensor,
    axes: tuple[int, ...],
    weights: torch.Tensor | None,
    reduce_dims: list[int],
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
    Weighted, on the CPU, the blocks take the plain products and the moments are checked once
    at the end, taken again with products zeroed where a weight is 0 only when they are not
    finite (:func:`_weighted_blocks`; a check per block cost 16-33% of a (32, 64, 56, 56)
    bfloat16 pass with a mask); elsewhere the zeroed products are the only ones.
    """
    on_cpu = x.device.type == "cpu"
    moments = _upcast_block_moments(x, axes, weights, reduce_dims, acc, zeroed=not on_cpu)
    if weights is not None and on_cpu and not bool(all_finite(moments.mean, moments.var)):
        moments = _upcast_block_moments(x, axes, weights, reduce_dims, acc, zeroed=True)
    return moments


def _upcast_block_moments(
    x: torch.Tensor,
    axes: tuple[int, ...],
    weights: torch.Tensor | None,
    reduce_dims: list[int],
    acc: torch.dtype,
    *,
    zeroed: bool,
) -> Moments:
    """:func:`_upcast_blocks`' moments, weighted products zeroed where a weight is 0 or not."""
    counts, means, squares = [], [], []
    for _, block, sliced in upcast_blocks(x, acc, [] if weights is None else [weights]):
        if weights is None:  # the CPU count moved to the device: it is expanded below
            count = weight_total(None, block.shape, reduce_dims).to(device=x.device, dtype=acc)
            mean = channel_sum(block, axes) / count
            squares.append(channel_sum_of_squares(block.sub_(mean), axes))
        else:
            count = weight_total(sliced[0], block.shape, reduce_dims).to(acc)
            total = _weighted_blocks(axes, block, sliced[0], zeroed=zeroed)
            mean = no_nan_divide(total, count)
            squares.append(_weighted_blocks(axes, block, sliced[0], mean, zeroed=zeroed))
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


def _weighted_product(
    values: torch.Tensor, weights: torch.Tensor, *, out: torch.Tensor
) -> torch.Tensor:
    """``values * weights``, exactly 0 where a weight is 0 (masked-out NaN or inf included)."""
    return torch.mul(values, weights, out=out).masked_fill_(weights == 0, 0.0)


def _weighted_deviation_square(
    values: torch.Tensor, weights: torch.Tensor, mean: torch.Tensor, *, out: torch.Tensor
) -> torch.Tensor:
    """``weights * (values - mean) ** 2``, exactly 0 where a weight is 0."""
    product = _centered_square(values, mean, out=out).mul_(weights)
    return product.masked_fill_(weights == 0, 0.0)


def _plain_deviation_square(
    values: torch.Tensor, weights: torch.Tensor, mean: torch.Tensor, *, out: torch.Tensor
) -> torch.Tensor:
    return _centered_square(values, mean, out=out).mul_(weights)


def _weighted_blocks(
    axes: Sequence[int],
    values: torch.Tensor,
    weights: torch.Tensor,
    mean: torch.Tensor | None = None,
    *,
    zeroed: bool | None = None,
) -> torch.Tensor:
    """Per-channel sum of ``weights * values``, or of ``weights * (values - mean) ** 2``.

    The products are formed a block at a time in cache, never as a full-size tensor, and
    masked-out garbage (NaN or inf under a zero weight) never reaches the statistics: the
    products are zeroed where a weight is 0 (:func:`batchnorm._moments.weighted`). By default,
    on the CPU the plain products come first and only a sum that is not finite is redone so
    (reading it costs nothing there: the zeroing costs a third more); elsewhere the zeroed
    products are the only ones, so that no value is read on the host. ``zeroed`` True or
    False forces either product, for a caller that checks the result itself.
    """
    operands = (values, weights) if mean is None else (values, weights, mean)
    plain = torch.mul if mean is None else _plain_deviation_square
    if zeroed is None and values.device.type == "cpu":
        total = blocked_channel_sum(plain, axes, *operands)
        if bool(torch.isfinite(total).all()):
            return total
    if zeroed is False:
        return blocked_channel_sum(plain, axes, *operands)
    zeroing = _weighted_product if mean is None else _weighted_deviation_square
    return blocked_channel_sum(zeroing, axes, *operands)


def _weighted_rows(
    axes: Sequence[int],
    values: torch.Tensor,
    weights: torch.Tensor,
    mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weighted channel sum with the dimensions where the weights are constant summed first.

    Per-example weights (``batch_weights``, or a mask constant over some dimensions) share one
    weight across whole rows of the input: sum those rows (or their squared deviations) with
    the unweighted kernels, then weight the much smaller table. The plan takes it when the
    weights are constant along some reduced dimension.
    """
    reduce_dims = [d for d in range(values.dim()) if d not in axes]
    kept = sorted([*axes, *(varying_dims(weights, values, reduce_dims) or [])])
    if mean is None:
        rows = channel_sum(values, kept)
    else:
        rows = blocked_channel_sum(_centered_square, kept, values, mean)
    return channel_sum(weighted(rows, weights), axes)


# The statistics routes a plan names (``Plan.stats``), each (x, axes, weights in the
# accumulation dtype or None, reduced dimensions, accumulation dtype) -> Moments.
STATS_ROUTES: dict[str, Callable[..., Moments]] = {
    "var_mean": _var_mean,
    "two_pass": _two_pass,
    "weighted_rows": _weighted_moments(_weighted_rows),
    "weighted_blocks": _weighted_moments(_weighted_blocks),
    "aten": _aten,
    "aten_folded_rows": _aten_folded_rows,
    "aten_slices": _aten_slices,
    "aten_rows": _aten_rows,
    "aten_weighted_slices": _aten_slices,
    "upcast_blocks": _upcast_blocks,
}
