r"""Batch moments: the mean and biased variance over the reduced dimensions.

This is the readable statement of the statistics every path must agree with; the reference path
(``fused=False``) differentiates through it, and the fast path's stats pass in
:mod:`batchnorm._kernels` computes the same quantities without building a graph.

.. math::

    n = \prod_{d \in R} N_d, \qquad
    \mu = \frac{1}{n} \sum_{R} x, \qquad
    \sigma^2 = \frac{1}{n} \sum_{R} (x - \mu)^2

Numerics:
    Two passes, as ``tf.nn.moments`` does: the mean first, then the mean of squared deviations
    from it, so there is no cancellation of the kind ``E[x^2] - E[x]^2`` suffers when the mean is
    large against the spread. Inputs narrower than float32 are accumulated in float32; float64
    stays float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from batchnorm._types import Moments

__all__ = ["accumulation_dtype", "compute_moments"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: float32, or float64 for float64 inputs.

    Example:
        >>> accumulation_dtype(torch.bfloat16), accumulation_dtype(torch.float64)
        (torch.float32, torch.float64)

    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def compute_moments(x: torch.Tensor, reduce_dims: Sequence[int]) -> Moments:
    """Mean and biased variance of ``x`` over ``reduce_dims``, kept as size-1 dimensions.

    Differentiable; the result is in :func:`accumulation_dtype` of ``x``.

    Example:
        >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
        >>> moments = compute_moments(x, [0])
        >>> moments.mean.tolist(), moments.var.tolist(), int(moments.count)
        ([[2.0, 20.0]], [[1.0, 100.0]], 2)

    """
    dims = tuple(reduce_dims)
    xs = x.to(accumulation_dtype(x.dtype))
    count = 1
    for d in dims:
        count *= x.shape[d]
    mean = xs.mean(dim=dims, keepdim=True)
    centered = xs - mean
    var = (centered * centered).mean(dim=dims, keepdim=True)
    return Moments(
        count=torch.tensor(float(count), dtype=xs.dtype, device=x.device), mean=mean, var=var
    )
