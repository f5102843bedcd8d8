"""batchnorm inside PyTorch's transforms: double backward, torch.func, torch.compile, export.

Oracles: the reference path (``fused=False``, plain autograd ops) for the same call, and
``torch.autograd.gradgradcheck`` (finite differences) in float64.
"""

from __future__ import annotations

import pytest
import torch
from configs import CONFIGS, call_tensors, config_id, option_kwargs, state_tensors

from batchnorm.functional import batch_norm

# Float64 configurations small enough for second derivatives, every option among them.
DOUBLE_BACKWARD_CONFIGS = [
    c for c in CONFIGS if c.input_dtype == torch.float32 and torch.Size(c.shape).numel() <= 200
]


def _call(config, x, state, tensors, fused):
    kwargs = {**option_kwargs(config), **tensors}
    correction = kwargs.pop("moving_variance_correction", False)
    return batch_norm(
        x,
        *(state[k] for k in ("moving_mean", "moving_variance", "gamma", "beta")),
        training=True,
        axis=config.axis,
        momentum=config.momentum,
        epsilon=config.epsilon,
        fused=fused,
        moving_variance_correction=correction,
        **{
            k: v
            for k, v in state.items()
            if k not in ("moving_mean", "moving_variance", "gamma", "beta")
        },
        **kwargs,
    ).output


@pytest.mark.parametrize("config", DOUBLE_BACKWARD_CONFIGS, ids=config_id)
def test_double_backward_of_the_fast_path_equals_the_reference_path(config, generator):
    """A gradient penalty: ``d/d(x, gamma) |d loss / dx|^2`` on both paths."""
    x0 = config.make_input(generator).double()
    state = {
        k: (None if v is None else v.double())
        for k, v in state_tensors(config, x0, generator).items()
    }
    tensors = call_tensors(config, x0, generator)
    dy = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    results = []
    for fused in (None, False):
        x = x0.clone().requires_grad_(True)
        gamma = None if state["gamma"] is None else state["gamma"].clone().requires_grad_(True)
        y = _call(config, x, {**state, "gamma": gamma}, tensors, fused)
        (dx,) = torch.autograd.grad((y * dy).sum(), x, create_graph=True)
        leaves = [x] + ([gamma] if gamma is not None else [])
        results.append(torch.autograd.grad(dx.pow(2).sum(), leaves, allow_unused=True))
    for fast, reference in zip(*results, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "options",
    [{}, {"virtual_batch_size": 2}, {"batch_weights": True}, {"mask": True}],
    ids=["plain", "ghost", "weights", "mask"],
)
def test_fast_path_passes_gradgradcheck(options):
    """(Renorm's ``r, d`` are stop-gradients, as in TensorFlow: no finite-difference oracle.)"""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(3, generator=generator, dtype=torch.float64).add(0.5).requires_grad_()
    beta = torch.randn(3, generator=generator, dtype=torch.float64, requires_grad=True)
    extra = dict(options)
    if extra.pop("batch_weights", False):
        extra["batch_weights"] = torch.rand(4, generator=generator, dtype=torch.float64) + 0.1
    if extra.pop("mask", False):
        extra["mask"] = torch.tensor([[True], [False], [True], [True]])
    stats = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    def function(x, gamma, beta):
        return batch_norm(x, *stats, gamma, beta, training=True, **extra).output

    assert torch.autograd.gradgradcheck(function, (x, gamma, beta))
