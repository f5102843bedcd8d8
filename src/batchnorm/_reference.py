"""The reference path (``fused=False``): batch norm in plain autograd ops.

Kept short and obviously correct; its gradients come from autograd (twice differentiable), and
the test suite checks the fast path of :mod:`batchnorm._kernels` against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from batchnorm._moments import compute_moments
from batchnorm._types import Affine, Moments

__all__ = ["reference_moments", "reference_normalize_apply"]


def reference_moments(x: torch.Tensor, axes: Sequence[int]) -> Moments:
    """Differentiable batch moments over every dimension but ``axes``.

    Example:
        >>> reference_moments(torch.tensor([[1.0], [3.0]]), [1]).var.item()
        1.0

    """
    return compute_moments(x, [d for d in range(x.dim()) if d not in axes])


def reference_normalize_apply(
    x: torch.Tensor, moments: Moments, invstd: torch.Tensor, output: Affine
) -> torch.Tensor:
    """``((x - mean) * invstd) * scale + shift``, returned in ``x``'s dtype.

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> moments = reference_moments(x, [1])
        >>> identity = Affine(torch.ones(1, 1), torch.zeros(1, 1))
        >>> y = reference_normalize_apply(x, moments, torch.rsqrt(moments.var), identity)
        >>> y.flatten().tolist()
        [-1.0, 1.0]

    """
    x_hat = (x.to(moments.mean.dtype) - moments.mean) * invstd
    return (x_hat * output.scale + output.shift).to(x.dtype)
