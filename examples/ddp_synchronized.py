"""Train a small CNN under DistributedDataParallel with synchronized batch norm, on CPU (gloo).

Every process takes its share of each batch; ``bn.convert_sync_batchnorm`` makes every
batch-norm layer (torch's, converted, and batchnorm's own) normalise with the moments of the
whole batch. DDP's buffer synchronization in the forward is off, so the moving statistics
agree across processes only because the synchronized statistics do: the script checks that
they are bit-identical.
Run from the repository root::

    .venv/bin/python examples/ddp_synchronized.py --processes 2 --steps 5
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import batchnorm as bn

BATCH = 24  # the global batch, split across the processes


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),  # torch's: converted below
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        bn.BatchNormalization(axis=1, renorm=True, input_shape=(8, None, None)),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def train(rank: int, world: int, store: str, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial weights in every process
    model = bn.convert_sync_batchnorm(make_model(), torch_layers=True)
    ddp = DistributedDataParallel(model, forward_sync_buffers=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1)  # the same global batches in every process
    share = [len(part) for part in torch.arange(BATCH).tensor_split(world)]
    start, stop = sum(share[:rank]), sum(share[: rank + 1])
    for step in range(steps):
        x = torch.randn(BATCH, 3, 8, 8, generator=data)
        labels = (x.mean(dim=(1, 2, 3)) > 0).long()
        loss = nn.functional.cross_entropy(ddp(x[start:stop]), labels[start:stop])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step {step}: loss {loss.item():.4f} (process 0's share)")
    for name, buffer in model.named_buffers():
        everyone = [torch.empty_like(buffer) for _ in range(world)]
        dist.all_gather(everyone, buffer.contiguous())
        if not all(torch.equal(other, everyone[0]) for other in everyone):
            raise SystemExit(f"{name} differs between processes")
    if rank == 0:
        print(f"moving statistics bit-identical on all {world} processes", flush=True)
    # DDP's reducer holds the group: free it (and the cycles it sits in) while the group is
    # alive, so that no gloo thread outlives the group's shutdown.
    del ddp, optimizer, model
    gc.collect()
    dist.barrier()  # nobody tears the group down while another still talks to it
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "store")
        torch.multiprocessing.spawn(
            train, args=(args.processes, store, args.steps), nprocs=args.processes, join=True
        )


if __name__ == "__main__":
    main()
