"""The isolated costs behind the benchmark's misses: each pass of ours against ATen's, interleaved.

``python -m batchnorm bench`` times whole calls. This times the pieces they are made of, each
alone in a tight loop and interleaved round by round with its counterpart, so a miss in the
bench can be read as "which pass, how many bytes" (figures in README's performance notes and in
the closing notes of the performance issue come from here)::

    .venv/bin/python benchmarks/pass_costs.py                  # every section
    .venv/bin/python benchmarks/pass_costs.py --sections stats,overhead

Sections:

- ``stats``: the float32 statistics of channels_last and dense inputs. ATen's kernel (single-
  precision running sums) against ours (an exact channel sum, then the variance of ``x - mean``
  a cache-sized block at a time), with its two parts and a copy of the input for scale.
- ``bf16``: bfloat16 NCHW: ATen's training forward against the two ATen calls our fast path
  makes (statistics, then the apply).
- ``weighted``: float32 (32, 64, 56, 56) NCHW with per-example weights or a mask: our
  statistics and backward apply, which carry the weights, against the unweighted ones (ATen's
  backward does both of its passes in one call; weights need its sums, then ours).
- ``ghost``: the backward sums of TensorFlow's strided ghost batches (4 groups) of a
  channels_last (64, 256, 14, 14) input, which has no block view: blocked torch ops, ATen's
  kernel an example at a time, or a ghost group at a time of a regrouped copy; against ATen's
  sums of the same input without groups. Then the bfloat16 forward passes with a regrouped
  copy against upcast blocks: the statistics regroup, the apply does not.
- ``apply``: the training apply on float32 inputs whose channels are innermost: ATen's
  inference kernel given unit statistics against one ``addcmul``.
- ``overhead``: the fixed cost of a call: a tiny (8, 16, 4, 4) input, whose kernels cost next to
  nothing, through the layer and through ``F.batch_norm``.

Times are medians in microseconds; the VM is noisy, so compare within a row, not across runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from math import prod

import torch
from torch.nn import functional

import batchnorm as bn
from batchnorm import _aten, _thresholds
from batchnorm._kernels import (
    FOLDED_APPLY_ROUTES,
    REDUCE_ROUTES,
    BackwardInputs,
    _input_gradient,
)
from batchnorm._reductions import blocked_channel_sum, channel_sum
from batchnorm._statistics import STATS_ROUTES, _centered_square, stats_pass
from batchnorm.cli._allocator import keep_freed_memory

Candidates = dict[str, Callable[[], object]]


def interleaved(candidates: Candidates, rounds: int) -> dict[str, float]:
    """Median microseconds of each candidate, run in turn every round after one warm-up call."""
    for run in candidates.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) * 1e6 for name, times in samples.items()}


def report(title: str, medians: dict[str, float]) -> None:
    print(f"  {title:34s}" + "".join(f"  {name} {us:8.0f}" for name, us in medians.items()))


def _input(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def stats_section(rounds: int) -> None:
    print("float32 statistics, us: ATen's kernel | ours (= channel sum + variance pass) | a copy")
    for shape, channels_last in [
        ((32, 64, 56, 56), True),
        ((64, 256, 14, 14), True),
        ((4096, 256), False),
    ]:
        x = _input(shape, torch.float32, channels_last)
        channels = shape[1]
        mean = stats_pass(x, (1,)).mean
        unused = torch.zeros(channels)
        medians = interleaved(
            {
                "aten": lambda x=x, unused=unused: torch.ops.aten.batch_norm_update_stats(
                    x, unused, unused.clone(), 0.0
                ),
                "ours": lambda x=x: stats_pass(x, (1,)),
                "sum": lambda x=x: channel_sum(x, (1,)),
                "variance": lambda x=x, mean=mean: blocked_channel_sum(
                    _centered_square, (1,), x, mean
                ),
                "copy": lambda x=x: torch.empty_like(x).copy_(x),
            },
            rounds,
        )
        report(f"{shape} {'channels_last' if channels_last else 'dense'}", medians)


def bf16_section(rounds: int) -> None:
    print("bfloat16 NCHW forward, us: ATen's training forward | its statistics | its apply")
    for shape in [(32, 64, 56, 56), (64, 256, 14, 14), (8, 32, 112, 112)]:
        x = _input(shape, torch.bfloat16, channels_last=False)
        channels = shape[1]
        ones, zeros = torch.ones(channels), torch.zeros(channels)
        medians = interleaved(
            {
                "train fwd": lambda x=x, ones=ones, zeros=zeros: torch.native_batch_norm(
                    x, ones, zeros, zeros.clone(), ones.clone(), True, 0.1, 1e-5
                ),
                "stats": lambda x=x, ones=ones, zeros=zeros: torch.ops.aten.batch_norm_update_stats(
                    x, zeros, ones.clone(), 0.0
                ),
                "apply": lambda x=x, ones=ones, zeros=zeros: torch.native_batch_norm(
                    x, ones, zeros, zeros, ones, False, 0.0, 0.0
                ),
            },
            rounds,
        )
        report(str(shape), medians)


def weighted_section(rounds: int) -> None:
    print("float32 (32, 64, 56, 56) NCHW with weights, us: statistics | backward")
    x = _input((32, 64, 56, 56), torch.float32, channels_last=False)
    dy = torch.randn_like(x)
    generator = torch.Generator().manual_seed(1)
    weights = {
        "none": None,
        "per example": torch.rand(32, 1, 1, 1, generator=generator),
        "mask": (torch.rand(32, 1, 56, 56, generator=generator) > 0.3).float(),
    }
    moments = stats_pass(x, (1,))
    invstd = torch.rsqrt(moments.var + 1e-3)
    scale = torch.ones(1, 64, 1, 1)
    report(
        "statistics",
        interleaved(
            {name: lambda w=w: stats_pass(x, (1,), w) for name, w in weights.items()}, rounds
        ),
    )

    def aten_backward(output_mask: list[bool]) -> object:
        return torch.ops.aten.native_batch_norm_backward(
            dy,
            x,
            scale.view(-1),
            None,
            None,
            moments.mean.view(-1),
            invstd.view(-1),
            True,
            0.0,
            output_mask,
        )

    _, sum_dy_x_hat, sum_dy = aten_backward([False, True, True])
    backward = {
        "aten, all": lambda: aten_backward([True, True, True]),
        "aten sums": lambda: aten_backward([False, True, True]),
    }
    for name in ("per example", "mask"):
        backward[f"our apply, {name}"] = lambda w=weights[name]: _input_gradient(
            x,
            dy,
            w,
            moments.mean,
            invstd,
            scale,
            sum_dy.view(scale.shape),
            sum_dy_x_hat.view(scale.shape),
            (1,),
            True,
        )
    report("backward", interleaved(backward, rounds))


def ghost_section(rounds: int) -> None:
    print("ghost batches, channels_last (64, 256, 14, 14), backward sums, us")
    for dtype in (torch.float32, torch.bfloat16):
        report(str(dtype).removeprefix("torch."), _ghost_sums(dtype, rounds))
    print("the same, bfloat16 forward passes, us: a regrouped copy's slices | upcast blocks")
    x = _input((64, 256, 14, 14), torch.bfloat16, channels_last=True).view(16, 4, 256, 14, 14)
    axes, reduce_dims = (1, 2), [0, 3, 4]
    scale, shift = torch.rand(1, 4, 256, 1, 1), torch.randn(1, 4, 256, 1, 1)
    statistics_routes = {
        "regrouped": lambda: STATS_ROUTES["aten_slices"](x, axes, None, reduce_dims, torch.float32),
        "upcast": lambda: STATS_ROUTES["upcast_blocks"](x, axes, None, reduce_dims, torch.float32),
    }
    report("statistics", interleaved(statistics_routes, rounds))
    regrouped_apply = _aten.aten_slices(x, axes, regroup=True)
    assert regrouped_apply is not None

    def apply_regrouped() -> torch.Tensor:  # what the apply would do with the regrouped slices
        laid_out = regrouped_apply.laid_out(x)
        y = torch.empty_like(laid_out)
        x_slices, y_slices = regrouped_apply.present(laid_out), regrouped_apply.present(y)
        scales, shifts = regrouped_apply.per_slice(scale), regrouped_apply.per_slice(shift)
        zeros, ones = torch.zeros(256), torch.ones(256)
        for i in range(regrouped_apply.count):
            torch.ops.aten.native_batch_norm.out(
                x_slices[i],
                scales[i],
                shifts[i],
                zeros,
                ones,
                False,
                0.0,
                0.0,
                out=y_slices[i],
                save_mean=zeros.new_empty(0),
                save_invstd=zeros.new_empty(0),
            )
        return torch.empty_like(x).copy_(y)

    upcast = FOLDED_APPLY_ROUTES["upcast"]
    apply_routes = {"regrouped": apply_regrouped, "upcast": lambda: upcast(x, axes, scale, shift)}
    report("apply", interleaved(apply_routes, rounds))


def _ghost_sums(dtype: torch.dtype, rounds: int) -> dict[str, float]:
    x = _input((64, 256, 14, 14), dtype, channels_last=True)
    dy = torch.randn_like(x)
    grouped, grouped_dy = x.view(16, 4, 256, 14, 14), dy.view(16, 4, 256, 14, 14)
    axes = (1, 2)
    mean, invstd = torch.zeros(1, 4, 256, 1, 1), torch.ones(1, 4, 256, 1, 1)
    zeros, ones = torch.zeros(256), torch.ones(256)
    inputs = BackwardInputs(
        grouped, grouped_dy, None, mean, invstd, ones, ones.shape, axes, (False, True, True), True
    )

    def sliced(slice_elements: int) -> object:
        saved = _thresholds.SLICE_ELEMENTS
        _thresholds.SLICE_ELEMENTS = slice_elements
        try:
            return REDUCE_ROUTES["aten_slices"](inputs)
        finally:
            _thresholds.SLICE_ELEMENTS = saved

    candidates: Candidates = {
        "aten, no groups": lambda: torch.ops.aten.native_batch_norm_backward(
            dy, x, None, None, None, zeros, ones, True, 0.0, [False, True, True]
        ),
        "blocked": lambda: REDUCE_ROUTES["blocked"](inputs),
        "per example": lambda: sliced(1),
    }
    if dtype != torch.float32:  # examples are too small to slice: 16-bit inputs regroup
        candidates["regrouped"] = lambda: sliced(_thresholds.SLICE_ELEMENTS)
    return interleaved(candidates, rounds)


def apply_section(rounds: int) -> None:
    print("float32 apply, channels innermost, us: ATen's inference kernel | one addcmul")
    for shape, channels_last in [
        ((4096, 256), False),
        ((1024, 1024), False),
        ((64, 256, 14, 14), True),
        ((32, 64, 56, 56), True),
    ]:
        x = _input(shape, torch.float32, channels_last)
        channels = shape[1]
        scale, shift = torch.rand(channels), torch.randn(channels)
        zeros, ones = torch.zeros(channels), torch.ones(channels)
        keep = (1, channels) + (1,) * (x.dim() - 2)
        kept_scale, kept_shift = scale.view(keep), shift.view(keep)
        medians = interleaved(
            {
                "aten": lambda x=x, s=scale, b=shift, z=zeros, o=ones: torch.native_batch_norm(
                    x, s, b, z, o, False, 0.0, 0.0
                ),
                "addcmul": lambda x=x, s=kept_scale, b=kept_shift: torch.addcmul(b, x, s),
            },
            rounds,
        )
        report(f"{shape} {'channels_last' if channels_last else 'dense'}", medians)


def overhead_section(rounds: int) -> None:
    print("fixed cost of a call, (8, 16, 4, 4) float32, us")
    x = _input((8, 16, 4, 4), torch.float32, channels_last=False)
    dy = torch.randn_like(x)
    layer = bn.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-5)
    weight, bias = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    running = torch.zeros(16), torch.ones(16)

    def ours_step() -> None:
        layer(x.detach().requires_grad_(), training=True).backward(dy)

    def native_step() -> None:
        xi = x.detach().requires_grad_()
        functional.batch_norm(xi, *running, weight, bias, True, 0.1, 1e-5).backward(dy)

    def ours_forward() -> None:
        with torch.no_grad():
            layer(x, training=True)

    def native_forward() -> None:
        with torch.no_grad():
            functional.batch_norm(x, *running, weight, bias, True, 0.1, 1e-5)

    report(
        "training forward + backward",
        interleaved({"ours": ours_step, "native": native_step}, rounds * 10),
    )
    report(
        "training forward",
        interleaved({"ours": ours_forward, "native": native_forward}, rounds * 10),
    )


def _plain_step(x: torch.Tensor, dy: torch.Tensor, limit: int) -> Callable[[], None]:
    """A plain training step of the functional with ``ATEN_TRAINING_ELEMENTS = limit``."""
    channels = x.shape[1]
    gamma = torch.ones(channels, requires_grad=True)
    beta = torch.zeros(channels, requires_grad=True)
    running = torch.zeros(channels), torch.ones(channels)

    def step() -> None:
        saved = _thresholds.ATEN_TRAINING_ELEMENTS
        _thresholds.ATEN_TRAINING_ELEMENTS = limit
        try:
            xi = x.detach().requires_grad_()
            result = bn.functional.batch_norm(xi, *running, gamma, beta, training=True, axis=1)
            result.output.backward(dy)
        finally:
            _thresholds.ATEN_TRAINING_ELEMENTS = saved

    return step


def training_section(rounds: int) -> None:
    """Where ATen's whole training kernel stops beating the passes (ATEN_TRAINING_ELEMENTS)."""
    print("plain float32 NCHW training step (forward + backward) by size, us: aten | passes")
    shapes = [(8, 16, 4, 4), (16, 32, 8, 8), (32, 64, 8, 8), (32, 64, 16, 16), (32, 64, 32, 32)]
    for shape in shapes:
        x = _input(shape, torch.float32, channels_last=False)
        dy = torch.randn_like(x)
        candidates = {"aten": _plain_step(x, dy, 1 << 62), "passes": _plain_step(x, dy, 0)}
        report(f"{shape} ({prod(shape)} elements)", interleaved(candidates, rounds))


SECTIONS = {
    "training": training_section,
    "stats": stats_section,
    "bf16": bf16_section,
    "weighted": weighted_section,
    "ghost": ghost_section,
    "apply": apply_section,
    "overhead": overhead_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {keep_freed_memory()}")
    for name in args.sections.split(","):
        SECTIONS[name](args.rounds)


if __name__ == "__main__":
    main()
