r"""TensorFlow 1.x batch normalization: ``tf.contrib.layers.batch_norm`` and the V1 layer.

:func:`batch_norm` is tf-slim's function (``tf.contrib.layers.batch_norm``, seed 002) over
:class:`batchnorm.BatchNormalization`: variables live in a per-process store keyed by
``scope``, and the moving-statistics updates either happen in place or wait in a collection
(``UPDATE_OPS``) until you run them, as TensorFlow's update ops do:

.. code-block:: python

    y = v1.batch_norm(x, is_training=True, scope="bn1")
    loss(y).backward()
    optimizer.step()
    v1.run_update_ops()          # TensorFlow: tf.control_dependencies(UPDATE_OPS)

The TensorFlow graph collections it fills are plain lists here (:func:`get_collection`,
:func:`add_to_collection`, :class:`GraphKeys`); :func:`reset_default_graph` empties the scopes
and collections. :class:`BatchNormalization` is the V1 Keras layer (``tf.compat.v1.layers`` /
``tf.compat.v1.keras.layers``): ``trainable=False`` freezes gamma and beta but the layer still
normalizes with batch statistics in training.

Example:
    >>> import torch
    >>> from batchnorm.compat import v1
    >>> v1.reset_default_graph()
    >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    >>> y = v1.batch_norm(x, decay=0.5, epsilon=0.0)
    >>> y.round(decimals=4).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    >>> v1.get_variables("BatchNorm")["moving_mean"].tolist()   # not updated yet
    [0.0, 0.0]
    >>> v1.run_update_ops()
    1
    >>> v1.get_variables("BatchNorm")["moving_mean"].tolist()
    [1.0, 10.0]

"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from batchnorm._errors import (
    BatchNormError,
    check,
    check_epsilon,
    check_momentum,
    check_renorm_clipping,
)
from batchnorm.compat._slim_path import SlimPath, slim_path
from batchnorm.compat._store import (
    AUTO_REUSE,
    GLOBAL_VARIABLES,
    MODEL_VARIABLES,
    REGULARIZATION_LOSSES,
    TRAINABLE_VARIABLES,
    UPDATE_OPS,
    GraphKeys,
    add_to_collection,
    add_to_collections,
    collection_names,
    get_collection,
    get_default_graph,
    reset_default_graph,
)
from batchnorm.functional import Options, batch_norm_checked
from batchnorm.layer import BatchNormalizationV1, PendingUpdate

BatchNormalization = BatchNormalizationV1

__all__ = [
    "AUTO_REUSE",
    "DATA_FORMAT_NCHW",
    "DATA_FORMAT_NHWC",
    "GLOBAL_VARIABLES",
    "MODEL_VARIABLES",
    "REGULARIZATION_LOSSES",
    "TRAINABLE_VARIABLES",
    "UPDATE_OPS",
    "BatchNormalization",
    "GraphKeys",
    "SlimPath",
    "add_to_collection",
    "add_to_collections",
    "batch_norm",
    "get_collection",
    "get_layer",
    "get_regularization_loss",
    "get_variables",
    "global_variables",
    "model_variables",
    "reset_default_graph",
    "run_update_ops",
    "slim_path",
    "trainable_variables",
]

DATA_FORMAT_NHWC = "NHWC"
DATA_FORMAT_NCHW = "NCHW"
DEFAULT_SCOPE = "BatchNorm"

# TensorFlow's variable names (tf-slim, relative to the scope) -> the layer's attribute names.
_VARIABLE_ATTRIBUTES = {
    "gamma": "gamma",
    "beta": "beta",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
    "moving_stddev": "moving_stddev",
    "renorm_mean": "renorm_mean",
    "renorm_stddev": "renorm_stddev",
}
# The zero-debias pair: tf-slim creates it one scope deeper, under the moving mean's full name
# (scope "bn" holds "bn/bn/moving_mean/biased"), so its relative name starts with the scope.
_ZERO_DEBIAS_ATTRIBUTES = {
    "moving_mean/biased": "moving_mean_biased",
    "moving_mean/local_step": "local_step",
}
_INITIALIZER_KEYS = ("beta", "gamma", "moving_mean", "moving_variance")
_REGULARIZER_KEYS = ("beta", "gamma")
# The variables tf-slim adds to ``variables_collections`` (renorm and zero-debias state it
# does not add).
_COLLECTED_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")
# Options that decide which variables exist; a reused scope must keep them.
_VARIABLE_OPTIONS = (
    "data_format",
    "center",
    "scale",
    "renorm",
    "zero_debias_moving_mean",
    "trainable",
)


# ---------------------------------------------------------------------- argument checks
def _is_training_value(is_training: Any) -> bool:
    """``is_training`` as a Python bool: a bool, or a one-element bool tensor read now."""
    if isinstance(is_training, (bool, np.bool_)):
        return bool(is_training)
    if isinstance(is_training, torch.Tensor):
        check(
            is_training.dtype == torch.bool and is_training.numel() == 1,
            "is_training",
            is_training,
            "a bool or a 0-d bool tensor",
        )
        return bool(is_training.item())
    raise BatchNormError(f"is_training={is_training!r}; expected a bool or a 0-d bool tensor")


def _channel_axis(data_format: Any, rank: int) -> int:
    """The layer's ``axis`` for tf-slim's ``data_format`` (NCHW rank 2: the last dim)."""
    if data_format not in (DATA_FORMAT_NHWC, DATA_FORMAT_NCHW):
        raise BatchNormError(
            f"data_format={data_format!r}; expected 'NHWC' or 'NCHW' "
            "(TensorFlow: data_format has to be either NCHW or NHWC.)"
        )
    return 1 if data_format == DATA_FORMAT_NCHW and rank >= 3 else -1


def _checked_dict(value: Any, argument: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """``None`` or a dict whose keys are among ``keys`` -> a dict."""
    if value is None:
        return {}
    check(isinstance(value, Mapping), argument, value, f"None or a dict with keys among {keys}")
    unknown = sorted(str(k) for k in value if k not in keys)
    check(not unknown, argument, dict(value), f"keys among {list(keys)} (unknown: {unknown})")
    return dict(value)


def _variables_collections(value: Any) -> dict[str, list[str]]:
    """tf-slim's ``variables_collections``: None, names, or a dict per variable -> per variable."""
    if isinstance(value, Mapping):
        per_variable = _checked_dict(value, "variables_collections", _COLLECTED_VARIABLES)
        return {
            name: collection_names(per_variable.get(name), f"variables_collections[{name!r}]")
            for name in _COLLECTED_VARIABLES
        }
    names = collection_names(value, "variables_collections")
    return dict.fromkeys(_COLLECTED_VARIABLES, names)


def _updates_collections(value: Any) -> tuple[list[str], bool]:
    """``updates_collections`` -> (collection names, whether it is the default UPDATE_OPS)."""
    names = collection_names(value, "updates_collections")
    return names, isinstance(value, str) and value == UPDATE_OPS


# ---------------------------------------------------------------------- scope resolution
def _resolve_scope(scope: Any, reuse: Any) -> tuple[str, bool, str | None]:
    """(scope name, whether it exists, default base name or None) for ``scope``/``reuse``."""
    check(
        reuse is None or isinstance(reuse, bool) or reuse is AUTO_REUSE,
        "reuse",
        reuse,
        "None, True, False or AUTO_REUSE",
    )
    graph = get_default_graph()
    if scope is None:
        if reuse is True or reuse is AUTO_REUSE:
            raise BatchNormError(
                f"reuse={reuse!r} with scope=None: reusing needs the scope's name "
                "(TensorFlow: reuse=True cannot be used without a name_or_scope); pass scope="
            )
        return graph.unique_default_name(DEFAULT_SCOPE), False, DEFAULT_SCOPE
    check(isinstance(scope, str) and bool(scope), "scope", scope, "None or a non-empty str")
    exists = graph.has_scope(scope)
    if exists and not (reuse is True or reuse is AUTO_REUSE):
        raise BatchNormError(
            f"scope={scope!r} exists already and reuse={reuse!r}; pass reuse=True (or "
            "AUTO_REUSE) to share its variables, or choose another scope"
        )
    if not exists and reuse is True:
        known = ", ".join(repr(s) for s in graph.scope_names()) or "none yet"
        raise BatchNormError(
            f"scope={scope!r} with reuse=True, but that scope has no variables yet (existing: "
            f"{known}); create it first with reuse=None, or pass reuse=AUTO_REUSE"
        )
    return scope, exists, None


class _Scope:
    """One scope's state: its layer and the options that fixed its variables."""

    def __init__(self, name: str, layer: BatchNormalizationV1, variable_options: dict[str, Any]):
        self.name = name
        self.layer = layer
        self.variable_options = variable_options


class _RegularizationLoss:
    """A zero-argument callable: the current penalty of one regularized variable.

    What :data:`REGULARIZATION_LOSSES` holds (TensorFlow holds a tensor that a session
    re-evaluates; here the call recomputes it from the variable's current value, in the
    autograd graph).
    """

    def __init__(self, layer: BatchNormalization, variable: str, name: str) -> None:
        self._layer = layer
        self._variable = variable
        self.name = name

    def __call__(self) -> torch.Tensor:
        """The penalty, a 0-d tensor differentiable in the variable."""
        regularizer = getattr(self._layer, f"{self._variable}_regularizer")
        return regularizer(getattr(self._layer, self._variable))

    def __repr__(self) -> str:
        return f"<regularization loss {self.name}>"


def _register_variables(
    scope: str,
    layer: BatchNormalization,
    variables_collections: dict[str, list[str]],
    regularizers: dict[str, Any],
    path: SlimPath,
) -> None:
    """Put a new scope's variables and penalties into the collections tf-slim fills.

    Every variable is global and all but the zero-debias pair are model variables; that pair
    is a model variable too on tf-slim's non-fused paths, not on its fused one (measured with
    tf-slim 1.1: tests/golden/peer_configs.json, ``slim_collections``).
    """
    graph = get_default_graph()
    zero_debias = {f"{scope}/{suffix}" for suffix in _ZERO_DEBIAS_ATTRIBUTES}
    for name, tensor in _layer_variables(layer).items():
        full_name = f"{scope}/{name}"
        collections = [GLOBAL_VARIABLES]
        if name not in zero_debias or path.name != "fused":
            collections.append(MODEL_VARIABLES)
        if name in ("gamma", "beta") and layer.trainable:
            collections.append(TRAINABLE_VARIABLES)
        collections += variables_collections.get(name, [])
        graph.add_to_collections(collections, tensor, full_name)
    for name in ("gamma", "beta"):  # Keras order, as layer.losses
        if regularizers.get(name) is not None and getattr(layer, name) is not None:
            loss_name = f"{scope}/{name}/Regularizer"
            loss = _RegularizationLoss(layer, name, loss_name)
            graph.add_to_collection(REGULARIZATION_LOSSES, loss, loss_name)


def _layer_variables(layer: BatchNormalization) -> dict[str, torch.Tensor]:
    """The layer's variables that exist, in Keras order, under tf-slim's names.

    The names are relative to the scope, which is the layer's name.
    """
    names = {
        **_VARIABLE_ATTRIBUTES,
        **{f"{layer.name}/{suffix}": attr for suffix, attr in _ZERO_DEBIAS_ATTRIBUTES.items()},
    }
    return {
        name: getattr(layer, attr)
        for name, attr in names.items()
        if getattr(layer, attr) is not None
    }


# ---------------------------------------------------------------------- batch_norm
def batch_norm(
    inputs: torch.Tensor,
    decay: float = 0.999,
    center: bool = True,
    scale: bool = False,
    epsilon: float = 0.001,
    activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    param_initializers: Mapping[str, Any] | None = None,
    param_regularizers: Mapping[str, Any] | None = None,
    updates_collections: str | list[str] | None = UPDATE_OPS,
    is_training: bool | torch.Tensor = True,
    reuse: bool | None = None,
    variables_collections: list[str] | Mapping[str, Any] | None = None,
    outputs_collections: list[str] | None = None,
    trainable: bool = True,
    batch_weights: torch.Tensor | None = None,
    fused: bool | None = None,
    data_format: str = DATA_FORMAT_NHWC,
    zero_debias_moving_mean: bool = False,
    scope: str | None = None,
    renorm: bool = False,
    renorm_clipping: Mapping[str, Any] | None = None,
    renorm_decay: float = 0.99,
    adjustment: Callable[[torch.Size], tuple[Any, Any]] | None = None,
) -> torch.Tensor:
    r"""``tf.contrib.layers.batch_norm``: batch normalization with variables kept per scope.

    Normalizes over every axis but the channel axis (the last one for ``NHWC``, dimension 1
    for ``NCHW`` at rank >= 3, the last one at rank 2):

    .. math::

        y = \text{activation\_fn}\Big(\gamma\,\frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}
            + \beta\Big)

    with ``mu, sigma^2`` the batch mean and biased variance (weighted by ``batch_weights``)
    when ``is_training``, else the moving statistics. Each training step updates

    .. math::

        \text{moving\_mean} \leftarrow \text{moving\_mean}
            - (\text{moving\_mean} - \mu)(1 - \text{decay})

        \text{moving\_variance} \leftarrow \text{moving\_variance}
            - (\text{moving\_variance} - c\,\sigma^2)(1 - \text{decay})

    where ``c = n / max(n - 1, 1)`` (``n`` values per channel) when the implementation
    tf-slim would pick stores the Bessel-corrected variance, and ``c = 1`` otherwise: see
    :func:`slim_path` for the table (e.g. corrected for rank 2 and 4, biased for rank 3 or
    with ``batch_weights``). ``gamma`` (only with ``scale=True``) and ``beta`` (only with
    ``center=True``) are trainable ``nn.Parameter``\ s; the rest are buffers.

    **Scopes.** Variables live in a per-process store keyed by ``scope``. ``scope=None`` makes
    a new scope each call: ``"BatchNorm"``, then ``"BatchNorm_1"``, ... An explicit ``scope``
    that exists needs ``reuse=True`` (or ``AUTO_REUSE``) and then shares its variables; the
    options that decide which variables exist (``data_format``, ``center``, ``scale``,
    ``renorm``, ``zero_debias_moving_mean``, ``trainable``) must then be the same, while
    ``decay``, ``epsilon``, ``renorm_clipping``, ``renorm_decay``, ``adjustment``,
    ``updates_collections`` and ``fused`` apply to that call only (TensorFlow reads them per
    call). ``param_initializers``, ``param_regularizers`` and ``variables_collections`` take
    effect when a scope is created. :func:`get_variables`, :func:`get_layer` and
    :func:`trainable_variables` give access to a scope's state; :func:`reset_default_graph`
    forgets every scope.

    **Updates.** With the default ``updates_collections=UPDATE_OPS`` a training call leaves
    the moving statistics unchanged and appends its pending update to that collection; each
    item of ``get_collection(UPDATE_OPS)`` is a callable that applies one update when called,
    and :func:`run_update_ops` applies and removes them all (run it after the optimizer step,
    as ``tf.control_dependencies(update_ops)`` would). An update applies the EMA step to the
    statistics as they are when it runs, so two pending updates compose like two TensorFlow
    update ops. ``updates_collections=None`` updates in place during the call. Inference
    (``is_training`` False) creates no update.

    Args:
        inputs: A tensor of rank >= 2, batch first.
        decay: Moving-average decay in [0, 1] (Keras' ``momentum``). Default 0.999.
        center: Add the learned offset ``beta``. Default True.
        scale: Multiply by the learned ``gamma``. Default **False** (tf-slim's default).
        epsilon: Added to the variance, >= 0. Default 0.001.
        activation_fn: Callable applied to the output (e.g. ``torch.relu``), or None.
        param_initializers: Dict with keys among ``beta``, ``gamma``, ``moving_mean``,
            ``moving_variance``; values as :mod:`batchnorm.initializers` accepts (a name, a
            config dict, an instance, or a callable ``(shape, dtype=None) -> array``).
        param_regularizers: Dict with keys among ``beta``, ``gamma``; values as
            :mod:`batchnorm.regularizers` accepts. Each adds to ``REGULARIZATION_LOSSES`` a
            zero-argument callable returning the current penalty (see
            :func:`get_regularization_loss`).
        updates_collections: A collection name or list of names for the pending updates
            (default ``UPDATE_OPS``), or None to update in place.
        is_training: A Python bool or a one-element bool tensor (read at call time). True:
            batch statistics and an update; False: the moving statistics, no update.
        reuse: None/False to create the scope, True to reuse an existing one, ``AUTO_REUSE``
            for either. Needs an explicit ``scope`` to be True.
        variables_collections: Extra collections for ``gamma``, ``beta``, ``moving_mean``,
            ``moving_variance``: None, a list of names, or a dict from those variable names to
            lists of names. Every variable also goes to ``GLOBAL_VARIABLES``, and to
            ``MODEL_VARIABLES`` but for the zero-debias pair on tf-slim's fused path.
        outputs_collections: Collection name(s) that receive the output tensor.
        trainable: True puts ``gamma``/``beta`` in ``TRAINABLE_VARIABLES`` with
            ``requires_grad=True``. False freezes them (V1 semantics): training still
            normalizes with batch statistics; the moving statistics still update on tf-slim's
            fused and legacy paths, but not on its core-layer path, whose V1 layer drops a
            frozen layer's update ops (see :func:`slim_path`).
        batch_weights: Shape ``(batch,)``, non-negative frequency weights: weighted moments
            ``mean = sum(w x) / sum(w)``, ``var = sum(w (x - mean)^2) / sum(w)``.
        fused: Our code path only (None/True fast, False reference); it also takes part in
            tf-slim's choice of implementation, hence in the stored variance.
        data_format: ``"NHWC"`` (default) or ``"NCHW"``.
        zero_debias_moving_mean: Keep ``<scope>/moving_mean/biased`` and
            ``<scope>/moving_mean/local_step`` (tf-slim's names: ``BatchNorm/BatchNorm/
            moving_mean/biased`` in full) and set ``moving_mean = biased / (1 - decay^step)``
            at each update.
        scope: The variable scope's name; None for a new default one.
        renorm: Batch Renormalization (``moving_stddev``, ``renorm_mean``, ``renorm_stddev``).
        renorm_clipping: Dict with keys among ``rmax``, ``rmin``, ``dmax``.
        renorm_decay: Decay of the renorm statistics, in [0, 1]. Default 0.99.
        adjustment: Callable ``(input shape) -> (scale, bias)`` applied to the normalized
            values before gamma and beta, in training only.

    Returns:
        The normalized (and activated) tensor, shaped like ``inputs``.

    Raises:
        BatchNormError: for a bad argument (named with its value), ``data_format`` other than
            NHWC/NCHW, an input of rank < 2, an existing scope without ``reuse=True``,
            ``reuse=True`` on a missing scope or without ``scope``, or a reused scope called
            with different variable-defining options. A failed call registers nothing.

    Deliberate differences from TensorFlow:
        TensorFlow raises "renorm is not supported with batch_weights, updates_collections or
        zero_debias_mean"; here renorm works with all three. TensorFlow's legacy path ignores
        ``adjustment``; here it applies on every path. ``is_training`` tensors are read when
        the call is made (eager), not when updates run.

    Example:
        >>> import torch
        >>> from batchnorm.compat import v1
        >>> v1.reset_default_graph()
        >>> x = torch.arange(24.0).reshape(2, 3, 2, 2)
        >>> y = v1.batch_norm(x, scale=True, data_format="NCHW", updates_collections=None,
        ...                   scope="bn", decay=0.9)
        >>> y.shape, sorted(v1.get_variables("bn"))
        (torch.Size([2, 3, 2, 2]), ['beta', 'gamma', 'moving_mean', 'moving_variance'])
        >>> v1.get_variables("bn")["moving_mean"]          # updated in place: 0.1 * mean
        tensor([0.7500, 1.1500, 1.5500])
        >>> y_eval = v1.batch_norm(x, scale=True, data_format="NCHW", is_training=False,
        ...                        scope="bn", reuse=True)
        >>> [p.shape for p in v1.trainable_variables()]
        [torch.Size([3]), torch.Size([3])]

    """
    check(isinstance(inputs, torch.Tensor), "inputs", type(inputs).__name__, "a torch.Tensor")
    rank = inputs.dim()
    check(rank >= 2, "inputs.shape", tuple(inputs.shape), "a tensor of rank >= 2 (batch first)")
    axis = _channel_axis(data_format, rank)
    training = _is_training_value(is_training)
    decay = check_momentum(decay, "decay")
    epsilon = check_epsilon(epsilon)
    renorm_decay = check_momentum(renorm_decay, "renorm_decay")
    renorm_clipping = check_renorm_clipping(renorm_clipping)
    for flag, value in (
        ("center", center),
        ("scale", scale),
        ("trainable", trainable),
        ("renorm", renorm),
        ("zero_debias_moving_mean", zero_debias_moving_mean),
    ):
        check(isinstance(value, bool), flag, value, "True or False")
    check(fused is None or isinstance(fused, bool), "fused", fused, "None, True or False")
    check(
        activation_fn is None or callable(activation_fn),
        "activation_fn",
        activation_fn,
        "None or a callable (e.g. torch.relu)",
    )
    check(
        adjustment is None or callable(adjustment),
        "adjustment",
        adjustment,
        "None or a callable (input shape) -> (scale, bias)",
    )
    check(
        batch_weights is None or isinstance(batch_weights, torch.Tensor),
        "batch_weights",
        type(batch_weights).__name__,
        "None or a tensor of shape (batch,)",
    )
    initializers = _checked_dict(param_initializers, "param_initializers", _INITIALIZER_KEYS)
    regularizers = _checked_dict(param_regularizers, "param_regularizers", _REGULARIZER_KEYS)
    per_variable_collections = _variables_collections(variables_collections)
    update_collection_names, default_updates = _updates_collections(updates_collections)
    output_collection_names = collection_names(outputs_collections, "outputs_collections")
    scope_name, exists, default_base = _resolve_scope(scope, reuse)

    variable_dtype = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    path = slim_path(
        rank,
        fused=fused,
        batch_weights=batch_weights is not None,
        renorm=renorm,
        adjustment=adjustment is not None,
        zero_debias_moving_mean=zero_debias_moving_mean,
        default_updates_collections=default_updates,
        variable_dtype=variable_dtype,
    )
    variable_options = {
        "data_format": data_format,
        "center": center,
        "scale": scale,
        "renorm": renorm,
        "zero_debias_moving_mean": zero_debias_moving_mean,
        "trainable": trainable,
    }
    construction_options = {
        "momentum": decay,
        "epsilon": epsilon,
        "renorm_clipping": renorm_clipping,
        "renorm_momentum": renorm_decay,
        "adjustment": adjustment,
        "deferred_updates": bool(update_collection_names),
        "fused": fused,
        "moving_variance_correction": path.moving_variance_correction,
    }
    graph = get_default_graph()
    if exists:
        state = graph.scope_owner(scope_name)
        for option in _VARIABLE_OPTIONS:
            wanted, created = variable_options[option], state.variable_options[option]
            if wanted != created:
                raise BatchNormError(
                    f"{option}={wanted!r}, but scope {scope_name!r} was created with "
                    f"{option}={created!r}; a reused scope keeps the options that decide "
                    "its variables"
                )
        layer = state.layer
    else:
        layer = BatchNormalizationV1(
            axis=axis,
            center=center,
            scale=scale,
            **{f"{key}_initializer": value for key, value in initializers.items()},
            **{f"{key}_regularizer": value for key, value in regularizers.items()},
            renorm=renorm,
            trainable=trainable,
            name=scope_name,
            zero_debias_moving_mean=zero_debias_moving_mean,
            input_shape=tuple(inputs.shape[1:]),
            dtype=variable_dtype,
            device=inputs.device,
            **construction_options,
        )
        state = _Scope(scope_name, layer, variable_options)

    # This call's options (checked above under tf-slim's names), on the functional: the
    # scope's layer owns the variables and is never reconfigured per call.
    options = Options(
        axis=axis,
        momentum=decay,
        epsilon=epsilon,
        fused=fused,
        moving_variance_correction=path.moving_variance_correction,
        renorm=renorm,
        renorm_clipping=renorm_clipping,
        renorm_momentum=renorm_decay,
        virtual_batch_size=None,
        virtual_batch_layout="strided",
        adjustment=adjustment,
        zero_debias_moving_mean=zero_debias_moving_mean,
    )
    x, layout, normalise, update = layer._prepare_call(inputs, training)
    if not trainable and path.name != "core_layer":
        update = normalise  # tf-slim's fused and legacy paths update a frozen layer too
    result = batch_norm_checked(
        x,
        layer._state(),
        layer.gamma,
        layer.beta,
        options,
        training=normalise,
        batch_weights=batch_weights,
        layout=layout,
        state_checked=True,
    )
    new_updates = []
    if update and result.update is not None:
        if update_collection_names:  # deferred: the collections hold them, not the layer
            new_updates.append(PendingUpdate(layer, result.update))
        else:
            layer._commit(result.new_stats)
    elif normalise and result.update is not None:  # a frozen core-layer scope
        layer._commit_frozen(result.new_stats)
    outputs = result.output

    if not exists:
        graph.register_scope(scope_name, state, default_base)
        _register_variables(scope_name, layer, per_variable_collections, regularizers, path)
    for update in new_updates:
        graph.add_to_collections(update_collection_names, update, f"{scope_name}/update")
    if activation_fn is not None:
        outputs = activation_fn(outputs)
    if output_collection_names:
        graph.add_to_collections(output_collection_names, outputs, scope_name)
    return outputs


# ---------------------------------------------------------------------- accessors
def get_layer(scope: str) -> BatchNormalization:
    """The :class:`BatchNormalization` module that owns ``scope``'s variables.

    Raises:
        BatchNormError: if ``scope`` does not exist (the message lists those that do).

    Example:
        >>> import torch
        >>> from batchnorm.compat import v1
        >>> v1.reset_default_graph()
        >>> _ = v1.batch_norm(torch.randn(4, 3), scope="bn")
        >>> v1.get_layer("bn").name, v1.get_layer("bn").momentum
        ('bn', 0.999)

    """
    return get_default_graph().scope_owner(scope).layer


def get_variables(scope: str) -> dict[str, torch.Tensor]:
    """``scope``'s variables under TensorFlow's names, those that exist.

    Names: ``gamma`` and ``beta`` (leaf ``nn.Parameter`` objects; a backward pass fills their
    ``.grad``), ``moving_mean``, ``moving_variance``, with renorm ``moving_stddev``,
    ``renorm_mean``, ``renorm_stddev``, with zero-debias ``<scope>/moving_mean/biased`` and
    ``<scope>/moving_mean/local_step`` (tf-slim nests that pair under the moving mean's full
    name: ``BatchNorm/BatchNorm/moving_mean/biased``). The tensors are the live state: write
    them in place (under ``torch.no_grad()``) to set a variable.

    Raises:
        BatchNormError: if ``scope`` does not exist.

    Example:
        >>> import torch
        >>> from batchnorm.compat import v1
        >>> v1.reset_default_graph()
        >>> _ = v1.batch_norm(torch.randn(4, 3), zero_debias_moving_mean=True)
        >>> list(v1.get_variables("BatchNorm"))[2:]
        ['moving_variance', 'BatchNorm/moving_mean/biased', 'BatchNorm/moving_mean/local_step']

    """
    return _layer_variables(get_layer(scope))


def trainable_variables(scope: str | None = None) -> list[torch.Tensor]:
    """``TRAINABLE_VARIABLES``: the ``gamma``/``beta`` of trainable scopes, for an optimizer.

    Args:
        scope: Optional regular expression on names such as ``"bn1/beta"``.

    Example:
        >>> import torch
        >>> from batchnorm.compat import v1
        >>> v1.reset_default_graph()
        >>> _ = v1.batch_norm(torch.randn(4, 3), scale=True, scope="a")
        >>> _ = v1.batch_norm(torch.randn(4, 2), scope="b")
        >>> optimizer = torch.optim.SGD(v1.trainable_variables(), lr=0.1)
        >>> len(v1.trainable_variables()), len(v1.trainable_variables("b"))
        (3, 1)

    """
    return get_collection(TRAINABLE_VARIABLES, scope)


def global_variables(scope: str | None = None) -> list[torch.Tensor]:
    """``GLOBAL_VARIABLES``: every variable of every scope (or of those matching ``scope``).

    Example:
        >>> import torch
        >>> from batchnorm.compat import v1
        >>> v1.reset_default_graph()
        >>> _ = v1.batch_norm(torch.randn(4, 3))
        >>> len(v1.global_variables())
        3

    """
    return get_collection(GLOBAL_VARIABLES, scope)


def model_variables(scope: str | None = None) -> list[torch.Tensor]:
    """``MODEL_VARIABLES``: the variables a checkpoint of the model needs.

    tf-slim's membership: every variable but the zero-debias pair of a scope created on its
    fused path (as in this example, rank 2).

    Example:
        >>> import torch
        >>> from batchnorm.compat import v1
        >>> v1.reset_default_graph()
        >>> _ = v1.batch_norm(torch.randn(4, 3), zero_debias_moving_mean=True)
        >>> len(v1.model_variables()), len(v1.global_variables())
        (3, 5)

    """
    return get_collection(MODEL_VARIABLES, scope)


def get_regularization_loss(scope: str | None = None) -> torch.Tensor:
    """The sum of the current ``REGULARIZATION_LOSSES`` penalties (0 when there are none).

    Args:
        scope: Optional regular expression on names such as ``"bn1/gamma/Regularizer"``.

    Example:
        >>> import torch
        >>> from batchnorm.compat import v1
        >>> v1.reset_default_graph()
        >>> _ = v1.batch_norm(torch.randn(4, 2), scale=True,
        ...                   param_initializers={"gamma": "ones"},
        ...                   param_regularizers={"gamma": "l2"})
        >>> round(v1.get_regularization_loss().item(), 6)      # 0.01 * (1 + 1)
        0.02

    """
    penalties = [loss() for loss in get_collection(REGULARIZATION_LOSSES, scope)]
    if not penalties:
        return torch.zeros(())
    return torch.stack([p.reshape(()) for p in penalties]).sum()


def run_update_ops(collection: str = UPDATE_OPS, scope: str | None = None) -> int:
    """Apply the pending updates in ``collection`` in order, then remove them from it.

    The equivalent of running ``tf.get_collection(UPDATE_OPS)`` in a session; call it after
    the optimizer step of each training iteration.

    Args:
        collection: The collection, default ``UPDATE_OPS``.
        scope: Optional regular expression; only updates of matching scopes run (and leave).

    Returns:
        The number of updates applied.

    Example:
        >>> import torch
        >>> from batchnorm.compat import v1
        >>> v1.reset_default_graph()
        >>> _ = v1.batch_norm(torch.tensor([[0.0], [2.0]]), decay=0.5)
        >>> v1.run_update_ops(), v1.get_variables("BatchNorm")["moving_mean"].item()
        (1, 0.5)
        >>> v1.run_update_ops()
        0

    """
    updates = get_default_graph().clear_collection(collection, scope)
    for update in updates:
        update()
    return len(updates)
