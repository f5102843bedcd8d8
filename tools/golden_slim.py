"""tf-slim cases for tools/make_golden.py: ``tf_slim.layers.batch_norm`` in TF-1 graph mode.

tf-slim 1.1.0 is what ``tf.contrib.layers.batch_norm`` became; it needs three shims to run on
TensorFlow 2.21 (shared/tf-semantics.md section 0), installed by ``load_slim`` before the import.
Each case builds one graph (``tf.Graph`` + ``tf.compat.v1.Session``) with a single
``batch_norm`` call under the scope ``BatchNorm``, sets random values into its variables, runs
several training steps (output and gradients in one ``Session.run``, then the ``UPDATE_OPS``
collection in a second run when it is non-empty, as a training loop would) and one inference
step. Inference calls ``batch_norm`` again with ``reuse=True`` and ``is_training=False`` (same
kwargs, same batch_weights placeholder, fed ones), or feeds False when ``is_training`` is a
placeholder.

The dispatch of tf-semantics.md 9.2 (paths A, B and C) is predicted from the kwargs, then
observed (the path's entry point is looked up during graph construction), and the numbers are
checked against ``SlimModel``, an independent float64 numpy model: frequency-weighted moments
for batch_weights, Bessel's correction of the moving variance only when the kernel is fused,
zero-debiasing of the moving mean, batch renormalization, and activation_fn.

Manifest entry (``library: "tf_slim"``): ``id``, ``file``, ``slim_kwargs`` (the exact kwargs
but inputs/is_training/batch_weights, as JSON: ``activation_fn: "relu"`` is ``tf.nn.relu``,
``param_initializers`` values are ``tf.compat.v1.constant_initializer`` values; ``scope`` is
always ``"BatchNorm"``), ``input_shape``, ``input_dtype``, ``steps``, ``is_training`` (true,
false or ``"tensor"``), ``batch_weights``, ``updates_run`` (``UPDATE_OPS`` was non-empty and was
run after each training step), ``slim_path`` ("A", "B" or "C"), ``slim_fused`` (a FusedBatchNorm
kernel ran, so the moving variance took Bessel's correction), ``variable_names`` (relative to
the scope, in creation order; zero-debias state is ``BatchNorm/moving_mean/biased`` and
``BatchNorm/moving_mean/local_step`` because TF nests it under the moving mean's full name),
``variable_shapes`` and ``description``.

npz: ``init_<var>`` ('/' written as '__'; random values, except the variables a case keeps at
their initializer and the zero-debias state, left at zero); per training step t ``x_t``,
``batch_weights_t``, ``dy_t``, ``y_t``, ``dx_t``, ``dgamma_t`` / ``dbeta_t`` (when the variable
exists) and ``<var>_t`` after the step and its updates; then ``x_infer``, ``batch_weights_infer``
(ones), ``dy_infer``, ``y_infer``, ``dx_infer``, ``dgamma_infer`` / ``dbeta_infer``.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np
import tensorflow as tf

STEPS = 5
SCOPE = "BatchNorm"
CLIP = {"rmin": 0.8, "rmax": 1.25, "dmax": 0.5}
ACTIVATIONS = {"relu": tf.nn.relu}


def load_slim() -> ModuleType:
    """Install the three TF 2.21 shims of tf-semantics.md section 0, then import tf_slim."""
    # 1. tensorflow.python.layers.normalization lazy-loads a module path tf-keras 2.21 moved.
    legacy = importlib.import_module("tf_keras.src.legacy_tf_layers")
    legacy_normalization = importlib.import_module("tf_keras.src.legacy_tf_layers.normalization")
    sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
    sys.modules.setdefault("tf_keras.legacy_tf_layers.normalization", legacy_normalization)
    # 2. tf_slim.layers.utils.constant_value uses ops.Tensor, which TF removed.
    ops = importlib.import_module("tensorflow.python.framework.ops")
    if not hasattr(ops, "Tensor"):
        ops.Tensor = importlib.import_module("tensorflow.python.framework.tensor").Tensor
    # 3. tf_slim.layers.utils.smart_cond calls control_flow_ops.cond, which TF removed.
    control_flow_ops = importlib.import_module("tensorflow.python.ops.control_flow_ops")
    if not hasattr(control_flow_ops, "cond"):
        control_flow_ops.cond = importlib.import_module("tensorflow.python.ops.cond").cond
    return importlib.import_module("tf_slim")


# --------------------------------------------------------------------------------------------
# Case table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlimCase:
    """One tf-slim case: the JSON form of the kwargs and how the run is fed."""

    id: str
    slim_kwargs: dict[str, Any]  # JSON; activation_fn by name, param_initializers as numbers
    input_shape: tuple[int, ...]
    description: str
    is_training: bool | str = True  # True, False or "tensor" (a bool placeholder)
    batch_weights: bool = False
    single_weight_step: int | None = None  # a step where only one batch weight is non-zero
    keep_init: tuple[str, ...] = ()  # variables left at their initializer's value
    steps: int = STEPS


def build_slim_cases() -> list[SlimCase]:
    c = SlimCase
    d9 = {"decay": 0.9}
    affine = {"decay": 0.9, "scale": True}
    upd_none = {"decay": 0.9, "scale": True, "updates_collections": None}
    inits = {"beta": 0.5, "gamma": 2.0, "moving_mean": -1.0, "moving_variance": 3.0}
    zero_debias = {
        "decay": 0.9,
        "scale": True,
        "zero_debias_moving_mean": True,
        "param_initializers": {"moving_mean": 5.0},
    }
    cases = [
        # defaults: path A (rank 2), B non-fused (rank 3), B fused (rank 4)
        c("slim_r2_default", {}, (8, 4), "rank 2, defaults (decay 0.999, no gamma): path A"),
        c("slim_r3_default", {}, (4, 5, 3), "rank 3, defaults: path B, non-fused"),
        c("slim_r4_default", {}, (4, 3, 3, 3), "rank 4, defaults: path B, fused"),
        c("slim_r2_scale", affine, (8, 4), "rank 2, scale=True, decay 0.9: path A"),
        c("slim_r3_scale", affine, (4, 5, 3), "rank 3, scale=True, decay 0.9: path B"),
        c(
            "slim_r4_center_false",
            {**d9, "center": False},
            (4, 3, 3, 3),
            "rank 4, center=False (and scale False): no affine variables, path B fused",
        ),
        c(
            "slim_r2_center_false_scale",
            {**affine, "center": False},
            (8, 4),
            "rank 2, center=False, scale=True: gamma only, path A",
        ),
        # data_format NCHW
        c(
            "slim_r4_nchw",
            {**affine, "data_format": "NCHW"},
            (4, 3, 3, 2),
            "rank 4 NCHW: path B fused, channel dim 1",
        ),
        c(
            "slim_r3_nchw",
            {**affine, "data_format": "NCHW"},
            (4, 3, 5),
            "rank 3 NCHW: path B non-fused, channel dim 1",
        ),
        c(
            "slim_r2_nchw",
            {**affine, "data_format": "NCHW"},
            (8, 4),
            "rank 2 NCHW: path A reshaped to [-1,C,1,1], channel is the last dim",
        ),
        # fused=False
        c(
            "slim_r4_fused_false",
            {**affine, "fused": False},
            (4, 3, 3, 3),
            "rank 4, fused=False: path B non-fused, biased moving variance",
        ),
        c(
            "slim_r2_fused_false",
            {**affine, "fused": False},
            (8, 4),
            "rank 2, fused=False: path B non-fused, biased moving variance",
        ),
        # updates_collections=None: updates in place when the output is evaluated
        c("slim_r2_upd_none", upd_none, (8, 4), "rank 2, updates_collections=None: path A"),
        c("slim_r3_upd_none", upd_none, (4, 5, 3), "rank 3, updates_collections=None: path C"),
        c(
            "slim_r4_upd_none",
            upd_none,
            (4, 3, 3, 3),
            "rank 4, updates_collections=None: path A fused",
        ),
        c(
            "slim_r4_upd_none_fused_false",
            {**upd_none, "fused": False},
            (4, 3, 3, 3),
            "rank 4, updates_collections=None, fused=False: path C",
        ),
        # batch_weights: weighted moments, path C
        c(
            "slim_r2_batch_weights",
            affine,
            (8, 4),
            "rank 2, batch_weights with zeros: weighted moments, path C",
            batch_weights=True,
        ),
        c(
            "slim_r4_batch_weights_nchw",
            {**affine, "data_format": "NCHW"},
            (4, 3, 3, 2),
            "rank 4 NCHW, batch_weights; step 3 has a single non-zero weight: path C",
            batch_weights=True,
            single_weight_step=3,
        ),
        c(
            "slim_r3_batch_weights_upd_none",
            upd_none,
            (4, 5, 3),
            "rank 3, batch_weights with updates_collections=None: path C, in place",
            batch_weights=True,
        ),
        # zero_debias_moving_mean (moving_mean initializer 5.0 is overwritten by step 0)
        c(
            "slim_r2_zero_debias",
            zero_debias,
            (8, 4),
            "rank 2, zero_debias_moving_mean, moving_mean initializer 5.0: path A",
            keep_init=("moving_mean",),
        ),
        c(
            "slim_r4_zero_debias",
            zero_debias,
            (4, 3, 3, 3),
            "rank 4, zero_debias_moving_mean, moving_mean initializer 5.0: path A fused",
            keep_init=("moving_mean",),
        ),
        c(
            "slim_r3_zero_debias",
            zero_debias,
            (4, 5, 3),
            "rank 3, zero_debias_moving_mean, moving_mean initializer 5.0: path C",
            keep_init=("moving_mean",),
        ),
        # renorm through the core layer (path B; fused=None falls back silently)
        c(
            "slim_r4_renorm",
            {**affine, "renorm": True, "renorm_clipping": CLIP, "renorm_decay": 0.8},
            (4, 3, 3, 3),
            "rank 4, renorm with clipping and renorm_decay 0.8: path B non-fused",
        ),
        c(
            "slim_r2_renorm",
            {**affine, "renorm": True, "renorm_decay": 0.7},
            (8, 3),
            "rank 2, renorm without clipping, renorm_decay 0.7: path B",
        ),
        # activation_fn, param_initializers
        c(
            "slim_r2_relu",
            {**affine, "activation_fn": "relu"},
            (8, 4),
            "rank 2, activation_fn relu after BN: path A",
        ),
        c(
            "slim_r3_relu",
            {**affine, "activation_fn": "relu"},
            (4, 5, 3),
            "rank 3, activation_fn relu after BN: path B",
        ),
        c(
            "slim_r4_param_init",
            {**affine, "param_initializers": inits},
            (4, 3, 3, 3),
            "rank 4, param_initializers for all four variables (values kept): path B fused",
            keep_init=("beta", "gamma", "moving_mean", "moving_variance"),
        ),
        # is_training
        c(
            "slim_r2_not_training",
            affine,
            (8, 4),
            "rank 2, is_training=False: moving statistics, no update ops",
            is_training=False,
        ),
        c(
            "slim_r4_not_training",
            affine,
            (4, 3, 3, 3),
            "rank 4, is_training=False: moving statistics, no update ops",
            is_training=False,
        ),
        c(
            "slim_r2_training_tensor",
            affine,
            (8, 4),
            "rank 2, is_training a bool placeholder (True, then False to infer): path A",
            is_training="tensor",
        ),
        c(
            "slim_r3_training_tensor",
            affine,
            (4, 5, 3),
            "rank 3, is_training a bool placeholder: path B",
            is_training="tensor",
        ),
        c(
            "slim_r3_training_tensor_upd_none",
            upd_none,
            (4, 5, 3),
            "rank 3, is_training a bool placeholder, updates_collections=None: path C",
            is_training="tensor",
        ),
        # trainable=False
        c(
            "slim_r4_trainable_false",
            {**affine, "trainable": False},
            (4, 3, 3, 3),
            "rank 4, trainable=False: path B (V1 layer, frozen): batch statistics, no update ops",
        ),
        c(
            "slim_r2_trainable_false",
            {**affine, "trainable": False},
            (8, 4),
            "rank 2, trainable=False: path A still updates the moving statistics",
        ),
    ]
    return [replace(case, slim_kwargs={**case.slim_kwargs, "scope": SCOPE}) for case in cases]


# --------------------------------------------------------------------------------------------
# Prediction (tf-semantics.md 9.2) and the numpy model
# --------------------------------------------------------------------------------------------


def predict_path(case: SlimCase) -> tuple[str, bool]:
    """Return (path, fused kernel) as tf-semantics.md 9.2 describes the dispatch."""
    kw = case.slim_kwargs
    rank = len(case.input_shape)
    fused = True if kw.get("fused") is None else kw["fused"]
    renorm = kw.get("renorm", False)
    default_updates = "updates_collections" not in kw
    zero_debias = kw.get("zero_debias_moving_mean", False)
    possible = not case.batch_weights and not renorm and rank in (2, 4)
    if fused and possible and (zero_debias or rank == 2 or not default_updates):
        return "A", True
    if not case.batch_weights and default_updates and not zero_debias:
        # The V1 layer fuses iff rank 4/5 and fusion is possible (axis 1 or -1 always is).
        return "B", bool(fused) and rank in (4, 5) and not renorm
    return "C", False


def channel_axis(case: SlimCase) -> int:
    rank = len(case.input_shape)
    nchw = case.slim_kwargs.get("data_format") == "NCHW"
    return 1 if nchw and rank > 2 else rank - 1


def decay_factor(decay: float) -> float:
    """TF turns the Python float 1 - decay into a float32 tensor before using it."""
    return float(np.float32(1.0 - decay))


def clip_renorm(
    r: np.ndarray, d: np.ndarray, clip: dict[str, float], counts: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """tf_keras' renorm clipping of ``r`` (rmin, then rmax) and ``d`` (to +-dmax).

    ``counts`` tallies how many entries each key clipped, so a case can prove it binds.
    """
    if "rmin" in clip:
        counts["rmin"] += int((r < clip["rmin"]).sum())
        r = np.maximum(r, clip["rmin"])
    if "rmax" in clip:
        counts["rmax"] += int((r > clip["rmax"]).sum())
        r = np.minimum(r, clip["rmax"])
    if "dmax" in clip:
        counts["dmax"] += int((np.abs(d) > clip["dmax"]).sum())
        d = np.clip(d, -clip["dmax"], clip["dmax"])
    return r, d


class SlimModel:
    """Float64 model of one ``batch_norm`` call and its updates, from tf-semantics.md 6 and 9."""

    def __init__(self, case: SlimCase, fused: bool) -> None:
        kw = case.slim_kwargs
        self.axis = channel_axis(case)
        self.decay = float(kw.get("decay", 0.999))
        self.epsilon = float(kw.get("epsilon", 0.001))
        self.center = kw.get("center", True)
        self.scale = kw.get("scale", False)
        self.relu = kw.get("activation_fn") == "relu"
        self.renorm = kw.get("renorm", False)
        self.renorm_clipping = kw.get("renorm_clipping") or {}
        self.renorm_decay = float(kw.get("renorm_decay", 0.99))
        self.zero_debias = kw.get("zero_debias_moving_mean", False)
        self.fused = fused
        self.clip_counts = {"rmin": 0, "rmax": 0, "dmax": 0}

    def __call__(
        self,
        x: np.ndarray,
        dy: np.ndarray,
        variables: dict[str, np.ndarray],
        training: bool,
        update: bool,
        batch_weights: np.ndarray | None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return ({y, dx, dgamma, dbeta}, variables after the step), all float64."""
        rank = x.ndim
        bshape = tuple(x.shape[i] if i == self.axis else 1 for i in range(rank))
        axes = tuple(i for i in range(rank) if i != self.axis)
        eps = self.epsilon

        def var(name: str) -> np.ndarray:
            return variables[name].astype(np.float64).reshape(bshape)

        def ema(name: str, value: np.ndarray, decay: float) -> np.ndarray:
            return (var(name) - (var(name) - value) * decay_factor(decay)).reshape(-1)

        gamma = var("gamma") if self.scale else np.ones(bshape)
        beta = var("beta") if self.center else np.zeros(bshape)
        new = {k: v.astype(np.float64).copy() for k, v in variables.items()}
        if training:
            if batch_weights is None:
                freq = np.ones(x.shape)
            else:
                lead = batch_weights.astype(np.float64).reshape((-1,) + (1,) * (rank - 1))
                freq = np.broadcast_to(lead, x.shape)
            total = freq.sum(axis=axes, keepdims=True)
            safe = np.where(total > 0, total, 1.0)
            mean = np.where(total > 0, (freq * x).sum(axis=axes, keepdims=True) / safe, 0.0)
            variance = (freq * (x - mean) ** 2).sum(axis=axes, keepdims=True) / safe
            share = np.where(total > 0, freq / safe, 0.0)
            invstd = 1.0 / np.sqrt(variance + eps)
            xhat = (x - mean) * invstd
            r, d = np.ones(bshape), np.zeros(bshape)
            stddev = np.sqrt(variance + eps)
            if self.renorm:
                r, d = self._renorm_correction(stddev, mean, var)
            normalized = xhat * r + d
            pre = gamma * normalized + beta
            g = dy * (pre > 0) if self.relu else dy
            g_sum = g.sum(axis=axes, keepdims=True)
            gx_sum = (g * xhat).sum(axis=axes, keepdims=True)
            dx = gamma * r * invstd * (g - share * g_sum - share * xhat * gx_sum)
            if update:
                self._update(new, var, ema, mean, variance, stddev, x.size // x.shape[self.axis])
        else:
            invstd = 1.0 / np.sqrt(var("moving_variance") + eps)
            normalized = (x - var("moving_mean")) * invstd
            pre = gamma * normalized + beta
            g = dy * (pre > 0) if self.relu else dy
            dx = g * gamma * invstd
        out = {
            "y": np.maximum(pre, 0.0) if self.relu else pre,
            "dx": dx,
            "dgamma": (g * normalized).sum(axis=axes),
            "dbeta": g.sum(axis=axes),
        }
        return out, new

    def _renorm_correction(
        self, stddev: np.ndarray, mean: np.ndarray, var: Callable[[str], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        renorm_stddev = np.maximum(var("renorm_stddev"), math.sqrt(self.epsilon))
        r = stddev / renorm_stddev
        d = (mean - var("renorm_mean")) / renorm_stddev
        return clip_renorm(r, d, self.renorm_clipping, self.clip_counts)

    def _update(
        self,
        new: dict[str, np.ndarray],
        var: Callable[[str], np.ndarray],
        ema: Callable[[str, np.ndarray, float], np.ndarray],
        mean: np.ndarray,
        variance: np.ndarray,
        stddev: np.ndarray,
        count: int,
    ) -> None:
        if self.zero_debias:
            # tf-semantics.md 9.6: the biased shadow EMA, a step count, and biased/(1 - decay^t)
            biased_name = f"{SCOPE}/moving_mean/biased"
            step_name = f"{SCOPE}/moving_mean/local_step"
            biased = ema(biased_name, mean, self.decay)
            step = float(new[step_name]) + 1.0
            keep = float(np.float32(1.0) - np.float32(decay_factor(self.decay)))
            new[biased_name] = biased
            new[step_name] = np.asarray(step)
            new["moving_mean"] = biased / (1.0 - keep**step)
        else:
            new["moving_mean"] = ema("moving_mean", mean, self.decay)
        if self.renorm:
            new["renorm_mean"] = ema("renorm_mean", mean, self.renorm_decay)
            new["renorm_stddev"] = ema("renorm_stddev", stddev, self.renorm_decay)
            moving_stddev = ema("moving_stddev", stddev, self.decay)
            new["moving_stddev"] = moving_stddev
            new["moving_variance"] = np.maximum(moving_stddev**2 - self.epsilon, 0.0)
        else:
            value = variance * count / max(count - 1, 1) if self.fused else variance
            new["moving_variance"] = ema("moving_variance", value, self.decay)


# --------------------------------------------------------------------------------------------
# Running tf-slim
# --------------------------------------------------------------------------------------------


def slim_call_kwargs(case: SlimCase) -> dict[str, Any]:
    """The JSON kwargs turned into what batch_norm takes."""
    kwargs = dict(case.slim_kwargs)
    if "activation_fn" in kwargs:
        kwargs["activation_fn"] = ACTIVATIONS[kwargs["activation_fn"]]
    if "param_initializers" in kwargs:
        kwargs["param_initializers"] = {
            name: tf.compat.v1.constant_initializer(value)
            for name, value in kwargs["param_initializers"].items()
        }
    return kwargs


@contextmanager
def observe_path(seen: list[str]) -> Iterator[None]:
    """Record which implementation batch_norm dispatches to, without changing it.

    Path A is a call of the module function ``_fused_batch_norm``; path B looks up the core
    layer class ``normalization_layers.BatchNormalization``; anything else is path C.
    """
    module = importlib.import_module("tf_slim.layers.layers")
    fused_impl = module._fused_batch_norm
    layers_module = module.normalization_layers

    def fused_spy(*args: Any, **kwargs: Any) -> Any:
        seen.append("A")
        return fused_impl(*args, **kwargs)

    class LayersSpy:
        def __getattr__(self, name: str) -> Any:
            if name == "BatchNormalization":
                seen.append("B")
            return getattr(layers_module, name)

    module._fused_batch_norm = fused_spy
    module.normalization_layers = LayersSpy()
    try:
        yield
    finally:
        module._fused_batch_norm = fused_impl
        module.normalization_layers = layers_module


def uses_fused_kernel(graph: tf.Graph) -> bool:
    """Whether a FusedBatchNorm op is in the graph or in a cond branch's function body."""
    graph_def = graph.as_graph_def()
    nodes = [*graph_def.node]
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return any(node.op.startswith("FusedBatchNorm") for node in nodes)


def draw_batch_weights(rng: np.random.Generator, batch: int, single: bool) -> np.ndarray:
    """Positive weights with one or two zeros; or a single non-zero weight."""
    weights = rng.uniform(0.2, 2.0, size=batch)
    if single:
        keep = rng.integers(batch)
        weights[np.arange(batch) != keep] = 0.0
    else:
        weights[rng.choice(batch, size=min(2, batch - 1), replace=False)] = 0.0
    return weights.astype(np.float32)


def key(name: str) -> str:
    return name.replace("/", "__")


@dataclass
class SlimGraph:
    """The tensors of one case's graph: a training call and an inference call."""

    graph: tf.Graph
    x: tf.Tensor
    dy: tf.Tensor
    flag: tf.Tensor | None  # the is_training placeholder, when is_training is "tensor"
    batch_weights: tf.Tensor | None
    train: tuple[tf.Tensor, list[tf.Tensor]]  # output, gradients wrt [x, gamma?, beta?]
    infer: tuple[tf.Tensor, list[tf.Tensor]]
    update_ops: list[Any]
    variables: list[tf.Variable]
    names: list[str]  # relative to the scope, in creation order
    params: list[str]  # "gamma" and/or "beta", as they exist


def build_graph(slim: ModuleType, case: SlimCase, path: str, fused: bool) -> SlimGraph:
    """Build the graph, checking the dispatch and the update ops against the prediction."""
    shape = case.input_shape
    kwargs = slim_call_kwargs(case)
    graph = tf.Graph()
    with graph.as_default():
        placeholder = tf.compat.v1.placeholder
        x = placeholder(tf.float32, shape, name="x")
        dy = placeholder(tf.float32, shape, name="dy")
        tensor_flag = case.is_training == "tensor"
        flag = placeholder(tf.bool, [], name="is_training") if tensor_flag else None
        weights = placeholder(tf.float32, [shape[0]], name="w") if case.batch_weights else None
        seen: list[str] = []
        with observe_path(seen):
            y = slim.layers.batch_norm(
                x,
                is_training=flag if tensor_flag else case.is_training,
                batch_weights=weights,
                **kwargs,
            )
        observed = seen[0] if seen else "C"
        if observed != path:
            raise AssertionError(f"{case.id}: took path {observed}, tf-semantics predicts {path}")
        if uses_fused_kernel(graph) != fused:
            raise AssertionError(f"{case.id}: fused kernel is not {fused} as predicted")
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        variables = tf.compat.v1.global_variables()
        names = [v.op.name.removeprefix(f"{SCOPE}/") for v in variables]
        params = [n for n in ("gamma", "beta") if n in names]
        wrt = [x] + [variables[names.index(n)] for n in params]
        train = (y, tf.gradients(tf.reduce_sum(y * dy), wrt))
        if tensor_flag:
            infer = train  # fed False
        else:
            y_infer = slim.layers.batch_norm(
                x, is_training=False, batch_weights=weights, **kwargs, reuse=True
            )
            infer = (y_infer, tf.gradients(tf.reduce_sum(y_infer * dy), wrt))
        if tf.compat.v1.global_variables() != variables:
            raise AssertionError(f"{case.id}: the inference call created variables")
        added = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)[len(update_ops) :]
        if added:
            raise AssertionError(f"{case.id}: the inference call added update ops")
    return SlimGraph(
        graph, x, dy, flag, weights, train, infer, update_ops, variables, names, params
    )


def generate_slim_case(
    slim: ModuleType,
    case: SlimCase,
    rng: np.random.Generator,
    random_init: Callable[..., np.ndarray],
    check_close: Callable[[str, np.ndarray, np.ndarray, float], float],
) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Run one case; return (manifest entry, npz arrays, progress text)."""
    path, fused = predict_path(case)
    g = build_graph(slim, case, path, fused)
    names = g.names
    frozen_layer = path == "B" and case.slim_kwargs.get("trainable", True) is False
    trains = case.is_training is not False
    # Update ops are collected unless updates_collections=None, is_training is constant False,
    # or the core layer is frozen (a V1 layer with trainable=False skips its update).
    expect_update_ops = trains and "updates_collections" not in case.slim_kwargs
    if bool(g.update_ops) != (expect_update_ops and not frozen_layer):
        raise AssertionError(f"{case.id}: {len(g.update_ops)} update ops, not as predicted")
    updates = trains and not frozen_layer  # run from the collection, or in place

    shape = case.input_shape
    batch = shape[0]
    model = SlimModel(case, fused)
    with tf.compat.v1.Session(graph=g.graph) as session:
        session.run(tf.compat.v1.variables_initializer(g.variables))
        initial = dict(zip(names, session.run(g.variables), strict=True))
        init: dict[str, np.ndarray] = {}
        for name, variable in zip(names, g.variables, strict=True):
            leaf = name.split("/")[-1]
            if name in case.keep_init or leaf in ("biased", "local_step"):
                init[name] = initial[name]
            else:
                init[name] = random_init(rng, leaf, initial[name].shape, init).astype(np.float32)
                session.run(variable.assign(init[name]))
        arrays = {f"init_{key(n)}": init[n] for n in names}

        axis = channel_axis(case)
        bshape = tuple(shape[i] if i == axis else 1 for i in range(len(shape)))
        offset = rng.uniform(-3.0, 3.0, size=bshape)
        std = rng.uniform(0.5, 3.0, size=bshape)
        current = dict(init)
        worst = 0.0
        for step in [*range(case.steps), "infer"]:
            infer = step == "infer"
            training = trains and not infer
            x_np = (offset + std * rng.normal(size=shape)).astype(np.float32)
            dy_np = rng.normal(size=shape).astype(np.float32)
            feed = {g.x: x_np, g.dy: dy_np}
            w_np = None
            if g.batch_weights is not None:
                single = step == case.single_weight_step
                ones = np.ones(batch, np.float32)
                w_np = ones if infer else draw_batch_weights(rng, batch, single)
                feed[g.batch_weights] = w_np
            if g.flag is not None:
                feed[g.flag] = not infer
            y_np, grad_np = session.run(g.infer if infer else g.train, feed)
            if training and g.update_ops:
                session.run(g.update_ops, feed)
            after = dict(zip(names, session.run(g.variables), strict=True))

            ref, ref_vars = model(
                x_np.astype(np.float64),
                dy_np.astype(np.float64),
                current,
                training,
                training and updates,
                None if w_np is None else w_np.astype(np.float64),
            )
            result = {"y": y_np, "dx": grad_np[0]}
            result.update({f"d{n}": grad for n, grad in zip(g.params, grad_np[1:], strict=True)})
            for name, value in result.items():
                err = check_close(f"{case.id} step {step} {name}", value, ref[name], 5e-5)
                worst = max(worst, err)
            for name in names:
                err = check_close(
                    f"{case.id} step {step} {name}", after[name], ref_vars[name], 2e-5
                )
                worst = max(worst, err)
            if not (training and updates):
                for name in names:
                    if not np.array_equal(after[name], current[name]):
                        raise AssertionError(f"{case.id} step {step}: {name} changed")
            current = after

            suffix = str(step)
            arrays[f"x_{suffix}"] = x_np
            if w_np is not None:
                arrays[f"batch_weights_{suffix}"] = w_np
            arrays[f"dy_{suffix}"] = dy_np
            for name, value in result.items():
                arrays[f"{name}_{suffix}"] = value
            if not infer:
                for name in names:
                    arrays[f"{key(name)}_{suffix}"] = after[name]

    if model.renorm_clipping and not any(model.clip_counts.values()):
        raise AssertionError(f"{case.id}: renorm clipping never bound, choose tighter bounds")
    entry = {
        "id": case.id,
        "file": f"{case.id}.npz",
        "library": "tf_slim",
        "slim_kwargs": case.slim_kwargs,
        "input_shape": list(shape),
        "input_dtype": "float32",
        "steps": case.steps,
        "is_training": case.is_training,
        "batch_weights": case.batch_weights,
        "updates_run": bool(g.update_ops),
        "slim_path": path,
        "slim_fused": fused,
        "variable_names": names,
        "variable_shapes": [list(init[n].shape) for n in names],
        "description": case.description,
    }
    clipped = ""
    if model.renorm_clipping:
        clipped = " clipped " + ",".join(f"{k}:{v}" for k, v in model.clip_counts.items())
    progress = (
        f"path={path} fused={fused!s:5s} vars={len(names)} "
        f"updates_run={bool(g.update_ops)!s:5s} "
        f"worst scaled error vs numpy model {worst:.2e}{clipped}"
    )
    return entry, arrays, progress
