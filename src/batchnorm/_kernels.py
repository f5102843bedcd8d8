"""The fast path (``fused=None`` or ``True``): two heavy passes forward, two backward.

The passes are named by role, as PyTorch names its SyncBatchNorm kernels:

1. :func:`stats_pass` (stats): mean, then biased variance of the centred input, its squares
   formed a cache-sized block at a time; no graph.
2. :class:`NormalizeApply` forward (apply): ``y = x_hat * A + B`` with per-channel ``A`` and
   ``B``, one elementwise pass over ``x``: ``x * a + (B - mean * a)`` with ``a = invstd * A``,
   ATen's and TensorFlow's folded form, while the mean lies within a few standard deviations
   of zero (see :func:`_apply` for the rounding).
3. backward reduce: ``sum(dy)`` and ``sum(dy * (x - mean))`` per channel.
4. backward apply: ``dx = A * invstd * (dy - sum(dy) / n - x_hat * sum(dy * x_hat) / n)``.

Passes 3 and 4 are ATen's ``native_batch_norm_backward`` wherever the layout fits; with
weights or a mask, pass 3 is still ATen's (the sums are unweighted) and pass 4 is
:func:`_input_gradient`, which carries the weights a cache-sized block at a time. Where the
input has no block view (ghost batches of channels_last inputs), pass 3 is ATen's kernel slice
by slice (:func:`_slice_sums`), or blocked for small slices.

Only ``x`` and per-channel vectors are saved for backward. ``A`` and ``B`` are ordinary tensors
built by autograd from gamma, beta and whatever variant composes into them (see
:mod:`batchnorm._affine`), so this module never changes when a variant is added: the function
returns ``dA = sum(dy * x_hat)`` and ``dB = sum(dy)`` and autograd carries them on.

The stats pass is :mod:`batchnorm._statistics`; ATen's kernels are presented the input by
:mod:`batchnorm._aten`; the per-channel sums, and the cache-sized blocks that keep products
out of full-size temporaries, are :mod:`batchnorm._reductions`.

16-bit inputs (bfloat16, float16) are never copied whole to float32. Unweighted, with a block
view, ATen's kernels do both forward passes (statistics accumulated in float32, the apply 16-bit
in and out), and slice by slice without one (ghost batches of channels_last inputs: an example
a slice; where examples are too small, the statistics and the backward sums take a ghost group
a slice of a regrouped copy, and the apply upcasts blocks);
per-example weights take ATen's statistics of each row (NCHW) or example (channels_last); with
a mask, or slices too small, blocks of the input are upcast one at a time into a reused float32
scratch and go through the float32 code, as the weighted backward apply always is.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from math import prod

import torch

from batchnorm import _thresholds
from batchnorm._affine import invstd
from batchnorm._aten import aten_input, aten_slices, aten_vector, native_inference
from batchnorm._axes import broadcasts_to
from batchnorm._moments import compute_moments, no_nan_divide, weight_total
from batchnorm._reductions import (
    block_view_sizes,
    blocked_channel_sum,
    blocks,
    channel_sum,
    combine_blocks,
    memory_order,
    scratch_space,
    upcast_blocks,
    viewed_like,
)

__all__ = ["NormalizeApply", "aten_applies_faster", "folded_apply", "scale_and_shift"]


class NormalizeApply(torch.autograd.Function):
    r"""``y = (x - mean) * invstd * scale + shift`` with the (weighted) batch-norm gradient.

    ``mean`` and ``invstd`` must be the batch moments of ``x`` over all dimensions but ``axes``,
    weighted by ``weights`` if given (from :func:`stats_pass`): the backward differentiates
    through the moments as functions of ``x``, which is what makes this batch norm rather than
    a fixed affine map. ``scale`` and ``shift``
    broadcast against ``x`` (per channel, or any broadcastable shape, e.g. a per-element
    ``adjustment``) and receive ``sum(dy * x_hat)`` and ``sum(dy)`` reduced to their shapes.
    ``weights`` are constants (no gradient). The output is one pass over ``x``
    (:func:`_apply`).

    .. math::

        g = dy \cdot scale, \quad
        dx = invstd \left(g - \frac{w}{W}\sum g - \hat{x} \frac{w}{W} \sum g \hat{x}\right)

    with ``w / W = 1 / n`` unweighted.

    Numerics:
        The variance is two-pass (no cancellation at any offset); the apply folds the mean
        into the shift as TensorFlow does only while that adds at most a few units of
        roundoff, and is centred beyond (:func:`_apply`).

    Twice differentiable: when the backward is itself recorded (``create_graph=True``, as
    gradient penalties and MAML do), it is the reference path's, recomputed from ``x``
    (:func:`_recorded_backward`); ``epsilon`` (that of ``invstd``) is for that recomputation.

    Example:
        >>> from batchnorm._statistics import stats_pass
        >>> x = torch.tensor([[1.0], [3.0]], requires_grad=True)
        >>> moments = stats_pass(x, [1])
        >>> one, zero = torch.ones(1, 1), torch.zeros(1, 1)
        >>> invstd = torch.rsqrt(moments.var)
        >>> y = NormalizeApply.apply(x, None, moments.mean, invstd, one, zero, (1,), 0.0)
        >>> y.flatten().round(decimals=4).tolist()
        [-1.0, 1.0]
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weights: torch.Tensor | None,
        mean: torch.Tensor,
        invstd: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        axes: tuple[int, ...],
        epsilon: float,
    ) -> torch.Tensor:
        """The apply pass: one multiply-add over ``x``."""
        ctx.save_for_backward(x, weights, mean, invstd, scale)
        ctx.axes = axes
        ctx.epsilon = epsilon
        ctx.shapes = (scale.shape, shift.shape)
        ctx.needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[4], ctx.needs_input_grad[5])
        x_scale = invstd * scale
        per_kept = broadcasts_to(mean.shape, x_scale.shape, shift.shape)
        # The fold check synchronises: taken once here and kept for the backward apply.
        ctx.within_limit = None
        if per_kept and x.dtype == mean.dtype:
            ctx.within_limit = _folds_within_limit(mean, invstd)
        fold = per_kept and (x.dtype != mean.dtype or ctx.within_limit)
        return _apply(x, mean, x_scale, shift, axes, fold)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor):  # type: ignore[override]
        """Backward reduce, then backward apply: ATen's kernel where it fits.

        Recorded (``create_graph=True``), :func:`_recorded_backward` instead.
        """
        if torch.is_grad_enabled():
            return _recorded_backward(ctx, dy)
        x, weights, mean, invstd, scale = ctx.saved_tensors
        need_x, need_scale, need_shift = ctx.needs
        scale_shape, shift_shape = ctx.shapes
        result = None
        if broadcasts_to(mean.shape, scale_shape, shift_shape):
            if dy.stride() != x.stride():  # once, for every pass below to read alike
                dy = torch.empty_like(x, dtype=dy.dtype).copy_(dy)
            # Per channel, possibly shared across ghost groups: the kernels take the scale
            # expanded to every kept index, and their sums fold back onto the shared shape.
            per_kept_scale = scale.expand(mean.shape)
            # Unweighted, ATen's kernel does it all; weighted, only its (unweighted) sums.
            needs = ctx.needs if weights is None else (False, True, True)
            result = _native_backward(x, dy, mean, invstd, per_kept_scale, ctx.axes, needs)
            if result is None:  # no block view: ATen's sums slice by slice, or a block at a time
                result = _slice_sums(x, dy, mean, invstd, ctx.axes)
            if result is None:
                result = _blocked_sums(x, dy, mean, invstd, ctx.axes)
            if result[0] is None and need_x:  # the apply that carries the weights
                _, sum_dy_x_hat, sum_dy = result
                within_limit = ctx.within_limit
                if within_limit is None:
                    within_limit = _folds_within_limit(mean, invstd)
                dx = _input_gradient(
                    x,
                    dy,
                    weights,
                    mean,
                    invstd,
                    per_kept_scale,
                    sum_dy,
                    sum_dy_x_hat,
                    ctx.axes,
                    within_limit,
                )
                result = dx, sum_dy_x_hat, sum_dy
        dx, dscale, dshift = result or _composite_backward(
            x, dy, weights, mean, invstd, scale, shift_shape, ctx.axes
        )
        dscale = dscale.sum_to_size(scale_shape) if dscale is not None else None
        dshift = dshift.sum_to_size(shift_shape) if dshift is not None else None
        return (
            dx if need_x else None,
            None,
            None,
            None,
            dscale if need_scale else None,
            dshift if need_shift else None,
            None,
            None,
        )


def _recorded_backward(
    ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """The backward as a differentiable function of ``x``, ``scale`` and ``dy``.

    For a backward that is itself recorded (``create_graph=True``): the forward is recomputed
    from ``x`` in the reference path's ops, the moments included
    (:func:`batchnorm._moments.compute_moments`), and differentiated with ``create_graph``, so
    a second backward sees how the moments depend on ``x``. ``shift`` only adds ``sum(dy)``.
    """
    x, weights, mean, _, scale = ctx.saved_tensors
    need_x, need_scale, need_shift = ctx.needs
    _, shift_shape = ctx.shapes
    acc = mean.dtype
    wanted = [t for t, needed in ((x, need_x), (scale, need_scale)) if needed]
    grads: list[torch.Tensor | None] = []
    if wanted:
        reduce_dims = [d for d in range(x.dim()) if d not in ctx.axes]
        moments = compute_moments(x, reduce_dims, weights)
        x_hat = (x.to(acc) - moments.mean) * invstd(moments.var, ctx.epsilon)
        y = x_hat * scale
        grads = list(torch.autograd.grad(y, wanted, dy.to(acc), create_graph=True))
    dx = grads.pop(0).to(x.dtype) if need_x else None
    dscale = grads.pop(0) if need_scale else None
    dshift = dy.to(acc).sum_to_size(shift_shape) if need_shift else None
    return dx, None, None, None, dscale, dshift, None, None


def folded_apply(
    x: torch.Tensor, axes: tuple[int, ...], scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    r"""``y = x \cdot scale + shift`` in one pass, ``scale`` and ``shift`` per kept index.

    Inference's whole pass (the moving statistics folded in by
    :func:`batchnorm._affine.inference_affine`) and training's folded apply (:func:`_apply`).
    Where :func:`aten_applies_faster` (and for float inputs from ``ATEN_APPLY_ELEMENTS``
    elements), ATen's inference kernel given :func:`_unit_statistics` (16-bit in and out with
    float32 arithmetic); elsewhere :func:`scale_and_shift` (float32 ``(4096, 256)``: 0.17 ms
    against ATen's 0.26 ms here, ``benchmarks/pass_costs.py``), 16-bit inputs without a block
    view ATen's kernel slice by slice (:func:`_slice_apply`) or a block upcast at a time.
    ``scale`` and ``shift`` are in the accumulation dtype, shaped like the kept dimensions of
    ``x`` (1 elsewhere). Builds no graph: inputs must not need gradients.

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> folded_apply(x, (1,), torch.full((1, 1), 2.0), torch.ones(1, 1)).flatten().tolist()
        [3.0, 7.0]
    """
    sixteen_bit = x.dtype != scale.dtype
    if (sixteen_bit or x.numel() >= _thresholds.ATEN_APPLY_ELEMENTS) and aten_applies_faster(
        x, axes
    ):
        y = native_inference(x, axes, *_unit_statistics(scale), scale, shift, 0.0)
        if y is not None:
            return y
    if not sixteen_bit:
        return scale_and_shift(x, scale, shift, out=torch.empty_like(x))
    y = _slice_apply(x, axes, scale, shift)
    return y if y is not None else _upcast_apply(x, scale, shift)


def _slice_apply(
    x: torch.Tensor, axes: tuple[int, ...], scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor | None:
    """``x * scale + shift`` for a 16-bit ``x`` by ATen's inference kernel, slice by slice.

    For inputs without a block view whose slices have one (:func:`batchnorm._aten.aten_slices`):
    each slice is written straight into the output (``native_batch_norm.out``), 16-bit in and
    out with float32 arithmetic and no upcast copies. None without such slices.
    """
    # No regrouped copy here (unlike the statistics and the backward sums): copying x in and
    # y out costs more than the upcast apply it would replace ((64, 256, 14, 14) bfloat16
    # ghost batches: 2.4 ms against 2.1).
    sliced = aten_slices(x, axes)
    if sliced is None:
        return None
    y = torch.empty_like(x)
    x_slices, y_slices = sliced.present(x), sliced.present(y)
    scales, shifts = sliced.per_slice(scale), sliced.per_slice(shift)
    zeros, ones = _unit_statistics(scales[0])
    unused = zeros.new_empty(0)
    for i in range(sliced.count):
        torch.ops.aten.native_batch_norm.out(
            x_slices[i],
            scales[i],
            shifts[i],
            zeros,
            ones,
            False,
            0.0,
            0.0,
            out=y_slices[i],
            save_mean=unused,
            save_invstd=unused,
        )
    return y


def _unit_statistics(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Running mean 0 and variance 1 shaped like ``like``.

    With these and ``eps = 0`` ATen's inference kernel computes exactly ``x * weight + bias``:
    its ``invstd`` is exactly 1. Made once per shape, dtype and device (ATen only reads them).
    """
    return _unit_statistics_of(tuple(like.shape), like.dtype, like.device)


@functools.lru_cache(maxsize=64)
def _unit_statistics_of(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    zeros = torch.zeros(shape, dtype=dtype, device=device)
    return zeros, torch.ones(shape, dtype=dtype, device=device)


def aten_applies_faster(x: torch.Tensor, axes: Sequence[int]) -> bool:
    """Whether ATen's inference kernel is the faster apply for ``x``.

    It is for 16-bit inputs and NCHW rows that have a block view; elsewhere (channels
    innermost) one ``addcmul`` is as fast or faster.
    """
    sizes = block_view_sizes(x, axes)
    return sizes is not None and (x.dtype in (torch.bfloat16, torch.float16) or sizes[2] > 1)


def _apply(
    x: torch.Tensor,
    mean: torch.Tensor,
    x_scale: torch.Tensor,
    shift: torch.Tensor,
    axes: tuple[int, ...],
    fold: bool,
) -> torch.Tensor:
    r"""The apply pass read straight from ``x``: ``y = (x - mean) \cdot x\_scale + shift``.

    With ``fold`` (``x_scale`` and ``shift`` per kept index, and for float inputs the mean
    within ``FOLD_LIMIT``; see :meth:`NormalizeApply.forward`), one pass in the folded form
    ``x \cdot a + (shift - mean \cdot a)``, as ATen and TensorFlow compute it
    (:func:`folded_apply`). Otherwise the centred form: ``x - mean`` scaled in place, 16-bit
    inputs a block upcast at a time.

    Numerics: folding adds a rounding error of at most ``3 |mean| a u`` (``u`` the unit
    roundoff of the arithmetic), ``3 u`` per standard deviation the mean lies from zero in
    units of the output's ``a \sigma``. float32 and float64 inputs fold only while
    ``|mean| \cdot invstd \le`` ``FOLD_LIMIT`` (at most ``24 u`` more, 1.4e-6 in float32;
    checking costs one synchronisation), and take the centred form beyond: two passes more,
    and constant channels (``var = 0``) still give exactly ``shift``, as the reference path
    does. 16-bit inputs always fold: the error stays below their output's own rounding unless
    ``|mean| / \sigma > 2^{15}``, a spread the 16-bit input cannot resolve.
    """
    if fold:
        folded_shift = shift - mean * x_scale
        return folded_apply(x, axes, x_scale.expand(folded_shift.shape), folded_shift)
    # Every per-channel map and adjustment result broadcasts to x without enlarging it
    # (functional checks adjustment results), so the output can be written in place.
    if x.dtype == mean.dtype:
        centered = x - mean
        return scale_and_shift(centered, x_scale, shift, out=centered)
    return _upcast_apply(x, x_scale, shift, mean)


def _upcast_apply(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(x - mean) * scale + shift`` for a 16-bit ``x``, a block upcast at a time.

    Without ``mean``, ``x * scale + shift``. Blocks are upcast to ``scale``'s dtype
    (:func:`upcast_blocks`).
    """
    y = torch.empty_like(x)
    others = (y, scale, shift) if mean is None else (y, scale, shift, mean)
    for _, block, (out, block_scale, block_shift, *block_mean) in upcast_blocks(
        x, scale.dtype, others
    ):
        if block_mean:
            block.sub_(block_mean[0])
        out.copy_(scale_and_shift(block, block_scale, block_shift, out=block))
    return y


def _folds_within_limit(mean: torch.Tensor, invstd: torch.Tensor) -> bool:
    """Whether ``|mean| * invstd <= FOLD_LIMIT`` for every channel (False for NaN)."""
    return mean.numel() == 0 or float((mean.abs() * invstd).max()) <= _thresholds.FOLD_LIMIT


def scale_and_shift(
    t: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``t * scale + shift``, into ``out`` if given (the broadcast shape; it may be ``t``).

    One ``addcmul`` where it vectorises; a multiply and an in-place add where ``scale`` and
    ``shift`` are both constant along ``t``'s innermost dimension in memory (per-channel
    factors of NCHW rows): torch's ``addcmul`` then falls back to a scalar loop, 4x slower.
    ``addcmul`` rounds once (a fused multiply-add), the multiply and add twice, so results
    differ by up to a unit of roundoff between layouts; every path that must agree exactly
    calls this one function. Without ``out`` it is differentiable.

    Example:
        >>> t = torch.ones(2, 3)
        >>> scale_and_shift(t, torch.tensor([[2.0], [3.0]]), torch.ones(2, 1), out=t)
        tensor([[3., 3., 3.],
                [4., 4., 4.]])
    """
    inner = t.dim() - 1 - memory_order(t)[-1]  # counted from the last dimension

    def constant_along_inner(p: torch.Tensor) -> bool:
        return inner >= p.dim() or p.shape[p.dim() - 1 - inner] == 1

    if t.dim() and constant_along_inner(scale) and constant_along_inner(shift):
        return torch.mul(t, scale, out=out).add_(shift)
    return torch.addcmul(shift, t, scale, out=out)


def _native_backward(
    x: torch.Tensor,
    dy: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    scale: torch.Tensor,
    axes: tuple[int, ...],
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``aten.native_batch_norm_backward`` on ``x`` as ATen takes it (:mod:`batchnorm._aten`).

    ATen's kernel computes exactly our backward given ``save_mean = mean``,
    ``save_invstd = invstd`` and ``weight = scale``: ``dx``, ``sum(dy * x_hat)``, ``sum(dy)``,
    with ``x - mean`` formed before the products (no cancellation). ``dy`` must have ``x``'s
    strides (the caller copies it once). None when ``x`` has no block view (kept axes apart in
    memory, or not dense).
    """
    aten_x = aten_input(x, axes)
    if aten_x is None:
        return None
    block, restore = aten_x
    dy_block, _ = aten_input(dy, axes)  # dy has x's strides, hence a block view too
    dx, dscale, dshift = torch.ops.aten.native_batch_norm_backward(
        dy_block,
        block,
        aten_vector(scale),
        None,
        None,
        aten_vector(mean),
        aten_vector(invstd),
        True,
        0.0,
        list(needs),
    )
    keep = mean.shape
    if dx is not None and restore is not None:
        dx = viewed_like(dx, restore)
    return (
        dx,
        dscale.view(keep) if dscale is not None else None,
        dshift.view(keep) if dshift is not None else None,
    )


def _slice_sums(
    x: torch.Tensor,
    dy: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    axes: tuple[int, ...],
) -> tuple[None, torch.Tensor, torch.Tensor] | None:
    r"""The backward reduce, ``\sum dy\, \hat{x}`` and ``\sum dy``, by ATen's kernel per slice.

    For inputs without a block view whose slices have one (:func:`batchnorm._aten.aten_slices`:
    ghost batches of channels_last inputs). Each slice goes through ATen's kernel with its own
    group's mean and ``invstd``, and the sums add up over the slices of a group. Reads ``x`` and
    ``dy`` once with no scratch and no upcasts, where :func:`_blocked_sums` makes four more
    passes in cache. The sums are ATen's, as for inputs that have a block view. None without
    such slices.
    """
    # Regrouped copies of 16-bit x and dy cost less than the upcasts of the blocked sums; for
    # float32 their two full passes cost what they save ((64, 256, 14, 14): 4.3 ms blocked,
    # 5.1 regrouped).
    sliced = aten_slices(x, axes, regroup=x.dtype != mean.dtype)
    if sliced is None:
        return None
    x_slices, dy_slices = (sliced.present(sliced.laid_out(t)) for t in (x, dy))
    means, invstds = sliced.per_slice(mean), sliced.per_slice(invstd)
    sums_x_hat, sums_dy = [], []
    for i in range(sliced.count):
        _, sum_x_hat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dy_slices[i],
            x_slices[i],
            None,
            None,
            None,
            means[i],
            invstds[i],
            True,
            0.0,
            [False, True, True],
        )
        sums_x_hat.append(sum_x_hat)
        sums_dy.append(sum_dy)
    return (
        None,
        sliced.kept_shaped(torch.stack(sums_x_hat)),
        sliced.kept_shaped(torch.stack(sums_dy)),
    )


def _blocked_sums(
    x: torch.Tensor,
    dy: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    axes: tuple[int, ...],
) -> tuple[None, torch.Tensor, torch.Tensor]:
    r"""The backward reduce, ``\sum dy\, \hat{x}`` and ``\sum dy``, over any layout.

    For layouts ATen's kernels do not take (kept axes apart in memory: ghost batches of
    channels_last inputs). One pass over ``x`` and ``dy`` a cache-sized block at a time along
    the outermost dimension in memory, ``x - mean`` (and 16-bit upcasts) formed in reused
    scratch. Shaped like :func:`_native_backward`'s result, without ``dx``.
    """
    acc = mean.dtype
    sums_dy, sums_dy_centered = [], []
    for _, (x_block, dy_block, block_mean) in blocks(x, (x, dy, mean)):
        dy_up = _in_acc(dy_block, acc, "upcast dy")
        centered = scratch_space.like(x_block, acc, "centred")
        torch.sub(_in_acc(x_block, acc, "upcast"), block_mean, out=centered)
        sums_dy.append(channel_sum(dy_up, axes))
        sums_dy_centered.append(channel_sum(centered.mul_(dy_up), axes))
    outermost = memory_order(x)[0]  # the dimension the blocks slice
    sum_dy_x_hat = combine_blocks(sums_dy_centered, outermost, axes) * invstd
    return None, sum_dy_x_hat, combine_blocks(sums_dy, outermost, axes)


def _input_gradient(
    x: torch.Tensor,
    dy: torch.Tensor,
    weights: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    scale: torch.Tensor,
    sum_dy: torch.Tensor,
    sum_dy_x_hat: torch.Tensor,
    axes: Sequence[int],
    within_limit: bool,
) -> torch.Tensor:
    r"""The backward apply for a per-kept-index ``scale``, a cache-sized block at a time.

    .. math::

        dx = A \sigma^{-1} dy + w \left(c_0 + (x - \mu)\, c_1\right), \quad
        c_0 = -\frac{A \sigma^{-1} \sum dy}{W}, \quad
        c_1 = -\frac{A \sigma^{-2} \sum dy\, \hat{x}}{W}

    with ``w / W = 1 / n`` unweighted. Reads ``x`` and ``dy`` once and writes ``dx`` once:
    products and 16-bit upcasts are formed in reused scratch while each block is in cache,
    where whole-tensor ops would make four passes more. Per-example weights fold into
    per-row coefficients, and, as in :func:`_apply` and within the same ``FOLD_LIMIT``, the
    mean into the shift: ``dx = A \sigma^{-1} dy + x c_1 + (c_0 - \mu c_1)``.
    """
    acc = mean.dtype
    reduce_dims = [d for d in range(x.dim()) if d not in axes]
    total = weight_total(weights, x.shape, reduce_dims).to(acc)
    dy_scale = scale * invstd
    c0 = no_nan_divide(-dy_scale * sum_dy, total)
    c1 = no_nan_divide(-dy_scale * invstd * sum_dy_x_hat, total)
    if weights is not None and _broadcast_numel(weights.shape, c1.shape) < x.numel():
        # Weights constant along rows (per example): folded into per-row coefficients, one
        # full-size multiply fewer.
        c0, c1, weights = weights * c0, weights * c1, None
    if within_limit:  # c0 + (x - mean) c1 as x c1 + (c0 - mean c1): one full-size subtraction fewer
        c0 = c0 - mean * c1
    dx = torch.empty_like(x)
    others = (dx, dy, mean, c0, c1, dy_scale) + (() if weights is None else (weights,))
    for _, (x_block, dx_block, dy_block, *per_channel) in blocks(x, (x, *others)):
        block_mean, block_c0, block_c1, block_dy_scale, *block_weights = per_channel
        x_acc = _in_acc(x_block, acc, "upcast")
        out = dx_block if dx_block.dtype == acc else x_acc  # 16-bit: in place in the upcast
        if within_limit:
            scale_and_shift(x_acc, block_c1, block_c0, out=out)
        else:
            torch.sub(x_acc, block_mean, out=out)
            scale_and_shift(out, block_c1, block_c0, out=out)
        if block_weights:
            out.mul_(block_weights[0])
        out.addcmul_(_in_acc(dy_block, acc, "upcast dy"), block_dy_scale)
        if out is not dx_block:
            dx_block.copy_(out)
    return dx


def _broadcast_numel(*shapes: torch.Size) -> int:
    """Elements of the shape ``shapes`` broadcast to (each size 1 or the common size)."""
    rank = max(len(shape) for shape in shapes)
    padded = [(1,) * (rank - len(shape)) + tuple(shape) for shape in shapes]
    return prod(max(sizes) for sizes in zip(*padded, strict=True))


def _in_acc(block: torch.Tensor, acc: torch.dtype, role: str) -> torch.Tensor:
    """``block`` in ``acc``: itself, or a 16-bit block upcast into the scratch of ``role``."""
    if block.dtype == acc:
        return block
    return scratch_space.like(block, acc, role).copy_(block)


def _composite_backward(
    x: torch.Tensor,
    dy: torch.Tensor,
    weights: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    scale: torch.Tensor,
    shift_shape: torch.Size,
    axes: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The same backward in torch ops: weighted moments, any scale shape, any layout.

    .. math::

        dB = \sum dy, \quad dA = \sum dy\, \hat{x}, \quad
        dx = \sigma^{-1} \left(g - \frac{w}{W}\left(\sum g + \hat{x} \sum g \hat{x}\right)
        \right), \quad g = A\, dy

    One full-size buffer: ``x - mean``, turned into ``dx`` in place; the products inside the
    sums are formed in cache-sized blocks.
    """
    acc = mean.dtype
    dy = dy.to(acc)
    reduce_dims = [d for d in range(x.dim()) if d not in axes]
    centered = x.to(acc) - mean
    per_channel = scale.shape == mean.shape
    sum_dy = channel_sum(dy, axes)
    dshift = sum_dy if shift_shape == mean.shape else dy.sum_to_size(shift_shape)
    sum_dy_centered = blocked_channel_sum(torch.mul, axes, dy, centered)
    if per_channel:
        dscale = sum_dy_centered * invstd
        sum_g, sum_g_centered = scale * sum_dy, scale * sum_dy_centered
    else:
        dscale = (dy * centered * invstd).sum_to_size(scale.shape)
        sum_g = blocked_channel_sum(torch.mul, axes, dy, scale)
        sum_g_centered = blocked_channel_sum(_triple_product, axes, dy, scale, centered)
    total = weight_total(weights, x.shape, reduce_dims).to(acc)
    # dx = invstd * (g - w / W * (sum_g + x_hat * sum_g_x_hat)), written over ``centered``.
    factor = no_nan_divide(-invstd, total)
    if weights is None:  # the factor folds into the per-channel coefficients: one pass fewer
        coefficients = (invstd * invstd * sum_g_centered * factor, sum_g * factor)
        dx = scale_and_shift(centered, *coefficients, out=centered)
    else:
        dx = scale_and_shift(centered, invstd * invstd * sum_g_centered, sum_g, out=centered)
        dx.mul_(weights.to(acc))  # separately: w times a per-channel factor could be full-size
        dx.mul_(factor)
    dx.addcmul_(dy, scale * invstd)
    return dx.to(x.dtype), dscale, dshift


def _triple_product(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *, out: torch.Tensor
) -> torch.Tensor:
    return torch.mul(a, b, out=out).mul_(c)
