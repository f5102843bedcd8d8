"""Errors raised for a user's mistake, and helpers that format them.

Every message names the argument, the value received and what was expected, so that
``BatchNormError: axis=5 is out of range for an input of rank 4; expected -4 <= axis < 4``
tells the user what to change without reading our source.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

__all__ = [
    "BatchNormError",
    "check",
    "check_epsilon",
    "check_momentum",
    "check_optional_bool",
    "fail",
]


class BatchNormError(ValueError):
    """A bad argument or input. Subclasses ``ValueError`` so Keras-style ``except`` still works."""


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


def _check_float(value: Any, argument: str, low: float, high: float | None) -> float:
    is_number = isinstance(value, Real) and not isinstance(value, bool)
    number = float(value) if is_number else float("nan")
    in_range = low <= number and (number <= high if high is not None else number < float("inf"))
    expected = f"a float in [{low}, {high}]" if high is not None else f"a finite float >= {low}"
    check(in_range, argument, value, expected)
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
