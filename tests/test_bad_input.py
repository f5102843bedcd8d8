"""Every rejected input, and what each degenerate batch does: the table in README's "Bad input".

Each :class:`Refusal` is one mistake a user makes at one entry point (the layer, the
functional, compat.v1's ``batch_norm``). The error must be a ValueError or TypeError whose
message names the argument, and must leave the layer as it was, bit for bit: every weight,
statistic and counter, its pending updates and whether it is built (:func:`_assert_unchanged`,
the one helper every case goes through). README's table lists these by name
(``test_the_readme_table_lists_every_case``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import batchnorm as bn
from batchnorm.compat import v1

README = Path(__file__).resolve().parents[1] / "README.md"
CHANNELS = 3


def _layer(**options: Any) -> bn.BatchNormalization:
    """A trained layer with renorm and zero-debias, so every statistic and counter exists."""
    layer = bn.BatchNormalization(
        axis=1,
        momentum=0.5,
        renorm=True,
        zero_debias_moving_mean=True,
        input_shape=(CHANNELS, 4),
        name="bn_under_test",
        **options,
    )
    layer(torch.randn(6, CHANNELS, 4, generator=torch.Generator().manual_seed(0)), training=True)
    return layer


def _x(*shape: int, **kwargs: Any) -> torch.Tensor:
    return torch.randn(shape or (6, CHANNELS, 4), generator=torch.Generator().manual_seed(1)).to(
        **kwargs
    )


def _everything(layer: bn.BatchNormalization) -> dict[str, Any]:
    tensors = {f"p:{n}": t.detach().clone() for n, t in layer.named_parameters()}
    tensors |= {f"b:{n}": t.clone() for n, t in layer.named_buffers()}  # non-persistent too
    return {
        "tensors": tensors,
        "built": layer.built,
        "pending": len(layer.updates),
        "config": layer.get_config(),
    }


def _assert_unchanged(layer: bn.BatchNormalization, before: dict[str, Any]) -> None:
    after = _everything(layer)
    assert after["built"] == before["built"]
    assert after["pending"] == before["pending"]
    assert after["config"] == before["config"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, value in before["tensors"].items():  # bit for bit, NaN included
        torch.testing.assert_close(after["tensors"][name], value, rtol=0, atol=0, equal_nan=True)


@dataclass(frozen=True)
class Refusal:
    """A call on ``layer`` that must raise an error naming ``argument``."""

    name: str
    call: Callable[[bn.BatchNormalization], Any]
    argument: str
    layer_options: tuple[tuple[str, Any], ...] = ()
    setting: tuple[str, Any] | None = None  # an attribute the user set before the call


def _state_dict_with(layer: bn.BatchNormalization, **changes: Any) -> dict[str, Any]:
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in layer.state_dict().items()}
    state = {
        k: (v + 1 if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()
    }
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def _bad_setting(name: str, argument: str, attribute: str, value: Any) -> Refusal:
    """The user sets ``attribute`` to ``value`` on the built layer; its next call refuses."""
    return Refusal(
        name, lambda layer: layer(_x(), training=True), argument, setting=(attribute, value)
    )


def _new(**options: Any) -> bn.BatchNormalization:
    return bn.BatchNormalization(**options)


def _functional(x: torch.Tensor, **options: Any) -> Any:
    return bn.functional.batch_norm(
        x, torch.zeros(CHANNELS), torch.ones(CHANNELS), training=True, axis=1, **options
    )


REFUSALS = [
    # --- inputs
    Refusal("input not a tensor", lambda layer: layer([[1.0, 2.0, 3.0]], training=True), "inputs"),
    Refusal(
        "rank changed after build",
        lambda layer: layer(_x(6, CHANNELS), training=True),
        "input rank",
    ),
    Refusal(
        "channel count changed after build",
        lambda layer: layer(_x(6, CHANNELS + 1, 4), training=True),
        "input.shape[1]",
    ),
    Refusal(
        "complex input",
        lambda layer: layer(_x(dtype=torch.complex64), training=False),
        "inputs.dtype",
    ),
    Refusal(
        "integer input in training", lambda layer: layer(_x().long(), training=True), "inputs.dtype"
    ),
    Refusal("bool input in training", lambda layer: layer(_x() > 0, training=True), "inputs.dtype"),
    Refusal(
        "input on another device than the weights (meta)",
        lambda layer: layer(_x(device="meta"), training=True),
        "x.device",
    ),
    Refusal("training not a bool", lambda layer: layer(_x(), training="yes"), "training"),
    Refusal(
        "virtual batch size not dividing the batch",
        lambda layer: layer(_x(5, CHANNELS, 4), training=True),
        "virtual_batch_size",
        (("virtual_batch_size", 2),),
    ),
    # --- batch_weights and mask
    Refusal(
        "batch_weights of the wrong shape",
        lambda layer: layer(_x(), training=True, batch_weights=torch.ones(5)),
        "batch_weights.shape",
    ),
    Refusal(
        "negative batch weight",
        lambda layer: layer(_x(), training=True, batch_weights=torch.tensor([1.0, -1, 1, 1, 1, 1])),
        "batch_weights",
    ),
    Refusal(
        "NaN batch weight",
        lambda layer: layer(
            _x(), training=True, batch_weights=torch.tensor([1.0, float("nan"), 1, 1, 1, 1])
        ),
        "batch_weights",
    ),
    Refusal(
        "infinite batch weight",
        lambda layer: layer(
            _x(), training=True, batch_weights=torch.tensor([1.0, float("inf"), 1, 1, 1, 1])
        ),
        "batch_weights",
    ),
    Refusal(
        "complex batch weights",
        lambda layer: layer(
            _x(), training=True, batch_weights=torch.ones(6, dtype=torch.complex64)
        ),
        "batch_weights.dtype",
    ),
    Refusal(
        "mask of the wrong shape",
        lambda layer: layer(_x(), training=True, mask=torch.ones(6, 2, dtype=torch.bool)),
        "mask.shape",
    ),
    Refusal(
        "mask with an entry other than 0 and 1",
        lambda layer: layer(_x(), training=True, mask=-torch.ones(6, CHANNELS)),
        "mask",
    ),
    Refusal(
        "complex mask",
        lambda layer: layer(
            _x(), training=True, mask=torch.ones(6, CHANNELS, dtype=torch.complex64)
        ),
        "mask.dtype",
    ),
    # --- adjustment
    _bad_setting(
        "adjustment result of the wrong shape",
        "adjustment scale.shape",
        "adjustment",
        lambda shape: (torch.ones(5), torch.zeros(5)),
    ),
    _bad_setting(
        "adjustment result not a pair", "adjustment result", "adjustment", lambda shape: 3
    ),
    # --- options set on a built layer (checked by the next call)
    _bad_setting("momentum outside [0, 1]", "momentum", "momentum", 1.5),
    _bad_setting("momentum 1 with zero-debias", "momentum", "momentum", 1.0),
    _bad_setting("negative epsilon", "epsilon", "epsilon", -1.0),
    _bad_setting(
        "renorm_clipping with an unknown key", "renorm_clipping", "renorm_clipping", {"rmn": 1.0}
    ),
    _bad_setting(
        "renorm_clipping with rmin > rmax",
        "renorm_clipping",
        "renorm_clipping",
        {"rmin": 2.0, "rmax": 1.0},
    ),
    _bad_setting(
        "renorm_clipping with dmax < 0", "renorm_clipping", "renorm_clipping", {"dmax": -1.0}
    ),
    _bad_setting("unknown nonfinite policy", "nonfinite", "nonfinite", "ignore"),
    # --- weights and checkpoints
    Refusal(
        "set_weights with the wrong count",
        lambda layer: layer.set_weights([np.ones(3)] * 3),
        "len(weights)",
    ),
    Refusal(
        "set_weights with the wrong shape",
        lambda layer: layer.set_weights([np.ones(4)] * len(layer.get_weights())),
        "weights[0].shape",
    ),
    Refusal(
        "set_weights with non-numeric arrays",
        lambda layer: layer.set_weights([np.array(["a", "b", "c"])] * len(layer.get_weights())),
        "weights[0].dtype",
    ),
    Refusal(
        "load_state_dict with a missing key",
        lambda layer: layer.load_state_dict(_state_dict_with(layer, moving_variance=None)),
        "missing key 'moving_variance'",
    ),
    Refusal(
        "load_state_dict with an extra key",
        lambda layer: layer.load_state_dict(_state_dict_with(layer, extra=torch.ones(3))),
        "unexpected key 'extra'",
    ),
    Refusal(
        "load_state_dict with a wrong shape",
        lambda layer: layer.load_state_dict(_state_dict_with(layer, moving_variance=torch.ones(4))),
        "'moving_variance' has shape (4,)",
    ),
    Refusal(
        "load_state_dict with a non-tensor entry",
        lambda layer: layer.load_state_dict(_state_dict_with(layer, gamma=[1.0, 2.0, 3.0])),
        "'gamma' is a list",
    ),
    Refusal(
        "load_state_dict of another format version",
        lambda layer: layer.load_state_dict(
            _state_dict_with(layer, _extra_state={"format_version": 99})
        ),
        "_extra_state",
    ),
    Refusal(
        "load_state_dict of a non-mapping",
        lambda layer: layer.load_state_dict([1, 2]),
        "state_dict",
    ),
    # --- construction and configs (a new layer; the one under test is untouched)
    Refusal("axis out of range", lambda layer: _new(axis=3)(_x(), training=True), "axis"),
    Refusal("axis repeated", lambda layer: _new(axis=[1, 1]), "axis"),
    Refusal(
        "momentum outside [0, 1] at construction", lambda layer: _new(momentum=-0.1), "momentum"
    ),
    Refusal(
        "virtual_batch_size not positive",
        lambda layer: _new(virtual_batch_size=0),
        "virtual_batch_size",
    ),
    Refusal(
        "initializer result of the wrong shape",
        lambda layer: _new(
            gamma_initializer=lambda shape, dtype=None: torch.ones(5), input_shape=(3,)
        ),
        "gamma_initializer",
    ),
    _bad_setting("process_group not a process group", "process_group", "process_group", "world"),
    Refusal(
        "convert_sync_batchnorm of a non-module",
        lambda layer: bn.convert_sync_batchnorm([layer]),
        "module",
    ),
    Refusal(
        "from_config with an unknown key",
        lambda layer: bn.BatchNormalization.from_config({"momentun": 0.9}),
        "config keys",
    ),
    Refusal(
        "from_config with a value of the wrong type",
        lambda layer: bn.BatchNormalization.from_config({"center": "yes"}),
        "center",
    ),
    Refusal(
        "from_config naming code",
        lambda layer: bn.BatchNormalization.from_config(
            {"gamma_initializer": {"class_name": "builtins.eval", "config": {}}}
        ),
        "gamma_initializer",
    ),
    # --- the functional and compat.v1 on the same mistakes (the layer's state is untouched)
    Refusal(
        "functional: complex x", lambda layer: _functional(_x(dtype=torch.complex64)), "x.dtype"
    ),
    Refusal("functional: integer x in training", lambda layer: _functional(_x().long()), "x.dtype"),
    Refusal("functional: bad momentum", lambda layer: _functional(_x(), momentum=2.0), "momentum"),
    Refusal(
        "functional: bad nonfinite", lambda layer: _functional(_x(), nonfinite="no"), "nonfinite"
    ),
    Refusal(
        "functional: moving statistics missing for renorm",
        lambda layer: _functional(_x(), renorm=True),
        "moving_stddev",
    ),
    Refusal(
        "compat.v1: negative batch weight",
        lambda layer: v1.batch_norm(_x(), batch_weights=-torch.ones(6), scope="bad_weights"),
        "batch_weights",
    ),
    Refusal(
        "compat.v1: bad decay",
        lambda layer: v1.batch_norm(_x(), decay=1.5, scope="bad_decay"),
        "decay",
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda case: case.name)
def test_bad_input_is_refused_by_name_and_changes_nothing(case: Refusal) -> None:
    v1.reset_default_graph()
    layer = _layer(**dict(case.layer_options))
    if case.setting is not None:
        setattr(layer, *case.setting)
    before = _everything(layer)
    with pytest.raises((ValueError, TypeError)) as raised:
        case.call(layer)
    assert case.argument in str(raised.value), str(raised.value)
    _assert_unchanged(layer, before)
    assert not v1.get_collection(v1.GraphKeys.UPDATE_OPS)


def test_a_model_load_keeps_a_layer_whole_when_one_of_its_entries_is_bad() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), _layer())
    before = _everything(model[1])
    state = model.state_dict()
    state["1.moving_variance"] = torch.ones(5)
    with pytest.raises(RuntimeError, match="moving_variance"):
        model.load_state_dict(state)
    _assert_unchanged(model[1], before)


def test_the_unbuilt_layer_refuses_a_meta_input_by_name() -> None:
    layer = bn.BatchNormalization(axis=1)
    with pytest.raises(bn.BatchNormError, match=r"inputs\.device"):
        layer(_x(device="meta"), training=True)
    assert not layer.built
    built = bn.BatchNormalization(axis=1, input_shape=(CHANNELS, 4)).to("meta")
    assert built(_x(device="meta"), training=True).device.type == "meta"


# ------------------------------------------------------------------ degenerate batches


def _fresh() -> bn.BatchNormalization:
    return bn.BatchNormalization(axis=1, momentum=0.5, epsilon=1e-3, input_shape=(CHANNELS,))


def test_a_batch_of_one_moves_the_variance_toward_zero() -> None:
    """TensorFlow: the fused kernel's Bessel factor is guarded (n / max(n - 1, 1)); var 0."""
    layer = _fresh()
    y = layer(torch.tensor([[1.0, 2.0, 3.0]]), training=True)
    assert torch.equal(y, torch.zeros(1, CHANNELS))  # x - mean = 0: beta
    assert torch.equal(layer.moving_variance, torch.full((CHANNELS,), 0.5))
    assert torch.equal(layer.moving_mean, torch.tensor([0.5, 1.0, 1.5]))


def test_a_constant_channel_gives_beta_and_a_zero_variance_step() -> None:
    layer = _fresh()
    layer.beta.data.fill_(0.25)
    y = layer(torch.full((5, CHANNELS), 7.0), training=True)
    assert torch.equal(y, torch.full((5, CHANNELS), 0.25))
    assert torch.equal(layer.moving_variance, torch.full((CHANNELS,), 0.5))


def test_an_empty_batch_changes_no_statistic() -> None:
    layer = _fresh()
    before = _everything(layer)
    y = layer(torch.empty(0, CHANNELS), training=True)
    assert y.shape == (0, CHANNELS)
    _assert_unchanged(layer, before)


@pytest.mark.parametrize(
    "call",
    [
        {"mask": torch.zeros(4, dtype=torch.bool)},
        {"batch_weights": torch.zeros(4)},
    ],
    ids=["fully masked", "zero total weight"],
)
def test_a_batch_without_weight_changes_no_statistic_and_stays_finite(call: dict[str, Any]) -> None:
    """TensorFlow's div_no_nan: the moments are 0 and 0, so the output is x / sqrt(epsilon)."""
    layer = _fresh()
    before = _everything(layer)
    x = torch.randn(4, CHANNELS)
    y = layer(x, training=True, **call)
    _assert_unchanged(layer, before)
    torch.testing.assert_close(y, x / torch.sqrt(torch.tensor(1e-3)))


def test_the_readme_table_lists_every_case() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Bad input and degenerate batches", 1)[1].split("\n## ", 1)[0]
    rows = {row.split("|")[1].strip() for row in re.findall(r"^\|[^\n]+\|$", section, re.M)}
    degenerate = {"batch of one", "constant channel", "empty batch", "fully masked batch"}
    degenerate |= {"zero total weight", "non-finite batch"}
    missing = [case.name for case in REFUSALS if case.name not in rows]
    missing += sorted(degenerate - rows)
    assert not missing, f"README's table lacks: {missing}"
