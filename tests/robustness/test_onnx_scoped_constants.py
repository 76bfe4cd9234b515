"""Weights that are not initializers of the graph that uses them (issue 19): outputs of
Constant nodes, and, inside If branches, initializers and Constant outputs of the main graph.
Every converter resolves them as it resolves its own graph's initializers; onnxruntime is the
reference."""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx_robustness_models import LOAD_OPTIONS, make_model, onnxruntime_outputs

import torch_chrion

F = TensorProto.FLOAT


def _conv_branch(name: str, weight: str, bias: str) -> object:
    return helper.make_graph(
        [helper.make_node("Conv", ["x", weight, bias], ["out"], pads=[1, 1])],
        name,
        [],
        [helper.make_tensor_value_info("out", F, None)],
    )


def test_if_branches_run_conv_with_outer_scope_weights(tmp_path):
    rng = np.random.default_rng(0)
    then_weight = rng.standard_normal((6, 4, 3)).astype(np.float32)
    else_weight = rng.standard_normal((6, 4, 3)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    proto = make_model(
        [
            # the else branch's weight is a Constant node of the main graph
            helper.make_node(
                "Constant", [], ["else_w"], value=numpy_helper.from_array(else_weight)
            ),
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=_conv_branch("then", "then_w", "b"),
                else_branch=_conv_branch("else", "else_w", "b"),
            ),
        ],
        [
            helper.make_tensor_value_info("x", F, ["n", 4, "t"]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", F, ["n", 6, "t"])],
        [numpy_helper.from_array(then_weight, "then_w"), numpy_helper.from_array(bias, "b")],
    )
    x = rng.standard_normal((2, 4, 9)).astype(np.float32)
    chrion = torch_chrion.load_onnx(
        proto,
        example_inputs=(torch.from_numpy(x), torch.tensor(True)),
        cache_dir=str(tmp_path),
        **LOAD_OPTIONS,
    )
    for flag in (True, False):
        cond = np.array(flag)
        (want,) = onnxruntime_outputs(proto, {"x": x, "cond": cond})
        got = chrion(torch.from_numpy(x), torch.from_numpy(cond)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_conv_with_a_constant_node_weight(tmp_path):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    proto = make_model(
        [
            helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
            helper.make_node("Constant", [], ["b"], value_floats=bias.tolist()),
            helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
        ],
        [helper.make_tensor_value_info("x", F, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, ["n", 5, 8, 8])],
    )
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    chrion = torch_chrion.load_onnx(
        proto, example_inputs=(torch.from_numpy(x),), cache_dir=str(tmp_path), **LOAD_OPTIONS
    )
    (want,) = onnxruntime_outputs(proto, {"x": x})
    np.testing.assert_allclose(chrion(torch.from_numpy(x)).numpy(), want, atol=1e-5, rtol=0)
