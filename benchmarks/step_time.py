"""Training-step time of batchnorm's fast path against ``torch.nn.functional.batch_norm``.

Both run side by side in one process, interleaved round by round, on the same input; the
figure is the median over rounds. Run::

    .venv/bin/python benchmarks/step_time.py            # (32, 64, 56, 56) float32, axis=1
    .venv/bin/python benchmarks/step_time.py --shape 64 256 14 14 --channels-last

This is the foundation's measurement; ``python -m batchnorm bench`` (a later issue) grows it
into the full benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional

import batchnorm as bn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 64, 56, 56])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    torch.manual_seed(0)
    channels = args.shape[1]
    x = torch.randn(args.shape)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    ours = bn.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-5, input_shape=args.shape[1:])
    weight = torch.ones(channels, requires_grad=True)
    bias = torch.zeros(channels, requires_grad=True)
    running_mean, running_var = torch.zeros(channels), torch.ones(channels)

    def step_ours() -> None:
        xi = x.detach().requires_grad_(True)
        ours(xi, training=True).backward(dy)

    def step_native() -> None:
        xi = x.detach().requires_grad_(True)
        y = functional.batch_norm(xi, running_mean, running_var, weight, bias, True, 0.1, 1e-5)
        y.backward(dy)

    candidates = {"batchnorm (fast path)": step_ours, "torch F.batch_norm": step_native}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn()
        fn()
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    layout = "channels_last" if args.channels_last else "NCHW"
    print(
        f"training step (forward + backward), shape {tuple(args.shape)} {layout} float32, "
        f"{args.rounds} interleaved rounds, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    native = statistics.median(times["torch F.batch_norm"])
    for name, samples in times.items():
        median = statistics.median(samples)
        spread = statistics.quantiles(samples, n=4)
        print(
            f"  {name:24s} median {median * 1e3:7.2f} ms  (IQR {spread[0] * 1e3:.2f}-"
            f"{spread[2] * 1e3:.2f})  ratio to native {median / native:.2f}x"
        )


if __name__ == "__main__":
    main()
