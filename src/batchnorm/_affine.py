"""Per-channel algebra: every variant of batch norm reduces to ``y = x * scale + shift``.

Training normalises with the batch moments, ``x_hat = (x - mean) * invstd``, then applies an
affine map in ``x_hat`` space built by composing small per-channel maps (gamma and beta today;
renorm's ``r, d`` and ``adjustment`` compose the same way). Inference folds the moving statistics
into one map over ``x``. The moving statistics follow TensorFlow's update rule.

Nothing here mutates its arguments or knows about modules.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping

import torch

from batchnorm._nonfinite import guarded
from batchnorm._types import Affine, Moments

__all__ = [
    "bessel_factor",
    "compose",
    "decay_factor",
    "ema_update",
    "ema_update_",
    "float32_round",
    "host_factor",
    "host_factor_for",
    "gamma_beta_affine",
    "inference_affine",
    "invstd",
    "renorm_correction",
    "updated_statistics",
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
    if torch.compiler.is_compiling():  # the same float32 factor, as a graph constant
        factor: torch.Tensor | float = torch.tensor(1.0 - momentum, dtype=torch.float32)
    else:
        factor = decay_factor(momentum, moving.dtype, moving.device)
    return moving - (moving - value).mul_(factor)


def ema_update_(moving: torch.Tensor, value: torch.Tensor, factor: torch.Tensor | float) -> None:
    """:func:`ema_update` written into ``moving``, with its ``factor`` (:func:`decay_factor`).

    The same arithmetic to the bit (``moving - d`` in place is ``moving - d``), without the
    new tensor and the copy into a buffer: for a layer's decided calls
    (:mod:`batchnorm._lanes`), whose update no check follows.

    Example:
        >>> moving = torch.zeros(1)
        >>> factor = decay_factor(0.5, moving.dtype, moving.device)
        >>> ema_update_(moving, torch.tensor([10.0]), factor)
        >>> moving.tolist()
        [5.0]
    """
    moving.sub_((moving - value).mul_(factor))


@functools.lru_cache(maxsize=256)
def decay_factor(momentum: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor | float:
    """``1 - momentum`` rounded to float32, as :func:`host_factor` gives it (never write it)."""
    return host_factor_for(float32_round(1.0 - momentum), dtype, device)


def host_factor(value: float, like: torch.Tensor) -> torch.Tensor | float:
    """A Python float to multiply ``like`` by, as a cached 0-d tensor where that is the same.

    Multiplying by a 0-d tensor of ``like``'s float32 or float64 dtype rounds exactly as
    multiplying by the Python float (whose value the dtype holds) and skips wrapping the float
    in a new tensor, half the cost of a small multiply. Other dtypes get the float itself
    (16-bit arithmetic with a Python scalar computes in float32). Never write to the result.

    Example:
        >>> host_factor(0.5, torch.ones(2)).dtype, host_factor(0.5, torch.ones(2).half())
        (torch.float32, 0.5)
    """
    return host_factor_for(value, like.dtype, like.device)


def host_factor_for(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor | float:
    """:func:`host_factor` for a tensor of ``dtype`` on ``device`` (never write to the result)."""
    if dtype not in _HOST_ROUNDING or _HOST_ROUNDING[dtype](value) != value:
        return value
    return _constant(value, dtype, device)


@functools.lru_cache(maxsize=256)
def _constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, device=device)


def float32_round(value: float) -> float:
    """``value`` rounded to the nearest float32, as a Python float.

    Example:
        >>> float32_round(0.1)
        0.10000000149011612
    """
    return struct.unpack("f", struct.pack("f", value))[0]


def bessel_factor(count: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """``n / max(n - 1, 1)`` in ``like``'s dtype: a biased variance to TensorFlow's fused estimate.

    The guard makes a single element (n = 1) keep its (zero) variance instead of dividing by 0.
    A count already read to the host (:func:`_host_count`) gives a Python float (as a cached
    0-d tensor, :func:`host_factor`) without tensor ops, equal to the tensor result for
    float32 and float64: Python's float64 subtraction and division rounded once more to
    float32 are float32's own (double rounding is innocuous for them when the wider format has
    at least ``2p + 2`` bits, 53 against 50).

    Example:
        >>> bessel_factor(torch.tensor([1.0, 2.0, 5.0]), torch.ones(3)).tolist()
        [1.0, 2.0, 1.25]
        >>> float(bessel_factor(3.0, torch.ones(3)))
        1.5
    """
    if isinstance(count, float) and like.dtype in _HOST_ROUNDING:
        return _host_bessel_factor(count, like.dtype, like.device)
    count = torch.as_tensor(count).to(like)
    return count / torch.clamp(count - 1, min=1)


@functools.lru_cache(maxsize=256)
def _host_bessel_factor(
    count: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | float:
    """:func:`bessel_factor` of a count read to the host, once per value (never write it)."""
    rounded = _HOST_ROUNDING[dtype]
    n = rounded(count)
    return host_factor_for(rounded(n / max(rounded(n - 1.0), 1.0)), dtype, device)


def _host_count(count: torch.Tensor) -> torch.Tensor | float:
    """``count`` as a Python float where it is one number held by the CPU, else itself.

    Unweighted batches count the same elements in every channel, held in a CPU scalar even for
    inputs on a GPU, so reading it costs no synchronisation; the update then skips the small
    tensor ops that per-channel counts need. Not while compiling: a graph keeps the count a
    tensor (its batch size may be symbolic).

    Example:
        >>> _host_count(torch.tensor(6.0)), _host_count(torch.tensor([6.0, 4.0])).tolist()
        (6.0, [6.0, 4.0])
    """
    if count.numel() == 1 and count.device.type == "cpu" and not torch.compiler.is_compiling():
        return float(count)
    return count  # per channel, or traced: a compiled graph keeps it a tensor


_HOST_ROUNDING = {torch.float32: float32_round, torch.float64: float}


def _clip_value(value: object, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def renorm_correction(
    batch: Moments,
    epsilon: float,
    renorm_mean: torch.Tensor,
    renorm_stddev: torch.Tensor,
    clipping: Mapping[str, object],
) -> Affine:
    r"""Batch Renormalization's ``r`` and ``d`` (Ioffe, 2017), as tf_keras computes them.

    .. math::

        s = \sqrt{\sigma^2 + \epsilon}, \quad \hat{s} = \max(\text{renorm\_stddev}, \sqrt\epsilon),
        \quad r = \operatorname{clip}_{[r_{min}, r_{max}]}(s / \hat{s}), \quad
        d = \operatorname{clip}_{[-d_{max}, d_{max}]}((\mu - \text{renorm\_mean}) / \hat{s})

    from the renorm statistics *before* this step's update. ``r`` is clipped with ``rmin``
    first, then ``rmax``; a missing key means no clip. Both are constants for autograd
    (``stop_gradient`` in TensorFlow). Composed innermost: ``x_hat * r + d``.

    Example:
        >>> batch = Moments(torch.tensor(4.0), torch.tensor([1.0]), torch.tensor([4.0]))
        >>> rd = renorm_correction(batch, 0.0, torch.tensor([0.0]), torch.tensor([1.0]),
        ...                        {"rmax": 1.5})
        >>> rd.scale.tolist(), rd.shift.tolist()
        ([1.5], [1.0])
    """
    with torch.no_grad():
        stddev = torch.sqrt(batch.var + epsilon)
        floor = torch.clamp(renorm_stddev.to(stddev), min=math.sqrt(epsilon))
        r = stddev / floor
        d = (batch.mean - renorm_mean.to(stddev)) / floor
        if "rmin" in clipping:
            r = torch.maximum(r, _clip_value(clipping["rmin"], r))
        if "rmax" in clipping:
            r = torch.minimum(r, _clip_value(clipping["rmax"], r))
        if "dmax" in clipping:
            dmax = _clip_value(clipping["dmax"], d)
            d = torch.minimum(torch.maximum(d, -dmax), dmax)
    return Affine(r, d)


def updated_statistics(
    state: Mapping[str, torch.Tensor],
    batch: Moments,
    *,
    momentum: float,
    epsilon: float,
    variance_correction: bool,
    renorm_momentum: float | None = None,
    zero_debias: bool = False,
    nonfinite: str = "skip",
) -> dict[str, torch.Tensor]:
    r"""The moving statistics after one training step on ``batch`` (per channel, state-shaped).

    ``state`` holds TensorFlow's variables by name; the result holds the new value of each one
    this step changes. With ``EMA(v, u, m) = v - (v - u)(1 - m)``:

    - ``moving_mean = EMA(moving_mean, mean, momentum)``; with ``zero_debias`` (tf-slim)
      ``moving_mean_biased = EMA(moving_mean_biased, mean, momentum)``, ``local_step += 1`` and
      ``moving_mean = moving_mean_biased / (1 - momentum ** local_step)``.
    - without renorm: ``moving_variance = EMA(moving_variance, c * var, momentum)``, where
      ``c = n / max(n - 1, 1)`` if ``variance_correction`` else 1.
    - with renorm (``renorm_momentum`` given), ``s = sqrt(var + epsilon)``:
      ``moving_stddev = EMA(moving_stddev, s, momentum)``,
      ``moving_variance = max(moving_stddev ** 2 - epsilon, 0)``,
      ``renorm_mean = EMA(renorm_mean, mean, renorm_momentum)``,
      ``renorm_stddev = EMA(renorm_stddev, s, renorm_momentum)``.

    A channel with no data (count 0: an empty batch, all weights or mask zero) keeps every
    statistic; ``local_step`` still counts the step. A batch whose moments are not finite
    updates as ``nonfinite`` says (:mod:`batchnorm._nonfinite`: by default it changes
    nothing but ``skipped_updates``).

    Example:
        >>> state = {"moving_mean": torch.zeros(1), "moving_variance": torch.ones(1)}
        >>> batch = Moments(torch.tensor(2.0), torch.tensor([4.0]), torch.tensor([2.0]))
        >>> new = updated_statistics(state, batch, momentum=0.5, epsilon=0.0,
        ...                          variance_correction=True)
        >>> new["moving_mean"].tolist(), new["moving_variance"].tolist()
        ([2.0], [2.5])
    """
    mean, var = _like(batch.mean, state["moving_mean"]), _like(batch.var, state["moving_variance"])
    count = _host_count(batch.count)
    new: dict[str, torch.Tensor] = {}
    if zero_debias:
        biased = ema_update(state["moving_mean_biased"], mean, momentum)
        step = state["local_step"] + 1
        # tf.train's zero debiasing: the bias factor 1 - (1 - decay) ** step, in float32.
        decay = torch.tensor(1.0 - momentum, dtype=torch.float32)
        bias_factor = 1.0 - (1.0 - decay) ** step.to(torch.float32)
        new["moving_mean_biased"] = biased
        new["moving_mean"] = biased / bias_factor.to(biased)
    else:
        new["moving_mean"] = ema_update(state["moving_mean"], mean, momentum)
    if renorm_momentum is not None:
        stddev = torch.sqrt(var + epsilon)
        moving_stddev = ema_update(state["moving_stddev"], stddev, momentum)
        new["moving_stddev"] = moving_stddev
        new["moving_variance"] = torch.clamp(moving_stddev * moving_stddev - epsilon, min=0.0)
        new["renorm_mean"] = ema_update(state["renorm_mean"], mean, renorm_momentum)
        new["renorm_stddev"] = ema_update(state["renorm_stddev"], stddev, renorm_momentum)
    else:
        if variance_correction:
            var = var * bessel_factor(count, var)
        new["moving_variance"] = ema_update(state["moving_variance"], var, momentum)
    if not (isinstance(count, float) and count > 0):  # some channel may have had no data
        has_data = (batch.count > 0).to(device=mean.device)
        new = {name: torch.where(has_data, value, state[name]) for name, value in new.items()}
    if zero_debias:
        new["local_step"] = state["local_step"] + 1
    return guarded(new, state, batch, nonfinite)


def _like(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``t`` in ``state``'s dtype and device (itself where it is already: no dispatch)."""
    return t if t.dtype == state.dtype and t.device == state.device else t.to(state)
