"""Shared plumbing of the Keras-named registries: initializers, regularizers, constraints.

:class:`Configurable` makes an object's constructor arguments its JSON config;
:class:`Registry` resolves a name, a config dict, an instance or a callable, and serializes
registered instances. Names are looked up in a dict; nothing is ever evaluated.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from batchnorm._errors import BatchNormError, check, fail

__all__ = ["Configurable", "Registry", "checked_float"]


def checked_float(
    argument: str, value: Any, expected: str, valid: Callable[[float], bool]
) -> float:
    """``value`` as a float; a :class:`BatchNormError` unless it is a finite real passing ``valid``.

    Example:
        >>> checked_float("l2", 1, "a float >= 0", lambda v: v >= 0)
        1.0

    """
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and valid(float(value))
    )
    check(ok, argument, value, expected)
    return float(value)


_C = TypeVar("_C", bound="Configurable")


class Configurable:
    """A Keras-style object whose constructor arguments are its config.

    Subclasses store every ``__init__`` argument under an attribute of the same name, holding an
    int, float, str, ``None`` or a tuple of ints (written to the config as a list), so that the
    config is JSON-serializable and ``from_config(get_config())`` rebuilds an equal object.
    """

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serializable.

        Example:
            >>> from batchnorm.initializers import RandomUniform
            >>> RandomUniform(minval=-1, maxval=1, seed=7).get_config()
            {'minval': -1.0, 'maxval': 1.0, 'seed': 7}

        """
        config = {}
        for name in inspect.signature(type(self)).parameters:
            value = getattr(self, name)
            config[name] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls: type[_C], config: Mapping[str, Any]) -> _C:
        """Build an instance from ``get_config()``'s output (keys missing take their defaults).

        Raises:
            BatchNormError: ``config`` is not a dict, has a key the constructor does not take, or
                a value the constructor rejects.

        Example:
            >>> from batchnorm.initializers import Constant
            >>> Constant.from_config({"value": 3})
            Constant(value=3.0)

        """
        if not isinstance(config, Mapping):
            raise fail("config", config, f"a dict of {cls.__name__} arguments")
        accepted = list(inspect.signature(cls).parameters)
        unknown = sorted(set(config) - set(accepted))
        check(
            not unknown,
            "config",
            dict(config),
            f"keys among {accepted} for {cls.__name__}; unknown: {unknown}",
        )
        return cls(**config)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


_T = TypeVar("_T", bound=Configurable)


class Registry(Generic[_T]):
    """Name lookup, ``get``, ``serialize`` and ``deserialize`` for one kind of Keras object.

    Args:
        kind: What the objects are, for messages ("initializer").
        base: Their base class; its registered subclasses can be serialized.
        names: Keras snake_case name to class. Each class is also reachable by its own name.
        name_defaults: Constructor arguments a snake_case name implies (Keras' ``"l1_l2"`` is
            ``L1L2(l1=0.01, l2=0.01)``); a config overrides them.
        callable_form: The signature a plain callable must have, for messages.

    Example:
        >>> from batchnorm.initializers import Initializer, Zeros
        >>> registry = Registry("initializer", Initializer, {"zeros": Zeros}, {}, "(shape)")
        >>> registry.get("Zeros", "initializer")
        Zeros()

    """

    def __init__(
        self,
        kind: str,
        base: type[_T],
        names: Mapping[str, type[_T]],
        name_defaults: Mapping[str, Mapping[str, Any]],
        callable_form: str,
    ) -> None:
        self.kind = kind
        self.base = base
        self.classes = {cls.__name__: cls for cls in names.values()}
        self.entries: dict[str, tuple[type[_T], Mapping[str, Any]]] = {
            name: (cls, name_defaults.get(name, {})) for name, cls in names.items()
        }
        self.entries.update({name: (cls, {}) for name, cls in self.classes.items()})
        self.names_text = (
            ", ".join(repr(name) for name in names)
            + " (or a class name: "
            + ", ".join(repr(name) for name in self.classes)
            + ")"
        )
        self.callable_form = callable_form

    def get(self, identifier: Any, argument: str) -> _T | Callable[..., Any] | None:
        """Resolve any accepted identifier; see the public ``get`` functions."""
        if identifier is None or isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, str):
            return self._build(identifier, {}, argument)
        if isinstance(identifier, Mapping):
            return self.deserialize(identifier, argument)
        if isinstance(identifier, type) and issubclass(identifier, self.base):
            return identifier()
        if callable(identifier):
            return identifier
        raise fail(
            argument,
            identifier,
            f"None, a name among {self.names_text}, a config dict "
            "{'class_name': ..., 'config': {...}}, "
            f"an instance of {self.base.__name__} or a callable {self.callable_form}",
        )

    def serialize(self, obj: Any, argument: str) -> dict[str, Any] | None:
        """``{"class_name": ..., "config": ...}`` of a registered instance; ``None`` for None."""
        if obj is None:
            return None
        cls = type(obj)
        if self.classes.get(cls.__name__) is cls:
            return {"class_name": cls.__name__, "config": obj.get_config()}
        raise fail(
            argument,
            obj,
            f"None or an instance of one of the {self.kind} classes "
            f"({', '.join(self.classes)}); a plain callable or an unregistered class cannot be "
            f"serialized, so use one of the {self.kind} classes instead",
        )

    def deserialize(self, config: Any, argument: str) -> _T | None:
        """The instance a ``serialize`` dict describes; ``None`` for ``None``."""
        if config is None:
            return None
        layout = "a dict {'class_name': ..., 'config': {...}}"
        if not isinstance(config, Mapping) or "class_name" not in config:
            raise fail(argument, config, layout)
        unknown = sorted(set(config) - {"class_name", "config", "module", "registered_name"})
        check(not unknown, argument, dict(config), f"{layout}; unknown keys: {unknown}")
        arguments = config.get("config", {})
        if arguments is None:
            arguments = {}
        check(
            isinstance(arguments, Mapping),
            f"{argument}['config']",
            arguments,
            f"a dict of {self.kind} arguments",
        )
        return self._build(config["class_name"], arguments, f"{argument}['class_name']")

    def _build(self, name: Any, arguments: Mapping[str, Any], argument: str) -> _T:
        """Instantiate the class registered under ``name`` with ``arguments`` over its defaults."""
        if not isinstance(name, str) or name not in self.entries:
            raise fail(argument, name, f"a {self.kind} name among {self.names_text}")
        cls, defaults = self.entries[name]
        try:
            return cls.from_config({**defaults, **arguments})
        except BatchNormError as error:
            raise BatchNormError(f"{argument}={name!r}: {error}") from error
