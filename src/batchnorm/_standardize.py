r"""Standardization and its affine with batch norm's closed-form gradient, in plain torch ops.

:class:`Standardize` computes ``y = x_hat * scale + shift`` with
``x_hat = (x - mean) * invstd`` from the (weighted) moments of ``x`` over ``reduce_dims``, and
differentiates it in closed form. With ``g = dy * scale`` the gradient of ``x_hat`` and
``w / W`` the weights over their total (``1 / n`` unweighted):

.. math::

    \frac{\partial L}{\partial x} = \sigma^{-1} \left(g - \frac{w}{W}
    \left(\sum g + \hat{x} \sum g \hat{x}\right)\right), \quad
    \frac{\partial L}{\partial \mathrm{scale}} = \sum dy\, \hat{x}, \quad
    \frac{\partial L}{\partial \mathrm{shift}} = \sum dy

(the last two summed to the shapes of ``scale`` and ``shift``): the gradient of the fast
path's :class:`batchnorm._kernels.NormalizeApply` and of autograd through
:func:`batchnorm._moments.compute_moments`, whose graph it replaces.

This is the training route of compiled calls that ATen's batch-norm op cannot take: renorm,
weights, masks, ghost batches, and kept axes that are not dimensions 1 to k. Differentiating
through the two-pass moments makes inductor generate two reductions over ``(dy, x)`` and two
elementwise passes in the backward. The closed form makes one of each, as inductor's own batch
norm does, and with the affine inside, nothing of the size of ``x`` but ``x`` itself is saved
for the backward (autograd's product ``x_hat * scale`` would save ``x_hat``, written in the
forward and read in the backward). Measured by ``benchmarks/compiled_weighted.py`` and ``bench
--compile``: see :func:`batchnorm.functional._compiled_route`.

Like inductor's compiled batch norm, its backward is not differentiated again
(``torch.compile`` does not run double backward; eager calls take the fast path or the
reference path, which are twice differentiable).

Example:
    >>> x = torch.tensor([[1.0], [3.0]], requires_grad=True)
    >>> mean, var = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    >>> scale, shift = torch.tensor([[2.0]]), torch.tensor([[0.5]])
    >>> inv, total = torch.rsqrt(var), torch.tensor(2.0)
    >>> y = Standardize.apply(x, None, mean, inv, total, (0,), scale, shift)
    >>> y.flatten().tolist()
    [-1.5, 2.5]
"""

from __future__ import annotations

from typing import Any

import torch

from batchnorm._moments import no_nan_divide, sum_over

__all__ = ["Standardize", "is_per_channel"]


class Standardize(torch.autograd.Function):
    """``(x - mean) * invstd * scale + shift`` with batch norm's gradient; see the module docs.

    ``apply(x, weights, mean, invstd, total, reduce_dims, scale, shift)``: ``mean`` and
    ``invstd`` must be the (weighted) batch moments of ``x`` over ``reduce_dims`` (size 1
    there, from :func:`batchnorm._moments.one_read_moments` without a graph) and ``total`` their
    ``W`` (the count unweighted); the backward differentiates through them in closed form.
    ``weights`` (or None) broadcast to ``x`` and are constants; ``scale`` and ``shift``
    broadcast to ``x`` and receive gradients. The output is in ``mean``'s dtype.

    A NaN or Inf of weight 0 stays out of the moments (:func:`batchnorm._moments.weighted`);
    its output is NaN, and the backward takes its ``x_hat`` as 0, so it reaches no gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        x: torch.Tensor,
        weights: torch.Tensor | None,
        mean: torch.Tensor,
        invstd: torch.Tensor,
        total: torch.Tensor,
        reduce_dims: tuple[int, ...],
        scale: torch.Tensor,
        shift: torch.Tensor,
    ) -> torch.Tensor:
        return (x.to(mean.dtype) - mean) * invstd * scale + shift

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weights, mean, invstd, total, reduce_dims, scale, shift = inputs
        ctx.save_for_backward(x, weights, mean, invstd, total, scale)
        ctx.reduce_dims = reduce_dims
        ctx.shift_shape = shift.shape

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weights, mean, invstd, total, scale = ctx.saved_tensors
        # Recomputed: inductor fuses it into the loops that read x.
        x_hat = _excluded_nonfinite_zeroed((x.to(mean.dtype) - mean) * invstd, weights)
        dims = ctx.reduce_dims
        if is_per_channel(scale, dims):
            # One reduction of (dy, dy * x_hat) over ``dims`` serves every gradient.
            sum_dy = sum_over(dy, dims)
            sum_dy_x_hat = sum_over(dy * x_hat, dims)
            g = dy * scale
            sum_g, sum_g_x_hat = sum_dy * scale, sum_dy_x_hat * scale
        else:  # an adjustment that varies over reduced positions
            sum_dy, sum_dy_x_hat = dy, dy * x_hat
            g = dy * scale
            sum_g = sum_over(g, dims)
            sum_g_x_hat = sum_over(g * x_hat, dims)
        dx = None
        if ctx.needs_input_grad[0]:
            share = no_nan_divide(torch.ones_like(mean) if weights is None else weights, total)
            dx = (invstd * (g - share * (sum_g + x_hat * sum_g_x_hat))).to(x.dtype)
        dscale = sum_dy_x_hat.sum_to_size(scale.shape) if ctx.needs_input_grad[6] else None
        dshift = sum_dy.sum_to_size(ctx.shift_shape) if ctx.needs_input_grad[7] else None
        return dx, None, None, None, None, None, dscale, dshift


def is_per_channel(t: torch.Tensor, reduce_dims: tuple[int, ...]) -> bool:
    """Whether ``t`` is the same over ``reduce_dims`` (size 1 there): one value a channel."""
    return all(t.shape[d] == 1 for d in reduce_dims)


def _excluded_nonfinite_zeroed(x_hat: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``x_hat``, 0 where the weight is 0 and it is not finite (pointwise, from float weights)."""
    if weights is None:
        return x_hat
    return torch.where((weights == 0) & ~torch.isfinite(x_hat), 0.0, x_hat)
