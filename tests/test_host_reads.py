"""A training step on a device other than the CPU reads no tensor value on the host.

Oracle: PyTorch's meta device, whose tensors have shapes and no values: ``.item()``,
``bool()`` or ``float()`` on one raises, so any host read the fast path makes (to pick a route,
check weights or decide the fold) fails the step here. On an accelerator such a read would
synchronise the host with the device queue, and CUDA graphs would refuse it. (The CPU itself has
no queue to stall: there the fold and the weights' sign are read, by design; see
:mod:`batchnorm._plan`.)
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import batchnorm as bn

META = torch.device("meta")


@pytest.fixture(scope="module", autouse=True)
def _statistics_kernel_on_meta():
    """ATen registers no meta kernel for its statistics kernel (the 16-bit routes): add one,
    shapes only, for this module."""
    library = torch.library.Library("aten", "IMPL")

    def shapes(x, running_mean, running_var, momentum):
        dtype = torch.float32 if running_mean is None else running_mean.dtype
        return x.new_empty(x.shape[1], dtype=dtype), x.new_empty(x.shape[1], dtype=dtype)

    library.impl("batch_norm_update_stats", shapes, "Meta")
    yield
    del library  # the registration goes with the library object


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, device=META, dtype=dtype)


def _per_element(shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    return _meta(*shape), _meta(*shape)


OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "renorm": {
        "renorm": True,
        "renorm_clipping": {"rmax": 3.0, "rmin": 0.3, "dmax": 5.0},
        "moving_stddev": _meta(8),
        "renorm_mean": _meta(8),
        "renorm_stddev": _meta(8),
    },
    "ghost": {"virtual_batch_size": 2},
    "weights": {"batch_weights": _meta(4)},
    "keras mask": {"mask": _meta(4, 8, 5, dtype=torch.bool)},
    "full mask": {"mask": _meta(4, 1, 5, 5, dtype=torch.bool)},
    "adjustment": {"adjustment": _per_element},
    "zero_debias": {
        "zero_debias_moving_mean": True,
        "moving_mean_biased": _meta(8),
        "local_step": _meta(),
    },
}
LAYOUTS = {
    "NCHW": torch.contiguous_format,
    "channels_last": torch.channels_last,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_a_training_step_reads_nothing_on_the_host(option, layout, dtype):
    x = _meta(4, 8, 5, 5, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])
    x.requires_grad_(True)
    gamma, beta = _meta(8).requires_grad_(True), _meta(8).requires_grad_(True)
    result = bn.functional.batch_norm(
        x, _meta(8), _meta(8), gamma, beta, training=True, axis=1, **OPTIONS[option]
    )
    assert result.output.shape == x.shape and result.new_stats
    result.output.float().sum().backward()
    assert x.grad is not None and gamma.grad is not None


@pytest.mark.parametrize("deferred", [False, True])
def test_a_layers_training_step_reads_nothing_on_the_host(deferred):
    layer = bn.BatchNormalization(
        axis=1, input_shape=(8, 5, 5), device=META, deferred_updates=deferred
    )
    x = _meta(4, 8, 5, 5).requires_grad_(True)
    layer(x, training=True).sum().backward()
    layer.apply_updates()
    assert x.grad is not None
