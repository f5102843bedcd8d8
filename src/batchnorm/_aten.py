"""ATen's batch-norm kernels on any layout that has a block view, or slices that have one.

:func:`aten_input` presents an input as ATen's kernels take it, channels on dimension 1;
:func:`native_inference` runs the inference kernel on it. :func:`aten_slices` cuts an input
without a block view (ghost batches of channels_last inputs) into slices that have one. The
fast path's statistics (:mod:`batchnorm._statistics`), apply and backward
(:mod:`batchnorm._kernels`) and the inference path of :func:`batchnorm.functional.batch_norm`
all go through here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from math import prod

import torch

from batchnorm import _thresholds
from batchnorm._moments import accumulation_dtype
from batchnorm._reductions import block_view, is_dense, memory_order_of, viewed_like

__all__ = [
    "AtenSlices",
    "aten_input",
    "aten_slices",
    "aten_vector",
    "folded_rows",
    "native_inference",
]


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


def folded_rows(x: torch.Tensor, axes: Sequence[int]) -> tuple[torch.Tensor, int] | None:
    """``x``'s rows side by side for ATen's statistics kernel: ``(R / k, k C)``, and ``k``.

    For inputs whose ``C`` channels are innermost in memory (channels_last, matrices), seen as
    ``R`` rows of ``C``: ATen's kernel for them sums each thread's share of rows one after
    another, so its rounding grows with ``R``. As ``k`` times the channels, the rows of each
    channel fall in ``k`` interleaved groups, each ``k`` times shorter, in the same single
    pass. ``k`` is the largest divisor of ``R`` up to ``ROW_FOLD_LIMIT``; None below
    ``ROW_FOLD_ROWS`` rows, where ``k`` would be 1, or when the channels are not innermost.

    Example:
        >>> x = torch.zeros(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        >>> view, k = folded_rows(x, [1])
        >>> tuple(view.shape), k
        ((128, 192), 64)
    """
    view = block_view(x, axes)
    if view is None or view.shape[2] != 1:
        return None
    rows, channels = view.shape[0], view.shape[1]
    k = _row_fold(rows)
    if k == 1:
        return None
    return view.view(rows // k, k * channels), k


def _row_fold(rows: int) -> int:
    if rows < _thresholds.ROW_FOLD_ROWS:
        return 1
    return _largest_divisor(rows, _thresholds.ROW_FOLD_LIMIT)


@functools.lru_cache(maxsize=256)
def _largest_divisor(number: int, limit: int) -> int:
    """The largest divisor of ``number`` that is at most ``limit``."""
    return next(d for d in range(min(number, limit), 0, -1) if number % d == 0)


def aten_vector(t: torch.Tensor) -> torch.Tensor:
    """A per-channel tensor as ATen's batch-norm kernels read it: flat and contiguous.

    ATen's CPU kernels for channels-innermost inputs (``(N, C)`` matrices, channels_last)
    read ``weight``, ``save_mean`` and ``save_invstd`` through raw pointers, ignoring their
    strides: an expanded or strided vector (a scale shared across ghost groups of a single
    channel expands with stride 0) would be misread, and the unread gradient left as garbage.
    Free for the contiguous vectors of most calls (no copy).

    Example:
        >>> shared = torch.ones(1, 1, 1).expand(1, 4, 1)  # one channel, four ghost groups
        >>> aten_vector(shared).stride()
        (1,)
    """
    if t.dim() == 1 and t.is_contiguous():
        return t
    return t.reshape(-1).contiguous()


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
        if t is None:
            return t
        return aten_vector(t if t.dtype == acc else t.to(acc))  # as given where it is flat

    y = torch.batch_norm(  # the op under torch.nn.functional.batch_norm, less its checks
        block,
        flat(gamma),
        flat(beta),
        flat(moving_mean),
        flat(moving_variance),
        False,
        0.0,
        epsilon,
        x.is_cuda and torch.backends.cudnn.enabled,  # (a slow attribute: read only on CUDA)
    )
    return y if restore is None else viewed_like(y, restore)


class AtenSlices:
    """An input cut along its outermost dimensions in memory into slices ATen's kernels take.

    Ghost batches of channels_last inputs keep (group, channel) apart in memory, so the input
    has no block view, but each of its examples has one (channels innermost). ``present(t)``
    views a tensor laid out like the input as ``(slices, outer, channels[, inner])``;
    ``per_slice(v)`` gives a per-kept-index vector as ``(slices, channels)``; ``kept_shaped``
    turns a ``(slices, channels)`` table back into a per-kept-index tensor.

    With ``regrouped``, the slices are those of a copy of the input in memory ``order`` (the
    input's own are too small): :meth:`laid_out` makes that copy of each tensor to present.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        order: tuple[int, ...],
        lead: int,
        kept: list[int],
        *,
        regrouped: bool = False,
    ) -> None:
        self.order, self.lead, self.regrouped = order, lead, regrouped
        self.sizes = [shape[d] for d in order]
        first = next(p for p in kept if p >= lead)
        self.count = prod(self.sizes[:lead])
        self.channels = prod(self.sizes[first : kept[-1] + 1])
        outer, inner = prod(self.sizes[lead:first]), prod(self.sizes[kept[-1] + 1 :])
        self.block = (self.count, outer, self.channels) + ((inner,) if inner > 1 else ())
        self.kept_shape = tuple(size if p in kept else 1 for p, size in enumerate(self.sizes))
        self.reduced_lead = [p for p in range(lead) if p not in kept]
        self.to_logical = [order.index(d) for d in range(len(order))]

    def constant_within(self, t: torch.Tensor) -> bool:
        """Whether ``t`` (the input's rank) is constant within each slice.

        That is, of size 1 off the leading dimensions: per-example weights, cut into examples.
        """
        inside = self.order[self.lead :]
        return t.dim() == len(self.order) and all(t.shape[d] == 1 for d in inside)

    def laid_out(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (laid out like the input) as the slices need it: itself, or a regrouped copy."""
        if not self.regrouped:
            return t
        copy = torch.empty_permuted(t.shape, self.order, dtype=t.dtype, device=t.device)
        return copy.copy_(t)

    def present(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (:meth:`laid_out`) as ``(slices, outer, channels[, inner])``, a view."""
        return t.permute(self.order).view(self.block)

    def per_slice(self, v: torch.Tensor) -> torch.Tensor:
        """A per-kept-index ``v`` (1 on reduced dimensions) as ``(slices, channels)``.

        Contiguous, so each row is a vector ATen's kernels read right (:func:`aten_vector`).
        """
        in_memory = v.permute(self.order)
        expanded = in_memory.expand(*self.sizes[: self.lead], *in_memory.shape[self.lead :])
        return expanded.reshape(self.count, self.channels).contiguous()

    def kept_shaped(self, table: torch.Tensor, *, mean: bool = False) -> torch.Tensor:
        """A ``(slices, channels)`` table as a per-kept-index tensor (1 on reduced dimensions).

        Summed, or averaged with ``mean``, over the reduced leading dimensions.
        """
        grid = table.view(*self.sizes[: self.lead], self.channels)
        if self.reduced_lead:
            reduce = torch.mean if mean else torch.sum
            grid = reduce(grid, dim=self.reduced_lead, keepdim=True)
        return grid.reshape(self.kept_shape).permute(self.to_logical)


def aten_slices(
    x: torch.Tensor, axes: Sequence[int], *, regroup: bool = False
) -> AtenSlices | None:
    """``x`` as slices with a block view each (:class:`AtenSlices`), as few as give one.

    None for a non-dense or empty ``x``, when even single elements have none, or for slices
    under ``SLICE_ELEMENTS`` elements. With ``regroup``, slices that are too small give way to
    those of a copy of ``x`` with the kept dimensions that lie apart from the innermost ones
    moved outermost in memory (:attr:`AtenSlices.regrouped`): TensorFlow's strided ghost
    batches of a channels_last ``(64, 256, 14, 14)`` input are 64 examples of 50176 elements
    each, their copy 4 groups of 16 examples. One copy per tensor costs about a pass; the
    blocked torch ops it replaces cost several. The plans are cached per shape, strides and
    axes.
    """
    shape, strides, kept = tuple(x.shape), x.stride(), tuple(axes)
    sliced = _slice_plan(shape, strides, kept)
    if regroup and not _large_enough(sliced, x.numel()):
        sliced = _regrouped_plan(shape, strides, kept)
    return sliced if _large_enough(sliced, x.numel()) else None


def _large_enough(sliced: AtenSlices | None, numel: int) -> bool:
    return sliced is not None and numel >= _thresholds.SLICE_ELEMENTS * sliced.count


@functools.lru_cache(maxsize=256)
def _slice_plan(
    shape: tuple[int, ...], strides: tuple[int, ...], axes: tuple[int, ...]
) -> AtenSlices | None:
    order = memory_order_of(strides)
    return _slices_in_order(shape, order, axes) if is_dense(shape, strides, order) else None


def _slices_in_order(
    shape: tuple[int, ...],
    order: tuple[int, ...],
    axes: tuple[int, ...],
    *,
    regrouped: bool = False,
) -> AtenSlices | None:
    """The fewest slices of a dense tensor with memory ``order`` that have a block view each."""
    kept = sorted(order.index(a) for a in axes)  # the kept dimensions' places in memory
    for lead in range(1, len(shape)):
        inner = [p for p in kept if p >= lead]
        if inner and inner == list(range(inner[0], inner[-1] + 1)):
            return AtenSlices(shape, order, lead, kept, regrouped=regrouped)
    return None


@functools.lru_cache(maxsize=256)
def _regrouped_plan(
    shape: tuple[int, ...], strides: tuple[int, ...], axes: tuple[int, ...]
) -> AtenSlices | None:
    """Slices of a copy whose kept dimensions outside the innermost kept run come first.

    Memory ``(V, G, H, W, C)`` with ``G`` and ``C`` kept becomes ``(G, V, H, W, C)``: ``G``
    slices instead of ``V * G``. None for a non-dense input or one with nothing to move.
    """
    order = memory_order_of(strides)
    if not is_dense(shape, strides, order):
        return None
    kept = sorted(order.index(a) for a in axes)
    run = kept[-1:]
    while run[0] - 1 in kept:
        run.insert(0, run[0] - 1)
    moved = [order[p] for p in kept if p not in run]
    regrouped = tuple(moved) + tuple(d for d in order if d not in moved)
    if regrouped == order:  # nothing to move, or already outermost
        return None
    return _slices_in_order(shape, regrouped, axes, regrouped=True)
