"""Axis bookkeeping: which dimensions are kept (channels) and which are reduced.

Keras' rule: ``axis`` (an int or a list of ints, negative allowed) names the *kept* dimensions;
statistics are reduced over every other dimension. Parameters take TensorFlow's shape: ``(C,)``
for a single axis, and for several axes the input's rank with the kept sizes and 1 elsewhere.

Example:
    >>> layout = ChannelLayout.from_axis([1, 3], (2, 3, 4, 5))
    >>> layout.axes, layout.reduce_dims, layout.param_shape
    ((1, 3), (0, 2), (1, 3, 1, 5))

"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod

import torch

from batchnorm._errors import check, fail

__all__ = ["AxisArgument", "ChannelLayout", "broadcasts_to", "validate_axis_argument"]

AxisArgument = int | Sequence[int]


def broadcasts_to(target: Sequence[int], *shapes: Sequence[int]) -> bool:
    """Whether every shape broadcasts to ``target`` without enlarging it (numpy's rule).

    Shapes align on the right; each size must be 1 or the target's. (Written with ``!=``:
    ``torch.compile`` misreads ``size in (1, full)`` for tensors made inside a graph.)

    Example:
        >>> broadcasts_to((2, 3), (3,), (2, 1)), broadcasts_to((2, 3), (2,))
        (True, False)
    """
    for shape in shapes:
        if len(shape) > len(target):
            return False
        tail = target[len(target) - len(shape) :]
        if any(size != 1 and size != full for size, full in zip(shape, tail, strict=True)):
            return False
    return True


def validate_axis_argument(axis: object) -> int | tuple[int, ...]:
    """Check the type of ``axis`` before any input is seen (Keras does this in ``__init__``).

    Returns an int unchanged and a list or tuple as a tuple. Repeated entries are refused here;
    ranges, and a negative entry naming the same axis as a positive one, later, by
    :meth:`ChannelLayout.from_axis`, once the rank is known.

    Example:
        >>> validate_axis_argument([3, 1])
        (3, 1)

    """
    if isinstance(axis, bool):
        raise fail("axis", axis, "an int or a list of ints")
    if isinstance(axis, int):
        return axis
    if isinstance(axis, (list, tuple)) and axis:
        for entry in axis:
            check(
                isinstance(entry, int) and not isinstance(entry, bool),
                "axis",
                axis,
                "an int or a non-empty list of ints",
            )
        check(len(set(axis)) == len(axis), "axis", axis, "no duplicate axes")
        return tuple(axis)
    raise fail("axis", axis, "an int or a non-empty list of ints")


@dataclass(frozen=True)
class ChannelLayout:
    """Where the channels of an input of a given shape live.

    Attributes:
        input_shape: The full input shape (batch included) the layout was built for; sizes
            may be symbolic while compiling.
        axes: The kept dimensions, non-negative, in the order the user listed them.
        raw_axis: ``axis`` as the user gave it (an int or a tuple), for TensorFlow's rules.
        reduce_dims: The dimensions statistics are reduced over, ascending.
        broadcast_shape: Per-channel vectors viewed to broadcast against the input: kept
            sizes, 1 elsewhere.
        param_shape: TensorFlow's weight shape: ``(C,)`` for one axis, else
            :attr:`broadcast_shape`.
        num_channels: Number of independent channels (product of the kept sizes).
        reduced_count: Elements per channel in one batch of ``input_shape``.

    """

    input_shape: tuple[int, ...]
    axes: tuple[int, ...]
    raw_axis: int | tuple[int, ...]
    # Derived once at construction (plain attributes, which torch.compile traces freely).
    reduce_dims: tuple[int, ...] = field(init=False, compare=False)
    broadcast_shape: tuple[int, ...] = field(init=False, compare=False)
    param_shape: tuple[int, ...] = field(init=False, compare=False)
    num_channels: int = field(init=False, compare=False)
    reduced_count: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        rank = len(self.input_shape)
        reduce_dims = tuple(d for d in range(rank) if d not in self.axes)
        broadcast = tuple(self.input_shape[d] if d in self.axes else 1 for d in range(rank))
        derived = {
            "reduce_dims": reduce_dims,
            "broadcast_shape": broadcast,
            "param_shape": (
                (self.input_shape[self.axes[0]],) if len(self.axes) == 1 else broadcast
            ),
            "num_channels": prod([self.input_shape[d] for d in self.axes]),
            "reduced_count": prod([self.input_shape[d] for d in reduce_dims]),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_axis(cls, axis: AxisArgument, input_shape: Sequence[int]) -> ChannelLayout:
        """Canonicalise ``axis`` for an input of ``input_shape``.

        Raises:
            BatchNormError: if the input has rank < 2, an axis is out of range, or repeated.

        """
        raw = validate_axis_argument(axis)
        if torch.compiler.is_compiling():  # symbolic sizes: no cache (they do not hash)
            return _checked_layout(axis, raw, tuple(input_shape))
        key = (raw, tuple(input_shape))
        layout = _LAYOUTS.get(key)
        if layout is None:  # layouts are immutable: one per (axis, shape), reused
            layout = _checked_layout(axis, raw, key[1])
            if len(_LAYOUTS) >= _MAX_LAYOUTS:
                _LAYOUTS.clear()
            _LAYOUTS[key] = layout
        return layout

    @property
    def rank(self) -> int:
        """The input's rank."""
        return len(self.input_shape)

    def with_batch(self, input_shape: Sequence[int]) -> ChannelLayout:
        """The same layout for another input; only non-channel sizes may differ.

        Raises:
            BatchNormError: if the rank or a channel size differs from the built layout.

        """
        if isinstance(input_shape, torch.Size) and not torch.compiler.is_compiling():
            shape = tuple(input_shape)  # ints already
        else:
            shape = tuple(_size(size) for size in input_shape)
        if len(shape) != self.rank:  # messages formatted only for an error (every call)
            raise fail(
                "input rank",
                len(shape),
                f"{self.rank}, the rank this layer was built for (input shape {shape})",
            )
        for d in self.axes:
            if shape[d] != self.input_shape[d]:
                raise fail(
                    f"input.shape[{d}]",
                    shape[d],
                    f"{self.input_shape[d]} channels on axis {d}, as built",
                )
        return ChannelLayout.from_axis(self.raw_axis, shape)


def _size(size: object) -> int:
    """A dimension size as an int; a symbolic one (while compiling) as it is."""
    return size if isinstance(size, torch.SymInt) else int(size)  # type: ignore[arg-type]


_LAYOUTS: dict[tuple[int | tuple[int, ...], tuple[int, ...]], ChannelLayout] = {}
_MAX_LAYOUTS = 256


def _checked_layout(
    axis: AxisArgument, raw: int | tuple[int, ...], input_shape: tuple[int, ...]
) -> ChannelLayout:
    """The layout of :meth:`ChannelLayout.from_axis`; errors name ``axis`` as the user gave it."""
    shape = tuple(_size(size) for size in input_shape)
    rank = len(shape)
    if rank < 2:
        raise fail(
            "input rank",
            rank,
            f"2 or more (input shape {shape}); batch norm needs a batch axis and a channel axis",
        )
    listed = (raw,) if isinstance(raw, int) else raw
    axes = []
    for entry in listed:
        if not -rank <= entry < rank:
            raise fail("axis", axis, f"values in [{-rank}, {rank}) for rank {rank}")
        axes.append(entry % rank)
    check(len(set(axes)) == len(axes), "axis", axis, "no duplicate axes")
    if len(axes) >= rank:
        raise fail("axis", axis, f"to leave at least one axis of {shape} to reduce")
    return ChannelLayout(input_shape=shape, axes=tuple(axes), raw_axis=raw)
