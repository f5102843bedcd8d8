"""The scripts in examples/ run as their docstrings say (CI runs them on 2 gloo processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_ddp_example_trains_with_bit_identical_statistics_on_two_processes():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "ddp_synchronized.py"), "--processes", "2", "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-1000:]}\nstderr:\n{done.stderr[-2000:]}"
    assert "moving statistics bit-identical on all 2 processes" in done.stdout
