"""Fuzzing the layer: random shapes, axes, dtypes and option combinations, against two oracles.

- the reference path: a layer with ``fused=False`` (plain autograd ops) takes the same calls
  as the default one, and outputs, gradients and every statistic must agree;
- the bad-input rules: a random mistake on a random layer raises an error naming the argument
  and changes nothing (:func:`test_bad_input._assert_unchanged`).

Profiles (``tests/conftest.py``): ``ci`` runs 40 examples a test, derandomized; ``dev`` (the
default locally) 150; ``HYPOTHESIS_PROFILE=fuzz`` 2000, for a long local run::

    HYPOTHESIS_PROFILE=fuzz .venv/bin/python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_bad_input import _assert_unchanged, _everything

import batchnorm as bn

TOLERANCES = {torch.float64: 1e-9, torch.float32: 2e-4}


@st.composite
def calls(draw: st.DrawFn) -> dict[str, Any]:
    """A layer configuration and the inputs of its calls."""
    rank = draw(st.integers(2, 4))
    batch = draw(st.integers(1, 6))
    sizes = draw(st.lists(st.integers(1, 4), min_size=rank - 1, max_size=rank - 1))
    shape = (batch, *sizes)
    axis = draw(st.sampled_from([1, -1] if rank > 2 else [1]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    options: dict[str, Any] = {
        "axis": axis,
        "momentum": draw(st.sampled_from([0.0, 0.5, 0.99, 1.0])),
        "epsilon": draw(st.sampled_from([1e-3, 1e-5, 0.5])),
        "center": draw(st.booleans()),
        "scale": draw(st.booleans()),
        "renorm": draw(st.booleans()),
        "zero_debias_moving_mean": draw(st.booleans()),
        "moving_variance_correction": draw(st.booleans()),
        "nonfinite": draw(st.sampled_from(["skip", "propagate"])),
    }
    if options["zero_debias_moving_mean"] and options["momentum"] == 1.0:
        options["momentum"] = 0.99  # refused: tf-slim's bias factor would be 0
    if options["renorm"] and draw(st.booleans()):
        options["renorm_clipping"] = {"rmax": 1.5, "rmin": 0.5, "dmax": 0.5}
    divisors = [d for d in range(1, batch + 1) if batch % d == 0]
    if draw(st.booleans()):
        options["virtual_batch_size"] = draw(st.sampled_from(divisors))
        options["virtual_batch_layout"] = draw(st.sampled_from(["strided", "contiguous"]))
    if draw(st.booleans()):
        scale = draw(st.floats(0.5, 2.0))
        options["adjustment"] = lambda input_shape, scale=scale: (scale, 0.1)
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    # (Large offsets in float64 only: two float32 implementations differ by rounding scaled by
    # |mean| / sigma, and a few drawn values may spread little; tests/test_kernels.py holds
    # the float32 precision to float64's at offsets up to 1e5 sigma.)
    offset = draw(st.sampled_from([0.0, 3.0] + ([1e3] if dtype == torch.float64 else [])))
    x = torch.randn(shape, generator=generator, dtype=dtype) * 2 + offset
    if rank == 4 and draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    extra: dict[str, Any] = {}
    if draw(st.booleans()):
        extra["batch_weights"] = torch.randint(0, 3, (batch,), generator=generator).to(dtype)
    if draw(st.booleans()):
        extra["mask"] = torch.rand(shape[:-1], generator=generator) > 0.3
    poison = draw(st.sampled_from([None, "nan", "inf"]))
    return {"options": options, "x": x, "extra": extra, "poison": poison, "dtype": dtype}


def _run(layer: bn.BatchNormalization, call: dict[str, Any]) -> list[torch.Tensor]:
    """Two training steps (the second maybe poisoned), then inference: what to compare.

    The inference output comes last but one (before the statistics): see :func:`_folding_error`.
    """
    results = []
    for step in range(2):
        x = call["x"].clone()
        if step == 1 and call["poison"] is not None:
            x[(0,) * x.dim()] = float(call["poison"])
        x.requires_grad_(True)
        y = layer(x, training=True, **call["extra"])
        dy = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape)
        (y * dy).sum().backward()
        results += [y.detach(), x.grad]
        results += [p.grad.clone() for p in layer.parameters()]
    statistics = [layer.skipped_updates]
    statistics += [t for t in layer.state_dict().values() if torch.is_tensor(t)]
    return [*results, layer(call["x"], training=False), *statistics]


def _folding_error(layer: bn.BatchNormalization, dtype: torch.dtype) -> float:
    """The rounding the fast path's inference may add: it folds the moving mean into the shift
    (``x * a + (beta - mean * a)``, as TensorFlow and ATen do), the reference path does not."""
    a = torch.rsqrt(layer.moving_variance.double() + layer.epsilon)
    largest = float(torch.nan_to_num((layer.moving_mean.double().abs() * a).max(), nan=0.0))
    return 4 * torch.finfo(dtype).eps * largest


@given(calls())
def test_fast_path_equals_reference_path_for_any_options(call: dict[str, Any]) -> None:
    dtype = call["dtype"]
    layers = [
        bn.BatchNormalization(**call["options"], fused=fused, dtype=dtype)
        for fused in (None, False)
    ]
    fast, reference = (_run(layer, call) for layer in layers)
    tolerance = TOLERANCES[dtype]
    assert len(fast) == len(reference)
    inference = len(fast) - 1 - (len(layers[1].state_dict()) - 1) - 1  # see _run
    for index, (got, want) in enumerate(zip(fast, reference, strict=True)):
        atol = tolerance + (_folding_error(layers[1], dtype) if index == inference else 0.0)
        # Poisoned and propagated, a value may be inf on one path and NaN on the other (the
        # reference's mean is m + E[x - m]: inf - inf): both are non-finite.
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(got), finite), f"result {index}"
        torch.testing.assert_close(
            got[finite], want[finite], rtol=tolerance, atol=atol, msg=f"result {index}"
        )
    # However the statistics came about, a skipped poison leaves them finite.
    if call["options"]["nonfinite"] == "skip":
        assert all(
            torch.isfinite(t).all() for t in layers[0].state_dict().values() if torch.is_tensor(t)
        )


MISTAKES = {
    "a negative weight": lambda x: {"batch_weights": -torch.ones(x.shape[0])},
    "a NaN weight": lambda x: {"batch_weights": torch.full((x.shape[0],), float("nan"))},
    "weights of another length": lambda x: {"batch_weights": torch.ones(x.shape[0] + 1)},
    "a mask entry of 2": lambda x: {"mask": torch.full(x.shape[:-1], 2.0)},
    "a mask of another shape": lambda x: {"mask": torch.ones(x.shape[0] + 1, dtype=torch.bool)},
}


@given(
    calls(),
    st.sampled_from(
        [*MISTAKES, "another channel count", "another rank", "integer input", "complex input"]
    ),
)
def test_a_random_mistake_changes_nothing(call: dict[str, Any], mistake: str) -> None:
    layer = bn.BatchNormalization(**call["options"], dtype=call["dtype"])
    x = call["x"]
    layer(x, training=True)
    before = _everything(layer)
    extra: dict[str, Any] = {}
    if mistake in MISTAKES:
        extra = MISTAKES[mistake](x)
    elif mistake == "another channel count":
        channel_axis = call["options"]["axis"] % x.dim()
        shape = list(x.shape)
        shape[channel_axis] += 1
        x = torch.randn(shape, dtype=x.dtype)
    elif mistake == "another rank":
        x = x.unsqueeze(-1)
    elif mistake == "integer input":
        x = x.long()
    else:
        x = x.to(torch.complex64)
    with pytest.raises((ValueError, TypeError)):
        layer(x, training=True, **extra)
    _assert_unchanged(layer, before)
