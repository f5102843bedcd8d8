"""BatchNormalization's TensorFlow extensions at the layer level: state, shapes, deferral, V1.

Oracles: tf-semantics.md's measured shapes and initial values (TensorFlow's own fixtures check
the numbers in test_golden.py), the functional API for the update formulas, and immediate
updates for deferred ones.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import batchnorm as bn
from batchnorm.layer import BatchNormalizationV1


@pytest.mark.parametrize(
    ("shape", "axis", "expected"),
    [
        ((6, 3), -1, (1, 1, 3)),
        ((6, 2, 2, 3), -1, (1, 1, 1, 1, 3)),
        ((6, 3, 2, 2), 1, (1, 1, 3, 1, 1)),
        ((6, 3, 5), [1, 2], (1, 1, 3, 5)),
    ],
)
def test_ghost_batch_weights_take_tensorflow_shapes(shape, axis, expected):
    """tf-semantics.md section 2: rank + 1 with a 1 inserted at index 1."""
    layer = bn.BatchNormalization(axis=axis, virtual_batch_size=2, input_shape=shape[1:])
    assert {tuple(w.shape) for w in layer.get_weights()} == {expected}


def test_ghost_inference_accepts_any_batch_and_training_needs_a_divisor():
    layer = bn.BatchNormalization(virtual_batch_size=4)
    layer(torch.randn(8, 3), training=True)
    before = layer.get_weights()
    assert layer(torch.randn(3, 3), training=False).shape == (3, 3)
    with pytest.raises(bn.BatchNormError, match=r"virtual_batch_size=4.*divisor.*6"):
        layer(torch.randn(6, 3), training=True)
    for got, want in zip(layer.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_ghost_batches_cannot_include_the_batch_axis():
    with pytest.raises(bn.BatchNormError, match=r"axis=0.*batch axis"):
        bn.BatchNormalization(axis=0, virtual_batch_size=2, input_shape=(3,))


def test_renorm_state_starts_as_tensorflow_initialises_it():
    """tf-semantics.md 6.1: stddevs = sqrt(moving variance init), renorm_mean = mean init."""
    layer = bn.BatchNormalization(
        renorm=True,
        moving_variance_initializer={"class_name": "Constant", "config": {"value": 4.0}},
        moving_mean_initializer={"class_name": "Constant", "config": {"value": 0.5}},
        input_shape=(3,),
    )
    names = layer.weight_names
    assert names == [
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
        "moving_stddev",
        "renorm_mean",
        "renorm_stddev",
    ]
    assert layer.count_params() == 7 * 3
    variance_init, mean_init = torch.full((3,), 4.0), torch.full((3,), 0.5)
    torch.testing.assert_close(layer.moving_stddev, variance_init.sqrt())
    torch.testing.assert_close(layer.renorm_stddev, variance_init.sqrt())
    torch.testing.assert_close(layer.renorm_mean, mean_init)
    assert [w.requires_grad for w in layer.trainable_weights] == [True, True]


def test_zero_debias_first_update_sets_the_batch_mean_exactly():
    """tf-semantics.md 9.6: the debiased mean after one step is the batch mean itself."""
    layer = bn.BatchNormalization(
        momentum=0.9,
        zero_debias_moving_mean=True,
        moving_mean_initializer={"class_name": "Constant", "config": {"value": 5.0}},
    )
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    layer(x, training=True)
    torch.testing.assert_close(layer.moving_mean, x.mean(0))
    assert layer.local_step.item() == 1.0
    names = layer.weight_names
    assert names[-2:] == ["moving_mean_biased", "local_step"]


def test_config_round_trips_every_extension():
    layer = bn.BatchNormalization(
        renorm=True,
        renorm_clipping={"rmax": 3.0, "dmax": torch.tensor(5.0)},
        renorm_momentum=0.9,
        virtual_batch_size=2,
        virtual_batch_layout="contiguous",
        zero_debias_moving_mean=True,
        deferred_updates=True,
    )
    config = layer.get_config()
    assert config["renorm_clipping"] == {"rmax": 3.0, "dmax": 5.0}
    assert bn.BatchNormalization.from_config(config).get_config() == config
    assert "renorm" not in bn.BatchNormalization().get_config()


def test_adjustment_runs_in_training_only():
    calls = []

    def adjustment(shape):
        calls.append(shape)
        return torch.full((3,), 2.0), torch.full((3,), 1.0)

    layer = bn.BatchNormalization(adjustment=adjustment, epsilon=0.0)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    y = layer(x, training=True)
    plain = bn.BatchNormalization(epsilon=0.0)(x, training=True)
    torch.testing.assert_close(y, plain * 2 + 1)
    assert calls == [torch.Size([8, 3])]
    layer(x, training=False)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("kwargs", "argument", "value"),
    [
        ({"renorm_clipping": {"rmax": 1.0, "r_max": 2.0}}, "renorm_clipping", "r_max"),
        ({"renorm_clipping": {"rmin": 2.0, "rmax": 1.0}}, "renorm_clipping", "rmin <= rmax"),
        ({"renorm_clipping": {"dmax": -1.0}}, "renorm_clipping", "dmax >= 0"),
        ({"renorm_clipping": {"rmax": "3"}}, "renorm_clipping['rmax']", "'3'"),
        ({"renorm_momentum": 2.0}, "renorm_momentum", "2.0"),
        ({"virtual_batch_size": 0}, "virtual_batch_size", "0"),
        ({"virtual_batch_layout": "random"}, "virtual_batch_layout", "'random'"),
        ({"adjustment": 3}, "adjustment", "3"),
        ({"renorm": "yes"}, "renorm", "'yes'"),
        ({"deferred_updates": 1}, "deferred_updates", "1"),
    ],
)
def test_extension_arguments_are_validated(kwargs, argument, value):
    with pytest.raises(bn.BatchNormError) as error:
        bn.BatchNormalization(**kwargs)
    assert argument in str(error.value) and value in str(error.value)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        ({"batch_weights": torch.ones(5)}, r"batch_weights\.shape=\(5,\).*\(4,\)"),
        ({"batch_weights": -torch.ones(4)}, "batch_weights.*non-negative"),
        ({"mask": torch.ones(4, 2, dtype=torch.bool)}, r"mask\.shape=\(4, 2\)"),
    ],
)
def test_bad_weights_and_masks_change_nothing(call, pattern):
    layer = bn.BatchNormalization(input_shape=(3,))
    before = layer.get_weights()
    with pytest.raises(bn.BatchNormError, match=pattern):
        layer(torch.randn(4, 3), training=True, **call)
    for got, want in zip(layer.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_zero_total_weight_leaves_the_statistics_unchanged():
    """Deliberate difference: TensorFlow would move the statistics toward (0, 0)."""
    layer = bn.BatchNormalization(input_shape=(3,))
    before = layer.get_weights()
    y = layer(torch.randn(4, 3), training=True, batch_weights=torch.zeros(4))
    assert torch.isfinite(y).all()
    for got, want in zip(layer.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def _steps(layer, batches):
    for x in batches:
        layer(x, training=True)
        if layer.deferred_updates:
            layer.apply_updates()
    return layer.get_weights()


@pytest.mark.parametrize(
    "options",
    [{}, {"renorm": True}, {"zero_debias_moving_mean": True}, {"virtual_batch_size": 2}],
    ids=["plain", "renorm", "zero_debias", "ghost"],
)
def test_deferred_updates_equal_immediate_updates(options):
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(4, 3, generator=generator) * (i + 1) for i in range(3)]
    immediate = _steps(bn.BatchNormalization(momentum=0.7, **options), batches)
    deferred = _steps(
        bn.BatchNormalization(momentum=0.7, deferred_updates=True, **options), batches
    )
    for got, want in zip(deferred, immediate, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_two_pending_updates_apply_as_two_steps_and_discarding_keeps_state():
    generator = torch.Generator().manual_seed(3)
    a, b = (torch.randn(4, 3, generator=generator) for _ in range(2))
    immediate = bn.BatchNormalization(momentum=0.5)
    immediate(a, training=True)
    immediate(b, training=True)
    deferred = bn.BatchNormalization(momentum=0.5, deferred_updates=True)
    deferred(a, training=True)
    deferred(b, training=True)
    assert len(deferred.updates) == 2
    untouched = copy.deepcopy(deferred)
    assert bn.apply_updates(torch.nn.Sequential(deferred)) == 2
    assert deferred.updates == []
    for got, want in zip(deferred.get_weights(), immediate.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    untouched.discard_updates()
    assert untouched.updates == []
    assert untouched.moving_mean.tolist() == [0.0] * 3
    assert untouched.moving_variance.tolist() == [1.0] * 3


def test_a_single_pending_update_can_be_applied_on_its_own():
    layer = bn.BatchNormalization(momentum=0.0, deferred_updates=True)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    layer(x, training=True)
    (update,) = layer.updates
    update()
    torch.testing.assert_close(layer.moving_mean, x.mean(0))
    assert layer.updates == []


def test_v1_frozen_layer_normalises_with_batch_statistics_without_updating():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(5)) * 2 + 1
    v1 = BatchNormalizationV1(trainable=False, epsilon=0.0)
    v2 = bn.BatchNormalization(trainable=False, epsilon=0.0)
    y1 = v1(x, training=True)
    y2 = v2(x, training=True)
    torch.testing.assert_close(y1, (x - x.mean(0)) / x.std(0, unbiased=False))
    torch.testing.assert_close(y2, x / 1.0)  # V2: inference with (0, 1) statistics
    assert v1.moving_mean.tolist() == [0.0] * 3
    v1.trainable = True
    v1(x, training=True)
    assert v1.moving_mean.abs().sum() > 0
