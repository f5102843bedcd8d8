"""A/B of the fast path at a git revision against the working tree, in one process.

Both versions run interleaved round by round with the native kernel, so the ratios are free of
the run-to-run drift of a noisy machine (which separate runs of ``bench`` are not). The fast
path's modules (``SWAPPED``: sums and blocks, axis bookkeeping, per-channel maps and the
moving-statistics update, ATen adapters, statistics, kernels, and ``functional.py`` that calls
them) are loaded as they were at the revision, where they existed; the rest of the package is
the working tree's. Run from the repository root::

    .venv/bin/python benchmarks/ab_kernels.py --rev HEAD~3
    .venv/bin/python benchmarks/ab_kernels.py --rev main --options plain,virtual --rounds 25
    .venv/bin/python benchmarks/ab_kernels.py --rev main --mode infer --rounds 50
    .venv/bin/python benchmarks/ab_kernels.py --rev main --cases "(64,256" --options virtual
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch.nn import functional

import batchnorm.functional as bnf
from batchnorm.cli._allocator import keep_freed_memory

CASES = {
    "NCHW (32,64,56,56)": ((32, 64, 56, 56), torch.contiguous_format),
    "channels_last (32,64,56,56)": ((32, 64, 56, 56), torch.channels_last),
    "channels_last (64,256,14,14)": ((64, 256, 14, 14), torch.channels_last),
    "dense (4096,256)": ((4096, 256), torch.contiguous_format),
    "tiny NCHW (8,16,4,4)": ((8, 16, 4, 4), torch.contiguous_format),  # per-call overhead
}


def _source_at(rev: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True
    ).stdout


def _import_source(name: str, source: str) -> ModuleType:
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


# The fast path's modules, lowest layer first (each may import the ones before it).
SWAPPED = (
    "_thresholds",
    "_reductions",
    "_axes",
    "_moments",
    "_affine",
    "_aten",
    "_plan",
    "_statistics",
    "_kernels",
    "functional",
)


def functional_at(rev: str) -> ModuleType:
    """``batchnorm/functional.py`` as it was at ``rev``, calling the fast path as it was."""
    present = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "src/batchnorm/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    saved = {name: sys.modules.get(f"batchnorm.{name}") for name in SWAPPED}
    loaded: dict[str, ModuleType] = {}
    try:
        for name in SWAPPED:
            if f"src/batchnorm/{name}.py" not in present:
                continue
            source = _source_at(rev, f"src/batchnorm/{name}.py")
            loaded[name] = _import_source(f"{name.strip('_')}_at_rev", source)
            sys.modules[f"batchnorm.{name}"] = loaded[name]  # what the later ones import
        return loaded["functional"]
    finally:
        for name, module in saved.items():
            if module is not None:
                sys.modules[f"batchnorm.{name}"] = module


def training_step(
    functional_module: ModuleType, x: torch.Tensor, dy: torch.Tensor, option: str
) -> Callable[[], None]:
    """One forward+backward of ``batch_norm`` from ``functional_module``."""
    channels = x.shape[1]
    gamma = torch.ones(channels, requires_grad=True)
    beta = torch.zeros(channels, requires_grad=True)
    stats = torch.zeros(channels), torch.ones(channels)
    extra = {
        "plain": {},
        "virtual": {"virtual_batch_size": x.shape[0] // 4},  # 4 groups, as in bench
        "weights": {"batch_weights": torch.rand(x.shape[0])},
        "mask": {"mask": torch.rand((x.shape[0], 1, *x.shape[2:])) > 0.3},
    }[option]

    def step() -> None:
        x.grad = None
        result = functional_module.batch_norm(
            x, *stats, gamma, beta, axis=1, training=True, **extra
        )
        result.output.backward(dy)

    return step


def inference_call(
    functional_module: ModuleType, x: torch.Tensor, dy: torch.Tensor, option: str
) -> Callable[[], None]:
    """One inference call of ``batch_norm`` from ``functional_module``, without autograd."""
    del dy, option  # inference ignores the training options
    channels = x.shape[1]
    gamma, beta = torch.rand(channels) + 0.5, torch.randn(channels)
    stats = torch.randn(channels), torch.rand(channels) + 0.5

    def call() -> None:
        with torch.no_grad():
            functional_module.batch_norm(x, *stats, gamma, beta, axis=1, training=False)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="git revision of the 'before' kernels")
    parser.add_argument(
        "--options", default="plain,virtual,weights", help="of plain, virtual, weights, mask"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--cases", default="", help="only the cases whose name contains this text (default: all)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--mode", default="train", choices=["train", "infer"], help="forward+backward, or inference"
    )
    parser.add_argument(
        "--system-allocator", action="store_true", help="as in bench: no keep_freed_memory()"
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print("system allocator" if args.system_allocator else keep_freed_memory())
    before = functional_at(args.rev)
    training = args.mode == "train"
    for name, (shape, memory_format) in CASES.items():
        if args.cases not in name:
            continue
        x = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format).requires_grad_()
        dy = torch.randn_like(x)
        stats = torch.zeros(shape[1]), torch.ones(shape[1])

        # gamma and beta as the candidates have them (learnable in training)
        gamma = torch.ones(shape[1], requires_grad=training)
        beta = torch.zeros(shape[1], requires_grad=training)

        def native(
            x: torch.Tensor = x,
            dy: torch.Tensor = dy,
            stats: tuple = stats,
            affine: tuple = (gamma, beta),
        ) -> None:
            if not training:
                with torch.no_grad():
                    functional.batch_norm(x, *stats, *affine, False, 0.1, 1e-3)
                return
            x.grad = None
            functional.batch_norm(x, *stats, *affine, True, 0.1, 1e-3).backward(dy)

        steps = {"native": native}
        make_step = training_step if args.mode == "train" else inference_call
        options = args.options.split(",") if args.mode == "train" else ["plain"]
        for option in options:
            steps[f"{args.rev} {option}"] = make_step(before, x, dy, option)
            steps[f"working tree {option}"] = make_step(bnf, x, dy, option)
        times: dict[str, list[float]] = {label: [] for label in steps}
        for _ in range(args.rounds):
            for label, step in steps.items():
                start = time.perf_counter()
                step()
                times[label].append(time.perf_counter() - start)
        base = statistics.median(times["native"])
        what = "training forward+backward" if args.mode == "train" else "inference"
        print(f"{name}, {what}, {args.dtype}, {args.rounds} rounds", flush=True)
        for label, samples in times.items():
            median = statistics.median(samples)
            print(f"  {label:28s} {median * 1e3:8.2f} ms  {median / base:5.2f}x native")


if __name__ == "__main__":
    main()
