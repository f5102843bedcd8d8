"""Cold compile time of a training step: ``torch.compile(layer)`` against ``torch.compile(native)``.

Each candidate compiles in a process of its own, with an empty inductor cache directory and the
FX graph cache off, so that every C++ kernel is built as on a user's first run (``bench
--compile`` runs every candidate in one process, where kernels already built for another
candidate are found again: its ``compile s`` column is the warm figure). A candidate's compile
time is its first training step (forward and backward) less its fastest later step::

    .venv/bin/python benchmarks/compile_time.py                  # every option, NCHW
    .venv/bin/python benchmarks/compile_time.py --channels-last --options plain,mask

About 20 s per candidate on a 2-core VM, nearly all of it the C++ compiler's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

OPTIONS = ("plain", "renorm", "virtual", "weights", "mask", "adjustment", "zero_debias")
SHAPE = (32, 64, 56, 56)


def _adjustment(shape: object) -> tuple[object, object]:
    import torch

    return torch.full((SHAPE[1], 1, 1), 1.5), torch.full((SHAPE[1], 1, 1), 0.25)


def _measure(candidate: str, channels_last: bool) -> dict[str, float]:
    """Run in the child process: compile one candidate's training step and time it."""
    import torch

    import batchnorm as bn

    x = torch.randn(SHAPE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    call: dict[str, object] = {}
    if candidate == "native":
        layer: torch.nn.Module = torch.nn.BatchNorm2d(SHAPE[1])
    else:
        options = {
            "renorm": {"renorm": True},
            "virtual": {"virtual_batch_size": 8},
            "adjustment": {"adjustment": _adjustment},
            "zero_debias": {"zero_debias_moving_mean": True},
        }.get(candidate, {})
        layer = bn.BatchNormalization(axis=1, input_shape=SHAPE[1:], **options)
        call = {"training": True}
        if candidate == "weights":
            call["batch_weights"] = torch.rand(SHAPE[0]) + 0.1
        if candidate == "mask":
            call["mask"] = torch.rand(SHAPE[0], 1, *SHAPE[2:]) > 0.3
    compiled = torch.compile(layer)
    durations = []
    for _ in range(4):
        start = time.perf_counter()
        compiled(x, **call).sum().backward()
        durations.append(time.perf_counter() - start)
    return {"compile_s": durations[0] - min(durations[1:])}


def _in_fresh_process(candidate: str, channels_last: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_FX_GRAPH_CACHE="0")
        argv = [sys.executable, __file__, "--child", candidate]
        argv += ["--channels-last"] if channels_last else []
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, args.channels_last)))
        return
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"cold compile of a training step, {SHAPE} float32 {layout}, a process each")
    print(f"{'candidate':<12} {'compile s':>9} {'x native':>8}")
    native = None
    for candidate in ("native", *args.options.split(",")):
        print(f"[{candidate}]", file=sys.stderr, flush=True)
        row = _in_fresh_process(candidate, args.channels_last)
        native = native or row["compile_s"]
        ratio = row["compile_s"] / native
        print(f"{candidate:<12} {row['compile_s']:9.2f} {ratio:8.2f}", flush=True)


if __name__ == "__main__":
    main()
