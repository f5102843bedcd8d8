"""Batch moments merged across the processes of a ``torch.distributed`` group.

``synchronized=True`` in a group of several processes normalises every process's batch with
the moments of the global batch, as one process would on the concatenated batch. Each process
computes its local per-channel (weighted) count ``n_r``, mean ``mu_r`` and centred sum of squares
``M_r``; one ``all_gather`` carries all three for every channel in one tensor, and every process
merges the same parts in the same order (:func:`batchnorm._moments.merge_moments`), so the
merged moments, and the moving statistics updated from them, are bit-identical everywhere.

The gather is differentiable: its backward is one ``all_reduce`` of the gradient of the gathered
parts, of which each process keeps its own row. So the backward of a training step makes
exactly one collective too, and each process's input gradient is that of the concatenated
batch (loss summed over processes), as with ``torch.nn.SyncBatchNorm``. Written for gloo (CPU)
and NCCL (the collectives both have); tested on gloo.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from batchnorm._errors import BatchNormError, SynchronizationError
from batchnorm._moments import merge_moments, no_nan_divide
from batchnorm._types import Moments

__all__ = ["Synchronizer", "synchronizer_for"]


def check_process_group(group: Any) -> Any:
    """``group`` if it is None (the default group) or a ``torch.distributed`` process group.

    Example:
        >>> check_process_group(None) is None
        True
    """
    known = () if not dist.is_available() else (dist.ProcessGroup,)
    if group is not None and not isinstance(group, known):
        raise BatchNormError(
            f"process_group={group!r}; expected None (the default group) or a "
            "torch.distributed ProcessGroup (dist.new_group(...))"
        )
    return group


def synchronizer_for(synchronized: bool, group: Any = None) -> Synchronizer | None:
    """The group's :class:`Synchronizer`, or None where a call computes one process's moments.

    None unless ``synchronized``, and also outside an initialized process group or in a group
    of one process: then the statistics are this process's, which is what TensorFlow computes
    outside a distribution strategy.
    """
    if not synchronized or not dist.is_available() or not dist.is_initialized():
        return None
    if dist.get_world_size(group) == 1:
        return None
    return Synchronizer(group)


class Synchronizer:
    """The collectives of one synchronized training call in ``group`` (None: the default).

    Example (in every process of an initialized group)::

        sync = Synchronizer(None)
        merged = sync.merge(local_moments, x.dtype)  # one all_gather
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def merge(
        self, moments: Moments, input_dtype: torch.dtype, *, within_groups: bool = False
    ) -> Moments:
        r"""The group's per-channel moments from this process's, in one ``all_gather``.

        ``moments`` are per kept index (any shape), with a per-channel or a single count.
        Merged by Chan's formula; with ``within_groups`` (ghost batches, whose pooled variance
        is the mean of the groups' own variances) the spread between processes' means is left
        out, as :func:`batchnorm._moments.pool_groups` leaves out that between groups:
        ``var = \sum_r n_r v_r / n``. Differentiable in ``moments`` (see the module docstring).

        The parts travel in float64. The first call of each (group, channel count, input
        dtype) first gathers those two numbers from every process (:meth:`_agree`), so that
        processes that disagree refuse together instead of corrupting the collective.

        Raises:
            SynchronizationError: if the processes' channels or input dtypes differ, or the
                collective fails (a process that does not call fails it when the process
                group's timeout runs out).
        """
        like = moments.mean
        compiling = torch.compiler.is_compiling()
        if not compiling:  # (a compiled graph reads nothing on the host: see _agree)
            self._agree(like.numel(), input_dtype, like.device)
        count = moments.count.to(device=like.device, dtype=like.dtype).expand_as(like)
        packed = torch.stack([count, like, moments.var * count]).reshape(3, -1)
        packed = packed.to(torch.float64)
        if torch.is_grad_enabled() and not packed.requires_grad and not compiling:
            # Every process must run the backward's collective, also one whose own part needs
            # no gradient (no rows, or an input without grad): join the graph through a zero.
            # (A compiled graph cannot create that leaf; there every process's part must
            # need a gradient, or none.)
            packed = packed + torch.zeros((), dtype=packed.dtype, requires_grad=True)
        gathered = _Gather.apply(packed, self)
        counts, means, squares = gathered.unbind(dim=1)  # merged in float64, then cast
        if within_groups:
            total = counts.sum(dim=0)
            mean = no_nan_divide((counts * means).sum(dim=0), total)
            merged = Moments(total, mean, no_nan_divide(squares.sum(dim=0), total))
        else:
            merged = merge_moments(counts, means, squares)
        return Moments(*(t.reshape(like.shape).to(like.dtype) for t in merged))

    def sum(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor summed over the group's processes, in one ``all_reduce`` of them packed.

        The fast path's backward: the per-channel sums ``sum(dy)`` and ``sum(dy * x_hat)``.
        """
        packed = torch.cat([t.reshape(-1) for t in tensors])
        with _collective("all_reduce of the gradient sums (backward)", self.group):
            dist.all_reduce(packed, group=self.group)
        return [
            part.view(t.shape)
            for part, t in zip(packed.split([t.numel() for t in tensors]), tensors, strict=True)
        ]

    def _agree(self, channels: int, input_dtype: torch.dtype, device: torch.device) -> None:
        """Check once per signature that every process has these channels and input dtype.

        One small ``all_gather`` (and a host read) on the first call of a signature only: a
        layer's channels are fixed once built, so later calls need no check, and a process
        that skips a call is caught by the group's timeout instead. Not while compiling (the
        read would break the graph): a compiled call relies on an eager call of the same
        signature having agreed, or fails inside the collective (gloo aborts the process when
        the channel counts differ, measured on torch 2.13).
        """
        group = self.group if self.group is not None else dist.group.WORLD
        key = (id(group), self.world, channels, input_dtype)
        if key in _AGREED:
            return
        mine = torch.tensor([channels, _code(input_dtype)], dtype=torch.float64, device=device)
        everyone = mine.new_empty(self.world * 2)
        with _collective("all_gather of the channel counts and dtypes", self.group):
            dist.all_gather_single(everyone, mine, group=self.group)
        rows = [tuple(int(v) for v in row) for row in everyone.view(self.world, 2).tolist()]
        if len(set(rows)) > 1:
            described = ", ".join(
                f"process {rank}: {c} channels, {_DTYPES[code]}"
                for rank, (c, code) in enumerate(rows)
            )
            raise SynchronizationError(
                "synchronized statistics need the same channels and input dtype in every "
                f"process of the group ({described})"
            )
        _AGREED.add(key)


# The signatures every process of a group agreed on: (group, world size, channels, dtype).
_AGREED: set[tuple[Any, ...]] = set()


# Input dtypes as the numbers the gathered parts carry (float64 holds them exactly).
_DTYPES = {1: torch.float32, 2: torch.float64, 3: torch.bfloat16, 4: torch.float16}


def _code(dtype: torch.dtype) -> int:
    return next(code for code, known in _DTYPES.items() if known == dtype)


@contextlib.contextmanager
def _collective(operation: str, group: Any) -> Iterator[None]:
    """Turn a failed collective (a gloo or NCCL RuntimeError) into a SynchronizationError."""
    try:
        yield
    except RuntimeError as error:
        raise SynchronizationError(
            f"synchronized statistics: the {operation} over the "
            f"{dist.get_world_size(group)} processes of the group failed ({error}). Every "
            "process must make the same training calls, with the same channels, within the "
            "process group's timeout (init_process_group(timeout=...))"
        ) from error


class _Gather(torch.autograd.Function):
    """``all_gather`` of one tensor per process into ``(world, ...)``; backward ``all_reduce``."""

    @staticmethod
    def forward(ctx: Any, packed: torch.Tensor, sync: Synchronizer) -> torch.Tensor:  # type: ignore[override]
        ctx.sync = sync
        rows = packed.shape[0]  # gathered concatenated along dimension 0, then split
        gathered = packed.new_empty((sync.world * rows, *packed.shape[1:]))
        with _collective("all_gather of the batch moments", sync.group):
            dist.all_gather_single(gathered, packed.contiguous(), group=sync.group)
        return gathered.view(sync.world, *packed.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        # Row r of every process's gradient belongs to process r: sum them, keep our row.
        summed = grad.contiguous().clone()
        with _collective("all_reduce of the moments' gradient (backward)", ctx.sync.group):
            dist.all_reduce(summed, group=ctx.sync.group)
        return summed[ctx.sync.rank], None
