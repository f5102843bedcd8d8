"""Per-channel algebra: every variant of batch norm reduces to ``y = x * scale + shift``.

Training normalises with the batch moments, ``x_hat = (x - mean) * invstd``, then applies an
affine map in ``x_hat`` space built by composing small per-channel maps (gamma and beta today;
renorm's ``r, d`` and ``adjustment`` compose the same way). Inference folds the moving statistics
into one map over ``x``. The moving statistics follow TensorFlow's update rule.

Nothing here mutates its arguments or knows about modules.
"""

from __future__ import annotations

import torch

from batchnorm._types import Affine

__all__ = [
    "bessel_factor",
    "compose",
    "ema_update",
    "gamma_beta_affine",
    "inference_affine",
    "invstd",
]


def invstd(var: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``1 / sqrt(var + epsilon)``.

    Example:
        >>> invstd(torch.tensor([3.0]), 1.0).tolist()
        [0.5]

    """
    return torch.rsqrt(var + epsilon)


def compose(inner: Affine, outer: Affine) -> Affine:
    """The map ``outer(inner(x))``: scale ``inner.scale * outer.scale``.

    Example:
        >>> doubled_then_shifted = compose(Affine(torch.tensor(2.0), torch.tensor(0.0)),
        ...                                Affine(torch.tensor(1.0), torch.tensor(5.0)))
        >>> [float(t) for t in doubled_then_shifted]
        [2.0, 5.0]

    """
    return Affine(inner.scale * outer.scale, inner.shift * outer.scale + outer.shift)


def gamma_beta_affine(
    gamma: torch.Tensor | None, beta: torch.Tensor | None, like: torch.Tensor
) -> Affine:
    """The layer's own map ``x_hat * gamma + beta``; a missing gamma is 1 and a missing beta 0.

    ``like`` supplies dtype, device and shape for the missing ones.

    Example:
        >>> gamma_beta_affine(None, torch.tensor([1.0]), torch.zeros(1)).scale.tolist()
        [1.0]

    """
    scale = gamma if gamma is not None else torch.ones_like(like)
    shift = beta if beta is not None else torch.zeros_like(like)
    return Affine(scale, shift)


def inference_affine(
    moving_mean: torch.Tensor,
    moving_variance: torch.Tensor,
    epsilon: float,
    output: Affine,
) -> Affine:
    r"""Fold the moving statistics and the output map into one map over ``x``.

    .. math:: y = (x - m) \cdot \frac{1}{\sqrt{v + \epsilon}} \cdot s + t
              = x \cdot a + (t - m \cdot a), \quad a = \frac{s}{\sqrt{v + \epsilon}}

    Example:
        >>> folded = inference_affine(torch.tensor(1.0), torch.tensor(3.0), 1.0,
        ...                           Affine(torch.tensor(2.0), torch.tensor(0.0)))
        >>> [float(t) for t in folded]
        [1.0, -1.0]

    """
    scale = invstd(moving_variance, epsilon) * output.scale
    return Affine(scale, output.shift - moving_mean * scale)


def ema_update(moving: torch.Tensor, value: torch.Tensor, momentum: float) -> torch.Tensor:
    """TensorFlow's moving-average step, ``moving - (moving - value) * (1 - momentum)``.

    Equal to ``moving * momentum + value * (1 - momentum)``; this is the form tf_keras evaluates,
    so float32 results agree with it to the last bit. ``momentum=1`` freezes, ``0`` copies.
    Like TensorFlow, ``1 - momentum`` is rounded to float32 first, also for float64 statistics
    (tf_keras converts the Python float to a float32 tensor before casting it).

    Example:
        >>> ema_update(torch.tensor(0.0), torch.tensor(10.0), 0.5).item()
        5.0

    """
    decay = torch.tensor(1.0 - momentum, dtype=torch.float32).item()
    return moving - (moving - value) * decay


def bessel_factor(count: torch.Tensor) -> torch.Tensor:
    """``n / max(n - 1, 1)``: turns a biased variance into TensorFlow's fused-kernel estimate.

    The guard makes a single element (n = 1) keep its (zero) variance instead of dividing by 0.

    Example:
        >>> bessel_factor(torch.tensor([1.0, 2.0, 5.0])).tolist()
        [1.0, 2.0, 1.25]

    """
    return count / torch.clamp(count - 1, min=1)
