"""Which of its three implementations tf-slim's ``batch_norm`` runs, and what that stores.

The choice changes the numbers: only TensorFlow's fused kernel stores a Bessel-corrected moving
variance (tf-semantics.md 3 and 9.2), so :func:`batchnorm.compat.v1.batch_norm` must know the
path tf-slim would take to store the same moving variance.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from batchnorm._tf_rules import tensorflow_runs_fused_kernel

__all__ = ["SlimPath", "slim_path"]

PathName = Literal["fused", "core_layer", "legacy"]


class SlimPath(NamedTuple):
    """tf-slim's implementation for one call, and the moving-variance rule it implies.

    Attributes:
        name: ``"fused"`` (path A, ``_fused_batch_norm``), ``"core_layer"`` (path B, the V1
            Keras layer) or ``"legacy"`` (path C, ``tf.nn.moments`` / ``weighted_moments``).
        moving_variance_correction: Whether that path stores the Bessel-corrected batch
            variance ``var * n / max(n - 1, 1)`` in the moving variance (else the biased one).

    """

    name: PathName
    moving_variance_correction: bool


def slim_path(
    rank: int,
    *,
    fused: bool | None = None,
    batch_weights: bool = False,
    renorm: bool = False,
    adjustment: bool = False,
    zero_debias_moving_mean: bool = False,
    default_updates_collections: bool = True,
    variable_dtype: torch.dtype = torch.float32,
) -> SlimPath:
    """tf-slim 1.1.0's dispatch in ``batch_norm`` (tf-semantics.md 9.2), as a pure function.

    ``fused=None`` counts as True. Fusion is *possible* with no batch weights, no renorm, no
    adjustment and rank 2 or 4. Then:

    ======================================================  ==========  ====================
    condition (first match wins)                             path        stored variance
    ======================================================  ==========  ====================
    fused, possible, and (zero-debias, or rank 2, or         fused (A)   Bessel-corrected
    ``updates_collections`` not the default UPDATE_OPS)
    no batch weights, default ``updates_collections``,       core layer  corrected iff the V1
    no zero-debias                                           (B)         layer fuses: rank 4/5,
                                                                         ``fused`` not False,
                                                                         no renorm/adjustment,
                                                                         float16/32 variables
    anything else (batch weights; zero-debias or custom      legacy (C)  biased
    collections when A is impossible)
    ======================================================  ==========  ====================

    So, with default arguments: rank 2 -> A (corrected); rank 3 -> B unfused (biased); rank 4
    or 5 -> B fused (corrected); ``fused=False`` at rank 2 or 4 -> B unfused (biased); rank 4
    with ``updates_collections=None`` -> A (corrected); rank 3 with ``updates_collections=None``,
    rank 4 with ``fused=False`` and ``updates_collections=None``, and any ``batch_weights`` ->
    C (biased). The output always uses the biased batch variance.

    TensorFlow refuses renorm on path C (with batch weights, custom collections or zero-debias);
    we run it there and report C. With float64 inputs path A would fail in TensorFlow (the
    fused kernel has no float64 CPU kernel); we still report A, corrected.

    Args:
        rank: The input's rank (>= 2).
        fused: tf-slim's ``fused`` (None means True).
        batch_weights: Whether ``batch_weights`` is given.
        renorm: tf-slim's ``renorm``.
        adjustment: Whether an ``adjustment`` callable is given.
        zero_debias_moving_mean: tf-slim's ``zero_debias_moving_mean``.
        default_updates_collections: Whether ``updates_collections`` is the default
            ``UPDATE_OPS`` (tf-slim tests identity with ``tf.GraphKeys.UPDATE_OPS``).
        variable_dtype: The variables' dtype (float64 disables the V1 layer's fused kernel).

    Returns:
        :class:`SlimPath`.

    Example:
        >>> slim_path(2)
        SlimPath(name='fused', moving_variance_correction=True)
        >>> slim_path(3)
        SlimPath(name='core_layer', moving_variance_correction=False)
        >>> slim_path(4).moving_variance_correction, slim_path(4, fused=False)
        (True, SlimPath(name='core_layer', moving_variance_correction=False))
        >>> slim_path(4, batch_weights=True)
        SlimPath(name='legacy', moving_variance_correction=False)

    """
    fused_on = fused is None or fused
    possible_to_fuse = not batch_weights and not renorm and not adjustment and rank in (2, 4)
    if (
        fused_on
        and possible_to_fuse
        and (zero_debias_moving_mean or rank == 2 or not default_updates_collections)
    ):
        return SlimPath("fused", True)
    if not batch_weights and default_updates_collections and not zero_debias_moving_mean:
        # The V1 layer turns fused=None into True, then fuses iff rank 4/5 and fusion is
        # possible for it (tf_keras' rule; slim passes axis -1 or 1, both fusable).
        corrected = tensorflow_runs_fused_kernel(
            -1,
            rank,
            True if fused is None else fused,
            variable_dtype,
            renorm=renorm,
            adjustment=True if adjustment else None,
        )
        return SlimPath("core_layer", corrected)
    return SlimPath("legacy", False)
