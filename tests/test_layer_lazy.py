"""Lazy build the way torch builds lazily: uninitialized tensors, materialized in place.

Oracles: a layer built eagerly with ``input_shape=`` (the same weights, the same training run),
and torch's own behaviour for lazy modules (``torch.nn.LazyBatchNorm1d``, DDP's refusal).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import batchnorm as bn


def _train(layer: bn.BatchNormalization, optimizer_first: bool, steps: int = 3) -> list:
    """A few SGD steps on a fixed stream of batches; the optimizer made before or after."""
    generator = torch.Generator().manual_seed(7)
    batches = [torch.randn(8, 3, 4, generator=generator) * 2 + 1 for _ in range(steps)]
    targets = [torch.randn(8, 3, 4, generator=generator) for _ in range(steps)]
    optimizer = (
        torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9) if optimizer_first else None
    )
    for x, target in zip(batches, targets, strict=True):
        loss = (layer(x, training=True) - target).pow(2).mean()
        if optimizer is None:
            optimizer = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return layer.get_weights()


@pytest.mark.parametrize("kwargs", [{}, {"renorm": True}, {"zero_debias_moving_mean": True}])
def test_an_optimizer_created_before_the_first_call_trains_gamma_and_beta(kwargs):
    lazy = bn.BatchNormalization(axis=1, **kwargs)
    assert lazy.has_uninitialized_params()
    assert all(isinstance(p, torch.nn.UninitializedParameter) for p in lazy.parameters())
    got = _train(lazy, optimizer_first=True)
    want = _train(bn.BatchNormalization(axis=1, input_shape=(3, 4), **kwargs), True)
    assert not lazy.has_uninitialized_params()
    assert [type(p) for p in lazy.parameters()] == [torch.nn.Parameter] * 2
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(g), torch.from_numpy(w))
    gamma, beta = got[:2]
    assert (gamma != 1).all() and (beta != 0).all()  # trained, not left at the initializers


def test_the_weights_are_the_same_objects_before_and_after_the_build():
    layer = bn.BatchNormalization(axis=1)
    gamma, beta, mean = layer.gamma, layer.beta, layer.moving_mean
    layer(torch.randn(4, 3, 2))
    assert layer.gamma is gamma and layer.beta is beta and layer.moving_mean is mean
    assert layer.gamma.shape == (3,) and layer.gamma.requires_grad


def test_input_shape_builds_at_once():
    layer = bn.BatchNormalization(input_shape=(5,))
    assert layer.built and not layer.has_uninitialized_params()
    assert type(layer.gamma) is torch.nn.Parameter


@pytest.mark.parametrize(
    ("convert", "dtype"),
    [(torch.nn.Module.half, torch.float16), (torch.nn.Module.double, torch.float64)],
)
def test_dtype_conversions_before_the_build_are_honoured(convert, dtype):
    """As torch's lazy modules: ``.half()`` on the unbuilt layer decides the weights' dtype."""
    ours = convert(bn.BatchNormalization(axis=1))
    theirs = convert(torch.nn.LazyBatchNorm1d())
    x = torch.randn(4, 3, 2, dtype=dtype)
    y = ours(x)
    theirs(x)
    assert ours.gamma.dtype == theirs.weight.dtype == dtype
    assert ours.moving_mean.dtype == dtype and y.dtype == dtype
    assert ours.dtype == str(dtype).removeprefix("torch.")


def test_weights_follow_the_input_device_unless_placed():
    layer = bn.BatchNormalization(device="meta")
    layer.build((None, 3))
    assert layer.gamma.device.type == "meta"
    lazy = bn.BatchNormalization()
    lazy(torch.randn(2, 3))
    assert lazy.gamma.device == torch.device("cpu")


def test_a_failed_first_call_leaves_the_uninitialized_weights():
    layer = bn.BatchNormalization(gamma_initializer=lambda shape, dtype=None: torch.ones(7))
    with pytest.raises(bn.BatchNormError, match=r"gamma_initializer result shape=\(7,\)"):
        layer(torch.randn(4, 3))
    assert not layer.built and layer.has_uninitialized_params()
    with pytest.raises(bn.BatchNormError, match="training='yes'"):
        bn.BatchNormalization()(torch.randn(4, 3), training="yes")


def test_calling_forward_directly_builds_too():
    layer = bn.BatchNormalization()
    y = layer.forward(torch.randn(4, 3), training=True)
    assert layer.built and y.shape == (4, 3)


def test_state_dict_of_an_unbuilt_layer_and_loading_into_one():
    unbuilt = bn.BatchNormalization(axis=1)
    state = unbuilt.state_dict()
    assert isinstance(state["gamma"], torch.nn.UninitializedParameter)
    assert state["_extra_state"]["build_input_shape"] is None
    trained = bn.BatchNormalization(axis=1, gamma_initializer="random_normal")
    trained(torch.randn(4, 3, 2) * 3, training=True)
    unbuilt.load_state_dict(trained.state_dict())
    assert unbuilt.built and not unbuilt.has_uninitialized_params()
    for got, want in zip(unbuilt.get_weights(), trained.get_weights(), strict=True):
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want))


def test_deepcopy_of_an_unbuilt_layer_builds_on_its_own():
    layer = bn.BatchNormalization()
    clone = copy.deepcopy(layer)
    clone(torch.randn(4, 2))
    assert clone.built and not layer.built and layer.has_uninitialized_params()


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group (what DDP needs to be constructed)."""
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_ddp_refuses_an_unbuilt_layer_with_torchs_error(gloo_group):
    with pytest.raises(RuntimeError, match="uninitialized parameters can't be used"):
        DistributedDataParallel(bn.BatchNormalization())
    with pytest.raises(RuntimeError, match="uninitialized parameters can't be used"):
        DistributedDataParallel(torch.nn.LazyBatchNorm1d())  # the same as torch's own
    wrapped = DistributedDataParallel(bn.BatchNormalization(input_shape=(3,)))
    assert wrapped(torch.randn(4, 3)).shape == (4, 3)


def test_synchronized_in_a_single_process_group_is_one_process(gloo_group):
    """World size 1: the statistics of this process are the global ones (Keras: the same)."""
    x = torch.randn(6, 3)
    synced = bn.BatchNormalization(synchronized=True, momentum=0.5)
    plain = bn.BatchNormalization(momentum=0.5)
    torch.testing.assert_close(synced(x, training=True), plain(x, training=True))
    torch.testing.assert_close(synced.moving_variance, plain.moving_variance)


def test_pickling_an_unbuilt_layer_keeps_it_lazy():
    clone = pickle.loads(pickle.dumps(bn.BatchNormalization(axis=1, renorm=True)))
    assert clone.has_uninitialized_params()
    clone(torch.randn(4, 3, 2))
    assert clone.built and type(clone.gamma) is torch.nn.Parameter


def test_torch_compile_builds_an_unbuilt_layer_on_its_first_call():
    """Dynamo runs the lazy-module hook before tracing; oracle: the same layer built eagerly."""
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    lazy = bn.BatchNormalization(axis=1, momentum=0.5)
    y = torch.compile(lazy, fullgraph=False)(x, training=False)
    eager = bn.BatchNormalization(axis=1, momentum=0.5, input_shape=(3, 4, 4))
    assert lazy.built and type(lazy.gamma) is torch.nn.Parameter
    torch.testing.assert_close(y, eager(x, training=False))
