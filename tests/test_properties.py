"""Properties that must hold for every input (hypothesis), each checked against its own oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import STATS_ROUTES
from hypothesis import assume, given
from hypothesis import strategies as st

import batchnorm as bn
from batchnorm import _thresholds
from batchnorm._affine import bessel_factor
from batchnorm._moments import compute_moments, pool_groups
from batchnorm._statistics import stats_pass
from batchnorm._types import Moments
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


@given(layouts(), st.integers(0, 2**16), st.sampled_from(sorted(STATS_ROUTES.values())))
def test_stats_pass_matches_readable_moments_for_any_layout(layout, seed, small_input_elements):
    """Both float routes: the two-pass sums over any memory layout, and one var_mean."""
    shape, axis, order = layout
    x = _make(shape, order, seed)
    rank = len(shape)
    axes = sorted({a % rank for a in ([axis] if isinstance(axis, int) else axis)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_thresholds, "SMALL_INPUT_ELEMENTS", small_input_elements)
        moments = stats_pass(x, axes)
    want = compute_moments(x, [d for d in range(rank) if d not in axes])
    torch.testing.assert_close(moments.mean, want.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moments.var, want.var, rtol=1e-5, atol=1e-6)


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


@given(st.lists(st.integers(0, 3), min_size=2, max_size=8), st.integers(1, 3), st.integers(0, 999))
def test_integer_batch_weights_equal_repeated_rows(counts, channels, seed):
    """Frequency weights: weight k counts a row k times (moments, outputs, moving statistics)."""
    assume(sum(counts) >= 1)
    x = torch.randn(
        len(counts), channels, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    weights = torch.tensor(counts, dtype=torch.float64)
    repeated = x.repeat_interleave(torch.tensor(counts), dim=0)
    stats = torch.zeros(channels, dtype=torch.float64), torch.ones(channels, dtype=torch.float64)
    for fused in (None, False):
        weighted = batch_norm(
            x,
            *stats,
            training=True,
            momentum=0.5,
            batch_weights=weights,
            fused=fused,
            moving_variance_correction=False,
        )
        plain = batch_norm(
            repeated,
            *stats,
            training=True,
            momentum=0.5,
            fused=fused,
            moving_variance_correction=False,
        )
        for key in ("moving_mean", "moving_variance"):
            torch.testing.assert_close(weighted.new_stats[key], plain.new_stats[key])
        torch.testing.assert_close(
            weighted.output.repeat_interleave(torch.tensor(counts), dim=0), plain.output
        )


@given(st.integers(1, 6), st.sampled_from(["strided", "contiguous"]), st.integers(0, 999))
def test_one_ghost_batch_equals_plain_batch_norm(batch, layout, seed):
    x = torch.randn(batch, 3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    stats = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for fused in (None, False):
        ghost = batch_norm(
            x,
            *stats,
            training=True,
            axis=1,
            virtual_batch_size=batch,
            virtual_batch_layout=layout,
            fused=fused,
        )
        plain = batch_norm(
            x, *stats, training=True, axis=1, fused=fused, moving_variance_correction=False
        )
        torch.testing.assert_close(ghost.output, plain.output)
        for key in ("moving_mean", "moving_variance"):
            torch.testing.assert_close(ghost.new_stats[key], plain.new_stats[key])


@given(st.integers(2, 8), st.integers(0, 999), st.sampled_from([None, False]))
def test_renorm_pinned_to_identity_equals_plain_batch_norm(batch, seed, fused):
    """rmin = rmax = 1 and dmax = 0 make r = 1, d = 0: the output (and its gradient) is BN's."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, generator=generator, dtype=torch.float64) * 3 + 1
    gamma = torch.rand(3, generator=generator, dtype=torch.float64) + 0.5
    stats = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    renorm_state = {
        "moving_stddev": torch.ones(3, dtype=torch.float64),
        "renorm_mean": torch.randn(3, generator=generator, dtype=torch.float64),
        "renorm_stddev": torch.rand(3, generator=generator, dtype=torch.float64),
    }
    outputs, grads = [], []
    for renorm in (True, False):
        xi = x.clone().requires_grad_(True)
        extra = renorm_state if renorm else {}
        y = batch_norm(
            xi,
            *stats,
            gamma,
            training=True,
            fused=fused,
            renorm=renorm,
            renorm_clipping={"rmin": 1.0, "rmax": 1.0, "dmax": 0.0},
            **extra,
        ).output
        y.pow(3).sum().backward()
        outputs.append(y.detach())
        grads.append(xi.grad)
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1])


@given(st.integers(0, 999), st.sampled_from([None, False]), st.sampled_from(["nan", "inf"]))
def test_nonfinite_values_at_masked_positions_never_reach_statistics(seed, fused, poison):
    """Flax's check: what a mask excludes cannot leak into the moments or other outputs."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 4, 3, generator=generator)
    mask = torch.rand(5, 4, generator=generator) > 0.4
    mask[0, 0] = True
    mask[1, 1] = False
    poisoned = x.clone()
    poisoned[~mask] = float(poison)
    stats = torch.zeros(3), torch.ones(3)
    clean = batch_norm(x, *stats, training=True, mask=mask, fused=fused)
    dirty = batch_norm(poisoned, *stats, training=True, mask=mask, fused=fused)
    for key in ("moving_mean", "moving_variance"):
        assert torch.isfinite(dirty.new_stats[key]).all()
        torch.testing.assert_close(dirty.new_stats[key], clean.new_stats[key])
    torch.testing.assert_close(dirty.output[mask], clean.output[mask])


@given(
    st.lists(
        st.tuples(st.integers(1, 9), st.floats(-5, 5), st.floats(0.1, 4)), min_size=3, max_size=6
    ),
    st.randoms(use_true_random=False),
)
def test_pooling_groups_is_order_independent_and_associative(groups, rng):
    counts, means, variances = (
        torch.tensor(list(column), dtype=torch.float64)[:, None]
        for column in zip(*groups, strict=True)
    )
    whole = pool_groups(Moments(counts, means, variances), 0)
    order = list(range(len(groups)))
    rng.shuffle(order)
    shuffled = pool_groups(Moments(counts[order], means[order], variances[order]), 0)
    head = pool_groups(Moments(counts[:2], means[:2], variances[:2]), 0)
    nested = pool_groups(
        Moments(
            torch.cat([head.count, counts[2:]]),
            torch.cat([head.mean, means[2:]]),
            torch.cat([head.var, variances[2:]]),
        ),
        0,
    )
    for other in (shuffled, nested):
        for got, want in zip(other, whole, strict=True):
            torch.testing.assert_close(got, want)


@given(
    st.one_of(st.integers(0, 1 << 12), st.integers(1 << 23, (1 << 25) + 7)),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_bessel_factor_read_to_the_host_equals_the_tensor_ops(count, dtype):
    """The Python-float factor (a count held by the CPU) is bitwise the tensor computation.

    The oracle is the tensor form written out, in the variance's dtype; counts reach past
    2^24, where float32 rounds the count itself.
    """
    like = torch.ones(3, dtype=dtype)
    n = torch.tensor(float(count), dtype=dtype)
    want = n / torch.clamp(n - 1, min=1)
    host = bessel_factor(float(count), like)  # a float, or that float as a cached 0-d tensor
    assert isinstance(host, float) or (host.dim() == 0 and host.dtype == dtype)
    assert torch.equal(torch.as_tensor(host, dtype=dtype), want)
    variance = torch.rand(3, dtype=dtype, generator=torch.Generator().manual_seed(count))
    assert torch.equal(variance * host, variance * want)
