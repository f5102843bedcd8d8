r"""Batch-norm variants as a user would write them without this library: plain torch ops.

``batchnorm bench`` times these against :func:`batchnorm.functional.batch_norm` to show what
the library saves. They are written the usual way, with ``Tensor.mean``/``Tensor.var`` and
broadcasting, and differentiated by autograd; ``tests/test_bench.py`` checks each against the
library's functional (outputs and gradients).

Each function normalises ``x`` over every dimension but the channel ``axis`` with the batch
statistics, as in training, and returns the output only: the per-channel updates of moving
statistics a training step would also make are left out (they cost next to nothing, and
leaving them out can only flatter the composites). ``gamma`` and ``beta`` are per-channel
vectors of ``C`` elements, cast to ``x``'s dtype as a user would to keep a ``bfloat16`` model in
``bfloat16``; the statistics are computed in ``x``'s dtype.
"""

from __future__ import annotations

import torch

__all__ = ["ghost_batch_norm", "renorm_batch_norm", "weighted_batch_norm"]


def _channel_view(vector: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """``vector`` (``C`` elements) shaped to broadcast against ``x`` along ``axis``."""
    shape = [1] * x.dim()
    shape[axis] = -1
    return vector.to(x.dtype).reshape(shape)


def _reduce_dims(rank: int, axis: int) -> list[int]:
    return [d for d in range(rank) if d != axis % rank]


def renorm_batch_norm(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    renorm_mean: torch.Tensor,
    renorm_stddev: torch.Tensor,
    *,
    axis: int = -1,
    epsilon: float = 1e-3,
    rmin: float = 1 / 3,
    rmax: float = 3.0,
    dmax: float = 5.0,
) -> torch.Tensor:
    r"""Batch Renormalization (Ioffe, 2017) with clipped ``r`` and ``d``, written out.

    .. math::

        s = \sqrt{\sigma^2 + \epsilon}, \quad
        r = \operatorname{clip}_{[r_{min}, r_{max}]}(s / \text{renorm\_stddev}), \quad
        d = \operatorname{clip}_{[-d_{max}, d_{max}]}((\mu - \text{renorm\_mean}) /
        \text{renorm\_stddev}), \quad
        y = \left(\frac{x - \mu}{s} r + d\right) \gamma + \beta

    with ``r`` and ``d`` detached (constants for autograd), and the biased batch variance.

    Without clipping, the forward pass normalises with the renorm statistics (here mean 0 and
    standard deviation 1, so ``x`` comes back unchanged):

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> one, zero = torch.ones(1), torch.zeros(1)
        >>> renorm_batch_norm(x, one, zero, zero, one, epsilon=0.0).flatten().tolist()
        [1.0, 3.0]
    """
    dims = _reduce_dims(x.dim(), axis)
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, correction=0)
    stddev = torch.sqrt(var + epsilon)
    moving_mean = _channel_view(renorm_mean, x, axis)
    moving_stddev = _channel_view(renorm_stddev, x, axis)
    r = torch.clamp(stddev.detach() / moving_stddev, rmin, rmax)
    d = torch.clamp((mean.detach() - moving_mean) / moving_stddev, -dmax, dmax)
    x_hat = (x - mean) / stddev * r + d
    return x_hat * _channel_view(gamma, x, axis) + _channel_view(beta, x, axis)


def ghost_batch_norm(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    *,
    virtual_batch_size: int,
    axis: int = -1,
    epsilon: float = 1e-3,
) -> torch.Tensor:
    r"""Ghost batch norm by reshape: statistics per group of ``virtual_batch_size`` rows.

    ``x`` is viewed as ``(G, V, ...)`` (``G = batch / V`` groups of ``V`` consecutive rows, the
    library's ``virtual_batch_layout="contiguous"``), each group is normalised with its own mean
    and biased variance, and ``gamma``, ``beta`` are shared by the groups.

    Example:
        >>> x = torch.tensor([[1.0], [3.0], [10.0], [30.0]])
        >>> one, zero = torch.ones(1), torch.zeros(1)
        >>> ghost_batch_norm(x, one, zero, virtual_batch_size=2, epsilon=0.0).flatten().tolist()
        [-1.0, 1.0, -1.0, 1.0]
    """
    batch = x.shape[0]
    axis = axis % x.dim()
    groups = x.reshape(batch // virtual_batch_size, virtual_batch_size, *x.shape[1:])
    dims = [d for d in range(1, groups.dim()) if d != axis + 1]
    mean = groups.mean(dim=dims, keepdim=True)
    var = groups.var(dim=dims, keepdim=True, correction=0)
    x_hat = ((groups - mean) / torch.sqrt(var + epsilon)).reshape(x.shape)
    return x_hat * _channel_view(gamma, x, axis) + _channel_view(beta, x, axis)


def weighted_batch_norm(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    batch_weights: torch.Tensor,
    *,
    axis: int = -1,
    epsilon: float = 1e-3,
) -> torch.Tensor:
    r"""Batch norm with per-example weights (frequency weights), by broadcasting.

    .. math::

        \mu = \frac{\sum w x}{\sum w}, \quad
        \sigma^2 = \frac{\sum w (x - \mu)^2}{\sum w}, \quad
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \gamma + \beta

    with the sums over every dimension but ``axis`` and ``w`` (shape ``(batch,)``, constants for
    autograd) broadcast over the non-batch dimensions.

    Example:
        >>> x = torch.tensor([[1.0], [3.0], [5.0]])
        >>> one, zero = torch.ones(1), torch.zeros(1)
        >>> w = torch.tensor([1.0, 1.0, 0.0])
        >>> weighted_batch_norm(x, one, zero, w, epsilon=0.0).flatten().tolist()
        [-1.0, 1.0, 3.0]
    """
    dims = _reduce_dims(x.dim(), axis)
    w = batch_weights.detach().to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    w = w.expand(x.shape)
    total = w.sum(dim=dims, keepdim=True)
    mean = (x * w).sum(dim=dims, keepdim=True) / total
    var = (w * (x - mean) ** 2).sum(dim=dims, keepdim=True) / total
    x_hat = (x - mean) / torch.sqrt(var + epsilon)
    return x_hat * _channel_view(gamma, x, axis) + _channel_view(beta, x, axis)
