"""Compiled weighted and masked training steps: the closed-form route against autograd's.

Times, interleaved round by round in one process, a forward and backward of
``torch.compile(batch_norm)`` with batch weights and with a mask, by the route compiled calls
take (:mod:`batchnorm._standardize`) and by the reference path's ops (``fused=False``, autograd
through the two-pass moments), against ``torch.compile(F.batch_norm)``; and a weighted sum whose
weights come from a bool mask inside the graph, against the same sum reading float weights (why
:func:`batchnorm.functional._materialized` copies masks into a buffer of their own)::

    .venv/bin/python benchmarks/compiled_weighted.py
    .venv/bin/python benchmarks/compiled_weighted.py --shape 32 64 56 56 --channels-last
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional

from batchnorm.functional import batch_norm


def _median_ms(candidates: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    for run in candidates.values():  # compile, then warm up
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) * 1e3 for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 64, 56, 56])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.manual_seed(0)
    n, c, h, w = args.shape
    x = torch.randn(args.shape)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    gamma = torch.ones(c, requires_grad=True)
    beta = torch.zeros(c, requires_grad=True)
    call_inputs = {
        "batch_weights": torch.rand(n) + 0.1,
        "mask": torch.rand(n, 1, h, w) > 0.2,
    }

    def step(function: Callable[..., torch.Tensor], **kwargs: object) -> Callable[[], None]:
        def run() -> None:
            xi = x.detach().requires_grad_(True)
            function(xi, **kwargs).backward(dy)

        return run

    def ours(xi: torch.Tensor, fused: bool | None, **kwargs: torch.Tensor) -> torch.Tensor:
        state = torch.zeros(c), torch.ones(c)
        return batch_norm(xi, *state, gamma, beta, training=True, axis=1, fused=fused, **kwargs)[0]

    def native(xi: torch.Tensor) -> torch.Tensor:
        return functional.batch_norm(xi, torch.zeros(c), torch.ones(c), gamma, beta, True)

    layout = "channels_last" if args.channels_last else "NCHW"
    print(
        f"torch.compile'd training step (forward + backward), {tuple(args.shape)} {layout} "
        f"float32, median of {args.rounds} interleaved rounds, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    compiled_ours = torch.compile(ours, fullgraph=True)
    compiled_native = torch.compile(native, fullgraph=True)
    for name, value in call_inputs.items():
        medians = _median_ms(
            {
                "closed form": step(compiled_ours, fused=None, **{name: value}),
                "autograd": step(compiled_ours, fused=False, **{name: value}),
                "native plain": step(compiled_native),
            },
            args.rounds,
        )
        native_ms = medians["native plain"]
        print(f"  {name}:")
        for route, ms in medians.items():
            print(f"    {route:13s} {ms:7.2f} ms  {ms / native_ms:.2f}x native plain")

    dims = (0, 2, 3)
    mask = call_inputs["mask"]

    def from_bool(xi: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        weights = m.to(xi.dtype)
        return torch.where(weights != 0, xi * weights, 0.0).sum(dim=dims)

    def from_float(xi: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return torch.where(weights != 0, xi * weights, 0.0).sum(dim=dims)

    bool_sum, float_sum = torch.compile(from_bool), torch.compile(from_float)
    medians = _median_ms(
        {
            "bool mask converted in the loop": lambda: bool_sum(x, mask),
            "float weights read": lambda: float_sum(x, mask.float()),
        },
        args.rounds,
    )
    print("  compiled weighted sum over every dimension but 1:")
    for name, ms in medians.items():
        print(f"    {name:32s} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
