"""Dispatcher of the ``batchnorm`` command line (``python -m batchnorm``, the console script).

pytest does not collect doctests from ``__main__.py`` files, so this module's behaviour is
checked by ``tests/test_cli.py`` instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

from batchnorm.cli import bench, demo

__all__ = ["build_parser", "main"]


def _version() -> str:
    try:
        return metadata.version("batchnorm")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subparser per command.

    Returns:
        The parser; each subcommand sets ``run``, the function that :func:`main` calls with the
        parsed arguments.

    """
    parser = argparse.ArgumentParser(
        prog="batchnorm",
        description="TensorFlow/Keras BatchNormalization for PyTorch: command-line tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    demo.add_parser(commands)
    bench.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments without the program name; ``None`` (default) reads ``sys.argv``.

    Returns:
        The exit status: 0 on success.

    Raises:
        SystemExit: From :mod:`argparse`, for ``--help``, ``--version`` (status 0) and for a
            missing or unknown command or a bad option (status 2, with a message on stderr).

    """
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
