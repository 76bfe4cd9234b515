"""What load_onnx accepts and refuses is what onnxruntime accepts and refuses (issue 19): a
graph output with a type but no shape loads, a graph of no nodes runs, truly malformed models
and opsets newer than onnx defines are refused with ModelError, and declared input shapes no
example input can be made of are refused before anything is allocated."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from onnx_robustness_models import LOAD_OPTIONS, make_model, onnxruntime_outputs

import torch_chrion
from torch_chrion.errors import ModelError

F = TensorProto.FLOAT


def _relu(input_shape, output_shape, opset: int = 17):
    return make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", F, input_shape)],
        [helper.make_tensor_value_info("y", F, output_shape)],
        opset=opset,
    )


def test_graph_output_with_a_type_but_no_shape_loads(tmp_path):
    proto = _relu([2, 3], None)
    assert not proto.graph.output[0].type.tensor_type.HasField("shape")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    chrion = torch_chrion.load_onnx(proto, cache_dir=str(tmp_path), **LOAD_OPTIONS)
    np.testing.assert_array_equal(
        chrion(torch.from_numpy(x)).numpy(), onnxruntime_outputs(proto, {"x": x})[0]
    )


def test_graph_input_without_a_shape_needs_example_inputs(tmp_path):
    proto = _relu(None, None)  # onnxruntime runs it with any shape
    with pytest.raises(ModelError, match=r"x \(rank not declared\)"):
        torch_chrion.load_onnx(proto, **LOAD_OPTIONS)  # not a scalar made up for it
    x = torch.randn(3, 4)
    chrion = torch_chrion.load_onnx(
        proto, example_inputs=(x,), cache_dir=str(tmp_path), **LOAD_OPTIONS
    )
    np.testing.assert_array_equal(
        chrion(x).numpy(), onnxruntime_outputs(proto, {"x": x.numpy()})[0]
    )


def test_malformed_models_are_still_refused():
    undefined_input = make_model(
        [helper.make_node("Add", ["x", "nowhere"], ["y"])],
        [helper.make_tensor_value_info("x", F, [2])],
        [helper.make_tensor_value_info("y", F, None)],
    )
    mixed_types = make_model(
        [helper.make_node("Add", ["x", "i"], ["y"])],
        [
            helper.make_tensor_value_info("x", F, [2]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", F, None)],
    )
    for proto, fault in [(undefined_input, "nowhere"), (mixed_types, "Add")]:
        with pytest.raises(Exception):  # noqa: B017  (the reference refuses it too)
            onnxruntime.InferenceSession(proto.SerializeToString())
        with pytest.raises(ModelError, match=fault):
            torch_chrion.load_onnx(proto, **LOAD_OPTIONS)


def test_opset_newer_than_onnx_defines_is_refused():
    proto = _relu([2, 3], [2, 3], opset=30)
    with pytest.raises(Exception, match="30"):  # noqa: B017
        onnxruntime.InferenceSession(proto.SerializeToString())
    with pytest.raises(ModelError, match="opset 30"):
        torch_chrion.load_onnx(proto, **LOAD_OPTIONS)


def test_graph_of_no_nodes_runs(tmp_path):
    proto = make_model(
        [],
        [helper.make_tensor_value_info("x", F, [2, 3])],
        [helper.make_tensor_value_info("x", F, [2, 3])],
    )
    chrion = torch_chrion.load_onnx(proto, cache_dir=str(tmp_path), **LOAD_OPTIONS)
    x = torch.randn(2, 3)
    y = chrion(x)
    np.testing.assert_array_equal(y.numpy(), onnxruntime_outputs(proto, {"x": x.numpy()})[0])
    y.add_(1)  # a new tensor, as onnxruntime returns: the caller's input is untouched
    np.testing.assert_array_equal(y.numpy(), x.numpy() + 1)


def test_huge_declared_dims_are_refused_before_allocating():
    # 2**40 float32 elements: 4 TiB, refused by the size check before torch.randn is called
    proto = _relu([2**40], [2**40])
    with pytest.raises(ModelError, match=r"'x'.*dimension 0 is 1099511627776"):
        torch_chrion.load_onnx(proto, **LOAD_OPTIONS)


def test_negative_declared_dims_are_refused():
    proto = _relu([4, -3], [4, -3])
    with pytest.raises(ModelError, match=r"'x' \[4, -3\].*negative dimension 1"):
        torch_chrion.load_onnx(proto, **LOAD_OPTIONS)
