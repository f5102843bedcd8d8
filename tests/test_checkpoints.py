"""Checkpoints: today's files keep loading, and every way of copying a layer keeps it whole.

``tests/golden/checkpoint_v1.pt`` holds state_dicts written in state layout version 1 (by
``tools/make_checkpoint_fixture.py``, never regenerated), with an input and the inference
output recorded then: the oracle that later versions still load them, into a built or an
unbuilt layer, to the bit.
"""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import batchnorm as bn

FIXTURE = Path(__file__).resolve().parent / "golden" / "checkpoint_v1.pt"
ENTRIES: dict[str, dict[str, Any]] = torch.load(FIXTURE, weights_only=True)["entries"]


@pytest.mark.parametrize("built", [False, True], ids=["unbuilt", "built"])
@pytest.mark.parametrize("name", ENTRIES)
def test_a_version_1_checkpoint_loads_to_the_bit(name: str, built: bool) -> None:
    entry = ENTRIES[name]
    shape = {"input_shape": (3, 4)} if built else {}
    layer = bn.BatchNormalization(momentum=0.5, **entry["options"], **shape)
    layer.load_state_dict(entry["state_dict"])
    assert layer.built
    for key, value in entry["state_dict"].items():
        if torch.is_tensor(value):
            assert torch.equal(layer.state_dict()[key], value), key
    assert torch.equal(layer(entry["probe"], training=False), entry["inference"])


def test_the_fixture_is_the_current_layout() -> None:
    """If this fails, the state layout changed: bump its version, keep v1 loading, add v2."""
    entry = ENTRIES["renorm_zero_debias"]
    fresh = bn.BatchNormalization(momentum=0.5, **entry["options"], input_shape=(3, 4))
    assert sorted(fresh.state_dict()) == sorted(entry["state_dict"])
    assert fresh.state_dict()["_extra_state"] == entry["state_dict"]["_extra_state"]


OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "renorm": {"renorm": True, "renorm_clipping": {"rmax": 1.5}},
    "ghost": {"virtual_batch_size": 2},
    "zero_debias": {"zero_debias_moving_mean": True},
    "deferred": {"deferred_updates": True},
    "propagate": {"nonfinite": "propagate"},
}


def _trained(options: dict[str, Any]) -> bn.BatchNormalization:
    layer = bn.BatchNormalization(axis=1, momentum=0.5, input_shape=(3, 4), **options)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        layer(torch.randn(4, 3, 4, generator=generator), training=True)
    layer.apply_updates()
    return layer


def _via_state_dict(layer: bn.BatchNormalization) -> bn.BatchNormalization:
    twin = bn.BatchNormalization.from_config(layer.get_config())
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    return twin


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda layer: pickle.loads(pickle.dumps(layer)),
    "config and state_dict": _via_state_dict,
}


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("option", OPTIONS)
def test_a_copy_trains_and_infers_as_the_original(option: str, how: str) -> None:
    layer = _trained(OPTIONS[option])
    twin = COPIES[how](layer)
    assert twin.get_config() == layer.get_config()
    x = torch.randn(4, 3, 4, generator=torch.Generator().manual_seed(5))
    for training in (True, False):
        assert torch.equal(twin(x, training=training), layer(x, training=training))
    layer.apply_updates(), twin.apply_updates()
    for (name, ours), (_, theirs) in zip(
        layer.state_dict().items(), twin.state_dict().items(), strict=True
    ):
        assert (ours == theirs) if name == "_extra_state" else torch.equal(ours, theirs), name
