r"""Standardization with batch norm's closed-form gradient, in plain torch ops (compiled calls).

:class:`Standardize` computes ``x_hat = (x - mean) * invstd`` from the (weighted) moments of
``x`` over ``reduce_dims`` and differentiates it in closed form. With ``g`` the gradient of
``x_hat`` and ``w / W`` the weights over their total (``1 / n`` unweighted):

.. math::

    \frac{\partial L}{\partial x} = \sigma^{-1} \left(g - \frac{w}{W}
    \left(\sum g + \hat{x} \sum g \hat{x}\right)\right)

the gradient of the fast path's :class:`batchnorm._kernels.NormalizeApply` and of autograd
through :func:`batchnorm._moments.compute_moments`, whose graph it replaces.

This is the training route of compiled calls that ATen's batch-norm op cannot take: weights,
masks, and kept axes that are not dimensions 1 to k. Differentiating through the two-pass
moments makes inductor generate two reductions over ``(dy, x)`` and two elementwise passes in
the backward; the closed form makes one of each, as inductor's own batch norm does. Measured by
``benchmarks/compiled_weighted.py``: (32, 64, 56, 56) float32, forward and backward, against
``torch.compile(F.batch_norm)``: batch weights 1.02x (1.32x through autograd), a mask 1.16x
(1.43x), channels_last 1.10-1.20x (1.5-1.6x).

Like inductor's compiled batch norm, its backward is not differentiated again
(``torch.compile`` does not run double backward; eager calls take the fast path or the
reference path, which are twice differentiable).

Example:
    >>> x = torch.tensor([[1.0], [3.0]], requires_grad=True)
    >>> mean, var = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    >>> x_hat = Standardize.apply(x, None, mean, torch.rsqrt(var), torch.tensor(2.0), (0,))
    >>> x_hat.flatten().tolist()
    [-1.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import torch

from batchnorm._moments import no_nan_divide

__all__ = ["Standardize"]


class Standardize(torch.autograd.Function):
    """``x_hat = (x - mean) * invstd`` with batch norm's gradient; see the module docstring.

    ``apply(x, weights, mean, invstd, total, reduce_dims)``: ``mean`` and ``invstd`` must be
    the (weighted) batch moments of ``x`` over ``reduce_dims`` (size 1 there, from
    :func:`batchnorm._moments.compute_moments` without a graph) and ``total`` their ``W``
    (the count unweighted); the backward differentiates through them in closed form.
    ``weights`` (or None) broadcast to ``x`` and are constants. ``x_hat`` is in ``mean``'s
    dtype.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        x: torch.Tensor,
        weights: torch.Tensor | None,
        mean: torch.Tensor,
        invstd: torch.Tensor,
        total: torch.Tensor,
        reduce_dims: tuple[int, ...],
    ) -> torch.Tensor:
        return (x.to(mean.dtype) - mean) * invstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weights, mean, invstd, total, reduce_dims = inputs
        ctx.save_for_backward(x, weights, mean, invstd, total)
        ctx.reduce_dims = reduce_dims

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weights, mean, invstd, total = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            dims = ctx.reduce_dims
            x_hat = (x.to(mean.dtype) - mean) * invstd  # recomputed: inductor fuses it in
            sum_g = g.sum(dim=dims, keepdim=True)
            sum_g_x_hat = (g * x_hat).sum(dim=dims, keepdim=True)
            share = no_nan_divide(torch.ones_like(mean) if weights is None else weights, total)
            dx = (invstd * (g - share * (sum_g + x_hat * sum_g_x_hat))).to(x.dtype)
        return dx, None, None, None, None, None
