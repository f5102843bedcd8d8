"""The stats pass's variance against float64, and native's, at channel offsets up to 1e5 std.

For each layout (NCHW, channels_last, dense), each channel offset in standard deviations, float32
data with unit spread, and data spread by 1e18 and 1e19 (squares beyond float32's range): the
largest relative error over the channels of the variance of
``batchnorm._statistics.stats_pass`` and of ``torch.native_batch_norm``'s (``1 / invstd^2``
with epsilon 0), both against float64 on the same float32 values::

    .venv/bin/python benchmarks/precision.py
"""

from __future__ import annotations

import torch

from batchnorm._plan import plan_for
from batchnorm._statistics import stats_pass

LAYOUTS = {"NCHW": (32, 64, 28, 28), "channels_last": (32, 64, 28, 28), "dense": (4096, 256)}
OFFSETS = (0.0, 1e2, 1e3, 1e4, 1e5)
SPREADS = (1e18, 1e19)  # magnitudes whose squares pass float32's range (offset 0)


def _native_variance(x: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    running = torch.zeros(channels), torch.ones(channels)
    _, _, invstd = torch.native_batch_norm(x, None, None, *running, True, 1.0, 0.0)
    return 1.0 / invstd.double() ** 2


def main() -> None:
    torch.manual_seed(0)
    print("variance: largest relative error over channels against float64 (same float32 data)")
    print(f"{'layout':14s} {'offset/std':>10s} {'batchnorm':>10s} {'native':>10s}  route")
    cases = [(offset, 1.0) for offset in OFFSETS] + [(0.0, spread) for spread in SPREADS]
    for layout, shape in LAYOUTS.items():
        for offset, spread in cases:
            x = ((torch.randn(shape, dtype=torch.float64) + offset) * spread).float()
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            dims = tuple(d for d in range(x.dim()) if d != 1)
            exact = x.double().var(dim=dims, unbiased=False)
            ours = stats_pass(x, (1,)).var.flatten().double()
            native = _native_variance(x)
            ours_error = ((ours - exact).abs() / exact).max().item()
            native_error = ((native - exact).abs() / exact).max().item()
            route = plan_for(x, (1,)).stats
            label = f"{offset:10.0e}" if spread == 1.0 else f"std {spread:.0e}".rjust(10)
            print(f"{layout:14s} {label} {ours_error:10.1e} {native_error:10.1e}  {route}")


if __name__ == "__main__":
    main()
