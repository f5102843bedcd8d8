"""ATen's batch-norm kernels on any layout that has a block view.

:func:`aten_input` presents an input as ATen's kernels take it, channels on dimension 1;
:func:`native_inference` runs the inference kernel on it. The fast path's statistics
(:mod:`batchnorm._statistics`), apply and backward (:mod:`batchnorm._kernels`) and the
inference path of :func:`batchnorm.functional.batch_norm` all go through here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from batchnorm._moments import accumulation_dtype
from batchnorm._reductions import block_view, from_block_view

__all__ = ["aten_input", "native_inference"]


def aten_input(
    x: torch.Tensor, axes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``x`` as ATen's batch-norm kernels take it, channels on dimension 1, and what to restore.

    Contiguous inputs with channels on dimension 1 (``(N, C)`` to ``(N, C, D, H, W)``) and
    channels_last inputs (rank 4 or 5) go as they are (channels_last measured about 0.3 ms
    faster per (32, 64, 56, 56) call than as a matrix); every other layout as its block view
    ``(outer, channels, inner)``, or ``(outer, channels)`` when the channels are innermost,
    with ``x`` returned to restore an output's shape and strides. None without a block view
    or for an empty ``x``. channels_last goes as it is only when no dimension has size 1:
    ATen's backward returns permuted gradients for inputs whose strides merely look
    channels_last.
    """
    if x.numel() == 0:  # ATen's kernels reject zero channels; the torch ops take them
        return None
    if tuple(axes) == (1,) and 2 <= x.dim() <= 5:
        if x.is_contiguous():
            return x, None
        channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
        if channels_last and min(x.shape) > 1 and x.is_contiguous(memory_format=channels_last):
            return x, None
    view = block_view(x, axes)
    if view is None:
        return None
    return (view[:, :, 0] if view.shape[2] == 1 else view), x


def native_inference(
    x: torch.Tensor,
    axes: Sequence[int],
    moving_mean: torch.Tensor,
    moving_variance: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    epsilon: float,
) -> torch.Tensor | None:
    """Inference through ``torch.nn.functional.batch_norm`` over the block view of ``x``.

    One pass, ATen's own kernel and its autograd; the per-channel tensors may have any shape
    with ``C`` elements. None when ``x`` has no block view (kept axes apart in memory).

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> native_inference(x, [1], torch.ones(1), torch.ones(1), None, None, 0.0).tolist()
        [[0.0], [2.0]]
    """
    presented = aten_input(x, axes)
    if presented is None:
        return None
    block, restore = presented
    acc = accumulation_dtype(x.dtype)  # ATen takes 16-bit inputs with float32 statistics

    def flat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.reshape(-1).to(acc)

    y = torch.nn.functional.batch_norm(
        block,
        flat(moving_mean),
        flat(moving_variance),
        flat(gamma),
        flat(beta),
        training=False,
        eps=epsilon,
    )
    return y if restore is None else from_block_view(y, restore)
