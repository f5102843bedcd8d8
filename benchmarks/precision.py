"""Precision of a training call against float64, and native's, at channel offsets up to 1e5 std.

For each layout (NCHW, channels_last, dense), each channel offset in standard deviations, float32
data with unit spread, and data spread by 1e18 and 1e19 (squares beyond float32's range), on the
same float32 values, against float64:

- the variance: the largest relative error over the channels of
  ``batchnorm._statistics.stats_pass``'s and of ``torch.native_batch_norm``'s (``1 / invstd^2``
  with epsilon 0);
- the output and the input gradient of a training call (``bn.functional.batch_norm``, its
  default fast path, against ``torch.nn.functional.batch_norm``, epsilon 1e-3 times the
  spread's square, a fixed upstream gradient): the largest absolute error over the largest
  magnitude of the float64 result (``nan`` where the result is not finite)::

    .venv/bin/python benchmarks/precision.py
    .venv/bin/python benchmarks/precision.py --dtype bfloat16   # offsets 0, 10, 100 only

Each figure is given for ours, for native on the same layout and for native's NCHW kernel on
the same values (``x.contiguous()``), which is what the precision target compares against.
"""

from __future__ import annotations

import argparse
import math

import torch

import batchnorm as bn
from batchnorm._plan import plan_for
from batchnorm._statistics import stats_pass

LAYOUTS = {"NCHW": (32, 64, 28, 28), "channels_last": (32, 64, 28, 28), "dense": (4096, 256)}
OFFSETS = (0.0, 1e2, 1e3, 1e4, 1e5)
# 16-bit data is constant per channel from about 1e3 standard deviations on (bfloat16 has 8
# significant bits): the relative errors of a zero variance are undefined there.
SIXTEEN_BIT_OFFSETS = (0.0, 1e1, 1e2)
SPREADS = (1e18, 1e19)  # magnitudes whose squares pass float32's range (offset 0)


def _native_variance(x: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    running = torch.zeros(channels), torch.ones(channels)
    _, _, invstd = torch.native_batch_norm(x, None, None, *running, True, 1.0, 0.0)
    return 1.0 / invstd.double() ** 2


def _step(x: torch.Tensor, dy: torch.Tensor, epsilon: float, ours: bool) -> list[torch.Tensor]:
    """A training call's output and input gradient, by batchnorm or by native."""
    x = x.detach().requires_grad_(True)
    if ours:
        channels = x.shape[1]
        state = torch.zeros(channels, dtype=x.dtype), torch.ones(channels, dtype=x.dtype)
        y = bn.functional.batch_norm(x, *state, training=True, axis=1, epsilon=epsilon).output
    else:
        y = torch.nn.functional.batch_norm(x, None, None, training=True, eps=epsilon)
    y.backward(dy)
    assert x.grad is not None
    return [y.detach(), x.grad]


def _error(got: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest absolute error over the largest magnitude (nan where not finite)."""
    if not torch.isfinite(got).all():
        return float("nan")
    return ((got.double() - exact).abs().max() / exact.abs().max()).item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    print(f"against float64 on the same {args.dtype} data: the variance's largest relative error")
    print("over channels; the output's and the input gradient's largest error over their largest")
    print("value; ours / native on this layout / native's NCHW kernel on the same values (the")
    print("precision target's reference); x: ours over the reference")
    header = ("variance", "output", "input grad")
    print(
        f"{'layout':14s} {'offset/std':>10s} "
        + " ".join(f"{h + ' ours/native/NCHW':>34s}" for h in header)
    )
    offsets = OFFSETS if dtype == torch.float32 else SIXTEEN_BIT_OFFSETS
    spreads = SPREADS if dtype == torch.float32 else ()
    cases = [(offset, 1.0) for offset in offsets] + [(0.0, spread) for spread in spreads]
    for layout, shape in LAYOUTS.items():
        for offset, spread in cases:
            x = ((torch.randn(shape, dtype=torch.float64) + offset) * spread).to(dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            dy = torch.randn(shape).to(dtype)
            dims = tuple(d for d in range(x.dim()) if d != 1)
            exact = x.double().var(dim=dims, unbiased=False)
            nchw = x.contiguous()
            variances = (
                stats_pass(x, (1,)).var.flatten().double(),
                *map(_native_variance, (x, nchw)),
            )
            epsilon = 1e-3 * spread**2
            steps = [
                _step(t, dy.to(t.dtype), epsilon, mine)
                for t, mine in ((x.double(), False), (x, True), (x, False), (nchw, False))
            ]
            errors = [[((v - exact).abs() / exact).max().item() for v in variances]]
            for index in range(2):  # the output, then the input gradient
                errors.append([_error(step[index], steps[0][index]) for step in steps[1:]])
            route = plan_for(x, (1,)).stats
            label = f"{offset:10.0e}" if spread == 1.0 else f"std {spread:.0e}".rjust(10)
            cells = " ".join(
                f"{ours:.1e}/{native:.1e}/{reference:.1e} {_times(ours, reference):>6s}"
                for ours, native, reference in errors
            )
            print(f"{layout:14s} {label} {cells}  {route}")


def _times(ours: float, reference: float) -> str:
    """``ours / reference`` as ``1.3x``; ``-`` where it is undefined (NaN or 0 / 0)."""
    if math.isnan(ours) or math.isnan(reference) or reference == 0.0:
        return "-"
    return f"{ours / reference:.1f}x"


if __name__ == "__main__":
    main()
