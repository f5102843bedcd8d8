"""Regularizers: penalties and their gradients against numpy, names, configs and errors.

Oracles: the Keras formulas ``l1 * sum|w| + l2 * sum w**2`` (and their derivatives) evaluated with
numpy; Keras' reference cases from tf-semantics.md 10.4 rebuilt from their inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from batchnorm import regularizers
from batchnorm._errors import BatchNormError

# Keras' names and the factors each implies: (class, l1, l2); None marks a factor the class lacks.
KERAS_NAMES = {
    "l1": (regularizers.L1, 0.01, None),
    "l2": (regularizers.L2, None, 0.01),
    "l1_l2": (regularizers.L1L2, 0.01, 0.01),
    "L1": (regularizers.L1, 0.01, None),
    "L2": (regularizers.L2, None, 0.01),
    "L1L2": (regularizers.L1L2, 0.0, 0.0),
}

INSTANCES = [
    regularizers.L1(0.3),
    regularizers.L2(0.7),
    regularizers.L1L2(l1=0.25, l2=0.125),
    regularizers.L1L2(l2=2.0),
]


def numpy_penalty(weight: np.ndarray, l1: float, l2: float) -> float:
    return l1 * np.sum(np.abs(weight)) + l2 * np.sum(np.square(weight))


def factors(regularizer: regularizers.Regularizer) -> tuple[float, float]:
    return getattr(regularizer, "l1", 0.0), getattr(regularizer, "l2", 0.0)


# ---- Keras reference cases -------------------------------------------------------------------


def test_keras_reference_l2_on_gamma() -> None:
    gamma = np.full(4, 3.0, dtype=np.float32)
    penalty = regularizers.L2(0.1)(torch.from_numpy(gamma))
    assert penalty.item() == pytest.approx(0.1 * np.sum(gamma**2), rel=1e-6)


def test_keras_reference_l1_on_beta() -> None:
    beta = np.full(4, -2.0, dtype=np.float32)
    penalty = regularizers.L1(0.2)(torch.from_numpy(beta))
    assert penalty.item() == pytest.approx(0.2 * np.sum(np.abs(beta)), rel=1e-6)


def test_keras_reference_l2_string() -> None:
    gamma = np.random.default_rng(0).normal(size=7)
    penalty = regularizers.get("l2")(torch.from_numpy(gamma))
    assert penalty.item() == pytest.approx(0.01 * np.sum(gamma**2), rel=1e-12)


# ---- values and gradients --------------------------------------------------------------------


@pytest.mark.parametrize("regularizer", INSTANCES, ids=repr)
def test_penalty_and_gradient_match_numpy(regularizer: regularizers.Regularizer) -> None:
    weight = np.random.default_rng(1).normal(size=(3, 5))
    tensor = torch.tensor(weight, requires_grad=True)
    penalty = regularizer(tensor)
    assert penalty.shape == ()
    assert penalty.dtype == torch.float64
    l1, l2 = factors(regularizer)
    assert penalty.item() == pytest.approx(numpy_penalty(weight, l1, l2), rel=1e-12)
    (penalty * 3.0).backward()  # as part of a larger loss
    expected_grad = 3.0 * (l1 * np.sign(weight) + 2 * l2 * weight)
    np.testing.assert_allclose(tensor.grad.numpy(), expected_grad, rtol=1e-12)


def test_zero_factors_drop_their_term_as_in_keras() -> None:
    assert regularizers.L1L2()(torch.tensor([float("inf"), 1.0])).item() == 0.0
    # 1e20 ** 2 overflows float32: a kept zero-factor L2 term would give 0 * inf = nan.
    big = torch.tensor([1e20], dtype=torch.float32)
    assert regularizers.L1L2(l1=0.5)(big).item() == pytest.approx(0.5e20)


def test_penalty_keeps_the_weight_dtype() -> None:
    weight = torch.ones(4, dtype=torch.bfloat16)
    assert regularizers.L1L2(0.1, 0.1)(weight).dtype == torch.bfloat16


def test_non_tensor_weight_is_rejected() -> None:
    with pytest.raises(BatchNormError) as raised:
        regularizers.L2()([1.0, 2.0])
    assert "weight=[1.0, 2.0]" in str(raised.value)


# ---- names, configs and serialization --------------------------------------------------------


@pytest.mark.parametrize("name", list(KERAS_NAMES))
def test_every_keras_name_resolves_with_keras_defaults(name: str) -> None:
    cls, l1, l2 = KERAS_NAMES[name]
    regularizer = regularizers.get(name)
    assert type(regularizer) is cls
    expected = {key: value for key, value in (("l1", l1), ("l2", l2)) if value is not None}
    assert regularizer.get_config() == expected


def test_l1_l2_name_defaults_yield_to_a_config() -> None:
    regularizer = regularizers.deserialize({"class_name": "l1_l2", "config": {"l1": 0.5}})
    assert regularizer.get_config() == {"l1": 0.5, "l2": 0.01}


def test_get_passes_none_instances_and_callables_through() -> None:
    regularizer = regularizers.L1(0.5)

    def custom(weight: torch.Tensor) -> torch.Tensor:
        return weight.sum()

    assert regularizers.get(None) is None
    assert regularizers.get(regularizer) is regularizer
    assert regularizers.get(custom) is custom
    assert type(regularizers.get(regularizers.L2)) is regularizers.L2


def test_get_accepts_a_keras_config_dict_with_its_extra_keys() -> None:
    keras_config = {
        "module": "keras.regularizers",
        "class_name": "L2",
        "config": {"l2": 0.1},
        "registered_name": None,
    }
    assert regularizers.get(keras_config).get_config() == {"l2": 0.1}


@pytest.mark.parametrize("regularizer", INSTANCES, ids=repr)
def test_config_survives_json_and_from_config(regularizer: regularizers.Regularizer) -> None:
    config = json.loads(json.dumps(regularizer.get_config()))
    rebuilt = type(regularizer).from_config(config)
    assert rebuilt.get_config() == regularizer.get_config()


@pytest.mark.parametrize("regularizer", INSTANCES, ids=repr)
def test_serialize_then_deserialize(regularizer: regularizers.Regularizer) -> None:
    serialized = json.loads(json.dumps(regularizers.serialize(regularizer)))
    assert serialized == {
        "class_name": type(regularizer).__name__,
        "config": regularizer.get_config(),
    }
    rebuilt = regularizers.deserialize(serialized)
    assert type(rebuilt) is type(regularizer)
    assert rebuilt.get_config() == regularizer.get_config()


def test_serialize_rejects_a_plain_callable() -> None:
    def custom(weight: torch.Tensor) -> torch.Tensor:
        return weight.sum()

    with pytest.raises(BatchNormError) as raised:
        regularizers.serialize(custom, argument="gamma_regularizer")
    assert "gamma_regularizer=<function" in str(raised.value)
    assert "cannot be serialized" in str(raised.value)


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: regularizers.L1(-0.1), "l1=-0.1"),
        (lambda: regularizers.L2(float("nan")), "l2=nan"),
        (lambda: regularizers.L2(float("inf")), "l2=inf"),
        (lambda: regularizers.L1L2(l1="0.1"), "l1='0.1'"),
        (lambda: regularizers.L1L2(l2=True), "l2=True"),
        (lambda: regularizers.L1L2(l1=0.0, l2=-1), "l2=-1"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_factors_must_be_non_negative_finite_floats(build: object, fragment: str) -> None:
    with pytest.raises(BatchNormError) as raised:
        build()
    assert fragment in str(raised.value)
    assert ">= 0" in str(raised.value)


@pytest.mark.parametrize(
    ("identifier", "fragment"),
    [
        ("l3", "beta_regularizer='l3'"),
        (0.01, "beta_regularizer=0.01"),
        ({"class_name": "L4"}, "beta_regularizer['class_name']='L4'"),
        ({"class_name": "L1", "config": {"l2": 0.1}}, "unknown: ['l2']"),
        ({"class_name": "L1", "config": {"l1": -1.0}}, "l1=-1.0"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_get_rejects_bad_identifiers_naming_argument_and_value(
    identifier: object, fragment: str
) -> None:
    with pytest.raises(BatchNormError) as raised:
        regularizers.get(identifier, argument="beta_regularizer")
    message = str(raised.value)
    assert "beta_regularizer" in message
    assert fragment in message


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(BatchNormError) as raised:
        regularizers.get("l3")
    for name in KERAS_NAMES:
        assert repr(name) in str(raised.value)
