"""bn.convert: torch's batch-norm layers as batchnorm layers, and the model-wide sync switch.

Oracle: ``torch.nn.BatchNorm1d/2d/3d`` themselves, trained side by side on the same inputs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import batchnorm as bn


@pytest.mark.parametrize(
    ("torch_layer", "shape"),
    [(nn.BatchNorm1d, (6, 4)), (nn.BatchNorm2d, (6, 4, 5, 5)), (nn.BatchNorm3d, (6, 4, 3, 3, 3))],
)
@pytest.mark.parametrize("affine", [True, False])
def test_a_converted_torch_layer_computes_what_torch_does(torch_layer, shape, affine):
    generator = torch.Generator().manual_seed(0)
    reference = torch_layer(4, momentum=0.2, eps=1e-4, affine=affine)
    with torch.no_grad():
        reference.running_mean.uniform_(-1, 1, generator=generator)
        reference.running_var.uniform_(1, 2, generator=generator)
        if affine:
            reference.weight.uniform_(0.5, 1.5, generator=generator)
            reference.bias.uniform_(-1, 1, generator=generator)
    converted = bn.convert.from_torch_batchnorm(reference)
    for _ in range(2):  # training steps: outputs, input gradients and running statistics
        x = torch.randn(shape, generator=generator) * 2 + 1
        x_ours, x_torch = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.testing.assert_close(converted(x_ours), reference(x_torch))
        converted(x_ours).sum().backward()
        reference(x_torch).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_torch.grad)
    torch.testing.assert_close(converted.moving_mean, reference.running_mean)
    torch.testing.assert_close(converted.moving_variance, reference.running_var)
    reference.eval()
    converted.eval()
    x = torch.randn(shape, generator=generator)
    torch.testing.assert_close(converted(x), reference(x))


def test_cumulative_averages_have_no_counterpart():
    with pytest.raises(bn.BatchNormError, match=r"momentum=None"):
        bn.convert.from_torch_batchnorm(nn.BatchNorm2d(3, momentum=None))


def test_convert_sync_batchnorm_reaches_nested_layers_and_keeps_the_others():
    group = torch.distributed.ProcessGroup(torch.distributed.HashStore(), 0, 1)  # passed through
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.Sequential(nn.BatchNorm2d(4), bn.BatchNormalization(axis=1)),
        nn.BatchNorm2d(4),
    )
    untouched = bn.convert_sync_batchnorm(model)  # torch layers only when asked
    assert isinstance(untouched[2], nn.BatchNorm2d) and untouched[1][1].synchronized
    model = bn.convert_sync_batchnorm(model, process_group=group, torch_layers=True)
    layers = [m for m in model.modules() if isinstance(m, bn.BatchNormalization)]
    assert len(layers) == 3
    assert all(m.synchronized and m.process_group is group for m in layers)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
