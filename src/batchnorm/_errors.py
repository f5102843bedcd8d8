"""Errors raised for a user's mistake, and helpers that format them.

Every message names the argument, the value received and what was expected, so that
``BatchNormError: axis=5 is out of range for an input of rank 4; expected -4 <= axis < 4``
tells the user what to change without reading our source.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from numbers import Real
from typing import Any

__all__ = [
    "BatchNormError",
    "NonFiniteBatchError",
    "SynchronizationError",
    "check",
    "check_epsilon",
    "check_momentum",
    "check_optional_bool",
    "check_renorm_clipping",
    "check_virtual_batch",
    "fail",
]


class BatchNormError(ValueError):
    """A bad argument or input. Subclasses ``ValueError`` so Keras-style ``except`` still works."""


class NonFiniteBatchError(BatchNormError):
    """A training batch's moments are NaN or Inf and the layer's ``nonfinite`` is ``"raise"``."""


class SynchronizationError(BatchNormError):
    """The processes of a synchronized call disagree (channels, dtype) or one did not call."""


def fail(argument: str, value: Any, expected: str) -> BatchNormError:
    """Build (not raise) the error for ``argument=value`` with the expectation spelled out.

    Example:
        >>> str(fail("momentum", 1.5, "a float in [0, 1]"))
        'momentum=1.5; expected a float in [0, 1]'

    """
    return BatchNormError(f"{argument}={value!r}; expected {expected}")


def check(condition: bool, argument: str, value: Any, expected: str) -> None:
    """Raise :func:`fail` ``(argument, value, expected)`` unless ``condition`` holds.

    Example:
        >>> check(0.0 <= 0.99 <= 1.0, "momentum", 0.99, "a float in [0, 1]")

    """
    if not condition:
        raise fail(argument, value, expected)


_LARGEST_FLOAT = sys.float_info.max


def _check_float(value: Any, argument: str, low: float, high: float | None) -> float:
    if type(value) is float and low <= value <= (high if high is not None else _LARGEST_FLOAT):
        return value  # the common case, without the abstract-class check (every call)
    is_number = isinstance(value, Real) and not isinstance(value, bool)
    number = float(value) if is_number else float("nan")
    in_range = low <= number and (number <= high if high is not None else number < float("inf"))
    if not in_range:  # the message is formatted only for an error: this runs on every call
        expected = f"a float in [{low}, {high}]" if high is not None else f"a finite float >= {low}"
        raise fail(argument, value, expected)
    return number


def check_momentum(momentum: Any, argument: str = "momentum") -> float:
    """Validate a moving-average decay: a float in [0, 1]; returns it as a float.

    Example:
        >>> check_momentum(0.99)
        0.99

    """
    return _check_float(momentum, argument, 0.0, 1.0)


def check_epsilon(epsilon: Any) -> float:
    """Validate ``epsilon``: a finite float >= 0; returns it as a float.

    Example:
        >>> check_epsilon(1e-3)
        0.001

    """
    return _check_float(epsilon, "epsilon", 0.0, None)


def check_optional_bool(value: Any, argument: str) -> None:
    """Validate a tri-state switch: None, True or False.

    Example:
        >>> check_optional_bool("yes", "fused")
        Traceback (most recent call last):
        ...
        batchnorm._errors.BatchNormError: fused='yes'; expected None, True or False

    """
    check(value is None or isinstance(value, bool), argument, value, "None, True or False")


RENORM_CLIPPING_KEYS = ("rmin", "rmax", "dmax")


def _clip_number(value: Any) -> float | None:
    """A float for a real number or a one-element tensor (0-d tensors allow schedules)."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    if hasattr(value, "numel") and value.numel() == 1 and value.dtype.is_floating_point:
        return float(value)
    return None


def check_renorm_clipping(clipping: Any) -> dict[str, Any]:
    """Validate ``renorm_clipping`` and return it as a dict (``{}`` for None).

    Keys among ``rmin``, ``rmax``, ``dmax``; values floats or 0-d tensors; ``rmin <= rmax``
    and ``dmax >= 0``.

    Example:
        >>> check_renorm_clipping({"rmax": 3.0, "rmin": 1 / 3, "dmax": 5.0})["dmax"]
        5.0
        >>> check_renorm_clipping({"rmax": 0.5, "rmin": 2.0})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        batchnorm._errors.BatchNormError: renorm_clipping={...}; expected rmin <= rmax
    """
    if clipping is None:
        return {}
    check(
        isinstance(clipping, Mapping),
        "renorm_clipping",
        clipping,
        "None or a dict with keys among 'rmin', 'rmax', 'dmax'",
    )
    unknown = sorted(set(clipping) - set(RENORM_CLIPPING_KEYS))
    check(
        not unknown,
        "renorm_clipping",
        dict(clipping),
        f"keys among {list(RENORM_CLIPPING_KEYS)} (unknown: {unknown})",
    )
    numbers = {}
    for key, value in clipping.items():
        number = _clip_number(value)
        check(
            number is not None and number == number,
            f"renorm_clipping[{key!r}]",
            value,
            "a float or a 0-d floating tensor",
        )
        numbers[key] = number
    if "rmin" in numbers and "rmax" in numbers:
        check(numbers["rmin"] <= numbers["rmax"], "renorm_clipping", dict(clipping), "rmin <= rmax")
    if "dmax" in numbers:
        check(numbers["dmax"] >= 0, "renorm_clipping", dict(clipping), "dmax >= 0")
    return dict(clipping)


def check_virtual_batch(virtual_batch_size: Any, virtual_batch_layout: Any) -> None:
    """Validate ghost-batch options: a positive int (or None), and a known layout.

    Example:
        >>> check_virtual_batch(0, "strided")
        Traceback (most recent call last):
        ...
        batchnorm._errors.BatchNormError: virtual_batch_size=0; expected None or a positive int
    """
    is_int = isinstance(virtual_batch_size, int) and not isinstance(virtual_batch_size, bool)
    check(
        virtual_batch_size is None or (is_int and virtual_batch_size > 0),
        "virtual_batch_size",
        virtual_batch_size,
        "None or a positive int",
    )
    check(
        virtual_batch_layout in ("strided", "contiguous"),
        "virtual_batch_layout",
        virtual_batch_layout,
        "'strided' (TensorFlow's) or 'contiguous'",
    )
