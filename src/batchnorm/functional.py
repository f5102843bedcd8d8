r"""``batch_norm``: the single source of truth for what one call computes.

Stateless: it returns the output *and* the moving statistics the call produces, and never
mutates its arguments. :class:`batchnorm.BatchNormalization` is a thin owner of state around it.

One training call is the architecture of design.md in three steps:

1. **moments** of the input viewed for the call (ghost batches add a group dimension; weights and
   masks weight the sums), from the fast stats pass or the reference ops;
2. **affine**: per-channel maps composed in ``x_hat`` space, innermost first: renorm's ``r, d``,
   then ``adjustment``'s scale and bias, then ``gamma, beta``; and the moving statistics;
3. **apply**: ``y = x_hat * A + B`` in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from batchnorm import _thresholds
from batchnorm._affine import (
    compose,
    gamma_beta_affine,
    invstd,
    renorm_correction,
    updated_statistics,
)
from batchnorm._axes import AxisArgument, ChannelLayout, broadcasts_to, validate_axis_argument
from batchnorm._errors import (
    check,
    check_epsilon,
    check_momentum,
    check_optional_bool,
    check_renorm_clipping,
    check_virtual_batch,
    fail,
)
from batchnorm._kernels import InferenceCall, NormalizeApply, aten_training, infer
from batchnorm._moments import (
    accumulation_dtype,
    compute_moments,
    one_read_moments,
    pool_groups,
    weight_total,
)
from batchnorm._nonfinite import all_finite, check_nonfinite
from batchnorm._plan import Plan, plan_for
from batchnorm._reference import reference_normalize_apply
from batchnorm._standardize import Standardize, is_per_channel
from batchnorm._statistics import stats_pass
from batchnorm._sync import Synchronizer, check_process_group, synchronizer_for
from batchnorm._tf_rules import tensorflow_runs_fused_kernel
from batchnorm._types import Affine, Moments

__all__ = [
    "BatchNormResult",
    "Options",
    "StatisticsUpdate",
    "batch_norm",
    "batch_norm_checked",
    "check_options",
    "check_real_input",
    "check_zero_debias_momentum",
    "routes",
]

Adjustment = Callable[[torch.Size], tuple[Any, Any]]
RenormState = tuple[torch.Tensor, torch.Tensor, Mapping[str, Any]]  # mean, stddev, clipping


class StatisticsUpdate(NamedTuple):
    """One training step's update of the moving statistics, replayable on any state.

    ``apply_to(state)`` gives the new statistics from ``state`` (a mapping of TensorFlow's
    variable names to tensors) by :func:`batchnorm._affine.updated_statistics`, so an update
    can be applied later, after other updates, or not at all (deferred updates).

    Attributes:
        batch: The per-channel batch moments (ghost batches pooled), shaped like the state.
        momentum: Decay of the moving averages.
        epsilon: The call's epsilon (renorm's ``moving_variance`` uses it).
        variance_correction: Whether the stored variance is Bessel-corrected.
        renorm_momentum: Decay of renorm's statistics, or None without renorm.
        zero_debias: Whether the moving mean is zero-debiased (tf-slim).
        nonfinite: What a batch with non-finite moments does (:mod:`batchnorm._nonfinite`).
    """

    batch: Moments
    momentum: float
    epsilon: float
    variance_correction: bool
    renorm_momentum: float | None
    zero_debias: bool
    nonfinite: str = "skip"

    def apply_to(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The statistics after this update, from ``state``; never mutates it."""
        with torch.no_grad():
            return updated_statistics(
                state,
                self.batch,
                momentum=self.momentum,
                epsilon=self.epsilon,
                variance_correction=self.variance_correction,
                renorm_momentum=self.renorm_momentum,
                zero_debias=self.zero_debias,
                nonfinite=self.nonfinite,
            )


class BatchNormResult(NamedTuple):
    """What one call of :func:`batch_norm` produces.

    Attributes:
        output: The normalised tensor, in the input's dtype and memory format.
        new_stats: The statistics after this call, keyed by TensorFlow's variable names
            (``moving_mean``, ``moving_variance``, and ``moving_stddev``, ``renorm_mean``,
            ``renorm_stddev`` with renorm, ``moving_mean_biased``, ``local_step`` with
            zero-debias), shaped like the arguments; empty in inference or for an empty batch.
        update: The update that produced ``new_stats``, to replay on other state later
            (deferred updates); None when there is nothing to update.
    """

    output: torch.Tensor
    new_stats: dict[str, torch.Tensor]
    update: StatisticsUpdate | None = None


class _View(NamedTuple):
    """The input as the heavy passes see it: ``shape``, kept ``axes``, ghost ``group_dim``.

    Ghost batches split the input's batch dimension (``input_shape[0]``) into two, the ghost
    size and the group count (:func:`_make_view`); without them the view is the input.
    """

    input_shape: tuple[int, ...]
    shape: tuple[int, ...]
    axes: tuple[int, ...]
    channel_axes: tuple[int, ...]
    group_dim: int | None

    @property
    def keep_shape(self) -> tuple[int, ...]:
        """The shape of a per-kept-index tensor (moments): 1 on the reduced dimensions."""
        return tuple(s if d in self.axes else 1 for d, s in enumerate(self.shape))

    @property
    def reduced_count(self) -> int:
        """Elements per kept index (per channel, or per ghost group and channel)."""
        return math.prod([s for d, s in enumerate(self.shape) if d not in self.axes])

    def of(self, x: torch.Tensor) -> torch.Tensor:
        """The input ``x`` as the passes see it (itself without ghost batches)."""
        return x if self.group_dim is None else x.reshape(self.shape)

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        """An output computed on the view, in the input's shape."""
        return y if self.group_dim is None else y.reshape(self.input_shape)

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Per-channel vectors broadcast against the view (1 on the group dimension)."""
        return tuple(s if d in self.channel_axes else 1 for d, s in enumerate(self.shape))

    def place(self, t: torch.Tensor, argument: str) -> torch.Tensor:
        """``t``, broadcastable to the input, as a tensor that broadcasts against the view.

        Broadcasting is numpy's (and TensorFlow's): shapes align on the right. ``t`` first
        takes the input's rank (leading 1s), so its first dimension is the batch dimension;
        ghost batches then split that as they split the input's (the batch size into the
        view's two leading sizes, 1 into ``(1, 1)``). A view, never a copy.

        Raises:
            BatchNormError: naming ``argument`` if ``t`` does not broadcast to the input.
        """
        rank = len(self.input_shape)
        if not broadcasts_to(self.input_shape, t.shape):
            raise fail(
                f"{argument}.shape",
                tuple(t.shape),
                f"a shape broadcastable to the input shape {self.input_shape}",
            )
        if self.group_dim is None:
            return t
        full = t.reshape((1,) * (rank - t.dim()) + tuple(t.shape))
        leading = (1, 1) if full.shape[0] == 1 else self.shape[:2]
        return full.reshape(leading + tuple(full.shape[1:]))


def _make_view(
    layout: ChannelLayout, virtual_batch_size: int | None, virtual_batch_layout: str
) -> _View:
    """How the heavy passes see an input of ``layout``: itself, or split into ghost batches."""
    shape = layout.input_shape
    if virtual_batch_size is None:
        return _View(shape, shape, layout.axes, layout.axes, None)
    batch = shape[0]
    check(
        batch % virtual_batch_size == 0,
        "virtual_batch_size",
        virtual_batch_size,
        f"a divisor of the training batch size {batch} (input shape {shape})",
    )
    groups = batch // virtual_batch_size
    # Strided (TensorFlow): reshape to [V, B/V, ...] so ghost k holds rows k, k+G, k+2G, ...
    # Contiguous: [B/V, V, ...], ghost k holds rows kV .. kV+V-1.
    if virtual_batch_layout == "strided":
        leading, group_dim = (virtual_batch_size, groups), 1
    else:
        leading, group_dim = (groups, virtual_batch_size), 0
    channel_axes = tuple(a + 1 for a in layout.axes)
    return _View(shape, leading + shape[1:], (group_dim, *channel_axes), channel_axes, group_dim)


def _check_per_channel(tensor: torch.Tensor | None, argument: str, layout: ChannelLayout) -> None:
    """A per-channel argument must be None or a tensor with one element per channel."""
    if tensor is None:
        return
    check(isinstance(tensor, torch.Tensor), argument, type(tensor).__name__, "a torch.Tensor")
    if tensor.numel() != layout.num_channels:  # formatted only for an error
        raise fail(
            f"{argument}.shape",
            tuple(tensor.shape),
            f"{layout.num_channels} elements, one per channel (shape {layout.param_shape})",
        )


def _flat(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A checked per-channel tensor as one flat vector in ``dtype`` (itself where it is one)."""
    if tensor is None:
        return None
    flat = tensor if tensor.dim() == 1 else tensor.reshape(-1)
    return flat if flat.dtype == dtype else flat.to(dtype)


def _per_channel(
    tensor: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor | None:
    """A checked per-channel tensor viewed to ``shape`` (its broadcast shape), in ``dtype``."""
    if tensor is None:
        return None
    viewed = tensor.reshape(shape)
    return viewed if viewed.dtype == dtype else viewed.to(dtype)


def _mask_shape(mask: torch.Tensor, x: torch.Tensor, layout: ChannelLayout) -> tuple[int, ...]:
    """The shape, of the input's rank, that a Keras ``mask`` is viewed to.

    A mask of rank ``r - 1`` is Keras' (tf_keras and Keras 3 alike): the input's shape
    without its *last* axis, expanded there whatever ``axis`` is (so it may vary along the
    channel axes). A mask of the input's rank broadcasts against it as it is. Other ranks, and
    shapes that do not broadcast, are refused rather than guessed at.
    """
    rank = x.dim()
    shape = tuple(mask.shape)
    if mask.dim() == rank - 1:
        shape = (*shape, 1)
    if len(shape) == rank and broadcasts_to(x.shape, shape):
        return shape
    expected = (
        f"the input shape without its last axis, {tuple(x.shape[:-1])} (Keras expands a mask "
        "at the last axis, whatever axis is), or a full-rank shape broadcastable to the input "
        f"{tuple(x.shape)}"
    )
    without_channels = tuple(s for d, s in enumerate(x.shape) if d not in layout.axes)
    if tuple(mask.shape) == without_channels:  # the form this library took before Keras'
        axes = sorted(layout.axes)
        full = tuple(1 if d in axes else s for d, s in enumerate(x.shape))
        fix = f"mask.unsqueeze({axes[0]})" if len(axes) == 1 else f"mask.reshape{full}"
        expected += f"; for a mask over every axis but the channel axes {axes}, insert them: {fix}"
    raise fail("mask.shape", tuple(mask.shape), expected)


def _example_weights(
    x: torch.Tensor,
    layout: ChannelLayout,
    batch_weights: torch.Tensor | None,
    mask: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """Per-example weights times the mask, broadcastable to ``x``; None when neither is given."""
    weights = None
    if batch_weights is not None:
        check(
            isinstance(batch_weights, torch.Tensor),
            "batch_weights",
            type(batch_weights).__name__,
            "a torch.Tensor",
        )
        if tuple(batch_weights.shape) != (x.shape[0],):  # formatted only for an error
            raise fail(
                "batch_weights.shape",
                tuple(batch_weights.shape),
                f"({x.shape[0]},), one weight per example of the batch",
            )
        check(not batch_weights.is_complex(), "batch_weights.dtype", batch_weights.dtype, "real")
        weights = batch_weights.detach().to(dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        _check_entries(
            "batch_weights",
            {
                "a NaN or infinite entry": all_finite(weights),
                "a negative entry": (weights >= 0).all(),
            },
            "finite, non-negative weights",
        )
    if mask is not None:
        check(isinstance(mask, torch.Tensor), "mask", type(mask).__name__, "a torch.Tensor")
        check(not mask.is_complex(), "mask.dtype", mask.dtype, "bool, or real 0/1 values")
        shape = _mask_shape(mask, x, layout)
        if mask.dtype != torch.bool:
            zero_or_one = torch.logical_or(mask == 0, mask == 1).all()
            _check_entries("mask", {"an entry other than 0 and 1": zero_or_one}, "bool or 0/1")
        mask_weights = _materialized(mask.detach().reshape(shape).to(dtype))
        weights = mask_weights if weights is None else weights * mask_weights
    return weights


def check_zero_debias_momentum(zero_debias: bool, momentum: float) -> None:
    """Refuse ``momentum=1`` with zero-debias, whose moving mean would be ``0 / 0``.

    tf-slim's bias factor ``1 - momentum ** step`` is then 0 (TensorFlow writes NaN).
    """
    check(
        not (zero_debias and momentum == 1.0),
        "momentum",
        momentum,
        "below 1 with zero_debias_moving_mean=True (the bias factor 1 - momentum ** step "
        "would be 0, the moving mean 0 / 0)",
    )


def check_real_input(x: torch.Tensor, argument: str, training: bool) -> None:
    """Refuse a complex input, and an integer or bool one in training (not floating point).

    Inference casts integers and bools (their normalised values are well defined); training
    would take the moments of a quantized signal, and a complex input would lose its
    imaginary part without a word.
    """
    check(not x.is_complex(), f"{argument}.dtype", x.dtype, "a real dtype")
    check(
        not training,
        f"{argument}.dtype",
        x.dtype,
        "a floating dtype in training (integer and bool inputs are cast in inference only)",
    )


def _check_entries(argument: str, verdicts: Mapping[str, torch.Tensor], expected: str) -> None:
    """Refuse ``argument`` where a verdict (a 0-d bool tensor, by what it rules out) is False.

    On the CPU the verdicts are at hand: a BatchNormError naming the argument and the first
    failed rule. Elsewhere, and while compiling, each is asserted on the device (no host
    synchronization: an accelerator's queue runs on, and the error comes from the device).
    ``torch.func`` transforms can neither read nor assert them: unchecked there.
    """
    if torch._C._are_functorch_transforms_active():
        return
    for found, verdict in verdicts.items():
        if torch.compiler.is_compiling() or verdict.device.type != "cpu":
            torch._assert_async(verdict, f"{argument}: expected {expected}, found {found}")
        else:
            check(bool(verdict), argument, found, expected)


def _materialized(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself; while compiling, a copy of it in a buffer of its own (an identity scan).

    Three reasons, all of inductor's partitioner and fuser in torch 2.13:

    - Masks: inductor otherwise fuses their conversion from bool into every loop that reads
      the weights, and its CPU code converts bools slowly. A weighted sum over
      (32, 64, 56, 56) float32 took 9 ms with the conversion fused against 1 ms reading
      float weights (``benchmarks/compiled_weighted.py``).
    - Renorm's statistics, which the call reads for ``r, d`` and then updates in place: the
      partitioner may recompute ``r, d`` in the backward from the buffers as they are *after*
      the update, which silently changed gamma's gradient by 2.5% in a test
      (pytorch/pytorch#197039). A scan is not recomputed: its result is saved.
    - Renorm's per-channel factors (``invstd``, ``A``, ``B``), which inductor would otherwise
      recompute, square roots and divisions, in every iteration of the loops over ``x``.

    A cumulative sum over a new size-1 dimension is the identity, and a kernel inductor
    neither fuses nor recomputes.
    """
    if not torch.compiler.is_compiling():
        return t
    return t.unsqueeze(0).cumsum(0)[0]


def _adjustment_affine(
    x: torch.Tensor, view: _View, adjustment: Adjustment | None, dtype: torch.dtype
) -> Affine | None:
    """The ``adjustment``'s ``(scale, bias)`` for ``x``, placed against the view; None without."""
    if adjustment is None:
        return None
    result = adjustment(x.shape)
    check(
        isinstance(result, (tuple, list)) and len(result) == 2,
        "adjustment result",
        type(result).__name__ if not isinstance(result, (tuple, list)) else f"{len(result)} items",
        "a (scale, bias) pair of tensors or numbers broadcastable to the input",
    )
    adj_scale, adj_bias = result
    for part, value in (("scale", adj_scale), ("bias", adj_bias)):
        check(
            isinstance(value, (int, float))
            or (isinstance(value, torch.Tensor) and not value.is_complex()),
            f"adjustment {part}",
            type(value).__name__,
            "a real tensor or number",
        )
    return Affine(
        view.place(torch.as_tensor(adj_scale).to(device=x.device, dtype=dtype), "adjustment scale"),
        view.place(torch.as_tensor(adj_bias).to(device=x.device, dtype=dtype), "adjustment bias"),
    )


def _output_affine(
    pooled: Moments,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    epsilon: float,
    renorm_state: RenormState | None,
    adjusted: Affine | None,
) -> Affine:
    """Compose ``x_hat -> ((x_hat * r + d) * adj_scale + adj_bias) * gamma + beta``.

    ``pooled`` are the (detached) batch moments, per channel: renorm's input, and the shape,
    dtype and device of the per-channel maps; ``adjusted`` the adjustment's map.
    """
    output = gamma_beta_affine(gamma, beta, like=pooled.mean)
    if adjusted is not None:
        output = compose(adjusted, output)
    if renorm_state is not None:
        renorm_mean, renorm_stddev, clipping = renorm_state
        output = compose(
            renorm_correction(pooled, epsilon, renorm_mean, renorm_stddev, clipping), output
        )
    return output


def _inference_output(
    x: torch.Tensor,
    layout: ChannelLayout,
    moving_mean: torch.Tensor,
    moving_variance: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    epsilon: float,
    fast: bool,
    traced: bool,
) -> torch.Tensor:
    """Inference output: one pass (fast) or the steps written out (reference).

    Traced (compiled or exported), an input whose one channel axis is dimension 1 is
    ``torch.nn.functional.batch_norm``: one ATen batch-norm op, which exporters keep as one
    node (ONNX ``BatchNormalization``) and inductor fuses.

    The fast path is one pass, the plan's inference route (:func:`batchnorm._kernels.infer`).
    The reference path normalises with the moving statistics explicitly.
    """
    if traced and layout.axes == (1,):
        return torch.nn.functional.batch_norm(
            x,
            moving_mean.reshape(-1),
            moving_variance.reshape(-1),
            None if gamma is None else gamma.reshape(-1),
            None if beta is None else beta.reshape(-1),
            training=False,
            eps=epsilon,
        )
    shape = layout.broadcast_shape
    if fast:
        records = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (x, moving_mean, moving_variance, gamma, beta)
        )
        call = InferenceCall(
            x, layout.axes, shape, moving_mean, moving_variance, gamma, beta, epsilon
        )
        return infer(call, plan_for(x, layout.axes, records=records))
    acc = accumulation_dtype(x.dtype)
    mean = _per_channel(moving_mean, shape, acc)
    var = _per_channel(moving_variance, shape, acc)
    output = gamma_beta_affine(
        _per_channel(gamma, shape, acc),
        _per_channel(beta, shape, acc),
        like=mean,
    )
    frozen = Moments(count=torch.ones((), dtype=acc), mean=mean, var=var)
    return reference_normalize_apply(x, frozen, invstd(var, epsilon), output)


def _traced() -> bool:
    """Whether this call is being compiled, exported, traced or transformed (``torch.func``).

    Such calls take the reference path's plain, differentiable torch ops: dynamo, export and
    functorch understand them (the fast path's ``autograd.Function`` reuses buffers, writes in
    place and reads values on the host to pick routes), and inductor fuses them.
    """
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()  # the legacy ONNX exporter
        or torch._C._are_functorch_transforms_active()
    )


def batch_norm(
    x: torch.Tensor,
    moving_mean: torch.Tensor,
    moving_variance: torch.Tensor,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    *,
    training: bool,
    axis: AxisArgument = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    fused: bool | None = None,
    moving_variance_correction: bool | None = None,
    renorm: bool = False,
    renorm_clipping: Mapping[str, Any] | None = None,
    renorm_momentum: float = 0.99,
    moving_stddev: torch.Tensor | None = None,
    renorm_mean: torch.Tensor | None = None,
    renorm_stddev: torch.Tensor | None = None,
    virtual_batch_size: int | None = None,
    virtual_batch_layout: str = "strided",
    adjustment: Adjustment | None = None,
    batch_weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    zero_debias_moving_mean: bool = False,
    moving_mean_biased: torch.Tensor | None = None,
    local_step: torch.Tensor | None = None,
    synchronized: bool = False,
    process_group: Any = None,
    nonfinite: str = "skip",
) -> BatchNormResult:
    r"""Batch normalization as TensorFlow defines it, in all its forms, without hidden state.

    Training (``training=True``) normalises with the batch moments over every axis not in
    ``axis`` and returns the updated moving statistics; inference uses the moving statistics
    and ignores ``batch_weights``, ``mask``, ``adjustment`` and ghost batches.

    .. math::

        \mu = \operatorname{mean}_R(x), \quad \sigma^2 = \operatorname{mean}_R((x-\mu)^2),
        \quad \hat{x} = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \quad
        y = ((\hat{x} r + d)\, a_s + a_b)\, \gamma + \beta

    with ``r = 1, d = 0`` unless ``renorm`` and ``a_s = 1, a_b = 0`` unless ``adjustment``.
    The moving statistics follow :func:`batchnorm._affine.updated_statistics`, e.g.
    ``moving_mean <- moving_mean - (moving_mean - mu) * (1 - momentum)``. Inference computes
    ``y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``.

    Args:
        x: Input of rank >= 2, any floating dtype (integers are cast to ``moving_mean``'s
            dtype). 16-bit inputs are computed in float32 and returned in their own dtype.
        moving_mean: Per-channel moving mean, ``C`` elements (any shape, e.g. TensorFlow's).
        moving_variance: Per-channel moving variance, like ``moving_mean``.
        gamma: Per-channel scale, or None for 1 (Keras ``scale=False``).
        beta: Per-channel offset, or None for 0 (Keras ``center=False``).
        training: True for batch statistics (and new moving statistics), False for inference.
        axis: The kept (channel) axis or list of axes; Keras' ``axis``. Default -1.
        momentum: Moving-average decay in [0, 1] (TensorFlow's sense; PyTorch's is
            ``1 - momentum``; tf-slim's ``decay``). Default 0.99.
        epsilon: Added to the variance, >= 0. Default 1e-3.
        fused: None or True for the fast path, False for the reference path (plain autograd
            ops). Never changes the numbers beyond rounding, except through the rule below.
        moving_variance_correction: Store the Bessel-corrected (True) or biased (False) batch
            variance in the moving variance. None reproduces TensorFlow: corrected exactly when
            tf_keras would run its fused kernel for the same arguments (rank 4 or 5 with a
            channels-first or channels-last axis, float16/32 variables, ``fused`` not False, no
            renorm, virtual batches, adjustment, weights or mask).
        renorm: Batch Renormalization: ``r, d`` from the renorm statistics (see
            :func:`batchnorm._affine.renorm_correction`); needs ``moving_stddev``,
            ``renorm_mean`` and ``renorm_stddev``.
        renorm_clipping: Dict with keys among ``rmin``, ``rmax``, ``dmax`` (floats or 0-d
            tensors, so they can follow a schedule); a missing key means no clip.
        renorm_momentum: Decay of ``renorm_mean`` and ``renorm_stddev``, in [0, 1].
        moving_stddev: Renorm's moving standard deviation, like ``moving_mean``.
        renorm_mean: Renorm's mean for ``d``, like ``moving_mean``.
        renorm_stddev: Renorm's standard deviation for ``r`` and ``d``, like ``moving_mean``.
        virtual_batch_size: Ghost batch norm: statistics per group of this many examples
            (it must divide the batch), gamma/beta shared; the moving statistics take one step
            toward the moments pooled over the groups, which also feed renorm's ``r, d``.
        virtual_batch_layout: ``"strided"`` (TensorFlow: group ``k`` holds rows ``k, k+G,
            k+2G, ...`` for ``G`` groups) or ``"contiguous"`` (rows ``kV .. kV+V-1``).
        adjustment: Callable taking ``x.shape`` and returning ``(scale, bias)`` broadcastable
            to ``x``, applied to ``x_hat`` before gamma and beta, in training only.
        batch_weights: Shape ``(batch,)``, non-negative: weighted moments (tf-slim). Integer
            weights equal repeating rows. Constants for autograd.
        mask: Boolean (or 0/1) tensor. Keras' form has the input's shape without its
            *last* axis (``x.shape[:-1]``) and is expanded there, whatever ``axis`` is (as
            tf_keras and Keras 3 do); a tensor of the input's rank broadcastable to it is
            taken as it is. Positions where it is False do not contribute to the statistics,
            but are normalised like the others.
        zero_debias_moving_mean: tf-slim's debiased moving mean; needs ``moving_mean_biased``
            (like ``moving_mean``) and ``local_step`` (a scalar).
        moving_mean_biased: Zero-debias' biased moving mean, like ``moving_mean``.
        local_step: Zero-debias' step count, a scalar.
        synchronized: In training, the moments of the global batch of the processes of
            ``process_group``, as one process on their concatenated batch
            (:mod:`batchnorm._sync`: one collective forward, one backward). Outside an
            initialized process group, or in a group of one, one process's moments. Ghost
            batches are each process's own; their pooled moments, which feed the moving
            statistics and renorm, are merged across the processes.
        process_group: The ``torch.distributed`` group to synchronize over (None: the
            default group).
        nonfinite: What a training batch whose mean or variance is NaN or Inf does to the
            moving statistics: ``"skip"`` (default) returns them unchanged, ``"propagate"``
            updates as TensorFlow does (writing the NaN in), ``"raise"`` raises
            :class:`batchnorm.NonFiniteBatchError` (reading one value on the host). The
            output is the batch's own either way. See :mod:`batchnorm._nonfinite`.

    Returns:
        :class:`BatchNormResult`: the output, the new statistics, and the update itself.

    Raises:
        BatchNormError: on a bad argument; nothing is computed.

    Example:
        >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
        >>> y, stats, _ = batch_norm(x, torch.zeros(2), torch.ones(2), training=True,
        ...                          epsilon=0.0, momentum=0.5)
        >>> y.round(decimals=4).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
        >>> stats["moving_mean"].tolist(), stats["moving_variance"].round(decimals=4).tolist()
        ([1.0, 10.0], [1.0, 50.5])
    """
    options = check_options(
        axis=axis,
        momentum=momentum,
        epsilon=epsilon,
        fused=fused,
        moving_variance_correction=moving_variance_correction,
        renorm=renorm,
        renorm_clipping=renorm_clipping,
        renorm_momentum=renorm_momentum,
        virtual_batch_size=virtual_batch_size,
        virtual_batch_layout=virtual_batch_layout,
        adjustment=adjustment,
        zero_debias_moving_mean=zero_debias_moving_mean,
        synchronized=synchronized,
        process_group=process_group,
        nonfinite=nonfinite,
    )
    state = {"moving_mean": moving_mean, "moving_variance": moving_variance}
    if renorm:
        state |= {
            "moving_stddev": moving_stddev,
            "renorm_mean": renorm_mean,
            "renorm_stddev": renorm_stddev,
        }
    if zero_debias_moving_mean:
        state |= {"moving_mean_biased": moving_mean_biased, "local_step": local_step}
    return batch_norm_checked(
        x, state, gamma, beta, options, training=training, batch_weights=batch_weights, mask=mask
    )


class Options(NamedTuple):
    """The options of :func:`batch_norm`, checked once by :func:`check_options`.

    A layer checks its options when they change and passes them to
    :func:`batch_norm_checked` on every call; the meaning of each is :func:`batch_norm`'s.
    """

    axis: AxisArgument
    momentum: float
    epsilon: float
    fused: bool | None
    moving_variance_correction: bool | None
    renorm: bool
    renorm_clipping: Mapping[str, Any]
    renorm_momentum: float
    virtual_batch_size: int | None
    virtual_batch_layout: str
    adjustment: Adjustment | None
    zero_debias_moving_mean: bool
    synchronized: bool = False
    process_group: Any = None
    nonfinite: str = "skip"


def check_options(
    *,
    axis: AxisArgument = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    fused: bool | None = None,
    moving_variance_correction: bool | None = None,
    renorm: bool = False,
    renorm_clipping: Mapping[str, Any] | None = None,
    renorm_momentum: float = 0.99,
    virtual_batch_size: int | None = None,
    virtual_batch_layout: str = "strided",
    adjustment: Adjustment | None = None,
    zero_debias_moving_mean: bool = False,
    synchronized: bool = False,
    process_group: Any = None,
    nonfinite: str = "skip",
) -> Options:
    """:func:`batch_norm`'s options, checked, as :class:`Options` (defaults as there).

    Raises:
        BatchNormError: naming the first bad option, its value and what was expected.

    Example:
        >>> check_options(momentum=0.9).momentum
        0.9
    """
    check(
        adjustment is None or callable(adjustment),
        "adjustment",
        adjustment,
        "None or a callable (input shape) -> (scale, bias)",
    )
    for flag, value in (
        ("renorm", renorm),
        ("zero_debias_moving_mean", zero_debias_moving_mean),
        ("synchronized", synchronized),
    ):
        check(isinstance(value, bool), flag, value, "True or False")
    check_optional_bool(fused, "fused")
    check_optional_bool(moving_variance_correction, "moving_variance_correction")
    check_virtual_batch(virtual_batch_size, virtual_batch_layout)
    validate_axis_argument(axis)
    check_zero_debias_momentum(zero_debias_moving_mean, momentum)
    return Options(
        axis,
        check_momentum(momentum),
        check_epsilon(epsilon),
        fused,
        moving_variance_correction,
        renorm,
        check_renorm_clipping(renorm_clipping),
        check_momentum(renorm_momentum, "renorm_momentum"),
        virtual_batch_size,
        virtual_batch_layout,
        adjustment,
        zero_debias_moving_mean,
        synchronized,
        check_process_group(process_group),
        check_nonfinite(nonfinite),
    )


def batch_norm_checked(
    x: torch.Tensor,
    state: Mapping[str, torch.Tensor],
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    options: Options,
    *,
    training: bool,
    batch_weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    layout: ChannelLayout | None = None,
    state_checked: bool = False,
) -> BatchNormResult:
    """:func:`batch_norm` with its options checked already (:func:`check_options`).

    ``state`` holds the statistics by TensorFlow name, those the options need (renorm's and
    zero-debias' too). The tensors are checked here, per call, unless ``state_checked`` says
    they are a built layer's own (one element per channel of ``layout``, the input's, which
    the layer checked against its build).
    """
    check(isinstance(x, torch.Tensor), "x", type(x).__name__, "a torch.Tensor")
    check(isinstance(training, bool), "training", training, "True or False")
    for name in _needed_state(options):
        tensor = state.get(name)
        check(
            isinstance(tensor, torch.Tensor),
            name,
            type(tensor).__name__,
            "a torch.Tensor (state the chosen options need)",
        )
    moving_mean = state["moving_mean"]
    if x.device != moving_mean.device:
        raise fail(
            "x.device",
            x.device,
            f"{moving_mean.device}, where the moving statistics are (move the input, or the "
            "layer with .to())",
        )
    if not x.is_floating_point():
        check_real_input(x, "x", training)
        x = x.to(moving_mean.dtype)
    if layout is None:
        layout = ChannelLayout.from_axis(options.axis, x.shape)
    if options.virtual_batch_size is not None:
        check(
            0 not in layout.axes,
            "axis",
            options.axis,
            "no batch axis (0) among the channel axes when virtual_batch_size is set",
        )
    traced = _traced()
    sync = synchronizer_for(options.synchronized, options.process_group) if training else None
    fast = options.fused is not False and not traced
    if not state_checked:
        for name, tensor in {**state, "gamma": gamma, "beta": beta}.items():
            if name == "local_step":
                check(tensor.numel() == 1, "local_step.shape", tuple(tensor.shape), "a scalar")
            else:
                _check_per_channel(tensor, name, layout)
    if not training:
        output = _inference_output(
            x,
            layout,
            moving_mean,
            state["moving_variance"],
            gamma,
            beta,
            options.epsilon,
            fast,
            traced,
        )
        return BatchNormResult(output, {})
    acc = accumulation_dtype(x.dtype)
    weights = _example_weights(x, layout, batch_weights, mask, acc)
    view = _make_view(layout, options.virtual_batch_size, options.virtual_batch_layout)
    xv = view.of(x)
    wv = view.place(weights, "batch_weights and mask") if weights is not None else None
    if layout.reduced_count == 0 and sync is None:  # (synchronized: the others' moments)
        return BatchNormResult(_empty_batch_output(xv, view, gamma, beta, options), {})
    adjusted = _adjustment_affine(x, view, options.adjustment, acc)
    renorm_state = None
    if options.renorm:
        renorm_state = (
            _per_channel(_materialized(state["renorm_mean"]), view.param_shape, acc),
            _per_channel(_materialized(state["renorm_stddev"]), view.param_shape, acc),
            options.renorm_clipping,
        )
    normalize = _fast_normalize if fast else _reference_normalize
    if sync is None and options.fused is not False and torch.compiler.is_compiling():
        composed = options.renorm or adjusted is not None
        normalize = _compiled_route(view, wv, composed=composed, elements=xv.numel())
    # Routes whose backward does not keep an excluded NaN out by itself (the eager CPU backward
    # and the compiled closed form do).
    cleans_itself = normalize is _compiled_standardized or (
        normalize is _fast_normalize and xv.device.type == "cpu"
    )
    if wv is not None and not cleans_itself:
        normalize = _excluding_nonfinite(normalize)
    call = TrainingCall(xv, view, wv, gamma, beta, options.epsilon, renorm_state, adjusted, sync)
    y, pooled = normalize(call)
    update = StatisticsUpdate(
        Moments(*(_shaped_like(t, moving_mean) for t in pooled)),
        options.momentum,
        options.epsilon,
        _variance_correction(options, layout, moving_mean.dtype, weighted=weights is not None),
        options.renorm_momentum if options.renorm else None,
        options.zero_debias_moving_mean,
        options.nonfinite,
    )
    return BatchNormResult(view.restore(y), update.apply_to(state), update)


def _needed_state(options: Options) -> tuple[str, ...]:
    """The statistics, by TensorFlow name, that a call with ``options`` reads and updates."""
    names = ("moving_mean", "moving_variance")
    if options.renorm:
        names += ("moving_stddev", "renorm_mean", "renorm_stddev")
    if options.zero_debias_moving_mean:
        names += ("moving_mean_biased", "local_step")
    return names


def _shaped_like(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """A per-channel ``t`` in the shape of a ``state`` tensor (a 0-d count as it is)."""
    return t if t.dim() == 0 or t.shape == state.shape else t.reshape(state.shape)


def _empty_batch_output(
    xv: torch.Tensor,
    view: _View,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    options: Options,
) -> torch.Tensor:
    """An empty batch's output: empty, with zero gradients (moments (0, 0)); no update."""
    acc = accumulation_dtype(xv.dtype)
    shape = view.param_shape
    zeros = torch.zeros(shape, dtype=acc, device=xv.device)
    empty = Moments(torch.zeros((), dtype=acc), zeros, zeros)
    output = gamma_beta_affine(
        _per_channel(gamma, shape, acc), _per_channel(beta, shape, acc), like=zeros
    )
    y = reference_normalize_apply(xv, empty, invstd(zeros, options.epsilon), output)
    return view.restore(y)


class TrainingCall(NamedTuple):
    """What the training routes read: the viewed input, its weights and the per-channel maps."""

    xv: torch.Tensor  # the input as the passes see it (_View.of)
    view: _View
    wv: torch.Tensor | None  # batch weights times the mask, placed against the view
    gamma: torch.Tensor | None
    beta: torch.Tensor | None
    epsilon: float
    renorm_state: RenormState | None
    adjusted: Affine | None  # the adjustment's map
    sync: Synchronizer | None = None  # merges the moments across processes (synchronized)


def _fast_normalize(call: TrainingCall) -> tuple[torch.Tensor, Moments]:
    """The fast path's training output and pooled batch moments: the plan's routes.

    Where the plan takes ATen's whole training kernel (plain options, small inputs), one call
    gives both; otherwise the stats pass, the affine, and the apply. Synchronized, the stats
    pass's moments are merged across the processes (ghost batches: only the pooled ones) and
    the apply's backward sums too; an affine that is not per channel takes the reference
    path's ops, which differentiate through the merge.
    """
    xv, view, wv, gamma, beta, epsilon, renorm_state, adjusted, sync = call
    synced = sync is not None and view.group_dim is None
    plan = _training_plan(
        xv, view, wv, adjusted, renorm=renorm_state is not None, synchronized=synced
    )
    acc = accumulation_dtype(xv.dtype)
    if plan.training == "aten":  # None where its folded apply would lose precision
        trained = aten_training(
            xv, view.axes, _flat(gamma, acc), _flat(beta, acc), epsilon, plan.fold
        )
        if trained is not None:
            return trained
    if sync is not None and plan.reduce == "composite":
        return _reference_normalize(call)
    moments = _local_moments(xv, view, wv, plan)  # builds no graph
    with torch.no_grad():
        if synced:
            moments = sync.merge(moments, xv.dtype)
        pooled = moments if view.group_dim is None else pool_groups(moments, view.group_dim)
        if sync is not None and not synced:
            pooled = sync.merge(pooled, xv.dtype, within_groups=True)
    gamma_v, beta_v = (_per_channel(t, view.param_shape, acc) for t in (gamma, beta))
    output = _output_affine(pooled, gamma_v, beta_v, epsilon, renorm_state, adjusted)
    inv = invstd(moments.var, epsilon)
    y = NormalizeApply.apply(
        xv,
        wv,
        moments.mean,
        inv,
        output.scale,
        output.shift,
        view.axes,
        epsilon,
        plan,
        sync if synced else None,
        moments.count if synced else None,
    )
    return y, pooled


def _local_moments(xv: torch.Tensor, view: _View, wv: torch.Tensor | None, plan: Plan) -> Moments:
    """The stats pass's moments; zeros with a zero count for a view with no rows."""
    if view.reduced_count == 0:  # (only synchronized calls get here without rows)
        acc = accumulation_dtype(xv.dtype)
        zeros = torch.zeros(view.keep_shape, dtype=acc, device=xv.device)
        return Moments(torch.zeros((), dtype=acc), zeros, zeros)
    return stats_pass(xv, view.axes, wv, plan)


def _training_plan(
    xv: torch.Tensor,
    view: _View,
    wv: torch.Tensor | None,
    adjusted: Affine | None,
    *,
    renorm: bool,
    synchronized: bool = False,
) -> Plan:
    """The fast path's plan for a training call on the view ``xv``."""
    per_channel = adjusted is None or broadcasts_to(view.keep_shape, *(t.shape for t in adjusted))
    plain = wv is None and view.group_dim is None and adjusted is None and not renorm
    return plan_for(
        xv, view.axes, wv, per_channel=per_channel, plain=plain, synchronized=synchronized
    )


def routes(
    x: torch.Tensor,
    *,
    training: bool,
    axis: AxisArgument = -1,
    fused: bool | None = None,
    renorm: bool = False,
    virtual_batch_size: int | None = None,
    virtual_batch_layout: str = "strided",
    adjustment: Adjustment | None = None,
    batch_weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    records: bool = False,
    synchronized: bool = False,
) -> str:
    """Which route each heavy pass takes for a call of :func:`batch_norm` on ``x``: one line.

    The arguments are :func:`batch_norm`'s that choose routes (``records``: whether an input
    of an inference call needs a gradient; ``synchronized``: the routes of a synchronized call
    in a group of several processes). Nothing is computed but the plan (and the
    ``adjustment``, which is called for its shapes); the fast path's routes are named by
    :class:`batchnorm._plan.Plan`, the reference path (``fused=False``) is ``"reference"``.

    Example:
        >>> routes(torch.randn(8, 16, 4, 4), training=True, axis=1)
        'training=aten infer=aten'
        >>> routes(torch.randn(8, 16, 4, 4), training=True, axis=1, fused=False)
        'reference'
    """
    options = check_options(
        axis=axis,
        fused=fused,
        renorm=renorm,
        virtual_batch_size=virtual_batch_size,
        virtual_batch_layout=virtual_batch_layout,
        adjustment=adjustment,
    )
    if options.fused is False or _traced():
        return "reference"
    layout = ChannelLayout.from_axis(options.axis, x.shape)
    if not training:
        return plan_for(x, layout.axes, records=records).describe()
    acc = accumulation_dtype(x.dtype)
    weights = _example_weights(x, layout, batch_weights, mask, acc)
    view = _make_view(layout, virtual_batch_size, virtual_batch_layout)
    wv = view.place(weights, "batch_weights and mask") if weights is not None else None
    adjusted = _adjustment_affine(x, view, adjustment, acc)
    synchronized = synchronized and view.group_dim is None  # ghosts normalise per process
    plan = _training_plan(view.of(x), view, wv, adjusted, renorm=renorm, synchronized=synchronized)
    return plan.describe()


def _compiled_route(
    view: _View, wv: torch.Tensor | None, *, composed: bool, elements: int | torch.SymInt
) -> Callable[[TrainingCall], tuple[torch.Tensor, Moments]]:
    """The training route of an unsynchronized call being compiled (or exported).

    ATen's batch-norm op (:func:`_compiled_normalize`) for plain calls (unweighted, no ghost
    batches, no affine ``composed`` onto ``x_hat``: renorm or an adjustment) whose kept
    dimensions are 1 to k (channels on dimension 1, or several channel axes after it) with at
    least two values a channel (a guard on symbolic sizes), when they are exported (one
    standard node) or smaller than ``COMPILED_CLOSED_FORM_ELEMENTS``; else plain ops with the
    closed-form gradient (:func:`_compiled_standardized`): one read of ``x`` for the moments
    and one elementwise pass forward, one reduction and one elementwise pass back, which
    inductor compiles to faster loops than its own batch norm from that size on (and whose
    shifted sums keep the variance exact at large offsets, where inductor's ``var_mean`` does
    not). Measured by ``bench --compile`` (float32, forward and backward, x compiled native
    plain): see ``_thresholds.COMPILED_CLOSED_FORM_ELEMENTS`` for plain calls; in closed form
    at (32, 64, 56, 56) NCHW and channels_last renorm 0.94 and 0.99, ghost batches 0.94 and
    0.96, batch weights 0.98 and 1.19, a mask 1.05 and 0.89 before the batch-last sums of
    :func:`batchnorm._moments.sum_over` (channels_last weights 0.73-0.99 after). An adjustment
    composed after ATen's op took 1.27 and 1.18 at (64, 256, 14, 14), 1.12 and 1.36 at
    (8, 32, 112, 112) (autograd's reduction for the affine's gradient is one more pass); in
    closed form 1.09, 1.00, 0.92 and 0.98.
    """
    kept = view.axes
    aten_op = kept == tuple(range(1, len(kept) + 1)) and view.reduced_count >= 2
    plain = wv is None and not composed and view.group_dim is None and aten_op
    # Exporting first: the size test would put a guard on a dynamic batch.
    exported = torch.compiler.is_exporting()
    if plain and (exported or elements < _thresholds.COMPILED_CLOSED_FORM_ELEMENTS):
        return _compiled_normalize
    return _compiled_standardized


def _compiled_standardized(call: TrainingCall) -> tuple[torch.Tensor, Moments]:
    r"""A compiled training call as :class:`batchnorm._standardize.Standardize`.

    ``x_hat`` from the (weighted) moments and the composed affine ``x_hat * A + B`` in one
    function with batch norm's closed-form gradient; autograd takes ``A``'s and ``B``'s
    gradients on to gamma and beta (renorm's ``r, d`` and the adjustment are constants).
    """
    xv, view, wv, gamma, beta, epsilon, renorm_state, adjusted, _ = call  # (unsynchronized)
    acc = accumulation_dtype(xv.dtype)
    # In memory order (a view): inductor's loops then run along memory, also where the kept
    # dimensions are apart in it (ghost batches of channels_last inputs).
    order = xv.dim_order()
    back = tuple(order.index(d) for d in range(xv.dim()))
    xm = xv.permute(order)
    wm = None if wv is None else _with_rank(wv, xv.dim()).permute(order)
    reduce_dims = tuple(i for i, d in enumerate(order) if d not in view.axes)
    with torch.no_grad():
        moments = one_read_moments(xm, reduce_dims, wm)
    total = moments.count.to(moments.mean)
    inv = invstd(moments.var, epsilon)
    moments_v = Moments(*(t if t.dim() == 0 else t.permute(back) for t in moments))
    pooled = moments_v if view.group_dim is None else pool_groups(moments_v, view.group_dim)
    gamma_v, beta_v = (_per_channel(t, view.param_shape, acc) for t in (gamma, beta))
    output = _output_affine(pooled, gamma_v, beta_v, epsilon, renorm_state, adjusted)
    scale, shift = (_with_rank(t, xv.dim()).permute(order) for t in output)
    if renorm_state is not None:
        # Per-channel factors in buffers of their own: inductor otherwise recomputes renorm's
        # square roots and divisions in every iteration of the loops over x (1.18-1.28x
        # compiled native at (64, 256, 14, 14) and (8, 32, 112, 112), 1.10-1.13x with them).
        factors = (inv, scale, shift)
        inv, scale, shift = (
            _materialized(t) if is_per_channel(t, reduce_dims) else t for t in factors
        )
    y = Standardize.apply(xm, wm, moments.mean, inv, total, reduce_dims, scale, shift)
    return y.permute(back).to(xv.dtype), pooled


def _with_rank(t: torch.Tensor, rank: int) -> torch.Tensor:
    """``t`` with leading size-1 dimensions up to ``rank`` (a view, broadcasting alike)."""
    return t.reshape((1,) * (rank - t.dim()) + t.shape)


def _compiled_normalize(call: TrainingCall) -> tuple[torch.Tensor, Moments]:
    r"""A plain training call under ``torch.compile``: ATen's batch-norm op.

    Inductor lowers ``torch.nn.functional.batch_norm`` and its backward to the kernels it gives
    ``torch.nn.BatchNorm2d``, centred (``(x - mean) * invstd``), so a compiled call costs what a
    compiled native one does. Several kept dimensions are flattened into ATen's channels. As
    :func:`batchnorm._kernels.aten_training` does eagerly, zeroed running statistics with
    momentum 1 receive each channel's mean and unbiased variance.
    """
    xv, view, _, gamma, beta, epsilon, _, _, _ = call  # (plain)
    acc = accumulation_dtype(xv.dtype)
    kept = view.axes
    channels = math.prod([view.shape[d] for d in kept])
    rows = xv.reshape(view.shape[0], channels, *view.shape[kept[-1] + 1 :])
    mean = torch.zeros(channels, dtype=acc, device=xv.device)
    unbiased = torch.zeros(channels, dtype=acc, device=xv.device)
    weight, bias = _flat(gamma, acc), _flat(beta, acc)
    y = torch.nn.functional.batch_norm(rows, mean, unbiased, weight, bias, True, 1.0, epsilon)
    count = weight_total(None, rows.shape, [d for d in range(rows.dim()) if d != 1]).to(acc)
    var = unbiased * ((count - 1) / count)
    return y, Moments(count, mean.reshape(view.keep_shape), var.reshape(view.keep_shape))


def _excluding_nonfinite(
    normalize: Callable[[TrainingCall], tuple[torch.Tensor, Moments]],
) -> Callable[[TrainingCall], tuple[torch.Tensor, Moments]]:
    """A weighted training route for which excluded non-finite values do not exist.

    A NaN or Inf where the weight (or mask) is 0 never reaches the moments, but a route's
    backward would still form ``0 * NaN`` there (the sums of ``dy * x_hat`` over every
    position). This route runs ``normalize`` on the input with such values replaced by 0 and
    gives those positions a NaN output without a gradient: they contribute nothing to any
    gradient and receive none. Tensor ops, no host read: the reference route, and the fast
    path off the CPU (the eager CPU backward detects the case itself,
    :meth:`batchnorm._kernels.NormalizeApply.backward`; the compiled closed form takes their
    ``x_hat`` as 0, :class:`batchnorm._standardize.Standardize`).
    """

    def route(call: TrainingCall) -> tuple[torch.Tensor, Moments]:
        assert call.wv is not None
        bad = torch.logical_and(call.wv == 0, ~torch.isfinite(call.xv))
        y, pooled = normalize(call._replace(xv=torch.where(bad, 0.0, call.xv)))
        return y.masked_fill(bad, float("nan")), pooled

    return route


def _reference_normalize(call: TrainingCall) -> tuple[torch.Tensor, Moments]:
    """The reference path's training output and pooled (detached) batch moments.

    ``x`` is upcast once, so autograd sums the moments' and the apply's gradients in the
    accumulation dtype. Synchronized, the moments are merged across the processes before they
    normalise (differentiably: :class:`batchnorm._sync.Synchronizer`); with ghost batches each
    process normalises with its own groups' moments and only the pooled ones are merged.
    """
    xv, view, wv, gamma, beta, epsilon, renorm_state, adjusted, sync = call
    acc = accumulation_dtype(xv.dtype)
    xs = xv.to(acc)
    reduce_dims = [d for d in range(len(view.shape)) if d not in view.axes]
    if view.reduced_count == 0:  # no rows here (synchronized)
        zeros = xs.sum(dim=reduce_dims, keepdim=True)  # exactly 0, and in the graph
        moments = Moments(torch.zeros((), dtype=acc), zeros, zeros)
    else:
        moments = compute_moments(xs, reduce_dims, wv)
    if sync is not None and view.group_dim is None:
        moments = sync.merge(moments, xv.dtype)
    pooled = moments if view.group_dim is None else pool_groups(moments, view.group_dim)
    detached = Moments(*(t.detach() for t in pooled))
    if sync is not None and view.group_dim is not None:
        detached = sync.merge(detached, xv.dtype, within_groups=True)
    gamma_v, beta_v = (_per_channel(t, view.param_shape, acc) for t in (gamma, beta))
    output = _output_affine(detached, gamma_v, beta_v, epsilon, renorm_state, adjusted)
    y = reference_normalize_apply(xs, moments, invstd(moments.var, epsilon), output)
    return y.to(xv.dtype), detached


def _variance_correction(
    options: Options, layout: ChannelLayout, dtype: torch.dtype, *, weighted: bool
) -> bool:
    """Whether the moving variance takes the Bessel-corrected batch variance.

    As given, or TensorFlow's rule (:func:`batchnorm._tf_rules.tensorflow_runs_fused_kernel`).
    """
    if options.moving_variance_correction is not None:
        return options.moving_variance_correction
    return tensorflow_runs_fused_kernel(
        layout.raw_axis,
        layout.rank,
        options.fused,
        dtype,
        renorm=options.renorm,
        virtual_batch_size=options.virtual_batch_size,
        adjustment=options.adjustment,
        weighted=weighted,
    )
