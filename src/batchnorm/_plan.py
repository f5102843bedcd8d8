"""Which route each heavy pass of the fast path takes, decided once per input signature.

A :class:`Plan` names a route for every pass: the statistics, the apply (folded, and the centred
form it falls back to), the backward reduction, the input gradient and inference. It is chosen
by :func:`plan_for` from what is known before any value is read: the shape, strides, dtype and
device of the input, the kept axes, the shape of the weights, whether the output's affine maps
are per channel, and whether inference must record a graph. The decisions are cached per
signature, so a call pays one dictionary lookup; the route functions themselves
(``_statistics.STATS_ROUTES``, ``_kernels.APPLY_ROUTES`` ...) contain no routing ``if``.

Every threshold the decisions compare against is in :mod:`batchnorm._thresholds`, with the
measurement behind it; the cache key includes their values, so a test that patches them gets
the route it forces.

One decision depends on the data and stays inside its route: whether the apply may fold the
mean into the shift (``|mean| * invstd <= FOLD_LIMIT``). ``Plan.fold`` says how it is made:
``"always"`` (16-bit inputs), ``"never"`` (affine maps that are not per channel, and inputs
on accelerators, whose devices would have to synchronise with the host to decide), or
``"if_within_limit"`` (float inputs on the CPU, where the per-channel values are already in
host memory and reading them stalls no device queue).

Example:
    >>> x = torch.randn(8, 16, 4, 4)
    >>> plan = plan_for(x, (1,))
    >>> plan.stats, plan.apply, plan.fold, plan.reduce
    ('var_mean', 'scale_and_shift', 'if_within_limit', 'aten')
    >>> plan.describe()
    'stats=var_mean apply=scale_and_shift/centred:if_within_limit reduce=aten dx=aten infer=aten'
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import NamedTuple

import torch

from batchnorm import _thresholds
from batchnorm._aten import aten_input, aten_slices, folded_rows
from batchnorm._reductions import block_view_sizes

__all__ = ["Plan", "ROUTE_NAMES", "plan_for", "varying_dims"]

SIXTEEN_BIT = (torch.bfloat16, torch.float16)


class Plan(NamedTuple):
    """The route of every heavy pass for one input signature (see the module docstring).

    Attributes:
        stats: The statistics route (``_statistics.STATS_ROUTES``).
        apply: The apply route while the mean folds (``_kernels.APPLY_ROUTES``).
        centred: The apply route when it does not (a centred form).
        fold: ``"always"``, ``"never"`` or ``"if_within_limit"``.
        reduce: The backward's per-channel sums (``_kernels.REDUCE_ROUTES``).
        input_grad: The backward's input gradient (``_kernels.INPUT_GRAD_ROUTES``);
            ``"aten"`` and ``"composite"`` come with their reduction.
        infer: The inference route (``_kernels.INFER_ROUTES``).
        regroup: Whether ATen slices come from a regrouped copy (16-bit ghost batches of
            channels_last inputs, whose examples are too small to slice).
        training: ``"aten"`` where ATen's whole training kernel does the training call
            (statistics, apply and its own backward, :func:`batchnorm._kernels.aten_training`:
            plain options on small inputs, where a call's fixed cost is most of its time),
            else ``"passes"``: the routes above.
    """

    stats: str
    apply: str
    centred: str
    fold: str
    reduce: str
    input_grad: str
    infer: str
    regroup: bool = False
    training: str = "passes"

    def describe(self) -> str:
        """One line naming every route, as ``bench`` prints it."""
        regroup = "(regrouped)" if self.regroup else ""
        applies = {"always": self.apply, "never": self.centred}
        apply = applies.get(self.fold, f"{self.apply}/{self.centred}:{self.fold}")
        if self.training == "aten":
            return f"training=aten infer={self.infer}"
        return (
            f"stats={self.stats}{regroup} apply={apply} reduce={self.reduce} "
            f"dx={self.input_grad} infer={self.infer}"
        )


# Every route a plan can name, per pass: what ``test_every_route_is_exercised`` covers.
ROUTE_NAMES: dict[str, tuple[str, ...]] = {
    "stats": (
        "var_mean",
        "two_pass",
        "weighted_rows",
        "weighted_blocks",
        "aten",
        "aten_folded_rows",
        "aten_slices",
        "aten_rows",
        "aten_weighted_slices",
        "upcast_blocks",
    ),
    "apply": ("aten_unit", "scale_and_shift", "aten_slices", "upcast", "centred", "centred_upcast"),
    "reduce": ("aten", "aten_slices", "blocked", "composite"),
    "input_grad": ("aten", "aten_synchronized", "blocked", "composite"),
    "infer": ("aten", "folded", "autograd"),
    "training": ("aten", "passes"),
}


def plan_for(
    x: torch.Tensor,
    axes: Sequence[int],
    weights: torch.Tensor | None = None,
    *,
    per_channel: bool = True,
    plain: bool = False,
    records: bool = False,
    synchronized: bool = False,
) -> Plan:
    """The plan for ``x`` with kept ``axes``, cached per signature.

    ``weights`` (broadcastable to ``x``) are those of the statistics; ``per_channel`` says
    whether the apply's scale and shift are per kept index (False with an ``adjustment``
    whose results vary along reduced dimensions); ``records`` whether inference must build
    a graph (an input needs a gradient); ``plain`` whether the training call has none of the
    options that compose into the affine or weight the statistics (renorm, adjustment, ghost
    batches, weights, masks), so that ATen's training kernel computes it all;
    ``synchronized`` whether the backward takes the group's sums (then ATen's kernel, whose
    counts are this process's, makes no input gradient).
    """
    key = (
        x.shape,
        x.stride(),
        x.dtype,
        x.device.type,
        tuple(axes),
        None if weights is None else weights.shape,
        per_channel,
        plain,
        records,
        synchronized,
        _threshold_values(),
    )
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:  # many signatures (shapes that keep changing): start over
            _PLANS.clear()
        plan = _PLANS[key] = _decide(*key)
    return plan


# The plans decided so far, by signature (a dictionary: a lookup is the call's whole cost).
_PLANS: dict[tuple[object, ...], Plan] = {}
_MAX_PLANS = 1024


def _threshold_values() -> tuple[float, ...]:
    return (
        _thresholds.SMALL_INPUT_ELEMENTS,
        _thresholds.ATEN_APPLY_ELEMENTS,
        _thresholds.SLICE_ELEMENTS,
        _thresholds.ATEN_TRAINING_ELEMENTS,
        _thresholds.ROW_FOLD_ROWS,
        _thresholds.ROW_FOLD_LIMIT,
    )


def _decide(
    shape: torch.Size,
    strides: tuple[int, ...],
    dtype: torch.dtype,
    device: str,
    axes: tuple[int, ...],
    weights_shape: torch.Size | None,
    per_channel: bool,
    plain: bool,
    records: bool,
    synchronized: bool,
    thresholds: tuple[float, ...],
) -> Plan:
    """Every route for one signature; a meta tensor stands in for the data."""
    del thresholds  # part of the cache key only: the decisions below read the module
    x = torch.empty_strided(shape, strides, dtype=dtype, device="meta")
    weights = None if weights_shape is None else torch.empty(weights_shape, device="meta")
    sixteen_bit = dtype in SIXTEEN_BIT
    has_block_view = aten_input(x, axes) is not None
    slices = aten_slices(x, axes, regroup=sixteen_bit and weights is None)
    stats = _stats_route(x, axes, weights, sixteen_bit, has_block_view, slices, device == "cpu")
    apply, aten_applies = _apply_route(x, axes, sixteen_bit, has_block_view)
    sizes = block_view_sizes(x, axes)
    centred = "centred_upcast" if sixteen_bit else "centred"
    if not per_channel:
        fold = "never"
    elif sixteen_bit:
        fold = "always"
    else:
        fold = "if_within_limit" if device == "cpu" else "never"
    reduce_slices = aten_slices(x, axes, regroup=sixteen_bit)
    if not per_channel:
        reduce, input_grad = "composite", "composite"
    else:
        if has_block_view:
            reduce = "aten"
        elif reduce_slices is not None:
            reduce = "aten_slices"
        else:
            reduce = "blocked"
        if reduce != "aten" or weights is not None:
            input_grad = "blocked"
        elif not synchronized:
            input_grad = "aten"
        else:  # ATen's dx from this process's sums, corrected (16-bit: no 16-bit sums)
            input_grad = "blocked" if sixteen_bit else "aten_synchronized"
    infer = "aten" if aten_applies else "autograd" if records else "folded"
    uses_regroup = (stats == "aten_slices" and slices.regrouped) or (
        reduce == "aten_slices" and reduce_slices.regrouped
    )
    channels = prod(shape[d] for d in axes)
    aten_training = (
        plain
        and not synchronized
        and device == "cpu"  # ATen's CPU kernel; elsewhere untested, the passes run
        and has_block_view
        and sizes is not None
        and sizes[2] > 1  # channels not innermost: its channels-last kernel rounds worse
        and x.numel() <= _thresholds.ATEN_TRAINING_ELEMENTS
        and x.numel() >= 2 * channels  # two values a channel: ATen's unbiased variance is finite
    )
    training = "aten" if aten_training else "passes"
    return Plan(
        stats, apply, centred, fold, reduce, input_grad, infer, bool(uses_regroup), training
    )


def _stats_route(
    x: torch.Tensor,
    axes: tuple[int, ...],
    weights: torch.Tensor | None,
    sixteen_bit: bool,
    has_block_view: bool,
    slices: object,
    on_cpu: bool,
) -> str:
    reduce_dims = [d for d in range(x.dim()) if d not in axes]
    if sixteen_bit and weights is None:
        if has_block_view:
            # Rows folded into channels for ATen's CPU kernel, whose running sums round worse
            # the more rows each thread sums (elsewhere unmeasured: the kernel as it is).
            folds = on_cpu and folded_rows(x, axes) is not None
            return "aten_folded_rows" if folds else "aten"
        return "aten_slices" if slices is not None else "upcast_blocks"
    if sixteen_bit:
        varying = varying_dims(weights, x, reduce_dims)
        if varying:
            row_axes = sorted([*axes, *varying])
            if aten_input(x, row_axes) is not None:
                return "aten_rows"
        sliced = aten_slices(x, axes)
        if sliced is not None and sliced.constant_within(weights):
            return "aten_weighted_slices"
        return "upcast_blocks"
    if weights is not None:
        varying = varying_dims(weights, x, reduce_dims)
        return "weighted_blocks" if varying is None else "weighted_rows"
    return "var_mean" if 0 < x.numel() <= _thresholds.SMALL_INPUT_ELEMENTS else "two_pass"


def _apply_route(
    x: torch.Tensor, axes: tuple[int, ...], sixteen_bit: bool, has_block_view: bool
) -> tuple[str, bool]:
    """The folded apply's route, and whether ATen's inference kernel is the faster one.

    ATen's kernel is, for 16-bit inputs, NCHW rows and channels_last inputs that have a block
    view; for matrices (channels innermost, rank 2 or 3) one ``addcmul`` is as fast or faster.
    (channels_last: a (32, 64, 56, 56) float32 training step 4% faster with ATen's kernel,
    where the output is fresh memory, as it is while the graph keeps earlier outputs alive;
    ``addcmul`` is faster only into memory just freed.) For float inputs the training apply
    takes it only from ``ATEN_APPLY_ELEMENTS`` elements (its fixed cost).
    """
    sizes = block_view_sizes(x, axes)
    not_a_matrix = sizes is not None and (sizes[2] > 1 or x.dim() >= 4)
    aten_faster = has_block_view and (sixteen_bit or not_a_matrix)
    if aten_faster and (sixteen_bit or x.numel() >= _thresholds.ATEN_APPLY_ELEMENTS):
        return "aten_unit", aten_faster
    if not sixteen_bit:
        return "scale_and_shift", aten_faster
    return ("aten_slices" if aten_slices(x, axes) is not None else "upcast"), aten_faster


def varying_dims(
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
