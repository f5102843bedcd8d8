"""``batch_norm``: the single source of truth for what one call computes.

Stateless: it returns the output *and* the moving statistics the call produces, and never
mutates its arguments. :class:`batchnorm.BatchNormalization` is a thin owner of state around it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from batchnorm._affine import (
    bessel_factor,
    ema_update,
    gamma_beta_affine,
    inference_affine,
    invstd,
)
from batchnorm._axes import AxisArgument, ChannelLayout
from batchnorm._errors import check, check_epsilon, check_momentum, check_optional_bool
from batchnorm._kernels import NormalizeApply, stats_pass
from batchnorm._moments import accumulation_dtype
from batchnorm._reference import reference_moments, reference_normalize_apply
from batchnorm._tf_rules import tensorflow_runs_fused_kernel
from batchnorm._types import Moments

__all__ = ["BatchNormResult", "batch_norm"]


class BatchNormResult(NamedTuple):
    """What one call of :func:`batch_norm` produces.

    Attributes:
        output: The normalised tensor, in the input's dtype and memory format.
        new_stats: The statistics after this call, keyed by TensorFlow's variable names
            (``moving_mean``, ``moving_variance``) and shaped like the arguments; empty when
            nothing is to be updated (inference, or an empty batch).

    """

    output: torch.Tensor
    new_stats: dict[str, torch.Tensor]


def _per_channel(
    tensor: torch.Tensor | None, argument: str, layout: ChannelLayout, dtype: torch.dtype
) -> torch.Tensor | None:
    """``tensor`` viewed to broadcast against the input, in ``dtype``; checks its size."""
    if tensor is None:
        return None
    check(isinstance(tensor, torch.Tensor), argument, type(tensor).__name__, "a torch.Tensor")
    check(
        tensor.numel() == layout.num_channels,
        f"{argument}.shape",
        tuple(tensor.shape),
        f"{layout.num_channels} elements, one per channel (shape {layout.param_shape})",
    )
    return tensor.reshape(layout.broadcast_shape).to(dtype)


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
) -> BatchNormResult:
    r"""Batch normalization as TensorFlow defines it, without hidden state.

    Training (``training=True``) normalises with the batch moments over every axis not in
    ``axis`` and returns the updated moving statistics; inference uses the moving statistics.

    .. math::

        \mu = \operatorname{mean}_R(x), \quad \sigma^2 = \operatorname{mean}_R((x-\mu)^2),
        \quad y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

        \text{moving\_mean} \leftarrow \text{moving\_mean}
            - (\text{moving\_mean} - \mu)(1 - \text{momentum})

        \text{moving\_variance} \leftarrow \text{moving\_variance}
            - (\text{moving\_variance} - c\,\sigma^2)(1 - \text{momentum})

    where ``c = n / max(n - 1, 1)`` (``n`` elements per channel) when the stored variance is
    Bessel-corrected and 1 otherwise. Inference computes
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
            ``1 - momentum``). Default 0.99.
        epsilon: Added to the variance, >= 0. Default 1e-3.
        fused: None or True for the fast path, False for the reference path (plain autograd
            ops). Never changes the numbers beyond rounding, except through the rule below.
        moving_variance_correction: Store the Bessel-corrected (True) or biased (False) batch
            variance in the moving variance. None reproduces TensorFlow: corrected exactly when
            tf_keras would run its fused kernel for the same ``axis``, rank, ``fused`` and
            variable dtype (rank 4 or 5 with a channels-first or channels-last axis).

    Returns:
        :class:`BatchNormResult` with the output and the new statistics.

    Raises:
        BatchNormError: on a bad argument; nothing is computed.

    Example:
        >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
        >>> y, stats = batch_norm(x, torch.zeros(2), torch.ones(2), training=True,
        ...                       epsilon=0.0, momentum=0.5)
        >>> y.round(decimals=4).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
        >>> stats["moving_mean"].tolist(), stats["moving_variance"].round(decimals=4).tolist()
        ([1.0, 10.0], [1.0, 50.5])

    """
    check(isinstance(x, torch.Tensor), "x", type(x).__name__, "a torch.Tensor")
    check(isinstance(training, bool), "training", training, "True or False")
    momentum = check_momentum(momentum)
    epsilon = check_epsilon(epsilon)
    check_optional_bool(fused, "fused")
    check_optional_bool(moving_variance_correction, "moving_variance_correction")
    check(
        isinstance(moving_mean, torch.Tensor),
        "moving_mean",
        type(moving_mean).__name__,
        "a torch.Tensor",
    )
    check(
        isinstance(moving_variance, torch.Tensor),
        "moving_variance",
        type(moving_variance).__name__,
        "a torch.Tensor",
    )
    if not (x.is_floating_point()):
        check(not x.is_complex(), "x.dtype", x.dtype, "a real dtype")
        x = x.to(moving_mean.dtype)
    layout = ChannelLayout.from_axis(axis, x.shape)
    acc = accumulation_dtype(x.dtype)
    mean_b = _per_channel(moving_mean, "moving_mean", layout, acc)
    var_b = _per_channel(moving_variance, "moving_variance", layout, acc)
    gamma_b = _per_channel(gamma, "gamma", layout, acc)
    beta_b = _per_channel(beta, "beta", layout, acc)
    assert mean_b is not None and var_b is not None
    output_affine = gamma_beta_affine(gamma_b, beta_b, like=mean_b)
    fast = fused is not False

    if not training:
        if fast:
            folded = inference_affine(mean_b, var_b, epsilon, output_affine)
            y = torch.addcmul(folded.shift, x.to(acc), folded.scale).to(x.dtype)
        else:
            frozen = Moments(count=torch.ones((), dtype=acc), mean=mean_b, var=var_b)
            y = reference_normalize_apply(x, frozen, invstd(var_b, epsilon), output_affine)
        return BatchNormResult(y, {})

    if layout.reduced_count == 0:
        # An empty batch: nothing to learn from. The output is empty; gradients are zeros (the
        # normalisation runs with moments (0, 0)); the moving statistics are left alone.
        zeros = torch.zeros_like(mean_b)
        empty = Moments(count=torch.zeros((), dtype=acc), mean=zeros, var=zeros)
        y = reference_normalize_apply(x, empty, invstd(zeros, epsilon), output_affine)
        return BatchNormResult(y, {})
    if fast:
        moments, centered = stats_pass(x, layout.axes)
        inv = invstd(moments.var, epsilon)
        scale, shift = output_affine
        y = NormalizeApply.apply(x, centered, moments.mean, inv, scale, shift, layout.axes)
    else:
        moments = reference_moments(x, layout.axes)
        y = reference_normalize_apply(x, moments, invstd(moments.var, epsilon), output_affine)

    if moving_variance_correction is None:
        moving_variance_correction = tensorflow_runs_fused_kernel(
            layout.raw_axis, layout.rank, fused, moving_mean.dtype
        )
    with torch.no_grad():
        batch_var = moments.var.detach()
        if moving_variance_correction:
            batch_var = batch_var * bessel_factor(moments.count)
        new_mean = ema_update(
            moving_mean,
            moments.mean.detach().reshape(moving_mean.shape).to(moving_mean.dtype),
            momentum,
        )
        new_var = ema_update(
            moving_variance,
            batch_var.reshape(moving_variance.shape).to(moving_variance.dtype),
            momentum,
        )
    return BatchNormResult(y, {"moving_mean": new_mean, "moving_variance": new_var})
