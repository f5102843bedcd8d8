"""batchnorm inside PyTorch's transforms: double backward, torch.func, torch.compile, export.

Oracles: the reference path (``fused=False``, plain autograd ops) for the same call, and
``torch.autograd.gradgradcheck`` (finite differences) in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from configs import CONFIGS, call_tensors, config_id, option_kwargs, state_tensors

import batchnorm as bn
from batchnorm.functional import batch_norm

# Float64 configurations small enough for second derivatives, every option among them.
DOUBLE_BACKWARD_CONFIGS = [
    c for c in CONFIGS if c.input_dtype == torch.float32 and torch.Size(c.shape).numel() <= 200
]


def _call(config, x, state, tensors, fused):
    kwargs = {**option_kwargs(config), **tensors}
    correction = kwargs.pop("moving_variance_correction", False)
    return batch_norm(
        x,
        *(state[k] for k in ("moving_mean", "moving_variance", "gamma", "beta")),
        training=True,
        axis=config.axis,
        momentum=config.momentum,
        epsilon=config.epsilon,
        fused=fused,
        moving_variance_correction=correction,
        **{
            k: v
            for k, v in state.items()
            if k not in ("moving_mean", "moving_variance", "gamma", "beta")
        },
        **kwargs,
    ).output


@pytest.mark.parametrize("config", DOUBLE_BACKWARD_CONFIGS, ids=config_id)
def test_double_backward_of_the_fast_path_equals_the_reference_path(config, generator):
    """A gradient penalty: ``d/d(x, gamma) |d loss / dx|^2`` on both paths."""
    x0 = config.make_input(generator).double()
    state = {
        k: (None if v is None else v.double())
        for k, v in state_tensors(config, x0, generator).items()
    }
    tensors = call_tensors(config, x0, generator)
    dy = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    results = []
    for fused in (None, False):
        x = x0.clone().requires_grad_(True)
        gamma = None if state["gamma"] is None else state["gamma"].clone().requires_grad_(True)
        y = _call(config, x, {**state, "gamma": gamma}, tensors, fused)
        (dx,) = torch.autograd.grad((y * dy).sum(), x, create_graph=True)
        leaves = [x] + ([gamma] if gamma is not None else [])
        results.append(torch.autograd.grad(dx.pow(2).sum(), leaves, allow_unused=True))
    for fast, reference in zip(*results, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "options",
    [{}, {"virtual_batch_size": 2}, {"batch_weights": True}, {"mask": True}],
    ids=["plain", "ghost", "weights", "mask"],
)
def test_fast_path_passes_gradgradcheck(options):
    """(Renorm's ``r, d`` are stop-gradients, as in TensorFlow: no finite-difference oracle.)"""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(3, generator=generator, dtype=torch.float64).add(0.5).requires_grad_()
    beta = torch.randn(3, generator=generator, dtype=torch.float64, requires_grad=True)
    extra = dict(options)
    if extra.pop("batch_weights", False):
        extra["batch_weights"] = torch.rand(4, generator=generator, dtype=torch.float64) + 0.1
    if extra.pop("mask", False):
        extra["mask"] = torch.tensor([[True], [False], [True], [True]])
    stats = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    def function(x, gamma, beta):
        return batch_norm(x, *stats, gamma, beta, training=True, **extra).output

    assert torch.autograd.gradgradcheck(function, (x, gamma, beta))


# --------------------------------------------------------------------------- torch.compile
def _adjustment(shape):
    return torch.full((3, 1, 1), 1.25), torch.full((3, 1, 1), 0.5)


def _adjustment_by_element(shape):
    wave = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape).cos()
    return 1.0 + 0.25 * wave, 0.5 * wave


# A small fixed set (CI time): every option once, on NCHW input of two batch sizes.
COMPILE_OPTIONS = {
    "plain": ({}, {}),
    "renorm": ({"renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}}, {}),
    # Unclipped: r and d vary with the batch, so gamma's gradient depends on the renorm
    # statistics as they were before the call updated them (pytorch/pytorch#197039).
    "renorm_unclipped": ({"renorm": True}, {}),
    "renorm_weights": ({"renorm": True}, {"batch_weights": "weights"}),
    "ghost": ({"virtual_batch_size": 2}, {}),
    "weights": ({}, {"batch_weights": "weights"}),
    "mask": ({}, {"mask": "mask"}),
    "keras_mask": ({}, {"mask": "keras_mask"}),  # Keras' form, x.shape[:-1]
    "adjustment": ({"adjustment": _adjustment}, {}),
    # Varying over the batch: the closed form's backward takes its general sums.
    "adjustment_element": ({"adjustment": _adjustment_by_element}, {}),
    "zero_debias": ({"zero_debias_moving_mean": True}, {}),
    "deferred": ({"deferred_updates": True}, {}),
}


def _call_inputs(kind: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if kind == "weights":
        return torch.rand(x.shape[0], generator=generator) + 0.1
    shape = x.shape[:-1] if kind == "keras_mask" else (x.shape[0], 1, *x.shape[2:])
    mask = torch.rand(shape, generator=generator) > 0.3
    mask.view(-1)[0] = True
    return mask


def _pair(options):
    """An eager layer and a compiled twin with the same weights."""
    init = {"gamma_initializer": "random_normal", "beta_initializer": "random_normal"}
    torch.manual_seed(0)
    eager = bn.BatchNormalization(axis=1, momentum=0.5, input_shape=(3, 4, 4), **init, **options)
    torch.manual_seed(0)
    twin = bn.BatchNormalization(axis=1, momentum=0.5, input_shape=(3, 4, 4), **init, **options)
    return eager, twin


def _assert_same_training_step(eager, compiled, x, call_kinds, generator):
    """One training step of each on ``x``: outputs and x's and gamma's gradients alike."""
    dy = torch.randn(x.shape, generator=generator)
    call = {k: _call_inputs(kind, x, generator) for k, kind in call_kinds.items()}
    outputs = []
    for layer in (eager, compiled):
        xi = x.clone().requires_grad_(True)
        y = layer(xi, training=True, **call)
        (y * dy).sum().backward()
        outputs.append((y.detach(), xi.grad))
    for got, want in zip(outputs[1], outputs[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    twin = getattr(compiled, "_orig_mod", compiled)
    torch.testing.assert_close(twin.gamma.grad, eager.gamma.grad, rtol=1e-4, atol=1e-5)


@pytest.fixture
def fresh_dynamo():
    """Each test compiles its own layers: forget earlier ones (dynamo's recompile limit)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("option", sorted(COMPILE_OPTIONS))
def test_compiled_training_and_inference_equal_eager_without_graph_breaks(option, fresh_dynamo):
    """fullgraph=True (any graph break raises) with dynamic shapes: batch 8, then 6."""
    options, call_kinds = COMPILE_OPTIONS[option]
    eager, twin = _pair(options)
    compiled = torch.compile(twin, fullgraph=True, dynamic=True)
    generator = torch.Generator().manual_seed(1)
    for batch in (8, 6):
        x = torch.randn(batch, 3, 4, 4, generator=generator) * 2 + 1
        _assert_same_training_step(eager, compiled, x, call_kinds, generator)
        bn.apply_updates(eager)
        bn.apply_updates(twin)
        for got, want in zip(twin.get_weights(), eager.get_weights(), strict=True):
            torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want))
    x = torch.randn(5, 3, 4, 4, generator=generator)
    torch.testing.assert_close(compiled(x, training=False), eager(x, training=False))


def test_compiled_calls_on_channels_last_axes_equal_eager(fresh_dynamo):
    """Kept axes that are not dimensions 1 to k (axis=-1 of a 4-d input): the closed-form route."""
    generator = torch.Generator().manual_seed(5)
    state = torch.zeros(3), torch.ones(3)
    gamma = torch.rand(3, generator=generator).add(0.5).requires_grad_()

    def call(x, mask):
        return batch_norm(x, *state, gamma, None, training=True, axis=-1, mask=mask).output

    compiled = torch.compile(call, fullgraph=True, dynamic=True)
    for batch in (8, 6):
        x = torch.randn(batch, 4, 4, 3, generator=generator) * 3 + 2
        dy = torch.randn(x.shape, generator=generator)
        for mask in (None, torch.rand(batch, 4, 4, generator=generator) > 0.3):
            grads = []
            for function in (call, compiled):
                xi = x.clone().requires_grad_(True)
                y = function(xi, mask)
                grads.append((y.detach(), *torch.autograd.grad((y * dy).sum(), (xi, gamma))))
            for got, want in zip(grads[1], grads[0], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("option", ["ghost", "renorm_weights"])
def test_compiled_channels_last_training_equals_eager(option, fresh_dynamo):
    """channels_last input, whose kept dimensions (ghost groups and channels) lie apart in
    memory: the closed-form route runs in memory order."""
    options, call_kinds = COMPILE_OPTIONS[option]
    eager, twin = _pair(options)
    compiled = torch.compile(twin, fullgraph=True, dynamic=True)
    generator = torch.Generator().manual_seed(6)
    for batch in (8, 6):
        x = (torch.randn(batch, 3, 4, 4, generator=generator) * 2 + 1).contiguous(
            memory_format=torch.channels_last
        )
        _assert_same_training_step(eager, compiled, x, call_kinds, generator)
        for got, want in zip(twin.get_weights(), eager.get_weights(), strict=True):
            torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want))


@pytest.mark.parametrize("option", sorted(COMPILE_OPTIONS))
def test_a_training_call_compiles_to_one_graph(option, fresh_dynamo):
    """The graph breaks torch._dynamo.explain counts, per option: none, one graph."""
    options, call_kinds = COMPILE_OPTIONS[option]
    layer, _ = _pair(options)
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    call = {
        k: _call_inputs(kind, x, torch.Generator().manual_seed(4)) for k, kind in call_kinds.items()
    }
    report = torch._dynamo.explain(layer)(x, training=True, **call)
    assert (report.graph_break_count, report.graph_count) == (0, 1)


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_large_compiled_plain_calls_take_the_closed_form_and_equal_eager(
    channels_last, fresh_dynamo, monkeypatch
):
    """From COMPILED_CLOSED_FORM_ELEMENTS (patched to this test's size), a plain compiled
    training call takes the closed form, not ATen's op; fullgraph with a changing batch,
    equal to eager (outputs, gradients, moving statistics)."""
    routes: list[str] = []

    def spied(name):
        route = getattr(bn.functional, name)

        def spy(call):
            routes.append(name)
            return route(call)

        return spy

    for name in ("_compiled_normalize", "_compiled_standardized"):
        monkeypatch.setattr(bn.functional, name, spied(name))
    monkeypatch.setattr(bn._thresholds, "COMPILED_CLOSED_FORM_ELEMENTS", 300)
    eager, twin = _pair({})
    compiled = torch.compile(twin, fullgraph=True, dynamic=True)
    generator = torch.Generator().manual_seed(7)
    for batch in (8, 6, 2):  # 384, 288 and 96 elements: the last one below the threshold
        x = torch.randn(batch, 3, 4, 4, generator=generator) * 2 + 1
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _assert_same_training_step(eager, compiled, x, {}, generator)
        for got, want in zip(twin.get_weights(), eager.get_weights(), strict=True):
            torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want))
    assert routes[:1] == ["_compiled_standardized"] and "_compiled_normalize" in routes


def test_a_static_compiled_matrix_call_sums_its_rows_in_parts_and_equals_eager(fresh_dynamo):
    """A matrix (channels innermost, one reduced dimension) compiled with static shapes: the
    closed form's sums take its rows in parts (``_moments.sum_over``), equal to eager."""
    generator = torch.Generator().manual_seed(8)
    state = torch.zeros(8), torch.ones(8)
    gamma = torch.rand(8, generator=generator).add(0.5).requires_grad_()
    x = torch.randn(512, 8, generator=generator) * 3 + 2
    weights = torch.rand(512, generator=generator)
    dy = torch.randn(x.shape, generator=generator)

    def call(x):
        return batch_norm(x, *state, gamma, None, training=True, batch_weights=weights).output

    results = []
    for function in (call, torch.compile(call, fullgraph=True, dynamic=False)):
        xi = x.clone().requires_grad_(True)
        y = function(xi)
        results.append((y.detach(), *torch.autograd.grad((y * dy).sum(), (xi, gamma))))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- torch.export
class _Wrapped(torch.nn.Module):
    def __init__(self, training: bool, **options: object) -> None:
        super().__init__()
        self.bn = bn.BatchNormalization(axis=1, momentum=0.5, input_shape=(3, 4, 4), **options)
        self.training_call = training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x, training=self.training_call)


@pytest.mark.parametrize(
    ("training", "options"),
    [(False, {}), (True, {}), (True, {"renorm": True})],
    ids=["inference", "training", "training_renorm"],  # renorm: the closed-form route
)
def test_export_with_a_dynamic_batch_equals_eager(training, options, fresh_dynamo):
    generator = torch.Generator().manual_seed(2)
    model = _Wrapped(training, **options)
    reference = _Wrapped(training, **options)
    reference.load_state_dict(model.state_dict())
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        model, (torch.randn(8, 3, 4, 4),), dynamic_shapes={"x": {0: batch}}
    )
    exported = program.module()
    for size in (5, 11):
        x = torch.randn(size, 3, 4, 4, generator=generator) * 3 - 1
        torch.testing.assert_close(exported(x), reference(x), rtol=1e-5, atol=1e-5)
    if training:  # the exported module updated its own moving statistics, as eager did
        torch.testing.assert_close(exported.bn.moving_mean, reference.bn.moving_mean)


# --------------------------------------------------------------------------- torch.func
def _stats():
    return torch.zeros(3), torch.ones(3)


def test_func_grad_vmap_and_jacrev_of_the_functional_equal_eager():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, 3, generator=generator) * 2  # 4 independent batches of (6, 3)
    gamma = torch.rand(3, generator=generator) + 0.5

    def loss(gamma, x):
        return batch_norm(x, *_stats(), gamma, training=True).output.pow(3).sum()

    g = gamma.clone().requires_grad_(True)
    loss(g, x[0]).backward()
    torch.testing.assert_close(torch.func.grad(loss)(gamma, x[0]), g.grad)

    def moments(x):
        return batch_norm(x, *_stats(), gamma, training=True, momentum=0.0).new_stats["moving_mean"]

    looped = torch.stack([moments(batch) for batch in x])
    torch.testing.assert_close(torch.func.vmap(moments)(x), looped)

    def output(x):
        return batch_norm(x, *_stats(), gamma, training=True).output

    small = x[0, :3]
    eager = torch.autograd.functional.jacobian(output, small)
    torch.testing.assert_close(torch.func.jacrev(output)(small), eager)


def test_func_transforms_of_the_layer():
    """Inference works under vmap and functional_call + grad; a training update explains."""
    generator = torch.Generator().manual_seed(5)
    layer = bn.BatchNormalization(gamma_initializer="random_normal", input_shape=(3,))
    x = torch.randn(4, 6, 3, generator=generator)
    looped = torch.stack([layer(batch, training=False) for batch in x])
    vmapped = torch.func.vmap(lambda batch: layer(batch, training=False))(x)
    torch.testing.assert_close(vmapped, looped)
    params, buffers = dict(layer.named_parameters()), dict(layer.named_buffers())

    def loss(params, x, training):
        y = torch.func.functional_call(layer, (params, buffers), (x,), {"training": training})
        return y.pow(2).sum()

    grads = torch.func.grad(loss)(params, x[0], False)
    layer.zero_grad()
    loss(dict(layer.named_parameters()), x[0], False).backward()
    torch.testing.assert_close(grads["gamma"], layer.gamma.grad)
    with pytest.raises(bn.BatchNormError, match=r"in place in training.*functional\.batch_norm"):
        torch.func.grad(loss)(params, x[0], True)


def test_torch_jit_script_names_what_works_instead():
    with pytest.raises(bn.BatchNormError, match=r"torch\.jit\.script.*torch\.compile"):
        torch.jit.script(torch.nn.Sequential(bn.BatchNormalization(input_shape=(3,))))
