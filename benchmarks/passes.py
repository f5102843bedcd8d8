"""Where a bench case's time goes: each heavy pass of ours, and native's kernels alone.

``python -m batchnorm bench`` times whole calls. For one of its cases (shape, layout, dtype,
mode) this runs the same candidates, with every route of the fast path's tables wrapped in a
timer (:class:`PassTimer`), so one call splits into its passes:

- ``stats``: the statistics route (``_statistics.STATS_ROUTES``);
- ``apply``: the training apply (``_kernels.APPLY_ROUTES``), or inference's whole pass
  (``_kernels.INFER_ROUTES``);
- ``backward``: the backward sums and the input gradient (``REDUCE_ROUTES``, then
  ``INPUT_GRAD_ROUTES``);
- ``training``: ATen's whole training kernel, where the plan takes it (small plain calls);
- ``other``: the rest of the call: argument checks, per-channel ops (the affine, renorm's
  factors, the moving averages), autograd's bookkeeping and Python.

``native`` gets the same split from ATen's kernels run alone on the same tensors: its statistics
(``batch_norm_update_stats``), its apply (the inference kernel) and its backward
(``native_batch_norm_backward``), each timed in the same rounds; its ``other`` is its whole
call less those (negative where its fused forward beats the two kernels apart).

Each pass is also given as a fraction of its own bound, as ``bench`` counts the passes of a
call: the statistics read ``x`` once, the apply reads and writes it, the backward reads ``x``
and ``dy`` twice and writes ``dx`` (1 + 2 + 5 = the 8 of ``train_fwdbwd``), at the copy's
bandwidth. ``benchmarks/targets.py --explain`` prints this for every case where a target is
missed::

    .venv/bin/python benchmarks/passes.py --shape 32x64x56x56 --layout channels_last
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from batchnorm import _kernels, _statistics, functional
from batchnorm.cli import bench
from batchnorm.cli._allocator import keep_freed_memory

PASSES = ("stats", "apply", "backward", "training")
BOUND_PASSES = {"stats": 1, "apply": 2, "backward": 5}  # bench's 8 passes of a training step
_TABLES = {
    "stats": (_statistics.STATS_ROUTES,),
    "apply": (_kernels.APPLY_ROUTES, _kernels.INFER_ROUTES),
    "backward": (_kernels.REDUCE_ROUTES, _kernels.INPUT_GRAD_ROUTES),
}


class PassTimer:
    """While entered, every route of the fast path's tables adds its time to its pass.

    ``seconds`` holds the totals since the last :meth:`split`. Routes that call one another
    (none do today) would be counted twice.
    """

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PASSES, 0.0)
        self._restore: list[Callable[[], None]] = []

    def __enter__(self) -> PassTimer:
        for name, tables in _TABLES.items():
            for table in tables:
                for route, function in list(table.items()):
                    table[route] = self._timed(name, function)
                    self._restore.append(lambda t=table, r=route, f=function: t.__setitem__(r, f))
        training = functional.aten_training
        functional.aten_training = self._timed("training", training)
        self._restore.append(lambda: setattr(functional, "aten_training", training))
        return self

    def __exit__(self, *exc: object) -> None:
        while self._restore:
            self._restore.pop()()

    def _timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed

    def split(self, call: Callable[[], Any]) -> dict[str, float]:
        """Run ``call`` once: the seconds of each pass, of ``other`` and the ``total``."""
        self.seconds = dict.fromkeys(PASSES, 0.0)
        start = time.perf_counter()
        call()
        total = time.perf_counter() - start
        return {**self.seconds, "other": total - sum(self.seconds.values()), "total": total}


def _native_kernels(case: bench.Case, inputs: Any) -> dict[str, Callable[[], Any]]:
    """ATen's statistics, apply and backward kernels alone, on the case's tensors."""
    x, dy = inputs.x.detach(), inputs.dy
    gamma, beta = inputs.gamma.detach(), inputs.beta.detach()
    mean, variance = inputs.moving_mean, inputs.moving_variance
    kernels: dict[str, Callable[[], Any]] = {
        "apply": lambda: torch.batch_norm(
            x, gamma, beta, mean, variance, False, 0.0, bench.EPSILON, False
        )
    }
    if case.training:
        kernels["stats"] = lambda: torch.ops.aten.batch_norm_update_stats(
            x, mean.clone(), variance.clone(), 1 - bench.MOMENTUM
        )
    if case.mode == "train_fwdbwd":
        invstd = torch.rsqrt(variance + bench.EPSILON)
        kernels["backward"] = lambda: torch.ops.aten.native_batch_norm_backward(
            dy, x, gamma, None, None, mean, invstd, True, bench.EPSILON, [True, True, True]
        )
    return kernels


def measure(
    case: bench.Case, candidates: Sequence[str], rounds: int = 9
) -> dict[str, dict[str, float]]:
    """Median milliseconds of each pass, per candidate (``native`` included), and the copy's.

    The candidates' calls and native's kernels run interleaved, round by round. Each
    candidate's entry has the keys of :data:`PASSES`, ``other`` and ``total``; ``copy`` has
    ``total`` only, the time of one read and one write of ``x``.
    """
    inputs = bench._make_inputs(case, torch.device("cpu"))
    names = ["native", *(name for name in candidates if name != "native")]
    calls = {name: bench._torch_timed(name, case, inputs, False).call for name in names}
    copy = bench._torch_timed("copy", case, inputs, False).call
    kernels = _native_kernels(case, inputs)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    kernel_samples: dict[str, list[float]] = {name: [] for name in kernels}
    copies: list[float] = []
    with PassTimer() as timer:
        for round_index in range(rounds + 1):  # the first round warms up
            for name in names:
                split = timer.split(calls[name])
                if round_index:
                    samples[name].append(split)
            for name, kernel in kernels.items():
                start = time.perf_counter()
                kernel()
                if round_index:
                    kernel_samples[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            copy()
            copies.append(time.perf_counter() - start)

    def median_ms(values: list[float]) -> float:
        return statistics.median(values) * 1e3

    medians = {
        name: {key: median_ms([s[key] for s in splits]) for key in splits[0]}
        for name, splits in samples.items()
    }
    native = medians["native"]
    native.update({name: median_ms(values) for name, values in kernel_samples.items()})
    native["other"] = native["total"] - sum(native[name] for name in kernel_samples)
    medians["copy"] = {"total": median_ms(copies[1:])}
    return medians


def format_breakdown(medians: dict[str, dict[str, float]]) -> dict[str, str]:
    """A line per candidate: ``total = pass + pass ...``, each pass's share of its bound.

    Example:
        >>> medians = {"copy": {"total": 1.0},
        ...            "native": {"stats": 1.0, "apply": 2.0, "other": 0.5, "total": 3.5}}
        >>> print(format_breakdown(medians)["native"])
        native 3.50 ms = stats 1.00 (50% of bound) + apply 2.00 (50%) + other 0.50
    """
    copy_ms = medians["copy"]["total"]  # two passes of x
    lines = {}
    for name, split in medians.items():
        if name == "copy":
            continue
        parts = []
        for key in (*PASSES, "other"):
            if split.get(key, 0.0) == 0.0 and key != "other":
                continue
            part = f"{key} {split[key]:.2f}"
            if key in BOUND_PASSES:
                share = BOUND_PASSES[key] * copy_ms / 2 / split[key]
                part += f" ({share:.0%}{' of bound' if not parts else ''})"
            parts.append(part)
        lines[name] = f"{name} {split['total']:.2f} ms = " + " + ".join(parts)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32x64x56x56")
    parser.add_argument("--layout", default="NCHW", choices=bench.LAYOUTS)
    parser.add_argument("--dtype", default="float32", choices=tuple(bench.DTYPES))
    parser.add_argument("--mode", default="train_fwdbwd", choices=bench.MODES)
    parser.add_argument("--options", default="plain,renorm,virtual,weights,mask")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    shape = tuple(int(size) for size in args.shape.split("x"))
    case = bench.Case(shape, args.layout, args.dtype, args.mode)
    keep_freed_memory()
    medians = measure(case, args.options.split(","), args.rounds)
    print(f"{case.label}, median of {args.rounds} calls:")
    for line in format_breakdown(medians).values():
        print(f"  {line}")


if __name__ == "__main__":
    main()
