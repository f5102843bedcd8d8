"""Non-finite training batches: ``nonfinite="skip"`` (default), ``"propagate"`` and ``"raise"``.

The oracle is the layer's own state before the call (skip and raise must leave it bit for
bit) and TensorFlow's rule (propagate writes the NaN in, as tf_keras does); every option and
both paths (fast and ``fused=False``), eager and compiled.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import batchnorm as bn
from batchnorm._nonfinite import all_finite, guarded
from batchnorm._types import Moments

OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "renorm": {"renorm": True},
    "ghost": {"virtual_batch_size": 2},
    "adjustment": {"adjustment": lambda shape: (torch.tensor(1.5), torch.tensor(0.25))},
    "zero_debias": {"zero_debias_moving_mean": True},
    "reference": {"fused": False},
    "reference_renorm": {"fused": False, "renorm": True},
}
CALLS: dict[str, dict[str, Any]] = {
    "nan": {},
    "inf": {},
    "overflow": {},  # finite values whose squares overflow: a finite mean, an infinite variance
}


def _batch(kind: str) -> torch.Tensor:
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    if kind == "nan":
        x[1, 0, 2] = float("nan")
    elif kind == "inf":
        x[2, 2, 0] = float("inf")
    elif kind == "overflow":
        x[:, 1] = torch.tensor([3e19, 3e19, -3e19, -3e19]).unsqueeze(1)  # (ghost groups too)
    return x


def _layer(options: dict[str, Any], **extra: Any) -> bn.BatchNormalization:
    layer = bn.BatchNormalization(axis=1, momentum=0.5, input_shape=(3, 5), **options, **extra)
    layer(torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(1)), training=True)
    return layer


def _snapshot(layer: bn.BatchNormalization) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in layer.state_dict().items() if torch.is_tensor(t)}


def _assert_unchanged(layer: bn.BatchNormalization, before: dict[str, torch.Tensor]) -> None:
    after = _snapshot(layer)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("option", OPTIONS)
def test_skip_leaves_every_statistic_and_counts(option: str, call: str) -> None:
    layer = _layer(OPTIONS[option])
    before = _snapshot(layer)
    layer(_batch(call), training=True, **CALLS[call])
    _assert_unchanged(layer, before)
    assert int(layer.skipped_updates) == 1
    # The layer still works: the next finite batch updates, inference stays finite.
    layer(torch.randn(4, 3, 5), training=True)
    assert int(layer.skipped_updates) == 1
    assert not torch.equal(layer.moving_mean, before["moving_mean"])
    assert torch.isfinite(layer(torch.randn(4, 3, 5), training=False)).all()


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("option", OPTIONS)
def test_propagate_writes_the_batch_in_as_tensorflow_does(option: str, call: str) -> None:
    layer = _layer(OPTIONS[option], nonfinite="propagate")
    layer(_batch(call), training=True, **CALLS[call])
    assert (
        not torch.isfinite(layer.moving_mean).all()
        or not torch.isfinite(layer.moving_variance).all()
    )
    assert int(layer.skipped_updates) == 0


@pytest.mark.parametrize("option", OPTIONS)
def test_raise_names_the_layer_and_changes_nothing(option: str) -> None:
    layer = _layer(OPTIONS[option], nonfinite="raise", name="bn_guarded")
    before = _snapshot(layer)
    with pytest.raises(bn.NonFiniteBatchError, match=r"layer 'bn_guarded'.*not finite"):
        layer(_batch("nan"), training=True)
    _assert_unchanged(layer, before)
    assert int(layer.skipped_updates) == 0
    layer(torch.randn(4, 3, 5), training=True)  # a finite batch is fine
    assert isinstance(bn.NonFiniteBatchError("x"), ValueError)


def test_an_infinite_batch_weight_is_refused_before_anything_changes() -> None:
    layer = _layer({})
    before = _snapshot(layer)
    weights = torch.tensor([1.0, float("inf"), 1.0, 1.0])
    with pytest.raises(bn.BatchNormError, match="batch_weights='a NaN or infinite entry'"):
        layer(torch.randn(4, 3, 5), training=True, batch_weights=weights)
    _assert_unchanged(layer, before)


def test_the_output_of_a_skipped_batch_is_its_own() -> None:
    """Only the statistics are protected: the channel with a NaN normalises to NaN."""
    layer = _layer({})
    y = layer(_batch("nan"), training=True)
    assert torch.isnan(y[:, 0]).all()
    assert torch.isfinite(y[:, 1:]).all()


def test_deferred_updates_are_guarded_when_applied() -> None:
    layer = _layer({}, deferred_updates=True)
    layer.apply_updates()
    before = _snapshot(layer)
    layer(_batch("nan"), training=True)
    layer.apply_updates()
    _assert_unchanged(layer, before)
    assert int(layer.skipped_updates) == 1


def test_a_masked_out_nan_is_no_bad_batch() -> None:
    layer = _layer({})
    x = _batch("nan")
    mask = torch.ones(4, 3, 5, dtype=torch.bool)
    mask[1, 0, 2] = False  # the NaN's position
    layer(x, training=True, mask=mask)
    assert int(layer.skipped_updates) == 0
    assert torch.isfinite(layer.moving_mean).all() and torch.isfinite(layer.moving_variance).all()


def test_the_functional_returns_the_statistics_it_was_given() -> None:
    mean, variance = torch.zeros(3), torch.ones(3)
    x = _batch("inf").transpose(1, 2)  # channels last, the functional's default axis
    _, kept, _ = bn.functional.batch_norm(x, mean, variance, training=True)
    assert torch.equal(kept["moving_mean"], mean) and torch.equal(kept["moving_variance"], variance)
    _, written, _ = bn.functional.batch_norm(
        x, mean, variance, training=True, nonfinite="propagate"
    )
    assert not torch.isfinite(written["moving_mean"]).all()
    with pytest.raises(bn.NonFiniteBatchError):
        bn.functional.batch_norm(x, mean, variance, training=True, nonfinite="raise")


@pytest.mark.parametrize("bad", ["ignore", None, True, 0])
def test_a_bad_policy_is_refused(bad: Any) -> None:
    with pytest.raises(bn.BatchNormError, match="nonfinite="):
        bn.BatchNormalization(nonfinite=bad)
    with pytest.raises(bn.BatchNormError, match="nonfinite="):
        bn.functional.batch_norm(
            torch.ones(2, 3), torch.zeros(3), torch.ones(3), training=True, nonfinite=bad
        )


def test_the_policy_round_trips_through_the_config_and_copies() -> None:
    layer = bn.BatchNormalization(axis=1, nonfinite="propagate", input_shape=(3,))
    assert bn.BatchNormalization.from_config(layer.get_config()).nonfinite == "propagate"
    assert "nonfinite" not in bn.BatchNormalization().get_config()  # the default is left out
    layer(torch.tensor([[1.0, float("nan"), 2.0], [3.0, 1.0, 0.0]]), training=True)
    twin = copy.deepcopy(layer)
    assert twin.nonfinite == "propagate" and torch.equal(
        twin.skipped_updates, layer.skipped_updates
    )
    # A count, not a weight: in no checkpoint.
    assert "skipped_updates" not in layer.state_dict()
    assert len(layer.get_weights()) == 4


def test_the_tensor_side_select_equals_the_host_decision() -> None:
    """Off the CPU, and while compiling, a ``torch.where`` keeps the old values; same result."""
    state = {
        "moving_mean": torch.tensor([1.0, 2.0]),
        "moving_variance": torch.tensor([3.0, 4.0]),
        "skipped_updates": torch.tensor(5),
    }
    new = {"moving_mean": torch.tensor([0.5, 0.5]), "moving_variance": torch.tensor([1.0, 1.0])}
    skipped, updated = state | {"skipped_updates": 6}, new | {"skipped_updates": 5}
    for value, expected in ((float("nan"), skipped), (1.0, updated)):
        batch = Moments(torch.tensor(4.0), torch.tensor([value, 0.0]), torch.ones(2))
        host = guarded(new, state, batch, "skip")
        compiled = torch.compile(lambda b: guarded(new, state, b, "skip"), fullgraph=True)
        on_device = compiled(batch)
        for name, want in expected.items():
            assert torch.equal(on_device[name], torch.as_tensor(want)), name
            assert torch.equal(host.get(name, state[name]), torch.as_tensor(want)), name


def test_compiled_skip_has_no_graph_break_and_equals_eager() -> None:
    torch._dynamo.reset()
    eager, twin = _layer({}), _layer({})
    compiled = torch.compile(twin, fullgraph=True, dynamic=True)
    for x in (_batch("nan"), torch.randn(6, 3, 5), _batch("inf")):
        torch.testing.assert_close(
            compiled(x, training=True), eager(x, training=True), equal_nan=True
        )
        torch.testing.assert_close(twin.moving_mean, eager.moving_mean)
        torch.testing.assert_close(twin.moving_variance, eager.moving_variance)
    assert int(twin.skipped_updates) == int(eager.skipped_updates) == 2
    explained = torch._dynamo.explain(_layer({}))(_batch("nan"), training=True)
    assert explained.graph_break_count == 0


def _masked_step(
    x: torch.Tensor, call: dict[str, Any], fused: bool | None, compiled: bool
) -> list[torch.Tensor]:
    layer = bn.BatchNormalization(axis=1, fused=fused, input_shape=(3, 4, 5))
    run = torch.compile(layer, fullgraph=True) if compiled else layer
    x = x.clone().requires_grad_(True)
    y = run(x, training=True, **call)
    excluded = _excluded(x, call)
    dy = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape).masked_fill(excluded, 0)
    (y * dy).sum().backward()
    return [y.detach().masked_fill(excluded, 0), x.grad, layer.gamma.grad, layer.beta.grad]


def _excluded(x: torch.Tensor, call: dict[str, Any]) -> torch.Tensor:
    if "mask" in call:
        return ~call["mask"].expand_as(x)
    return (call["batch_weights"] == 0).view(-1, 1, 1, 1).expand_as(x)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("fused", [None, False], ids=["fast", "reference"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("how", ["mask", "zero weight"])
def test_a_nan_where_the_mask_excludes_reaches_no_gradient(
    how: str, memory_format: torch.memory_format, fused: bool | None, compiled: bool
) -> None:
    """With the loss masked too (upstream gradient 0 there), every gradient equals that of the
    same batch with the excluded values replaced by 0, and the excluded positions get none."""
    x = torch.randn(6, 3, 4, 5, generator=torch.Generator().manual_seed(2))
    if how == "mask":
        call = {"mask": torch.rand(6, 1, 4, 5, generator=torch.Generator().manual_seed(3)) > 0.3}
    else:
        call = {"batch_weights": torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0, 1.0])}
    excluded = _excluded(x, call)
    poisoned = x.masked_fill(excluded, float("nan"))
    poisoned.view(-1)[torch.nonzero(excluded.flatten())[0]] = float("inf")
    clean = x.masked_fill(excluded, 0.0)
    laid_out = [t.contiguous(memory_format=memory_format) for t in (poisoned, clean)]
    got, want = (_masked_step(t, call, fused, compiled) for t in laid_out)
    for name, a, b in zip(("output", "x grad", "gamma grad", "beta grad"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(got[1][excluded], torch.zeros_like(got[1][excluded]))


def test_the_guard_under_torch_func_selects_on_the_tensors() -> None:
    """Inside ``torch.func`` no value is read on the host: the select keeps the statistics."""
    mean, variance = torch.zeros(3), torch.ones(3)

    def new_mean(x: torch.Tensor) -> torch.Tensor:
        result = bn.functional.batch_norm(x, mean, variance, training=True, axis=1)
        return result.new_stats["moving_mean"]

    batches = torch.stack([_batch("finite"), _batch("nan")])
    kept = torch.func.vmap(new_mean)(batches)
    want = bn.functional.batch_norm(batches[0], mean, variance, training=True, axis=1)
    torch.testing.assert_close(kept[0], want.new_stats["moving_mean"])
    assert torch.equal(kept[1], mean)  # the NaN batch: its update skipped
    # The kept statistics do not depend on the skipped batch: a zero Jacobian, no NaN.
    jacobian = torch.func.jacrev(new_mean)(batches[1])
    assert torch.equal(jacobian, torch.zeros_like(jacobian))


def test_the_finiteness_probe_survives_inductor():
    """Inductor folds ``x * 0`` to 0 (a NaN or Inf times 0 becomes 0); the probe's
    ``torch.add(first, other, alpha=0)`` must stay a NaN where ``other`` is not finite."""
    torch._dynamo.reset()
    probe = torch.compile(all_finite, fullgraph=True)
    finite = torch.zeros(4)
    for bad in (float("inf"), float("nan")):
        other = torch.tensor([1.0, bad, 1.0, 1.0])
        assert not bool(probe(finite, other)), bad
    assert bool(probe(finite, torch.ones(4)))
