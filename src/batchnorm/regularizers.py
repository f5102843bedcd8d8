r"""Keras-named weight regularizers: penalties added to the training loss.

A regularizer is called on a weight and returns a 0-d tensor penalty that stays in the autograd
graph, so ``loss + sum(layer.losses)`` back-propagates into the weight:

.. math::

    \text{penalty}(w) = l_1 \sum_i |w_i| + l_2 \sum_i w_i^2

The layer's ``beta_regularizer`` and ``gamma_regularizer`` accept what :func:`get` accepts:
``None``, a name (``"l1"``, ``"l2"``, ``"l1_l2"`` or a class name), a config dict
``{"class_name": ..., "config": {...}}``, an instance, or any callable ``(weight) -> scalar``.
As in Keras, the names ``"l1"`` and ``"l2"`` mean a factor of 0.01, and ``"l1_l2"`` means
``L1L2(l1=0.01, l2=0.01)`` (while the class ``L1L2()`` defaults to zero factors).

Example:
    >>> import torch
    >>> from batchnorm import regularizers
    >>> gamma = torch.full((4,), 3.0, requires_grad=True)
    >>> penalty = regularizers.get("l2")(gamma)
    >>> round(penalty.item(), 6)
    0.36
    >>> penalty.backward()
    >>> gamma.grad.tolist()
    [0.05999999865889549, 0.05999999865889549, 0.05999999865889549, 0.05999999865889549]

"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch

from batchnorm._errors import check
from batchnorm._registry import Configurable, Registry, checked_float

__all__ = ["L1", "L1L2", "L2", "Regularizer", "deserialize", "get", "serialize"]

_FACTOR = "a finite float >= 0"


def _factor(argument: str, value: Any) -> float:
    """A regularization factor: a finite, non-negative real, as a float."""
    return checked_float(argument, value, _FACTOR, lambda v: v >= 0)


class Regularizer(Configurable, ABC):
    """Base class: ``regularizer(weight) -> 0-d tensor`` penalty, with a Keras config.

    Example:
        >>> isinstance(L2(), Regularizer)
        True

    """

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """The penalty for ``weight``, a 0-d tensor of its dtype, differentiable in it.

        Raises:
            BatchNormError: ``weight`` is not a ``torch.Tensor``.

        """
        check(isinstance(weight, torch.Tensor), "weight", weight, "a torch.Tensor")
        return self._penalty(weight)

    @abstractmethod
    def _penalty(self, weight: torch.Tensor) -> torch.Tensor:
        """The penalty for a tensor ``weight``."""


class L1(Regularizer):
    """``l1 * sum(|w|)`` (Keras ``"l1"``).

    Args:
        l1: The factor, a finite float >= 0, default 0.01.

    Example:
        >>> L1(0.2)(torch.full((4,), -2.0)).item()
        1.600000023841858

    """

    def __init__(self, l1: float = 0.01) -> None:
        self.l1 = _factor("l1", l1)

    def _penalty(self, weight: torch.Tensor) -> torch.Tensor:
        return self.l1 * weight.abs().sum()


class L2(Regularizer):
    """``l2 * sum(w ** 2)`` (Keras ``"l2"``).

    Args:
        l2: The factor, a finite float >= 0, default 0.01.

    Example:
        >>> L2(0.5)(torch.tensor([1.0, -2.0])).item()
        2.5

    """

    def __init__(self, l2: float = 0.01) -> None:
        self.l2 = _factor("l2", l2)

    def _penalty(self, weight: torch.Tensor) -> torch.Tensor:
        return self.l2 * weight.square().sum()


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w ** 2)``; the name ``"l1_l2"`` means both factors 0.01.

    As in Keras, a zero factor drops its term (so a non-finite weight does not turn
    ``0 * inf`` into NaN), and ``L1L2()`` with both factors zero gives a zero penalty.

    Args:
        l1: The L1 factor, a finite float >= 0, default 0.
        l2: The L2 factor, a finite float >= 0, default 0.

    Example:
        >>> L1L2(l1=0.5, l2=0.25)(torch.tensor([2.0, -2.0])).item()
        4.0

    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1 = _factor("l1", l1)
        self.l2 = _factor("l2", l2)

    def _penalty(self, weight: torch.Tensor) -> torch.Tensor:
        penalty = weight.new_zeros(())
        if self.l1:
            penalty = penalty + self.l1 * weight.abs().sum()
        if self.l2:
            penalty = penalty + self.l2 * weight.square().sum()
        return penalty


_REGISTRY = Registry(
    "regularizer",
    Regularizer,
    {"l1": L1, "l2": L2, "l1_l2": L1L2},
    {"l1_l2": {"l1": 0.01, "l2": 0.01}},
    "(weight) -> scalar tensor",
)


def get(
    identifier: Regularizer | str | Mapping[str, Any] | Callable[..., Any] | None,
    argument: str = "regularizer",
) -> Regularizer | Callable[..., Any] | None:
    """Resolve a regularizer identifier as the layer's ``*_regularizer`` arguments do.

    Args:
        identifier: ``None`` (returned as is); ``"l1"``, ``"l2"`` (factor 0.01), ``"l1_l2"``
            (both factors 0.01) or a class name (``"L1L2"`` is ``L1L2()``, factors 0); a config
            dict ``{"class_name": ..., "config": {...}}`` (Keras' extra ``"module"`` and
            ``"registered_name"`` keys are ignored); a :class:`Regularizer` instance (returned as
            is) or class (instantiated); or any other callable ``(weight) -> scalar`` (returned
            as is).
        argument: The argument name used in error messages, e.g. ``"gamma_regularizer"``.

    Returns:
        A regularizer, a user callable, or ``None``.

    Raises:
        BatchNormError: An unknown name, a malformed config, a negative or non-finite factor,
            or a value that is none of the above; the message names ``argument``, the value and
            the valid names.

    Example:
        >>> get("l1_l2")
        L1L2(l1=0.01, l2=0.01)
        >>> get({"class_name": "L2", "config": {"l2": 0.1}})
        L2(l2=0.1)

    """
    return _REGISTRY.get(identifier, argument)


def serialize(obj: Regularizer | None, argument: str = "regularizer") -> dict[str, Any] | None:
    """The JSON-serializable ``{"class_name": ..., "config": {...}}`` of a regularizer.

    Args:
        obj: An instance of one of this module's classes, or ``None`` (gives ``None``).
        argument: The argument name used in error messages.

    Raises:
        BatchNormError: ``obj`` is a plain callable or an instance of an unregistered class;
            these cannot be rebuilt from a config, so use a regularizer class instead.

    Example:
        >>> serialize(L1(0.2))
        {'class_name': 'L1', 'config': {'l1': 0.2}}

    """
    return _REGISTRY.serialize(obj, argument)


def deserialize(
    config: Mapping[str, Any] | None, argument: str = "regularizer"
) -> Regularizer | None:
    """Rebuild a regularizer from :func:`serialize`'s output (or Keras' own).

    Args:
        config: ``{"class_name": name, "config": {...}}`` where ``name`` is a class name or a
            Keras snake_case name; ``"config"`` may be omitted. ``None`` gives ``None``.
        argument: The argument name used in error messages.

    Raises:
        BatchNormError: ``config`` is not such a dict, names no regularizer, or holds
            arguments the class rejects.

    Example:
        >>> deserialize({"class_name": "L1L2", "config": {"l2": 0.5}})
        L1L2(l1=0.0, l2=0.5)

    """
    return _REGISTRY.deserialize(config, argument)
