"""If, Loop and Scan with their subgraphs, against onnxruntime: outer-scope values,
nesting, optional trip count / condition, scan axes and directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from chrion_onnx_testing import assert_same_as_onnxruntime, make_model, tensor_info
from onnx import TensorProto, helper, numpy_helper

from torch_chrion.onnx import to_fx

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RNG = np.random.default_rng(0)


def graph(nodes, name, inputs, outputs, initializers=()):
    return helper.make_graph(nodes, name, inputs, outputs, list(initializers))


def nested_if_model():
    """If (x.sum() > 0) -> [If (flag) -> x * w | x - w] else -> tanh(x); w is an outer
    initializer read two scopes down, flag an outer graph input."""
    inner_then = graph(
        [helper.make_node("Mul", ["x", "w"], ["a"])],
        "inner_then",
        [],
        [tensor_info("a", F, [2, 3])],
    )
    inner_else = graph(
        [helper.make_node("Sub", ["x", "w"], ["b"])],
        "inner_else",
        [],
        [tensor_info("b", F, [2, 3])],
    )
    outer_then = graph(
        [
            helper.make_node(
                "If",
                ["flag"],
                ["t"],
                then_branch=inner_then,
                else_branch=inner_else,
                name="inner_if",
            )
        ],
        "outer_then",
        [],
        [tensor_info("t", F, [2, 3])],
    )
    outer_else = graph(
        [helper.make_node("Tanh", ["x"], ["e"])], "outer_else", [], [tensor_info("e", F, [2, 3])]
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=outer_then, else_branch=outer_else, name="outer_if"
        ),
    ]
    initializers = [
        numpy_helper.from_array(np.float32(0.0).reshape(()), "zero"),
        numpy_helper.from_array(RNG.standard_normal((2, 3)).astype(np.float32), "w"),
    ]
    inputs = [tensor_info("x", F, [2, 3]), tensor_info("flag", B, [])]
    return make_model(nodes, inputs, [tensor_info("y", F, [2, 3])], initializers)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("flag", [True, False])
def test_nested_if_reads_outer_values(sign, flag):
    x = (np.abs(RNG.standard_normal((2, 3))) * sign).astype(np.float32)
    assert_same_as_onnxruntime(nested_if_model(), {"x": x, "flag": np.array(flag)})


def test_if_with_several_outputs():
    then_g = graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["x"], ["n"])],
        "then",
        [],
        [tensor_info("r", F, [3]), tensor_info("n", F, [3])],
    )
    else_g = graph(
        [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Identity", ["x"], ["i"])],
        "else",
        [],
        [tensor_info("a", F, [3]), tensor_info("i", F, [3])],
    )
    node = helper.make_node("If", ["c"], ["p", "q"], then_branch=then_g, else_branch=else_g)
    model = make_model(
        [node, helper.make_node("Add", ["p", "q"], ["sum"])],
        [tensor_info("c", B, []), tensor_info("x", F, [3])],
        [tensor_info("q", F, [3]), tensor_info("sum", F, [3])],
    )
    x = RNG.standard_normal(3).astype(np.float32)
    for c in (True, False):
        assert_same_as_onnxruntime(model, {"c": np.array(c), "x": x})


def loop_model(with_trip_count: bool, with_cond: bool):
    """Loop: h = tanh(h @ w + x[i]) carried, h and i*scale scanned out; the body reads the
    outer values w, x and scale; it stops when h.sum() < limit (when cond is used)."""
    body = graph(
        [
            helper.make_node("Gather", ["x", "i"], ["x_i"], axis=0),
            helper.make_node("MatMul", ["h_in", "w"], ["hw"]),
            helper.make_node("Add", ["hw", "x_i"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["h_out"]),
            helper.make_node("Identity", ["h_out"], ["h_scan"]),
            helper.make_node("Cast", ["i"], ["i_float"], to=F),
            helper.make_node("Mul", ["i_float", "scale"], ["i_scan"]),
            helper.make_node("ReduceSum", ["h_out"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "limit"], ["cond_out"]),
        ],
        "body",
        [tensor_info("i", I64, []), tensor_info("cond_in", B, []), tensor_info("h_in", F, [1, 4])],
        [
            tensor_info("cond_out", B, []),
            tensor_info("h_out", F, [1, 4]),
            tensor_info("h_scan", F, [1, 4]),
            tensor_info("i_scan", F, []),
        ],
    )
    node = helper.make_node(
        "Loop",
        ["M" if with_trip_count else "", "cond" if with_cond else "", "h0"],
        ["h_final", "hs", "is"],
        body=body,
    )
    inputs = [tensor_info("h0", F, [1, 4]), tensor_info("x", F, [6, 1, 4])]
    if with_trip_count:
        inputs.append(tensor_info("M", I64, []))
    if with_cond:
        inputs.append(tensor_info("cond", B, []))
    initializers = [
        numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32) * 0.1, "w"),
        numpy_helper.from_array(np.float32(2.0).reshape(()), "scale"),
        numpy_helper.from_array(np.float32(-1.0).reshape(()), "limit"),
    ]
    outputs = [
        tensor_info("h_final", F, [1, 4]),
        tensor_info("hs", F, ["n", 1, 4]),
        tensor_info("is", F, ["n"]),
    ]
    return make_model([node], inputs, outputs, initializers, opset=16)


@pytest.mark.parametrize(
    "with_trip_count,with_cond,trip_count,iterations",
    [(True, True, 5, 4), (True, True, 2, 2), (True, False, 5, 4), (False, True, 0, 4)],
    ids=["for-with-cond", "trip-count-first", "for", "while"],
)
def test_loop(with_trip_count, with_cond, trip_count, iterations):
    model = loop_model(with_trip_count, with_cond)
    # x = 0.4 keeps h.sum() > -1 until row 3 (-10) drives it below: the body's condition
    # stops the loop after 4 steps (with or without a cond input, as onnxruntime does)
    x = np.full((6, 1, 4), 0.4, np.float32)
    x[3] = -10.0
    feeds = {"h0": np.zeros((1, 4), np.float32), "x": x}
    if with_trip_count:
        feeds["M"] = np.array(trip_count, np.int64)
    if with_cond:
        feeds["cond"] = np.array(True)
    ours = assert_same_as_onnxruntime(model, feeds)
    assert ours[1].shape[0] == iterations
    np.testing.assert_array_equal(ours[2], 2.0 * np.arange(iterations, dtype=np.float32))


def test_loop_with_zero_iterations_returns_the_initial_state():
    model = loop_model(True, False)
    h0 = RNG.standard_normal((1, 4)).astype(np.float32)
    gm = to_fx(model)
    h_final, *_ = gm(torch.from_numpy(h0), torch.zeros(6, 1, 4), torch.tensor(0))
    np.testing.assert_array_equal(h_final.numpy(), h0)


@pytest.mark.parametrize(
    "input_axis,input_dir,output_axis,output_dir",
    [(0, 0, 0, 0), (1, 1, 1, 0), (1, 0, 0, 1), (-1, 1, -1, 1)],
)
def test_scan(input_axis, input_dir, output_axis, output_dir):
    """A running sum and a scaled copy: Scan-16 with axes and directions."""
    body = graph(
        [
            helper.make_node("Add", ["sum_in", "x_t"], ["sum_out"]),
            helper.make_node("Mul", ["x_t", "k"], ["y_t"]),
        ],
        "body",
        [tensor_info("sum_in", F, [3]), tensor_info("x_t", F, [3])],
        [tensor_info("sum_out", F, [3]), tensor_info("y_t", F, [3])],
    )
    node = helper.make_node(
        "Scan",
        ["s0", "x"],
        ["s", "y"],
        body=body,
        num_scan_inputs=1,
        scan_input_axes=[input_axis],
        scan_input_directions=[input_dir],
        scan_output_axes=[output_axis],
        scan_output_directions=[output_dir],
    )
    x_shape = [5, 3] if input_axis == 0 else [3, 5]
    y_shape = [5, 3] if output_axis == 0 else [3, 5]
    model = make_model(
        [node],
        [tensor_info("s0", F, [3]), tensor_info("x", F, x_shape)],
        [tensor_info("s", F, [3]), tensor_info("y", F, y_shape)],
        [numpy_helper.from_array(np.float32(3.0).reshape(()), "k")],
        opset=16,
    )
    feeds = {
        "s0": RNG.standard_normal(3).astype(np.float32),
        "x": RNG.standard_normal(x_shape).astype(np.float32),
    }
    assert_same_as_onnxruntime(model, feeds)


def test_control_flow_nodes_are_marked_for_lowering():
    from torch_chrion.onnx.converters.control_flow import ControlFlowModule

    gm = to_fx(nested_if_model())
    marked = [m for m in gm.modules() if isinstance(m, ControlFlowModule)]
    assert len(marked) == 2  # the outer If and the If inside its then-branch
