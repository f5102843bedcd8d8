"""What each process of a gloo group runs for tests/test_distributed.py (imported by spawn).

Oracle: one process on the concatenated batch, computed in every worker without any
collective (the functional, or a layer, with ``synchronized=False``). Each process's output and
input gradient must be its rows of the oracle's (loss summed over processes), the gamma and
beta gradients summed over processes the oracle's, and the moving statistics the oracle's and
bit-identical on every process.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import batchnorm as bn

CHANNELS = 3


@dataclass
class Case:
    name: str
    sizes: dict[int, list[int]]  # world size -> batch size of each process
    dtype: torch.dtype = torch.float64
    options: dict[str, Any] = field(default_factory=dict)
    call: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None  # per-row tensors
    shape: tuple[int, ...] = (CHANNELS, 4, 5)  # per example
    axis: Any = 1
    layer: bool = False


def _weights(x: torch.Tensor) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {"batch_weights": torch.rand(x.shape[0], generator=generator, dtype=x.dtype)}


def _mask(x: torch.Tensor) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(8)
    return {"mask": torch.rand((x.shape[0], 1, *x.shape[2:]), generator=generator) > 0.3}


def _adjustment(shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    channels = torch.arange(1.0, CHANNELS + 1).view(CHANNELS, 1, 1)
    return 1 + 0.1 * channels, 0.05 * channels


def _spatial_adjustment(shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Varies along the reduced spatial axes too: not per channel (the composite backward)."""
    spatial = torch.linspace(0.9, 1.1, shape[2] * shape[3]).view(1, 1, shape[2], shape[3])
    return spatial.expand(1, CHANNELS, -1, -1), 0.1 * spatial


RENORM_STATE = {
    "renorm": True,
    "renorm_clipping": {"rmax": 1.5, "rmin": 0.7, "dmax": 0.5},
    "moving_stddev": torch.full((CHANNELS,), 1.2, dtype=torch.float64),
    "renorm_mean": torch.full((CHANNELS,), 0.1, dtype=torch.float64),
    "renorm_stddev": torch.full((CHANNELS,), 1.1, dtype=torch.float64),
}
ZERO_DEBIAS_STATE = {
    "zero_debias_moving_mean": True,
    "moving_mean_biased": torch.full((CHANNELS,), 0.2, dtype=torch.float64),
    "local_step": torch.tensor(3.0, dtype=torch.float64),
}
UNEQUAL = {2: [3, 5], 3: [3, 5, 2]}
CASES = [
    Case("plain float64, unequal batches", UNEQUAL),
    Case("plain float32", UNEQUAL, dtype=torch.float32),
    Case("bfloat16 input", {2: [4, 4], 3: [4, 2, 6]}, dtype=torch.bfloat16),
    Case("a process with no rows", {2: [0, 6], 3: [4, 0, 3]}),
    Case("renorm", UNEQUAL, options=RENORM_STATE),
    Case("batch weights", UNEQUAL, call=_weights),
    Case("mask", UNEQUAL, call=_mask),
    Case("adjustment", UNEQUAL, options={"adjustment": _adjustment}),
    Case("zero-debias", UNEQUAL, options=ZERO_DEBIAS_STATE),
    Case("two channel axes", UNEQUAL, shape=(CHANNELS, 2, 5), axis=[1, 2]),
    Case(  # each process's own ghost groups: the oracle's contiguous groups, none straddling
        "ghost batches",
        {2: [4, 8], 3: [4, 8, 4]},
        options={"virtual_batch_size": 4, "virtual_batch_layout": "contiguous"},
    ),
    Case("the layer, deferred updates", UNEQUAL, layer=True),
    Case(
        "an adjustment along the spatial axes", UNEQUAL, options={"adjustment": _spatial_adjustment}
    ),
    Case("reference path", UNEQUAL, options={"fused": False}),
    Case(
        "reference path, a process with no rows",
        {2: [0, 6], 3: [4, 0, 3]},
        options={"fused": False},
    ),
    Case("reference path, mask", UNEQUAL, call=_mask, options={"fused": False}),
]


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {
        torch.float64: {"rtol": 1e-6, "atol": 1e-6},
        torch.float32: {"rtol": 1e-5, "atol": 1e-5},
        torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
    }[dtype]


class CollectiveCounter:
    """Counts the collectives batchnorm makes (torch.distributed's entry points, wrapped)."""

    NAMES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast")

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.saved = {name: getattr(dist, name) for name in self.NAMES}

    def __enter__(self) -> CollectiveCounter:
        for name, function in self.saved.items():
            setattr(dist, name, self._counting(name, function))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, function in self.saved.items():
            setattr(dist, name, function)

    def _counting(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return function(*args, **kwargs)

        return counted


def _inputs(case: Case, total: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((total, *case.shape), generator=generator, dtype=torch.float64) * 2 + 1
    dy = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    x = x.to(case.dtype)
    call = case.call(x) if case.call is not None else {}
    return x, dy, call


def _state(case: Case) -> dict[str, Any]:
    shape = (CHANNELS, case.shape[1]) if isinstance(case.axis, list) else (CHANNELS,)
    return {
        "moving_mean": torch.full(shape, 0.3, dtype=torch.float64),
        "moving_variance": torch.full(shape, 1.7, dtype=torch.float64),
    }


def _run_functional(
    case: Case, x: torch.Tensor, dy: torch.Tensor, call: dict[str, Any], synchronized: bool
) -> dict[str, Any]:
    state = _state(case)
    shape = state["moving_mean"].shape
    gamma = (torch.linspace(0.5, 1.5, shape.numel(), dtype=torch.float64)).reshape(shape)
    beta = (torch.linspace(-0.2, 0.3, shape.numel(), dtype=torch.float64)).reshape(shape)
    gamma.requires_grad_(True)
    beta.requires_grad_(True)
    xi = x.detach().clone().requires_grad_(True)
    extra = {k: v.clone() if torch.is_tensor(v) else v for k, v in case.options.items()}
    result = bn.functional.batch_norm(
        xi,
        state["moving_mean"],
        state["moving_variance"],
        gamma,
        beta,
        training=True,
        axis=case.axis,
        momentum=0.6,
        epsilon=1e-3,
        synchronized=synchronized,
        **extra,
        **call,
    )
    (result.output.double() * dy).sum().backward()
    return {
        "y": result.output.detach(),
        "dx": xi.grad,
        "dgamma": gamma.grad,
        "dbeta": beta.grad,
        "stats": result.new_stats,
    }


def _run_layer(
    case: Case, x: torch.Tensor, dy: torch.Tensor, call: dict[str, Any], synchronized: bool
) -> dict[str, Any]:
    layer = bn.BatchNormalization(
        axis=1,
        momentum=0.6,
        input_shape=case.shape,
        deferred_updates=True,
        synchronized=synchronized,
        dtype=torch.float64,
    )
    with torch.no_grad():  # the same gamma in every process
        layer.gamma.copy_(torch.linspace(0.5, 1.5, CHANNELS, dtype=torch.float64))
    xi = x.detach().clone().requires_grad_(True)
    (layer(xi, training=True) * dy).sum().backward()
    layer.apply_updates()
    return {
        "y": layer(x, training=False).detach(),  # with the updated statistics
        "dx": xi.grad,
        "dgamma": layer.gamma.grad,
        "dbeta": layer.beta.grad,
        "stats": {"moving_mean": layer.moving_mean, "moving_variance": layer.moving_variance},
    }


def check_case(case: Case, rank: int, world: int) -> list[str]:
    """Run ``case`` in this process against the oracle; returns the collectives it made."""
    sizes = case.sizes[world]
    x, dy, call = _inputs(case, sum(sizes))
    run = _run_layer if case.layer else _run_functional
    oracle = run(case, x, dy, call, synchronized=False)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    mine = {k: v[start:stop] if torch.is_tensor(v) and v.dim() else v for k, v in call.items()}
    run(case, x[start:stop], dy[start:stop], mine, synchronized=True)  # agrees on signatures
    with CollectiveCounter() as counter:
        got = run(case, x[start:stop], dy[start:stop], mine, synchronized=True)
    tolerance = _tolerance(case.dtype)
    label = f"{case.name} (process {rank} of {world})"
    # (the layer's y: inference with the updated statistics, on this process's rows)
    torch.testing.assert_close(got["y"], oracle["y"][start:stop], **tolerance, msg=label)
    torch.testing.assert_close(got["dx"], oracle["dx"][start:stop], **tolerance, msg=label)
    for name in ("dgamma", "dbeta"):
        summed = got[name].clone()
        dist.all_reduce(summed)
        torch.testing.assert_close(summed, oracle[name], **tolerance, msg=f"{label}: {name}")
    for name, value in oracle["stats"].items():
        torch.testing.assert_close(got["stats"][name], value, **tolerance, msg=f"{label}: {name}")
        everyone = [torch.empty_like(value) for _ in range(world)]
        dist.all_gather(everyone, got["stats"][name].contiguous())
        assert all(torch.equal(other, everyone[0]) for other in everyone), f"{label}: {name}"
    return counter.calls


def _join(rank: int, world: int, store: str, timeout_s: float) -> None:
    """Join the gloo group; a collective that waits longer than ``timeout_s`` fails."""
    torch.set_num_threads(1)  # several processes on a 2-core machine
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, world),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def worker(rank: int, world: int, store: str, report: str) -> None:
    """One process of the group: every case; process 0 writes the collectives to ``report``."""
    _join(rank, world, store, 120)  # a hung collective fails the test instead
    try:
        counts = {case.name: check_case(case, rank, world) for case in CASES}
        if rank == 0:
            Path(report).write_text(json.dumps(counts))
        dist.barrier()  # nobody tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def disagreeing_worker(rank: int, world: int, store: str, report: str, kind: str) -> None:
    """Process 1 disagrees (``kind``: channels, dtype, or skips the call); every process writes
    what it raised, and how long it took, to ``report``.<rank>."""
    _join(rank, world, store, 3)  # the bound on waiting for a process
    channels = 4 if kind == "channels" and rank == 1 else CHANNELS
    dtype = torch.float64 if kind == "dtype" and rank == 1 else torch.float32
    layer = bn.BatchNormalization(
        axis=1, synchronized=True, name="bn_sync", input_shape=(channels, 5), dtype=dtype
    )
    x = torch.randn(4, channels, 5, dtype=dtype)
    start = time.monotonic()
    outcome = "no error"
    try:
        if not (kind == "skip" and rank == 1):
            layer(x, training=True).sum().backward()
    except bn.SynchronizationError as error:
        outcome = f"{type(error).__name__}: {error}"
    unchanged = bool(torch.equal(layer.moving_mean, torch.zeros(channels, dtype=dtype)))
    result = {"outcome": outcome, "seconds": time.monotonic() - start, "unchanged": unchanged}
    Path(f"{report}.{rank}").write_text(json.dumps(result))
    if kind == "skip":
        time.sleep(4)  # outlive the other's timeout, then leave without a collective
    else:
        dist.destroy_process_group()


def compiling_worker(rank: int, world: int, store: str, report: str) -> None:
    """A synchronized layer under ``torch.compile(fullgraph=True, dynamic=True)`` (a graph
    break would raise) against the same layer eager, over two batch sizes; process 0 writes
    the options that compiled."""
    _join(rank, world, store, 300)
    torch._dynamo.reset()
    results = {}
    for name, call in (("plain", None), ("mask", _mask)):
        eager = bn.BatchNormalization(
            axis=1, synchronized=True, momentum=0.5, input_shape=(3, 4, 5)
        )
        twin = bn.BatchNormalization(axis=1, synchronized=True, momentum=0.5, input_shape=(3, 4, 5))
        compiled = torch.compile(twin, fullgraph=True, dynamic=True)
        for batch in (4, 3):
            x, dy, extra = _inputs(Case(name, {}, dtype=torch.float32, call=call), batch)
            x = x + rank  # the processes' batches differ
            outputs = []
            for layer in (eager, compiled):
                xi = x.clone().requires_grad_(True)
                y = layer(xi, training=True, **extra)
                (y * dy.float()).sum().backward()
                outputs.append((y.detach(), xi.grad))
            for got, want in zip(outputs[1], outputs[0], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
            torch.testing.assert_close(twin.moving_variance, eager.moving_variance, msg=name)
        fresh = bn.BatchNormalization(axis=1, synchronized=True, input_shape=(5, 2, 3))
        x, _, extra = _inputs(Case(name, {}, dtype=torch.float32, call=call, shape=(5, 2, 3)), 4)
        explained = torch._dynamo.explain(fresh)(x, training=True, **extra)  # a new signature
        results[name] = (explained.graph_break_count, explained.graph_count)
    if rank == 0:
        Path(report).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def nonfinite_worker(rank: int, world: int, store: str, report: str) -> None:
    """Process 1's batch holds a NaN: every process skips the update alike (the merged moments
    are the same everywhere), eager and compiled; each writes its counters and statistics."""
    _join(rank, world, store, 120)
    results = {}
    for name, wrap in (("eager", lambda layer: layer), ("compiled", torch.compile)):
        layer = bn.BatchNormalization(axis=1, synchronized=True, input_shape=(CHANNELS, 4))
        call = wrap(layer)
        call(torch.randn(4, CHANNELS, 4) + rank, training=True)  # a finite step first
        before = layer.moving_mean.clone()
        x = torch.randn(4, CHANNELS, 4)
        if rank == 1:
            x[0, 0, 0] = float("nan")
        call(x, training=True)
        everyone = [torch.empty_like(layer.moving_mean) for _ in range(world)]
        dist.all_gather(everyone, layer.moving_mean.contiguous())
        results[name] = {
            "skipped": int(layer.skipped_updates),
            "unchanged": bool(torch.equal(layer.moving_mean, before)),
            "identical": all(torch.equal(other, everyone[0]) for other in everyone),
        }
    Path(f"{report}.{rank}").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()
