"""The fast path (``fused=None``) against the reference path (``fused=False``), over drawn calls.

Oracle: the reference path, plain autograd ops over :mod:`batchnorm._moments` and
:mod:`batchnorm._reference`, given the same arguments (``moving_variance_correction`` explicit,
since by default it follows TensorFlow's rule, which depends on ``fused``). Every call compares
the output, every new moving statistic, and every gradient (``x``, gamma, beta and the
adjustment's scale and bias) for a random ``dy``.

The calls cover: ranks 2 to 5 with sizes 1 to 4 (size-1 batch, channel and spatial
dimensions, now and then an empty batch); one or several kept axes, negative and positive;
contiguous, channels_last / channels_last_3d, arbitrarily permuted and non-dense inputs (gaps
NaN); strided per-channel arguments (neighbours NaN, so a misread shows); float64 (the
tolerance table's float64 entry), float32, and in a test of their own bfloat16 and float16
(against the reference path in float64: see :func:`_oracle`); parameters in the input's dtype
or another; training and inference; gradients for every leaf, the input only, the parameters
only, none, or none under ``torch.inference_mode()``; ``dy`` contiguous, laid out like ``x``,
or expanded; and every option alone, in pairs and in threes: renorm (with and without
clipping), ghost batches (strided and contiguous), ``adjustment`` (results of any shape
broadcastable to the input: per channel, per element, per example, mixed, and of lower rank,
e.g. ``(C,)``), ``batch_weights`` (with zeros), full-rank masks (bool or 0/1; with zero
weights, NaN where they exclude), zero-debias, ``center``/``scale`` False, momentum and
epsilon variety.

The fast path picks routes by size thresholds that small inputs never cross by themselves;
each call draws the forcing values (:data:`ROUTES`), so every route (var_mean or two-pass
sums, ATen's kernels or torch ops, ATen slices, regrouped slices or blocks, one block or many,
folded or centred apply) runs on small inputs.

Examples per test (explicit settings, so they hold under the ``ci`` profile as well, which
derandomizes them): ``test_fast_path_matches_reference_path_for_any_call`` 1000,
``test_fast_path_matches_reference_path_for_sixteen_bit_inputs`` 300,
``test_adjustment_of_any_broadcastable_shape`` 150,
``test_adjustment_not_broadcastable_to_the_input_is_refused`` 25, each with its explicit
examples on top; the regression tests are plain. The file takes about 20 s under ``CI=true``
on the 2-core VM.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from configs import CLIP, Config, state_tensors
from conftest import APPLY_ROUTES, STATS_ROUTES, TRAINING_ROUTES, tolerance
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import batchnorm as bn
from batchnorm import _thresholds
from batchnorm.functional import batch_norm

# Every threshold that picks a fast-path route, with the values that force each side. The
# first two are conftest's tables. SLICE_ELEMENTS 1 cuts inputs without a block view into
# ATen slices, 2^62 never; BLOCK_ELEMENTS 1 makes the blocked sums, the blocked backward and
# the upcast loops take one slice of the outermost dimension at a time. These two are also
# drawn between 1 and the input's size (:data:`SIZED_ROUTES`): some slices large enough and
# others not (16-bit ghost batches of channels_last then slice a regrouped copy), blocks of
# several slices. FOLD_LIMIT -1 never folds the mean into the shift (the centred apply); the
# default folds it where that costs at most a few units of roundoff. (A larger limit is no
# route of its own but a precision loss the library avoids on purpose.) ATEN_TRAINING_ELEMENTS
# 0 runs the passes for plain calls, the default ATen's whole training kernel where it may.
ROUTES: dict[tuple[Any, str], list[Any]] = {
    (_thresholds, "SMALL_INPUT_ELEMENTS"): sorted(STATS_ROUTES.values()),
    (_thresholds, "ATEN_APPLY_ELEMENTS"): sorted(APPLY_ROUTES.values()),
    (_thresholds, "SLICE_ELEMENTS"): [1, _thresholds.SLICE_ELEMENTS, 1 << 62],
    (_thresholds, "BLOCK_ELEMENTS"): [1, _thresholds.BLOCK_ELEMENTS],
    (_thresholds, "FOLD_LIMIT"): [-1.0, _thresholds.FOLD_LIMIT],
    (_thresholds, "ATEN_TRAINING_ELEMENTS"): sorted(TRAINING_ROUTES.values()),
}
SIZED_ROUTES = ((_thresholds, "SLICE_ELEMENTS"), (_thresholds, "BLOCK_ELEMENTS"))

OPTIONS = (
    "renorm",
    "renorm_clipping",
    "virtual_batch",
    "contiguous_ghosts",
    "adjustment",
    "batch_weights",
    "mask",
    "zero_debias",
)

CLIPPINGS = (
    CLIP,
    {"rmax": 1.05},
    {"dmax": 0.0},
    {"rmin": torch.tensor(0.8), "rmax": torch.tensor(1.25), "dmax": torch.tensor(0.3)},
)

LAYOUTS = ("channels_last", "contiguous", "permuted", "non-dense")

# float32: the two paths round differently (folded against centred apply, different sum
# orders), a few units of roundoff of values and of the sums inside gradients.
GRADIENT_TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (2e-4, 2e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (4e-3, 4e-3),
}


@dataclass(frozen=True)
class Call:
    """One drawn call: the input's shape and layout, the arguments, the forced routes."""

    shape: tuple[int, ...]
    axis: int | list[int]
    layout: str
    order: tuple[int, ...]
    dtype: torch.dtype
    parameter_dtype: torch.dtype
    training: bool
    gradients: str
    dy_layout: str
    poisoned: bool
    center: bool
    scale: bool
    strided_parameters: bool
    momentum: float
    epsilon: float
    correction: bool
    options: dict[str, Any]
    routes: dict[tuple[Any, str], Any] = field(repr=False)
    seed: int = 0

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def axes(self) -> list[int]:
        listed = [self.axis] if isinstance(self.axis, int) else self.axis
        return sorted(a % self.rank for a in listed)


@st.composite
def route_forcing(draw, numel: int) -> dict[tuple[Any, str], Any]:
    """Values of :data:`ROUTES` for an input of ``numel`` elements."""
    routes = {key: draw(st.sampled_from(values)) for key, values in ROUTES.items()}
    for key in SIZED_ROUTES:
        if numel > 1 and draw(st.booleans()):
            routes[key] = draw(st.integers(1, numel))
    return routes


@st.composite
def axis_arguments(draw, rank: int, ghost: bool) -> int | list[int]:
    """A valid ``axis``: one or several kept dimensions, each positive or negative."""
    candidates = list(range(1 if ghost else 0, rank))
    kept = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=rank - 1, unique=True))
    axis = [a - rank if draw(st.booleans()) else a for a in kept]
    return axis[0] if len(axis) == 1 and draw(st.booleans()) else axis


@st.composite
def broadcast_shapes(draw, shape: tuple[int, ...], axes: list[int], kind: str) -> tuple:
    """A shape broadcastable to ``shape``: per channel, per element or mixed, maybe lower rank.

    Leading size-1 dimensions are dropped at random, as numpy's right-aligned broadcasting
    allows: a per-channel result for a last axis can be ``(C,)``.
    """
    if kind == "channel":
        sizes = [s if d in axes else 1 for d, s in enumerate(shape)]
    elif kind == "element":
        sizes = list(shape)
    else:
        sizes = [s if draw(st.booleans()) else 1 for s in shape]
    leading_ones = next((i for i, s in enumerate(sizes) if s != 1), len(sizes))
    return tuple(sizes[draw(st.integers(0, leading_ones)) :])


FLOAT_DTYPES = (torch.float64, torch.float64, torch.float64, torch.float32)
SIXTEEN_BIT_DTYPES = (torch.bfloat16, torch.float16)

# The dtype of the state and parameters for each input dtype, the first the most common.
PARAMETER_DTYPES = {
    torch.float64: (torch.float64, torch.float64, torch.float32),
    torch.float32: (torch.float32, torch.float32, torch.float64),
    torch.bfloat16: (torch.float32, torch.float32, torch.bfloat16),
    torch.float16: (torch.float32, torch.float32, torch.float16),
}

# The incoming gradient: contiguous, laid out like the input (no copy to match it), or
# expanded along the batch (stride 0, as from a loss broadcast over examples).
DY_LAYOUTS = ("contiguous", "like x", "expanded")

# Which leaves need gradients: all, the input only, the parameters (gamma, beta, the
# adjustment's) only, none (no graph at all), none in inference mode (the fast path runs
# under ``torch.inference_mode()``, whose tensors cannot be written outside it).
GRADIENTS = ("all", "all", "all", "input", "parameters", "none", "inference mode")
WITHOUT_GRAPH = ("none", "inference mode")


@st.composite
def calls(draw, dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES) -> Call:
    """A call of :func:`batch_norm` with its options, layout and forced routes."""
    options_drawn = draw(st.sets(st.sampled_from(OPTIONS), max_size=3))
    ghost = bool(options_drawn & {"virtual_batch", "contiguous_ghosts"})
    rank = draw(st.integers(2, 5))
    sizes = st.integers(1, 4)
    rest = [draw(sizes) for _ in range(rank - 1)]
    options: dict[str, Any] = {}
    if ghost:
        ghost_size, groups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        batch = ghost_size * groups
        options["virtual_batch_size"] = ghost_size
        if "contiguous_ghosts" in options_drawn:
            options["virtual_batch_layout"] = "contiguous"
    else:
        batch = draw(sizes) if draw(st.integers(0, 9)) < 9 else 0  # now and then empty
    shape = (batch, *rest)
    axis = draw(axis_arguments(rank, ghost))
    axes = sorted(a % rank for a in ([axis] if isinstance(axis, int) else axis))
    if options_drawn & {"renorm", "renorm_clipping"}:
        options["renorm"] = True
        options["renorm_momentum"] = draw(st.sampled_from([0.0, 0.7, 0.99]))
        if "renorm_clipping" in options_drawn:
            options["renorm_clipping"] = draw(st.sampled_from(CLIPPINGS))
    if "adjustment" in options_drawn:
        kinds = st.sampled_from(["channel", "element", "mixed"])
        options["adjustment"] = (
            draw(broadcast_shapes(shape, axes, draw(kinds))),
            draw(broadcast_shapes(shape, axes, draw(kinds))),
        )
    if "batch_weights" in options_drawn:
        options["batch_weights"] = draw(st.sampled_from(["float", "int"]))
    if "mask" in options_drawn:
        # Full rank (x's shape with some sizes 1); rank-(r-1) masks have tests of their own.
        options["mask"] = tuple(s if draw(st.booleans()) else 1 for s in shape)
    if "zero_debias" in options_drawn:
        options["zero_debias_moving_mean"] = True
    # channels_last twice as often as the others where it exists: ATen takes it as it is.
    layouts = ["channels_last", *LAYOUTS] if rank in (4, 5) else LAYOUTS[1:]
    dtype = draw(st.sampled_from(dtypes))
    gradients = draw(st.sampled_from(GRADIENTS))
    # What zero weights or the mask leave out may hold NaN (then no gradients: they are NaN).
    excluding = bool(options_drawn & {"batch_weights", "mask"}) and gradients in WITHOUT_GRAPH
    return Call(
        shape=shape,
        axis=axis,
        layout=draw(st.sampled_from(layouts)),
        order=tuple(draw(st.permutations(range(rank)))),
        dtype=dtype,
        parameter_dtype=draw(st.sampled_from(PARAMETER_DTYPES[dtype])),
        training=draw(st.sampled_from([True, True, True, False])),
        gradients=gradients,
        dy_layout=draw(st.sampled_from(DY_LAYOUTS)),
        poisoned=excluding and draw(st.booleans()),
        center=draw(st.sampled_from([True, True, False])),
        scale=draw(st.sampled_from([True, True, False])),
        strided_parameters=draw(st.sampled_from([False, True, True])),
        # (momentum 1 with zero-debias is refused: tf-slim's bias factor would be 0)
        momentum=draw(
            st.sampled_from(
                [0.0, 0.5, 0.9, 0.99] + ([] if "zero_debias_moving_mean" in options else [1.0])
            )
        ),
        epsilon=draw(st.sampled_from([1e-3, 0.1] + ([1e-6] if dtype == torch.float64 else []))),
        correction=draw(st.booleans()),
        options=options,
        routes=draw(route_forcing(math.prod(shape))),
        seed=draw(st.integers(0, 2**16)),
    )


def _laid_out(x: torch.Tensor, call: Call) -> torch.Tensor:
    """A copy of ``x`` with the memory layout ``call`` asks for, free to be a leaf."""
    if call.layout == "channels_last":
        fmt = torch.channels_last if call.rank == 4 else torch.channels_last_3d
        return x.clone(memory_format=fmt)
    if call.layout == "contiguous":
        return x.clone()
    if call.layout == "permuted":
        return torch.empty_permuted(x.shape, call.order, dtype=x.dtype).copy_(x)
    # Non-dense: every other element of a buffer twice as large along the innermost dimension
    # in memory, the gaps NaN.
    inner = call.order[-1]
    doubled = list(x.shape)
    doubled[inner] *= 2
    buffer = torch.empty_permuted(doubled, call.order, dtype=x.dtype).fill_(float("nan"))
    return buffer[(slice(None),) * inner + (slice(None, None, 2),)].copy_(x)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a view with stride 2 everywhere, NaN in between: a misread shows."""
    return torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)[..., 0]


def _inputs(call: Call) -> dict[str, Any]:
    """The tensors of ``call``, made from its seed: input, state, dy and per-call tensors."""
    generator = torch.Generator().manual_seed(call.seed)
    extra = {
        "renorm": call.options.get("renorm", False),
        "zero_debias_moving_mean": call.options.get("zero_debias_moving_mean", False),
    }
    config = Config(call.shape, axis=call.axis, center=call.center, scale=call.scale, extra=extra)
    x = config.make_input(generator).to(torch.float64)
    state = {
        k: v.to(call.parameter_dtype) if v is not None and k != "local_step" else v
        for k, v in state_tensors(config, x, generator).items()
    }
    made: dict[str, Any] = {
        "state": state,
        "dy": torch.randn(call.shape, generator=generator, dtype=torch.float64).to(call.dtype),
    }
    kept = torch.ones(call.shape, dtype=torch.bool)
    kind = call.options.get("batch_weights")
    if kind is not None:
        if kind == "float":
            weights = torch.rand(call.shape[0], generator=generator, dtype=torch.float64)
            weights = torch.where(weights < 0.2, 0.0, weights)
        else:
            weights = torch.randint(0, 4, (call.shape[0],), generator=generator).double()
        made["batch_weights"] = weights
        kept &= (weights != 0).reshape((-1,) + (1,) * (call.rank - 1))
    if "mask" in call.options:
        mask = torch.rand(call.options["mask"], generator=generator) > 0.3
        made["mask"] = mask if call.seed % 2 else mask.to(call.parameter_dtype)  # bool or 0/1
        kept &= mask
    if "adjustment" in call.options:
        scale_shape, bias_shape = call.options["adjustment"]
        made["adjustment"] = (
            (torch.rand(scale_shape, generator=generator, dtype=torch.float64) + 0.5),
            torch.randn(bias_shape, generator=generator, dtype=torch.float64),
        )
    if call.poisoned and call.training:
        x = torch.where(kept, x, float("nan"))
    made["x"] = x.to(call.dtype)
    return made


def _incoming(call: Call, made: dict[str, Any]) -> torch.Tensor:
    """The gradient flowing into the output, laid out as ``call.dy_layout`` says."""
    if call.dy_layout == "like x":
        return _laid_out(made["dy"], call)
    if call.dy_layout == "expanded":  # the first example's, for every example
        return made["dy"].narrow(0, 0, min(1, call.shape[0])).expand(call.shape)
    return made["dy"]


def _run(call: Call, made: dict[str, Any], fused: bool | None):
    """One path's result and its gradients, by leaf name (x, gamma, beta, adjustment's)."""
    needs = {"input": call.gradients in ("all", "input")}
    needs["parameters"] = call.gradients in ("all", "parameters")
    x = _laid_out(made["x"], call).requires_grad_(needs["input"])
    leaves = {"x": x}
    arguments: dict[str, Any] = {}
    for name, value in made["state"].items():
        if name in ("gamma", "beta") and value is not None:
            value = leaves[name] = value.clone().requires_grad_(needs["parameters"])
        strided = call.strided_parameters and value is not None and name != "local_step"
        arguments[name] = _strided(value) if strided else value
    adjusted: list[bool] = []  # whether the call ran the adjustment
    if "adjustment" in made:
        adjust = [t.clone().requires_grad_(needs["parameters"]) for t in made["adjustment"]]
        leaves |= {"adjustment scale": adjust[0], "adjustment bias": adjust[1]}

        def adjustment(input_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
            assert tuple(input_shape) == call.shape
            adjusted.append(True)
            return adjust[0], adjust[1]

        arguments["adjustment"] = adjustment
    options = {k: v for k, v in call.options.items() if k not in ("adjustment", "mask")}
    options |= {k: made[k] for k in ("batch_weights", "mask") if k in made}
    # The adjustment runs in training only: in inference, its tensors are not used.
    used = [name for name in leaves if call.training or not name.startswith("adjustment")]
    leaves = {name: leaves[name] for name in used if leaves[name].requires_grad}
    inference_mode = call.gradients == "inference mode" and fused is None
    grad_mode = torch.inference_mode() if inference_mode else torch.set_grad_enabled(bool(leaves))
    with grad_mode:
        result = batch_norm(
            x,
            **arguments,
            training=call.training,
            axis=call.axis,
            momentum=call.momentum,
            epsilon=call.epsilon,
            fused=fused,
            moving_variance_correction=call.correction,
            **options,
        )
    if not adjusted:  # (an empty batch never calls the adjustment: its tensors are unused)
        leaves = {name: leaf for name, leaf in leaves.items() if not name.startswith("adjust")}
    if not leaves:
        assert not result.output.requires_grad
        return result, {}
    grads = torch.autograd.grad(
        result.output, list(leaves.values()), _incoming(call, made), allow_unused=True
    )
    return result, dict(zip(leaves, grads, strict=True))


def _oracle(call: Call, made: dict[str, Any]) -> tuple[Call, dict[str, Any]]:
    """The reference path's call: the same one, but in float64 for 16-bit inputs.

    On a 16-bit input the reference path rounds each of its gradient contributions to 16 bits
    before autograd adds them up in the leaf, where the fast path rounds once: it is then the
    less accurate of the two. So 16-bit calls are checked against the reference path run in
    float64 on the same values.
    """
    if call.dtype not in SIXTEEN_BIT_DTYPES:
        return call, made

    def upcast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(torch.float64)
        if isinstance(value, (tuple, list)):
            return type(value)(upcast(v) for v in value)
        if isinstance(value, dict):
            return {k: upcast(v) for k, v in value.items()}
        return value

    wide = dataclasses.replace(call, dtype=torch.float64, parameter_dtype=torch.float64)
    return wide, upcast(made)


def _conditioning(call: Call, made: dict[str, Any]) -> float:
    """How many roundings of ``x`` an ``x_hat`` may amplify: ``max |x| / sqrt(epsilon)``, >= 1.

    Two correct paths differ by a few units of roundoff of ``x`` times ``invstd`` (where they
    round the mean, or centre in another order), which only ``epsilon`` bounds when a ghost
    batch, a mask or zero weights leave a channel one or two values: the tolerances scale by
    this bound, still far below any wrong result.
    """
    finite = made["x"][torch.isfinite(made["x"])]
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    return max(1.0, largest / call.epsilon**0.5)


def _compare(call: Call, made: dict[str, Any]) -> None:
    """Fast path against reference path: output, new statistics, gradients."""
    with pytest.MonkeyPatch.context() as patch:
        for (module, name), value in call.routes.items():
            patch.setattr(module, name, value)
        fast, fast_grads = _run(call, made, None)
    ref, ref_grads = _run(*_oracle(call, made), False)
    assert fast.output.shape == ref.output.shape == call.shape
    assert fast.output.dtype == call.dtype
    slack = _conditioning(call, made)
    rtol, atol = tolerance(call.dtype).values()
    torch.testing.assert_close(
        fast.output.to(ref.output.dtype),
        ref.output,
        equal_nan=call.poisoned,
        rtol=rtol,
        atol=atol * slack,
    )
    assert fast.new_stats.keys() == ref.new_stats.keys()
    reduced = math.prod(s for d, s in enumerate(call.shape) if d not in call.axes)
    assert bool(fast.new_stats) == (call.training and reduced > 0)
    # Computed in the accumulation dtype (float32 for 16-bit inputs), stored in its own.
    accumulated = torch.float64 if call.dtype == torch.float64 else torch.float32
    for key, value in fast.new_stats.items():
        want = ref.new_stats[key]
        computed = min(value.dtype, accumulated, key=lambda dtype: dtype.itemsize)
        torch.testing.assert_close(
            value.to(want.dtype), want, equal_nan=True, **tolerance(computed), msg=key
        )
    assert fast_grads.keys() == ref_grads.keys()
    rtol, atol = GRADIENT_TOLERANCES[call.dtype]
    for name, want in ref_grads.items():
        got = fast_grads[name]
        if want is None or got is None:
            assert want is None and got is None, name
            continue
        size = max(1.0, float(want.abs().max())) if want.numel() else 1.0
        torch.testing.assert_close(
            got.to(want.dtype) / size,
            want / size,
            rtol=rtol,
            atol=atol * slack,
            msg=lambda message, name=name: f"{name}: {message}",
        )


def _call(shape, axis, **fields) -> Call:
    """An explicit :class:`Call`: plain float64 training with every gradient, but ``fields``."""
    defaults = {
        "layout": "contiguous",
        "order": tuple(range(len(shape))),
        "dtype": torch.float64,
        "parameter_dtype": torch.float64,
        "training": True,
        "gradients": "all",
        "dy_layout": "contiguous",
        "poisoned": False,
        "center": True,
        "scale": True,
        "strided_parameters": False,
        "momentum": 0.9,
        "epsilon": 1e-3,
        "correction": False,
        "options": {},
    }
    routes = {key: values[-1] for key, values in ROUTES.items()} | fields.pop("routes", {})
    return Call(shape=shape, axis=axis, **(defaults | fields), routes=routes)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
@example(_call((16, 1), 1, options={"virtual_batch_size": 4}))  # issue 17's repro
@example(_call((8, 4), -1, strided_parameters=True, dtype=torch.float32))
def test_fast_path_matches_reference_path_for_any_call(call):
    _compare(call, _inputs(call))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls(SIXTEEN_BIT_DTYPES))
@example(  # examples too small for ATen's slices, ghost groups of a regrouped copy large enough
    _call(
        (4, 2, 2, 3),
        1,
        layout="channels_last",
        dtype=torch.bfloat16,
        parameter_dtype=torch.float32,
        options={"virtual_batch_size": 2},
        routes={(_thresholds, "SLICE_ELEMENTS"): 24},
    )
)
def test_fast_path_matches_reference_path_for_sixteen_bit_inputs(call):
    """bfloat16 and float16: ATen's kernels, slices, regrouped copies, upcast blocks.

    Oracle: the reference path in float64 on the same values (:func:`_oracle`).
    """
    _compare(call, _inputs(call))


@st.composite
def adjusted_calls(draw):
    """An input shape, ``axis``, ghost batches, and an adjustment result shape for them."""
    rank = draw(st.integers(2, 4))
    ghost_size, groups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (ghost_size * groups, *(draw(st.integers(1, 4)) for _ in range(rank - 1)))
    axis = draw(axis_arguments(rank, ghost=True))
    axes = sorted(a % rank for a in ([axis] if isinstance(axis, int) else axis))
    kinds = st.sampled_from(["channel", "element", "mixed"])
    shapes = (
        draw(broadcast_shapes(shape, axes, draw(kinds))),
        draw(broadcast_shapes(shape, axes, draw(kinds))),
    )
    layout = draw(st.sampled_from(["strided", "contiguous"]))
    return shape, axis, ghost_size, layout, shapes


def _ghost_batch_norm(x, axis, ghost_size, layout, fused, gamma=None, beta=None, **call):
    channels = x.shape[axis] if isinstance(axis, int) else 1
    shape = (channels,) if isinstance(axis, int) else tuple(gamma.shape)
    stats = torch.zeros(shape, dtype=x.dtype), torch.ones(shape, dtype=x.dtype)
    return batch_norm(
        x,
        *stats,
        gamma,
        beta,
        training=True,
        axis=axis,
        virtual_batch_size=ghost_size,
        virtual_batch_layout=layout,
        fused=fused,
        **call,
    ).output


@settings(max_examples=150, deadline=None)
@given(adjusted_calls(), st.integers(0, 2**16), st.sampled_from([None, False]))
@example(((8, 3), -1, 4, "strided", ((3,), (3,))), 0, None)  # tf_keras' docstring example
@example(((4, 4), -1, 2, "strided", ((4,), (1, 4))), 0, None)  # channels == batch size
@example(((4, 4), 1, 2, "contiguous", ((4, 1), (4,))), 0, False)  # per example, channels == batch
def test_adjustment_of_any_broadcastable_shape(case, seed, fused):
    """The adjustment's result broadcasts against the input as numpy's rules say, ghost or not.

    Oracle: ``x_hat`` from the reference path without adjustment (nor gamma and beta), then
    ``(x_hat * scale + bias) * gamma + beta`` by torch's own broadcasting against ``x``.
    """
    shape, axis, ghost_size, layout, shapes = case
    generator = torch.Generator().manual_seed(seed)
    rank = len(shape)
    axes = sorted(a % rank for a in ([axis] if isinstance(axis, int) else axis))
    x = Config(shape, axis=axis).make_input(generator).to(torch.float64)
    keep = tuple(s if d in axes else 1 for d, s in enumerate(shape))
    gamma = torch.rand(keep, generator=generator, dtype=torch.float64) + 0.5
    beta = torch.randn(keep, generator=generator, dtype=torch.float64)
    scale = torch.rand(shapes[0], generator=generator, dtype=torch.float64) + 0.5
    bias = torch.randn(shapes[1], generator=generator, dtype=torch.float64)
    if isinstance(axis, int):  # TensorFlow's (C,) parameters for one axis
        gamma, beta = gamma.flatten(), beta.flatten()
    y = _ghost_batch_norm(
        x, axis, ghost_size, layout, fused, gamma, beta, adjustment=lambda _: (scale, bias)
    )
    x_hat = _ghost_batch_norm(x, axis, ghost_size, layout, False, gamma=torch.ones_like(gamma))
    want = (x_hat * scale + bias) * gamma.reshape(keep) + beta.reshape(keep)
    torch.testing.assert_close(y, want, **tolerance(y.dtype))


@st.composite
def unbroadcastable(draw):
    """An input shape and a result shape that does not broadcast to it (right-aligned)."""
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    if draw(st.booleans()):  # one size neither 1 nor the input's
        bad = list(shape)
        d = draw(st.integers(0, rank - 1))
        bad[d] = draw(st.integers(2, 5).filter(lambda size, d=d: size != shape[d]))
        bad = bad[draw(st.integers(0, d)) :]
    else:  # a higher rank (numpy would enlarge the input)
        bad = [draw(st.integers(1, 3)), *shape]
    return shape, tuple(bad)


@settings(max_examples=25, deadline=None)
@given(
    unbroadcastable(),
    st.sampled_from([None, 1]),
    st.sampled_from(["scale", "bias"]),
    st.sampled_from([None, False]),
)
def test_adjustment_not_broadcastable_to_the_input_is_refused(case, ghost_size, which, fused):
    """A clear BatchNormError naming the adjustment, the shape received and the input's."""
    shape, bad = case
    x = torch.randn(shape, dtype=torch.float64)
    wrong, right = torch.ones(bad, dtype=torch.float64), torch.ones((), dtype=torch.float64)
    result = (wrong, right) if which == "scale" else (right, wrong)
    with pytest.raises(bn.BatchNormError) as caught:
        batch_norm(
            x,
            torch.zeros(shape[-1], dtype=torch.float64),
            torch.ones(shape[-1], dtype=torch.float64),
            training=True,
            virtual_batch_size=ghost_size,
            fused=fused,
            adjustment=lambda input_shape: result,
        )
    message = str(caught.value)
    assert f"adjustment {which}.shape={bad}" in message
    assert f"the input shape {shape}" in message


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
@pytest.mark.parametrize("axis", [1, -1])
def test_ghost_batches_of_one_channel_give_the_reference_input_gradient(axis, layout):
    """Issue 17: (16, 1) in ghost batches of 4 left most of the fast path's dx unwritten.

    The per-channel scale, shared by the 4 groups, reached ATen's backward expanded with
    stride 0. Oracle: the reference path.
    """
    x = torch.randn(16, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dy = torch.arange(16.0, dtype=torch.float64).reshape(16, 1)
    grads = []
    for fused in (None, False):
        leaf = x.clone().requires_grad_()
        y = bn.BatchNormalization(
            axis=axis, virtual_batch_size=4, virtual_batch_layout=layout, fused=fused
        ).double()(leaf, training=True)
        (y * dy).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], **tolerance(torch.float64))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_strided_gamma_gives_the_reference_input_gradient(memory_format):
    """A gamma with stride 2 (a slice of a larger tensor) misread by ATen's backward.

    Oracle: the reference path with a contiguous copy of the same gamma.
    """
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 2, 2, generator=generator).contiguous(memory_format=memory_format)
    dy = torch.randn(x.shape, generator=generator)
    gamma = (torch.rand(6, generator=generator) + 0.5)[::2]
    stats = torch.zeros(3), torch.ones(3)
    grads = []
    for fused, g in ((None, gamma), (False, gamma.contiguous())):
        leaf = x.clone().requires_grad_()
        y = batch_norm(leaf, *stats, g, training=True, axis=1, fused=fused).output
        grads.append(torch.autograd.grad(y, leaf, dy)[0])
    torch.testing.assert_close(grads[0], grads[1], **tolerance(torch.float32))
