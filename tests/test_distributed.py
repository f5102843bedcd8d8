"""Synchronized statistics across 2 and 3 gloo processes against one process on their batch.

The cases and their oracle are in tests/distributed_cases.py (each spawned process imports it);
here the processes are spawned, and the collectives of one training step counted.
"""

from __future__ import annotations

import json

import pytest
import torch.multiprocessing
from distributed_cases import worker


@pytest.mark.parametrize("world", [2, 3])
def test_synchronized_statistics_equal_one_process_on_the_concatenated_batch(world, tmp_path):
    report = tmp_path / "collectives.json"
    torch.multiprocessing.spawn(
        worker, args=(world, str(tmp_path / "store"), str(report)), nprocs=world, join=True
    )
    collectives = json.loads(report.read_text())
    # One collective forward (the moments), one backward (their gradient), for every option;
    # ghost batches normalise with each process's own groups, so only their pooled moments
    # (for the moving statistics) are gathered, and nothing flows back.
    for name, calls in collectives.items():
        want = ["all_gather_into_tensor"] + ([] if name == "ghost batches" else ["all_reduce"])
        assert calls == want, name
