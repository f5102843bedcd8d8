"""What a multi-threaded op costs after a stretch of single-threaded work (Python glue).

An op timed in a tight loop and the same op timed inside a training step can differ by 2-4x on
a VM: after a millisecond or more without a parallel region the first one pays extra, whatever
its size, and a fast path made of several ops with Python between them pays it per op, where one
native call does not. This prints the median time of ``addcmul`` on three sizes after gaps of
0, 1 and 5 ms of busy Python, so a profile of a step can be read against it::

    .venv/bin/python benchmarks/idle_penalty.py
    OMP_WAIT_POLICY=active .venv/bin/python benchmarks/idle_penalty.py
"""

from __future__ import annotations

import statistics
import time

import torch

GAPS_S = (0.0, 1e-3, 5e-3)
ROUNDS = 41


def _timed_after_gap(op, gap_s: float) -> float:
    """Median seconds of ``op()`` run right after ``gap_s`` of busy single-threaded Python."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        while time.perf_counter() - start < gap_s:
            pass
        begin = time.perf_counter()
        op()
        samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; addcmul median, us")
    print("size      " + "".join(f"  after {gap * 1e3:g} ms" for gap in GAPS_S))
    for elements in (1 << 16, 1 << 20, 6 << 20):
        x = torch.randn(elements // 256, 256)
        scale, shift, out = torch.rand(1, 256), torch.rand(1, 256), torch.empty_like(x)

        def op(x=x, scale=scale, shift=shift, out=out) -> None:
            torch.addcmul(shift, x, scale, out=out)

        times = [_timed_after_gap(op, gap) * 1e6 for gap in GAPS_S]
        print(f"{elements * 4 / 1e6:5.1f} MB " + "".join(f"{t:14.0f}" for t in times))


if __name__ == "__main__":
    main()
