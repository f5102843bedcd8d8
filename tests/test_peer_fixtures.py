"""Configs and masks as tf_keras and Keras 3 produce them (tools/make_peer_fixtures.py).

Oracle: ``tests/golden/peer_configs.json`` and ``peer_masks.npz``, recorded with tf_keras 2.21
and Keras 3.15 (TensorFlow backend): ``get_config()`` of layers made the ways users make them,
with the weights, parameter counts, losses, dtypes and ``fused`` a rebuilt layer must
reproduce; and one masked training call per case with its outputs and moving statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import batchnorm as bn

GOLDEN = Path(__file__).parent / "golden"
PEERS = json.loads((GOLDEN / "peer_configs.json").read_text())
MASKS = np.load(GOLDEN / "peer_masks.npz")
RECORDS = PEERS["configs"]


def _record_id(record: dict) -> str:
    options = ",".join(f"{k}={v}" for k, v in record["layer_kwargs"].items())
    return f"{record['library']}-{record['made']}-{options or 'defaults'}"


# Deliberate differences (README): tf_keras' config of a built ghost-batch layer names its
# internal, shifted axes, and its own from_config reads them as written; so do we. tf_keras
# leaves ``synchronized`` out of its config, so its fused decision cannot be rebuilt from it.
def _shifted_ghost_axes(record: dict) -> bool:
    return record["library"] == "tf_keras" and "virtual_batch_size" in record["config"]


def _rebuilt(record: dict) -> bn.BatchNormalization:
    layer = bn.BatchNormalization.from_config(record["config"])
    if not layer.built:
        layer.build(record["input_shape"])
    return layer


@pytest.mark.parametrize("record", RECORDS, ids=_record_id)
def test_from_config_rebuilds_the_peer_layer(record):
    layer = _rebuilt(record)
    assert layer.weight_names == record["weight_names"]
    if _shifted_ghost_axes(record):
        assert list(layer.axis) == record["config"]["axis"]
    else:
        assert [list(w.shape) for w in layer.weights] == record["weight_shapes"]
        assert layer.count_params() == record["count_params"]
    assert [t.item() for t in layer.losses] == pytest.approx(record["losses"], rel=1e-6)
    assert layer.dtype == record["dtype"]
    assert (layer.compute_dtype or layer.dtype) == record["compute_dtype"]
    config = record["config"]
    for key in ("name", "trainable", "momentum", "epsilon", "center", "scale"):
        assert layer.get_config()[key] == config[key], key
    assert layer.renorm == config.get("renorm", False)
    if layer.renorm:
        assert {k: float(v) for k, v in layer.renorm_clipping.items()} == config["renorm_clipping"]
    assert layer.synchronized == config.get("synchronized", False)
    weight_dtypes = [str(w.dtype).removeprefix("torch.") for w in layer.weights]
    if record["library"] == "tf_keras":
        assert weight_dtypes == record["weight_dtypes"]
        if "synchronized" not in record["layer_kwargs"]:
            assert layer.fused == record["fused"]
    else:  # Deliberate difference: 16-bit layers keep float32 weights, as tf_keras does
        assert weight_dtypes == ["float64" if layer.dtype == "float64" else "float32"] * len(
            weight_dtypes
        )
    again = bn.BatchNormalization.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_batch_input_shape_builds_the_layer():
    record = next(r for r in RECORDS if "batch_input_shape" in r["config"])
    layer = bn.BatchNormalization.from_config(record["config"])
    assert layer.built
    assert layer._build_input_shape == tuple(record["config"]["batch_input_shape"])


@pytest.mark.parametrize("record", [r for r in RECORDS if "serialized" in r], ids=_record_id)
def test_a_serialized_layer_from_a_model_config_loads_and_builds(record):
    layer = bn.BatchNormalization.from_config(record["serialized"])
    assert layer.built
    assert [list(w.shape) for w in layer.weights] == record["weight_shapes"]


def test_unknown_keys_and_other_classes_are_still_refused():
    config = dict(RECORDS[0]["config"])
    with pytest.raises(bn.BatchNormError, match=r"config keys=\['bogus'\]"):
        bn.BatchNormalization.from_config({**config, "bogus": 1})
    serialized = {"class_name": "LayerNormalization", "config": config}
    with pytest.raises(bn.BatchNormError, match=r"config\['class_name'\]='LayerNormalization'"):
        bn.BatchNormalization.from_config(serialized)


MASK_CASES = PEERS["masks"]


# Every (case, library) where the library used the mask: tf_keras ignores it when it runs its
# fused kernel (rank 4, axis 1), where we honour it (a deliberate difference).
MASKED_RUNS = [(c, lib) for c in MASK_CASES for lib in c["mask_applied_by"]]


@pytest.mark.parametrize("fused", [None, False], ids=["fast", "reference"])
@pytest.mark.parametrize(
    ("case", "library"), MASKED_RUNS, ids=[f"{c['prefix']}-{lib}" for c, lib in MASKED_RUNS]
)
def test_a_keras_mask_is_expanded_at_the_last_axis(case, library, fused):
    """A rank-(r-1) mask means what Keras means, whatever ``axis`` is (tf-semantics 14)."""
    prefix = case["prefix"]
    x = torch.from_numpy(MASKS[f"{prefix}_x"])
    mask = torch.from_numpy(MASKS[f"{prefix}_mask"])
    layer = bn.BatchNormalization(axis=case["axis"], momentum=0.0, fused=fused)
    y = layer(x, training=True, mask=mask)
    for name, got in (
        ("y", y),
        ("moving_mean", layer.moving_mean),
        ("moving_variance", layer.moving_variance),
    ):
        want = torch.from_numpy(MASKS[f"{prefix}_{library}_{name}"])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


def test_a_full_rank_mask_broadcasts_as_it_is():
    """Oracle: the same mask in Keras' rank-(r-1) form, expanded at the last axis by hand."""
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(3))
    keras_mask = torch.rand(5, 2, generator=torch.Generator().manual_seed(4)) > 0.3
    keras_mask[0, 0] = True
    full = bn.functional.batch_norm(
        x, torch.zeros(2), torch.ones(2), axis=1, training=True, mask=keras_mask[..., None]
    )
    keras = bn.functional.batch_norm(
        x, torch.zeros(2), torch.ones(2), axis=1, training=True, mask=keras_mask
    )
    torch.testing.assert_close(full.output, keras.output)
    torch.testing.assert_close(full.new_stats["moving_mean"], keras.new_stats["moving_mean"])


@pytest.mark.parametrize(
    ("mask_shape", "pattern"),
    [
        ((5, 3), r"mask\.shape=\(5, 3\).*\(5, 2\).*mask\.unsqueeze\(1\)"),  # the old convention
        ((5,), r"mask\.shape=\(5,\); expected the input shape without its last axis"),
        ((5, 2, 3, 1), r"mask\.shape=\(5, 2, 3, 1\)"),
        ((5, 4), r"mask\.shape=\(5, 4\)"),
    ],
)
def test_a_mask_that_keras_would_not_read_this_way_is_refused(mask_shape, pattern):
    layer = bn.BatchNormalization(axis=1, input_shape=(2, 3))
    before = [w.copy() for w in layer.get_weights()]
    with pytest.raises(bn.BatchNormError, match=pattern):
        layer(torch.randn(5, 2, 3), training=True, mask=torch.ones(mask_shape, dtype=torch.bool))
    for got, want in zip(layer.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


BEFORE_BUILD = [
    r for r in RECORDS if "fused_before_build" in r and "input_shape" not in r["layer_kwargs"]
]


@pytest.mark.parametrize("record", BEFORE_BUILD, ids=_record_id)
def test_fused_before_the_build_is_tf_keras_value(record):
    kwargs = {k: v for k, v in record["layer_kwargs"].items()}
    assert bn.BatchNormalization(**kwargs).fused == record["fused_before_build"]


def test_the_old_mask_form_of_several_channel_axes_gets_the_reshape_that_fixes_it():
    """The suggested reshape is checked by using it: it must equal the mask's full-rank form."""
    x = torch.randn(4, 2, 5, 3)
    old_form = torch.rand(4, 5, generator=torch.Generator().manual_seed(6)) > 0.3
    with pytest.raises(bn.BatchNormError, match=r"mask\.reshape\(4, 1, 5, 1\)"):
        bn.functional.batch_norm(
            x, torch.zeros(6), torch.ones(6), axis=[1, 3], training=True, mask=old_form
        )
    fixed = bn.functional.batch_norm(
        x,
        torch.zeros(6),
        torch.ones(6),
        axis=[1, 3],
        training=True,
        mask=old_form.reshape(4, 1, 5, 1),
    )
    assert torch.isfinite(fixed.output).all()
