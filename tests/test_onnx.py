"""ONNX export of a model with batchnorm: both of torch's exporters, run in onnxruntime.

Oracle: the same model in eager PyTorch, on a batch size other than the exported example's.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import batchnorm as bn


class _Model(torch.nn.Module):
    def __init__(self, axis: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.bn = bn.BatchNormalization(
            axis=axis,
            input_shape=input_shape,
            gamma_initializer="random_normal",
            moving_mean_initializer="random_normal",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x, training=False)


def _export(model: torch.nn.Module, x: torch.Tensor, path: str, dynamo: bool) -> None:
    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes={"x": {0: batch}})
    else:
        torch.onnx.export(
            model, (x,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
        )


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize(
    ("axis", "input_shape", "one_node"),
    [(1, (3, 4, 4), True), (-1, (4, 4, 3), False), (1, (5,), True)],
    ids=["nchw", "nhwc", "dense"],
)
def test_onnx_export_with_a_dynamic_batch_runs_in_onnxruntime(
    axis, input_shape, one_node, dynamo, tmp_path
):
    torch.manual_seed(0)
    model = _Model(axis, input_shape).eval()
    path = str(tmp_path / "model.onnx")
    _export(model, torch.randn(8, *input_shape), path, dynamo)
    operators = [node.op_type for node in onnx.load(path).graph.node]
    if one_node:  # channels on dimension 1: ONNX's own BatchNormalization
        assert operators.count("BatchNormalization") == 1
        assert set(operators) <= {"BatchNormalization", "Identity"}
    session = onnxruntime.InferenceSession(path)
    x = np.random.default_rng(1).standard_normal((5, *input_shape)).astype(np.float32)
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    want = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
