"""TensorFlow's decisions that change numbers, reproduced so that defaults match tf_keras.

TensorFlow's fused kernel stores a Bessel-corrected moving variance, its other paths the biased
one (tf-semantics.md, sections 3 and 4), so reproducing ``moving_variance`` needs TensorFlow's
decision of whether it would have run the fused kernel for the same arguments.
"""

from __future__ import annotations

import torch

__all__ = ["tensorflow_can_fuse", "tensorflow_runs_fused_kernel"]

_FUSABLE_RAW_AXES = (-4, -3, -1, 1, 3, 4)
_FUSED_DATA_FORMAT_AXES = {4: (1, 3), 5: (1, 4)}
_FUSABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def tensorflow_can_fuse(
    raw_axis: int | tuple[int, ...],
    variable_dtype: torch.dtype,
    *,
    renorm: bool = False,
    virtual_batch_size: int | None = None,
    adjustment: object | None = None,
    synchronized: bool = False,
) -> bool:
    """Whether tf_keras' fused kernel is possible before the input rank is known.

    tf_keras' ``_fused_can_be_used``: one axis among ``{-4, -3, -1, 1, 3, 4}`` as written, no
    renorm, virtual batches, adjustment or synchronization, and a float16/bfloat16/float32
    compute dtype (16-bit layers keep float32 variables, so ``variable_dtype`` float64 is the
    only disqualifying case). Its V2 class turns ``fused=None`` into False at construction
    when this is False.

    Example:
        >>> tensorflow_can_fuse(1, torch.float32), tensorflow_can_fuse(2, torch.float32)
        (True, False)

    """
    if renorm or virtual_batch_size is not None or adjustment is not None or synchronized:
        return False
    axes = (raw_axis,) if isinstance(raw_axis, int) else tuple(raw_axis)
    return len(axes) == 1 and axes[0] in _FUSABLE_RAW_AXES and variable_dtype in _FUSABLE_DTYPES


def tensorflow_runs_fused_kernel(
    raw_axis: int | tuple[int, ...],
    rank: int,
    fused: bool | None,
    variable_dtype: torch.dtype,
    *,
    renorm: bool = False,
    virtual_batch_size: int | None = None,
    adjustment: object | None = None,
    synchronized: bool = False,
    weighted: bool = False,
) -> bool:
    """Whether tf_keras' ``BatchNormalization`` would run ``FusedBatchNormV3`` in training.

    Rules (tf_keras 2.21, V2 class): fusion must be possible (:func:`tensorflow_can_fuse`),
    then the input must have rank 4 with the axis landing on 1 or 3, or rank 5 with 1 or 4;
    other rank-5 axes fall back silently. ``fused=False`` never fuses. ``weighted`` (batch
    weights or a mask) means TensorFlow's non-fused code (tf-slim's legacy path; tf_keras'
    masked moments). Where TensorFlow would raise instead (``fused=True`` with renorm, say)
    we report False: that configuration has no TensorFlow numbers to match. This is also what
    tf_keras' ``layer.fused`` holds after build, and the V1 class's rule (which turns
    ``fused=None`` into True at construction, then fuses at build where possible).

    Example:
        >>> tensorflow_runs_fused_kernel(-1, 4, None, torch.float32)
        True
        >>> tensorflow_runs_fused_kernel(-1, 2, None, torch.float32)
        False

    """
    if fused is False or weighted:
        return False
    possible = tensorflow_can_fuse(
        raw_axis,
        variable_dtype,
        renorm=renorm,
        virtual_batch_size=virtual_batch_size,
        adjustment=adjustment,
        synchronized=synchronized,
    )
    if not possible or rank not in _FUSED_DATA_FORMAT_AXES:
        return False
    axis = raw_axis if isinstance(raw_axis, int) else raw_axis[0]
    return axis % rank in _FUSED_DATA_FORMAT_AXES[rank]
