"""The per-process "default graph" of :mod:`batchnorm.compat.v1`: scopes and collections.

TensorFlow 1.x keeps variables in a variable store keyed by scope name and loose objects (update
ops, regularization losses, variables, outputs) in named collections of the default graph. This
module is that state, for PyTorch: one :class:`Graph` per process, reachable through the
module-level functions, emptied by :func:`reset_default_graph`.

It knows nothing about batch normalization: a scope owns an arbitrary object (the layer) and
collections hold arbitrary Python objects.

Example:
    >>> reset_default_graph()
    >>> add_to_collection("my_things", 1)
    >>> add_to_collections(["my_things", "other"], 2)
    >>> get_collection("my_things"), get_collection("other"), get_collection("missing")
    ([1, 2], [2], [])
    >>> reset_default_graph()
    >>> get_collection("my_things")
    []

"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

from batchnorm._errors import BatchNormError, check

__all__ = [
    "AUTO_REUSE",
    "GLOBAL_VARIABLES",
    "MODEL_VARIABLES",
    "REGULARIZATION_LOSSES",
    "TRAINABLE_VARIABLES",
    "UPDATE_OPS",
    "Graph",
    "GraphKeys",
    "add_to_collection",
    "add_to_collections",
    "get_collection",
    "get_default_graph",
    "reset_default_graph",
]


class GraphKeys:
    """Standard collection names, spelled as ``tf.compat.v1.GraphKeys`` spells their values.

    Example:
        >>> GraphKeys.UPDATE_OPS, GraphKeys.GLOBAL_VARIABLES
        ('update_ops', 'variables')

    """

    UPDATE_OPS = "update_ops"
    REGULARIZATION_LOSSES = "regularization_losses"
    TRAINABLE_VARIABLES = "trainable_variables"
    GLOBAL_VARIABLES = "variables"
    MODEL_VARIABLES = "model_variables"


UPDATE_OPS = GraphKeys.UPDATE_OPS
REGULARIZATION_LOSSES = GraphKeys.REGULARIZATION_LOSSES
TRAINABLE_VARIABLES = GraphKeys.TRAINABLE_VARIABLES
GLOBAL_VARIABLES = GraphKeys.GLOBAL_VARIABLES
MODEL_VARIABLES = GraphKeys.MODEL_VARIABLES


class _AutoReuse:
    """The ``reuse=AUTO_REUSE`` mode: reuse a scope that exists, create one that does not."""

    _instance: _AutoReuse | None = None

    def __new__(cls) -> _AutoReuse:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "AUTO_REUSE"


AUTO_REUSE = _AutoReuse()


def collection_names(collections: Any, argument: str) -> list[str]:
    """``None``, one collection name, or an iterable of names -> a list of names.

    Example:
        >>> collection_names("update_ops", "updates_collections")
        ['update_ops']
        >>> collection_names(None, "outputs_collections")
        []

    """
    if collections is None:
        return []
    if isinstance(collections, str):
        return [collections]
    names = list(collections) if isinstance(collections, (list, tuple, set, frozenset)) else None
    check(
        names is not None and all(isinstance(n, str) and n for n in names),
        argument,
        collections,
        "None, a collection name, or a list of collection names",
    )
    assert names is not None
    return names


class Graph:
    """Named collections plus the scope -> owner store that TensorFlow keeps per graph.

    Scopes map a name (``"BatchNorm"``, ``"block1/bn"``) to the object that owns its variables.
    Collections map a name to a list, appended to in insertion order (duplicates allowed, as in
    TensorFlow). An item may carry a TensorFlow-style name (``"BatchNorm/gamma"``) so that
    :meth:`get_collection` can filter by scope. All methods are thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._collections: dict[str, list[tuple[str | None, Any]]] = {}
        self._scopes: dict[str, Any] = {}
        self._default_name_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ collections
    def add_to_collection(self, name: str, value: Any, item_name: str | None = None) -> None:
        """Append ``value`` (named ``item_name`` for scope filters) to collection ``name``."""
        check(isinstance(name, str) and bool(name), "collection name", name, "a non-empty str")
        with self._lock:
            self._collections.setdefault(name, []).append((item_name, value))

    def add_to_collections(self, names: Any, value: Any, item_name: str | None = None) -> None:
        """Append ``value`` to each collection in ``names`` (one name or a list), once each."""
        for name in dict.fromkeys(collection_names(names, "names")):
            self.add_to_collection(name, value, item_name)

    def get_collection(self, name: str, scope: str | None = None) -> list[Any]:
        """A copy of collection ``name``; with ``scope``, only items whose name matches it.

        ``scope`` is a regular expression matched (``re.match``) against the items' names, as
        in TensorFlow; items added without a name are then left out.
        """
        with self._lock:
            items = list(self._collections.get(name, ()))
        if scope is None:
            return [value for _, value in items]
        pattern = re.compile(scope)
        return [value for item_name, value in items if item_name and pattern.match(item_name)]

    def clear_collection(self, name: str, scope: str | None = None) -> list[Any]:
        """Remove the items :meth:`get_collection` ``(name, scope)`` returns; return them."""
        with self._lock:
            items = self._collections.get(name, [])
            if scope is None:
                self._collections.pop(name, None)
                return [value for _, value in items]
            pattern = re.compile(scope)
            taken = [(n, v) for n, v in items if n and pattern.match(n)]
            kept = [(n, v) for n, v in items if not (n and pattern.match(n))]
            self._collections[name] = kept
            return [value for _, value in taken]

    def collection_keys(self) -> list[str]:
        """The names of the non-empty collections."""
        with self._lock:
            return [name for name, items in self._collections.items() if items]

    # ------------------------------------------------------------------ scopes
    def scope_names(self) -> list[str]:
        """The existing scopes, in creation order."""
        with self._lock:
            return list(self._scopes)

    def has_scope(self, scope: str) -> bool:
        """Whether ``scope`` owns variables."""
        with self._lock:
            return scope in self._scopes

    def scope_owner(self, scope: str, argument: str = "scope") -> Any:
        """The owner of ``scope``.

        Raises:
            BatchNormError: naming ``scope`` and the scopes that exist.

        """
        with self._lock:
            if scope not in self._scopes:
                known = ", ".join(repr(s) for s in self._scopes) or "none yet"
                raise BatchNormError(
                    f"{argument}={scope!r}; expected an existing scope (existing: {known})"
                )
            return self._scopes[scope]

    def unique_default_name(self, base: str) -> str:
        """The next free name among ``base``, ``base_1``, ``base_2``, ... (not reserved yet)."""
        with self._lock:
            index = self._default_name_counts.get(base, 0)
            while True:
                candidate = base if index == 0 else f"{base}_{index}"
                if candidate not in self._scopes:
                    return candidate
                index += 1

    def register_scope(self, scope: str, owner: Any, default_base: str | None = None) -> None:
        """Store ``owner`` under the new ``scope``; a default name advances its counter.

        Raises:
            BatchNormError: if ``scope`` exists already.

        """
        with self._lock:
            if scope in self._scopes:
                raise BatchNormError(f"scope={scope!r} exists already")
            self._scopes[scope] = owner
            if default_base is not None:
                index = 0 if scope == default_base else int(scope.rsplit("_", 1)[1])
                self._default_name_counts[default_base] = index + 1

    def reset(self) -> None:
        """Forget every scope, collection and default-name counter."""
        with self._lock:
            self._collections.clear()
            self._scopes.clear()
            self._default_name_counts.clear()


_DEFAULT_GRAPH = Graph()


def get_default_graph() -> Graph:
    """The process's :class:`Graph`, which the module-level functions use.

    Example:
        >>> isinstance(get_default_graph(), Graph)
        True

    """
    return _DEFAULT_GRAPH


def reset_default_graph() -> None:
    """Clear the default graph: every scope (so its variables), collection and default name.

    ``tf.compat.v1.reset_default_graph`` for :mod:`batchnorm.compat.v1`. Layers and tensors
    that callers still hold keep working; they are simply no longer registered.

    Example:
        >>> add_to_collection("losses", 3.0)
        >>> reset_default_graph()
        >>> get_collection("losses")
        []

    """
    _DEFAULT_GRAPH.reset()


def add_to_collection(name: str, value: Any) -> None:
    """Append ``value`` to the default graph's collection ``name``.

    Example:
        >>> reset_default_graph()
        >>> add_to_collection("outputs", "y")
        >>> get_collection("outputs")
        ['y']

    """
    _DEFAULT_GRAPH.add_to_collection(name, value)


def add_to_collections(names: str | Iterable[str], value: Any) -> None:
    """Append ``value`` to each of the default graph's collections ``names`` (once each).

    Example:
        >>> reset_default_graph()
        >>> add_to_collections(["a", "b", "a"], 1)
        >>> get_collection("a"), get_collection("b")
        ([1], [1])

    """
    _DEFAULT_GRAPH.add_to_collections(names, value)


def get_collection(name: str, scope: str | None = None) -> list[Any]:
    """A copy of the default graph's collection ``name`` (``[]`` when it does not exist).

    Args:
        name: The collection, e.g. :data:`UPDATE_OPS`.
        scope: Optional regular expression; keeps only the items whose TensorFlow name
            (``"BatchNorm/gamma"``, ``"BatchNorm/update"``) matches it from the start.

    Example:
        >>> reset_default_graph()
        >>> get_collection(UPDATE_OPS)
        []

    """
    return _DEFAULT_GRAPH.get_collection(name, scope)
