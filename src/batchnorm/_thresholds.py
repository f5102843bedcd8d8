"""Every threshold that picks a fast-path route, in one table, with the measurement behind it.

The fast path's modules read these at call time (``_thresholds.NAME``), so a test forces a
route by patching this module, and ``benchmarks/pass_costs.py`` re-measures the costs that set
them. Measured on the project's 2-core VM (torch 2.13, CPU); ``here`` below means there.
"""

from __future__ import annotations

__all__ = [
    "ATEN_APPLY_ELEMENTS",
    "ATEN_TRAINING_ELEMENTS",
    "BLOCK_ELEMENTS",
    "COMPILED_CLOSED_FORM_ELEMENTS",
    "FOLD_LIMIT",
    "OFFSET_LIMIT_SCALE",
    "ROW_FOLD_LIMIT",
    "ROW_FOLD_ROWS",
    "SLICE_ELEMENTS",
    "SMALL_INPUT_ELEMENTS",
]

# Statistics (:mod:`batchnorm._statistics`): the largest float input whose moments come from
# one ``torch.var_mean`` (Welford, accumulated in float64, one thread: about 3.6 ns an element
# here). Below it, that one op beats the dozen that the two-pass sums take (80-140 us whatever
# the size); above it, the sums win.
SMALL_INPUT_ELEMENTS = 1 << 14

# Whole training call (:mod:`batchnorm._plan`, plain options, NCHW rows on the CPU): the largest
# input whose training call is ATen's own training kernel (statistics, apply and backward in one
# call each), where a call's fixed cost outweighs the passes it saves. A float32 step here
# (``benchmarks/pass_costs.py --sections training``, 60 rounds): 165 us against the passes' 294
# at 2^11 elements, 392 against 524 at 2^17, equal (1262, 1236) at 2^19, 4862 against 4120 at
# 2^21.
ATEN_TRAINING_ELEMENTS = 1 << 18

# Training apply (:mod:`batchnorm._kernels`): the fewest elements of a float32 or float64 input
# for which the apply takes ATen's inference kernel where it is the faster one. Below, the
# call's fixed cost (about 30 us here) exceeds the two torch ops it replaces (float32 NCHW
# (8, 16, 16, 16): 24 us against 43; equal near 2^18). 16-bit inputs take it at any size:
# their torch ops upcast. Inference, which calls the kernel once with the moving statistics,
# takes it at any size too.
ATEN_APPLY_ELEMENTS = 1 << 17

# ATen slice by slice (:mod:`batchnorm._aten`): the fewest elements per slice for which ATen's
# kernels run slice by slice (inputs without a block view: ghost batches of channels_last
# inputs); below it, a call per slice costs more than the blocked torch ops it replaces.
SLICE_ELEMENTS = 1 << 16

# Compiled plain training calls (:func:`batchnorm.functional._compiled_route`): the fewest
# elements from which a plain call being compiled takes the closed form (one read of ``x`` for
# shifted sums, one reduction back) instead of ATen's batch-norm op, which inductor lowers as it
# lowers ``nn.BatchNorm2d``. ``bench --compile`` float32, forward and backward, x compiled
# native, 9 rounds, two runs: the closed form 0.85-0.92 on NCHW, 0.62-0.94 on channels_last and
# 0.88-0.98 on dense matrices over the default shapes (1M to 6.4M elements), where ATen's op
# took 0.98-1.03; at (8, 16, 4, 4) and (32, 64, 8, 8) (2K and 131K) it took 1.05-1.30 against
# ATen's op's 0.99-1.09. Exported calls always take ATen's op (one standard node).
COMPILED_CLOSED_FORM_ELEMENTS = 1 << 19

# Folded rows (:mod:`batchnorm._aten`, the statistics of 16-bit inputs whose channels are
# innermost: channels_last, matrices): ATen's kernel for them sums each thread's share of rows
# one after another, so its rounding grows with the rows (bfloat16 (32, 64, 56, 56)
# channels_last: 4e-5 to 3e-4 of the variance, 3-6x native's NCHW kernel on the same data).
# From ``ROW_FOLD_ROWS`` rows, it takes ``k`` rows side by side as ``k`` times the channels, ``k``
# the largest divisor of the rows up to ``ROW_FOLD_LIMIT``: one call still, 1e-7 to 1e-6 of the
# variance at k = 64, at the same cost within the VM's noise (0.92-1.77 ms against 0.76-1.70
# over the default 4-d shapes, ``benchmarks/pass_costs.py --sections bf16``).
ROW_FOLD_ROWS = 1 << 13
ROW_FOLD_LIMIT = 64

# Blocked sums (:mod:`batchnorm._reductions`): elements per block, 4 MB of float32. Blocks stay
# in the last-level cache; smaller ones pay torch's per-op cost (tens of microseconds here)
# more often.
BLOCK_ELEMENTS = 1 << 20

# The folded apply (:mod:`batchnorm._kernels`): the largest ``|mean| * invstd`` for which a
# float32 or float64 apply folds the mean into the shift (``x * a + (b - mean * a)``, one
# pass); beyond it, the centred form keeps the rounding error at a few units (see
# ``_kernels._apply``).
FOLD_LIMIT = 8.0

# The two-pass statistics (:mod:`batchnorm._statistics`): the largest ``|mean| / sigma`` of a
# channel, in units of ``1 / sqrt(machine epsilon)`` of the dtype (724 for float32), for which
# the variance skips Chan, Golub and LeVeque's correction. The first pass's mean is about 3
# roundoff units of ``|mean|`` off (measured on (16, 4, 24, 24) float32, ``tests/test_kernels.py``),
# which adds ``(3 u |mean| / sigma)^2`` to the variance's relative error: one unit of roundoff at
# this limit. The correction costs 7% (NCHW) to 19% (channels innermost) of a training step
# (``benchmarks/ab_kernels.py``).
OFFSET_LIMIT_SCALE = 0.25
