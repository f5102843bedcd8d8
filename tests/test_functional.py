"""batchnorm.functional.batch_norm against independent oracles.

Oracles: the reference path (``fused=False``) for the fast path, over the shared config table;
``torch.nn.functional.batch_norm`` where the semantics overlap; a float64 numpy model of the
update rule over several steps; ``torch.autograd.gradcheck`` in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from configs import (
    CONFIGS,
    Config,
    call_tensors,
    config_id,
    option_kwargs,
    state_tensors,
)
from conftest import APPLY_ROUTES, STATS_ROUTES, TRAINING_ROUTES, tolerance

import batchnorm as bn
from batchnorm import _thresholds
from batchnorm.functional import batch_norm


def _run(config, x, state, dy, call, *, training, fused):
    x = x.detach().clone().requires_grad_(True)
    leaves = {
        name: state[name].detach().clone().requires_grad_(True)
        for name in ("gamma", "beta")
        if state[name] is not None
    }
    stats = {k: v for k, v in state.items() if k not in ("gamma", "beta")}
    result = batch_norm(
        x,
        **stats,
        gamma=leaves.get("gamma"),
        beta=leaves.get("beta"),
        training=training,
        axis=config.axis,
        momentum=config.momentum,
        epsilon=config.epsilon,
        fused=fused,
        # Explicit, because the default follows TensorFlow, whose choice depends on ``fused``.
        moving_variance_correction=len(config.shape) % 2 == 0,
        **option_kwargs(config),
        **call,
    )
    (result.output.to(torch.float64) * dy).sum().backward()
    return result, [x.grad] + [t.grad for t in leaves.values()]


@pytest.mark.parametrize(
    ("training", "stats_route", "apply_route", "training_route"),
    [
        (True, "two-pass sums", "ATen kernel", "passes"),
        (True, "var_mean", "torch ops", "passes"),
        (True, "var_mean", "torch ops", "ATen training kernel"),  # plain NCHW calls only
        (False, "two-pass sums", "ATen kernel", "passes"),  # inference: no training apply
    ],
    ids=["train-sums-aten", "train-var_mean-torch", "train-aten-kernel", "infer"],
)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_fast_path_matches_reference_path(
    config, training, stats_route, apply_route, training_route, generator, device, monkeypatch
):
    monkeypatch.setattr(_thresholds, "SMALL_INPUT_ELEMENTS", STATS_ROUTES[stats_route])
    monkeypatch.setattr(_thresholds, "ATEN_APPLY_ELEMENTS", APPLY_ROUTES[apply_route])
    monkeypatch.setattr(_thresholds, "ATEN_TRAINING_ELEMENTS", TRAINING_ROUTES[training_route])
    x = config.make_input(generator)
    state = state_tensors(config, x, generator)
    call = call_tensors(config, x, generator)
    dy = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    # --device moves everything (the CUDA paths run the same code on CUDA tensors).
    x, dy = x.to(device), dy.to(device)
    state = {k: v.to(device) if v is not None else None for k, v in state.items()}
    call = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in call.items()}
    if "adjustment" in call:
        adjust = call["adjustment"]
        call["adjustment"] = lambda shape: tuple(t.to(device) for t in adjust(shape))
    fast, fast_grads = _run(config, x, state, dy, call, training=training, fused=None)
    ref, ref_grads = _run(config, x, state, dy, call, training=training, fused=False)

    assert fast.output.dtype == x.dtype
    assert fast.output.shape == x.shape
    if x.dim() >= 4 and x.is_contiguous(memory_format=_format(x)):
        assert fast.output.is_contiguous(memory_format=_format(x))
    torch.testing.assert_close(fast.output, ref.output, **tolerance(x.dtype))
    updated = {k for k, v in state.items() if v is not None and k not in ("gamma", "beta")}
    assert fast.new_stats.keys() == ref.new_stats.keys() == (updated if training else set())
    for key in fast.new_stats:
        torch.testing.assert_close(
            fast.new_stats[key], ref.new_stats[key], **tolerance(fast.new_stats[key].dtype)
        )
    grad_tol = tolerance(x.dtype)
    for got, want in zip(fast_grads, ref_grads, strict=True):
        scale = want.abs().max().clamp(min=1).item()
        torch.testing.assert_close(got / scale, want / scale, **grad_tol)


def _format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.stride(1) == 1:
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and x.stride(1) == 1:
        return torch.channels_last_3d
    return torch.contiguous_format


GRADCHECK_CONFIGS = [
    c for c in CONFIGS if np.prod(c.shape) <= 400 and c.input_dtype == torch.float32
]


@pytest.mark.parametrize("fused", [None, False], ids=["fast", "reference"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("config", GRADCHECK_CONFIGS, ids=config_id)
def test_gradcheck_float64(config, training, fused, generator):
    x = config.make_input(generator).to(torch.float64).requires_grad_(True)
    state = {
        k: v.double() if v is not None else None
        for k, v in state_tensors(config, x, generator).items()
    }
    call = call_tensors(config, x, generator)
    leaves = [state[n].requires_grad_(True) for n in ("gamma", "beta") if state[n] is not None]
    stats = {k: v for k, v in state.items() if k not in ("gamma", "beta")}
    options = option_kwargs(config)
    if options.get("renorm"):
        # r and d are constants for autograd (TensorFlow's stop_gradient) while finite
        # differences would move them with x; pinning them by clipping (r = 1.3, d = 0) keeps
        # the renorm code path and makes the two comparable. TF's renorm gradients themselves
        # are checked by the golden fixtures.
        options["renorm_clipping"] = {"rmin": 1.3, "rmax": 1.3, "dmax": 0.0}

    def f(x, *params):
        it = iter(params)
        g = next(it) if config.scale else None
        b = next(it) if config.center else None
        return batch_norm(
            x,
            **stats,
            gamma=g,
            beta=b,
            training=training,
            axis=config.axis,
            epsilon=config.epsilon,
            fused=fused,
            **options,
            **call,
        ).output

    assert torch.autograd.gradcheck(f, (x, *leaves), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_reference_path_is_twice_differentiable(generator):
    x = torch.randn(6, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(3, generator=generator, dtype=torch.float64, requires_grad=True)
    beta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    stats = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    def f(x, gamma, beta):
        return batch_norm(x, *stats, gamma, beta, training=True, fused=False).output

    assert torch.autograd.gradgradcheck(f, (x, gamma, beta))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_matches_torch_native_batch_norm(channels_last, generator):
    """torch's kernel is an independent oracle for the output and the corrected variance."""
    config = Config((6, 4, 5, 3), axis=1, channels_last=channels_last, momentum=0.7)
    x = config.make_input(generator)
    gamma, beta = torch.rand(4, generator=generator) + 0.5, torch.randn(4, generator=generator)
    ours = batch_norm(
        x,
        torch.zeros(4),
        torch.ones(4),
        gamma,
        beta,
        training=True,
        axis=1,
        momentum=0.7,
        epsilon=1e-3,
        moving_variance_correction=True,
    )
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    theirs = torch.nn.functional.batch_norm(
        x, running_mean, running_var, gamma, beta, training=True, momentum=0.3, eps=1e-3
    )
    torch.testing.assert_close(ours.output, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.new_stats["moving_mean"], running_mean)
    torch.testing.assert_close(ours.new_stats["moving_variance"], running_var)


@pytest.mark.parametrize("correction", [False, True])
@pytest.mark.parametrize("fused", [None, False], ids=["fast", "reference"])
def test_moving_statistics_follow_the_update_rule_over_steps(correction, fused, generator):
    """A float64 numpy model of EMA(mm, mean), EMA(mv, c * var) after steps 1, 2 and 5."""
    momentum, shape = 0.8, (5, 3, 4)
    moving_mean, moving_variance = torch.zeros(4), torch.ones(4)
    want_mean, want_var = np.zeros(4), np.ones(4)
    for step in range(5):
        x = torch.randn(shape, generator=generator) * (step + 1) + step
        result = batch_norm(
            x,
            moving_mean,
            moving_variance,
            training=True,
            momentum=momentum,
            fused=fused,
            moving_variance_correction=correction,
        )
        moving_mean, moving_variance = (
            result.new_stats["moving_mean"],
            result.new_stats["moving_variance"],
        )
        xs = x.double().numpy().reshape(-1, 4)
        n = xs.shape[0]
        batch_var = xs.var(axis=0) * (n / (n - 1) if correction else 1.0)
        want_mean = want_mean * momentum + xs.mean(axis=0) * (1 - momentum)
        want_var = want_var * momentum + batch_var * (1 - momentum)
        if step in (0, 1, 4):
            np.testing.assert_allclose(moving_mean.numpy(), want_mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(moving_variance.numpy(), want_var, rtol=1e-5, atol=1e-6)


def test_functional_never_mutates_its_arguments(generator):
    x = torch.randn(4, 3, generator=generator)
    state = [torch.zeros(3), torch.ones(3), torch.ones(3), torch.zeros(3)]
    before = [t.clone() for t in state]
    batch_norm(x, *state, training=True)
    for got, want in zip(state, before, strict=True):
        assert torch.equal(got, want)


def test_empty_batch_leaves_statistics_alone_and_gradients_finite():
    x = torch.zeros(0, 3, requires_grad=True)
    gamma = torch.ones(3, requires_grad=True)
    for fused in (None, False):
        result = batch_norm(x, torch.zeros(3), torch.ones(3), gamma, training=True, fused=fused)
        assert result.output.shape == (0, 3) and result.new_stats == {}
        result.output.sum().backward()
        assert torch.isfinite(gamma.grad).all()


@pytest.mark.parametrize("stats_route", sorted(STATS_ROUTES))
def test_large_offset_keeps_variance_precise(stats_route, monkeypatch):
    """Two-pass or Welford moments: a mean 1e4 times the spread loses nothing measurable."""
    monkeypatch.setattr(_thresholds, "SMALL_INPUT_ELEMENTS", STATS_ROUTES[stats_route])
    base = torch.randn(64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (base + 1e4).float()
    want = x.double().var(dim=0, unbiased=False)
    for fused in (None, False):
        result = batch_norm(
            x, torch.zeros(8), torch.ones(8), training=True, momentum=0.0, fused=fused
        )
        got = result.new_stats["moving_variance"].double()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "argument", "value"),
    [
        ({"momentum": 1.5}, "momentum", "1.5"),
        ({"momentum": "0.9"}, "momentum", "'0.9'"),
        ({"epsilon": -1.0}, "epsilon", "-1.0"),
        ({"epsilon": float("nan")}, "epsilon", "nan"),
        ({"axis": 2}, "axis", "2"),
        ({"axis": [1, -1]}, "axis", "[1, -1]"),
        ({"axis": 1.0}, "axis", "1.0"),
        ({"fused": "yes"}, "fused", "'yes'"),
        ({"moving_variance_correction": 1}, "moving_variance_correction", "1"),
        ({"training": None}, "training", "None"),
    ],
)
def test_bad_arguments_name_argument_and_value(kwargs, argument, value):
    call = {"training": True, **kwargs}
    with pytest.raises(bn.BatchNormError) as error:
        batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), **call)
    assert argument in str(error.value) and value in str(error.value)


def test_wrong_statistic_size_is_reported():
    with pytest.raises(bn.BatchNormError, match=r"moving_variance\.shape=\(4,\).*3 elements"):
        batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(4), training=True)


def test_rank_one_input_is_an_error():
    with pytest.raises(bn.BatchNormError, match="input rank=1"):
        batch_norm(torch.randn(4), torch.zeros(4), torch.ones(4), training=True)


@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float16])
def test_reference_path_input_gradient_of_16_bit_inputs_is_within_their_rounding(input_dtype):
    """Oracle: the reference path on the same values in float64 (x upcast once, not twice).

    Tiny batches over many seeds: two upcasts summed the input gradient's two parts in the
    16-bit dtype, off by up to 0.08 past the tolerance on some of these.
    """
    for seed in range(50):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 3, generator=generator).to(input_dtype)
        dy = torch.randn(2, 3, generator=generator, dtype=torch.float64)
        grads = []
        for dtype in (input_dtype, torch.float64):
            xi = x.to(dtype).clone().requires_grad_(True)
            y = batch_norm(xi, torch.zeros(3), torch.ones(3), training=True, fused=False).output
            (y.double() * dy).sum().backward()
            grads.append(xi.grad.double())
        torch.testing.assert_close(grads[0], grads[1], **tolerance(input_dtype), msg=f"{seed}")
