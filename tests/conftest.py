"""Shared fixtures: a seeded generator, the tolerance table, and the --device/--dtype options."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=150, deadline=None)
settings.register_profile("fuzz", max_examples=2000, deadline=None)  # a long local run
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

# One dtype-indexed table: (rtol, atol) for comparing two implementations of the same math.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


# The fast path's two routes to float moments, by the value of
# ``batchnorm._thresholds.SMALL_INPUT_ELEMENTS`` that forces each: the two-pass sums, and one
# ``torch.var_mean`` (most test inputs are small enough to take it by default).
STATS_ROUTES: dict[str, int] = {"two-pass sums": 0, "var_mean": 1 << 62}

# The training apply's two routes for float NCHW rows, by the value of
# ``batchnorm._thresholds.ATEN_APPLY_ELEMENTS`` that forces each: ATen's inference kernel, and the
# torch ops (which test inputs, being small, take by default).
APPLY_ROUTES: dict[str, int] = {"ATen kernel": 0, "torch ops": 1 << 62}

# A plain training call's two routes, by the value of
# ``batchnorm._thresholds.ATEN_TRAINING_ELEMENTS`` that forces each: ATen's whole training kernel
# (where the layout allows: NCHW rows on the CPU), and the passes (statistics, then apply).
TRAINING_ROUTES: dict[str, int] = {"ATen training kernel": 1 << 62, "passes": 0}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device for tensor tests (cpu, cuda)")
    parser.addoption("--dtype", default="float32", help="float dtype for dtype-generic tests")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse ``--device cuda`` without CUDA up front, rather than skipping the tests it names."""
    chosen = torch.device(config.getoption("--device"))
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {chosen}: CUDA is not available on this machine")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
