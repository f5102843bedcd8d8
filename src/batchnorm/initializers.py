"""Keras-named weight initializers.

An initializer is called as ``init(shape, dtype=None)`` and returns a new CPU ``torch.Tensor``
of that shape; ``dtype`` is a ``torch.dtype`` or a string naming one (``"float32"``,
``"float64"``, ``"bfloat16"``...), float32 by default (Keras' ``floatx``).

Wherever the layer takes an initializer (``gamma_initializer=...``) it accepts what :func:`get`
accepts: ``None``, a Keras name (``"glorot_uniform"`` or the class name ``"GlorotUniform"``), a
config dict ``{"class_name": ..., "config": {...}}`` as Keras writes it, an instance, or any
callable ``(shape, dtype=None) -> array-like``. Names are only looked up in a fixed registry;
nothing is ever evaluated.

Seeding follows Keras: an initializer built with ``seed=n`` draws from its own
``torch.Generator`` seeded with ``n`` on every call, so it returns the same values each time and
never touches PyTorch's global generator; with ``seed=None`` it draws from the global generator
(``torch.manual_seed`` makes it reproducible).

Example:
    >>> from batchnorm import initializers
    >>> init = initializers.get("glorot_uniform")
    >>> init
    GlorotUniform(seed=None)
    >>> initializers.serialize(initializers.RandomNormal(stddev=0.1, seed=3))
    {'class_name': 'RandomNormal', 'config': {'mean': 0.0, 'stddev': 0.1, 'seed': 3}}
    >>> initializers.get({"class_name": "Constant", "config": {"value": 2.5}})((2,)).tolist()
    [2.5, 2.5]

"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from batchnorm._errors import check, fail
from batchnorm._registry import Configurable, Registry, checked_float

__all__ = [
    "Constant",
    "GlorotNormal",
    "GlorotUniform",
    "HeNormal",
    "HeUniform",
    "Initializer",
    "LecunNormal",
    "LecunUniform",
    "Ones",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "Zeros",
    "deserialize",
    "get",
    "serialize",
]

# Standard deviation of a standard normal truncated to [-2, 2]; Keras divides by it so that the
# truncated draws of VarianceScaling keep the intended variance.
_TRUNCATED_STD = 0.87962566103423978

# ---------------------------------------------------------------------------------------------
# Initializers.
# ---------------------------------------------------------------------------------------------


def _shape(shape: Any) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints) as a tuple of non-negative ints."""
    expected = "an int or a sequence of ints >= 0"
    try:
        dims = (operator.index(shape),) if not isinstance(shape, Sequence) else shape
        dims = tuple(operator.index(dim) for dim in dims)
    except TypeError:
        raise fail("shape", shape, expected) from None
    check(all(dim >= 0 for dim in dims), "shape", shape, expected)
    return dims


def _dtype(dtype: Any, *, floating: bool) -> torch.dtype:
    """``dtype`` (``None``, a ``torch.dtype`` or its name) as a ``torch.dtype``."""
    if dtype is None:
        return torch.float32
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    kind = "a floating-point" if floating else "a"
    ok = isinstance(resolved, torch.dtype) and (resolved.is_floating_point or not floating)
    check(ok, "dtype", dtype, f"{kind} torch.dtype or its name, such as 'float32'")
    return resolved


def _seed(seed: Any) -> int | None:
    """Check ``seed``: ``None`` or an int that ``torch.Generator.manual_seed`` takes."""
    ok = seed is None or (
        isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64
    )
    check(ok, "seed", seed, "None or an int in [0, 2**64)")
    return seed


def _compute_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras' ``(fan_in, fan_out)`` for a weight of ``shape`` laid out ``(..., in, out)``.

    A scalar has fans ``(1, 1)``; a vector ``(n, n)``; a matrix ``(shape[0], shape[1])``; a
    convolution kernel multiplies ``shape[-2]`` and ``shape[-1]`` by the receptive field size
    ``prod(shape[:-2])``.

    Example:
        >>> _compute_fans((3, 3, 16, 32))
        (144, 288)

    """
    if not shape:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


class Initializer(Configurable, ABC):
    """Base class: ``init(shape, dtype=None) -> torch.Tensor``, with a Keras config.

    Example:
        >>> isinstance(Ones(), Initializer)
        True

    """

    @abstractmethod
    def __call__(self, shape: int | Sequence[int], dtype: torch.dtype | str | None = None) -> Any:
        """A new tensor of ``shape`` and ``dtype`` (float32 by default)."""


class _RandomInitializer(Initializer):
    """An initializer that draws from a seeded local generator or the global one."""

    seed: int | None

    def __call__(
        self, shape: int | Sequence[int], dtype: torch.dtype | str | None = None
    ) -> torch.Tensor:
        """Draw a new tensor of ``shape`` and floating ``dtype`` (float32 by default).

        Half-precision results are drawn in float32 and rounded, so they follow the same
        distribution as float32 ones.

        Raises:
            BatchNormError: ``shape`` is not a sequence of non-negative ints, or ``dtype`` does
                not name a floating-point dtype.

        """
        dims, dtype = _shape(shape), _dtype(dtype, floating=True)
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)
        work = dtype if dtype == torch.float64 else torch.float32
        return self._draw(torch.empty(dims, dtype=work), dims, generator).to(dtype)

    @abstractmethod
    def _draw(
        self, out: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None
    ) -> torch.Tensor:
        """Fill ``out`` (of ``shape``) in place from ``generator`` and return it."""


def _truncated_normal_(
    out: torch.Tensor, mean: float, stddev: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Fill ``out`` with ``N(mean, stddev)`` restricted to ``mean +- 2 * stddev``."""
    torch.nn.init.trunc_normal_(out, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=generator)
    return out.mul_(stddev).add_(mean)


class Zeros(Initializer):
    """All zeros (Keras ``"zeros"``); any dtype, float32 by default.

    Example:
        >>> Zeros()((2, 3)).sum().item()
        0.0

    """

    def __call__(
        self, shape: int | Sequence[int], dtype: torch.dtype | str | None = None
    ) -> torch.Tensor:
        """A tensor of zeros of ``shape`` and ``dtype``."""
        return torch.zeros(_shape(shape), dtype=_dtype(dtype, floating=False))


class Ones(Initializer):
    """All ones (Keras ``"ones"``); any dtype, float32 by default.

    Example:
        >>> Ones()(3, "float64")
        tensor([1., 1., 1.], dtype=torch.float64)

    """

    def __call__(
        self, shape: int | Sequence[int], dtype: torch.dtype | str | None = None
    ) -> torch.Tensor:
        """A tensor of ones of ``shape`` and ``dtype``."""
        return torch.ones(_shape(shape), dtype=_dtype(dtype, floating=False))


class Constant(Initializer):
    """Every entry equal to ``value`` (Keras ``"constant"``).

    Args:
        value: A finite real scalar, 0 by default; stored as a float.

    Example:
        >>> Constant(0.5)((3,)).tolist()
        [0.5, 0.5, 0.5]

    """

    def __init__(self, value: float = 0.0) -> None:
        self.value = checked_float("value", value, "a finite real number", lambda v: True)

    def __call__(
        self, shape: int | Sequence[int], dtype: torch.dtype | str | None = None
    ) -> torch.Tensor:
        """A tensor of ``shape`` and ``dtype`` filled with ``value`` (cast to ``dtype``)."""
        return torch.full(_shape(shape), self.value, dtype=_dtype(dtype, floating=False))


class RandomNormal(_RandomInitializer):
    """Draws from the normal distribution ``N(mean, stddev**2)`` (Keras ``"random_normal"``).

    Args:
        mean: A finite float, default 0.
        stddev: A finite float >= 0, default 0.05.
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> RandomNormal(mean=1.0, stddev=0.0)((2,)).tolist()
        [1.0, 1.0]

    """

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None) -> None:
        self.mean = checked_float("mean", mean, "a finite float", lambda v: True)
        self.stddev = checked_float("stddev", stddev, "a finite float >= 0", lambda v: v >= 0)
        self.seed = _seed(seed)

    def _draw(
        self, out: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None
    ) -> torch.Tensor:
        return out.normal_(self.mean, self.stddev, generator=generator)


class RandomUniform(_RandomInitializer):
    """Draws uniformly from ``[minval, maxval)`` (Keras ``"random_uniform"``).

    Args:
        minval: A finite float, default -0.05.
        maxval: A finite float >= ``minval``, default 0.05.
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> values = RandomUniform(minval=2.0, maxval=3.0, seed=0)((1000,))
        >>> bool(values.min() >= 2.0 and values.max() < 3.0)
        True

    """

    def __init__(
        self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None
    ) -> None:
        self.minval = checked_float("minval", minval, "a finite float", lambda v: True)
        self.maxval = checked_float(
            "maxval", maxval, f"a finite float >= minval={self.minval}", lambda v: v >= self.minval
        )
        self.seed = _seed(seed)

    def _draw(
        self, out: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None
    ) -> torch.Tensor:
        return out.uniform_(self.minval, self.maxval, generator=generator)


class TruncatedNormal(_RandomInitializer):
    """``N(mean, stddev**2)`` restricted to ``[mean - 2 stddev, mean + 2 stddev]``.

    Keras ``"truncated_normal"``. Draws outside the interval are discarded, so the draws' standard
    deviation is about ``0.88 * stddev``.

    Args:
        mean: A finite float, default 0.
        stddev: A finite float >= 0, default 0.05.
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> values = TruncatedNormal(stddev=1.0, seed=0)((10000,))
        >>> bool(values.abs().max() <= 2.0)
        True

    """

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None) -> None:
        self.mean = checked_float("mean", mean, "a finite float", lambda v: True)
        self.stddev = checked_float("stddev", stddev, "a finite float >= 0", lambda v: v >= 0)
        self.seed = _seed(seed)

    def _draw(
        self, out: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None
    ) -> torch.Tensor:
        return _truncated_normal_(out, self.mean, self.stddev, generator)


class VarianceScaling(_RandomInitializer):
    r"""Draws with a variance scaled to the weight's fans (Keras ``"variance_scaling"``).

    With ``n`` the fan chosen by ``mode`` (at least 1) and ``fan_in, fan_out`` computed as Keras
    does for a weight laid out ``(..., in, out)`` (a vector of length ``C`` has both fans ``C``;
    a kernel multiplies its last two sizes by the product of the others):

    .. math::

        \sigma^2 = \frac{\text{scale}}{\max(1, n)}, \quad
        n \in \{\text{fan\_in}, \text{fan\_out}, (\text{fan\_in} + \text{fan\_out}) / 2\}

    ``"truncated_normal"`` draws ``N(0, s**2)`` truncated at ``2 s`` with
    ``s = sigma / 0.87962566103423978`` (the standard deviation of a standard normal truncated at
    2), so the draws keep variance ``sigma**2``; ``"untruncated_normal"`` draws ``N(0, sigma**2)``;
    ``"uniform"`` draws from ``[-limit, limit]`` with ``limit = sqrt(3) * sigma``.

    Args:
        scale: A finite float > 0, default 1.
        mode: ``"fan_in"`` (default), ``"fan_out"`` or ``"fan_avg"``.
        distribution: ``"truncated_normal"`` (default), ``"untruncated_normal"`` or ``"uniform"``.
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> init = VarianceScaling(scale=3.0, mode="fan_out", distribution="uniform", seed=0)
        >>> bool(init((4, 100)).abs().max() <= math.sqrt(3 * 3.0 / 100))
        True

    """

    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(
        self,
        scale: float = 1.0,
        mode: str = "fan_in",
        distribution: str = "truncated_normal",
        seed: int | None = None,
    ) -> None:
        self.scale = checked_float("scale", scale, "a finite float > 0", lambda v: v > 0)
        check(mode in self._MODES, "mode", mode, f"one of {self._MODES}")
        check(
            distribution in self._DISTRIBUTIONS,
            "distribution",
            distribution,
            f"one of {self._DISTRIBUTIONS}",
        )
        self.mode = mode
        self.distribution = distribution
        self.seed = _seed(seed)

    def _draw(
        self, out: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None
    ) -> torch.Tensor:
        fan_in, fan_out = _compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, fan)
        if self.distribution == "truncated_normal":
            return _truncated_normal_(out, 0.0, math.sqrt(variance) / _TRUNCATED_STD, generator)
        if self.distribution == "untruncated_normal":
            return out.normal_(0.0, math.sqrt(variance), generator=generator)
        limit = math.sqrt(3.0 * variance)
        return out.uniform_(-limit, limit, generator=generator)


class GlorotNormal(VarianceScaling):
    """Glorot (Xavier) normal: ``VarianceScaling(1.0, "fan_avg", "truncated_normal")``.

    Draws have standard deviation ``sqrt(2 / (fan_in + fan_out))``.

    Args:
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> GlorotNormal(seed=1).get_config()
        {'seed': 1}

    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(scale=1.0, mode="fan_avg", distribution="truncated_normal", seed=seed)


class GlorotUniform(VarianceScaling):
    """Glorot (Xavier) uniform: ``VarianceScaling(1.0, "fan_avg", "uniform")``.

    Draws from ``[-limit, limit]`` with ``limit = sqrt(6 / (fan_in + fan_out))``.

    Args:
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> bool(GlorotUniform(seed=0)((8,)).abs().max() <= math.sqrt(6 / 16))
        True

    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(scale=1.0, mode="fan_avg", distribution="uniform", seed=seed)


class HeNormal(VarianceScaling):
    """He normal: ``VarianceScaling(2.0, "fan_in", "truncated_normal")``.

    Draws have standard deviation ``sqrt(2 / fan_in)``.

    Args:
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> HeNormal(seed=0)((3, 2)).shape
        torch.Size([3, 2])

    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(scale=2.0, mode="fan_in", distribution="truncated_normal", seed=seed)


class HeUniform(VarianceScaling):
    """He uniform: ``VarianceScaling(2.0, "fan_in", "uniform")``.

    Draws from ``[-limit, limit]`` with ``limit = sqrt(6 / fan_in)``.

    Args:
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> bool(HeUniform(seed=0)((6, 5)).abs().max() <= 1.0)
        True

    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(scale=2.0, mode="fan_in", distribution="uniform", seed=seed)


class LecunNormal(VarianceScaling):
    """LeCun normal: ``VarianceScaling(1.0, "fan_in", "truncated_normal")``.

    Draws have standard deviation ``sqrt(1 / fan_in)``.

    Args:
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> torch.equal(LecunNormal(seed=4)((5,)), LecunNormal(seed=4)((5,)))
        True

    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(scale=1.0, mode="fan_in", distribution="truncated_normal", seed=seed)


class LecunUniform(VarianceScaling):
    """LeCun uniform: ``VarianceScaling(1.0, "fan_in", "uniform")``.

    Draws from ``[-limit, limit]`` with ``limit = sqrt(3 / fan_in)``.

    Args:
        seed: ``None`` (the global generator) or an int: every call returns the same values.

    Example:
        >>> bool(LecunUniform(seed=0)((3, 4)).abs().max() <= 1.0)
        True

    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(scale=1.0, mode="fan_in", distribution="uniform", seed=seed)


_REGISTRY = Registry(
    "initializer",
    Initializer,
    {
        "zeros": Zeros,
        "ones": Ones,
        "constant": Constant,
        "random_normal": RandomNormal,
        "random_uniform": RandomUniform,
        "truncated_normal": TruncatedNormal,
        "variance_scaling": VarianceScaling,
        "glorot_normal": GlorotNormal,
        "glorot_uniform": GlorotUniform,
        "he_normal": HeNormal,
        "he_uniform": HeUniform,
        "lecun_normal": LecunNormal,
        "lecun_uniform": LecunUniform,
    },
    {},
    "(shape, dtype=None) -> array-like",
)


def get(
    identifier: Initializer | str | Mapping[str, Any] | Callable[..., Any] | None,
    argument: str = "initializer",
) -> Initializer | Callable[..., Any] | None:
    """Resolve an initializer identifier as the layer's ``*_initializer`` arguments do.

    Args:
        identifier: ``None`` (returned as is); a Keras name such as ``"glorot_uniform"`` or a
            class name such as ``"GlorotUniform"`` (an instance with default arguments); a
            config dict ``{"class_name": ..., "config": {...}}`` (Keras' extra ``"module"`` and
            ``"registered_name"`` keys are ignored); an :class:`Initializer` instance (returned
            as is) or class (instantiated); or any other callable
            ``(shape, dtype=None) -> array-like`` (returned as is).
        argument: The argument name used in error messages, e.g. ``"gamma_initializer"``.

    Returns:
        An initializer, a user callable, or ``None``.

    Raises:
        BatchNormError: An unknown name or class name, a malformed config, or a value that is
            none of the above; the message names ``argument``, the value and the valid names.

    Example:
        >>> get("he_normal")
        HeNormal(seed=None)
        >>> get({"class_name": "VarianceScaling", "config": {"mode": "fan_avg"}})
        VarianceScaling(scale=1.0, mode='fan_avg', distribution='truncated_normal', seed=None)

    """
    return _REGISTRY.get(identifier, argument)


def serialize(obj: Initializer | None, argument: str = "initializer") -> dict[str, Any] | None:
    """The JSON-serializable ``{"class_name": ..., "config": {...}}`` of an initializer.

    Args:
        obj: An instance of one of this module's classes, or ``None`` (gives ``None``).
        argument: The argument name used in error messages.

    Raises:
        BatchNormError: ``obj`` is a plain callable or an instance of an unregistered class;
            these cannot be rebuilt from a config, so use an initializer class instead.

    Example:
        >>> serialize(GlorotUniform(seed=5))
        {'class_name': 'GlorotUniform', 'config': {'seed': 5}}

    """
    return _REGISTRY.serialize(obj, argument)


def deserialize(
    config: Mapping[str, Any] | None, argument: str = "initializer"
) -> Initializer | None:
    """Rebuild an initializer from :func:`serialize`'s output (or Keras' own).

    Args:
        config: ``{"class_name": name, "config": {...}}`` where ``name`` is a class name or a
            Keras snake_case name; ``"config"`` may be omitted. ``None`` gives ``None``.
        argument: The argument name used in error messages.

    Raises:
        BatchNormError: ``config`` is not such a dict, names no initializer, or holds
            arguments the class rejects.

    Example:
        >>> deserialize({"class_name": "Zeros", "config": {}, "module": "keras.initializers"})
        Zeros()

    """
    return _REGISTRY.deserialize(config, argument)
