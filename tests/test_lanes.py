"""A layer's decided calls (batchnorm._lanes) against the general call, to the bit.

Oracle: the same layer with its lanes switched off (``_lanes = None``), which runs
``functional.batch_norm_checked`` on every call.
"""

from __future__ import annotations

import pytest
import torch

import batchnorm as bn
import batchnorm._lanes as lanes_module
import batchnorm.layer as layer_module

CASES = {
    "plain": ({}, (8, 6, 4, 4), torch.float32, None),
    "zero_debias": ({"zero_debias_moving_mean": True}, (8, 6, 4, 4), torch.float32, None),
    "float64": ({}, (8, 6, 4, 4), torch.float64, None),
    "dense": ({}, (16, 6), torch.float32, None),
    "two_channel_axes": ({"axis": [1, 2]}, (8, 6, 3, 4), torch.float32, None),
    "channels_last": ({}, (8, 6, 4, 4), torch.float32, torch.channels_last),
    "bfloat16": ({"dtype": "mixed_bfloat16"}, (8, 6, 4, 4), torch.bfloat16, None),
    # float32 inputs that the dtype policy casts: the lane keeps the cast.
    "cast_by_policy": ({"dtype": "mixed_bfloat16"}, (8, 6, 4, 4), torch.float32, None),
}


def _twins(options, shape):
    kwargs = {"axis": 1, "momentum": 0.5, **options}
    init = {"gamma_initializer": "random_normal", "beta_initializer": "random_normal"}
    torch.manual_seed(0)
    with_lanes = bn.BatchNormalization(input_shape=shape[1:], **init, **kwargs)
    torch.manual_seed(0)
    general = bn.BatchNormalization(input_shape=shape[1:], **init, **kwargs)
    general.__dict__["_lanes"] = None  # every call takes the general path
    return with_lanes, general


@pytest.fixture
def lane_calls(monkeypatch):
    """How many calls each kind of lane ran (and did not decline)."""
    calls = {"training": 0, "inference": 0}
    run_lane = layer_module.run_lane

    def counted(layer, lane, x):
        output = run_lane(layer, lane, x)
        if output is not None:
            calls["inference" if lane.rule is None else "training"] += 1
        return output

    monkeypatch.setattr(layer_module, "run_lane", counted)
    return calls


def _inputs(shape, dtype, memory_format, generator, offset=0.0):
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + 1 + offset).to(dtype)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    return x, torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def _step(layer, x, dy, training):
    xi = x.clone().requires_grad_(True)
    y = layer(xi, training=training)
    if training:
        (y * dy).sum().backward()
        return y.detach(), xi.grad
    return (y.detach(),)


@pytest.mark.parametrize("case", sorted(CASES))
def test_decided_calls_equal_the_general_call_bitwise(case, lane_calls):
    options, shape, dtype, memory_format = CASES[case]
    with_lanes, general = _twins(options, shape)
    generator = torch.Generator().manual_seed(1)
    for step in range(4):  # the first call of a signature decides, the next ones reuse
        x, dy = _inputs(shape, dtype, memory_format, generator)
        for training in (True, False):
            got, want = (_step(layer, x, dy, training) for layer in (with_lanes, general))
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a, b), (case, step, training)
        for name, buffer in general.named_buffers():
            assert torch.equal(dict(with_lanes.named_buffers())[name], buffer), (case, name)
        for mine, theirs in ((with_lanes.gamma, general.gamma), (with_lanes.beta, general.beta)):
            assert torch.equal(mine.grad, theirs.grad), case
    # Training calls take a lane where the plan is ATen's training kernel (NCHW rows).
    plan = bn.functional.routes(x, training=True, axis=options.get("axis", 1))
    assert lane_calls["training"] == (3 if plan.startswith("training=aten") else 0), case
    assert (case in ("dense", "channels_last")) != plan.startswith("training=aten"), plan
    # Inference calls, where it is ATen's inference kernel (not for matrices).
    inference = bn.functional.routes(x, training=False, axis=options.get("axis", 1))
    assert lane_calls["inference"] == (3 if inference.endswith("infer=aten") else 0), case
    assert (case == "dense") != inference.endswith("infer=aten"), inference


def test_a_batch_mean_beyond_the_folding_limit_takes_the_general_call(lane_calls):
    """Constant channels (ATen's kernel would fold the mean): the passes give exactly beta."""
    with_lanes, general = _twins({}, (8, 6, 4, 4))
    generator = torch.Generator().manual_seed(2)
    x, dy = _inputs((8, 6, 4, 4), torch.float32, None, generator)
    with_lanes(x, training=True)
    general(x, training=True)
    x[:, 0] = 300.0
    got, want = (_step(layer, x, dy, True) for layer in (with_lanes, general))
    assert lane_calls["training"] == 0  # declined
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(got[0][:, 0], with_lanes.beta[0].expand(8, 4, 4).detach())


def _after(change, lane_calls):
    """Both twins decide a call, then change, then take two more steps: equal to the bit."""
    with_lanes, general = _twins({}, (8, 6, 4, 4))
    generator = torch.Generator().manual_seed(3)
    x, dy = _inputs((8, 6, 4, 4), torch.float32, None, generator)
    for layer in (with_lanes, general):
        _step(layer, x, dy, True)
        change(layer)
    x, dy = _inputs((8, 6, 4, 4), torch.float32, None, generator)
    dtype = with_lanes.moving_mean.dtype
    x, dy = x.to(dtype), dy.to(dtype)
    for _ in range(2):
        got, want = (_step(layer, x, dy, True) for layer in (with_lanes, general))
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
    for name, buffer in general.named_buffers():
        assert torch.equal(dict(with_lanes.named_buffers())[name], buffer), name
    return with_lanes


def test_changing_an_option_forgets_the_decided_calls(lane_calls):
    def change(layer):
        layer.momentum = 0.9

    _after(change, lane_calls)


def test_moving_the_layer_forgets_the_decided_calls(lane_calls):
    _after(lambda layer: layer.double(), lane_calls)


def test_deferred_updates_switched_on_stay_pending(lane_calls):
    def change(layer):
        layer.deferred_updates = True

    layer = _after(change, lane_calls)
    assert len(layer.updates) == 2
    assert lane_calls["training"] == 0


def test_a_frozen_layer_runs_inference_whatever_it_decided_before(lane_calls):
    def change(layer):
        layer.trainable = False

    _after(change, lane_calls)
    assert lane_calls["training"] == 0


def test_bad_input_after_decided_calls_is_still_refused():
    layer = bn.BatchNormalization(axis=1, input_shape=(6, 4, 4))
    x = torch.randn(8, 6, 4, 4)
    for _ in range(2):
        layer(x, training=True)
    before = [t.clone() for t in layer.buffers()]
    with pytest.raises(bn.BatchNormError, match="channel"):
        layer(torch.randn(8, 5, 4, 4), training=True)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.buffers(), strict=True))


def test_a_plain_training_lane_writes_the_moving_averages_into_the_buffers(lane_calls, monkeypatch):
    """The plain lane updates in place (no new tensors, no commit), equal to the general call."""
    written = []
    ema_update_ = lanes_module.ema_update_

    def counted(moving, value, factor):
        written.append(moving)
        ema_update_(moving, value, factor)

    monkeypatch.setattr(lanes_module, "ema_update_", counted)
    with_lanes, general = _twins({}, (8, 6, 4, 4))
    generator = torch.Generator().manual_seed(4)
    for _ in range(2):  # the first call decides, the second takes the lane
        x, dy = _inputs((8, 6, 4, 4), torch.float32, None, generator)
        for layer in (with_lanes, general):
            _step(layer, x, dy, True)
    assert lane_calls["training"] == 1
    assert written[0] is with_lanes.moving_mean and written[1] is with_lanes.moving_variance
    assert len(written) == 2
    for name, buffer in general.named_buffers():
        assert torch.equal(dict(with_lanes.named_buffers())[name], buffer), name
