"""Write tests/golden/, the TensorFlow fixtures that the test suite compares batchnorm against.

Every case builds one ``tf_keras.layers.BatchNormalization`` (TF-2 Keras, which is what
``tf.keras`` was before Keras 3), sets random weights, runs several training steps under a
``tf.GradientTape`` and one inference step, and records inputs, outputs, gradients and every
weight after every step. ``configs.json`` records ``get_config``, weight names, parameter counts
and regularization losses for a few layers that are only built, never called.

TensorFlow is needed only to run this script; it is not a dependency of batchnorm, and the tests
read the fixtures with numpy alone. Run it from the repository root in a separate environment:

    python3 -m venv /work/tfenv
    /work/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 numpy
    /work/tfenv/bin/python tools/make_golden.py

Each case is also checked against an independent float64 numpy model of the semantics in
shared/tf-semantics.md (biased batch variance in the output, the EMA rule, Bessel's correction of
the moving variance on the fused path only, batch renormalization, strided ghost batches,
``trainable=False`` forcing inference), so a generator that records the wrong thing fails loudly
instead of writing fixtures. Output is deterministic: fixed seeds, op determinism on, and zip
entries with a fixed timestamp, so a rerun with the same versions writes the same bytes.

Storage notes: numpy has no bfloat16, so bfloat16 tensors (inputs, outputs and input gradients of
bfloat16 cases) are stored as float32 holding exactly the bfloat16 values; ``input_dtype`` in the
manifest says what was fed. float16 tensors are stored as float16.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_keras

GENERATOR = "/work/tfenv/bin/python tools/make_golden.py"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "golden"
SEED = 20240611
STEPS = 5
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SIXTEEN_BIT = ("float16", "bfloat16")


# --------------------------------------------------------------------------------------------
# Case table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One golden case: the exact layer kwargs, the input shape and how inputs are drawn."""

    id: str
    layer_kwargs: dict[str, Any]
    input_shape: tuple[int, ...]
    description: str
    input_dtype: str = "float32"
    steps: int = STEPS
    default_init: bool = False
    special: str | None = None  # constant_channel, large_offset_channel, tiny_variance_channel


CLIP = {"rmin": 0.8, "rmax": 1.25, "dmax": 0.5}


def build_cases() -> list[Case]:
    c = Case
    cases = [
        # ranks and axes
        c("r2_default", {}, (8, 5), "rank 2, all defaults (axis=-1)"),
        c("r3_last", {"axis": -1}, (4, 6, 5), "rank 3, axis=-1, non-fused"),
        c("r4_last", {"axis": -1}, (4, 5, 6, 3), "rank 4 NHWC, fused chosen automatically"),
        c("r5_last", {"axis": -1}, (2, 3, 4, 5, 3), "rank 5 NDHWC, fused chosen automatically"),
        c("r3_axis1", {"axis": 1}, (4, 3, 6), "rank 3, axis=1, non-fused"),
        c("r4_axis1", {"axis": 1}, (4, 3, 5, 6), "rank 4 NCHW, fused chosen automatically"),
        c("r5_axis1", {"axis": 1}, (2, 3, 4, 3, 5), "rank 5 NCDHW, fused chosen automatically"),
        c("r4_axis_m3", {"axis": -3}, (4, 3, 5, 6), "rank 4, axis=-3 (= 1), fused NCHW"),
        c("r4_axis2", {"axis": 2}, (4, 3, 4, 5), "rank 4, axis=2: not fusable, non-fused"),
        c("r5_axis2", {"axis": 2}, (2, 3, 4, 5, 2), "rank 5, axis=2: falls back to non-fused"),
        c("r4_axis13", {"axis": [1, 3]}, (4, 3, 5, 2), "rank 4, axis=[1,3]: full-rank params"),
        c("r3_axis12", {"axis": [1, 2]}, (6, 3, 4), "rank 3, axis=[1,2]: reduce batch only"),
        c("r4_axis12", {"axis": [1, 2]}, (4, 3, 4, 5), "rank 4, axis=[1,2]: full-rank params"),
        c("r4_axis31", {"axis": [3, 1]}, (4, 3, 5, 2), "rank 4, axis=[3,1]: list order kept"),
        c("r4_axis_list_m1", {"axis": [-1]}, (4, 5, 5, 3), "rank 4, one-element list [-1]"),
        c("r2_axis_list_m1", {"axis": [-1]}, (8, 4), "rank 2, one-element list [-1]"),
        # center / scale
        c("r2_nocenter", {"center": False}, (8, 4), "rank 2, center=False (no beta)"),
        c("r2_noscale", {"scale": False}, (8, 4), "rank 2, scale=False (no gamma)"),
        c("r2_noaffine", {"center": False, "scale": False}, (8, 4), "rank 2, no gamma, no beta"),
        c("r4_nocenter", {"center": False}, (4, 3, 4, 3), "rank 4 fused, center=False"),
        c("r4_noscale", {"scale": False}, (4, 3, 4, 3), "rank 4 fused, scale=False"),
        c(
            "r4_noaffine",
            {"center": False, "scale": False},
            (4, 3, 4, 3),
            "rank 4 fused, no affine",
        ),
        # momentum
        c("r2_m0.9", {"momentum": 0.9}, (8, 4), "rank 2, momentum 0.9"),
        c("r2_m0.5", {"momentum": 0.5}, (8, 4), "rank 2, momentum 0.5"),
        c("r2_m0", {"momentum": 0.0}, (8, 4), "rank 2, momentum 0: moving stats = batch stats"),
        c("r2_m1", {"momentum": 1.0}, (8, 4), "rank 2, momentum 1: moving stats frozen"),
        c("r4_m0.5", {"momentum": 0.5}, (4, 3, 4, 3), "rank 4 fused, momentum 0.5"),
        c("r4_m0", {"momentum": 0.0}, (4, 3, 4, 3), "rank 4 fused, momentum 0"),
        c("r4_m1", {"momentum": 1.0}, (4, 3, 4, 3), "rank 4 fused, momentum 1: frozen"),
        # epsilon
        c("r2_eps1e-5", {"epsilon": 1e-5}, (8, 4), "rank 2, epsilon 1e-5"),
        c("r2_eps0.1", {"epsilon": 0.1}, (8, 4), "rank 2, epsilon 0.1"),
        c(
            "r2_eps1e-8",
            {"epsilon": 1e-8},
            (8, 4),
            "rank 2, epsilon 1e-8, channel 0 has std 1e-3 so epsilon matters",
            special="tiny_variance_channel",
        ),
        c(
            "r4_eps1e-8",
            {"epsilon": 1e-8},
            (4, 3, 4, 3),
            "rank 4 fused, epsilon 1e-8 not clamped, channel 0 has std 1e-3",
            special="tiny_variance_channel",
        ),
        c("r4_eps0.1", {"epsilon": 0.1, "momentum": 0.9}, (4, 3, 4, 3), "rank 4 fused, eps 0.1"),
        # fused on/off
        c("r4_fused_false", {"fused": False, "momentum": 0.9}, (4, 3, 4, 3), "rank 4, fused=False"),
        c("r4_fused_true", {"fused": True, "momentum": 0.9}, (4, 3, 4, 3), "rank 4, fused=True"),
        c(
            "r4_axis1_fused_false",
            {"axis": 1, "fused": False, "momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4 NCHW, fused=False",
        ),
        c(
            "r4_axis1_fused_true",
            {"axis": 1, "fused": True, "momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4 NCHW, fused=True",
        ),
        c(
            "r5_fused_false",
            {"fused": False, "momentum": 0.9},
            (2, 3, 2, 4, 3),
            "rank 5, fused=False",
        ),
        c("r5_fused_true", {"fused": True, "momentum": 0.9}, (2, 3, 2, 4, 3), "rank 5, fused=True"),
        c(
            "r5_axis1_fused_true",
            {"axis": 1, "fused": True, "momentum": 0.9},
            (2, 3, 2, 4, 3),
            "rank 5 NCDHW, fused=True",
        ),
        # float64
        c(
            "r2_f64",
            {"dtype": "float64", "momentum": 0.9},
            (8, 4),
            "rank 2, float64 layer",
            input_dtype="float64",
        ),
        c(
            "r4_f64",
            {"dtype": "float64", "momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4, float64 layer (never fused)",
            input_dtype="float64",
        ),
        # 16-bit layers
        c(
            "r4_f16",
            {"dtype": "float16", "momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4, float16 layer, fused",
            input_dtype="float16",
        ),
        c(
            "r4_f16_fused_false",
            {"dtype": "float16", "fused": False, "momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4, float16 layer, fused=False (math in float32)",
            input_dtype="float16",
        ),
        c(
            "r4_bf16",
            {"dtype": "bfloat16", "momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4, bfloat16 layer, fused",
            input_dtype="bfloat16",
        ),
        c(
            "r4_mixed_f16",
            {"dtype": "mixed_float16", "momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4, mixed_float16 policy, fused",
            input_dtype="float16",
        ),
        c(
            "r2_f16",
            {"dtype": "float16", "momentum": 0.9},
            (8, 4),
            "rank 2, float16 layer, non-fused",
            input_dtype="float16",
        ),
        c(
            "r2_bf16",
            {"dtype": "bfloat16", "momentum": 0.9},
            (8, 4),
            "rank 2, bfloat16 layer, non-fused",
            input_dtype="bfloat16",
        ),
        c(
            "r2_mixed_f16",
            {"dtype": "mixed_float16", "momentum": 0.9},
            (8, 4),
            "rank 2, mixed_float16 policy, non-fused",
            input_dtype="float16",
        ),
        c(
            "r2_f32_in_f16",
            {"momentum": 0.9},
            (8, 4),
            "rank 2, float32 layer fed float16 input",
            input_dtype="float16",
        ),
        c(
            "r4_f32_in_f16",
            {"momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4 fused, float32 layer fed float16 input",
            input_dtype="float16",
        ),
        # trainable=False
        c("r2_frozen", {"trainable": False}, (8, 4), "rank 2, trainable=False: forced inference"),
        c(
            "r4_frozen",
            {"trainable": False},
            (4, 3, 4, 3),
            "rank 4 fused, trainable=False: forced inference",
        ),
        # edge cases
        c("r2_batch1", {"momentum": 0.9}, (1, 6), "rank 2, batch of 1: var 0, output beta"),
        c("r4_batch1", {"momentum": 0.9}, (1, 3, 4, 3), "rank 4 fused, batch of 1 (n=12)"),
        c(
            "r4_batch1_pixel1",
            {"momentum": 0.9},
            (1, 1, 1, 4),
            "rank 4 fused, one element per channel: Bessel guard n/max(n-1,1)",
        ),
        c(
            "r2_const_channel",
            {"momentum": 0.9},
            (8, 4),
            "rank 2, channel 0 constant (1.5)",
            special="constant_channel",
        ),
        c(
            "r4_const_channel",
            {"momentum": 0.9},
            (4, 3, 3, 4),
            "rank 4 fused, channel 0 constant (1.5)",
            special="constant_channel",
        ),
        c(
            "r2_large_offset",
            {"momentum": 0.9},
            (16, 4),
            "rank 2, channel 1 has mean 1e3 and std 1",
            special="large_offset_channel",
        ),
        c(
            "r4_large_offset",
            {"momentum": 0.9},
            (4, 4, 4, 3),
            "rank 4 fused, channel 1 has mean 1e3 and std 1",
            special="large_offset_channel",
        ),
        c(
            "r4_large_offset_fused_false",
            {"momentum": 0.9, "fused": False},
            (4, 4, 4, 3),
            "rank 4 non-fused, channel 1 has mean 1e3 and std 1",
            special="large_offset_channel",
        ),
        c("r2_default_init", {}, (8, 4), "rank 2, default initializers", default_init=True),
        c(
            "r4_default_init",
            {"momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4 fused, default initializers",
            default_init=True,
        ),
        # batch renormalization and ghost batches (non-fused only)
        c(
            "r2_renorm_clip",
            {"renorm": True, "renorm_clipping": CLIP, "renorm_momentum": 0.7, "momentum": 0.9},
            (8, 3),
            "rank 2, renorm with rmin/rmax/dmax clipping",
        ),
        c(
            "r4_renorm",
            {"renorm": True, "momentum": 0.9},
            (4, 3, 4, 3),
            "rank 4, renorm, default clipping (none), forces non-fused",
        ),
        c(
            "r2_ghost",
            {"virtual_batch_size": 2, "momentum": 0.9},
            (8, 3),
            "rank 2, virtual_batch_size=2: 4 strided ghost batches",
        ),
        c(
            "r4_ghost_axis1",
            {"virtual_batch_size": 2, "axis": 1, "momentum": 0.9},
            (4, 3, 3, 2),
            "rank 4 NCHW, virtual_batch_size=2",
        ),
        c(
            "r2_ghost_renorm",
            {
                "virtual_batch_size": 4,
                "renorm": True,
                "renorm_clipping": CLIP,
                "renorm_momentum": 0.8,
                "momentum": 0.9,
            },
            (8, 3),
            "rank 2, virtual_batch_size=4 with renorm: r, d from ghost-averaged stats",
        ),
    ]
    ids = [case.id for case in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids")
    return cases


def build_config_cases() -> list[tuple[dict[str, Any], tuple[int, ...]]]:
    def const(value: float) -> dict[str, Any]:
        return {"class_name": "Constant", "config": {"value": value}}

    return [
        ({}, (4, 3)),
        ({"center": False, "scale": False}, (2, 4, 4, 3)),
        ({"center": False}, (4, 3)),
        ({"gamma_regularizer": "l2", "gamma_initializer": const(3.0)}, (4, 4)),
        (
            {
                "gamma_regularizer": {"class_name": "L2", "config": {"l2": 0.1}},
                "gamma_initializer": const(3.0),
                "beta_regularizer": {"class_name": "L1", "config": {"l1": 0.2}},
                "beta_initializer": const(-2.0),
            },
            (2, 4),
        ),
        (
            {
                "gamma_regularizer": {"class_name": "L1L2", "config": {"l1": 0.01, "l2": 0.02}},
                "beta_regularizer": {"class_name": "L1L2", "config": {"l1": 0.03, "l2": 0.0}},
                "gamma_initializer": const(0.5),
                "beta_initializer": const(1.5),
            },
            (4, 5),
        ),
        (
            {
                "gamma_constraint": {"class_name": "NonNeg", "config": {}},
                "beta_constraint": {
                    "class_name": "MaxNorm",
                    "config": {"max_value": 2.0, "axis": 0},
                },
            },
            (4, 3),
        ),
        (
            {
                "renorm": True,
                "renorm_clipping": {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0},
                "renorm_momentum": 0.9,
                "moving_variance_initializer": const(4.0),
            },
            (4, 3),
        ),
        ({"renorm": True, "axis": 1}, (2, 3, 4, 4)),
        ({"virtual_batch_size": 2}, (4, 3)),
        ({"virtual_batch_size": 2, "axis": 1}, (4, 3, 2, 2)),
        ({"axis": [1, 3], "momentum": 0.9, "epsilon": 1e-5}, (2, 3, 4, 5)),
        ({"dtype": "mixed_float16", "trainable": False}, (2, 3, 3, 4)),
        (
            {"beta_initializer": "ones", "moving_mean_initializer": "ones", "dtype": "float64"},
            (4, 3),
        ),
    ]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """Turn a Keras config (ListWrapper, tuples, numpy scalars) into plain JSON values."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [to_json(v) for v in value]
    raise TypeError(f"cannot serialize {type(value).__name__}: {value!r}")


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed .npz (as np.savez_compressed does) with fixed zip timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def storable(array: np.ndarray) -> np.ndarray:
    """numpy has no bfloat16: store bfloat16 values exactly as float32."""
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return array


def short_name(weight: tf.Variable) -> str:
    return weight.name.split("/")[-1].split(":")[0]


def normalize_axes(axis: int | Sequence[int], rank: int) -> list[int]:
    axes = [axis] if isinstance(axis, int) else list(axis)
    return [a % rank for a in axes]


def expected_fused(kwargs: dict[str, Any], rank: int) -> bool:
    """The fused decision of tf-semantics.md section 4, predicted without TensorFlow."""
    axis = kwargs.get("axis", -1)
    fused = kwargs.get("fused")
    dtype = kwargs.get("dtype", "float32")
    compute = "float16" if dtype == "mixed_float16" else dtype
    single = isinstance(axis, int) or len(axis) == 1
    raw = axis if isinstance(axis, int) else axis[0]
    possible = (
        not kwargs.get("renorm", False)
        and single
        and raw in (-4, -3, -1, 1, 3, 4)
        and kwargs.get("virtual_batch_size") is None
        and compute in ("float16", "bfloat16", "float32")
    )
    if fused is False or not possible or rank not in (4, 5):
        return False
    normalized = raw % rank
    if rank == 5 and normalized not in (1, 4):
        return False  # silent fallback, also with fused=True
    return normalized in (1, 3) if rank == 4 else True


# --------------------------------------------------------------------------------------------
# Independent numpy model (float64)
# --------------------------------------------------------------------------------------------


class NumpyModel:
    """Float64 model of one tf_keras BatchNormalization call, written from tf-semantics.md."""

    def __init__(self, kwargs: dict[str, Any], rank: int, fused: bool) -> None:
        self.axes = normalize_axes(kwargs.get("axis", -1), rank)
        self.epsilon = float(kwargs.get("epsilon", 1e-3))
        self.momentum = float(kwargs.get("momentum", 0.99))
        self.center = kwargs.get("center", True)
        self.scale = kwargs.get("scale", True)
        self.trainable = kwargs.get("trainable", True)
        self.virtual_batch_size = kwargs.get("virtual_batch_size")
        self.renorm = kwargs.get("renorm", False)
        self.renorm_clipping = kwargs.get("renorm_clipping") or {}
        self.renorm_momentum = float(kwargs.get("renorm_momentum", 0.99))
        self.fused = fused

    def weight_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Parameter shape per tf-semantics.md section 2."""
        shape = list(input_shape)
        axes = self.axes
        if self.virtual_batch_size is not None:
            shape = [shape[0], 1, *shape[1:]]
            axes = [a + 1 for a in axes]
        elif len(axes) == 1:
            return (shape[axes[0]],)
        return tuple(shape[i] if i in axes else 1 for i in range(len(shape)))

    def __call__(
        self, x: np.ndarray, dy: np.ndarray, weights: dict[str, np.ndarray], training: bool
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return ({y, dx, dgamma, dbeta}, weights after the call), all float64."""
        training = training and self.trainable
        axes = self.axes
        xe, dye = x, dy
        ghost = self.virtual_batch_size is not None
        if ghost:
            batch = x.shape[0]
            lead = (self.virtual_batch_size, batch // self.virtual_batch_size)
            lead = lead if training else (batch, 1)
            xe = x.reshape(lead + x.shape[1:])
            dye = dy.reshape(xe.shape)
            axes = [a + 1 for a in axes]
        ndim = xe.ndim
        bshape = tuple(xe.shape[i] if i in axes else 1 for i in range(ndim))
        any_weight = next(iter(weights.values()))
        wshape = any_weight.shape

        def param(name: str) -> np.ndarray:
            return weights[name].astype(np.float64).reshape(bshape)

        gamma = param("gamma") if self.scale else np.ones(bshape)
        beta = param("beta") if self.center else np.zeros(bshape)
        sum_axes = tuple(i for i in range(ndim) if i not in axes)
        stat_axes = tuple(i for i in sum_axes if not (ghost and i == 1))
        eps = self.epsilon
        new = {k: v.astype(np.float64).copy() for k, v in weights.items()}

        def ema(var: np.ndarray, value: np.ndarray, momentum: float) -> np.ndarray:
            # TF makes a tensor of the Python float 1 - momentum, i.e. float32, and only then
            # casts it to the variable's dtype: float64 layers decay by float32(1 - momentum).
            decay = float(np.float32(1.0 - momentum))
            return (var - (var - value) * decay).reshape(wshape)

        if training:
            mean = xe.mean(axis=stat_axes, keepdims=True)
            var = ((xe - mean) ** 2).mean(axis=stat_axes, keepdims=True)
            if ghost:
                batch_mean = mean.mean(axis=1, keepdims=True)
                batch_var = var.mean(axis=1, keepdims=True)
            else:
                batch_mean, batch_var = mean, var
            invstd = 1.0 / np.sqrt(var + eps)
            xhat = (xe - mean) * invstd
            r = np.ones(bshape)
            d = np.zeros(bshape)
            if self.renorm:
                stddev = np.sqrt(batch_var + eps)
                renorm_stddev = np.maximum(param("renorm_stddev"), math.sqrt(eps))
                r = stddev / renorm_stddev
                d = (batch_mean - param("renorm_mean")) / renorm_stddev
                clip = self.renorm_clipping
                if "rmin" in clip:
                    r = np.maximum(r, clip["rmin"])
                if "rmax" in clip:
                    r = np.minimum(r, clip["rmax"])
                if "dmax" in clip:
                    d = np.clip(d, -clip["dmax"], clip["dmax"])
            normalized = xhat * r + d
            y = gamma * normalized + beta
            g_mean = dye.mean(axis=stat_axes, keepdims=True)
            gx_mean = (dye * xhat).mean(axis=stat_axes, keepdims=True)
            dx = gamma * r * invstd * (dye - g_mean - xhat * gx_mean)
            m = self.momentum
            new["moving_mean"] = ema(param("moving_mean"), batch_mean, m)
            if self.renorm:
                rm = self.renorm_momentum
                new["renorm_mean"] = ema(param("renorm_mean"), batch_mean, rm)
                new["renorm_stddev"] = ema(param("renorm_stddev"), stddev, rm)
                moving_stddev = ema(param("moving_stddev"), stddev, m)
                new["moving_stddev"] = moving_stddev
                new["moving_variance"] = np.maximum(moving_stddev**2 - eps, 0.0)
            else:
                value = batch_var
                if self.fused:
                    count = math.prod(xe.shape[i] for i in stat_axes)
                    value = batch_var * count / max(count - 1, 1)
                new["moving_variance"] = ema(param("moving_variance"), value, m)
        else:
            invstd = 1.0 / np.sqrt(param("moving_variance") + eps)
            normalized = (xe - param("moving_mean")) * invstd
            y = gamma * normalized + beta
            dx = dye * gamma * invstd
        out = {
            "y": y.reshape(x.shape),
            "dx": dx.reshape(x.shape),
            "dgamma": (dye * normalized).sum(axis=sum_axes).reshape(wshape),
            "dbeta": dye.sum(axis=sum_axes).reshape(wshape),
        }
        return out, new


def tolerance(case: Case) -> float:
    """Scaled tolerance of TF against the float64 model, for outputs and gradients."""
    dtype = case.layer_kwargs.get("dtype", "float32")
    if case.special == "large_offset_channel":
        # TF computes y = x * inv + (beta - mean * inv) in float32: with x near 1e3 the
        # cancellation leaves errors of order 1e3 * 2**-24 * inv (about 1e-4).
        return 1e-3
    if "bfloat16" in (dtype, case.input_dtype):
        return 4e-2
    if "float16" in (case.input_dtype,) or dtype in ("float16", "mixed_float16"):
        return 1e-2
    if dtype == "float64":
        return 1e-10
    return 5e-5


def check_close(what: str, got: np.ndarray, ref: np.ndarray, tol: float) -> float:
    """Raise AssertionError unless |got - ref| <= tol * max(1, max|ref|); return the error."""
    got64 = np.asarray(got).astype(np.float64)
    if got64.shape != ref.shape:
        raise AssertionError(f"{what}: shape {got64.shape} != model {ref.shape}")
    scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    err = float(np.max(np.abs(got64 - ref))) / scale if ref.size else 0.0
    if not np.isfinite(got64).all() or err > tol:
        raise AssertionError(f"{what}: scaled max error {err:.3g} > {tol:.3g}")
    return err


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def case_rng(case_id: str) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(case_id.encode())])


def random_init(
    rng: np.random.Generator, name: str, shape: tuple[int, ...], values: dict[str, np.ndarray]
) -> np.ndarray:
    if name == "gamma":
        gamma = rng.uniform(0.5, 1.5, size=shape)
        flat = gamma.reshape(-1)
        count = max(1, flat.size // 4) if flat.size > 1 else 0
        flat[rng.choice(flat.size, size=count, replace=False)] *= -1.0
        return flat.reshape(shape)
    if name in ("beta", "moving_mean", "renorm_mean"):
        return rng.normal(0.0, 1.0, size=shape)
    if name == "moving_variance":
        return rng.uniform(0.5, 2.0, size=shape)
    if name == "moving_stddev":
        return np.sqrt(values["moving_variance"])  # as TF initializes it: sqrt(moving_variance)
    if name == "renorm_stddev":
        return rng.uniform(0.7, 1.5, size=shape)
    raise ValueError(f"no initializer for weight {name!r}")


def feed_dtype(case: Case) -> tf.DType:
    return tf.as_dtype(case.input_dtype)


def make_input(
    rng: np.random.Generator,
    case: Case,
    offset: np.ndarray,
    std: np.ndarray,
    axes: list[int],
) -> tuple[tf.Tensor, np.ndarray]:
    """Draw x in float64, round it to the feed dtype; return (tensor fed, stored array)."""
    x = offset + std * rng.normal(size=case.input_shape)
    index = tuple(0 if i in axes else slice(None) for i in range(len(case.input_shape)))
    if case.special == "constant_channel":
        x[index] = 1.5
    elif case.special == "tiny_variance_channel":
        x[index] = 1e-3 * rng.normal(size=x[index].shape)
    elif case.special == "large_offset_channel":
        index = tuple(1 if i == axes[0] else slice(None) for i in range(len(case.input_shape)))
        x[index] = 1000.0 + rng.normal(size=x[index].shape)
    if case.input_dtype == "float64":
        tensor = tf.constant(x)
    else:
        tensor = tf.cast(tf.constant(x.astype(np.float32)), feed_dtype(case))
    return tensor, tensor.numpy()


def loss_dtype(layer: tf_keras.layers.BatchNormalization) -> tf.DType:
    """The output's dtype, widened to float32 when it is 16-bit."""
    compute = tf.as_dtype(layer.compute_dtype)
    return tf.float32 if compute in (tf.float16, tf.bfloat16) else compute


def run_call(
    layer: tf_keras.layers.BatchNormalization,
    x: tf.Tensor,
    dy_np: np.ndarray,
    training: bool,
) -> dict[str, np.ndarray]:
    params = {short_name(w): w for w in layer.weights if short_name(w) in ("gamma", "beta")}
    with tf.GradientTape() as tape:
        tape.watch(x)
        for variable in params.values():
            tape.watch(variable)  # trainable=False makes them non-trainable, not watched by default
        y = layer(x, training=training)
        y_loss = tf.cast(y, loss_dtype(layer))
        loss = tf.reduce_sum(y_loss * tf.constant(dy_np, dtype=y_loss.dtype))
    names = list(params)
    grads = tape.gradient(loss, [x] + [params[n] for n in names])
    out = {"y": y.numpy(), "dx": grads[0].numpy()}
    for name, grad in zip(names, grads[1:], strict=True):
        if grad is None:
            raise AssertionError(f"no gradient for {name}")
        out[f"d{name}"] = grad.numpy()
    return out


def generate_case(case: Case, index: int, total: int) -> tuple[dict[str, Any], dict[str, Any]]:
    tf_keras.backend.clear_session()
    rng = case_rng(case.id)
    rank = len(case.input_shape)
    layer = tf_keras.layers.BatchNormalization(**case.layer_kwargs)
    layer.build(tf.TensorShape(case.input_shape))
    tf_fused = getattr(layer, "fused", None)
    fused = expected_fused(case.layer_kwargs, rank)
    if tf_fused is not None and bool(tf_fused) != fused:
        raise AssertionError(f"{case.id}: layer.fused={tf_fused}, tf-semantics predicts {fused}")
    model = NumpyModel(case.layer_kwargs, rank, fused)
    names = [short_name(w) for w in layer.weights]
    shapes = [tuple(w.shape.as_list()) for w in layer.weights]
    for name, shape in zip(names, shapes, strict=True):
        if shape != model.weight_shape(case.input_shape):
            raise AssertionError(f"{case.id}: {name} shape {shape} != predicted")
    np_dtypes = [w.dtype.as_numpy_dtype for w in layer.weights]

    arrays: dict[str, np.ndarray] = {}
    if case.default_init:
        init = dict(zip(names, layer.get_weights(), strict=True))
    else:
        init = {}
        for name, shape, dtype in zip(names, shapes, np_dtypes, strict=True):
            init[name] = random_init(rng, name, shape, init).astype(dtype)
        layer.set_weights([init[n] for n in names])
    for name in names:
        arrays[f"init_{name}"] = init[name]

    axes = model.axes
    bshape = tuple(case.input_shape[i] if i in axes else 1 for i in range(rank))
    offset = rng.uniform(-3.0, 3.0, size=bshape)
    std = rng.uniform(0.5, 3.0, size=bshape)
    tol = tolerance(case)
    stat_tol = 1e-10 if tol < 1e-9 else 2e-5
    worst = 0.0
    weights = dict(init)
    for step in [*range(case.steps), "infer"]:
        training = step != "infer"
        x, x_np = make_input(rng, case, offset, std, axes)
        dy_np = rng.normal(size=case.input_shape)
        # dy has the dtype of the loss: float32 for 16-bit outputs, else the output dtype
        dy_np = dy_np.astype(loss_dtype(layer).as_numpy_dtype)
        result = run_call(layer, x, dy_np, training)
        after = dict(zip(names, layer.get_weights(), strict=True))

        ref, ref_weights = model(
            x_np.astype(np.float64), dy_np.astype(np.float64), weights, training
        )
        for key, value in result.items():
            worst = max(worst, check_close(f"{case.id} step {step} {key}", value, ref[key], tol))
        for name in names:
            worst = max(
                worst,
                check_close(
                    f"{case.id} step {step} {name}", after[name], ref_weights[name], stat_tol
                ),
            )
        frozen = model.momentum == 1.0 and not model.renorm
        if not training or not model.trainable or frozen:
            for name in names:
                if not np.array_equal(after[name], weights[name]):
                    raise AssertionError(f"{case.id} step {step}: {name} changed")
        weights = after

        suffix = str(step)
        arrays[f"x_{suffix}"] = storable(x_np)
        arrays[f"dy_{suffix}"] = storable(dy_np)
        for key, value in result.items():
            arrays[f"{key}_{suffix}"] = storable(value)
        if training:
            for name in names:
                arrays[f"{name}_{suffix}"] = after[name]

    entry = {
        "id": case.id,
        "file": f"{case.id}.npz",
        "library": "tf_keras",
        "layer_kwargs": case.layer_kwargs,
        "input_shape": list(case.input_shape),
        "input_dtype": case.input_dtype,
        "steps": case.steps,
        "tf_fused": None if tf_fused is None else bool(tf_fused),
        "weight_names": names,
        "weight_shapes": [list(s) for s in shapes],
        "config": to_json(layer.get_config()),
        "description": case.description,
    }
    print(
        f"[{index + 1:2d}/{total}] {case.id:28s} fused={tf_fused!s:5s} "
        f"weights={len(names)} worst scaled error vs numpy model {worst:.2e}",
        flush=True,
    )
    return entry, arrays


def generate_config(kwargs: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
    tf_keras.backend.clear_session()
    layer = tf_keras.layers.BatchNormalization(**kwargs)
    before = to_json(layer.get_config())
    layer.build(tf.TensorShape(input_shape))
    return {
        "layer_kwargs": kwargs,
        "input_shape": list(input_shape),
        "config_before_build": before,
        "config_after_build": to_json(layer.get_config()),
        "count_params": int(layer.count_params()),
        "weight_names": [short_name(w) for w in layer.weights],
        "trainable_weight_names": [short_name(w) for w in layer.trainable_weights],
        "non_trainable_weight_names": [short_name(w) for w in layer.non_trainable_weights],
        "losses": [float(loss) for loss in layer.losses],
    }


def versions() -> dict[str, str]:
    return {
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    tf.config.experimental.enable_op_determinism()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.npz"), out / "manifest.json", out / "configs.json"]:
        stale.unlink(missing_ok=True)

    cases = build_cases()
    print(f"writing {len(cases)} cases to {out} with TensorFlow {tf.__version__}", flush=True)
    entries = []
    for index, case in enumerate(cases):
        entry, arrays = generate_case(case, index, len(cases))
        write_npz(out / entry["file"], arrays)
        entries.append(entry)

    manifest = {
        "generator": " ".join([GENERATOR, *argv]),
        "versions": versions(),
        "seed": SEED,
        "notes": "bfloat16 tensors are stored as float32 holding the exact bfloat16 values.",
        "cases": entries,
    }
    with open(out / "manifest.json", "w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.write("\n")

    configs = [generate_config(kwargs, shape) for kwargs, shape in build_config_cases()]
    with open(out / "configs.json", "w") as handle:
        json.dump(configs, handle, indent=1)
        handle.write("\n")
    print(f"wrote {len(configs)} config records", flush=True)

    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"done: {len(entries)} cases, {size / 1e6:.2f} MB in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
