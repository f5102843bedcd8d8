"""Write tests/golden/checkpoint_v1.pt: layers' state_dicts in state layout version 1, frozen.

Later versions of the library must keep loading what today's wrote (``tests/test_checkpoints.py``
loads this file and checks every tensor and the outputs recorded with it). Run once per state
layout version, from the repository root, and commit the file it writes (a few kilobytes)::

    .venv/bin/python tools/make_checkpoint_fixture.py

Never regenerate the file of a released version: it is the oracle of backward compatibility.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import batchnorm as bn

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "checkpoint_v1.pt"

# Each configuration: constructor options, and the input it trains on then is evaluated with.
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"axis": 1},
    "renorm_zero_debias": {"axis": 1, "renorm": True, "zero_debias_moving_mean": True},
    "ghost": {"axis": 1, "virtual_batch_size": 2},
    "channels_last_axis": {"axis": -1, "center": False},
    "float64": {"axis": 1, "dtype": "float64"},
}


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    entries = {}
    for name, options in CONFIGS.items():
        layer = bn.BatchNormalization(momentum=0.5, input_shape=(3, 4), **options)
        dtype = layer.moving_mean.dtype
        for _ in range(3):
            layer(torch.randn(4, 3, 4, generator=generator, dtype=dtype), training=True)
        probe = torch.randn(4, 3, 4, generator=generator, dtype=dtype)
        entries[name] = {
            "options": options,
            "state_dict": layer.state_dict(),
            "probe": probe,
            "inference": layer(probe, training=False).detach(),
        }
    torch.save({"library_version": bn.__version__, "entries": entries}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
