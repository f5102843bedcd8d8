"""Model-wide conversions: synchronized statistics for every batch-norm layer of a model.

:func:`convert_sync_batchnorm` is ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` for this
library: it turns ``synchronized`` on for every :class:`batchnorm.BatchNormalization` of a model
and, when asked, replaces ``torch.nn.BatchNorm1d/2d/3d`` layers by synchronized ones holding
their weights and statistics. Unlike ``torch.nn.SyncBatchNorm`` the result runs on the CPU
(gloo) too, and keeps every option (renorm, ghost batches, weights, masks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from batchnorm._errors import BatchNormError, check
from batchnorm._sync import check_process_group
from batchnorm.layer import BatchNormalization

__all__ = ["convert_sync_batchnorm", "from_torch_batchnorm"]

_TORCH_RANKS = {nn.BatchNorm1d: 2, nn.BatchNorm2d: 4, nn.BatchNorm3d: 5}


def convert_sync_batchnorm(
    module: nn.Module, process_group: Any = None, *, torch_layers: bool = False
) -> nn.Module:
    """Synchronize the statistics of every batch-norm layer in ``module`` over a group.

    Every :class:`batchnorm.BatchNormalization` gets ``synchronized=True`` and
    ``process_group``, in place. With ``torch_layers``, every ``torch.nn.BatchNorm1d/2d/3d``
    is replaced by a synchronized :class:`batchnorm.BatchNormalization` built from it
    (:func:`from_torch_batchnorm`). Returns ``module`` (or its replacement, if it is itself
    a torch batch-norm layer), for ``model = convert_sync_batchnorm(model)`` before wrapping
    it in ``DistributedDataParallel``.

    Example:
        >>> import batchnorm as bn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
        ...                       bn.BatchNormalization(axis=1))
        >>> model = convert_sync_batchnorm(model, torch_layers=True)
        >>> [type(m).__name__ for m in model], model[1].synchronized, model[2].synchronized
        (['Conv2d', 'BatchNormalization', 'BatchNormalization'], True, True)
    """
    check(isinstance(module, nn.Module), "module", type(module).__name__, "a torch.nn.Module")
    check(isinstance(torch_layers, bool), "torch_layers", torch_layers, "True or False")
    check_process_group(process_group)
    if isinstance(module, BatchNormalization):
        module.synchronized = True
        module.process_group = process_group
        return module
    if torch_layers and type(module) in _TORCH_RANKS:
        converted = from_torch_batchnorm(module)
        return convert_sync_batchnorm(converted, process_group)
    for name, child in module.named_children():
        replaced = convert_sync_batchnorm(child, process_group, torch_layers=torch_layers)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def from_torch_batchnorm(layer: nn.Module) -> BatchNormalization:
    """A :class:`batchnorm.BatchNormalization` computing what ``torch.nn.BatchNorm*d`` does.

    Channels on axis 1; TensorFlow's momentum is ``1 - momentum``; the stored variance is
    Bessel-corrected, as torch stores it; weights and running statistics are copied, and the
    training mode follows. ``BatchNorm1d`` becomes a layer for ``(N, C)`` inputs.

    Raises:
        BatchNormError: for ``momentum=None`` (torch's cumulative average has no TensorFlow
            counterpart) or ``track_running_stats=False``.
    """
    if type(layer) not in _TORCH_RANKS:
        raise BatchNormError(
            f"layer={type(layer).__name__}; expected torch.nn.BatchNorm1d, 2d or 3d"
        )
    if layer.momentum is None or not layer.track_running_stats:
        raise BatchNormError(
            f"{type(layer).__name__}(momentum={layer.momentum}, "
            f"track_running_stats={layer.track_running_stats}); expected a float momentum and "
            "running statistics (a cumulative average has no TensorFlow counterpart)"
        )
    rank = _TORCH_RANKS[type(layer)]
    running_mean = layer.running_mean
    converted = BatchNormalization(
        axis=1,
        momentum=1.0 - layer.momentum,
        epsilon=layer.eps,
        center=layer.affine,
        scale=layer.affine,
        moving_variance_correction=True,
        input_shape=(layer.num_features,) + (None,) * (rank - 2),
        dtype=running_mean.dtype,
        device=running_mean.device,
    )
    with torch.no_grad():
        converted.moving_mean.copy_(running_mean)
        converted.moving_variance.copy_(layer.running_var)
        if layer.affine:
            converted.gamma.copy_(layer.weight)
            converted.beta.copy_(layer.bias)
    return converted.train(layer.training)
