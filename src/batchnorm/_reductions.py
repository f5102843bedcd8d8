"""Per-channel sums over any memory layout, and the blocks that keep temporaries in cache.

Sums run over the input in memory order, with adjacent kept or reduced dimensions merged into
runs and the reduced runs summed innermost first, so every sum is a contiguous row sum or a sum
down contiguous columns (NCHW, channels_last, dense inputs, and ghost batches of each); only a
non-dense input falls back to a plain multi-dimension sum. Products inside sums (squares,
weights) are formed in cache-sized blocks of a reused scratch (:class:`ScratchSpace`), never
as full-size temporaries, and 16-bit inputs are upcast a block at a time
(:func:`upcast_blocks`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from math import prod
from typing import NamedTuple

import torch

from batchnorm import _thresholds

__all__ = [
    "ScratchSpace",
    "block_view",
    "block_view_sizes",
    "blocked_channel_sum",
    "blocks",
    "channel_sum",
    "channel_sum_of_squares",
    "column_parts",
    "combine_blocks",
    "is_dense",
    "keep_shape",
    "memory_order",
    "memory_order_of",
    "scratch_space",
    "upcast_blocks",
    "viewed_like",
]


def memory_order(t: torch.Tensor) -> list[int]:
    """Dimensions of ``t`` from outermost to innermost in memory (ties keep logical order)."""
    return list(memory_order_of(t.stride()))


@functools.lru_cache(maxsize=256)
def memory_order_of(strides: tuple[int, ...]) -> tuple[int, ...]:
    """:func:`memory_order` of a tensor with these strides (cached)."""
    return tuple(sorted(range(len(strides)), key=strides.__getitem__, reverse=True))


def block_view(t: torch.Tensor, axes: Sequence[int]) -> torch.Tensor | None:
    """``t`` as ``(outer, channels, inner)`` in memory order, or None if no such view exists.

    It exists when ``t`` is dense and the kept ``axes`` are adjacent in memory, in ascending
    order: NCHW and channels_last inputs, and every contiguous input with one kept axis.
    """
    plan = _block_plan(tuple(t.shape), t.stride(), tuple(axes))
    if plan is None:
        return None
    order, sizes = plan
    return (t if order is None else t.permute(order)).view(sizes)


def block_view_sizes(t: torch.Tensor, axes: Sequence[int]) -> tuple[int, int, int] | None:
    """The shape :func:`block_view` would give ``t``, without making the view; None likewise."""
    plan = _block_plan(tuple(t.shape), t.stride(), tuple(axes))
    return None if plan is None else plan[1]


@functools.lru_cache(maxsize=256)
def _block_plan(
    shape: tuple[int, ...], strides: tuple[int, ...], axes: tuple[int, ...]
) -> tuple[tuple[int, ...] | None, tuple[int, int, int]] | None:
    """The permutation (None if the identity) and sizes of :func:`block_view`, or None."""
    order = memory_order_of(strides)
    if not is_dense(shape, strides, order):
        return None
    positions = [order.index(a) for a in sorted(axes)]
    first, last = positions[0], positions[-1]
    if positions != list(range(first, last + 1)):
        return None
    sizes = [shape[d] for d in order]
    view = (prod(sizes[:first]), prod(sizes[first : last + 1]), prod(sizes[last + 1 :]))
    return (None if order == tuple(range(len(shape))) else order), view


def is_dense(shape: tuple[int, ...], strides: tuple[int, ...], order: Sequence[int]) -> bool:
    """Whether a non-empty tensor packs its elements in ``order`` with no gaps.

    Each stride is the product of the sizes inside it; size-1 dimensions may have any stride.
    """
    expected = 1
    for d in reversed(order):
        if shape[d] != 1 and strides[d] != expected:
            return False
        expected *= shape[d]
    return expected != 0


def viewed_like(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``flat`` (``like.numel()`` elements in memory order) with ``like``'s shape and strides.

    Undoes :func:`block_view` (an output computed on the block view of ``like``) and lays a
    flat scratch buffer out like a block.

    Example:
        >>> like = torch.empty(2, 3).t()  # shape (3, 2), columns contiguous
        >>> viewed_like(torch.arange(6.0), like).stride()
        (1, 3)
    """
    shape, to_logical = _layout_plan(tuple(like.shape), like.stride())
    in_memory_order = flat.reshape(shape)
    return in_memory_order if to_logical is None else in_memory_order.permute(to_logical)


@functools.lru_cache(maxsize=256)
def _layout_plan(
    shape: tuple[int, ...], strides: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Sizes in memory order, and the permutation back to logical order (None: identity)."""
    order = memory_order_of(strides)
    to_logical = tuple(order.index(d) for d in range(len(shape)))
    identity = to_logical == tuple(range(len(shape)))
    return tuple(shape[d] for d in order), None if identity else to_logical


def keep_shape(t: torch.Tensor, axes: Sequence[int]) -> tuple[int, ...]:
    return tuple(t.shape[d] if d in axes else 1 for d in range(t.dim()))


def channel_sum(
    t: torch.Tensor, axes: Sequence[int], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Sum of ``t`` over every dimension but ``axes``, kept as size-1 dimensions.

    The reduced runs are summed innermost first (:func:`_sum_plan`). With ``dtype`` float64
    (for a float32 ``t``) the last run's partial sums are added up in float64 and so
    returned: a mean of float32 data taken from that total is within half a unit of roundoff
    of the exact one, where sums in float32 throughout were 1.1-1.4 units off (on
    (32, 64, 28, 28) data offset by 10 to 1000 spreads; native's Welford mean 0.3-0.4 units).
    Otherwise the sum has ``t``'s dtype (or is converted to ``dtype``).

    Example:
        >>> channel_sum(torch.ones(2, 3, 4), [1]).flatten().tolist()
        [8.0, 8.0, 8.0]

    """
    plan = _sum_plan(tuple(t.shape), t.stride(), tuple(axes))
    if plan.runs is None:  # not dense: one keepdim sum over the reduced dimensions of t
        return t.sum(dim=plan.reduced, keepdim=True).to(dtype or t.dtype)
    total = (t if plan.order is None else t.permute(plan.order)).view(plan.runs)
    wide = dtype == torch.float64 and t.dtype == torch.float32
    for index, run in enumerate(plan.reduced):
        total = _run_sum(total, run, wide=wide and index == len(plan.reduced) - 1)
    if total.dtype != (dtype or t.dtype):
        total = total.to(dtype or t.dtype)
    total = total.view(plan.kept_sizes)
    to_logical = plan.to_logical
    return (total if to_logical is None else total.permute(to_logical)).reshape(plan.keep)


def _run_sum(t: torch.Tensor, run: int, *, wide: bool = False) -> torch.Tensor:
    """``t.sum(dim=run)``; a sum down columns (``run`` not innermost) in parts of rows.

    Down columns, the rows are summed in up to ``COLUMN_PARTS`` consecutive parts, then the
    parts' sums: ATen accumulates each column's rows one after another, whose rounding grows
    with the rows (a unit of roundoff and more over 1e5 rows), and parts of consecutive rows
    also keep each thread on its own rows, where an elementwise op that wrote a blocked
    product split them (summed whole, ATen splits the columns between threads instead, and
    each thread reads what the other's cache holds: the blocked variance of a channels_last
    input was 1.6x slower, ``benchmarks/pass_costs.py``). ``wide``: the partial sums are
    added up in float64, and returned so.
    """
    size = t.shape[run]
    parts = 1 if run == t.dim() - 1 else column_parts(size)
    if parts > 1:
        t = t.view(*t.shape[:run], parts, size // parts, *t.shape[run + 1 :]).sum(dim=run + 1)
    return t.sum(dim=run, dtype=torch.float64 if wide else None)


@functools.lru_cache(maxsize=256)
def column_parts(rows: int) -> int:
    """The most parts up to ``COLUMN_PARTS`` that ``rows`` splits into evenly (or 1).

    Each part has at least ``_MIN_ROWS_PER_PART`` rows.
    """
    most = min(COLUMN_PARTS, rows // _MIN_ROWS_PER_PART)
    return next((p for p in range(most, 1, -1) if rows % p == 0), 1)


COLUMN_PARTS = 64
_MIN_ROWS_PER_PART = 64


class _SumPlan(NamedTuple):
    """How :func:`channel_sum` reduces a tensor: see :func:`_sum_plan`."""

    order: tuple[int, ...] | None  # permutation into memory order (None: the identity)
    runs: tuple[int, ...] | None  # sizes of the coalesced runs (None: sum t as it is)
    reduced: tuple[int, ...]  # the runs summed, innermost first (or t's reduced dimensions)
    kept_sizes: tuple[int, ...]
    to_logical: tuple[int, ...] | None  # kept dimensions back to logical order
    keep: tuple[int, ...]


@functools.lru_cache(maxsize=256)
def _sum_plan(shape: tuple[int, ...], strides: tuple[int, ...], axes: tuple[int, ...]) -> _SumPlan:
    """How :func:`channel_sum` reduces a tensor of this shape and strides.

    Memory-adjacent dimensions coalesce into alternating kept/reduced runs, reduced innermost
    first: each sum is a contiguous row sum or a sum over a middle dimension with contiguous
    columns, both fast, where one multi-dimension sum is not (ghost batches on channels_last
    inputs keep (group, channel) with (height, width) between them). Permutations that are
    the identity are None. A non-dense tensor has no runs: one keepdim sum of the tensor as
    it is.
    """
    rank = len(shape)
    order = memory_order_of(strides)
    identity = order == tuple(range(rank))
    reduced = tuple(d for d in range(rank) if d not in axes)
    keep = tuple(shape[d] if d in axes else 1 for d in range(rank))
    if not is_dense(shape, strides, order):
        return _SumPlan(None, None, reduced, (), None, keep)
    runs: list[int] = []
    kept: list[bool] = []
    for d in order:
        if kept and kept[-1] == (d in axes):
            runs[-1] *= shape[d]
        else:
            runs.append(shape[d])
            kept.append(d in axes)
    reduced_runs = tuple(run for run in reversed(range(len(runs))) if not kept[run])
    kept_in_memory_order = [d for d in order if d in axes]
    to_logical = tuple(kept_in_memory_order.index(d) for d in sorted(axes))
    return _SumPlan(
        None if identity else order,
        tuple(runs),
        reduced_runs,
        tuple(shape[d] for d in kept_in_memory_order),
        None if to_logical == tuple(range(len(to_logical))) else to_logical,
        keep,
    )


def channel_sum_of_squares(t: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """Sum of ``t ** 2`` over every dimension but ``axes``; no temporary when rows are long.

    Example:
        >>> channel_sum_of_squares(torch.full((2, 3), 2.0), [1]).flatten().round().tolist()
        [8.0, 8.0, 8.0]

    """
    keep = keep_shape(t, axes)
    view = block_view(t, axes)
    if view is not None and view.shape[2] > 1:
        return torch.linalg.vector_norm(view, dim=2).square().sum(dim=0).view(keep)
    # Channels innermost, or kept axes apart: torch's norm along strided dimensions is ~20x
    # slower than a sum, so square blocks into a small, cache-resident temporary and sum.
    return blocked_channel_sum(_square, axes, t)


def _square(t: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    return torch.mul(t, t, out=out)


class ScratchSpace(threading.local):
    """One reused buffer per thread, role, device and dtype, for blocked sums and upcasts.

    A fresh buffer per call costs page faults wherever the allocator hands memory back to the
    system between calls (glibc does, for buffers of megabytes), a large share of a pass that
    reads a few megabytes. The buffers hold at most ``BLOCK_ELEMENTS`` elements each.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.device, torch.dtype, bool], torch.Tensor] = {}

    def like(self, block: torch.Tensor, dtype: torch.dtype, role: str = "product") -> torch.Tensor:
        """An uninitialised tensor of ``block``'s shape, dimension order in memory and device.

        Buffers of different ``role`` are distinct, so a block upcast into one can feed a
        blocked sum that writes its products into another.
        """
        # Inference-mode tensors cannot be written outside inference mode: keep them apart.
        key = (role, block.device, dtype, torch.is_inference_mode_enabled())
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < block.numel():
            buffer = torch.empty(
                max(block.numel(), _thresholds.BLOCK_ELEMENTS), dtype=dtype, device=block.device
            )
            self.buffers[key] = buffer
        return viewed_like(buffer[: block.numel()], block)


scratch_space = ScratchSpace()


def blocked_channel_sum(
    product: Callable[..., torch.Tensor],
    axes: Sequence[int],
    *tensors: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``channel_sum(product(*tensors), axes)`` without a full-size temporary.

    ``product(*blocks, out=scratch)`` (elementwise, broadcasting to the first tensor's shape)
    runs on slices along the outermost dimension in memory and writes into a scratch block of
    ``dtype`` (default: the first tensor's) that stays in cache and is reused across blocks
    and calls (:class:`ScratchSpace`). The first tensor fixes the layout; the others are
    sliced alongside it where they span that dimension, else broadcast. ``axes`` must leave
    a dimension to reduce (the sums are then new tensors, not views of the scratch).

    Example:
        >>> x = torch.arange(6.0).reshape(3, 2)
        >>> blocked_channel_sum(torch.mul, [1], x, x).flatten().tolist()
        [20.0, 35.0]
    """
    first = tensors[0]
    if first.numel() <= _thresholds.BLOCK_ELEMENTS:  # one block: the products fill the scratch once
        out = scratch_space.like(first, dtype or first.dtype)
        return channel_sum(product(*tensors, out=out), axes)
    scratch = None
    parts = []
    for dim, sliced in blocks(first, tensors):
        if scratch is None:
            scratch = scratch_space.like(sliced[0], dtype or first.dtype)
        out = scratch.narrow(dim, 0, sliced[0].shape[dim])
        parts.append(channel_sum(product(*sliced, out=out), axes))
    return combine_blocks(parts, dim, axes)


def blocks(
    first: torch.Tensor, tensors: Sequence[torch.Tensor]
) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """Slices of ``tensors`` along ``first``'s outermost dimension in memory, a block at a time.

    A block holds about ``BLOCK_ELEMENTS`` elements of ``first``. Tensors that span that
    dimension (``first``'s rank and size there) are sliced; the others broadcast and pass
    whole. Yields the dimension and the slices.
    """
    dim = memory_order(first)[0]
    size = first.shape[dim]
    step = max(1, min(size, _thresholds.BLOCK_ELEMENTS // max(1, first.numel() // max(size, 1))))
    for start in range(0, max(size, 1), step):  # an empty dimension: one empty block
        length = min(step, size - start)
        yield (
            dim,
            [
                t.narrow(dim, start, length)
                if t.dim() == first.dim() and t.shape[dim] == size
                else t
                for t in tensors
            ],
        )


def combine_blocks(parts: Sequence[torch.Tensor], dim: int, axes: Sequence[int]) -> torch.Tensor:
    """Per-block channel sums as one: stacked along a kept ``dim``, added up over a reduced one."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat(list(parts), dim=dim) if dim in axes else torch.stack(list(parts)).sum(dim=0)


def upcast_blocks(
    x: torch.Tensor, dtype: torch.dtype, others: Sequence[torch.Tensor]
) -> Iterator[tuple[int, torch.Tensor, list[torch.Tensor]]]:
    """:func:`blocks` of a 16-bit ``x``, each converted to ``dtype`` in a reused scratch.

    Yields the dimension, the converted block (scratch: free to modify in place) and the
    slices of ``others``. Converting first matters: torch's elementwise ops on mixed 16- and
    32-bit operands take a slow, unvectorised path (10x), the conversion in ``copy_`` does not.
    """
    for dim, (block, *rest) in blocks(x, (x, *others)):
        yield dim, scratch_space.like(block, dtype, "upcast").copy_(block), rest
