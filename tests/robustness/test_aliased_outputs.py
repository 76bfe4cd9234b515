"""Outputs never share storage with the caller's inputs or the model's weights (issue 19): an ONNX
Identity or inference Dropout returns its input, which a graph would hand back as the caller's own
tensor; onnxruntime returns fresh buffers, and so does torch_chrion. A graph left with nothing to
run is still planned (an empty plan) rather than failing in the scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnx_robustness_models import LOAD_OPTIONS, make_model, onnxruntime_outputs

import torch_chrion
from torch_chrion.schedule import make_plan
from torch_chrion.settings import ChrionSettings

F = TensorProto.FLOAT


@pytest.mark.parametrize(
    "node",
    [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Dropout", ["x"], ["y"]),
    ],
    ids=["Identity", "Dropout"],
)
def test_an_output_that_is_the_input_is_a_fresh_tensor(node, tmp_path):
    proto = make_model(
        [node],
        [helper.make_tensor_value_info("x", F, [2, 3])],
        [helper.make_tensor_value_info("y", F, [2, 3])],
    )
    chrion = torch_chrion.load_onnx(proto, cache_dir=str(tmp_path), **LOAD_OPTIONS)
    x = torch.randn(2, 3)
    y = chrion(x)
    np.testing.assert_array_equal(y.numpy(), onnxruntime_outputs(proto, {"x": x.numpy()})[0])
    assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    y.add_(1)  # the caller's input is untouched, and the next call starts from it
    np.testing.assert_array_equal(chrion(x).numpy(), x.numpy())


def test_an_output_that_is_a_weight_is_a_fresh_tensor(tmp_path):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    proto = make_model(
        [helper.make_node("Identity", ["w"], ["y"]), helper.make_node("Relu", ["x"], ["z"])],
        [helper.make_tensor_value_info("x", F, [2, 3])],
        [
            helper.make_tensor_value_info("y", F, [2, 3]),
            helper.make_tensor_value_info("z", F, [2, 3]),
        ],
        initializers=[helper.make_tensor("w", F, [2, 3], weight.ravel().tolist())],
    )
    chrion = torch_chrion.load_onnx(proto, cache_dir=str(tmp_path), **LOAD_OPTIONS)
    x = torch.randn(2, 3)
    y, _ = chrion(x)
    y.mul_(0)  # must not zero the model's weight
    y, z = chrion(x)
    expected = onnxruntime_outputs(proto, {"x": x.numpy()})
    np.testing.assert_array_equal(y.numpy(), expected[0])
    np.testing.assert_array_equal(z.numpy(), expected[1])


def test_a_graph_with_no_schedulable_node_gets_an_empty_plan():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(x)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)

    class NoCosts:
        devices = ["cpu:0", "cpu:1"]
        node_ms: dict = {}
        transfer: dict = {}
        graph_hash = "empty"

    plan = make_plan(gm, NoCosts(), ChrionSettings(devices=("cpu:0", "cpu:1")))
    assert plan.placement == {} and plan.order == [] and plan.predicted_ms == 0.0
    assert plan.devices == ["cpu:0", "cpu:1"]
