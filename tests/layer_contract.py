"""``assert_layer_contract``: the Keras layer contract every BatchNormalization must keep.

One helper (Keras ``run_layer_test`` in spirit) so each configuration is checked the same way:
weights order and count, ``get_config``/``from_config`` round-trip through JSON,
``state_dict`` round-trip with its version, ``set_weights``/``get_weights`` round-trip, and
``trainable=False`` meaning inference.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch

import batchnorm as bn

# design.md: Keras order, then renorm's state (tf_keras' order), then zero-debias' (tf-slim's).
KERAS_ORDER = [
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
    "moving_stddev",
    "renorm_mean",
    "renorm_stddev",
    "moving_mean_biased",
    "local_step",
]


def assert_layer_contract(layer: bn.BatchNormalization, x: torch.Tensor) -> None:
    layer(x, training=True)  # builds if needed
    expected_names = [n for n in KERAS_ORDER if getattr(layer, n, None) is not None]
    assert [id(w) for w in layer.weights] == [id(getattr(layer, n)) for n in expected_names]
    assert layer.count_params() == sum(w.numel() for w in layer.weights)
    assert len(layer.get_weights()) == len(expected_names)

    # get_config -> JSON -> from_config gives an equal configuration and equal numbers.
    config = layer.get_config()
    rebuilt = bn.BatchNormalization.from_config(json.loads(json.dumps(config)))
    assert rebuilt.get_config() == {**config, "axis": rebuilt.get_config()["axis"]}
    rebuilt(x, training=True)
    rebuilt.set_weights(layer.get_weights())
    layer.eval()
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), layer(x), rtol=0, atol=0)
    layer.train()

    # state_dict round-trip into an unbuilt twin, with the version recorded.
    state = layer.state_dict()
    assert state._metadata[""]["version"] == bn.BatchNormalization._version
    twin = bn.BatchNormalization.from_config(config)
    twin.load_state_dict(state)
    for got, want in zip(twin.get_weights(), layer.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)

    # set_weights/get_weights round-trip.
    weights = [w + 1 for w in layer.get_weights()]
    layer.set_weights(weights)
    for got, want in zip(layer.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)

    # trainable=False: inference even when asked to train; nothing moves; no gradients.
    frozen = copy.deepcopy(layer)
    frozen.trainable = False
    before = frozen.get_weights()
    inference = copy.deepcopy(layer).eval()(x)
    torch.testing.assert_close(frozen(x, training=True), inference, rtol=0, atol=0)
    for got, want in zip(frozen.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert frozen.trainable_weights == []
    assert all(not p.requires_grad for p in frozen.parameters())
