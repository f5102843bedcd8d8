"""Synchronized statistics across 2 and 3 gloo processes against one process on their batch.

The cases and their oracle are in tests/distributed_cases.py (each spawned process imports it);
here the processes are spawned, and the collectives of one training step counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.multiprocessing
from distributed_cases import compiling_worker, disagreeing_worker, nonfinite_worker, worker


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
        want = ["all_gather_single"] + ([] if name == "ghost batches" else ["all_reduce"])
        assert calls == want, name


@pytest.mark.parametrize("kind", ["channels", "dtype", "skip"])
def test_a_disagreeing_process_gets_an_error_naming_the_layer_in_bounded_time(kind, tmp_path):
    """Another channel count or dtype: both processes refuse at once; a process that skips the
    call: the waiting one fails when the group's timeout (3 s here) runs out. Never a hang,
    and the moving statistics stay as they were."""
    report = tmp_path / "outcome"
    torch.multiprocessing.spawn(
        disagreeing_worker,
        args=(2, str(tmp_path / "store"), str(report), kind),
        nprocs=2,
        join=True,
    )
    waiting = [0] if kind == "skip" else [0, 1]
    for rank in waiting:
        result = json.loads(Path(f"{report}.{rank}").read_text())
        assert result["outcome"].startswith("SynchronizationError: layer 'bn_sync'"), result
        assert result["unchanged"], result
        assert result["seconds"] < 30, result
    if kind == "dtype":
        assert "process 1: 3 channels, torch.float64" in result["outcome"]
    if kind == "channels":
        assert "process 0: 3 channels" in result["outcome"]
        assert "process 1: 4 channels" in result["outcome"]


def test_synchronized_calls_compile_without_graph_breaks(tmp_path):
    """fullgraph=True with dynamic shapes, the collectives traced, equal to eager on 2 processes."""
    report = tmp_path / "breaks.json"
    torch.multiprocessing.spawn(
        compiling_worker, args=(2, str(tmp_path / "store"), str(report)), nprocs=2, join=True
    )
    # torch._dynamo.explain on a fresh layer and signature: no break, one graph.
    assert json.loads(report.read_text()) == {"plain": [0, 1], "mask": [0, 1]}


def test_every_process_skips_a_batch_that_is_non_finite_on_one(tmp_path):
    """nonfinite="skip" under synchronization: the same decision on every process."""
    report = tmp_path / "skips"
    torch.multiprocessing.spawn(
        nonfinite_worker, args=(2, str(tmp_path / "store"), str(report)), nprocs=2, join=True
    )
    for rank in (0, 1):
        result = json.loads(Path(f"{report}.{rank}").read_text())
        for mode in ("eager", "compiled"):
            assert result[mode] == {"skipped": 1, "unchanged": True, "identical": True}, result
