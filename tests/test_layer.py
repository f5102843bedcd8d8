"""BatchNormalization: the Keras layer API, module behaviour, and TensorFlow's layer facts.

Oracles: tests/golden/configs.json (tf_keras' get_config, weights, count_params and losses),
the functional API (the layer must add nothing to the math), and the layer contract helper.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from configs import CONFIGS, call_tensors, config_id, option_kwargs
from layer_contract import assert_layer_contract

import batchnorm as bn
from batchnorm.functional import batch_norm

TF_CONFIGS = json.loads((Path(__file__).parent / "golden" / "configs.json").read_text())
SUPPORTED = {
    "axis",
    "momentum",
    "epsilon",
    "center",
    "scale",
    "trainable",
    "dtype",
    "fused",
    "name",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "renorm",
    "renorm_clipping",
    "renorm_momentum",
    "virtual_batch_size",
}
TF_RECORDS = [r for r in TF_CONFIGS if set(r["layer_kwargs"]) <= SUPPORTED]


def _strip(value):
    """Keras' serialized objects carry module/registered_name; compare class and config.

    tf_keras stores regularizer coefficients as float32, so floats compare at float32 precision.
    """
    if isinstance(value, dict) and "class_name" in value:
        return {"class_name": value["class_name"], "config": _strip(value["config"])}
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()}
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-7)
    return value


@pytest.mark.parametrize("record", TF_RECORDS, ids=lambda r: json.dumps(r["layer_kwargs"]))
def test_layer_facts_match_tf_keras(record):
    layer = bn.BatchNormalization(**record["layer_kwargs"])
    before = layer.get_config()
    layer.build(record["input_shape"])
    after = layer.get_config()
    for ours, theirs in (
        (before, record["config_before_build"]),
        (after, record["config_after_build"]),
    ):
        assert set(ours) == set(theirs)
        for key in theirs:
            if key in ("name",):
                continue
            want = theirs[key]
            if isinstance(want, dict) and want.get("class_name") in ("Policy", "DTypePolicy"):
                want = want["config"]["name"]
            if key == "dtype" and isinstance(want, dict):
                want = want["config"]["name"]
            if key == "axis" and ours is after and "virtual_batch_size" in record["layer_kwargs"]:
                # Deliberate difference: tf_keras reports its internal axes, shifted by the
                # ghost dimension ([2] for a rank-2 input), which its own from_config cannot
                # rebuild on the same input. We report the input's axes, which round-trip.
                want = [a - 1 for a in want]
            got = ours[key]
            if isinstance(got, float) and isinstance(want, float):
                assert got == pytest.approx(want, rel=1e-6), key
            else:
                assert _strip(got) == _strip(want), key
    names = layer.weight_names
    assert names == record["weight_names"]
    assert [
        n for n in names if any(getattr(layer, n) is w for w in layer.trainable_weights)
    ] == record["trainable_weight_names"]
    assert [
        n for n in names if any(getattr(layer, n) is w for w in layer.non_trainable_weights)
    ] == record["non_trainable_weight_names"]
    assert layer.count_params() == record["count_params"]
    np.testing.assert_allclose(
        [float(v.detach()) for v in layer.losses], record["losses"], rtol=1e-6
    )
    # tf_keras' own config rebuilds an equal layer here (its ghost-batch configs carry the
    # shifted axes, see above, so they rebuild only with ours).
    source = (
        after if "virtual_batch_size" in record["layer_kwargs"] else record["config_after_build"]
    )
    rebuilt = bn.BatchNormalization.from_config(source)
    ignored = ("dtype", "name")
    assert {k: _strip(v) for k, v in rebuilt.get_config().items() if k not in ignored} == {
        k: _strip(v) for k, v in after.items() if k not in ignored
    }


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_layer_contract(config, generator):
    x = config.make_input(generator)
    options = option_kwargs(config)
    if "adjustment" in config.extra:
        options["adjustment"] = call_tensors(config, x, generator)["adjustment"]
    layer = bn.BatchNormalization(
        axis=config.axis,
        center=config.center,
        scale=config.scale,
        momentum=config.momentum,
        epsilon=config.epsilon,
        dtype=torch.float64 if x.dtype == torch.float64 else None,
        **options,
    )
    assert_layer_contract(layer, x)


def test_layer_adds_nothing_to_the_functional(generator):
    x = torch.randn(6, 4, 3, 3, generator=generator)
    layer = bn.BatchNormalization(axis=1, momentum=0.8, gamma_initializer="random_normal")
    y = layer(x, training=True)
    want = batch_norm(
        x,
        torch.zeros(4),
        torch.ones(4),
        layer.gamma.detach(),
        torch.zeros(4),
        training=True,
        axis=1,
        momentum=0.8,
    )
    torch.testing.assert_close(y, want.output, rtol=0, atol=0)
    torch.testing.assert_close(layer.moving_mean, want.new_stats["moving_mean"], rtol=0, atol=0)
    torch.testing.assert_close(
        layer.moving_variance, want.new_stats["moving_variance"], rtol=0, atol=0
    )


def test_training_none_follows_module_mode(generator):
    x = torch.randn(8, 3, generator=generator) * 3 + 1
    layer = bn.BatchNormalization(momentum=0.0)
    layer(x)
    torch.testing.assert_close(layer.moving_mean, x.mean(0))  # train(): updated
    layer.eval()
    before = layer.moving_mean.clone()
    y = layer(x * 2)
    assert torch.equal(layer.moving_mean, before)  # eval(): not updated
    want = (x * 2 - before) / torch.sqrt(layer.moving_variance + 1e-3)
    torch.testing.assert_close(y, want)
    layer(x * 5, training=True)  # explicit flag wins over the mode
    torch.testing.assert_close(layer.moving_mean, (x * 5).mean(0))


def test_lazy_build_and_input_shape_build_agree():
    lazy = bn.BatchNormalization(axis=1)
    assert not lazy.built and isinstance(lazy.gamma, torch.nn.UninitializedParameter)
    with pytest.raises(bn.BatchNormError, match="not built"):
        lazy.count_params()
    lazy(torch.randn(2, 3, 4))
    eager = bn.BatchNormalization(axis=1, input_shape=(3, 4))
    assert lazy.built and eager.built
    assert [w.shape for w in lazy.get_weights()] == [w.shape for w in eager.get_weights()]


def test_input_that_does_not_match_the_build_is_rejected_without_changes():
    layer = bn.BatchNormalization(axis=1, input_shape=(3, 4))
    before = [w.copy() for w in layer.get_weights()]
    with pytest.raises(bn.BatchNormError, match=r"input\.shape\[1\]=5.*3 channels"):
        layer(torch.randn(2, 5, 4))
    with pytest.raises(bn.BatchNormError, match="input rank=4"):
        layer(torch.randn(2, 3, 4, 1))
    with pytest.raises(bn.BatchNormError, match="inputs='list'"):
        layer([[1.0]])
    for got, want in zip(layer.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_failed_first_call_leaves_the_layer_unbuilt():
    layer = bn.BatchNormalization()
    with pytest.raises(bn.BatchNormError, match="input rank=1"):
        layer(torch.randn(5))
    with pytest.raises(bn.BatchNormError, match="training='yes'"):
        layer(torch.randn(5, 2), training="yes")
    assert not layer.built


@pytest.mark.parametrize(
    ("kwargs", "argument", "value"),
    [
        ({"axis": "1"}, "axis", "'1'"),
        ({"axis": []}, "axis", "[]"),
        ({"momentum": -0.1}, "momentum", "-0.1"),
        ({"epsilon": "small"}, "epsilon", "'small'"),
        ({"center": 1}, "center", "1"),
        ({"fused": 0}, "fused", "0"),
        ({"dtype": "int8"}, "dtype", "'int8'"),
        ({"gamma_initializer": "nope"}, "gamma_initializer", "'nope'"),
        ({"beta_regularizer": "l3"}, "beta_regularizer", "'l3'"),
        ({"gamma_constraint": 5}, "gamma_constraint", "5"),
        ({"name": 3}, "name", "3"),
    ],
)
def test_constructor_errors_name_argument_and_value(kwargs, argument, value):
    with pytest.raises(bn.BatchNormError) as error:
        bn.BatchNormalization(**kwargs)
    assert argument in str(error.value) and value in str(error.value)


def test_set_weights_checks_everything_before_writing():
    layer = bn.BatchNormalization(input_shape=(3,))
    before = layer.get_weights()
    bad = [np.ones(3), np.ones(3), np.ones(3), np.ones(4)]
    with pytest.raises(bn.BatchNormError, match=r"weights\[3\]\.shape.*\(4,\).*\(3,\)"):
        layer.set_weights(bad)
    with pytest.raises(bn.BatchNormError, match="len\\(weights\\)=3"):
        layer.set_weights(bad[:3])
    for got, want in zip(layer.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_from_config_rejects_unknown_keys():
    with pytest.raises(bn.BatchNormError, match="config keys=\\['eval_me'\\]"):
        bn.BatchNormalization.from_config({"eval_me": "__import__('os')"})


def test_get_config_is_raw_before_build_and_normalised_after():
    layer = bn.BatchNormalization(axis=-1)
    assert layer.get_config()["axis"] == -1
    layer.build((None, 2, 3))
    assert layer.get_config()["axis"] == [2]


def test_16bit_inputs_keep_float32_state_and_return_their_dtype(generator):
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(4, 3, 5, 5, generator=generator).to(dtype)
        layer = bn.BatchNormalization(axis=1)
        y = layer(x, training=True)
        assert y.dtype == dtype
        assert all(w.dtype == torch.float32 for w in layer.weights)
        assert y.is_contiguous()


def test_dtype_policies():
    for name, variables, compute in [
        ("mixed_float16", torch.float32, torch.float16),
        ("bfloat16", torch.float32, torch.bfloat16),
        ("float64", torch.float64, torch.float64),
    ]:
        layer = bn.BatchNormalization(dtype=name, input_shape=(3,))
        assert all(w.dtype == variables for w in layer.weights)
        assert layer(torch.randn(4, 3)).dtype == compute


def test_integer_input_is_cast_to_the_variable_dtype_in_inference_only():
    layer = bn.BatchNormalization()
    y = layer(torch.arange(12).reshape(4, 3), training=False)
    assert y.dtype == torch.float32
    with pytest.raises(bn.BatchNormError, match=r"inputs\.dtype=torch\.int64"):
        layer(torch.arange(12).reshape(4, 3), training=True)


def test_channels_last_stays_channels_last(generator):
    x = torch.randn(4, 3, 5, 6, generator=generator).contiguous(memory_format=torch.channels_last)
    layer = bn.BatchNormalization(axis=1)
    for training in (True, False):
        y = layer(x, training=training)
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_losses_are_differentiable_and_regularize_gamma():
    layer = bn.BatchNormalization(
        gamma_regularizer={"class_name": "L2", "config": {"l2": 0.5}},
        gamma_initializer={"class_name": "Constant", "config": {"value": 2.0}},
        input_shape=(3,),
    )
    (penalty,) = layer.losses
    penalty.backward()
    torch.testing.assert_close(layer.gamma.grad, 2 * 0.5 * layer.gamma.detach())


def test_constraints_apply_after_each_optimizer_step():
    """Oracle: the SGD step written out (gamma - lr * grad), then NonNeg's max(., 0)."""
    layer = bn.BatchNormalization(gamma_constraint="non_neg", input_shape=(3,))
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    handle = bn.constraints.register_optimizer_hook(optimizer, layer)
    for grad, hooked in (
        (torch.tensor([2.0, -1.0, 5.0]), True),
        (torch.tensor([1.0, 3.0, 0.0]), False),
    ):
        if not hooked:
            handle.remove()
        stepped = layer.gamma.detach() - 1.0 * grad
        want = stepped.clamp(min=0.0) if hooked else stepped
        layer.gamma.grad, layer.beta.grad = grad, torch.zeros(3)
        optimizer.step()
        torch.testing.assert_close(layer.gamma.detach(), want, rtol=0, atol=0)
    assert (layer.gamma < 0).any()  # the unhooked step left a negative entry unprojected


def test_constraints_are_not_applied_in_the_forward_pass():
    layer = bn.BatchNormalization(gamma_constraint="non_neg", input_shape=(2,))
    layer.set_weights([np.array([-1.0, 1.0]), np.zeros(2), np.zeros(2), np.ones(2)])
    y = layer.eval()(torch.ones(1, 2))
    assert y[0, 0] < 0


def test_state_dict_from_an_unknown_version_is_refused():
    layer = bn.BatchNormalization(input_shape=(2,))
    state = layer.state_dict()
    state["_extra_state"] = {"format_version": 99, "build_input_shape": [None, 2]}
    with pytest.raises(bn.BatchNormError, match="format_version"):
        bn.BatchNormalization().load_state_dict(state)


def test_deepcopy_and_module_conveniences(generator):
    layer = bn.BatchNormalization(axis=1, input_shape=(3, 4))
    twin = copy.deepcopy(layer)
    assert twin.get_config() == layer.get_config()
    assert "axis=1" in repr(layer)
    assert layer.compute_output_shape((None, 3, 4)) == (None, 3, 4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert layer.compute_mask(torch.zeros(2, 3, 4), mask) is mask
    assert layer.variables == layer.weights


def test_an_unbuilt_layer_has_no_weights_as_in_keras():
    """Keras: ``get_weights()`` of an unbuilt layer is ``[]`` and ``set_weights([])`` works."""
    layer = bn.BatchNormalization(gamma_regularizer="l2", gamma_constraint="non_neg")
    assert layer.get_weights() == [] and layer.weights == [] and layer.losses == []
    assert layer.trainable_weights == [] and layer.non_trainable_weights == []
    layer.set_weights([])
    layer.apply_constraints()
    with pytest.raises(bn.BatchNormError, match=r"len\(weights\)=1; expected \[\] \(layer"):
        layer.set_weights([np.ones(3)])
    assert not layer.built
    assert bn.BatchNormalization.supports_masking and layer.supports_masking


@pytest.mark.parametrize(
    ("convert", "name", "compute"),
    [
        (lambda layer: layer.half(), "float16", "float16"),
        (lambda layer: layer.to(torch.bfloat16), "bfloat16", "bfloat16"),
        (lambda layer: layer.double(), "float64", "float64"),
        (lambda layer: layer.float(), "float32", None),
    ],
)
def test_dtype_and_config_follow_the_module_after_conversion(convert, name, compute):
    """After ``.to()``/``.half()`` the layer computes in, and reports, its weights' dtype."""
    layer = bn.BatchNormalization(axis=1, input_shape=(3, 2))
    convert(layer)
    assert layer.dtype == name and layer.get_config()["dtype"] == name
    assert layer.compute_dtype == compute
    y = layer(torch.randn(4, 3, 2), training=True)
    assert y.dtype == getattr(torch, name)
    rebuilt = bn.BatchNormalization.from_config(layer.get_config())
    assert rebuilt.dtype == name


def test_a_policy_name_survives_a_move_to_another_device():
    layer = bn.BatchNormalization(dtype="mixed_float16", input_shape=(3,)).to("cpu")
    assert layer.get_config()["dtype"] == "mixed_float16"
    assert (layer.dtype, layer.compute_dtype) == ("float32", "float16")


def test_options_are_checked_once_and_again_after_a_change(monkeypatch):
    """The layer keeps its checked options; setting one makes the next call check them anew."""
    checks = []
    check_options = bn.layer.check_options
    monkeypatch.setattr(
        bn.layer, "check_options", lambda **o: checks.append(o) or check_options(**o)
    )
    layer = bn.BatchNormalization(axis=1, momentum=0.9, input_shape=(3, 2))
    x = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        layer(x, training=True)
    assert len(checks) == 1
    before = layer.moving_mean.clone()
    layer.momentum = 0.5  # takes effect at the next call
    layer(x, training=True)
    assert len(checks) == 2 and checks[-1]["momentum"] == 0.5
    want = batch_norm(x, before, torch.ones(3), training=True, axis=1, momentum=0.5)
    torch.testing.assert_close(layer.moving_mean, want.new_stats["moving_mean"])
    layer.momentum = 5.0  # refused by the next call, which changes nothing
    state = {k: v.clone() for k, v in layer.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(bn.BatchNormError, match=r"momentum=5\.0"):
        layer(x, training=True)
    for key, value in state.items():
        assert torch.equal(layer.state_dict()[key], value), key
