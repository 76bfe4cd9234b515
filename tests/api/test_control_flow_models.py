"""ONNX If / Loop / Scan through load_onnx end to end: each control-flow node stays one opaque
``chrion::python_call`` node of the aten graph, runs on its lane as a Python callable, is listed
in ``python_nodes``, and the outputs equal onnxruntime's (and eager PyTorch's for an exported
model) for inputs that take other branches and trip counts than the example inputs."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import onnxruntime
import pytest
import torch
from models import DataDependentIf
from onnx import TensorProto, helper, numpy_helper

import torch_chrion
from torch_chrion.errors import ExecutionError
from torch_chrion.graph import capture, graph_hash
from torch_chrion.onnx import to_fx
from torch_chrion.ops import python_call

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
DEVICES = ["cpu:0", "cpu:1"]
FAST = {"profile_budget_s": 4.0, "profile_repeats": 3}


def if_positive_sum(x, then_branch, else_branch, output, name):
    """Nodes of ``output = If(ReduceSum(x) > zero, then_branch, else_branch)`` (an initializer
    "zero" is expected)."""
    return [
        helper.make_node("ReduceSum", [x], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node(
            "If", ["cond"], [output], then_branch=then_branch, else_branch=else_branch, name=name
        ),
    ]


def info(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 10  # what onnxruntime 1.32 reads
    return proto


def onnxruntime_outputs(proto, inputs):
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [value.name for value in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})


def assert_same_as_onnxruntime(chrion, proto, inputs):
    with torch.no_grad():
        ours = chrion(*inputs)
    ours = list(ours) if isinstance(ours, tuple) else [ours]
    theirs = onnxruntime_outputs(proto, inputs)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, torch.from_numpy(b), rtol=1e-5, atol=1e-6)


def if_model():
    """y = relu(If(sum(x) > 0) then x * w else x - w) + 1."""
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["a"])], "then", [], [info("a", F, [2, 3])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["x", "w"], ["b"])], "else", [], [info("b", F, [2, 3])]
    )
    nodes = [
        *if_positive_sum("x", then_branch, else_branch, "t", "branch_if"),
        helper.make_node("Relu", ["t"], ["r"]),
        helper.make_node("Add", ["r", "one"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(np.ones((), np.float32), "one"),
        numpy_helper.from_array(np.linspace(-1, 2, 6, dtype=np.float32).reshape(2, 3), "w"),
    ]
    return model(nodes, [info("x", F, [2, 3])], [info("y", F, [2, 3])], initializers)


def test_if_takes_each_branch_like_onnxruntime(cache_dir):
    proto = if_model()
    x = torch.rand(2, 3) + 0.1
    chrion = torch_chrion.load_onnx(
        proto, example_inputs=(x,), devices=DEVICES, cache_dir=cache_dir, **FAST
    )
    assert chrion.python_nodes == ["branch_if"]
    graph = chrion.captured_graph()
    calls = [n for n in graph.graph.nodes if python_call.is_python_call(n)]
    assert [n.name for n in calls] == ["branch_if"]  # one opaque node, not a traced branch
    assert chrion.plan.placement["branch_if"] in DEVICES
    for sign in (1.0, -1.0):  # the example took the then-branch; -x takes the else-branch
        assert_same_as_onnxruntime(chrion, proto, (x * sign,))


def counter_loop_model():
    """acc_i = acc_{i-1} + x * i for i < M, every acc_i also stacked as a scan output."""
    body = helper.make_graph(
        [
            helper.make_node("Cast", ["i"], ["i_f"], to=F),
            helper.make_node("Mul", ["x", "i_f"], ["step"]),
            helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["acc_out"], ["scan_out"]),
        ],
        "body",
        [info("i", I64, []), info("cond_in", B, []), info("acc_in", F, [2, 3])],
        [info("cond_out", B, []), info("acc_out", F, [2, 3]), info("scan_out", F, [2, 3])],
    )
    nodes = [
        helper.make_node(
            "Loop", ["M", "go", "acc0"], ["acc", "accs"], body=body, name="counter_loop"
        ),
        helper.make_node("Tanh", ["acc"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(True), "go"),
        numpy_helper.from_array(np.full((2, 3), 0.5, np.float32), "acc0"),
    ]
    inputs = [info("x", F, [2, 3]), info("M", I64, [])]
    outputs = [info("y", F, [2, 3]), info("accs", F, ["trips", 2, 3])]
    return model(nodes, inputs, outputs, initializers)


def test_loop_with_a_trip_count_input_like_onnxruntime(cache_dir):
    proto = counter_loop_model()
    x = torch.randn(2, 3)
    chrion = torch_chrion.load_onnx(
        proto, example_inputs=(x, torch.tensor(3)), devices=DEVICES, cache_dir=cache_dir, **FAST
    )
    assert chrion.python_nodes == ["counter_loop"]
    for trips in (3, 5, 0):  # other trip counts than the example's: other scan lengths
        assert_same_as_onnxruntime(chrion, proto, (x, torch.tensor(trips)))


def while_loop_model():
    """No trip count: acc += x until sum(acc) >= limit (the trip count depends on x)."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
            helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
            helper.make_node("Less", ["total", "limit"], ["cond_out"]),
        ],
        "body",
        [info("i", I64, []), info("cond_in", B, []), info("acc_in", F, [4])],
        [info("cond_out", B, []), info("acc_out", F, [4])],
    )
    nodes = [helper.make_node("Loop", ["", "go", "acc0"], ["acc"], body=body, name="until")]
    initializers = [
        numpy_helper.from_array(np.array(True), "go"),
        numpy_helper.from_array(np.zeros(4, np.float32), "acc0"),
    ]
    inputs = [info("x", F, [4]), info("limit", F, [])]
    return model(nodes, inputs, [info("acc", F, [4])], initializers)


def test_while_loop_without_trip_count_like_onnxruntime(cache_dir):
    proto = while_loop_model()
    x = torch.tensor([0.5, 1.0, 0.25, 0.75])
    chrion = torch_chrion.load_onnx(
        proto, example_inputs=(x, torch.tensor(4.0)), devices=DEVICES, cache_dir=cache_dir, **FAST
    )
    assert chrion.python_nodes == ["until"]
    for limit in (4.0, 10.0, 31.0):
        assert_same_as_onnxruntime(chrion, proto, (x, torch.tensor(limit)))


def scan_model():
    """A running sum over the sequence axis, scaled by an outer weight at every step."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
            helper.make_node("Mul", ["s_out", "w"], ["y_t"]),
        ],
        "body",
        [info("s_in", F, [3]), info("x_t", F, [3])],
        [info("s_out", F, [3]), info("y_t", F, [3])],
    )
    nodes = [
        helper.make_node(
            "Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1, name="running_sum"
        ),
        helper.make_node("Sigmoid", ["ys"], ["z"]),
    ]
    initializers = [numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "w")]
    inputs = [info("s0", F, [3]), info("xs", F, [5, 3])]
    outputs = [info("s", F, [3]), info("z", F, [5, 3])]
    return model(nodes, inputs, outputs, initializers)


def test_scan_like_onnxruntime(cache_dir):
    proto = scan_model()
    inputs = (torch.randn(3), torch.randn(5, 3))
    chrion = torch_chrion.load_onnx(
        proto, example_inputs=inputs, devices=DEVICES, cache_dir=cache_dir, **FAST
    )
    assert chrion.python_nodes == ["running_sum"]
    assert_same_as_onnxruntime(chrion, proto, inputs)
    assert_same_as_onnxruntime(chrion, proto, (torch.randn(3), torch.randn(5, 3)))


def test_exported_data_dependent_if_matches_eager(tmp_path, cache_dir):
    torch.manual_seed(0)
    eager = DataDependentIf().eval()
    path = tmp_path / "data_dependent_if.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch.jit.script(eager),
            eager.example_inputs(),
            str(path),
            dynamo=False,
            opset_version=17,
        )
    example = eager.example_inputs(sign=1.0)
    chrion = torch_chrion.load_onnx(
        path, example_inputs=example, devices=DEVICES, cache_dir=cache_dir, **FAST
    )
    assert len(chrion.python_nodes) == 1  # the If; the LSTM before it is a chrion::lstm node
    targets = {str(n.target) for n in chrion.captured_graph().graph.nodes}
    assert "chrion.lstm.default" in targets
    with torch.no_grad():
        for sign in (1.0, -1.0):
            x = eager.example_inputs(sign=sign)[0]
            torch.testing.assert_close(chrion(x), eager(x), rtol=1e-4, atol=1e-5)


def test_python_calls_are_freed_with_their_graphs():
    gm = to_fx(if_model())
    x = torch.rand(2, 3)
    gc.collect()
    before = python_call.registered_count()
    hashes = {graph_hash(capture(gm, (x,))) for _ in range(5)}
    gc.collect()
    assert python_call.registered_count() == before  # nothing left once the graphs are gone
    assert len(hashes) == 1  # the handle, new per capture, does not change the graph's hash


def test_a_dropped_compiled_model_frees_its_python_calls(cache_dir):
    proto = if_model()
    # rows symbolic: the (1, 3) call below is then a valid second shape (it broadcasts with w)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "rows"
    gc.collect()
    before = python_call.registered_count()
    chrion = torch_chrion.load_onnx(
        proto, example_inputs=(torch.rand(2, 3),), devices=DEVICES, cache_dir=cache_dir, **FAST
    )
    chrion(torch.rand(1, 3) - 0.5)  # a second shape (broadcast): a second capture and program
    assert chrion.wait_for_plans(timeout=60)  # its bucket's plan, profiled in the background
    assert python_call.registered_count() == before + 2
    del chrion
    gc.collect()
    assert python_call.registered_count() == before


def sequence_if_model():
    """If (sum(x) > 0) -> the sequence [x] else [-x, x]; y = its first element."""

    def branch(name, values):
        return helper.make_graph(
            [
                helper.make_node("Neg", ["x"], [f"{name}_neg"]),
                helper.make_node("SequenceConstruct", values, [name]),
            ],
            name,
            [],
            [helper.make_tensor_sequence_value_info(name, F, [2])],
        )

    nodes = [
        *if_positive_sum("x", branch("a", ["x"]), branch("b", ["b_neg", "x"]), "seq", "seq_if"),
        helper.make_node("SequenceAt", ["seq", "zero_i"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(np.zeros((), np.int64), "zero_i"),
    ]
    return model(nodes, [info("x", F, [2])], [info("y", F, [2])], initializers)


def test_sequence_of_the_captured_length_runs_and_another_length_is_refused(cache_dir):
    """A sequence crosses the node as its tensors: fine while its length is the one captured,
    a clear error naming the node when a branch returns another length."""
    proto = sequence_if_model()
    x = torch.rand(2) + 0.1
    chrion = torch_chrion.load_onnx(
        proto, example_inputs=(x,), devices=DEVICES, cache_dir=cache_dir, **FAST
    )
    assert chrion.python_nodes == ["seq_if"]
    assert_same_as_onnxruntime(chrion, proto, (x * 2,))
    with pytest.raises(ExecutionError, match="seq_if.*2 tensors"):
        chrion(-x)
