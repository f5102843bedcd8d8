"""Keras-named weight constraints, and the hooks that apply them after an optimizer step.

A constraint maps a weight to its projection onto an allowed set (non-negative, bounded norm)
and returns a new tensor. As in TensorFlow, constraints are **never applied in the forward
pass**: a ``gamma`` with negative entries is used as is. They project the parameters *after*
the optimizer has updated them, which TensorFlow's optimizers do inside ``apply_gradients``.
PyTorch optimizers know nothing of constraints, so hook them up in one of two ways:

1. Call :func:`apply_constraints` ``(model)`` yourself right after every ``optimizer.step()``.
2. Call :func:`register_optimizer_hook` ``(optimizer, model)`` once; every ``optimizer.step()``
   is then followed by ``apply_constraints(model)`` until the returned handle is removed.

:func:`apply_constraints` calls ``apply_constraints()`` on every submodule that defines it;
``batchnorm.BatchNormalization`` does, projecting ``gamma`` and ``beta`` in place under
``torch.no_grad()`` with its ``gamma_constraint`` and ``beta_constraint``. Any module of yours
can take part by defining the same method.

The layer's ``*_constraint`` arguments accept what :func:`get` accepts: ``None``, a name
(``"non_neg"``, ``"unit_norm"``, ``"max_norm"``, ``"min_max_norm"`` or a class name), a config
dict ``{"class_name": ..., "config": {...}}``, an instance, or any callable
``(weight) -> tensor``.

Example:
    >>> import torch
    >>> from batchnorm.constraints import NonNeg, register_optimizer_hook
    >>> class Scale(torch.nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.gamma = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    ...         self.gamma_constraint = NonNeg()
    ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
    ...         return x * self.gamma
    ...     def apply_constraints(self) -> None:
    ...         with torch.no_grad():
    ...             self.gamma.copy_(self.gamma_constraint(self.gamma))
    >>> model = Scale()
    >>> model(torch.ones(3)).tolist()  # the forward pass uses gamma unconstrained
    [1.0, -2.0, 3.0]
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    >>> handle = register_optimizer_hook(optimizer, model)  # way 2
    >>> model(torch.ones(3)).sum().backward()
    >>> optimizer.step()  # gamma - 0.5 * 1 = [0.5, -2.5, 2.5], then projected
    >>> model.gamma.tolist()
    [0.5, 0.0, 2.5]
    >>> handle.remove()

"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from batchnorm._axes import validate_axis_argument
from batchnorm._errors import check
from batchnorm._registry import Configurable, Registry, checked_float

__all__ = [
    "Constraint",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "UnitNorm",
    "apply_constraints",
    "deserialize",
    "get",
    "register_optimizer_hook",
    "serialize",
]

# Keras' backend epsilon, added to the norm before dividing by it.
_EPSILON = 1e-7


class Constraint(Configurable, ABC):
    """Base class: ``constraint(w) -> torch.Tensor``, a new projected tensor, with a Keras config.

    Example:
        >>> isinstance(NonNeg(), Constraint)
        True

    """

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        """The projection of ``w``: a new tensor of its shape and dtype; ``w`` is not modified.

        Raises:
            BatchNormError: ``w`` is not a ``torch.Tensor``, or (norm constraints) ``axis`` is out
                of range for its rank.

        """
        check(isinstance(w, torch.Tensor), "w", w, "a torch.Tensor")
        return self._project(w)

    @abstractmethod
    def _project(self, w: torch.Tensor) -> torch.Tensor:
        """The projection of a tensor ``w``."""


class NonNeg(Constraint):
    """Sets negative entries to zero (Keras ``"non_neg"``); NaN entries stay NaN.

    Example:
        >>> NonNeg()(torch.tensor([-1.0, 2.0, -3.0])).tolist()
        [0.0, 2.0, 0.0]

    """

    def _project(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(w < 0, torch.zeros_like(w), w)


class _NormConstraint(Constraint):
    """A constraint that rescales ``w`` by a function of its L2 norms along ``axis``."""

    axis: int | tuple[int, ...]

    def _norms(self, w: torch.Tensor) -> torch.Tensor:
        """``sqrt(sum(w ** 2))`` over ``axis``, kept as size-1 dimensions."""
        dims = (self.axis,) if isinstance(self.axis, int) else self.axis
        check(
            all(-w.ndim <= dim < w.ndim for dim in dims),
            "axis",
            self.axis,
            f"dimensions of a weight of rank {w.ndim}, in [-{w.ndim}, {w.ndim})",
        )
        return w.square().sum(dim=dims, keepdim=True).sqrt()


class UnitNorm(_NormConstraint):
    r"""Scales ``w`` to unit L2 norm along ``axis`` (Keras ``"unit_norm"``).

    .. math::

        w \leftarrow \frac{w}{\epsilon + \lVert w \rVert_{2,\text{axis}}}, \quad
        \epsilon = 10^{-7}

    Args:
        axis: The dimension (int) or dimensions (list of ints) the norm is taken over, default
            0; for a ``(C,)`` gamma, 0 is the whole vector.

    Example:
        >>> UnitNorm()(torch.tensor([3.0, 4.0])).tolist()
        [0.6000000238418579, 0.800000011920929]

    """

    def __init__(self, axis: int | Sequence[int] = 0) -> None:
        self.axis = validate_axis_argument(axis)

    def _project(self, w: torch.Tensor) -> torch.Tensor:
        return w / (_EPSILON + self._norms(w))


class MaxNorm(_NormConstraint):
    r"""Scales ``w`` down where its L2 norm along ``axis`` exceeds ``max_value``.

    Keras ``"max_norm"``; norms already within the bound are left (up to the epsilon) as they are.

    .. math::

        w \leftarrow w \cdot \frac{\min(n, \text{max\_value})}{\epsilon + n}, \quad
        n = \lVert w \rVert_{2,\text{axis}}, \quad \epsilon = 10^{-7}

    Args:
        max_value: The largest norm allowed, a finite float >= 0, default 2.
        axis: The dimension (int) or dimensions (list of ints) the norm is taken over, default 0.

    Example:
        >>> MaxNorm(max_value=1.0)(torch.tensor([3.0, 4.0])).tolist()
        [0.6000000238418579, 0.800000011920929]

    """

    def __init__(self, max_value: float = 2.0, axis: int | Sequence[int] = 0) -> None:
        self.max_value = checked_float(
            "max_value", max_value, "a finite float >= 0", lambda v: v >= 0
        )
        self.axis = validate_axis_argument(axis)

    def _project(self, w: torch.Tensor) -> torch.Tensor:
        norms = self._norms(w)
        return w * (norms.clamp(0.0, self.max_value) / (_EPSILON + norms))


class MinMaxNorm(_NormConstraint):
    r"""Moves the L2 norm of ``w`` along ``axis`` into ``[min_value, max_value]`` at ``rate``.

    Keras ``"min_max_norm"``. ``rate=1`` enforces the bounds exactly; a smaller rate moves the
    norm only part of the way on each application.

    .. math::

        w \leftarrow w \cdot \frac{r \cdot \text{clip}(n, \text{min\_value},
        \text{max\_value}) + (1 - r) \cdot n}{\epsilon + n}, \quad
        n = \lVert w \rVert_{2,\text{axis}}, \quad \epsilon = 10^{-7}

    Args:
        min_value: The smallest norm allowed, a finite float >= 0, default 0.
        max_value: The largest norm allowed, a finite float >= ``min_value``, default 1.
        rate: ``r``, a finite float in ``[0, 1]``, default 1.
        axis: The dimension (int) or dimensions (list of ints) the norm is taken over, default 0.

    Example:
        >>> MinMaxNorm(min_value=10.0, max_value=20.0)(torch.tensor([3.0, 4.0])).tolist()
        [6.0, 8.0]

    """

    def __init__(
        self,
        min_value: float = 0.0,
        max_value: float = 1.0,
        rate: float = 1.0,
        axis: int | Sequence[int] = 0,
    ) -> None:
        self.min_value = checked_float(
            "min_value", min_value, "a finite float >= 0", lambda v: v >= 0
        )
        self.max_value = checked_float(
            "max_value",
            max_value,
            f"a finite float >= min_value={self.min_value}",
            lambda v: v >= self.min_value,
        )
        self.rate = checked_float("rate", rate, "a finite float in [0, 1]", lambda v: 0 <= v <= 1)
        self.axis = validate_axis_argument(axis)

    def _project(self, w: torch.Tensor) -> torch.Tensor:
        norms = self._norms(w)
        desired = self.rate * norms.clamp(self.min_value, self.max_value) + (1 - self.rate) * norms
        return w * (desired / (_EPSILON + norms))


_REGISTRY = Registry(
    "constraint",
    Constraint,
    {"non_neg": NonNeg, "unit_norm": UnitNorm, "max_norm": MaxNorm, "min_max_norm": MinMaxNorm},
    {},
    "(weight) -> tensor",
)


def get(
    identifier: Constraint | str | Mapping[str, Any] | Callable[..., Any] | None,
    argument: str = "constraint",
) -> Constraint | Callable[..., Any] | None:
    """Resolve a constraint identifier as the layer's ``*_constraint`` arguments do.

    Args:
        identifier: ``None`` (returned as is); a Keras name such as ``"non_neg"`` or a class
            name such as ``"NonNeg"`` (an instance with default arguments); a config dict
            ``{"class_name": ..., "config": {...}}`` (Keras' extra ``"module"`` and
            ``"registered_name"`` keys are ignored); a :class:`Constraint` instance (returned as
            is) or class (instantiated); or any other callable ``(weight) -> tensor`` (returned
            as is).
        argument: The argument name used in error messages, e.g. ``"gamma_constraint"``.

    Returns:
        A constraint, a user callable, or ``None``.

    Raises:
        BatchNormError: An unknown name, a malformed config, or a value that is none of the
            above; the message names ``argument``, the value and the valid names.

    Example:
        >>> get("max_norm")
        MaxNorm(max_value=2.0, axis=0)
        >>> get({"class_name": "UnitNorm", "config": {"axis": [0, 1]}})
        UnitNorm(axis=[0, 1])

    """
    return _REGISTRY.get(identifier, argument)


def serialize(obj: Constraint | None, argument: str = "constraint") -> dict[str, Any] | None:
    """The JSON-serializable ``{"class_name": ..., "config": {...}}`` of a constraint.

    Args:
        obj: An instance of one of this module's classes, or ``None`` (gives ``None``).
        argument: The argument name used in error messages.

    Raises:
        BatchNormError: ``obj`` is a plain callable or an instance of an unregistered class;
            these cannot be rebuilt from a config, so use a constraint class instead.

    Example:
        >>> serialize(MaxNorm(max_value=3, axis=[0, 1]))
        {'class_name': 'MaxNorm', 'config': {'max_value': 3.0, 'axis': [0, 1]}}

    """
    return _REGISTRY.serialize(obj, argument)


def deserialize(
    config: Mapping[str, Any] | None, argument: str = "constraint"
) -> Constraint | None:
    """Rebuild a constraint from :func:`serialize`'s output (or Keras' own).

    Args:
        config: ``{"class_name": name, "config": {...}}`` where ``name`` is a class name or a
            Keras snake_case name; ``"config"`` may be omitted. ``None`` gives ``None``.
        argument: The argument name used in error messages.

    Raises:
        BatchNormError: ``config`` is not such a dict, names no constraint, or holds arguments
            the class rejects.

    Example:
        >>> deserialize({"class_name": "non_neg"})
        NonNeg()

    """
    return _REGISTRY.deserialize(config, argument)


def apply_constraints(module: torch.nn.Module) -> None:
    """Project the constrained parameters of ``module`` and all its submodules, in place.

    Calls ``m.apply_constraints()`` once for every ``m`` in ``module.modules()`` (``module``
    included) that defines such a method. Call it right after ``optimizer.step()``, or let
    :func:`register_optimizer_hook` do so.

    Args:
        module: Any ``torch.nn.Module``.

    Raises:
        BatchNormError: ``module`` is not a ``torch.nn.Module``.

    Example:
        >>> class Clip(torch.nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.tensor([-1.0, 1.0]))
        ...     def apply_constraints(self) -> None:
        ...         with torch.no_grad():
        ...             self.w.clamp_(min=0.0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), Clip())
        >>> apply_constraints(model)
        >>> model[1].w.tolist()
        [0.0, 1.0]

    """
    check(isinstance(module, torch.nn.Module), "module", module, "a torch.nn.Module")
    for submodule in module.modules():
        method = getattr(submodule, "apply_constraints", None)
        if callable(method):
            method()


def register_optimizer_hook(
    optimizer: torch.optim.Optimizer, module: torch.nn.Module
) -> RemovableHandle:
    """Make every ``optimizer.step()`` end with :func:`apply_constraints` ``(module)``.

    Uses ``optimizer.register_step_post_hook``, so the projection runs after the parameters are
    updated, as TensorFlow's optimizers apply constraints in ``apply_gradients``.

    Args:
        optimizer: A ``torch.optim.Optimizer`` over (some of) ``module``'s parameters.
        module: The model whose constraints to apply.

    Returns:
        A handle; ``handle.remove()`` stops the projection.

    Raises:
        BatchNormError: ``optimizer`` is not a ``torch.optim.Optimizer`` or ``module`` is not a
            ``torch.nn.Module``.

    Example:
        >>> layer = torch.nn.Linear(1, 1)
        >>> handle = register_optimizer_hook(torch.optim.SGD(layer.parameters(), lr=0.1), layer)
        >>> handle.remove()

    """
    check(
        isinstance(optimizer, torch.optim.Optimizer),
        "optimizer",
        optimizer,
        "a torch.optim.Optimizer",
    )
    check(isinstance(module, torch.nn.Module), "module", module, "a torch.nn.Module")

    def project(
        optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        apply_constraints(module)

    return optimizer.register_step_post_hook(project)
