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
from collections.abc import Callable, Sequence
from math import prod
from typing import NamedTuple

import torch

from batchnorm import _thresholds
from batchnorm._affine import (
    gamma_beta_affine,
    host_factor_for,
    inference_affine,
    invstd,
)
from batchnorm._aten import aten_input, aten_slices, aten_vector, native_inference
from batchnorm._errors import BatchNormError
from batchnorm._moments import (
    accumulation_dtype,
    compute_moments,
    count_tensor,
    no_nan_divide,
    weight_total,
)
from batchnorm._nonfinite import all_finite
from batchnorm._plan import Plan
from batchnorm._reductions import (
    blocks,
    channel_sum,
    combine_blocks,
    memory_order,
    scratch_space,
    upcast_blocks,
    viewed_like,
)
from batchnorm._sync import Synchronizer
from batchnorm._types import Moments

__all__ = [
    "APPLY_ROUTES",
    "FOLDED_APPLY_ROUTES",
    "INFER_ROUTES",
    "INPUT_GRAD_ROUTES",
    "InferenceCall",
    "REDUCE_ROUTES",
    "NormalizeApply",
    "aten_training",
    "infer",
    "scale_and_shift",
]


class NormalizeApply(torch.autograd.Function):
    r"""``y = (x - mean) * invstd * scale + shift`` with the (weighted) batch-norm gradient.

    ``mean`` and ``invstd`` must be the batch moments of ``x`` over all dimensions but ``axes``,
    weighted by ``weights`` if given (from :func:`stats_pass`): the backward differentiates
    through the moments as functions of ``x``, which is what makes this batch norm rather than
    a fixed affine map. ``scale`` and ``shift``
    broadcast against ``x`` (per channel, or any broadcastable shape, e.g. a per-element
    ``adjustment``; ``plan`` says which, :func:`batchnorm._plan.plan_for`) and receive
    ``sum(dy * x_hat)`` and ``sum(dy)`` reduced to their shapes. ``weights`` are constants (no
    gradient). The forward is the plan's apply route, the backward its reduce route, then its
    input-gradient route.

    .. math::

        g = dy \cdot scale, \quad
        dx = invstd \left(g - \frac{w}{W}\sum g - \hat{x} \frac{w}{W} \sum g \hat{x}\right)

    with ``w / W = 1 / n`` unweighted.

    Numerics:
        The variance is two-pass (no cancellation at any offset); the apply folds the mean
        into the shift as TensorFlow does only while that adds at most a few units of
        roundoff, and is centred beyond (:func:`_folds_within_limit`).

    Twice differentiable: when the backward is itself recorded (``create_graph=True``, as
    gradient penalties and MAML do), it is the reference path's, recomputed from ``x``
    (:func:`_recorded_backward`); ``epsilon`` (that of ``invstd``) is for that recomputation.

    Example:
        >>> from batchnorm._plan import plan_for
        >>> from batchnorm._statistics import stats_pass
        >>> x = torch.tensor([[1.0], [3.0]], requires_grad=True)
        >>> moments = stats_pass(x, [1])
        >>> one, zero = torch.ones(1, 1), torch.zeros(1, 1)
        >>> invstd = torch.rsqrt(moments.var)
        >>> plan = plan_for(x, (1,))
        >>> y = NormalizeApply.apply(x, None, moments.mean, invstd, one, zero, (1,), 0.0, plan)
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
        plan: Plan,
        sync: Synchronizer | None = None,
        total: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The apply pass: one multiply-add over ``x`` (the plan's apply route)."""
        ctx.save_for_backward(x, weights, mean, invstd, scale)
        ctx.axes, ctx.epsilon, ctx.plan = axes, epsilon, plan
        ctx.sync, ctx.total = sync, total
        ctx.shift_shape = shift.shape
        ctx.needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[4], ctx.needs_input_grad[5])
        # Decided once here, and kept for the backward's input gradient.
        ctx.fold = FOLDS[plan.fold](mean, invstd)
        route = plan.apply if ctx.fold else plan.centred
        return APPLY_ROUTES[route](x, mean, invstd * scale, shift, axes)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor):  # type: ignore[override]
        """The plan's reduce route, then its input-gradient route.

        Recorded (``create_graph=True``), :func:`_recorded_backward` instead.
        """
        if torch.is_grad_enabled():
            return _recorded_backward(ctx, dy)
        x, weights, mean, invstd, scale = ctx.saved_tensors
        need_x, need_scale, need_shift = ctx.needs
        inputs = BackwardInputs(
            x,
            dy,
            weights,
            mean,
            invstd,
            scale,
            ctx.shift_shape,
            ctx.axes,
            ctx.needs,
            ctx.fold,
            ctx.total,
        )
        inputs = _like_x(inputs)
        sums = REDUCE_ROUTES[ctx.plan.reduce](inputs)  # this process's
        excluded = None
        if weights is not None and x.device.type == "cpu":
            inputs, sums, excluded = _without_excluded_nonfinite(ctx.plan, inputs, sums)
        # Synchronized: the input gradient takes the group's sums (one all_reduce); scale and
        # shift get this process's, which DDP's gradient all-reduce combines.
        if ctx.sync is not None:
            summed = Sums(sums.dx, *ctx.sync.sum(sums.dscale, sums.dshift), local=sums)
        else:
            summed = sums
        dx = INPUT_GRAD_ROUTES[ctx.plan.input_grad](inputs, summed) if need_x else None
        if dx is not None and excluded is not None:
            dx.masked_fill_(excluded, 0.0)  # (our own tensor: in place keeps its strides)
        return (
            dx,
            None,
            None,
            None,
            sums.dscale.sum_to_size(scale.shape) if need_scale else None,
            sums.dshift.sum_to_size(ctx.shift_shape) if need_shift else None,
            None,
            None,
            None,
            None,
            None,
        )


def _without_excluded_nonfinite(
    plan: Plan, inputs: BackwardInputs, sums: Sums
) -> tuple[BackwardInputs, Sums, torch.Tensor | None]:
    """The backward's inputs and sums without the NaN or Inf values that the weights exclude.

    A NaN or Inf where the weight is 0 never reaches the moments, but the sums of
    ``dy * x_hat`` run over every position, and ``0 * NaN`` is NaN. Where the sums come out
    non-finite although the moments are finite (so that every non-finite value of ``x`` is an
    excluded one), they are taken again with those positions at the mean and their ``dy`` 0:
    they contribute nothing, and the caller gives them no input gradient, as the traced and
    reference routes do (:func:`batchnorm.functional._excluding_nonfinite`). Reads one value
    on the host (the CPU only), and the retry costs a few passes on that rare call only.
    Returns the inputs and sums to use, and the excluded non-finite positions (None when
    nothing was excluded).
    """
    if bool(all_finite(sums.dscale, sums.dshift)) or not bool(
        all_finite(inputs.mean, inputs.invstd)
    ):
        return inputs, sums, None
    x = inputs.x
    excluded = ~torch.isfinite(x)
    cleaned = _like_x(  # in x's strides, as the routes read them (masked_fill may not keep)
        inputs._replace(
            x=torch.where(excluded, inputs.mean.to(x.dtype), x, out=torch.empty_like(x)),
            dy=inputs.dy.masked_fill(excluded, 0.0),
        )
    )
    return cleaned, REDUCE_ROUTES[plan.reduce](cleaned), excluded


class BackwardInputs(NamedTuple):
    """What the backward routes read: the saved tensors, ``dy`` and the call's options."""

    x: torch.Tensor
    dy: torch.Tensor
    weights: torch.Tensor | None
    mean: torch.Tensor
    invstd: torch.Tensor
    scale: torch.Tensor
    shift_shape: torch.Size
    axes: tuple[int, ...]
    needs: tuple[bool, bool, bool]  # gradients of x, scale, shift
    fold: bool  # whether the input gradient may fold the mean (the forward's decision)
    total: torch.Tensor | None = None  # the group's weight total (synchronized), else local


class Sums(NamedTuple):
    """A reduce route's result: the per-channel sums, and ``dx`` when the route made it.

    Synchronized, the input-gradient route gets the group's sums, with this process's (and
    the ``dx`` ATen made from them) in ``local``.
    """

    dx: torch.Tensor | None
    dscale: torch.Tensor  # sum(dy * x_hat)
    dshift: torch.Tensor  # sum(dy)
    local: Sums | None = None


def _recorded_backward(
    ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """The backward as a differentiable function of ``x``, ``scale`` and ``dy``.

    For a backward that is itself recorded (``create_graph=True``): the forward is recomputed
    from ``x`` in the reference path's ops, the moments included
    (:func:`batchnorm._moments.compute_moments`), and differentiated with ``create_graph``, so
    a second backward sees how the moments depend on ``x``. ``shift`` only adds ``sum(dy)``.
    """
    if ctx.sync is not None:
        raise BatchNormError(
            "a synchronized call's backward cannot be differentiated again on the fast path "
            "(create_graph=True): pass fused=False, whose plain ops differentiate through the "
            "collectives"
        )
    x, weights, mean, _, scale = ctx.saved_tensors
    need_x, need_scale, need_shift = ctx.needs
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
    dshift = dy.to(acc).sum_to_size(ctx.shift_shape) if need_shift else None
    return dx, None, None, None, dscale, dshift, None, None, None, None, None


def _folds_within_limit(mean: torch.Tensor, invstd: torch.Tensor) -> bool:
    r"""Whether ``|mean| * invstd <= FOLD_LIMIT`` for every channel (False for NaN).

    Folding, ``x \cdot a + (shift - mean \cdot a)``, adds a rounding error of at most
    ``3 |mean| a u`` (``u`` the unit roundoff of the arithmetic): ``3 u`` per standard
    deviation the mean lies from zero in units of the output's ``a \sigma``. Within the limit
    that is at most ``24 u`` more (1.4e-6 in float32); beyond it the centred form keeps the
    error at a few units, and constant channels (``var = 0``) still give exactly ``shift``, as
    the reference path does. Reads one value on the host: the plan asks for it only on the
    CPU (``Plan.fold``).
    """
    if mean.numel() == 0:
        return True
    largest = torch.linalg.vector_norm(torch.mul(mean, invstd), float("inf"))  # max |.|: NaN too
    return largest.item() <= _thresholds.FOLD_LIMIT


# How the apply decides to fold (``Plan.fold``). 16-bit inputs always fold: the error stays
# below their output's own rounding unless ``|mean| / sigma > 2^15``, a spread the 16-bit
# input cannot resolve. Accelerators never do (deciding would stall the device queue).
FOLDS: dict[str, Callable[[torch.Tensor, torch.Tensor], bool]] = {
    "always": lambda mean, invstd: True,
    "never": lambda mean, invstd: False,
    "if_within_limit": _folds_within_limit,
}


def _slice_apply(
    x: torch.Tensor, axes: tuple[int, ...], scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``x * scale + shift`` for a 16-bit ``x`` by ATen's inference kernel, slice by slice.

    For inputs without a block view whose slices have one (:func:`batchnorm._aten.aten_slices`):
    each slice is written straight into the output (``native_batch_norm.out``), 16-bit in and
    out with float32 arithmetic and no upcast copies.
    """
    # No regrouped copy here (unlike the statistics and the backward sums): copying x in and
    # y out costs more than the upcast apply it would replace ((64, 256, 14, 14) bfloat16
    # ghost batches: 2.4 ms against 2.1).
    sliced = aten_slices(x, axes)
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


def _aten_unit(
    x: torch.Tensor, axes: tuple[int, ...], scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``x * scale + shift`` by ATen's inference kernel given :func:`_unit_statistics`.

    16-bit in and out with float32 arithmetic; for float inputs the faster apply of NCHW rows
    from ``ATEN_APPLY_ELEMENTS`` elements (its fixed cost).
    """
    return native_inference(x, axes, *_unit_statistics(scale), scale, shift, 0.0)


def _torch_scale_and_shift(
    x: torch.Tensor, axes: tuple[int, ...], scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``x * scale + shift`` in torch ops (float32 ``(4096, 256)``: 0.17 ms against ATen's 0.26)."""
    return scale_and_shift(x, scale, shift, out=torch.empty_like(x))


def _upcast_folded(
    x: torch.Tensor, axes: tuple[int, ...], scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``x * scale + shift`` for a 16-bit ``x`` without slices, a block upcast at a time."""
    return _upcast_apply(x, scale, shift)


# The folded applies, ``y = x * scale + shift`` with ``scale`` and ``shift`` per kept index in
# the accumulation dtype: training's apply after folding the mean, and inference's whole pass
# (the moving statistics folded in by :func:`batchnorm._affine.inference_affine`). Each
# (x, axes, scale, shift) -> y, building no graph.
FOLDED_APPLY_ROUTES: dict[str, Callable[..., torch.Tensor]] = {
    "aten_unit": _aten_unit,
    "scale_and_shift": _torch_scale_and_shift,
    "aten_slices": _slice_apply,
    "upcast": _upcast_folded,
}


def _folding(folded: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The training apply of a folded route: the mean folded into the shift first."""

    def route(
        x: torch.Tensor,
        mean: torch.Tensor,
        x_scale: torch.Tensor,
        shift: torch.Tensor,
        axes: tuple[int, ...],
    ) -> torch.Tensor:
        folded_shift = shift - mean * x_scale
        return folded(x, axes, x_scale.expand(folded_shift.shape), folded_shift)

    return route


def _centred(
    x: torch.Tensor,
    mean: torch.Tensor,
    x_scale: torch.Tensor,
    shift: torch.Tensor,
    axes: tuple[int, ...],
) -> torch.Tensor:
    """``(x - mean) * x_scale + shift``: ``x - mean`` scaled in place (any broadcast shape).

    Every per-channel map and adjustment result broadcasts to x without enlarging it
    (functional checks adjustment results), so the output can be written in place.
    """
    centered = x - mean
    return scale_and_shift(centered, x_scale, shift, out=centered)


def _centred_upcast(
    x: torch.Tensor,
    mean: torch.Tensor,
    x_scale: torch.Tensor,
    shift: torch.Tensor,
    axes: tuple[int, ...],
) -> torch.Tensor:
    """:func:`_centred` for a 16-bit ``x``, a block upcast at a time."""
    return _upcast_apply(x, x_scale, shift, mean)


# The training applies a plan names (``Plan.apply`` when the mean folds, ``Plan.centred`` when
# it does not), each (x, mean, invstd * scale, shift, axes) -> y.
APPLY_ROUTES: dict[str, Callable[..., torch.Tensor]] = {
    **{name: _folding(route) for name, route in FOLDED_APPLY_ROUTES.items()},
    "centred": _centred,
    "centred_upcast": _centred_upcast,
}


class InferenceCall(NamedTuple):
    """What the inference routes read: the input and the per-channel tensors of one call.

    ``shape`` is the per-channel tensors' broadcast shape against ``x``; they may have any
    shape with one element per channel.
    """

    x: torch.Tensor
    axes: tuple[int, ...]
    shape: tuple[int, ...]
    moving_mean: torch.Tensor
    moving_variance: torch.Tensor
    gamma: torch.Tensor | None
    beta: torch.Tensor | None
    epsilon: float


def infer(call: InferenceCall, plan: Plan) -> torch.Tensor:
    """The fast inference pass, ``gamma * (x - moving_mean) * invstd + beta``: ``plan.infer``."""
    return INFER_ROUTES[plan.infer](call, plan)


def _aten_inference(call: InferenceCall, plan: Plan) -> torch.Tensor:
    """ATen's inference kernel and its autograd (16-bit inputs, NCHW rows)."""
    return native_inference(*call[:2], *call[3:])


def _inference_affine(call: InferenceCall) -> tuple[torch.Tensor, torch.Tensor]:
    """The moving statistics, gamma and beta folded into one ``(scale, shift)``, per channel."""
    acc = accumulation_dtype(call.x.dtype)

    def viewed(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.reshape(call.shape).to(acc)

    mean, var = viewed(call.moving_mean), viewed(call.moving_variance)
    output = gamma_beta_affine(viewed(call.gamma), viewed(call.beta), like=mean)
    return inference_affine(mean, var, call.epsilon, output)


def _folded_inference(call: InferenceCall, plan: Plan) -> torch.Tensor:
    """The folded map applied by the plan's folded apply route, without a graph."""
    return FOLDED_APPLY_ROUTES[plan.apply](call.x, call.axes, *_inference_affine(call))


def _recorded_inference(call: InferenceCall, plan: Plan) -> torch.Tensor:
    """The folded map in autograd ops, for inputs that need a gradient."""
    scale, shift = _inference_affine(call)
    return scale_and_shift(call.x.to(scale.dtype), scale, shift).to(call.x.dtype)


# The inference routes a plan names (``Plan.infer``).
INFER_ROUTES: dict[str, Callable[[InferenceCall, Plan], torch.Tensor]] = {
    "aten": _aten_inference,
    "folded": _folded_inference,
    "autograd": _recorded_inference,
}


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


def _like_x(inputs: BackwardInputs) -> BackwardInputs:
    """``inputs`` with ``dy`` in ``x``'s strides, for every pass below to read alike."""
    if inputs.dy.stride() == inputs.x.stride():
        return inputs
    return inputs._replace(dy=torch.empty_like(inputs.x, dtype=inputs.dy.dtype).copy_(inputs.dy))


def _aten_reduce(inputs: BackwardInputs) -> Sums:
    """``aten.native_batch_norm_backward``: every gradient unweighted, only its sums weighted.

    ATen's kernel computes exactly our backward given ``save_mean = mean``,
    ``save_invstd = invstd`` and ``weight = scale`` (expanded to every kept index: a scale
    shared across ghost groups folds back onto its shape afterwards): ``dx``,
    ``sum(dy * x_hat)``, ``sum(dy)``, with ``x - mean`` formed before the products (no
    cancellation). Weighted, its (unweighted) sums are right and ``dx`` is not.
    """
    x, dy, mean = inputs.x, inputs.dy, inputs.mean
    block, restore = aten_input(x, inputs.axes)  # the plan checked that it has a block view
    dy_block, _ = aten_input(dy, inputs.axes)  # dy has x's strides, hence a block view too
    # ATen's dx is right only unweighted (synchronized, it is this process's, then corrected).
    needs = inputs.needs if inputs.weights is None else (False, True, True)
    dx, dscale, dshift = torch.ops.aten.native_batch_norm_backward(
        dy_block,
        block,
        aten_vector(inputs.scale.expand(mean.shape)),
        None,
        None,
        aten_vector(mean),
        aten_vector(inputs.invstd),
        True,
        0.0,
        [needs[0], True, True],
    )
    if dx is not None and restore is not None:
        dx = viewed_like(dx, restore)
    return Sums(dx, dscale.view(mean.shape), dshift.view(mean.shape))


def _aten_slice_sums(inputs: BackwardInputs) -> Sums:
    r"""``\sum dy\, \hat{x}`` and ``\sum dy`` by ATen's kernel slice by slice.

    For inputs without a block view whose slices have one (:func:`batchnorm._aten.aten_slices`:
    ghost batches of channels_last inputs). Each slice goes through ATen's kernel with its own
    group's mean and ``invstd``, and the sums add up over the slices of a group. Reads ``x`` and
    ``dy`` once with no scratch and no upcasts, where :func:`_blocked_sums` makes four more
    passes in cache. The sums are ATen's, as for inputs that have a block view.
    """
    # Regrouped copies of 16-bit x and dy cost less than the upcasts of the blocked sums; for
    # float32 their two full passes cost what they save ((64, 256, 14, 14): 4.3 ms blocked,
    # 5.1 regrouped).
    x, mean = inputs.x, inputs.mean
    sliced = aten_slices(x, inputs.axes, regroup=x.dtype != mean.dtype)
    x_slices, dy_slices = (sliced.present(sliced.laid_out(t)) for t in (x, inputs.dy))
    means, invstds = sliced.per_slice(mean), sliced.per_slice(inputs.invstd)
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
    return Sums(
        None,
        sliced.kept_shaped(torch.stack(sums_x_hat)),
        sliced.kept_shaped(torch.stack(sums_dy)),
    )


def _blocked_sums(inputs: BackwardInputs) -> Sums:
    r"""``\sum dy\, \hat{x}`` and ``\sum dy`` over any layout, a cache-sized block at a time.

    For layouts ATen's kernels do not take (kept axes apart in memory: ghost batches of
    channels_last inputs). One pass over ``x`` and ``dy`` a block at a time along the
    outermost dimension in memory, ``x - mean`` (and 16-bit upcasts) formed in reused scratch.
    """
    x, mean, axes = inputs.x, inputs.mean, inputs.axes
    acc = mean.dtype
    sums_dy, sums_dy_centered = [], []
    for _, (x_block, dy_block, block_mean) in blocks(x, (x, inputs.dy, mean)):
        dy_up = _in_acc(dy_block, acc, "upcast dy")
        centered = scratch_space.like(x_block, acc, "centred")
        torch.sub(_in_acc(x_block, acc, "upcast"), block_mean, out=centered)
        sums_dy.append(channel_sum(dy_up, axes))
        sums_dy_centered.append(channel_sum(centered.mul_(dy_up), axes))
    outermost = memory_order(x)[0]  # the dimension the blocks slice
    sum_dy_x_hat = combine_blocks(sums_dy_centered, outermost, axes) * inputs.invstd
    return Sums(None, sum_dy_x_hat, combine_blocks(sums_dy, outermost, axes))


def _composite_reduce(inputs: BackwardInputs) -> Sums:
    """Every gradient by :func:`_composite_backward` (any scale shape)."""
    return Sums(*_composite_backward(*inputs[:7], inputs.axes))


def _blocked_input_gradient(inputs: BackwardInputs, sums: Sums) -> torch.Tensor:
    """``dx`` by :func:`_input_gradient` from the reduce route's sums (weights, no ATen dx)."""
    return _input_gradient(
        inputs.x,
        inputs.dy,
        inputs.weights,
        inputs.mean,
        inputs.invstd,
        inputs.scale.expand(inputs.mean.shape),
        sums.dshift,
        sums.dscale,
        inputs.axes,
        inputs.fold,
        inputs.total,
    )


def _synchronized_aten_gradient(inputs: BackwardInputs, sums: Sums) -> torch.Tensor:
    r"""ATen's ``dx`` from this process's sums, corrected to the group's in one blocked pass.

    ATen's kernel gives ``k (dy - S_1/n - \hat{x} S_2/n)`` with this process's sums
    ``S_1 = \sum dy``, ``S_2 = \sum dy \hat{x}`` and count ``n``, ``k = A \sigma^{-1}``; the
    group's gradient has ``G_1/N, G_2/N`` instead. The difference is per channel affine in
    ``x``:

    .. math::

        dx = dx_{local} + x \alpha + \beta, \quad
        \alpha = k \sigma^{-1} \left(\frac{S_2}{n} - \frac{G_2}{N}\right), \quad
        \beta = k \left(\frac{S_1}{n} - \frac{G_1}{N}\right) - \mu \alpha

    For float inputs without weights; the plan's ``input_grad="aten_synchronized"``.
    """
    local = sums.local
    x, mean, invstd = inputs.x, inputs.mean, inputs.invstd
    dx = local.dx
    if x.numel() == 0:
        return dx
    reduce_dims = [d for d in range(x.dim()) if d not in inputs.axes]
    count = weight_total(None, x.shape, reduce_dims).to(mean)
    total = inputs.total.to(mean)
    k = inputs.scale.expand(mean.shape) * invstd
    alpha = k * invstd * (local.dscale / count - no_nan_divide(sums.dscale, total))
    beta = k * (local.dshift / count - no_nan_divide(sums.dshift, total)) - mean * alpha
    for _, (x_block, dx_block, block_alpha, block_beta) in blocks(x, (x, dx, alpha, beta)):
        correction = scratch_space.like(x_block, x.dtype, "correction")
        dx_block.add_(scale_and_shift(x_block, block_alpha, block_beta, out=correction))
    return dx


# The backward routes a plan names: ``Plan.reduce`` (BackwardInputs -> Sums), then
# ``Plan.input_grad`` ((BackwardInputs, Sums) -> dx); "aten" and "composite" take the ``dx``
# their reduction made.
REDUCE_ROUTES: dict[str, Callable[[BackwardInputs], Sums]] = {
    "aten": _aten_reduce,
    "aten_slices": _aten_slice_sums,
    "blocked": _blocked_sums,
    "composite": _composite_reduce,
}
INPUT_GRAD_ROUTES: dict[str, Callable[[BackwardInputs, Sums], torch.Tensor | None]] = {
    "aten": lambda inputs, sums: sums.dx,
    "aten_synchronized": _synchronized_aten_gradient,
    "blocked": _blocked_input_gradient,
    "composite": lambda inputs, sums: sums.dx,
}


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
    total: torch.Tensor | None = None,
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
    mean into the shift: ``dx = A \sigma^{-1} dy + x c_1 + (c_0 - \mu c_1)``. ``W`` is
    ``total`` where given (the group's, with the group's sums: synchronized), else this
    input's.
    """
    acc = mean.dtype
    reduce_dims = [d for d in range(x.dim()) if d not in axes]
    if total is None:
        total = weight_total(weights, x.shape, reduce_dims)
    total = total.to(device=x.device, dtype=acc)
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
    r"""The backward for a scale and shift of any broadcast shape, weighted or not.

    .. math::

        dB = \sum dy, \quad dA = \sum dy\, \hat{x}, \quad
        dx = \sigma^{-1} g - \frac{w\, \sigma^{-1}}{W}
        \left(\sum g + \hat{x} \sum g \hat{x}\right), \quad g = A\, dy

    ``dB`` and ``dA`` are reduced to the shift's and the scale's shapes (an adjustment may vary
    per example or per element), the sums of ``g`` per channel. Two passes over ``x`` and
    ``dy``, the sums then ``dx``, a cache-sized block at a time along the outermost dimension
    in memory: ``\hat{x}``, ``g`` and 16-bit upcasts are formed in reused scratch, so no
    full-size temporary is made (a 16-bit input is never copied to float32 whole).
    """
    acc = mean.dtype
    rank = x.dim()
    scale, weights = (_at_rank(t, rank) for t in (scale, weights))
    shift_target = torch.Size((1,) * (rank - len(shift_shape)) + tuple(shift_shape))
    dshift, dscale, sum_g, sum_g_x_hat = [], [], [], []
    dim = memory_order(x)[0]  # the dimension the blocks slice
    for _, (x_block, dy_block, block_mean, block_invstd, block_scale) in blocks(
        x, (x, dy, mean, invstd, scale)
    ):
        x_hat = _x_hat_block(x_block, block_mean, block_invstd, acc)
        dy_acc = _in_acc(dy_block, acc, "upcast dy")
        dshift.append(_summed_to(dy_acc, _block_target(shift_target, dim, dy_acc)))
        product = torch.mul(dy_acc, x_hat, out=scratch_space.like(x_hat, acc, "product"))
        dscale.append(_summed_to(product, _block_target(scale.shape, dim, product)))
        g = torch.mul(dy_acc, block_scale, out=scratch_space.like(x_hat, acc, "g"))
        sum_g.append(channel_sum(g, axes))
        sum_g_x_hat.append(channel_sum(g.mul_(x_hat), axes))
    reduce_dims = [d for d in range(rank) if d not in axes]
    total = weight_total(weights, x.shape, reduce_dims).to(acc)
    factor = no_nan_divide(-invstd, total)
    coefficient_x_hat = combine_blocks(sum_g_x_hat, dim, axes) * factor
    coefficient_one = combine_blocks(sum_g, dim, axes) * factor
    dx = torch.empty_like(x)
    operands = (x, dx, dy, mean, invstd, scale, coefficient_x_hat, coefficient_one)
    for _, (x_block, dx_block, dy_block, *per_block) in blocks(
        x, operands if weights is None else (*operands, weights)
    ):
        block_mean, block_invstd, block_scale, block_x_hat_c, block_one_c, *block_w = per_block
        out = _x_hat_block(x_block, block_mean, block_invstd, acc)
        # -(sum g + x_hat sum g x_hat) invstd / W, then w times it
        scale_and_shift(out, block_x_hat_c, block_one_c, out=out)
        if block_w:  # separately: w times a per-channel factor could be full-size
            out.mul_(block_w[0])
        dy_acc = _in_acc(dy_block, acc, "upcast dy")
        g = torch.mul(dy_acc, block_scale, out=scratch_space.like(out, acc, "g"))
        dx_block.copy_(out.addcmul_(g, block_invstd))
    return (
        dx,
        _combined_to(dscale, dim, scale.shape),
        _combined_to(dshift, dim, shift_target).reshape(shift_shape),
    )


def _at_rank(t: torch.Tensor | None, rank: int) -> torch.Tensor | None:
    """``t`` with leading size-1 dimensions up to ``rank`` (as broadcasting aligns it)."""
    if t is None or t.dim() == rank:
        return t
    return t.reshape((1,) * (rank - t.dim()) + tuple(t.shape))


def _x_hat_block(
    x_block: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, acc: torch.dtype
) -> torch.Tensor:
    """``(x - mean) * invstd`` of a block in ``acc``, in the scratch of role ``"centred"``."""
    centred = scratch_space.like(x_block, acc, "centred")
    torch.sub(_in_acc(x_block, acc, "upcast"), mean, out=centred)
    return centred.mul_(invstd)


def _block_target(shape: torch.Size, dim: int, block: torch.Tensor) -> list[int]:
    """A full-rank target shape as one block along ``dim`` reduces to it."""
    target = list(shape)
    if target[dim] != 1:
        target[dim] = block.shape[dim]
    return target


def _summed_to(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``t.sum_to_size(shape)`` as a tensor of its own (``t`` is scratch the next block reuses)."""
    return t.clone() if tuple(t.shape) == tuple(shape) else t.sum_to_size(shape)


def _combined_to(parts: list[torch.Tensor], dim: int, shape: torch.Size) -> torch.Tensor:
    """Per-block reductions to a full-rank ``shape``: concatenated where it spans ``dim``."""
    kept = [d for d, size in enumerate(shape) if size != 1]
    return combine_blocks(parts, dim, kept)


@functools.lru_cache(maxsize=256)
def _count_constants(
    count: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """The count as :func:`count_tensor` and ``(n - 1) / n`` as ``host_factor_for`` give them.

    One cached lookup per call for both (never write to them).
    """
    return count_tensor(count, dtype), host_factor_for((count - 1) / count, dtype, device)


def aten_training(
    x: torch.Tensor,
    axes: tuple[int, ...],
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    epsilon: float,
    fold: str,
) -> tuple[torch.Tensor, Moments] | None:
    r"""A plain training call by ATen's own training kernel: output and batch moments.

    ``torch.native_batch_norm`` on the block view of ``x`` (:func:`batchnorm._aten.aten_input`)
    computes the moments (two-pass) and ``y = (x - mean) * invstd * gamma + beta`` in one call,
    and autograd differentiates it with ATen's backward, itself twice differentiable. Handed
    zeroed running statistics and momentum 1, the kernel writes the batch mean and the
    unbiased variance ``M_2 / (n - 1)`` into them; the biased variance is that times
    ``(n - 1) / n``. For small inputs with plain options (the plan's ``training="aten"``),
    where one call costs less than the passes and the function around them. ``gamma`` and
    ``beta`` are flat vectors (or None); the moments are flat too, one entry per channel in
    the order of the kept axes.

    ATen's CPU kernel folds the mean into the shift: where ``fold`` (``Plan.fold``) says that
    loses precision for this batch (a mean beyond ``FOLD_LIMIT`` standard deviations, as of
    constant channels), or the variance overflowed (squares beyond the dtype's range), the
    result is None and the caller runs the passes instead.

    Example:
        >>> y, moments = aten_training(
        ...     torch.tensor([[1.0], [3.0]]), (1,), None, None, 0.0, "if_within_limit"
        ... )
        >>> y.flatten().tolist(), moments.mean.tolist(), moments.var.tolist()
        ([-1.0, 1.0], [2.0], [1.0])
    """
    block, restore = aten_input(x, axes)  # the plan checked that it has one
    acc = accumulation_dtype(x.dtype)
    mean, unbiased = torch.zeros(2, block.shape[1], dtype=acc, device=x.device).unbind()
    flat = [None if t is None else aten_vector(t) for t in (gamma, beta)]
    y, _, saved_invstd = torch.native_batch_norm(block, *flat, mean, unbiased, True, 1.0, epsilon)
    # (mean + 0 * var: NaN where the variance overflowed, so that the passes rescale it.)
    if not FOLDS[fold](torch.add(mean, unbiased, alpha=0), saved_invstd):
        return None
    count = x.numel() // block.shape[1]
    # Not in place: ATen saves both vectors for its backward.
    count_as_tensor, biased = _count_constants(count, acc, unbiased.device)
    var = unbiased * biased
    moments = Moments(count_as_tensor, mean, var)
    return (y if restore is None else viewed_like(y, restore)), moments
