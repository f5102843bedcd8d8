"""batchnorm.compat.v1.batch_norm: tf.contrib.layers.batch_norm (tf-slim) over the layer.

Oracles: a float64 numpy model of tf-slim written from tf-semantics.md section 9 (moments, the
EMA rule, the Bessel factor of the path tf-slim takes, zero-debias), the section 9.2 table for
the dispatch, and tf-slim's own numbers replayed from tests/golden (cases with
``"library": "tf_slim"`` in the manifest, made by tools/make_golden.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from batchnorm import BatchNormalization, BatchNormError
from batchnorm.compat import v1
from batchnorm.layer import BatchNormalizationV1

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(autouse=True)
def _fresh_graph():
    v1.reset_default_graph()
    yield
    v1.reset_default_graph()


def _randn(*shape: int, seed: int = 0, scale: float = 2.0, shift: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * scale + shift


# ---------------------------------------------------------------------- numpy model
def _reduce_axes(rank: int, data_format: str = "NHWC") -> tuple[int, ...]:
    channel = 1 if data_format == "NCHW" and rank >= 3 else rank - 1
    return tuple(d for d in range(rank) if d != channel)


def _moments(x: np.ndarray, axes, weights: np.ndarray | None = None):
    """Biased (optionally frequency-weighted) moments and the count n, float64."""
    x = x.astype(np.float64)
    if weights is None:
        w = np.ones_like(x)
    else:
        w = np.broadcast_to(weights.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
    total = w.sum(axis=axes)
    mean = (w * x).sum(axis=axes) / total
    keep = np.expand_dims(mean, axes)
    var = (w * (x - keep) ** 2).sum(axis=axes) / total
    n = int(np.prod([x.shape[a] for a in axes]))
    return mean, var, n


def _ema(value: np.ndarray, target: np.ndarray, decay: float) -> np.ndarray:
    return value - (value - target) * (1.0 - decay)


def _normalize(x: np.ndarray, mean, var, epsilon, axes, gamma=None, beta=None) -> np.ndarray:
    keep = [1 if d in axes else x.shape[d] for d in range(x.ndim)]
    y = (x - mean.reshape(keep)) / np.sqrt(var.reshape(keep) + epsilon)
    if gamma is not None:
        y = y * gamma.reshape(keep)
    if beta is not None:
        y = y + beta.reshape(keep)
    return y


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).cpu().numpy()


def _close(got, want, rtol: float = 1e-5, name: str = "") -> None:
    got = _numpy(got) if isinstance(got, torch.Tensor) else np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    atol = rtol * max(float(np.abs(want).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


# ---------------------------------------------------------------------- scopes and reuse
def test_default_scopes_are_uniquified_like_tensorflow():
    x = _randn(4, 3)
    for _ in range(3):
        v1.batch_norm(x)
    assert v1.get_default_graph().scope_names() == ["BatchNorm", "BatchNorm_1", "BatchNorm_2"]
    layers = [v1.get_layer(s) for s in ("BatchNorm", "BatchNorm_1", "BatchNorm_2")]
    assert len({id(layer) for layer in layers}) == 3
    assert [layer.name for layer in layers] == ["BatchNorm", "BatchNorm_1", "BatchNorm_2"]


def test_explicit_existing_scope_without_reuse_is_an_error():
    x = _randn(4, 3)
    v1.batch_norm(x, scope="block1/bn")
    before = {k: t.clone() for k, t in v1.get_variables("block1/bn").items()}
    for reuse in (None, False):
        with pytest.raises(BatchNormError, match=r"scope='block1/bn'.*reuse=True"):
            v1.batch_norm(x, scope="block1/bn", reuse=reuse, updates_collections=None)
    after = v1.get_variables("block1/bn")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reuse_true_on_a_missing_scope_is_an_error_naming_it():
    v1.batch_norm(_randn(4, 3), scope="exists")
    with pytest.raises(BatchNormError, match=r"scope='missing'.*reuse=True.*'exists'"):
        v1.batch_norm(_randn(4, 3), scope="missing", reuse=True)
    assert not v1.get_default_graph().has_scope("missing")


def test_reuse_true_without_scope_is_an_error():
    with pytest.raises(BatchNormError, match=r"reuse=True with scope=None"):
        v1.batch_norm(_randn(4, 3), reuse=True)


def test_bad_reuse_value_is_an_error():
    with pytest.raises(BatchNormError, match=r"reuse='yes'"):
        v1.batch_norm(_randn(4, 3), scope="bn", reuse="yes")


def test_reuse_shares_variables_and_the_layer():
    x = _randn(6, 3)
    v1.batch_norm(x, scope="bn", scale=True)
    first = v1.get_variables("bn")
    v1.batch_norm(x, scope="bn", scale=True, reuse=True, is_training=False)
    second = v1.get_variables("bn")
    assert all(first[k] is second[k] for k in first)
    assert v1.get_default_graph().scope_names() == ["bn"]
    # Variables are registered once, at creation.
    assert len(v1.trainable_variables()) == 2


def test_auto_reuse_creates_then_reuses():
    x = _randn(6, 3)
    v1.batch_norm(x, scope="bn", reuse=v1.AUTO_REUSE)
    layer = v1.get_layer("bn")
    v1.batch_norm(x, scope="bn", reuse=v1.AUTO_REUSE)
    assert v1.get_layer("bn") is layer
    assert len(v1.get_collection(v1.UPDATE_OPS)) == 2


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("scale", True),
        ("center", False),
        ("renorm", True),
        ("zero_debias_moving_mean", True),
        ("trainable", False),
        ("data_format", "NCHW"),
    ],
)
def test_reuse_must_keep_the_variable_defining_options(option, value):
    x = _randn(4, 3, 3)
    v1.batch_norm(x, scope="bn")
    with pytest.raises(BatchNormError, match=rf"{option}={value!r}.*scope 'bn'"):
        v1.batch_norm(x, scope="bn", reuse=True, **{option: value})


def test_per_call_options_apply_to_that_call_only():
    """TensorFlow reads decay and epsilon per call: a reused scope may change them."""
    x1, x2 = _randn(8, 3, seed=1), _randn(8, 3, seed=2)
    v1.batch_norm(x1, scope="bn", decay=0.9, updates_collections=None)
    y2 = v1.batch_norm(x2, scope="bn", reuse=True, decay=0.5, epsilon=0.1)
    v1.run_update_ops()
    layer = v1.get_layer("bn")
    assert (layer.momentum, layer.epsilon, layer.deferred_updates) == (0.9, 1e-3, False)
    m1, v1_, n = _moments(x1.numpy(), (0,))
    m2, v2, _ = _moments(x2.numpy(), (0,))
    bessel = n / (n - 1)  # rank 2: tf-slim's fused path, Bessel-corrected
    mean = _ema(_ema(np.zeros(3), m1, 0.9), m2, 0.5)
    var = _ema(_ema(np.ones(3), v1_ * bessel, 0.9), v2 * bessel, 0.5)
    _close(layer.moving_mean, mean)
    _close(layer.moving_variance, var)
    _close(y2, _normalize(x2.numpy(), m2, v2, 0.1, (0,)))


def test_a_call_never_sets_an_attribute_of_the_scopes_layer(monkeypatch):
    """Per-call options go to the functional; the layer only owns the variables."""
    x = _randn(8, 3, seed=1)
    v1.batch_norm(x, scope="bn", decay=0.9)
    set_names = []
    original = v1.BatchNormalizationV1.__setattr__

    def recording(layer, name, value):
        set_names.append(name)
        original(layer, name, value)

    monkeypatch.setattr(v1.BatchNormalizationV1, "__setattr__", recording)
    v1.batch_norm(x, scope="bn", reuse=True, decay=0.5, epsilon=0.1, fused=False)
    v1.batch_norm(x, scope="bn", reuse=True, is_training=False)
    assert set_names == []
    v1.run_update_ops()
    assert v1.get_layer("bn").updates == []  # the collections held them, not the layer


def test_a_failed_call_registers_nothing():
    with pytest.raises(BatchNormError, match="batch_weights"):
        v1.batch_norm(_randn(4, 3), scope="bn", batch_weights=torch.ones(5))
    assert v1.get_default_graph().scope_names() == []
    assert v1.global_variables() == [] and v1.get_collection(v1.UPDATE_OPS) == []
    v1.batch_norm(_randn(4, 3))  # the default name was not consumed either
    assert v1.get_default_graph().scope_names() == ["BatchNorm"]


def test_reset_default_graph_forgets_scopes_and_collections():
    v1.batch_norm(_randn(4, 3), scope="bn", param_regularizers={"beta": "l2"})
    v1.add_to_collection("mine", 1)
    v1.reset_default_graph()
    assert v1.get_default_graph().scope_names() == []
    for key in (v1.UPDATE_OPS, v1.GLOBAL_VARIABLES, v1.REGULARIZATION_LOSSES, "mine"):
        assert v1.get_collection(key) == []
    v1.batch_norm(_randn(4, 3), scope="bn")  # the name is free again


# ---------------------------------------------------------------------- updates
def test_deferred_updates_wait_in_update_ops_then_follow_the_formula():
    """Rank 3, defaults: tf-slim's core-layer path, not fused: the biased variance."""
    decay = 0.9
    xs = [_randn(4, 5, 3, seed=s) for s in range(3)]
    mean, var = np.zeros(3), np.ones(3)
    for x in xs:
        y = v1.batch_norm(x, decay=decay, scope="bn", reuse=v1.AUTO_REUSE)
        variables = v1.get_variables("bn")
        _close(variables["moving_mean"], mean, name="unchanged before run_update_ops")
        m, v, _ = _moments(x.numpy(), (0, 1))
        _close(y, _normalize(x.numpy(), m, v, 1e-3, (0, 1)))
        updates = v1.get_collection(v1.UPDATE_OPS)
        assert len(updates) == 1 and all(callable(u) for u in updates)
        assert v1.run_update_ops() == 1
        assert v1.get_collection(v1.UPDATE_OPS) == []
        mean, var = _ema(mean, m, decay), _ema(var, v, decay)
        _close(variables["moving_mean"], mean)
        _close(variables["moving_variance"], var)
    assert v1.get_layer("bn").updates == []  # the collection, not the layer, holds them


def test_pending_updates_compose_like_update_ops():
    """Two calls before running: two EMA steps, each toward its own batch (TF update ops)."""
    x1, x2 = _randn(4, 5, 2, seed=3), _randn(4, 5, 2, seed=4)
    v1.batch_norm(x1, decay=0.5, scope="bn")
    v1.batch_norm(x2, decay=0.5, scope="bn", reuse=True)
    first, second = v1.get_collection(v1.UPDATE_OPS)
    first()  # calling an item applies that one update
    m1, var1, _ = _moments(x1.numpy(), (0, 1))
    m2, var2, _ = _moments(x2.numpy(), (0, 1))
    _close(v1.get_variables("bn")["moving_mean"], _ema(np.zeros(2), m1, 0.5))
    second()
    _close(v1.get_variables("bn")["moving_mean"], _ema(_ema(np.zeros(2), m1, 0.5), m2, 0.5))
    _close(v1.get_variables("bn")["moving_variance"], _ema(_ema(np.ones(2), var1, 0.5), var2, 0.5))


def test_updates_collections_none_updates_in_place():
    """Rank 4 with updates_collections=None: tf-slim's fused path, Bessel-corrected."""
    x = _randn(2, 3, 3, 4, seed=5)
    v1.batch_norm(x, decay=0.8, updates_collections=None, scope="bn")
    assert v1.get_collection(v1.UPDATE_OPS) == []
    m, v, n = _moments(x.numpy(), (0, 1, 2))
    _close(v1.get_variables("bn")["moving_mean"], _ema(np.zeros(4), m, 0.8))
    _close(v1.get_variables("bn")["moving_variance"], _ema(np.ones(4), v * n / (n - 1), 0.8))


def test_custom_updates_collections_receive_the_updates():
    x = _randn(4, 3)
    v1.batch_norm(x, updates_collections=["tower0_updates", "all_updates"], scope="t0")
    assert v1.get_collection(v1.UPDATE_OPS) == []
    assert len(v1.get_collection("tower0_updates")) == 1
    assert v1.get_collection("tower0_updates") == v1.get_collection("all_updates")
    assert v1.run_update_ops("tower0_updates") == 1
    assert v1.get_collection("tower0_updates") == []


def test_update_ops_can_be_filtered_and_run_by_scope():
    v1.batch_norm(_randn(4, 3), scope="tower0/bn")
    v1.batch_norm(_randn(4, 3), scope="tower1/bn")
    assert len(v1.get_collection(v1.UPDATE_OPS, scope="tower0")) == 1
    assert v1.run_update_ops(scope="tower1/") == 1
    assert v1.get_variables("tower0/bn")["moving_mean"].abs().sum() == 0
    assert v1.get_variables("tower1/bn")["moving_mean"].abs().sum() > 0
    assert len(v1.get_collection(v1.UPDATE_OPS)) == 1


def test_inference_creates_no_update_and_uses_moving_statistics():
    x = _randn(5, 3, seed=6)
    v1.batch_norm(x, scope="bn", scale=True)
    v1.run_update_ops()
    variables = {k: _numpy(t) for k, t in v1.get_variables("bn").items()}
    y = v1.batch_norm(x, scope="bn", scale=True, reuse=True, is_training=False)
    assert v1.get_collection(v1.UPDATE_OPS) == []
    want = _normalize(
        x.numpy(),
        variables["moving_mean"],
        variables["moving_variance"],
        1e-3,
        (0,),
        variables["gamma"],
        variables["beta"],
    )
    _close(y, want)


def test_batch_weights_give_weighted_moments_and_the_biased_variance():
    """Any batch_weights: tf-slim's legacy path (weighted_moments), biased variance."""
    x = _randn(4, 5, 3, seed=7)
    w = torch.tensor([1.0, 2.0, 0.0, 3.0])
    y = v1.batch_norm(x, decay=0.5, batch_weights=w, updates_collections=None, scope="bn")
    m, v, _ = _moments(x.numpy(), (0, 1), w.numpy())
    _close(y, _normalize(x.numpy(), m, v, 1e-3, (0, 1)))
    _close(v1.get_variables("bn")["moving_mean"], _ema(np.zeros(3), m, 0.5))
    _close(v1.get_variables("bn")["moving_variance"], _ema(np.ones(3), v, 0.5))


@pytest.mark.parametrize("shape", [(6, 3), (4, 5, 3)], ids=["rank2_fused", "rank3_legacy"])
def test_zero_debias_moving_mean(shape):
    """tf-semantics 9.6: biased EMA, step count, moving_mean = biased / (1 - decay^t)."""
    decay = 0.9
    biased, step, var = np.zeros(shape[-1]), 0, np.full(shape[-1], 5.0)
    initializers = {
        "moving_mean": "ones",
        "moving_variance": {"class_name": "Constant", "config": {"value": 5.0}},
    }
    for seed in range(3):
        x = _randn(*shape, seed=seed)
        v1.batch_norm(
            x,
            decay=decay,
            zero_debias_moving_mean=True,
            param_initializers=initializers,
            scope="bn",
            reuse=v1.AUTO_REUSE,
        )
        v1.run_update_ops()
        axes = tuple(range(len(shape) - 1))
        m, v, n = _moments(x.numpy(), axes)
        corrected = len(shape) == 2  # rank 2: fused path (Bessel); rank 3: legacy (biased)
        biased, step = _ema(biased, m, decay), step + 1
        var = _ema(var, v * n / (n - 1) if corrected else v, decay)
        got = v1.get_variables("bn")
        _close(got["bn/moving_mean/biased"], biased)
        assert got["bn/moving_mean/local_step"].item() == step
        _close(got["moving_mean"], biased / (1 - decay**step))
        _close(got["moving_variance"], var)


# ---------------------------------------------------------------------- is_training
@pytest.mark.parametrize("as_tensor", [False, True], ids=["bool", "tensor"])
def test_is_training_bool_or_tensor(as_tensor):
    x = _randn(6, 2, seed=8)

    def flag(value: bool):
        return torch.tensor(value) if as_tensor else value

    y_train = v1.batch_norm(x, scope="bn", is_training=flag(True))
    m, v, _ = _moments(x.numpy(), (0,))
    _close(y_train, _normalize(x.numpy(), m, v, 1e-3, (0,)))
    assert len(v1.get_collection(v1.UPDATE_OPS)) == 1
    y_infer = v1.batch_norm(x, scope="bn", reuse=True, is_training=flag(False))
    _close(y_infer, _normalize(x.numpy(), np.zeros(2), np.ones(2), 1e-3, (0,)))
    assert len(v1.get_collection(v1.UPDATE_OPS)) == 1


@pytest.mark.parametrize(
    "value",
    [torch.tensor([True, False]), torch.tensor(1.0), "yes", None],
    ids=["two_elements", "float_tensor", "string", "none"],
)
def test_bad_is_training_is_an_error(value):
    with pytest.raises(BatchNormError, match="is_training="):
        v1.batch_norm(_randn(4, 3), is_training=value)


# ---------------------------------------------------------------------- data_format, rank
@pytest.mark.parametrize("data_format", ["NCWH", "nhwc", "channels_last", None])
def test_bad_data_format_is_an_error_with_tensorflows_wording(data_format):
    with pytest.raises(BatchNormError) as info:
        v1.batch_norm(_randn(4, 3, 2, 2), data_format=data_format)
    message = str(info.value)
    assert f"data_format={data_format!r}" in message
    assert "data_format has to be either NCHW or NHWC" in message


@pytest.mark.parametrize("shape", [(5,), ()], ids=["rank1", "rank0"])
def test_rank_below_two_is_an_error(shape):
    with pytest.raises(BatchNormError, match=r"inputs\.shape=.*rank >= 2"):
        v1.batch_norm(torch.ones(shape))


@pytest.mark.parametrize(
    ("shape", "data_format", "channels"),
    [
        ((4, 3), "NCHW", 3),  # rank 2 NCHW: the channel is the last dim (tf-semantics 9.7)
        ((4, 3, 5), "NCHW", 3),
        ((2, 3, 4, 5), "NCHW", 3),
        ((2, 3, 4, 5, 2), "NCHW", 3),
        ((2, 3, 4, 5), "NHWC", 5),
        ((4, 3, 5), "NHWC", 5),
    ],
)
def test_data_format_picks_the_channel_axis(shape, data_format, channels):
    x = _randn(*shape, seed=9)
    y = v1.batch_norm(x, data_format=data_format, scope="bn")
    assert tuple(v1.get_variables("bn")["beta"].shape) == (channels,)
    axes = _reduce_axes(len(shape), data_format)
    m, v, _ = _moments(x.numpy(), axes)
    _close(y, _normalize(x.numpy(), m, v, 1e-3, axes))


# ---------------------------------------------------------------------- arguments
def test_activation_fn_applies_after_normalization():
    x = _randn(6, 4, seed=10)
    y = v1.batch_norm(x, activation_fn=torch.relu, scope="a")
    m, v, _ = _moments(x.numpy(), (0,))
    _close(y, np.maximum(_normalize(x.numpy(), m, v, 1e-3, (0,)), 0.0))
    with pytest.raises(BatchNormError, match="activation_fn='relu'"):
        v1.batch_norm(x, activation_fn="relu")


def test_param_initializers_set_the_initial_values():
    x = _randn(6, 2, seed=11)
    y = v1.batch_norm(
        x,
        scale=True,
        param_initializers={
            "gamma": {"class_name": "Constant", "config": {"value": 2.0}},
            "beta": lambda shape, dtype=None: np.full(shape, -1.0),
            "moving_mean": "ones",
            "moving_variance": {"class_name": "Constant", "config": {"value": 4.0}},
        },
        is_training=False,
        scope="bn",
    )
    _close(y, 2.0 * (x.numpy() - 1.0) / np.sqrt(4.0 + 1e-3) - 1.0)


@pytest.mark.parametrize("argument", ["param_initializers", "param_regularizers"])
def test_unknown_param_keys_are_an_error(argument):
    with pytest.raises(BatchNormError, match=rf"{argument}=.*'moving_avg'"):
        v1.batch_norm(_randn(4, 3), **{argument: {"moving_avg": "zeros"}})
    with pytest.raises(BatchNormError, match=r"param_regularizers=.*'moving_mean'"):
        v1.batch_norm(_randn(4, 3), param_regularizers={"moving_mean": "l2"})


def test_param_regularizers_add_live_penalties_to_regularization_losses():
    x = _randn(6, 3, seed=12)
    v1.batch_norm(
        x,
        scale=True,
        param_initializers={"gamma": {"class_name": "Constant", "config": {"value": 3.0}}},
        param_regularizers={"gamma": {"class_name": "L2", "config": {"l2": 0.1}}, "beta": "l1"},
        scope="bn",
    )
    losses = v1.get_collection(v1.REGULARIZATION_LOSSES)
    assert len(losses) == 2 and all(callable(loss) for loss in losses)
    assert [round(loss().item(), 6) for loss in losses] == [2.7, 0.0]  # 0.1 * 3 * 9; beta = 0
    gamma = v1.get_variables("bn")["gamma"]
    with torch.no_grad():
        gamma.fill_(1.0)  # the penalty follows the current value
    assert round(v1.get_regularization_loss().item(), 6) == 0.3
    v1.get_regularization_loss(scope="bn/gamma").backward()
    _close(gamma.grad, np.full(3, 0.2))
    # Reusing the scope does not add the penalties again.
    v1.batch_norm(x, scale=True, scope="bn", reuse=True, param_regularizers={"gamma": "l2"})
    assert len(v1.get_collection(v1.REGULARIZATION_LOSSES)) == 2


def test_variables_and_outputs_collections():
    x = _randn(4, 3, seed=13)
    y = v1.batch_norm(
        x,
        scale=True,
        scope="a",
        variables_collections=["mine"],
        outputs_collections="outputs",
    )
    variables = v1.get_variables("a")
    assert v1.get_collection("mine") == [
        variables[k] for k in ("gamma", "beta", "moving_mean", "moving_variance")
    ]
    assert v1.get_collection("outputs")[0] is y
    v1.batch_norm(
        x,
        scope="b",
        renorm=True,
        variables_collections={"moving_mean": ["stats"], "beta": "betas"},
    )
    b = v1.get_variables("b")
    assert v1.get_collection("stats") == [b["moving_mean"]]
    assert v1.get_collection("betas") == [b["beta"]]
    with pytest.raises(BatchNormError, match=r"variables_collections=.*'moving_stddev'"):
        v1.batch_norm(x, variables_collections={"moving_stddev": ["x"]})


def test_standard_variable_collections():
    x = _randn(4, 3, seed=14)
    v1.batch_norm(x, scale=True, scope="a", zero_debias_moving_mean=True)
    a = v1.get_variables("a")
    ids = lambda tensors: [id(t) for t in tensors]  # noqa: E731
    assert ids(v1.global_variables()) == ids(a.values())
    assert ids(v1.model_variables()) == ids(
        [a[k] for k in ("gamma", "beta", "moving_mean", "moving_variance")]
    )
    assert ids(v1.trainable_variables()) == ids([a["gamma"], a["beta"]])
    assert ids(v1.get_collection(v1.GLOBAL_VARIABLES, scope="a/a/moving_mean/")) == ids(
        [a["a/moving_mean/biased"], a["a/moving_mean/local_step"]]
    )


SLIM_COLLECTIONS = json.loads((GOLDEN / "peer_configs.json").read_text())["slim_collections"]


@pytest.mark.parametrize(
    "case",
    SLIM_COLLECTIONS,
    ids=[f"rank{c['rank']}-{c['scope']}-{c['slim_kwargs']}" for c in SLIM_COLLECTIONS],
)
def test_zero_debias_names_and_collections_are_tf_slims(case):
    """Oracle: tf-slim's global and model variables (tools/make_peer_fixtures.py)."""
    scope = case["scope"] or "BatchNorm"
    x = _randn(4, *[3] * (case["rank"] - 1))
    v1.batch_norm(x, zero_debias_moving_mean=True, scope=case["scope"], **case["slim_kwargs"])
    full_names = {id(t): f"{scope}/{name}" for name, t in v1.get_variables(scope).items()}
    for ours, theirs in (
        (v1.global_variables(), case["global_variables"]),
        (v1.model_variables(), case["model_variables"]),
    ):
        assert sorted(full_names[id(t)] for t in ours) == sorted(theirs)


@pytest.mark.parametrize("option", ["updates_collections", "outputs_collections"])
def test_bad_collection_names_are_an_error(option):
    with pytest.raises(BatchNormError, match=rf"{option}=\[3\]"):
        v1.batch_norm(_randn(4, 3), **{option: [3]})


@pytest.mark.parametrize(
    ("argument", "value", "expected"),
    [
        ("decay", 1.5, r"decay=1\.5"),
        ("renorm_decay", -0.1, r"renorm_decay=-0\.1"),
        ("epsilon", -1.0, r"epsilon=-1\.0"),
        ("scale", "yes", r"scale='yes'"),
        ("fused", 1, r"fused=1"),
        ("renorm_clipping", {"rmax": 1.0, "bad": 2.0}, r"renorm_clipping=.*'bad'"),
        ("scope", 3, r"scope=3"),
        ("inputs", [[1.0, 2.0]], r"inputs='list'"),
    ],
)
def test_bad_arguments_name_argument_and_value(argument, value, expected):
    kwargs = {"inputs": _randn(4, 3), argument: value}
    with pytest.raises(BatchNormError, match=expected):
        v1.batch_norm(**kwargs)
    assert v1.get_default_graph().scope_names() == []


# ---------------------------------------------------------------------- tf-slim's dispatch
SLIM_TABLE = [
    # (rank, kwargs of slim_path, path, Bessel-corrected): tf-semantics.md 9.2
    (2, {}, "fused", True),
    (3, {}, "core_layer", False),
    (4, {}, "core_layer", True),
    (5, {}, "core_layer", True),
    (2, {"fused": False}, "core_layer", False),
    (4, {"fused": False}, "core_layer", False),
    (4, {"default_updates_collections": False}, "fused", True),
    (3, {"default_updates_collections": False}, "legacy", False),
    (4, {"fused": False, "default_updates_collections": False}, "legacy", False),
    (2, {"batch_weights": True}, "legacy", False),
    (4, {"batch_weights": True}, "legacy", False),
    (4, {"zero_debias_moving_mean": True}, "fused", True),
    (3, {"zero_debias_moving_mean": True}, "legacy", False),
    (5, {"default_updates_collections": False}, "legacy", False),
    (4, {"renorm": True}, "core_layer", False),
    (2, {"renorm": True}, "core_layer", False),
    (4, {"adjustment": True}, "core_layer", False),
    (4, {"variable_dtype": torch.float64}, "core_layer", False),
]


def _table_id(row) -> str:
    rank, kwargs, *_ = row
    return f"rank{rank}-" + ("-".join(f"{k}={v}" for k, v in kwargs.items()) or "default")


@pytest.mark.parametrize("row", SLIM_TABLE, ids=[_table_id(r) for r in SLIM_TABLE])
def test_slim_path_table(row):
    rank, kwargs, path, corrected = row
    assert v1.slim_path(rank, **kwargs) == (path, corrected)


def _call_kwargs(kwargs: dict) -> dict:
    out = {}
    if "fused" in kwargs:
        out["fused"] = kwargs["fused"]
    if kwargs.get("default_updates_collections") is False:
        out["updates_collections"] = None
    if kwargs.get("renorm"):
        out["renorm"] = True
    if kwargs.get("zero_debias_moving_mean"):
        out["zero_debias_moving_mean"] = True
    if kwargs.get("adjustment"):
        out["adjustment"] = lambda shape: (1.0, 0.0)
    return out


@pytest.mark.parametrize(
    "row",
    [r for r in SLIM_TABLE if not r[1].get("renorm")],
    ids=[_table_id(r) for r in SLIM_TABLE if not r[1].get("renorm")],
)
def test_stored_moving_variance_follows_the_path(row):
    """End to end: the moving variance batch_norm stores is the path's (numpy model)."""
    rank, kwargs, _, corrected = row
    shape = (3, 4, 2, 3, 2)[:rank]
    dtype = kwargs.get("variable_dtype", torch.float32)
    x = _randn(*shape, seed=15).to(dtype)
    call = _call_kwargs(kwargs)
    weights = torch.tensor([1.0, 2.0, 0.5], dtype=dtype) if kwargs.get("batch_weights") else None
    v1.batch_norm(x, decay=0.5, batch_weights=weights, scope="bn", **call)
    v1.run_update_ops()
    axes = _reduce_axes(rank)
    _, var, n = _moments(x.numpy(), axes, None if weights is None else weights.numpy())
    target = var * n / (n - 1) if corrected else var
    _close(v1.get_variables("bn")["moving_variance"], _ema(np.ones(shape[-1]), target, 0.5))
    assert v1.get_variables("bn")["moving_variance"].dtype == dtype


# ---------------------------------------------------------------------- variables
@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({}, ["beta", "moving_mean", "moving_variance"]),
        ({"scale": True}, ["gamma", "beta", "moving_mean", "moving_variance"]),
        ({"center": False}, ["moving_mean", "moving_variance"]),
        (
            {"renorm": True, "scale": True},
            [
                "gamma",
                "beta",
                "moving_mean",
                "moving_variance",
                "moving_stddev",
                "renorm_mean",
                "renorm_stddev",
            ],
        ),
        (
            {"zero_debias_moving_mean": True},
            [
                "beta",
                "moving_mean",
                "moving_variance",
                "bn/moving_mean/biased",
                "bn/moving_mean/local_step",
            ],
        ),
    ],
    ids=["default", "scale", "no_center", "renorm", "zero_debias"],
)
def test_get_variables_uses_tensorflow_names(kwargs, names):
    v1.batch_norm(_randn(4, 3), scope="bn", **kwargs)
    assert list(v1.get_variables("bn")) == names


def test_gamma_and_beta_are_leaf_parameters_that_backward_fills():
    x = _randn(6, 3, seed=16).requires_grad_(True)
    dy = _randn(6, 3, seed=17)
    y = v1.batch_norm(x, scale=True, scope="bn")
    (y * dy).sum().backward()
    variables = v1.get_variables("bn")
    for name in ("gamma", "beta"):
        assert isinstance(variables[name], torch.nn.Parameter) and variables[name].is_leaf
    m, v, _ = _moments(x.detach().numpy(), (0,))
    x_hat = _normalize(x.detach().numpy(), m, v, 1e-3, (0,))
    _close(variables["beta"].grad, dy.numpy().sum(axis=0))
    _close(variables["gamma"].grad, (dy.numpy() * x_hat).sum(axis=0))
    for name in ("moving_mean", "moving_variance"):
        assert not variables[name].requires_grad


def test_missing_scope_in_accessors_is_an_error():
    with pytest.raises(BatchNormError, match=r"scope='nope'.*none yet"):
        v1.get_variables("nope")
    with pytest.raises(BatchNormError, match=r"scope='nope'"):
        v1.get_layer("nope")


def test_trainable_variables_drive_an_optimizer():
    x = _randn(8, 3, seed=18)
    v1.batch_norm(x, scale=True, scope="bn")
    optimizer = torch.optim.SGD(v1.trainable_variables(), lr=0.5)
    y = v1.batch_norm(x, scale=True, scope="bn", reuse=True)
    y.sum().backward()
    optimizer.step()
    # d(sum y)/d beta = batch size per channel.
    _close(v1.get_variables("bn")["beta"], np.full(3, -0.5 * 8))


# ---------------------------------------------------------------------- trainable=False
def test_layer_class_is_the_v1_layer():
    assert v1.BatchNormalization is BatchNormalizationV1
    v1.batch_norm(_randn(4, 3), scope="bn")
    assert isinstance(v1.get_layer("bn"), BatchNormalizationV1)
    assert isinstance(v1.get_layer("bn"), BatchNormalization)


@pytest.mark.parametrize(
    ("shape", "updates"),
    [((6, 3), True), ((4, 5, 3), False), ((2, 3, 3, 3), False)],
    ids=["rank2_fused_path", "rank3_core_layer", "rank4_core_layer"],
)
def test_frozen_scope_uses_batch_statistics_and_updates_as_its_path_does(shape, updates):
    """trainable=False: batch statistics in training (V1); the update runs on tf-slim's fused
    and legacy paths, but the core layer (V1 Keras layer) drops a frozen layer's update ops."""
    x = _randn(*shape, seed=19)
    y = v1.batch_norm(x, trainable=False, scale=True, decay=0.5, scope="bn")
    axes = tuple(range(len(shape) - 1))
    m, v, n = _moments(x.numpy(), axes)
    _close(y, _normalize(x.numpy(), m, v, 1e-3, axes))
    assert v1.trainable_variables() == []
    variables = v1.get_variables("bn")
    assert not variables["gamma"].requires_grad and not variables["beta"].requires_grad
    assert len(v1.get_collection(v1.UPDATE_OPS)) == int(updates)
    v1.run_update_ops()
    if updates:
        _close(variables["moving_mean"], _ema(np.zeros(3), m, 0.5))
        _close(variables["moving_variance"], _ema(np.ones(3), v * n / (n - 1), 0.5))
    else:
        assert torch.equal(variables["moving_mean"], torch.zeros(3))
        assert torch.equal(variables["moving_variance"], torch.ones(3))


# ---------------------------------------------------------------------- TensorFlow refuses
@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_weights": torch.tensor([1.0, 2.0, 1.0, 0.5])},
        {"updates_collections": None},
        {"zero_debias_moving_mean": True},
    ],
    ids=["batch_weights", "updates_collections", "zero_debias"],
)
def test_renorm_works_where_tensorflow_refuses(kwargs):
    """TF: "renorm is not supported with batch_weights, updates_collections or zero_debias".

    Oracle: with rmin = rmax = 1 and dmax = 0 renorm is plain batch norm (r = 1, d = 0).
    """
    x = _randn(4, 3, seed=20)
    clip = {"rmin": 1.0, "rmax": 1.0, "dmax": 0.0}
    y = v1.batch_norm(x, renorm=True, renorm_clipping=clip, scope="bn", **kwargs)
    w = kwargs.get("batch_weights")
    m, v, _ = _moments(x.numpy(), (0,), None if w is None else w.numpy())
    _close(y, _normalize(x.numpy(), m, v, 1e-3, (0,)))
    v1.run_update_ops()
    assert "renorm_mean" in v1.get_variables("bn")
    _close(
        v1.get_variables("bn")["moving_mean"]
        if "zero_debias_moving_mean" not in kwargs
        else v1.get_variables("bn")["bn/moving_mean/biased"],
        _ema(np.zeros(3), m, 0.999),
    )


def test_fused_false_selects_our_reference_path_only():
    """Same tf-slim path (rank 3: core layer either way), so the same numbers."""
    x = _randn(4, 5, 3, seed=21).requires_grad_(True)
    outputs = []
    for fused, scope in ((None, "fast"), (False, "reference")):
        y = v1.batch_norm(x, scale=True, fused=fused, scope=scope, updates_collections=None)
        (grad,) = torch.autograd.grad((y * y).sum(), x)
        outputs.append((y, grad, v1.get_variables(scope)["moving_variance"]))
    for fast, reference in zip(*outputs, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- golden replay
def _slim_cases() -> list[dict]:
    manifest_path = GOLDEN / "manifest.json"
    if not manifest_path.exists():
        return []
    manifest = json.loads(manifest_path.read_text())
    return [case for case in manifest["cases"] if case.get("library") == "tf_slim"]


SLIM_CASES = _slim_cases()
_ACTIVATIONS = {"relu": torch.relu, None: None}
_PATH_NAMES = {
    "a": "fused",
    "fused": "fused",
    "b": "core_layer",
    "core": "core_layer",
    "core_layer": "core_layer",
    "c": "legacy",
    "legacy": "legacy",
}


def _constant_initializer(value: float):
    return lambda shape, dtype=None: np.full(shape, value)


def _replay_kwargs(slim_kwargs: dict) -> dict:
    """The manifest's tf_slim.layers.batch_norm kwargs as batch_norm takes them."""
    kwargs = dict(slim_kwargs)
    if "activation_fn" in kwargs:
        kwargs["activation_fn"] = _ACTIVATIONS[kwargs["activation_fn"]]
    if kwargs.get("param_initializers"):
        kwargs["param_initializers"] = {
            key: _constant_initializer(value) if isinstance(value, (int, float)) else value
            for key, value in kwargs["param_initializers"].items()
        }
    return kwargs


def _golden_close(name: str, got: torch.Tensor, want: np.ndarray) -> None:
    got64 = _numpy(got)
    want64 = want.astype(np.float64)
    assert got64.shape == want64.shape, f"{name}: shape {got64.shape} != {want64.shape}"
    atol = 1e-5 * max(float(np.abs(want64).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(got64, want64, rtol=1e-5, atol=atol, err_msg=name)


@pytest.mark.parametrize("case", SLIM_CASES, ids=[c["id"] for c in SLIM_CASES])
def test_replays_tf_slim(case):
    """tf-slim's numbers (tools/make_golden.py): outputs, gradients, every variable."""
    data = np.load(GOLDEN / case["file"])
    kwargs = _replay_kwargs(case["slim_kwargs"])
    scope = kwargs.pop("scope", None) or "BatchNorm"
    kwargs.pop("reuse", None)
    dtype = getattr(torch, case["input_dtype"])
    mode = case["is_training"]
    # get_variables' names are tf-slim's (the manifest's, relative to the scope).
    tf_names = {n: n.replace("/", "__") for n in case["variable_names"]}

    def flag(value: bool):
        return torch.tensor(value) if mode == "tensor" else value

    def tensor(key: str) -> torch.Tensor:
        return torch.from_numpy(np.array(data[key], order="C"))  # keeps 0-d shapes

    path = v1.slim_path(
        len(case["input_shape"]),
        fused=kwargs.get("fused"),
        batch_weights=bool(case["batch_weights"]),
        renorm=bool(kwargs.get("renorm")),
        zero_debias_moving_mean=bool(kwargs.get("zero_debias_moving_mean")),
        default_updates_collections="updates_collections" not in kwargs,
        variable_dtype=torch.float64 if dtype == torch.float64 else torch.float32,
    )
    assert path.name == _PATH_NAMES[str(case["slim_path"]).lower()], case["slim_path"]
    if "slim_fused" in case:
        assert path.moving_variance_correction == case["slim_fused"]

    # Create the scope without side effects (inference), then load tf-slim's initial values.
    v1.batch_norm(tensor("x_0").to(dtype), is_training=flag(False), scope=scope, **kwargs)
    assert v1.get_collection(v1.UPDATE_OPS) == []
    variables = v1.get_variables(scope)
    assert sorted(variables) == sorted(tf_names)
    with torch.no_grad():
        for name, key in tf_names.items():
            variables[name].copy_(tensor(f"init_{key}"))
    for name in ("gamma", "beta"):  # tf.gradients differentiates frozen variables too
        if name in variables:
            variables[name].requires_grad_(True)

    steps = [(str(t), mode is not False) for t in range(case["steps"])]
    for tag, training in [*steps, ("infer", False)]:
        x = tensor(f"x_{tag}").to(dtype).requires_grad_(True)
        weights = None
        if case["batch_weights"] and f"batch_weights_{tag}" in data:
            weights = tensor(f"batch_weights_{tag}").to(dtype)
        y = v1.batch_norm(
            x,
            is_training=flag(training),
            batch_weights=weights,
            scope=scope,
            reuse=True,
            **kwargs,
        )
        (y.to(torch.float64) * tensor(f"dy_{tag}").double()).sum().backward()
        _golden_close(f"y_{tag}", y, data[f"y_{tag}"])
        _golden_close(f"dx_{tag}", x.grad, data[f"dx_{tag}"])
        for name in ("gamma", "beta"):
            if f"d{name}_{tag}" in data:
                _golden_close(f"d{name}_{tag}", variables[name].grad, data[f"d{name}_{tag}"])
            if name in variables:
                variables[name].grad = None
        # tf-slim collected update ops exactly when the manifest says it ran them.
        pending = len(v1.get_collection(v1.UPDATE_OPS))
        assert bool(pending) == (training and case["updates_run"]), (tag, pending)
        v1.run_update_ops()
        if tag != "infer":
            for name, key in tf_names.items():
                _golden_close(f"{name}_{tag}", variables[name], data[f"{key}_{tag}"])


def test_a_call_leaves_the_layers_fused_argument_as_it_was():
    """``layer.fused`` reports tf-slim's core layer's resolved value (False at rank 3), while
    the argument (our code path, in get_config) stays the one the scope was created with."""
    v1.batch_norm(_randn(4, 5, 3), scope="bn")
    v1.batch_norm(_randn(4, 5, 3), scope="bn", reuse=True, fused=False)
    layer = v1.get_layer("bn")
    assert layer.fused is False
    assert "fused" not in layer.get_config()
