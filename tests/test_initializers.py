"""Initializers: name registry, configs, seeding, dtypes, and distributions against Keras' formulas.

Oracles: the formulas of the Keras documentation, evaluated here independently (fans from the
shape, the truncated-normal variance from ``math.erf``), checked on large seeded samples.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from batchnorm import initializers
from batchnorm._errors import BatchNormError

# Keras' names for each class (the snake_case name and the class name both resolve).
KERAS_NAMES = {
    "zeros": initializers.Zeros,
    "ones": initializers.Ones,
    "constant": initializers.Constant,
    "random_normal": initializers.RandomNormal,
    "random_uniform": initializers.RandomUniform,
    "truncated_normal": initializers.TruncatedNormal,
    "variance_scaling": initializers.VarianceScaling,
    "glorot_normal": initializers.GlorotNormal,
    "glorot_uniform": initializers.GlorotUniform,
    "he_normal": initializers.HeNormal,
    "he_uniform": initializers.HeUniform,
    "lecun_normal": initializers.LecunNormal,
    "lecun_uniform": initializers.LecunUniform,
}

# One non-default instance of every class, for the round trips.
INSTANCES = [
    initializers.Zeros(),
    initializers.Ones(),
    initializers.Constant(value=-1.5),
    initializers.RandomNormal(mean=0.5, stddev=2.0, seed=11),
    initializers.RandomUniform(minval=-3.0, maxval=1.0, seed=12),
    initializers.TruncatedNormal(mean=-1.0, stddev=0.5, seed=13),
    initializers.VarianceScaling(scale=2.5, mode="fan_avg", distribution="uniform", seed=14),
    initializers.VarianceScaling(scale=0.5, mode="fan_out", distribution="untruncated_normal"),
    initializers.GlorotNormal(seed=15),
    initializers.GlorotUniform(seed=16),
    initializers.HeNormal(seed=17),
    initializers.HeUniform(),
    initializers.LecunNormal(seed=18),
    initializers.LecunUniform(seed=19),
]


def instance_id(init: initializers.Initializer) -> str:
    return repr(init)


def truncated_std_ratio() -> float:
    """Standard deviation of N(0, 1) truncated to [-2, 2], from the closed form."""
    density_at_2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    return math.sqrt(1 - 2 * 2 * density_at_2 / mass)


def keras_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras' documented fans: vector (n, n); matrix (rows, cols); kernel (..., in, out)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


# ---- names and identifiers -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KERAS_NAMES))
def test_every_keras_name_resolves_to_its_class(name: str) -> None:
    cls = KERAS_NAMES[name]
    assert type(initializers.get(name)) is cls
    assert type(initializers.get(cls.__name__)) is cls


def test_get_passes_none_instances_and_callables_through() -> None:
    init = initializers.HeUniform(seed=3)

    def custom(shape: tuple[int, ...], dtype: torch.dtype | None = None) -> np.ndarray:
        return np.zeros(shape)

    assert initializers.get(None) is None
    assert initializers.get(init) is init
    assert initializers.get(custom) is custom
    assert type(initializers.get(initializers.Ones)) is initializers.Ones


def test_get_accepts_a_keras_config_dict_with_its_extra_keys() -> None:
    keras_config = {
        "module": "keras.initializers",
        "class_name": "RandomNormal",
        "config": {"mean": 0.0, "stddev": 0.05, "seed": None},
        "registered_name": None,
    }
    init = initializers.get(keras_config)
    assert isinstance(init, initializers.RandomNormal)
    assert init.get_config() == keras_config["config"]


def test_snake_case_name_in_a_config_dict_resolves() -> None:
    init = initializers.deserialize({"class_name": "glorot_uniform", "config": {"seed": 4}})
    assert isinstance(init, initializers.GlorotUniform)
    assert init.seed == 4


@pytest.mark.parametrize(
    ("identifier", "fragment"),
    [
        ("glorot", "gamma_initializer='glorot'"),
        (42, "gamma_initializer=42"),
        (["zeros"], "gamma_initializer=['zeros']"),
        ({"class_name": "Nope"}, "gamma_initializer['class_name']='Nope'"),
        ({"config": {}}, "gamma_initializer={'config': {}}"),
        ({"class_name": "Zeros", "cofig": {}}, "unknown keys: ['cofig']"),
        ({"class_name": "Zeros", "config": [1]}, "gamma_initializer['config']=[1]"),
        ({"class_name": "RandomNormal", "config": {"stdev": 1.0}}, "unknown: ['stdev']"),
        ({"class_name": "RandomNormal", "config": {"stddev": -1.0}}, "stddev=-1.0"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_get_rejects_bad_identifiers_naming_argument_and_value(
    identifier: object, fragment: str
) -> None:
    with pytest.raises(BatchNormError) as raised:
        initializers.get(identifier, argument="gamma_initializer")
    assert "gamma_initializer" in str(raised.value)
    assert fragment in str(raised.value)


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(BatchNormError) as raised:
        initializers.get("glorot")
    message = str(raised.value)
    assert "initializer='glorot'" in message
    for name in KERAS_NAMES:
        assert repr(name) in message
    assert "'GlorotUniform'" in message


# ---- configs and serialization ---------------------------------------------------------------


@pytest.mark.parametrize("init", INSTANCES, ids=instance_id)
def test_config_survives_json_and_from_config(init: initializers.Initializer) -> None:
    config = json.loads(json.dumps(init.get_config()))
    rebuilt = type(init).from_config(config)
    assert rebuilt.get_config() == init.get_config()
    if getattr(init, "seed", 0) is not None:  # deterministic: the same values too
        torch.testing.assert_close(rebuilt((6, 5)), init((6, 5)), rtol=0, atol=0)


@pytest.mark.parametrize("init", INSTANCES, ids=instance_id)
def test_serialize_then_deserialize_rebuilds_the_same_initializer(
    init: initializers.Initializer,
) -> None:
    serialized = json.loads(json.dumps(initializers.serialize(init)))
    assert serialized["class_name"] == type(init).__name__
    rebuilt = initializers.deserialize(serialized)
    assert type(rebuilt) is type(init)
    assert rebuilt.get_config() == init.get_config()


def test_named_variance_scaling_configs_hold_only_the_seed() -> None:
    assert initializers.GlorotUniform(seed=2).get_config() == {"seed": 2}
    with pytest.raises(BatchNormError) as raised:
        initializers.GlorotUniform.from_config({"seed": None, "scale": 2.0})
    assert "unknown: ['scale']" in str(raised.value)


def test_serialize_rejects_a_plain_callable() -> None:
    def custom(shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.zeros(shape)

    with pytest.raises(BatchNormError) as raised:
        initializers.serialize(custom, argument="beta_initializer")
    assert "beta_initializer=<function" in str(raised.value)
    assert "cannot be serialized" in str(raised.value)


def test_serialize_rejects_an_unregistered_subclass() -> None:
    class Twos(initializers.Initializer):
        def __call__(self, shape: object, dtype: object = None) -> torch.Tensor:
            return torch.full((2,), 2.0)

    with pytest.raises(BatchNormError) as raised:
        initializers.serialize(Twos())
    assert "initializer=Twos()" in str(raised.value)
    assert "cannot be serialized" in str(raised.value)


def test_none_serializes_and_deserializes_to_none() -> None:
    assert initializers.serialize(None) is None
    assert initializers.deserialize(None) is None


def test_from_config_rejects_a_non_dict() -> None:
    with pytest.raises(BatchNormError) as raised:
        initializers.Constant.from_config([1.0])
    assert "config=[1.0]" in str(raised.value)


# ---- constructor arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: initializers.Constant("a"), "value='a'"),
        (lambda: initializers.Constant(float("nan")), "value=nan"),
        (lambda: initializers.RandomNormal(stddev=-0.5), "stddev=-0.5"),
        (lambda: initializers.RandomNormal(mean=True), "mean=True"),
        (lambda: initializers.TruncatedNormal(stddev=float("inf")), "stddev=inf"),
        (lambda: initializers.RandomUniform(minval=1.0, maxval=0.5), "maxval=0.5"),
        (lambda: initializers.VarianceScaling(scale=0.0), "scale=0.0"),
        (lambda: initializers.VarianceScaling(mode="fan"), "mode='fan'"),
        (lambda: initializers.VarianceScaling(distribution="normal"), "distribution='normal'"),
        (lambda: initializers.GlorotUniform(seed=-1), "seed=-1"),
        (lambda: initializers.HeNormal(seed=1.5), "seed=1.5"),
        (lambda: initializers.LecunNormal(seed=True), "seed=True"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_constructors_reject_bad_arguments(build: object, fragment: str) -> None:
    with pytest.raises(BatchNormError) as raised:
        build()
    assert fragment in str(raised.value)


# ---- shapes and dtypes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("init", "oracle"),
    [
        (initializers.Zeros(), lambda shape: np.zeros(shape)),
        (initializers.Ones(), lambda shape: np.ones(shape)),
        (initializers.Constant(2.25), lambda shape: np.full(shape, 2.25)),
    ],
    ids=["zeros", "ones", "constant"],
)
@pytest.mark.parametrize("shape", [(), (4,), (2, 3, 5)], ids=str)
def test_deterministic_initializers_match_numpy(
    init: initializers.Initializer, oracle: object, shape: tuple[int, ...]
) -> None:
    np.testing.assert_array_equal(init(shape).numpy(), oracle(shape))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (None, torch.float32),
        ("float64", torch.float64),
        (torch.float16, torch.float16),
        ("bfloat16", torch.bfloat16),
    ],
)
@pytest.mark.parametrize("init", INSTANCES, ids=instance_id)
def test_dtype_is_honoured(
    init: initializers.Initializer, dtype: object, expected: torch.dtype
) -> None:
    assert init((3, 2), dtype).dtype == expected


def test_half_precision_draws_are_the_float32_draws_rounded() -> None:
    init = initializers.GlorotUniform(seed=8)
    reference = init((50,)).to(torch.bfloat16)
    torch.testing.assert_close(init((50,), "bfloat16"), reference, rtol=0, atol=0)


def test_constant_initializers_accept_integer_dtypes() -> None:
    values = initializers.Constant(3)((2,), "int64")
    assert values.dtype == torch.int64
    assert values.tolist() == [3, 3]


@pytest.mark.parametrize("dtype", ["int32", torch.int64, "not_a_dtype", "Tensor", 3])
def test_random_initializers_reject_non_float_dtypes(dtype: object) -> None:
    with pytest.raises(BatchNormError) as raised:
        initializers.RandomNormal(seed=0)((2,), dtype)
    assert f"dtype={dtype!r}" in str(raised.value)


@pytest.mark.parametrize("shape", [5, [5], torch.Size([5])], ids=repr)
def test_shape_forms(shape: object) -> None:
    assert initializers.HeUniform(seed=0)(shape).shape == (5,)


@pytest.mark.parametrize("shape", [-1, (2, -3), "ab", 2.5, (2.0, 3)], ids=repr)
def test_bad_shapes_are_rejected(shape: object) -> None:
    with pytest.raises(BatchNormError) as raised:
        initializers.Zeros()(shape)
    assert f"shape={shape!r}" in str(raised.value)


# ---- seeding ---------------------------------------------------------------------------------

RANDOM_CLASSES = [
    initializers.RandomNormal,
    initializers.RandomUniform,
    initializers.TruncatedNormal,
    initializers.VarianceScaling,
    initializers.GlorotNormal,
    initializers.GlorotUniform,
    initializers.HeNormal,
    initializers.HeUniform,
    initializers.LecunNormal,
    initializers.LecunUniform,
]


@pytest.mark.parametrize("cls", RANDOM_CLASSES, ids=lambda cls: cls.__name__)
def test_seeded_initializers_are_deterministic_and_leave_the_global_rng_alone(cls: type) -> None:
    state = torch.get_rng_state()
    first = cls(seed=5)((40,))
    again = cls(seed=5)((40,))
    repeat = cls(seed=5)
    other = cls(seed=6)((40,))
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(repeat((40,)), repeat((40,)), rtol=0, atol=0)
    assert not torch.equal(other, first)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("cls", RANDOM_CLASSES, ids=lambda cls: cls.__name__)
def test_unseeded_initializers_draw_from_the_global_rng(cls: type) -> None:
    init = cls()
    torch.manual_seed(21)
    first, second = init((40,)), init((40,))
    torch.manual_seed(21)
    torch.testing.assert_close(init((40,)), first, rtol=0, atol=0)
    assert not torch.equal(first, second)


# ---- distributions ---------------------------------------------------------------------------

SAMPLE_SHAPE = (400, 500)  # 200,000 draws: a standard error of the std below 0.2 %


def assert_moments(values: torch.Tensor, mean: float, std: float, rel: float = 0.01) -> None:
    sample = values.double().numpy().ravel()
    standard_error = std / math.sqrt(sample.size)
    assert abs(sample.mean() - mean) < 6 * standard_error + 1e-12
    assert sample.std() == pytest.approx(std, rel=rel)


def assert_bounded(values: torch.Tensor, low: float, high: float) -> None:
    """Every draw within [low, high], and the draws reach both ends (the bound is tight)."""
    sample = values.double().numpy().ravel()
    width = high - low
    assert sample.min() >= low
    assert sample.max() <= high
    assert sample.min() < low + 0.01 * width
    assert sample.max() > high - 0.01 * width


def test_random_normal_moments() -> None:
    values = initializers.RandomNormal(mean=1.5, stddev=0.3, seed=0)(SAMPLE_SHAPE)
    assert_moments(values, 1.5, 0.3)


def test_random_uniform_bounds_and_moments() -> None:
    values = initializers.RandomUniform(minval=-1.0, maxval=3.0, seed=0)(SAMPLE_SHAPE)
    assert_bounded(values, -1.0, 3.0)
    assert_moments(values, 1.0, 4.0 / math.sqrt(12))


def test_truncated_normal_is_cut_at_two_stddev() -> None:
    mean, stddev = -0.5, 0.2
    values = initializers.TruncatedNormal(mean=mean, stddev=stddev, seed=0)(SAMPLE_SHAPE)
    assert_bounded(values, mean - 2 * stddev, mean + 2 * stddev)
    assert_moments(values, mean, stddev * truncated_std_ratio())


def test_float64_draws_have_the_same_distribution() -> None:
    values = initializers.RandomNormal(stddev=2.0, seed=1)(SAMPLE_SHAPE, torch.float64)
    assert values.dtype == torch.float64
    assert_moments(values, 0.0, 2.0)


FAN_SHAPES = [(200000,), (500, 400), (2, 2, 250, 200), (5, 4, 100, 100)]


@pytest.mark.parametrize("shape", FAN_SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "untruncated_normal", "uniform"])
def test_variance_scaling_matches_keras_formula(
    shape: tuple[int, ...], mode: str, distribution: str
) -> None:
    scale = 3.0
    fan_in, fan_out = keras_fans(shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    std = math.sqrt(scale / fan)
    init = initializers.VarianceScaling(scale, mode, distribution, seed=2)
    values = init(shape)
    # Keras corrects the truncated normal so that every distribution has variance scale / fan.
    assert_moments(values, 0.0, std)
    if distribution == "uniform":
        limit = math.sqrt(3 * scale / fan)
        assert_bounded(values, -limit, limit)
    elif distribution == "truncated_normal":
        limit = 2 * std / truncated_std_ratio()
        assert_bounded(values, -limit, limit)
    else:
        assert values.abs().max().item() > 4 * std  # untruncated: the tails are there


def test_variance_scaling_fans_are_at_least_one() -> None:
    """A scalar has fans (1, 1); a zero fan is clamped to 1 instead of dividing by zero."""
    init = initializers.VarianceScaling(scale=4.0, distribution="uniform", seed=0)
    scalar = init(())
    assert scalar.shape == ()
    assert abs(scalar.item()) <= math.sqrt(3 * 4.0)
    empty_in = init((0, 10))
    assert empty_in.shape == (0, 10)


# Keras' closed forms for the named variance-scaling initializers.
NAMED = {
    "glorot_uniform": ("uniform", lambda fi, fo: math.sqrt(6 / (fi + fo))),
    "he_uniform": ("uniform", lambda fi, fo: math.sqrt(6 / fi)),
    "lecun_uniform": ("uniform", lambda fi, fo: math.sqrt(3 / fi)),
    "glorot_normal": ("normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    "he_normal": ("normal", lambda fi, fo: math.sqrt(2 / fi)),
    "lecun_normal": ("normal", lambda fi, fo: math.sqrt(1 / fi)),
}


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("shape", [(200000,), (3, 3, 160, 120)], ids=str)
def test_named_initializers_match_their_closed_forms(name: str, shape: tuple[int, ...]) -> None:
    kind, formula = NAMED[name]
    parameter = formula(*keras_fans(shape))
    values = initializers.get({"class_name": name, "config": {"seed": 9}})(shape)
    if kind == "uniform":  # parameter is the limit
        assert_bounded(values, -parameter, parameter)
        assert_moments(values, 0.0, parameter / math.sqrt(3))
    else:  # parameter is the standard deviation of the truncated draws
        assert_moments(values, 0.0, parameter)
        limit = 2 * parameter / truncated_std_ratio()
        assert_bounded(values, -limit, limit)
