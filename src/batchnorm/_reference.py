"""The reference path (``fused=False``): batch norm in plain autograd ops.

Kept short and obviously correct: the moments are :func:`batchnorm._moments.compute_moments`
(differentiable), and the apply is below. Gradients come from autograd (twice differentiable);
the test suite checks the fast path of :mod:`batchnorm._kernels` against this one.
"""

from __future__ import annotations

import torch

from batchnorm._types import Affine, Moments

__all__ = ["reference_normalize_apply"]


def reference_normalize_apply(
    x: torch.Tensor, moments: Moments, invstd: torch.Tensor, output: Affine
) -> torch.Tensor:
    """``((x - mean) * invstd) * scale + shift``, returned in ``x``'s dtype.

    Example:
        >>> from batchnorm._moments import compute_moments
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> moments = compute_moments(x, [0])
        >>> identity = Affine(torch.ones(1, 1), torch.zeros(1, 1))
        >>> y = reference_normalize_apply(x, moments, torch.rsqrt(moments.var), identity)
        >>> y.flatten().tolist()
        [-1.0, 1.0]
    """
    x_hat = (x.to(moments.mean.dtype) - moments.mean) * invstd
    return (x_hat * output.scale + output.shift).to(x.dtype)
