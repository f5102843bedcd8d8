"""Training-step time of synchronized batch norm on 1, 2 and 4 gloo processes (CPU).

A fixed global batch is split across the processes; each process times forward + backward of
one layer on its share, synchronized and not, interleaved round by round; the figure is the
median over rounds of the slowest process (a step waits for it). ``torch.nn.SyncBatchNorm`` is
tried too and reported where it cannot run (it needs CUDA). Run from the repository root::

    .venv/bin/python benchmarks/sync_step_time.py --processes 1,2,4 --shape 32 64 28 28
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

import batchnorm as bn


def _interleaved(steps: dict, rounds: int) -> dict[str, list[float]]:
    """Each step timed once per round, in turn, after a barrier (every process starts it)."""
    for step in steps.values():
        for _ in range(3):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            dist.barrier()
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    return samples


def measure(rank: int, world: int, store: str, shape: list[int], rounds: int, out: str) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    share = shape[0] // world
    x = torch.randn(share, *shape[1:], requires_grad=True)
    dy = torch.randn_like(x)
    steps = {}
    for name, synchronized in (("unsynchronized", False), ("synchronized", True)):
        layer = bn.BatchNormalization(axis=1, synchronized=synchronized, input_shape=shape[1:])

        def step(layer=layer) -> None:
            layer(x, training=True).backward(dy)

        steps[name] = step
    results: dict = _interleaved(steps, rounds)
    try:
        native = torch.nn.SyncBatchNorm(shape[1])
        results["torch.nn.SyncBatchNorm"] = _interleaved(
            {"": lambda: native(x).backward(dy)}, rounds
        )[""]
    except (RuntimeError, ValueError) as error:
        results["torch.nn.SyncBatchNorm"] = str(error).splitlines()[0]
    everyone = [None] * world
    dist.all_gather_object(everyone, results)
    if rank == 0:
        lines = []
        for name in results:
            if isinstance(results[name], str):
                lines.append(f"  {name:24s} cannot run: {results[name]}")
                continue
            slowest = [max(per_rank[name][i] for per_rank in everyone) for i in range(rounds)]
            lines.append(f"  {name:24s} {statistics.median(slowest) * 1e3:8.2f} ms")
        Path(out).write_text("\n".join(lines))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 64, 28, 28])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(
        f"global batch {tuple(args.shape)} float32, training forward + backward, median of "
        f"{args.rounds} rounds, the slowest process's time"
    )
    for world in (int(w) for w in args.processes.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            out = str(Path(folder) / "out")
            torch.multiprocessing.spawn(
                measure,
                args=(world, str(Path(folder) / "store"), args.shape, args.rounds, out),
                nprocs=world,
                join=True,
            )
            print(f"{world} process{'es' if world > 1 else ''}:\n{Path(out).read_text()}")


if __name__ == "__main__":
    main()
