"""A whole network's training step with batchnorm's layer against ``torch.nn.BatchNorm2d``.

``bench`` times one layer alone. A user times the model: a stack of ``--depth`` blocks of a 3x3
convolution, batch norm and ReLU, its loss, backward and an SGD step. Both networks start from
the same weights and run interleaved round by round in one process, eagerly or each
``torch.compile``d whole (``--compile``: the layers' guards, graph breaks and kernels as in a
real model), with ``--options`` given to every ``bn.BatchNormalization``::

    .venv/bin/python benchmarks/model_step.py
    .venv/bin/python benchmarks/model_step.py --compile --options "{'renorm': True}"
    .venv/bin/python benchmarks/model_step.py --shape 32 64 28 28 --channels-last

Prints each network's median step time and the ratio, ours over native's.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import batchnorm as bn
from batchnorm.cli._allocator import keep_freed_memory


def network(depth: int, channels: int, norm: Callable[[], nn.Module]) -> nn.Sequential:
    """``depth`` blocks of convolution, ``norm()`` and ReLU, seeded alike for every ``norm``."""
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(depth):
        blocks += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), norm(), nn.ReLU()]
    return nn.Sequential(*blocks)


def training_step(model: nn.Module, x: torch.Tensor, compiled: bool) -> Callable[[], None]:
    """One SGD step on the mean square of the output (compiled: the model compiled whole)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward(x).square().mean().backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 16, 8, 8])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--options", default="{}", help="keywords of bn.BatchNormalization")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    keep_freed_memory()
    options = ast.literal_eval(args.options)
    channels = args.shape[1]
    x = torch.randn(args.shape)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    norms: dict[str, Callable[[], nn.Module]] = {
        "nn.BatchNorm2d": lambda: nn.BatchNorm2d(channels),
        "bn.BatchNormalization": lambda: bn.BatchNormalization(axis=1, **options),
    }
    steps = {}
    for name, norm in norms.items():
        model = network(args.depth, channels, norm)
        model(x)  # builds batchnorm's layers (an unbuilt layer has no tensors to convert)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        steps[name] = training_step(model, x, args.compile)
        for _ in range(3):  # warm-up (compiled: the compilation)
            steps[name]()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(times) * 1e3 for name, times in samples.items()}
    mode = "compiled" if args.compile else "eager"
    print(
        f"{args.depth} blocks on {tuple(args.shape)}, {mode}, options {options}: "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in medians.items())
        + f"; ratio {medians['bn.BatchNormalization'] / medians['nn.BatchNorm2d']:.2f}"
    )


if __name__ == "__main__":
    main()
