"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["integer_at_least"]


def integer_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse ``type`` that accepts integers >= ``minimum`` and names ``what`` otherwise.

    Example:
        >>> integer_at_least(1, "a positive integer")("3")
        3
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse
