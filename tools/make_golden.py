"""Write tests/golden/, the TensorFlow fixtures that the test suite compares batchnorm against.

Three libraries, named by each manifest entry's ``library``:

- ``tf_keras``: ``tf_keras.layers.BatchNormalization`` (TF-2 Keras, which is what ``tf.keras``
  was before Keras 3), including its training extensions: batch renormalization, ghost batches
  (``virtual_batch_size``), ``adjustment`` and ``call(..., mask=...)``.
- ``tf_keras_v1``: the V1 class behind ``tf.compat.v1.keras.layers.BatchNormalization``
  (``trainable=False`` still normalizes with batch statistics, ``fused=None`` falls back).
- ``tf_slim``: ``tf_slim.layers.batch_norm`` (``tf.contrib.layers.batch_norm``) run in TF-1
  graph mode; see tools/golden_slim.py for how those cases run and what they record.

Every Keras case builds one layer, sets random weights, runs several training steps under a
``tf.GradientTape`` and one inference step, and records inputs, outputs, gradients and every
weight after every step. ``configs.json`` records ``get_config``, weight names, parameter counts
and regularization losses for a few layers that are only built, never called.

Manifest fields beyond the base format (``id``, ``file``, ``library``, ``layer_kwargs``,
``input_shape``, ``input_dtype``, ``steps``, ``tf_fused``, ``weight_names``, ``weight_shapes``,
``config``, ``description``), present only where they apply:

- ``infer_shape``: the inference step's input shape when it differs from ``input_shape``
  (ghost batches: inference accepts any batch size).
- ``adjustment: true``: the layer got ``adjustment=lambda shape: (tf.constant(adjust_scale),
  tf.constant(adjust_bias))``, the two arrays stored in the npz with the broadcast parameter
  shape ((C,) for the last axis, (1, C, 1, 1) for axis=1 at rank 4). ``layer_kwargs`` omits it.
- ``mask: true``: each step's call got ``mask=mask_<t>`` (bool, the input shape without its
  last axis; step 2's mask is all False); ``mask_applied`` says whether TF used it (a fused
  layer ignores it with a warning).

TensorFlow is needed only to run this script; it is not a dependency of batchnorm, and the tests
read the fixtures with numpy alone. Run it from the repository root in a separate environment:

    python3 -m venv /work/tfenv
    /work/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 tf-slim==1.1.0 numpy
    /work/tfenv/bin/python tools/make_golden.py

Each case is also checked against an independent float64 numpy model of the semantics in
shared/tf-semantics.md (biased batch variance in the output, the EMA rule, Bessel's correction of
the moving variance on the fused path only, batch renormalization with its clipping, strided
ghost batches, exact masked moments, the adjustment order ``((x_hat*r + d)*a_s + a_b)*gamma +
beta``, ``trainable=False`` forcing inference in V2 but not in V1), so a generator that records
the wrong thing fails loudly instead of writing fixtures; renorm cases with clipping must clip
at least once. Output is deterministic: fixed seeds, op determinism on, and zip entries with a
fixed timestamp, so a rerun with the same versions writes the same bytes.

Storage notes: numpy has no bfloat16, so bfloat16 tensors (inputs, outputs and input gradients of
bfloat16 cases) are stored as float32 holding exactly the bfloat16 values; ``input_dtype`` in the
manifest says what was fed. float16 tensors are stored as float16.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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
from golden_slim import build_slim_cases, clip_renorm, generate_slim_case, load_slim
from tf_keras.src.layers.normalization.batch_normalization_v1 import (
    BatchNormalization as BatchNormalizationV1,
)

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
    library: str = "tf_keras"  # or "tf_keras_v1": the tf.compat.v1.keras class
    mask: str | None = None  # "random": a bool mask per step, passed to call(mask=...)
    adjustment: bool = False  # a fixed (scale, bias) pair, stored as adjust_scale/adjust_bias
    infer_batch: int | None = None  # batch size of the inference step when it differs
    check_clipping: bool = True  # renorm clipping must bind at least once


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
    cases += build_extension_cases()
    ids = [case.id for case in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids")
    return cases


def build_extension_cases() -> list[Case]:
    """Training extensions: renorm, ghost batches, adjustment, masks, and the V1 class."""
    c = Case
    const4 = {"class_name": "Constant", "config": {"value": 4.0}}
    renorm = {"renorm": True, "momentum": 0.9}
    return [
        # batch renormalization
        c(
            "r2_renorm_rmax",
            {**renorm, "renorm_clipping": {"rmax": 1.1}, "renorm_momentum": 0.5},
            (8, 3),
            "rank 2, renorm clipping with rmax only (rmin 0, dmax inf)",
        ),
        c(
            "r2_renorm_rmin_dmax",
            {**renorm, "renorm_clipping": {"rmin": 0.9, "dmax": 0.3}, "renorm_momentum": 0.6},
            (8, 4),
            "rank 2, renorm clipping with rmin and dmax only",
        ),
        c(
            "r2_renorm_noclip",
            {**renorm, "renorm_momentum": 0.5},
            (8, 3),
            "rank 2, renorm without clipping, renorm_momentum 0.5 != momentum 0.9",
        ),
        c(
            "r4_renorm_clip",
            {**renorm, "renorm_clipping": CLIP, "renorm_momentum": 0.8},
            (4, 3, 3, 3),
            "rank 4 NHWC, renorm with clipping, renorm_momentum 0.8",
        ),
        c(
            "r4_axis1_renorm_clip",
            {**renorm, "axis": 1, "renorm_clipping": CLIP, "renorm_momentum": 0.8},
            (4, 3, 3, 2),
            "rank 4 NCHW (axis=1), renorm with clipping",
        ),
        c(
            "r2_renorm_noaffine",
            {**renorm, "center": False, "scale": False, "renorm_clipping": CLIP},
            (8, 3),
            "rank 2, renorm with clipping, center=False, scale=False",
        ),
        c(
            "r3_renorm_noscale",
            {**renorm, "scale": False, "renorm_clipping": CLIP, "renorm_momentum": 0.7},
            (4, 5, 3),
            "rank 3, renorm with clipping, scale=False",
        ),
        c(
            "r2_renorm_mvinit4",
            {
                **renorm,
                "moving_variance_initializer": const4,
                "renorm_clipping": {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0},
                "renorm_momentum": 0.9,
            },
            (8, 4),
            "rank 2, renorm, moving_variance_initializer 4.0 and default initial weights: "
            "moving_stddev = renorm_stddev = 2",
            default_init=True,
        ),
        # ghost batches; inference uses another batch size
        c(
            "r2_ghost_infer3",
            {"virtual_batch_size": 4, "momentum": 0.9},
            (8, 3),
            "rank 2, virtual_batch_size=4 (2 strided ghosts), inference on a batch of 3",
            infer_batch=3,
        ),
        c(
            "r3_ghost",
            {"virtual_batch_size": 2, "momentum": 0.9},
            (8, 4, 3),
            "rank 3, virtual_batch_size=2 (4 ghosts), inference on a batch of 3",
            infer_batch=3,
        ),
        c(
            "r4_ghost_nhwc",
            {"virtual_batch_size": 3, "momentum": 0.9},
            (6, 2, 3, 3),
            "rank 4 NHWC, virtual_batch_size=3 (2 ghosts), inference on a batch of 4",
            infer_batch=4,
        ),
        c(
            "r4_ghost_axis1_infer5",
            {"virtual_batch_size": 2, "axis": 1, "momentum": 0.9},
            (4, 3, 3, 2),
            "rank 4 NCHW, virtual_batch_size=2, inference on a batch of 5",
            infer_batch=5,
        ),
        c(
            "r2_ghost_full",
            {"virtual_batch_size": 6, "momentum": 0.9},
            (6, 4),
            "rank 2, virtual_batch_size == batch: plain BN numbers, (1,1,C) weights",
            infer_batch=3,
        ),
        c(
            "r4_ghost_renorm_clip",
            {"virtual_batch_size": 2, **renorm, "renorm_clipping": CLIP, "renorm_momentum": 0.8},
            (4, 3, 3, 3),
            "rank 4 NHWC, virtual_batch_size=2 with clipped renorm, inference on a batch of 3",
            infer_batch=3,
        ),
        c(
            "r2_ghost_noaffine",
            {"virtual_batch_size": 4, "center": False, "scale": False, "momentum": 0.9},
            (8, 3),
            "rank 2, virtual_batch_size=4, center=False, scale=False",
            infer_batch=5,
        ),
        c(
            "r3_ghost_noscale",
            {"virtual_batch_size": 3, "scale": False, "momentum": 0.9},
            (6, 4, 3),
            "rank 3, virtual_batch_size=3, scale=False",
            infer_batch=2,
        ),
        c(
            "r3_ghost_axis12",
            {"virtual_batch_size": 4, "axis": [1, 2], "momentum": 0.9},
            (8, 3, 2),
            "rank 3, virtual_batch_size=4, axis=[1,2]: weights (1,1,3,2)",
            infer_batch=3,
        ),
        # adjustment (training only; y = ((x_hat*r + d)*a_s + a_b)*gamma + beta)
        c(
            "r2_adjust",
            {"momentum": 0.9},
            (8, 4),
            "rank 2, adjustment returning fixed (C,) scale and bias",
            adjustment=True,
        ),
        c(
            "r4_axis1_adjust",
            {"axis": 1, "momentum": 0.9},
            (4, 3, 3, 2),
            "rank 4 NCHW, adjustment returning (1,C,1,1) scale and bias; not fused",
            adjustment=True,
        ),
        c(
            "r2_adjust_renorm",
            {**renorm, "renorm_clipping": CLIP, "renorm_momentum": 0.7},
            (8, 3),
            "rank 2, adjustment with clipped renorm: renorm innermost",
            adjustment=True,
        ),
        # masks (call(inputs, training, mask)); step 2 has an all-False mask
        c(
            "r3_mask",
            {"momentum": 0.9},
            (4, 6, 3),
            "rank 3 (B,T,C), random (B,T) masks, one sample fully masked, step 2 all False",
            mask="random",
        ),
        c(
            "r4_mask",
            {"fused": False, "momentum": 0.9},
            (3, 3, 4, 3),
            "rank 4 NHWC, fused=False, random (B,H,W) masks, step 2 all False",
            mask="random",
        ),
        c(
            "r4_mask_fused",
            {"momentum": 0.9},
            (3, 3, 4, 3),
            "rank 4 NHWC, fused chosen automatically: TF ignores the mask (UserWarning)",
            mask="random",
        ),
        # the V1 class, tf.compat.v1.keras.layers.BatchNormalization
        c(
            "v1_r2_frozen",
            {"trainable": False, "momentum": 0.9},
            (8, 4),
            "V1 class, rank 2, trainable=False: batch statistics, no moving update",
            library="tf_keras_v1",
        ),
        c(
            "v1_r4_frozen",
            {"trainable": False, "momentum": 0.9},
            (4, 3, 3, 3),
            "V1 class, rank 4 fused, trainable=False: batch statistics, no moving update",
            library="tf_keras_v1",
        ),
        c(
            "v1_r2_frozen_renorm",
            {"trainable": False, **renorm, "renorm_clipping": CLIP, "renorm_momentum": 0.7},
            (8, 3),
            "V1 class, rank 2, trainable=False with renorm: moving stats frozen, but "
            "renorm_mean and renorm_stddev still move",
            library="tf_keras_v1",
        ),
        c(
            "v1_r4_renorm",
            {**renorm, "renorm_clipping": CLIP, "renorm_momentum": 0.8},
            (4, 3, 3, 3),
            "V1 class, rank 4, renorm with fused=None: silently non-fused",
            library="tf_keras_v1",
        ),
        c(
            "v1_r4_default",
            {},
            (4, 3, 3, 3),
            "V1 class, rank 4, defaults: fused",
            library="tf_keras_v1",
        ),
        c(
            "v1_r2_default",
            {"momentum": 0.9},
            (8, 4),
            "V1 class, rank 2: fused=None becomes True in __init__, False at build",
            library="tf_keras_v1",
        ),
    ]


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
            array = np.asarray(array)  # 0-d stays 0-d (np.ascontiguousarray makes it 1-d)
            if not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)
            np.lib.format.write_array(buffer, array, allow_pickle=False)
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
        and not kwargs.get("adjustment")
        and compute in ("float16", "bfloat16", "float32")
    )
    if fused is False or not possible or rank not in (4, 5):
        return False
    normalized = raw % rank
    if rank == 5 and normalized not in (1, 4):
        return False  # silent fallback, also with fused=True
    return normalized in (1, 3) if rank == 4 else True


def expected_fused_v1(kwargs: dict[str, Any], rank: int) -> bool:
    """The V1 class (tf-semantics.md 4.3): fused=None means True, then silently falls back."""
    if kwargs.get("fused") is False:
        return False
    return expected_fused({**kwargs, "fused": None}, rank)


# --------------------------------------------------------------------------------------------
# Independent numpy model (float64)
# --------------------------------------------------------------------------------------------


class NumpyModel:
    """Float64 model of one tf_keras BatchNormalization call, written from tf-semantics.md."""

    def __init__(self, kwargs: dict[str, Any], rank: int, fused: bool, v1: bool = False) -> None:
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
        # V1 class (tf-semantics.md 5): trainable=False keeps batch statistics in training and
        # only skips the moving-statistic update (the renorm statistics still move, see below).
        self.v1 = v1
        self.clip_counts = {"rmin": 0, "rmax": 0, "dmax": 0}

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
        self,
        x: np.ndarray,
        dy: np.ndarray,
        weights: dict[str, np.ndarray],
        training: bool,
        mask: np.ndarray | None = None,
        adjust: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return ({y, dx, dgamma, dbeta}, weights after the call), all float64.

        ``mask`` has the input's shape without its last axis; ``adjust`` is the (scale, bias)
        pair the adjustment callable returns. The fused path ignores a mask (section 4.2).
        """
        update = training and self.trainable
        training = training and (self.trainable or self.v1)
        axes = self.axes
        xe, dye = x, dy
        ghost = self.virtual_batch_size is not None
        if ghost:
            if mask is not None or adjust is not None:
                raise ValueError("the model has no ghost batches with masks or adjustment")
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
            # Frequency weights: the mask expanded over the last axis (tf-semantics.md 14.1),
            # else ones. Division is no-NaN: zero total weight gives mean 0 and variance 0.
            if mask is not None and not self.fused:
                freq = np.broadcast_to(mask[..., None].astype(np.float64), xe.shape)
            else:
                freq = np.ones(xe.shape)
            total = freq.sum(axis=stat_axes, keepdims=True)
            safe = np.where(total > 0, total, 1.0)
            mean = np.where(total > 0, (freq * xe).sum(axis=stat_axes, keepdims=True) / safe, 0.0)
            var = (freq * (xe - mean) ** 2).sum(axis=stat_axes, keepdims=True) / safe
            share = np.where(total > 0, freq / safe, 0.0)  # d(mean)/dx per position
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
                r, d = clip_renorm(r, d, self.renorm_clipping, self.clip_counts)
            # y = ((x_hat * r + d) * a_s + a_b) * gamma + beta (tf-semantics.md 8)
            a_s, a_b = (np.ones(bshape), np.zeros(bshape))
            if adjust is not None:
                a_s = adjust[0].astype(np.float64).reshape(bshape)
                a_b = adjust[1].astype(np.float64).reshape(bshape)
            normalized = (xhat * r + d) * a_s + a_b
            y = gamma * normalized + beta
            g_sum = dye.sum(axis=stat_axes, keepdims=True)
            gx_sum = (dye * xhat).sum(axis=stat_axes, keepdims=True)
            dx = gamma * r * a_s * invstd * (dye - share * g_sum - share * xhat * gx_sum)
            m = self.momentum
            if self.renorm:
                # The renorm statistics move even when a V1 layer is frozen (measured).
                rm = self.renorm_momentum
                new["renorm_mean"] = ema(param("renorm_mean"), batch_mean, rm)
                new["renorm_stddev"] = ema(param("renorm_stddev"), stddev, rm)
            if update:
                new["moving_mean"] = ema(param("moving_mean"), batch_mean, m)
                if self.renorm:
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
    shape: tuple[int, ...] | None = None,
) -> tuple[tf.Tensor, np.ndarray]:
    """Draw x in float64, round it to the feed dtype; return (tensor fed, stored array)."""
    shape = case.input_shape if shape is None else shape
    x = offset + std * rng.normal(size=shape)
    index = tuple(0 if i in axes else slice(None) for i in range(len(shape)))
    if case.special == "constant_channel":
        x[index] = 1.5
    elif case.special == "tiny_variance_channel":
        x[index] = 1e-3 * rng.normal(size=x[index].shape)
    elif case.special == "large_offset_channel":
        index = tuple(1 if i == axes[0] else slice(None) for i in range(len(shape)))
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
    mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    params = {short_name(w): w for w in layer.weights if short_name(w) in ("gamma", "beta")}
    with tf.GradientTape() as tape:
        tape.watch(x)
        for variable in params.values():
            tape.watch(variable)  # trainable=False makes them non-trainable, not watched by default
        if mask is None:
            y = layer(x, training=training)
        else:
            y = layer(x, training=training, mask=tf.constant(mask))
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


def make_mask(rng: np.random.Generator, shape: tuple[int, ...], step: int | str) -> np.ndarray:
    """A bool mask of the input's shape without its last axis: random, one sample fully off.

    Step 2 is all False (zero total weight: mean 0, variance 0, tf-semantics.md 14.1).
    """
    mask_shape = shape[:-1]
    if step == 2:
        return np.zeros(mask_shape, dtype=bool)
    mask = rng.random(mask_shape) > 0.3
    mask[rng.integers(mask_shape[0])] = False
    return mask


def make_layer(case: Case, adjust: tuple[np.ndarray, np.ndarray] | None) -> Any:
    kwargs = dict(case.layer_kwargs)
    if adjust is not None:
        scale, bias = adjust

        def adjustment(shape: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            del shape  # the same pair for every call
            return tf.constant(scale), tf.constant(bias)

        kwargs["adjustment"] = adjustment
    if case.library == "tf_keras_v1":
        return BatchNormalizationV1(**kwargs)
    if case.library != "tf_keras":
        raise ValueError(f"{case.id}: unknown library {case.library!r}")
    return tf_keras.layers.BatchNormalization(**kwargs)


def unchanged_weights(model: NumpyModel, names: list[str], training: bool) -> list[str]:
    """The weights a call must leave bitwise unchanged (tf-semantics.md 3, 5 and 6)."""
    if not training or (not model.trainable and not model.v1):
        return names
    if not model.trainable:  # V1 frozen: no moving update, but renorm statistics move
        return [n for n in names if n not in ("renorm_mean", "renorm_stddev")]
    if model.momentum == 1.0 and not model.renorm:
        return names
    return []


def generate_case(case: Case, index: int, total: int) -> tuple[dict[str, Any], dict[str, Any]]:
    tf_keras.backend.clear_session()
    rng = case_rng(case.id)
    rank = len(case.input_shape)
    v1 = case.library == "tf_keras_v1"
    predicted_fused = expected_fused_v1 if v1 else expected_fused
    fused_kwargs = {**case.layer_kwargs, "adjustment": case.adjustment}
    fused = predicted_fused(fused_kwargs, rank)
    model = NumpyModel(case.layer_kwargs, rank, fused, v1=v1)
    adjust = None
    if case.adjustment:
        # The broadcast parameter shape, as TF requires: (C,) for the last axis, else full rank.
        axis = model.axes[0]
        pshape = tuple(case.input_shape[i] if i == axis else 1 for i in range(rank))
        pshape = pshape[-1:] if axis == rank - 1 else pshape
        adjust = (
            rng.uniform(0.7, 1.4, size=pshape).astype(np.float32),
            rng.normal(0.0, 0.3, size=pshape).astype(np.float32),
        )
    layer = make_layer(case, adjust)
    layer.build(tf.TensorShape(case.input_shape))
    tf_fused = getattr(layer, "fused", None)
    if tf_fused is not None and bool(tf_fused) != fused:
        raise AssertionError(f"{case.id}: layer.fused={tf_fused}, tf-semantics predicts {fused}")
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
    if adjust is not None:
        arrays["adjust_scale"], arrays["adjust_bias"] = adjust

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
        shape = case.input_shape
        if not training and case.infer_batch is not None:
            shape = (case.infer_batch, *case.input_shape[1:])
        x, x_np = make_input(rng, case, offset, std, axes, shape)
        dy_np = rng.normal(size=shape)
        # dy has the dtype of the loss: float32 for 16-bit outputs, else the output dtype
        dy_np = dy_np.astype(loss_dtype(layer).as_numpy_dtype)
        mask = make_mask(rng, shape, step) if case.mask else None
        result = run_call(layer, x, dy_np, training, mask)
        after = dict(zip(names, layer.get_weights(), strict=True))

        ref, ref_weights = model(
            x_np.astype(np.float64),
            dy_np.astype(np.float64),
            weights,
            training,
            mask=mask,
            adjust=adjust,
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
        for name in unchanged_weights(model, names, training):
            if not np.array_equal(after[name], weights[name]):
                raise AssertionError(f"{case.id} step {step}: {name} changed")
        weights = after

        suffix = str(step)
        arrays[f"x_{suffix}"] = storable(x_np)
        arrays[f"dy_{suffix}"] = storable(dy_np)
        if mask is not None:
            arrays[f"mask_{suffix}"] = mask
        for key, value in result.items():
            arrays[f"{key}_{suffix}"] = storable(value)
        if training:
            for name in names:
                arrays[f"{name}_{suffix}"] = after[name]

    clipping = case.layer_kwargs.get("renorm_clipping") or {}
    if clipping and case.check_clipping and not any(model.clip_counts.values()):
        raise AssertionError(f"{case.id}: renorm clipping never bound, choose tighter bounds")
    entry = {
        "id": case.id,
        "file": f"{case.id}.npz",
        "library": case.library,
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
    if case.infer_batch is not None:
        entry["infer_shape"] = [case.infer_batch, *case.input_shape[1:]]
    if case.adjustment:
        entry["adjustment"] = True
    if case.mask:
        entry["mask"] = True
        entry["mask_applied"] = not fused
    clipped = ""
    if clipping:
        clipped = " clipped " + ",".join(f"{k}:{v}" for k, v in model.clip_counts.items())
    print(
        f"[{index + 1:3d}/{total}] {case.id:32s} fused={tf_fused!s:5s} "
        f"weights={len(names)} worst scaled error vs numpy model {worst:.2e}{clipped}",
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
        "tf_slim": importlib.metadata.version("tf-slim"),
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
    slim_cases = build_slim_cases()
    total = len(cases) + len(slim_cases)
    ids = [case.id for case in cases] + [case.id for case in slim_cases]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids")
    print(f"writing {total} cases to {out} with TensorFlow {tf.__version__}", flush=True)
    entries = []
    for index, case in enumerate(cases):
        entry, arrays = generate_case(case, index, total)
        write_npz(out / entry["file"], arrays)
        entries.append(entry)
    slim = load_slim()
    for index, case in enumerate(slim_cases, start=len(cases)):
        tf_keras.backend.clear_session()
        entry, arrays, progress = generate_slim_case(
            slim, case, case_rng(case.id), random_init, check_close
        )
        write_npz(out / entry["file"], arrays)
        entries.append(entry)
        print(f"[{index + 1:3d}/{total}] {case.id:32s} {progress}", flush=True)

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
