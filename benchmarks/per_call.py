"""Per-call cost of small inputs: batchnorm's layer and functional against PyTorch's, eagerly.

A training step (forward and backward) and an inference call, interleaved round by round in one
process, each round the median of a burst of calls: ``F.batch_norm`` and ``nn.BatchNorm2d``
against ``bn.functional.batch_norm`` and ``bn.BatchNormalization``, the layer also with its
decided calls switched off (:mod:`batchnorm._lanes`), so that their share shows::

    .venv/bin/python benchmarks/per_call.py                   # (8, 16, 4, 4) float32
    .venv/bin/python benchmarks/per_call.py --shape 32 64 8 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional

import batchnorm as bn
from batchnorm.cli._allocator import keep_freed_memory


def _medians_us(
    candidates: dict[str, Callable[[], object]], rounds: int, burst: int
) -> dict[str, float]:
    for run in candidates.values():
        for _ in range(burst):
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            for _ in range(burst):
                run()
            times[name].append((time.perf_counter() - start) / burst)
    return {name: statistics.median(samples) * 1e6 for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 16, 4, 4])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    channels = args.shape[1]
    x = torch.randn(args.shape)
    dy = torch.randn_like(x)
    x_grad = x.detach().requires_grad_(True)
    weight = torch.ones(channels, requires_grad=True)
    bias = torch.zeros(channels, requires_grad=True)
    running = torch.zeros(channels), torch.ones(channels)
    state = torch.zeros(channels), torch.ones(channels)
    native = torch.nn.BatchNorm2d(channels, eps=1e-3)
    layer = bn.BatchNormalization(axis=1, input_shape=args.shape[1:])
    general = bn.BatchNormalization(axis=1, input_shape=args.shape[1:])
    general.__dict__["_lanes"] = None  # every call through functional.batch_norm_checked

    def ours(xi: torch.Tensor, training: bool) -> torch.Tensor:
        return bn.functional.batch_norm(xi, *state, weight, bias, training=training, axis=1)[0]

    def native_f(xi: torch.Tensor, training: bool) -> torch.Tensor:
        return functional.batch_norm(xi, *running, weight, bias, training, 0.01, 1e-3)

    steps = {
        "F.batch_norm": lambda: native_f(x_grad, True).backward(dy),
        "nn.BatchNorm2d": lambda: native.train()(x_grad).backward(dy),
        "bn.functional": lambda: ours(x_grad, True).backward(dy),
        "layer": lambda: layer(x_grad, training=True).backward(dy),
        "layer, general": lambda: general(x_grad, training=True).backward(dy),
    }
    calls = {
        "F.batch_norm": lambda: native_f(x, False),
        "nn.BatchNorm2d": lambda: native.eval()(x),
        "bn.functional": lambda: ours(x, False),
        "layer": lambda: layer(x, training=False),
        "layer, general": lambda: general(x, training=False),
    }
    # As bench does: otherwise an output of 128 KiB or more is a fresh mmap on every call, and
    # its page faults slow the small ops that follow it (10 us at (32, 64, 8, 8)).
    allocator = keep_freed_memory()
    print(
        f"per call, {tuple(args.shape)} float32 NCHW, median of {args.rounds} interleaved "
        f"rounds of {args.burst} calls, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {allocator}"
    )
    step_us = _medians_us(steps, args.rounds, args.burst)
    with torch.no_grad():
        call_us = _medians_us(calls, args.rounds, args.burst)
    for title, medians in (("training step", step_us), ("inference (no_grad)", call_us)):
        print(f"  {title}:")
        for name, us in medians.items():
            functional_ratio = us / medians["F.batch_norm"]
            module_ratio = us / medians["nn.BatchNorm2d"]
            print(
                f"    {name:15s} {us:7.1f} us  {functional_ratio:.2f}x F.batch_norm  "
                f"{module_ratio:.2f}x nn.BatchNorm2d"
            )


if __name__ == "__main__":
    main()
