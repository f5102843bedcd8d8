"""Constraints: the projections against numpy, names, configs, errors, and the optimizer hooks.

Oracles: Keras' formulas (epsilon 1e-7 added to the norm) evaluated with numpy; tf-semantics.md
10.5's NonNeg case; a real ``torch.optim.SGD`` step whose result is recomputed by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from batchnorm import constraints
from batchnorm._errors import BatchNormError

EPSILON = 1e-7

KERAS_NAMES = {
    "non_neg": constraints.NonNeg,
    "unit_norm": constraints.UnitNorm,
    "max_norm": constraints.MaxNorm,
    "min_max_norm": constraints.MinMaxNorm,
}

INSTANCES = [
    constraints.NonNeg(),
    constraints.UnitNorm(axis=1),
    constraints.MaxNorm(max_value=1.5, axis=[0, 2]),
    constraints.MinMaxNorm(min_value=0.5, max_value=2.0, rate=0.25, axis=-1),
]


# ---- numpy oracles ---------------------------------------------------------------------------


def numpy_norms(w: np.ndarray, axis: int | list[int]) -> np.ndarray:
    return np.sqrt(np.sum(np.square(w), axis=tuple(np.atleast_1d(axis)), keepdims=True))


def numpy_unit_norm(w: np.ndarray, axis: int | list[int]) -> np.ndarray:
    return w / (EPSILON + numpy_norms(w, axis))


def numpy_max_norm(w: np.ndarray, max_value: float, axis: int | list[int]) -> np.ndarray:
    norms = numpy_norms(w, axis)
    return w * (np.clip(norms, 0, max_value) / (EPSILON + norms))


def numpy_min_max_norm(
    w: np.ndarray, min_value: float, max_value: float, rate: float, axis: int | list[int]
) -> np.ndarray:
    norms = numpy_norms(w, axis)
    desired = rate * np.clip(norms, min_value, max_value) + (1 - rate) * norms
    return w * (desired / (EPSILON + norms))


def weight(shape: tuple[int, ...]) -> np.ndarray:
    """Random weights whose slices have norms on both sides of the bounds used below."""
    rng = np.random.default_rng(0)
    return rng.normal(size=shape) * rng.uniform(0.05, 2.0, size=shape[-1])


AXES = [0, 1, -1, [0, 1], [0, 2]]


# ---- projections -----------------------------------------------------------------------------


def test_keras_reference_non_neg() -> None:
    values = [-1.0, 2.0, -3.0]
    result = constraints.NonNeg()(torch.tensor(values))
    np.testing.assert_array_equal(result.numpy(), np.maximum(np.array(values, np.float32), 0))


def test_non_neg_on_random_weights_and_nan() -> None:
    w = weight((4, 6))
    np.testing.assert_array_equal(
        constraints.NonNeg()(torch.from_numpy(w)).numpy(), np.where(w < 0, 0, w)
    )
    assert torch.isnan(constraints.NonNeg()(torch.tensor([float("nan")]))).item()


@pytest.mark.parametrize("axis", AXES, ids=str)
def test_unit_norm_matches_keras(axis: int | list[int]) -> None:
    w = weight((3, 4, 5))
    result = constraints.UnitNorm(axis=axis)(torch.from_numpy(w))
    np.testing.assert_allclose(result.numpy(), numpy_unit_norm(w, axis), rtol=1e-12)


@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("max_value", [0.0, 0.8, 2.0])
def test_max_norm_matches_keras(axis: int | list[int], max_value: float) -> None:
    w = weight((3, 4, 5))
    result = constraints.MaxNorm(max_value=max_value, axis=axis)(torch.from_numpy(w))
    np.testing.assert_allclose(result.numpy(), numpy_max_norm(w, max_value, axis), rtol=1e-12)


@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("rate", [1.0, 0.3, 0.0])
def test_min_max_norm_matches_keras(axis: int | list[int], rate: float) -> None:
    w = weight((3, 4, 5))
    constraint = constraints.MinMaxNorm(min_value=0.9, max_value=1.6, rate=rate, axis=axis)
    expected = numpy_min_max_norm(w, 0.9, 1.6, rate, axis)
    np.testing.assert_allclose(constraint(torch.from_numpy(w)).numpy(), expected, rtol=1e-12)


def test_default_axis_projects_a_whole_channel_vector() -> None:
    gamma = np.array([3.0, 4.0, 0.0, 12.0])
    result = constraints.MaxNorm()(torch.from_numpy(gamma)).numpy()
    np.testing.assert_allclose(result, numpy_max_norm(gamma, 2.0, 0), rtol=1e-12)
    assert np.linalg.norm(result) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("constraint", INSTANCES, ids=repr)
def test_constraints_return_a_new_tensor_of_the_same_dtype(
    constraint: constraints.Constraint,
) -> None:
    w = torch.from_numpy(weight((3, 4, 5)) - 0.5)
    before = w.clone()
    result = constraint(w)
    assert result.dtype == torch.float64
    assert result.shape == w.shape
    assert result.data_ptr() != w.data_ptr()
    torch.testing.assert_close(w, before, rtol=0, atol=0)


@pytest.mark.parametrize("axis", [2, -3, [0, 2]], ids=str)
def test_axis_out_of_range_is_rejected(axis: int | list[int]) -> None:
    with pytest.raises(BatchNormError) as raised:
        constraints.UnitNorm(axis=axis)(torch.ones(2, 2))
    assert f"axis={tuple(axis) if isinstance(axis, list) else axis!r}" in str(raised.value)
    assert "rank 2" in str(raised.value)


def test_non_tensor_weight_is_rejected() -> None:
    with pytest.raises(BatchNormError) as raised:
        constraints.NonNeg()([1.0, -1.0])
    assert "w=[1.0, -1.0]" in str(raised.value)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: constraints.MaxNorm(max_value=-1.0), "max_value=-1.0"),
        (lambda: constraints.MaxNorm(max_value="2"), "max_value='2'"),
        (lambda: constraints.MinMaxNorm(min_value=-0.5), "min_value=-0.5"),
        (lambda: constraints.MinMaxNorm(min_value=2.0, max_value=1.0), "max_value=1.0"),
        (lambda: constraints.MinMaxNorm(rate=1.5), "rate=1.5"),
        (lambda: constraints.UnitNorm(axis="0"), "axis='0'"),
        (lambda: constraints.UnitNorm(axis=[]), "axis=[]"),
        (lambda: constraints.MaxNorm(axis=[0, 1.0]), "axis=[0, 1.0]"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_constructors_reject_bad_arguments(build: object, fragment: str) -> None:
    with pytest.raises(BatchNormError) as raised:
        build()
    assert fragment in str(raised.value)


# ---- names, configs and serialization --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KERAS_NAMES))
def test_every_keras_name_resolves_to_its_class(name: str) -> None:
    cls = KERAS_NAMES[name]
    assert type(constraints.get(name)) is cls
    assert type(constraints.get(cls.__name__)) is cls


def test_keras_defaults() -> None:
    assert constraints.get("max_norm").get_config() == {"max_value": 2.0, "axis": 0}
    assert constraints.get("min_max_norm").get_config() == {
        "min_value": 0.0,
        "max_value": 1.0,
        "rate": 1.0,
        "axis": 0,
    }
    assert constraints.get("unit_norm").get_config() == {"axis": 0}
    assert constraints.get("non_neg").get_config() == {}


def test_get_passes_none_instances_and_callables_through() -> None:
    constraint = constraints.UnitNorm()

    def custom(w: torch.Tensor) -> torch.Tensor:
        return w.clamp(-1, 1)

    assert constraints.get(None) is None
    assert constraints.get(constraint) is constraint
    assert constraints.get(custom) is custom
    assert type(constraints.get(constraints.NonNeg)) is constraints.NonNeg


def test_get_accepts_a_keras_config_dict_with_its_extra_keys() -> None:
    keras_config = {
        "module": "keras.constraints",
        "class_name": "MaxNorm",
        "config": {"max_value": 3, "axis": [0, 1]},
        "registered_name": None,
    }
    constraint = constraints.get(keras_config)
    assert isinstance(constraint, constraints.MaxNorm)
    assert constraint.get_config() == {"max_value": 3.0, "axis": [0, 1]}


@pytest.mark.parametrize("constraint", INSTANCES, ids=repr)
def test_config_survives_json_and_from_config(constraint: constraints.Constraint) -> None:
    config = json.loads(json.dumps(constraint.get_config()))
    rebuilt = type(constraint).from_config(config)
    assert rebuilt.get_config() == constraint.get_config()
    w = torch.from_numpy(weight((3, 4, 5)))
    torch.testing.assert_close(rebuilt(w), constraint(w), rtol=0, atol=0)


@pytest.mark.parametrize("constraint", INSTANCES, ids=repr)
def test_serialize_then_deserialize(constraint: constraints.Constraint) -> None:
    serialized = json.loads(json.dumps(constraints.serialize(constraint)))
    assert serialized["class_name"] == type(constraint).__name__
    rebuilt = constraints.deserialize(serialized)
    assert type(rebuilt) is type(constraint)
    assert rebuilt.get_config() == constraint.get_config()


def test_serialize_rejects_a_plain_callable() -> None:
    with pytest.raises(BatchNormError) as raised:
        constraints.serialize(torch.abs, argument="gamma_constraint")
    assert "gamma_constraint=<built-in method abs" in str(raised.value)
    assert "cannot be serialized" in str(raised.value)


@pytest.mark.parametrize(
    ("identifier", "fragment"),
    [
        ("nonneg", "beta_constraint='nonneg'"),
        (True, "beta_constraint=True"),
        ({"class_name": "Clip"}, "beta_constraint['class_name']='Clip'"),
        ({"class_name": "NonNeg", "config": {"axis": 0}}, "unknown: ['axis']"),
        ({"class_name": "min_max_norm", "config": {"rate": 2}}, "rate=2"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_get_rejects_bad_identifiers_naming_argument_and_value(
    identifier: object, fragment: str
) -> None:
    with pytest.raises(BatchNormError) as raised:
        constraints.get(identifier, argument="beta_constraint")
    message = str(raised.value)
    assert "beta_constraint" in message
    assert fragment in message


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(BatchNormError) as raised:
        constraints.get("nonneg")
    for name in [*KERAS_NAMES, "NonNeg", "MinMaxNorm"]:
        assert repr(name) in str(raised.value)


# ---- applying constraints after an optimizer step --------------------------------------------


class Constrained(torch.nn.Module):
    """A module that takes part in the protocol, as BatchNormalization does."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.tensor(values))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def apply_constraints(self) -> None:
        self.calls += 1
        with torch.no_grad():
            self.gamma.copy_(constraints.NonNeg()(self.gamma))


def test_apply_constraints_visits_every_participating_submodule_once() -> None:
    shared = Constrained([-1.0, 1.0])
    inner = Constrained([2.0, -2.0])
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), shared, torch.nn.Sequential(inner, shared))
    linear_weight = model[0].weight.detach().clone()
    constraints.apply_constraints(model)
    assert (shared.calls, inner.calls) == (1, 1)
    assert shared.gamma.tolist() == [0.0, 1.0]
    assert inner.gamma.tolist() == [2.0, 0.0]
    torch.testing.assert_close(model[0].weight.detach(), linear_weight, rtol=0, atol=0)


def test_apply_constraints_includes_the_module_itself() -> None:
    module = Constrained([-3.0])
    constraints.apply_constraints(module)
    assert module.calls == 1
    assert module.gamma.tolist() == [0.0]


def test_optimizer_hook_projects_after_every_step_until_removed() -> None:
    start = np.array([1.0, -2.0, 0.25], dtype=np.float32)
    x = np.array([1.0, 0.5, 1.0], dtype=np.float32)
    lr = 0.5
    model = Constrained(start.tolist())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    handle = constraints.register_optimizer_hook(optimizer, model)

    # The forward pass sees gamma unconstrained; the step then updates and projects it.
    output = model(torch.from_numpy(x))
    np.testing.assert_array_equal(output.detach().numpy(), x * start)
    output.sum().backward()  # d/dgamma sum(x * gamma) = x
    optimizer.step()
    after_first = np.maximum(start - lr * x, 0)
    np.testing.assert_allclose(model.gamma.detach().numpy(), after_first, rtol=1e-7)
    assert model.calls == 1

    handle.remove()
    optimizer.zero_grad()
    model(torch.from_numpy(x)).sum().backward()
    optimizer.step()
    np.testing.assert_allclose(model.gamma.detach().numpy(), after_first - lr * x, rtol=1e-7)
    assert model.calls == 1


def test_register_optimizer_hook_rejects_wrong_types() -> None:
    model = Constrained([1.0])
    with pytest.raises(BatchNormError) as raised:
        constraints.register_optimizer_hook("sgd", model)
    assert "optimizer='sgd'" in str(raised.value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(BatchNormError) as raised:
        constraints.register_optimizer_hook(optimizer, [model])
    assert "module=[Constrained()]" in str(raised.value)
    with pytest.raises(BatchNormError) as raised:
        constraints.apply_constraints(None)
    assert "module=None" in str(raised.value)
