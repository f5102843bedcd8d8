"""The fast path's routing: the plan each call gets, and that the plan's routes are what runs.

Oracles: :data:`CASES` is the routing specification, typed by hand (a route is a decision, not
a number); the routes that run are recorded by spies wrapped around every entry of the route
tables, so a plan that names one route while another runs fails
``test_the_routes_that_run_are_the_plans``; ``test_every_route_is_exercised`` fails when a
route in :data:`batchnorm._plan.ROUTE_NAMES` is reached by no case (a dead route, or a case
missing here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import batchnorm as bn
from batchnorm import _kernels, _plan, _statistics, _thresholds, functional
from batchnorm._plan import ROUTE_NAMES, plan_for

BF16 = torch.bfloat16


def _nchw(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def _channels_last(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return _nchw(*shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


@dataclass
class Case:
    """A call and the routes it must take: ``expected`` fields of :class:`batchnorm._plan.Plan`."""

    name: str
    x: Callable[[], torch.Tensor]
    expected: dict[str, Any]
    call: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    training: bool = True
    gamma_grad: bool = False  # inference: gamma needs a gradient (the recorded route)
    synchronized: bool = False  # through a one-process stand-in for a group (_OneProcess)


class _OneProcess:
    """A synchronizer of a group of one: merging and summing change nothing."""

    def merge(self, moments, input_dtype, *, within_groups=False):
        return moments

    def sum(self, *tensors):
        return list(tensors)


def _per_element(shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(shape, generator=generator) + 0.5, torch.randn(shape, generator=generator)


def _mask(x: torch.Tensor) -> torch.Tensor:
    """A full-rank mask that varies along every reduced dimension."""
    shape = (x.shape[0], 1, *x.shape[2:])
    return torch.rand(shape, generator=torch.Generator().manual_seed(2)) > 0.3


def _weights(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape[0], generator=torch.Generator().manual_seed(3))


ALL_ATEN = {"SMALL_INPUT_ELEMENTS": 0, "ATEN_TRAINING_ELEMENTS": 0}  # the passes, two-pass sums
CASES = [
    Case(
        "tiny NCHW: ATen's training kernel",
        lambda: _nchw(8, 16, 4, 4),
        {"training": "aten", "infer": "aten"},
    ),
    Case(
        "small NCHW, passes: var_mean, addcmul",
        lambda: _nchw(8, 16, 4, 4),
        {"training": "passes", "stats": "var_mean", "apply": "scale_and_shift"},
        thresholds={"ATEN_TRAINING_ELEMENTS": 0},
    ),
    Case(
        "large-route NCHW: two-pass sums, ATen apply and backward",
        lambda: _nchw(8, 16, 4, 4),
        {
            "stats": "two_pass",
            "apply": "aten_unit",
            "centred": "centred",
            "fold": "if_within_limit",
            "reduce": "aten",
            "input_grad": "aten",
        },
        thresholds={**ALL_ATEN, "ATEN_APPLY_ELEMENTS": 0},
    ),
    Case(
        "NCHW beyond the fold limit: centred apply",
        lambda: _nchw(8, 16, 4, 4) * 0.01 + 5,
        {"stats": "var_mean", "apply": "scale_and_shift", "fold": "if_within_limit"},
        thresholds={"ATEN_TRAINING_ELEMENTS": 0},
    ),
    Case(
        "channels_last: channels innermost, addcmul below ATen's apply threshold, ATen backward",
        lambda: _channels_last(4, 8, 6, 6),
        {"training": "passes", "apply": "scale_and_shift", "reduce": "aten", "infer": "aten"},
    ),
    Case(
        "channels_last: ATen's apply from its threshold",
        lambda: _channels_last(4, 8, 6, 6),
        {"training": "passes", "apply": "aten_unit", "infer": "aten"},
        thresholds={"ATEN_APPLY_ELEMENTS": 0},
    ),
    Case(
        "dense matrix",
        lambda: _nchw(64, 8),
        {"training": "passes", "stats": "var_mean", "reduce": "aten", "infer": "folded"},
    ),
    Case(
        "NCHW inference: ATen's kernel",
        lambda: _nchw(8, 16, 4, 4),
        {"infer": "aten"},
        training=False,
    ),
    Case(
        "channels_last inference: ATen's kernel",
        lambda: _channels_last(4, 8, 6, 6),
        {"infer": "aten"},
        training=False,
    ),
    Case(
        "dense inference: one addcmul",
        lambda: _nchw(64, 8),
        {"infer": "folded", "apply": "scale_and_shift"},
        training=False,
    ),
    Case(
        "dense inference with a gradient: autograd ops",
        lambda: _nchw(64, 8),
        {"infer": "autograd"},
        training=False,
        gamma_grad=True,
    ),
    Case(
        "per-example weights: weighted rows, blocked input gradient",
        lambda: _nchw(8, 16, 4, 4),
        {"stats": "weighted_rows", "reduce": "aten", "input_grad": "blocked"},
        call={"batch_weights": _weights},
    ),
    Case(
        "full mask: weighted blocks",
        lambda: _nchw(8, 16, 4, 4),
        {"stats": "weighted_blocks", "input_grad": "blocked"},
        call={"mask": _mask},
    ),
    Case(
        "per-element adjustment: centred apply, composite backward",
        lambda: _nchw(8, 16, 4, 4),
        {"centred": "centred", "fold": "never", "reduce": "composite", "input_grad": "composite"},
        call={"adjustment": _per_element},
    ),
    Case(
        "ghost batches of channels_last: blocked sums",
        lambda: _channels_last(8, 8, 6, 6),
        {"stats": "var_mean", "reduce": "blocked", "input_grad": "blocked"},
        call={"virtual_batch_size": 4},
        thresholds={"SLICE_ELEMENTS": 1 << 62},
    ),
    Case(
        "ghost batches of channels_last: ATen slices",
        lambda: _channels_last(8, 8, 6, 6),
        {"reduce": "aten_slices", "input_grad": "blocked"},
        call={"virtual_batch_size": 4},
        thresholds={"SLICE_ELEMENTS": 1},
    ),
    Case(
        "synchronized NCHW: ATen's dx corrected to the group's sums",
        lambda: _nchw(8, 16, 4, 4),
        {"training": "passes", "reduce": "aten", "input_grad": "aten_synchronized"},
        synchronized=True,
    ),
    Case(
        "synchronized bfloat16: the blocked input gradient",
        lambda: _nchw(8, 16, 4, 4, dtype=BF16),
        {"stats": "aten", "reduce": "aten", "input_grad": "blocked"},
        synchronized=True,
    ),
    Case(
        "bfloat16 NCHW: ATen statistics and apply, always folded",
        lambda: _nchw(8, 16, 4, 4, dtype=BF16),
        {"stats": "aten", "apply": "aten_unit", "fold": "always", "infer": "aten"},
        thresholds={"ATEN_TRAINING_ELEMENTS": 0},
    ),
    Case(
        "bfloat16 channels_last: ATen statistics of rows folded into channels",
        lambda: _channels_last(4, 8, 6, 6, dtype=BF16),
        {"stats": "aten_folded_rows", "apply": "aten_unit", "reduce": "aten"},
        thresholds={"ROW_FOLD_ROWS": 16},
    ),
    Case(
        "bfloat16 channels_last below the folded rows: ATen statistics as they are",
        lambda: _channels_last(4, 8, 6, 6, dtype=BF16),
        {"stats": "aten", "apply": "aten_unit", "reduce": "aten"},
    ),
    Case(
        "bfloat16 ghost batches of channels_last: ATen slices",
        lambda: _channels_last(8, 8, 6, 6, dtype=BF16),
        {"stats": "aten_slices", "regroup": False, "apply": "aten_slices"},
        call={"virtual_batch_size": 4},
        thresholds={"SLICE_ELEMENTS": 1},
    ),
    Case(
        # 8 examples of 288 elements are too small a slice, 2 ghost groups of 1152 are not
        "bfloat16 ghost batches of channels_last: ATen slices of a regrouped copy",
        lambda: _channels_last(8, 8, 6, 6, dtype=BF16),
        {"stats": "aten_slices", "regroup": True, "apply": "upcast", "reduce": "aten_slices"},
        call={"virtual_batch_size": 4},
        thresholds={"SLICE_ELEMENTS": 1000},
    ),
    Case(
        "bfloat16 ghost batches of channels_last: upcast blocks",
        lambda: _channels_last(8, 8, 6, 6, dtype=BF16),
        {"stats": "upcast_blocks", "apply": "upcast", "reduce": "blocked"},
        call={"virtual_batch_size": 4},
        thresholds={"SLICE_ELEMENTS": 1 << 62},
    ),
    Case(
        "bfloat16 per-example weights of NCHW: ATen rows",
        lambda: _nchw(8, 16, 4, 4, dtype=BF16),
        {"stats": "aten_rows", "input_grad": "blocked"},
        call={"batch_weights": _weights},
    ),
    Case(
        "bfloat16 per-example weights of channels_last: ATen slices, weighted",
        lambda: _channels_last(8, 8, 6, 6, dtype=BF16),
        {"stats": "aten_weighted_slices"},
        call={"batch_weights": _weights},
        thresholds={"SLICE_ELEMENTS": 1},
    ),
    Case(
        "bfloat16 with a mask: upcast blocks",
        lambda: _nchw(8, 16, 4, 4, dtype=BF16),
        {"stats": "upcast_blocks"},
        call={"mask": _mask},
    ),
    Case(
        "bfloat16 per-element adjustment: centred, upcast",
        lambda: _nchw(8, 16, 4, 4, dtype=BF16),
        {"centred": "centred_upcast", "fold": "never", "reduce": "composite"},
        call={"adjustment": _per_element},
    ),
]


def _arguments(case: Case, x: torch.Tensor) -> dict[str, Any]:
    call = {
        key: value(x) if key in ("batch_weights", "mask") else value
        for key, value in case.call.items()
    }
    return {"axis": 1, "training": case.training, **call}


def _plan_of(case: Case, x: torch.Tensor) -> _plan.Plan:
    """The plan the functional takes for ``case``, through the same steps as a call."""
    return _viewed(case, x)[0]


def _viewed(case: Case, x: torch.Tensor) -> tuple[_plan.Plan, torch.Tensor, Any, Any]:
    """The plan, the view of ``x``, the view and the weights of a call of ``case``."""
    arguments = _arguments(case, x)
    layout = bn._axes.ChannelLayout.from_axis(1, x.shape)
    if not case.training:
        return plan_for(x, layout.axes, records=case.gamma_grad), x, None, None
    acc = torch.float32 if x.dtype == BF16 else x.dtype
    weights = functional._example_weights(
        x, layout, arguments.get("batch_weights"), arguments.get("mask"), acc
    )
    view = functional._make_view(layout, arguments.get("virtual_batch_size"), "strided")
    wv = view.place(weights, "weights") if weights is not None else None
    adjusted = functional._adjustment_affine(x, view, arguments.get("adjustment"), acc)
    xv = view.of(x)
    plan = functional._training_plan(
        xv, view, wv, adjusted, renorm=False, synchronized=case.synchronized
    )
    return plan, xv, view, wv


def _folds(case: Case, x: torch.Tensor) -> bool:
    """Whether the apply folds the mean for this call (the plan's rule, on its moments)."""
    plan, xv, view, wv = _viewed(case, x)
    moments = _statistics.stats_pass(xv, view.axes, wv, plan)
    return _kernels.FOLDS[plan.fold](moments.mean, torch.rsqrt(moments.var + 1e-3))


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> Callable[[Case], None]:
    def force(case: Case) -> None:
        for name, value in case.thresholds.items():
            monkeypatch.setattr(_thresholds, name, value)

    return force


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_case_gets_its_plan(case, forced):
    forced(case)
    x = case.x()
    plan = _plan_of(case, x)
    assert {key: getattr(plan, key) for key in case.expected} == case.expected
    arguments = _arguments(case, x)
    described = bn.functional.routes(
        x, **arguments, records=case.gamma_grad, synchronized=case.synchronized
    )
    assert described == plan.describe()


class _Spies:
    """Every route table entry wrapped to record the routes that run, by pass."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ran: dict[str, set[str]] = {name: set() for name in ROUTE_NAMES}
        tables = {
            "stats": [_statistics.STATS_ROUTES],
            "apply": [_kernels.APPLY_ROUTES, _kernels.FOLDED_APPLY_ROUTES],
            "reduce": [_kernels.REDUCE_ROUTES],
            "input_grad": [_kernels.INPUT_GRAD_ROUTES],
            "infer": [_kernels.INFER_ROUTES],
        }
        for kind, dicts in tables.items():
            for table in dicts:
                for name, route in list(table.items()):
                    monkeypatch.setitem(table, name, self._spy(kind, name, route))
        aten_training = functional.aten_training
        monkeypatch.setattr(
            functional, "aten_training", self._spy("training", "aten", aten_training)
        )
        stats_pass = functional.stats_pass
        monkeypatch.setattr(functional, "stats_pass", self._spy("training", "passes", stats_pass))

    def _spy(self, kind: str, name: str, route: Callable[..., Any]) -> Callable[..., Any]:
        def spy(*args: Any, **kwargs: Any) -> Any:
            self.ran[kind].add(name)
            return route(*args, **kwargs)

        return spy

    def clear(self) -> None:
        for ran in self.ran.values():
            ran.clear()


def _run(case: Case, x: torch.Tensor) -> torch.Tensor | None:
    """One call of ``case``, its backward when it trains; returns the input gradient."""
    if case.synchronized:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(functional, "synchronizer_for", lambda *args: _OneProcess())
            return _run(
                dataclasses.replace(case, synchronized=False, call={"synchronized": True}), x
            )
    channels = x.shape[1]
    gamma = torch.rand(channels).add_(0.5).requires_grad_(case.training or case.gamma_grad)
    beta = torch.randn(channels).requires_grad_(case.training)
    x = x.detach().requires_grad_(case.training)
    result = bn.functional.batch_norm(
        x, torch.zeros(channels), torch.ones(channels), gamma, beta, **_arguments(case, x)
    )
    if case.training:
        result.output.float().sum().backward()
    return x.grad


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_routes_that_run_are_the_plans(case, forced, monkeypatch):
    forced(case)
    x = case.x()
    plan = _plan_of(case, x)
    folds = case.training and _folds(case, x)  # before the spies: it runs a stats route
    spies = _Spies(monkeypatch)
    _run(case, x)
    ran = {kind: names for kind, names in spies.ran.items() if names}
    if not case.training:
        folded = {"apply": {plan.apply}} if plan.infer == "folded" else {}
        assert ran == {"infer": {plan.infer}, **folded}
    elif plan.training == "aten":
        assert ran == {"training": {"aten"}}
    else:
        assert ran == {
            "training": {"passes"},
            "stats": {plan.stats},
            "apply": {plan.apply if folds else plan.centred},
            "reduce": {plan.reduce},
            "input_grad": {plan.input_grad},
        }


def test_a_synchronized_call_in_a_group_of_one_is_the_plain_call():
    """The corrected ATen gradient, with the group's sums equal to this process's, is ATen's."""
    case = next(c for c in CASES if c.name.startswith("synchronized NCHW"))
    x = case.x()
    got = _run(case, x)
    want = _run(dataclasses.replace(case, synchronized=False), x)
    torch.testing.assert_close(got, want)


def test_beyond_the_fold_limit_atens_training_kernel_gives_way_to_the_passes(monkeypatch):
    """Constant-ish channels (mean 500 standard deviations out): ATen's folded apply would
    round off; the call runs the passes with the centred apply instead."""
    case = Case("offset", lambda: _nchw(8, 16, 4, 4) * 0.01 + 5, {})
    spies = _Spies(monkeypatch)
    _run(case, case.x())
    assert spies.ran["training"] == {"aten", "passes"}
    assert spies.ran["apply"] == {"centred"}


def test_every_route_is_exercised(forced, monkeypatch):
    """The cases together reach every route a plan can name, and each through the tables."""
    spies = _Spies(monkeypatch)
    planned: dict[str, set[str]] = {name: set() for name in ROUTE_NAMES}
    for case in CASES:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in case.thresholds.items():
                patch.setattr(_thresholds, name, value)
            x = case.x()
            plan = _plan_of(case, x)
            for kind in ROUTE_NAMES:
                planned[kind].add(getattr(plan, kind))
            planned["apply"].add(plan.centred)
            _run(case, x)
    for kind, names in ROUTE_NAMES.items():
        assert spies.ran[kind] == set(names), kind
        assert planned[kind] == set(names), kind


def test_a_plan_is_decided_once_per_signature(monkeypatch):
    calls = []
    decide = _plan._decide
    monkeypatch.setattr(_plan, "_decide", lambda *key: calls.append(key) or decide(*key))
    monkeypatch.setattr(_plan, "_PLANS", {})
    x = _nchw(8, 16, 4, 4)
    for _ in range(3):
        plan_for(x, (1,))
    plan_for(x.contiguous(memory_format=torch.channels_last), (1,))
    assert len(calls) == 2


def test_accelerators_never_read_the_fold_on_the_host():
    """A CUDA input (decided from its signature alone, no device needed) never folds by value."""
    plan = _plan._decide(
        torch.Size([8, 16, 4, 4]),
        (256, 16, 4, 1),
        torch.float32,
        "cuda",
        (1,),
        None,
        True,
        True,
        False,
        False,
        _plan._threshold_values(),
    )
    assert plan.fold == "never" and plan.training == "passes"
    assert plan.describe().startswith("stats=var_mean apply=centred ")  # the apply that runs


def test_rows_fold_for_atens_cpu_kernel_only():
    """A bfloat16 channels_last input folds its rows on the CPU, whose statistics kernel needs
    it; on an accelerator (decided from the signature alone) the kernel takes it as it is."""
    shape = torch.Size([8, 16, 32, 32])
    strides = (16384, 1, 512, 16)  # channels_last
    decided = {
        device: _plan._decide(
            shape, strides, BF16, device, (1,), None, True, True, False, False, ()
        ).stats
        for device in ("cpu", "cuda")
    }
    assert decided == {"cpu": "aten_folded_rows", "cuda": "aten"}
