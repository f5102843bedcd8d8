"""A layer's steady-state calls: the decisions of its general call, kept per input signature.

A training loop calls each layer with inputs of one shape, strides, dtype and device, and the
general call (:func:`batchnorm.functional.batch_norm_checked`) derives the same checks,
layout, plan and update rule every time: Python work that, for a small input, costs more than
ATen's kernel itself. A :class:`Lane` is what those decisions come to where nothing else is
left to decide, kept by the layer per signature (:func:`lane_key`):

- inference whose plan is ATen's inference kernel (``Plan.infer == "aten"``): one call of
  :func:`batchnorm._aten.native_inference`;
- a training call with plain options whose plan is ATen's training kernel
  (``Plan.training == "aten"``): :func:`batchnorm._kernels.aten_training`, then the two
  moving averages written into the buffers (:func:`batchnorm._affine.ema_update_`) where the
  update comes to nothing else, :func:`batchnorm._affine.updated_statistics` and the layer's
  commit otherwise.

A lane is found from the call's own arguments (:func:`lane_key`), before the layer resolves
them. It runs the general call's own route functions and arithmetic on the same tensors, so
its results are the general call's to the bit (``tests/test_lanes.py``). Where the training
kernel would fold a mean beyond ``FOLD_LIMIT`` (the data decide), :func:`run_lane` returns
None and the general call runs. The layer keeps lanes only for calls without mask or
weights, outside compiling, tracing and ``torch.func``; it drops them when an option
attribute changes or its tensors move (``.to()``, ``.double()``).

Measured by ``benchmarks/per_call.py`` (float32 NCHW, 30 rounds of 100 calls, one run): a
(8, 16, 4, 4) training step takes 157 us with lanes against 257 us without (``nn.BatchNorm2d``:
108 us, ``F.batch_norm``: 81 us), an inference call 18 us against 33 (24 and 9); six runs put
the training step at 1.39-1.64x ``nn.BatchNorm2d`` (median 1.50x), (32, 64, 8, 8) at
1.12-1.17x.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import torch

from batchnorm._affine import bessel_factor, decay_factor, ema_update_, updated_statistics
from batchnorm._aten import native_inference
from batchnorm._axes import ChannelLayout
from batchnorm._kernels import aten_training
from batchnorm._moments import accumulation_dtype
from batchnorm._plan import plan_for
from batchnorm._types import Moments
from batchnorm.functional import (
    Options,
    _flat,
    _shaped_like,
    _variance_correction,
)

__all__ = ["Lane", "LaneOwner", "lane_key", "make_lane", "run_lane"]


class LaneOwner(Protocol):
    """What a lane reads of its layer (:class:`batchnorm.BatchNormalization`)."""

    _parameters: dict[str, torch.Tensor | None]
    _buffers: dict[str, torch.Tensor | None]
    deferred_updates: bool

    def _state(self) -> dict[str, torch.Tensor]: ...

    def _commit(self, new_stats: Mapping[str, torch.Tensor]) -> None: ...


class Lane(NamedTuple):
    """The decided call: inference, or a plain training call with its update rule.

    Attributes:
        axes: The kept axes of the input.
        epsilon: The layer's epsilon.
        rule: Training: the keywords of :func:`batchnorm._affine.updated_statistics`
            (the fields of :class:`batchnorm.functional.StatisticsUpdate` after its batch);
            None in inference.
        fold: Training: how ATen's kernel may fold (``Plan.fold``).
        cast: The dtype the layer casts this input to (its dtype policy), or None.
        in_place: Training where the rule comes to two moving averages and nothing else (no
            zero-debias, no guard, the batch moments in the buffers' dtype): their factors,
            ``1 - momentum`` and the variance's correction (None without), for
            :func:`batchnorm._affine.ema_update_` on the buffers themselves. None otherwise:
            :func:`batchnorm._affine.updated_statistics` and the layer's commit.
    """

    axes: tuple[int, ...]
    epsilon: float
    rule: Mapping[str, Any] | None = None
    fold: str = ""
    in_place: tuple[torch.Tensor | float, torch.Tensor | float | None] | None = None
    cast: torch.dtype | None = None


def lane_key(
    inputs: torch.Tensor, training: bool | None, module_training: bool, trainable: bool
) -> tuple[object, ...]:
    """The signature a lane is kept under: the input's, and what decides the call's mode.

    ``training`` is the call's argument (None or a bool), ``module_training`` the module's
    mode and ``trainable`` the layer's: together they resolve whether the call normalises with
    the batch and updates. (Not grad mode: where inference is ATen's kernel, whether it
    records changes no route.)
    """
    return (
        inputs.shape,
        inputs.stride(),
        inputs.dtype,
        inputs.device,
        training,
        module_training,
        trainable,
    )


def make_lane(
    layer: LaneOwner,
    x: torch.Tensor,
    options: Options,
    layout: ChannelLayout,
    normalise: bool,
    update: bool,
    cast: torch.dtype | None = None,
) -> Lane | None:
    """The lane of a call the general path just made with ``x`` (checked there), or None.

    ``cast`` is the dtype the layer cast its input to for ``x`` (None: not cast).

    None where something is still decided per call: the reference path, synchronization,
    any option beyond the plain ones, deferred updates, a frozen layer's training call, or a
    plan other than ATen's kernel.
    """
    if options.fused is False or options.synchronized or normalise != update:
        return None
    axes = layout.axes
    if not normalise:
        return Lane(axes, options.epsilon, cast=cast) if plan_for(x, axes).infer == "aten" else None
    plain = not options.renorm and options.virtual_batch_size is None and not options.adjustment
    if not plain or layer.deferred_updates:
        return None
    plan = plan_for(x, axes, plain=True)
    if plan.training != "aten":
        return None
    dtype = layer._buffers["moving_mean"].dtype
    correction = _variance_correction(options, layout, dtype, weighted=False)
    rule = {
        "momentum": options.momentum,
        "epsilon": options.epsilon,
        "variance_correction": correction,
        "renorm_momentum": None,
        "zero_debias": options.zero_debias_moving_mean,
        # Where the kernel's result passed the fold check, its moments are finite (the check
        # fails on NaN and on an overflowed variance), so the update needs no guard of its own.
        "nonfinite": "propagate" if plan.fold == "if_within_limit" else options.nonfinite,
    }
    in_place = None
    if (
        not rule["zero_debias"]
        and rule["nonfinite"] == "propagate"
        and accumulation_dtype(x.dtype) == dtype
    ):
        device = layer._buffers["moving_mean"].device
        count = float(layout.reduced_count)
        correction = bessel_factor(count, layer._buffers["moving_variance"])
        in_place = (
            decay_factor(options.momentum, dtype, device),
            correction if rule["variance_correction"] else None,
        )
    return Lane(axes, options.epsilon, rule, plan.fold, in_place, cast)


def run_lane(layer: LaneOwner, lane: Lane, inputs: torch.Tensor) -> torch.Tensor | None:
    """The output of the decided call on the layer's ``inputs``, or None to decline.

    Declines a training call whose batch mean lies beyond the folding limit (ATen's kernel
    folds it): the general call then runs the passes.
    """
    x = inputs if lane.cast is None else inputs.to(lane.cast)
    parameters, buffers = layer._parameters, layer._buffers
    gamma, beta = parameters["gamma"], parameters["beta"]
    if lane.rule is None:
        mean, variance = buffers["moving_mean"], buffers["moving_variance"]
        return native_inference(x, lane.axes, mean, variance, gamma, beta, lane.epsilon)
    acc = accumulation_dtype(x.dtype)
    trained = aten_training(
        x, lane.axes, _flat(gamma, acc), _flat(beta, acc), lane.epsilon, lane.fold
    )
    if trained is None:
        return None
    y, moments = trained
    if lane.in_place is not None:
        decay, correction = lane.in_place
        moving_mean, moving_variance = buffers["moving_mean"], buffers["moving_variance"]
        var = _shaped_like(moments.var, moving_variance)
        ema_update_(moving_mean, _shaped_like(moments.mean, moving_mean), decay)
        ema_update_(moving_variance, var if correction is None else var * correction, decay)
        return y
    state = layer._state()
    like = state["moving_mean"]
    batch = Moments(
        moments.count, _shaped_like(moments.mean, like), _shaped_like(moments.var, like)
    )
    # The update's own function, without apply_to's no-grad mode: nothing here needs a gradient.
    layer._commit(updated_statistics(state, batch, **lane.rule))
    return y
