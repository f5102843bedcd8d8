"""Properties that must hold for every input (hypothesis), each checked against its own oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import batchnorm as bn
from batchnorm._kernels import stats_pass
from batchnorm._moments import compute_moments
from batchnorm.functional import batch_norm


@st.composite
def layouts(draw, max_rank: int = 5):
    """A shape, a valid axis argument and a random dimension order in memory."""
    rank = draw(st.integers(2, max_rank))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    kept = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank - 1, unique=True))
    axis = [a - rank if draw(st.booleans()) else a for a in kept]
    axis_arg = axis[0] if len(axis) == 1 and draw(st.booleans()) else axis
    memory_order = draw(st.permutations(range(rank)))
    return shape, axis_arg, list(memory_order)


def _make(shape, memory_order, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    permuted = torch.randn([shape[d] for d in memory_order], generator=generator, dtype=dtype)
    inverse = np.argsort(memory_order).tolist()
    return (permuted * 2 + 1).permute(inverse)  # logical `shape`, strides in `memory_order`


@given(layouts(), st.integers(0, 2**16))
def test_stats_pass_matches_readable_moments_for_any_layout(layout, seed):
    shape, axis, order = layout
    x = _make(shape, order, seed)
    rank = len(shape)
    axes = sorted({a % rank for a in ([axis] if isinstance(axis, int) else axis)})
    moments, centered = stats_pass(x, axes)
    want = compute_moments(x, [d for d in range(rank) if d not in axes])
    torch.testing.assert_close(moments.mean, want.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moments.var, want.var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(centered, x - want.mean, rtol=1e-5, atol=1e-6)
    assert centered.stride() == x.contiguous().stride() or centered.shape == x.shape


@given(layouts(max_rank=4), st.integers(0, 2**16), st.booleans())
def test_fast_path_equals_reference_path_for_any_layout(layout, seed, training):
    shape, axis, order = layout
    x = _make(shape, order, seed, torch.float64).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    count = int(
        np.prod([shape[a % len(shape)] for a in ([axis] if isinstance(axis, int) else axis)])
    )
    gamma = torch.linspace(0.5, 1.5, count, dtype=torch.float64, requires_grad=True)
    gamma_ref = gamma.detach().clone().requires_grad_(True)
    stats = (
        torch.linspace(-1, 1, count, dtype=torch.float64),
        torch.ones(count, dtype=torch.float64),
    )
    fast = batch_norm(x, *stats, gamma, None, training=training, axis=axis)
    ref = batch_norm(
        x_ref,
        *stats,
        gamma_ref,
        None,
        training=training,
        axis=axis,
        fused=False,
        moving_variance_correction=fast_correction(axis, len(shape)),
    )
    torch.testing.assert_close(fast.output, ref.output, rtol=1e-10, atol=1e-10)
    for key in fast.new_stats:
        torch.testing.assert_close(fast.new_stats[key], ref.new_stats[key])
    dy = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(shape)
    (fast.output * dy).sum().backward()
    (ref.output * dy).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gamma.grad, gamma_ref.grad, rtol=1e-9, atol=1e-9)


def fast_correction(axis, rank):
    from batchnorm._tf_rules import tensorflow_runs_fused_kernel

    return tensorflow_runs_fused_kernel(
        axis if isinstance(axis, int) else tuple(axis), rank, None, torch.float64
    )


@given(
    st.integers(2, 16),
    st.integers(1, 4),
    st.floats(-1e3, 1e3),
    st.floats(1e-2, 1e2),
    st.integers(0, 2**16),
)
def test_training_output_is_invariant_to_per_channel_shift_and_scale(n, c, shift, scale, seed):
    """With epsilon = 0, (x * s + t) normalises to the same output as x (s > 0)."""
    x = torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assume(bool((x.var(0, unbiased=False) > 1e-6).all()))
    stats = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    y = batch_norm(x, *stats, training=True, epsilon=0.0).output
    y_moved = batch_norm(x * scale + shift, *stats, training=True, epsilon=0.0).output
    torch.testing.assert_close(y_moved, y, rtol=1e-6, atol=1e-6)


@given(
    st.sampled_from(["rank", "channels", "training", "type"]),
    st.integers(0, 2**16),
)
def test_a_bad_call_leaves_every_weight_and_statistic_unchanged(kind, seed):
    generator = torch.Generator().manual_seed(seed)
    layer = bn.BatchNormalization(axis=1, gamma_initializer="random_normal")
    layer(torch.randn(4, 3, 2, generator=generator))
    before = [w.copy() for w in layer.get_weights()]
    bad = {
        "rank": lambda: layer(torch.randn(4, 3, generator=generator)),
        "channels": lambda: layer(torch.randn(4, 5, 2, generator=generator)),
        "training": lambda: layer(torch.randn(4, 3, 2, generator=generator), training="no"),
        "type": lambda: layer(np.zeros((4, 3, 2))),
    }[kind]
    with pytest.raises(bn.BatchNormError):
        bad()
    for got, want in zip(layer.get_weights(), before, strict=True):
        assert np.array_equal(got, want)
