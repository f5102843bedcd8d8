"""Write tests/golden/peer_configs.json and peer_masks.npz from tf_keras, Keras 3 and tf-slim.

Small fixture sets that tools/make_golden.py does not cover:

- ``peer_configs.json``: what ``get_config()`` of a tf_keras (TF-2 Keras) and a Keras 3
  ``BatchNormalization`` really contains, for layers made the ways users make them (plain,
  ``input_shape=`` (tf_keras writes ``batch_input_shape``), dtype policies, renorm, ghost
  batches, regularizers and constraints, Keras 3's ``synchronized``, a layer inside a
  ``Sequential``), with the facts a rebuilt layer must reproduce: the weights' names and shapes
  after building for ``input_shape``, ``count_params``, the regularization losses, ``dtype``,
  ``compute_dtype``, the variables' dtype and ``fused`` (tf_keras, after build).
- ``peer_masks.npz`` (+ the ``masks`` list in the JSON): one training call with a Keras mask,
  ``momentum=0`` so the moving statistics are the batch moments, for channel axes that are not
  the last one. Both libraries expand a rank-(r-1) mask at the *last* axis, whatever ``axis``
  is; the arrays record the input, mask, output and both moving statistics of each library,
  and ``mask_applied_by`` lists the libraries that used the mask (tf_keras ignores it, with a
  warning, when it runs its fused kernel).

- ``slim_collections`` (in the JSON): the global and model variables that one
  ``tf_slim.layers.batch_norm(..., zero_debias_moving_mean=True)`` call creates, by scope and
  code path (tf-slim nests the zero-debias pair under the moving mean's full name, and makes
  it model variables on its non-fused path only).

Run from the repository root in the TensorFlow environment of tools/make_golden.py (Keras 3 is
``pip install keras==3.15.1`` there)::

    /work/tfenv/bin/python tools/make_peer_fixtures.py

The output is deterministic (fixed seeds; the npz is written with fixed zip timestamps by
make_golden's writer).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras
import numpy as np
import tensorflow as tf
import tf_keras
from make_golden import to_json, versions, write_npz

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden"
GENERATOR = "/work/tfenv/bin/python tools/make_peer_fixtures.py"
L2 = {"class_name": "L2", "config": {"l2": 0.1}}
CONST3 = {"class_name": "Constant", "config": {"value": 3.0}}

# (library, constructor kwargs, input shape with the batch axis, how the layer is made)
CONFIG_CASES: list[tuple[str, dict[str, Any], tuple[int, ...], str]] = [
    ("tf_keras", {}, (4, 3), "direct"),
    ("tf_keras", {"input_shape": (3,)}, (4, 3), "direct"),
    ("tf_keras", {"axis": 1, "input_shape": (3, 4, 4)}, (2, 3, 4, 4), "direct"),
    ("tf_keras", {"axis": 1}, (2, 3, 4, 4), "sequential"),
    ("tf_keras", {"dtype": "mixed_float16"}, (2, 4, 4, 3), "direct"),
    ("tf_keras", {"dtype": "float16"}, (4, 3), "direct"),
    ("tf_keras", {"dtype": "bfloat16"}, (4, 3), "direct"),
    ("tf_keras", {"dtype": "float64"}, (4, 3), "direct"),
    ("tf_keras", {"renorm": True, "renorm_clipping": {"rmax": 2.0}}, (4, 3), "direct"),
    ("tf_keras", {"virtual_batch_size": 2, "axis": 1}, (4, 3, 2, 2), "direct"),
    ("tf_keras", {"synchronized": True}, (2, 4, 4, 3), "direct"),
    ("tf_keras", {"gamma_regularizer": L2, "gamma_initializer": CONST3}, (4, 4), "direct"),
    ("keras", {}, (4, 3), "direct"),
    ("keras", {"axis": 1}, (2, 3, 4, 4), "sequential"),
    ("keras", {"synchronized": True}, (4, 3), "direct"),
    ("keras", {"dtype": "mixed_float16"}, (2, 4, 4, 3), "direct"),
    ("keras", {"dtype": "float16"}, (4, 3), "direct"),
    ("keras", {"dtype": "bfloat16"}, (4, 3), "direct"),
    ("keras", {"dtype": "float64"}, (4, 3), "direct"),
    (
        "keras",
        {"renorm": True, "renorm_clipping": {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0}},
        (4, 3),
        "direct",
    ),
    ("keras", {"renorm": True}, (4, 3), "direct"),
    (
        "keras",
        {
            "gamma_regularizer": L2,
            "gamma_initializer": CONST3,
            "beta_constraint": {"class_name": "NonNeg", "config": {}},
            "center": True,
            "scale": True,
            "momentum": 0.9,
            "epsilon": 1e-5,
        },
        (4, 4),
        "direct",
    ),
]

# (input shape, axis, mask shape, how the mask is made)
MASK_CASES: list[tuple[tuple[int, ...], int, str]] = [
    ((6, 3, 3), 1, "rows"),  # the example: all True except m[:3, 0]
    ((5, 2, 3), 1, "random"),
    ((4, 3, 5, 2), 1, "random"),
    ((4, 5, 3), -1, "random"),
]


def short_name(weight: Any) -> str:
    """The variable's own name: ``gamma`` from ``batch_normalization/gamma:0``."""
    return weight.name.split("/")[-1].split(":")[0]


def make_layer(library: str, kwargs: dict[str, Any], shape: tuple[int, ...], how: str) -> Any:
    """The built layer, and its get_config() as the user would get it."""
    module = tf_keras if library == "tf_keras" else keras
    module.backend.clear_session()
    if how == "sequential":
        layer = module.layers.BatchNormalization(**kwargs)
        inputs = module.Input(shape[1:])
        module.Sequential([inputs, layer])
        return layer
    layer = module.layers.BatchNormalization(**kwargs)
    layer.fused_before_build = getattr(layer, "fused", None)
    if not layer.built:
        layer.build(shape)
    return layer


def config_record(library: str, kwargs: dict[str, Any], shape: tuple[int, ...], how: str):
    layer = make_layer(library, kwargs, shape, how)
    policy = layer.dtype_policy
    record = {
        "library": library,
        "version": tf_keras.__version__ if library == "tf_keras" else keras.__version__,
        "layer_kwargs": to_json(kwargs),
        "made": how,
        "input_shape": list(shape),
        "config": to_json(layer.get_config()),
        "weight_names": [short_name(w) for w in layer.weights],
        "weight_shapes": [list(w.shape) for w in layer.weights],
        "weight_dtypes": [
            w.dtype if isinstance(w.dtype, str) else w.dtype.name for w in layer.weights
        ],
        "trainable_weight_names": [short_name(w) for w in layer.trainable_weights],
        "count_params": int(layer.count_params()),
        "losses": [float(loss) for loss in layer.losses],
        "dtype": str(layer.dtype),
        "compute_dtype": str(policy.compute_dtype),
    }
    if library == "tf_keras" and how == "direct":
        record["fused_before_build"] = layer.fused_before_build
    if library == "tf_keras":
        record["fused"] = layer.fused
    if how == "sequential":  # what a model's config lists for the layer
        serialize = tf_keras.layers.serialize if library == "tf_keras" else keras.layers.serialize
        record["serialized"] = to_json(serialize(layer))
    return record


def mask_for(shape: tuple[int, ...], how: str, rng: np.random.Generator) -> np.ndarray:
    mask_shape = shape[:-1]
    if how == "rows":
        mask = np.ones(mask_shape, dtype=bool)
        mask[:3, 0] = False
        return mask
    mask = rng.random(mask_shape) > 0.35
    mask.reshape(-1)[0] = True
    return mask


def mask_record(index: int, shape, axis, how, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    rng = np.random.default_rng(1000 + index)
    x = (
        np.random.RandomState(0).randn(*shape)
        if how == "rows"
        else rng.standard_normal(shape) * 2 + 1
    ).astype(np.float32)
    mask = mask_for(shape, how, rng)
    prefix = f"mask{index}"
    arrays[f"{prefix}_x"] = x
    arrays[f"{prefix}_mask"] = mask
    applied = []
    for library, module in (("tf_keras", tf_keras), ("keras", keras)):
        module.backend.clear_session()
        layer = module.layers.BatchNormalization(axis=axis, momentum=0.0)
        y = layer(tf.constant(x), training=True, mask=tf.constant(mask))
        arrays[f"{prefix}_{library}_y"] = np.asarray(y)
        arrays[f"{prefix}_{library}_moving_mean"] = np.asarray(layer.moving_mean)
        arrays[f"{prefix}_{library}_moving_variance"] = np.asarray(layer.moving_variance)
        if not getattr(layer, "fused", False):  # tf_keras' fused kernel ignores a mask
            applied.append(library)
    return {
        "prefix": prefix,
        "input_shape": list(shape),
        "axis": axis,
        "mask": how,
        "mask_applied_by": applied,
    }


# tf-slim's zero-debias variables: (input rank, batch_norm kwargs, scope), in TF-1 graph mode.
SLIM_COLLECTION_CASES: list[tuple[int, dict[str, Any], str | None]] = [
    (2, {}, None),  # fused path (A)
    (4, {}, "bn"),  # fused path (A)
    (3, {}, None),  # legacy path (C)
    (4, {"fused": False}, "bn"),  # legacy path (C)
    (2, {"updates_collections": None}, "outer/bn"),  # fused path (A), a nested scope
    (3, {"scale": True}, "outer/bn"),  # legacy path (C), a nested scope
]


def slim_collections(rank: int, kwargs: dict[str, Any], scope: str | None) -> dict[str, Any]:
    """The global and model variables one zero-debiased ``batch_norm`` call creates."""
    sys.path.insert(0, str(Path(__file__).parent))
    from golden_slim import load_slim

    slim = load_slim()
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        inputs = tf1.placeholder(tf.float32, [4] + [3] * (rank - 1))
        outer, _, inner = (scope or "").rpartition("/")
        call = dict(kwargs, zero_debias_moving_mean=True, scope=inner or None)
        if outer:
            with tf1.variable_scope(outer):
                slim.batch_norm(inputs, **call)
        else:
            slim.batch_norm(inputs, **call)
        return {
            "rank": rank,
            "slim_kwargs": kwargs,
            "scope": scope,
            "global_variables": [v.name.removesuffix(":0") for v in tf1.global_variables()],
            "model_variables": [v.name.removesuffix(":0") for v in tf1.model_variables()],
        }


def main() -> int:
    tf.config.experimental.enable_op_determinism()
    configs = [config_record(*case) for case in CONFIG_CASES]
    arrays: dict[str, np.ndarray] = {}
    masks = [mask_record(i, *case, arrays) for i, case in enumerate(MASK_CASES)]
    write_npz(OUT / "peer_masks.npz", arrays)
    document = {
        "generator": GENERATOR,
        "versions": {**versions(), "keras": keras.__version__},
        "configs": configs,
        "masks": masks,
        "slim_collections": [slim_collections(*case) for case in SLIM_COLLECTION_CASES],
    }
    with open(OUT / "peer_configs.json", "w") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")
    print(f"wrote {len(configs)} configs and {len(masks)} mask cases to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
