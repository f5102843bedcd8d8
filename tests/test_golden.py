"""BatchNormalization against TensorFlow: golden fixtures made by tools/make_golden.py.

Each case replays tf_keras' run: the same initial weights, several training steps (output,
gradients with respect to input, gamma and beta, and every weight after the step), then one
inference step. The fixtures carry TensorFlow's numbers; nothing here is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import batchnorm as bn
from batchnorm.layer import BatchNormalizationV1

GOLDEN = Path(__file__).parent / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
# tf_keras' V2 class and its V1 class (tf.compat.v1.keras); tf-slim's function form is replayed
# by test_compat_v1.py.
LAYER_CLASSES = {"tf_keras": bn.BatchNormalization, "tf_keras_v1": BatchNormalizationV1}
CASES = [c for c in MANIFEST["cases"] if c["library"] in LAYER_CLASSES]

# Options whose training output is plain batch norm (the float64 check below models only that).
PLAIN = {
    "axis",
    "momentum",
    "epsilon",
    "center",
    "scale",
    "fused",
    "dtype",
    "trainable",
    "moving_variance_correction",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
}

# Relative tolerance per compared dtype; atol is the same fraction of the array's largest value.
RELATIVE = {"float64": 1e-9, "float32": 1e-5, "float16": 3e-3, "bfloat16": 2e-2}


def _tolerance(case: dict) -> float:
    dtype = case["layer_kwargs"].get("dtype", "float32")
    narrowest = {case["input_dtype"], {"mixed_float16": "float16"}.get(dtype, dtype)}
    for name in ("bfloat16", "float16", "float32", "float64"):
        if name in narrowest:
            return RELATIVE[name]
    raise AssertionError(case)


def _torch_input(array: np.ndarray, input_dtype: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(getattr(torch, input_dtype))


def _close(name: str, got: torch.Tensor, want: np.ndarray, rel: float, slack: float = 0.0) -> None:
    got64 = got.detach().to(torch.float64).numpy()
    want64 = want.astype(np.float64)
    assert got64.shape == want64.shape, f"{name}: shape {got64.shape} != {want64.shape}"
    atol = rel * max(float(np.abs(want64).max(initial=0.0)), 1.0) + slack
    np.testing.assert_allclose(got64, want64, rtol=rel, atol=atol, err_msg=name)


def _exact_training_output(case: dict, data, tag: str):
    """Float64 batch norm of the fixture's input, and TensorFlow's own float32 error bound.

    tf_keras evaluates ``x * a + (beta - mean * a)`` with ``a = gamma / sqrt(var + eps)``; its
    rounding is up to ``eps_dtype * |x| * |a|`` per element, which exceeds 1e-5 once the mean is
    large against the spread. Ours, ``(x - mean) * a + beta``, is bounded by half that (the float32
    mean itself is off by up to ``eps / 2 * |mean|``). Both bounds vanish below the 1e-5 tolerance
    unless the mean exceeds ~50x the spread: only the large-offset cases need them. The
    gradients inherit the bound on ``x_hat``, scaled by ``|dy|`` (input) or ``sum |dy|`` (gamma).
    """
    x = data[f"x_{tag}"].astype(np.float64)
    axes = case["config"]["axis"]
    reduce = tuple(d for d in range(x.ndim) if d not in axes)
    keep = [x.shape[d] if d in axes else 1 for d in range(x.ndim)]
    mean = x.mean(axis=reduce, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=reduce, keepdims=True)
    gamma = data["init_gamma"].reshape(keep) if "init_gamma" in data else 1.0
    beta = data["init_beta"].reshape(keep) if "init_beta" in data else 0.0
    invstd = 1 / np.sqrt(var + case["config"]["epsilon"])
    exact = (x - mean) * invstd * gamma + beta
    unit = np.finfo(getattr(np, case["input_dtype"], np.float32)).eps
    x_hat_rounding = 2 * unit * float(np.abs(x).max() * invstd.max())
    sum_abs_dy = float(np.abs(data[f"dy_{tag}"]).sum(axis=reduce).max())
    return exact, {
        "y": x_hat_rounding * float(np.abs(gamma).max()),
        "dx": 2 * x_hat_rounding * float(np.abs(gamma).max() * np.abs(data[f"dy_{tag}"]).max()),
        "dgamma": x_hat_rounding * sum_abs_dy,
    }


@pytest.mark.parametrize("fused", [None, False], ids=["fast", "reference"])
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_tensorflow(case, fused):
    data = np.load(GOLDEN / case["file"])
    kwargs = dict(case["layer_kwargs"])
    if fused is False:
        # Our reference path with TensorFlow's variance rule for this case made explicit.
        kwargs["moving_variance_correction"] = bool(case["tf_fused"])
    kwargs["fused"] = fused if kwargs.get("fused") is None or fused is False else kwargs["fused"]
    if case.get("adjustment"):
        scale, bias = (torch.from_numpy(data[f"adjust_{k}"]) for k in ("scale", "bias"))
        kwargs["adjustment"] = lambda shape: (scale, bias)
    layer_class = LAYER_CLASSES[case["library"]]
    layer = layer_class(**kwargs, input_shape=case["input_shape"][1:])
    assert [tuple(w.shape) for w in layer.get_weights()] == [
        tuple(s) for s in case["weight_shapes"]
    ]
    layer.set_weights([data[f"init_{name}"] for name in case["weight_names"]])
    rel = _tolerance(case)
    names = case["weight_names"]

    steps = [(str(t), True) for t in range(case["steps"])] + [("infer", False)]
    for tag, training in steps:
        x = _torch_input(data[f"x_{tag}"], case["input_dtype"]).requires_grad_(True)
        # Deliberate difference: tf_keras ignores a mask (with a UserWarning) when it runs its
        # fused kernel (rank 4 defaults); we always honour it. Such cases ("mask_applied":
        # false) replay without the mask, which is what TensorFlow computed.
        mask = None
        if case.get("mask") and case.get("mask_applied", True):
            mask = torch.from_numpy(data[f"mask_{tag}"])
        before = layer.get_weights()
        y = layer(x, training=training, mask=mask)
        (y.to(torch.float64) * torch.from_numpy(data[f"dy_{tag}"]).double()).sum().backward()
        if training and layer.trainable and set(kwargs) <= PLAIN and mask is None:
            exact, slack = _exact_training_output(case, data, tag)
            _close(f"y_{tag} (exact float64)", y, exact, rel, slack=slack["y"] / 2)
        else:
            slack = {}
        _close(f"y_{tag}", y, data[f"y_{tag}"], rel, slack.get("y", 0.0))
        _close(f"dx_{tag}", x.grad, data[f"dx_{tag}"], rel, slack.get("dx", 0.0))
        for param in ("gamma", "beta"):
            tensor = getattr(layer, param)
            # trainable=False gives gamma/beta requires_grad=False here (no gradient at all);
            # TensorFlow's tape still computes one for a watched frozen variable.
            if f"d{param}_{tag}" in data and tensor is not None and tensor.requires_grad:
                want = data[f"d{param}_{tag}"]
                _close(f"d{param}_{tag}", tensor.grad, want, rel, slack.get(f"d{param}", 0.0))
                tensor.grad = None
        if tag == "infer":
            continue
        if mask is not None and not mask.any():
            # Deliberate difference (design.md): a step with no unmasked position leaves our
            # statistics unchanged; TensorFlow moves them toward (0, 0). Check ours, then
            # continue from TensorFlow's state so the later steps are still compared.
            for name, weight, start in zip(names, layer.get_weights(), before, strict=True):
                np.testing.assert_array_equal(weight, start, err_msg=f"{name}_{tag}")
            layer.set_weights([data[f"{name}_{tag}"] for name in names])
        for name, weight in zip(names, layer.get_weights(), strict=True):
            _close(f"{name}_{tag}", torch.from_numpy(weight), data[f"{name}_{tag}"], rel)


def test_manifest_covers_the_foundation_matrix():
    """The fixture set spans what the foundation promises: ranks 2-5, list axes, dtypes."""
    ranks = {len(c["input_shape"]) for c in CASES}
    assert ranks == {2, 3, 4, 5}
    assert any(isinstance(c["layer_kwargs"].get("axis"), list) for c in CASES)
    assert {c["input_dtype"] for c in CASES} >= {"float32", "float64", "float16", "bfloat16"}
    assert any(c["tf_fused"] for c in CASES) and any(not c["tf_fused"] for c in CASES)
    assert all(c["steps"] >= 5 for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_fused_attribute_after_build_is_tensorflows(case):
    """``layer.fused`` after the build is what TensorFlow's layer held (the manifest's)."""
    kwargs = dict(case["layer_kwargs"])
    if case.get("adjustment"):
        kwargs["adjustment"] = lambda shape: (1.0, 0.0)
    layer = LAYER_CLASSES[case["library"]](**kwargs)
    if case["library"] == "tf_keras_v1" and kwargs.get("fused") is None:
        assert layer.fused is True  # the V1 class turns None into True at construction
    layer.build(case["input_shape"])
    assert layer.fused is bool(case["tf_fused"])
