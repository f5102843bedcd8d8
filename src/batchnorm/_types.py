"""Small value types shared by the math and the paths."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Affine", "Moments"]


class Moments(NamedTuple):
    """Per-channel statistics of one batch, shaped to broadcast against the input.

    Attributes:
        count: Elements that contributed, per channel (a tensor broadcastable to ``mean``).
        mean: The mean over the reduced dimensions.
        var: The biased variance (divided by ``count``), as TensorFlow normalises with.

    """

    count: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor


class Affine(NamedTuple):
    """A per-channel map ``y = x * scale + shift``; every variant of batch norm is one of these."""

    scale: torch.Tensor
    shift: torch.Tensor
