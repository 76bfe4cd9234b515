"""ONNX LSTM / GRU / RNN converters (torch_chrion/onnx/converters/rnn.py) against onnxruntime and
ONNX's own backend test data.

Every case is a one-node model built with onnx.helper, converted by torch_chrion's graph builder
(its own copy of onnx2torch's registry, with our converters) and compared with onnxruntime's CPU
kernels on the same model; a converter's own errors are read by calling it on the node. onnxruntime refuses ``layout=1`` (batch-major) nodes, so for those the reference is
onnxruntime on the same node with ``layout=0`` and the inputs / outputs transposed; opset 1 nodes
(which onnxruntime does not implement) are checked against the same node at opset 7.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.fx.experimental.proxy_tensor import make_fx

import torch_chrion.onnx.converters.rnn as rnn_converters
from torch_chrion.errors import ModelError, UnsupportedOperatorError
from torch_chrion.onnx import _onnx2torch
from torch_chrion.onnx.convert import model_to_module
from torch_chrion.onnx.scope import OnnxScope

ort.set_default_logger_severity(3)

RTOL, ATOL = 1e-4, 1e-5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
OUTPUTS = {"LSTM": ("Y", "Y_h", "Y_c"), "GRU": ("Y", "Y_h"), "RNN": ("Y", "Y_h")}
SLOTS = {
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
CHRION_OPS = {"LSTM": "chrion::lstm", "GRU": "chrion::gru", "RNN": "chrion::rnn"}


# --------------------------------------------------------------------------------------------
# Building, converting and running one-node models


def make_case(
    op: str,
    *,
    direction: str = "forward",
    layout: int = 0,
    seq: int = 5,
    batch: int = 3,
    input_size: int = 4,
    hidden: int = 5,
    lens: str = "none",  # none | full_const | varying_const | varying_input
    initial: bool = False,
    peepholes: str = "none",  # none | const | zeros | input (LSTM)
    bias: bool = True,
    weights_as_inputs: bool = False,
    runtime: tuple[str, ...] = (),  # slots fed at run time even though constant by default
    constant_nodes: bool = False,  # constants as Constant nodes instead of initializers
    hidden_attr: bool = True,
    dtype: type = np.float32,
    outputs: tuple[str, ...] | None = None,
    opset: int = 14,
    seed: int = 0,
    **attrs,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A one-node model and its feeds. Random data; lengths vary down to 0 when asked."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    x_shape = (seq, batch, input_size) if layout == 0 else (batch, seq, input_size)
    state_shape = (dirs, batch, hidden) if layout == 0 else (batch, dirs, hidden)
    values: dict[str, np.ndarray] = {
        "X": rng.standard_normal(x_shape).astype(np.float32),
        "W": (rng.standard_normal((dirs, gates * hidden, input_size)) * 0.4).astype(np.float32),
        "R": (rng.standard_normal((dirs, gates * hidden, hidden)) * 0.4).astype(np.float32),
    }
    constant = {"W", "R"} if not weights_as_inputs else set()
    if bias:
        values["B"] = (rng.standard_normal((dirs, 2 * gates * hidden)) * 0.3).astype(np.float32)
        constant |= {"B"} if not weights_as_inputs else set()
    if lens != "none":
        if lens == "full_const":
            values["sequence_lens"] = np.full(batch, seq, np.int32)
        else:
            values["sequence_lens"] = np.array([seq, 0, 2, 1, seq - 1][:batch], np.int32)
        if lens != "varying_input":
            constant.add("sequence_lens")
    if initial:
        values["initial_h"] = rng.standard_normal(state_shape).astype(np.float32)
        if op == "LSTM":
            values["initial_c"] = rng.standard_normal(state_shape).astype(np.float32)
    if peepholes != "none":
        p = (rng.standard_normal((dirs, 3 * hidden)) * 0.5).astype(np.float32)
        values["P"] = np.zeros_like(p) if peepholes == "zeros" else p
        if peepholes in ("const", "zeros"):
            constant.add("P")

    _finish_values(values, constant, runtime, dtype)
    elem = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}[dtype]
    inputs = [slot if slot in values else "" for slot in SLOTS[op]]
    while not inputs[-1]:
        inputs.pop()
    outputs = OUTPUTS[op] if outputs is None else outputs
    node_attrs = dict(attrs, hidden_size=hidden) if hidden_attr else dict(attrs)
    if direction != "forward":
        node_attrs["direction"] = direction
    if layout:
        node_attrs["layout"] = layout
    node = helper.make_node(op, inputs, list(outputs), name=f"{op.lower()}_node", **node_attrs)
    graph_inputs = [
        helper.make_tensor_value_info(
            name, TensorProto.INT32 if name == "sequence_lens" else elem, v.shape
        )
        for name, v in values.items()
        if name not in constant
    ]
    graph_outputs = [helper.make_tensor_value_info(name, elem, None) for name in outputs if name]
    tensors = [numpy_helper.from_array(values[name], name) for name in sorted(constant)]
    if constant_nodes:
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in tensors] + [node]
        graph = helper.make_graph(nodes, "g", graph_inputs, graph_outputs)
    else:
        graph = helper.make_graph([node], "g", graph_inputs, graph_outputs, tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    feeds = {name: v for name, v in values.items() if name not in constant}
    return model, feeds


def _finish_values(values, constant, runtime, dtype):
    """Cast the float inputs to ``dtype`` and move the ``runtime`` slots out of the constants."""
    for name, v in values.items():
        if name != "sequence_lens":
            values[name] = v.astype(dtype)
    constant -= set(runtime)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session.run(names, feeds), strict=True))


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs; batch-major and opset-1 nodes go through an equivalent model."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    node = model.graph.node[-1]
    opset = model.opset_import[0]
    if opset.version < 7:
        opset.version = 7
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    if layout == 0:
        return run_ort(model, feeds)
    for attr in node.attribute:
        if attr.name == "layout":
            attr.i = 0
    batch_major = {"X", "initial_h", "initial_c"}
    swapped = {
        name: np.swapaxes(v, 0, 1).copy() if name in batch_major else v for name, v in feeds.items()
    }
    for vi in model.graph.input:  # shapes of X / initial states are swapped too
        dims = vi.type.tensor_type.shape.dim
        if vi.name in batch_major:
            dims[0].dim_value, dims[1].dim_value = dims[1].dim_value, dims[0].dim_value
    for init in model.graph.initializer:
        if init.name in batch_major:
            arr = np.swapaxes(numpy_helper.to_array(init), 0, 1).copy()
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    out = run_ort(model, swapped)
    return {
        name: (v.transpose(2, 0, 1, 3) if v.ndim == 4 else np.swapaxes(v, 0, 1))
        for name, v in out.items()
    }


def convert(model: onnx.ModelProto) -> torch.fx.GraphModule:
    """The model through torch_chrion's graph builder: one output, or a tuple of the graph's."""
    return model_to_module(model)


def convert_node(model: onnx.ModelProto) -> object:
    """The model's last node through its converter alone, so the converter's own error shows."""
    node = model.graph.node[-1]
    version = model.opset_import[0].version
    schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=version)
    converter = _onnx2torch.get_converter("", node.op_type, schema.since_version)
    graph = OnnxScope(model.graph)  # what every converter gets (convert.py)
    return converter(graph.nodes[next(iter(graph.nodes))], graph)


def node_outputs(module: torch.nn.Module, model: onnx.ModelProto, feeds: dict) -> dict:
    """Run the converted model; the module returns the graph outputs (a tuple for several)."""
    args = [torch.from_numpy(feeds[vi.name]) for vi in model.graph.input]
    with torch.no_grad():
        result = module(*args)
    declared = [vi.name for vi in model.graph.output]
    if len(declared) == 1:
        return {declared[0]: result.numpy()}
    assert isinstance(result, tuple) and len(result) == len(declared)
    return {name: result[k].numpy() for k, name in enumerate(declared)}


def recurrent_module(converted: torch.fx.GraphModule) -> torch.nn.Module:
    (module,) = [
        m
        for m in converted.modules()
        if isinstance(m, rnn_converters.OnnxRecurrentKernel | rnn_converters.OnnxRecurrentLoop)
    ]
    return module


def check_against_ort(model: onnx.ModelProto, feeds: dict) -> torch.fx.GraphModule:
    converted = convert(model)
    got = node_outputs(converted, model, feeds)
    want = reference(model, feeds)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)
    return converted


def uses_chrion_kernel(converted: torch.fx.GraphModule, model: onnx.ModelProto, feeds) -> bool:
    """Whether the traced aten graph calls torch.ops.chrion.* (and only it, for the node)."""
    args = [torch.from_numpy(feeds[vi.name]) for vi in model.graph.input]
    traced = make_fx(converted, tracing_mode="real")(*args)
    targets = [str(n.target) for n in traced.graph.nodes if n.op == "call_function"]
    return any(t.startswith("chrion.") for t in targets)


# --------------------------------------------------------------------------------------------
# The broad grid: op x direction x layout x sequence_lens x initial states


GRID = list(
    itertools.product(
        ("LSTM", "GRU", "RNN"),
        ("forward", "reverse", "bidirectional"),
        (0, 1),
        ("none", "full_const", "varying_const", "varying_input"),
        (False, True),
    )
)


def _outputs_variant(op: str, k: int) -> tuple[str, ...]:
    variants = {
        "LSTM": [("Y", "Y_h", "Y_c"), ("", "Y_h"), ("Y",), ("", "", "Y_c"), ("Y", "", "Y_c")],
        "GRU": [("Y", "Y_h"), ("", "Y_h"), ("Y",)],
        "RNN": [("Y", "Y_h"), ("Y",), ("", "Y_h")],
    }[op]
    return variants[k % len(variants)]


@pytest.mark.parametrize(
    "k,op,direction,layout,lens,initial", [(k, *case) for k, case in enumerate(GRID)]
)
def test_grid_against_onnxruntime(k, op, direction, layout, lens, initial):
    extra = {"linear_before_reset": k % 2} if op == "GRU" else {}
    model, feeds = make_case(
        op,
        direction=direction,
        layout=layout,
        lens=lens,
        initial=initial,
        bias=k % 5 != 4,
        weights_as_inputs=k % 3 == 0,
        outputs=_outputs_variant(op, k),
        opset=(14, 22)[k % 2],
        seed=k,
        **extra,
    )
    check_against_ort(model, feeds)


# --------------------------------------------------------------------------------------------
# Features: peepholes, clip, activations (all of them, with alpha/beta), input_forget,
# linear_before_reset, opsets


@pytest.mark.parametrize(
    "direction,lens,layout,peepholes,input_forget",
    list(
        itertools.product(
            ("forward", "reverse", "bidirectional"),
            ("none", "varying_input"),
            (0, 1),
            ("const", "input"),
            (0, 1),
        )
    ),
)
def test_lstm_peepholes_and_input_forget(direction, lens, layout, peepholes, input_forget):
    model, feeds = make_case(
        "LSTM",
        direction=direction,
        lens=lens,
        layout=layout,
        peepholes=peepholes,
        initial=True,
        input_forget=input_forget,
    )
    check_against_ort(model, feeds)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("lens", ["none", "varying_input"])
def test_clip(op, direction, lens):
    extra = {"peepholes": "const"} if op == "LSTM" else {"linear_before_reset": 1}
    extra = {} if op == "RNN" else extra
    model, feeds = make_case(op, direction=direction, lens=lens, clip=0.35, initial=True, **extra)
    check_against_ort(model, feeds)


# Each entry: (activations per direction, alphas, betas). Together they use every activation
# the spec lists, with explicit alpha / beta and with the defaults onnxruntime shares with the
# spec (LeakyRelu 0.01, HardSigmoid 0.2/0.5, Elu 1.0).
ACTIVATION_SETS = {
    "LSTM": [
        (["HardSigmoid", "Softsign", "Elu"], [0.3, 0.8], [0.45]),
        (["Sigmoid", "LeakyRelu", "ScaledTanh"], [0.2, 1.5], [0.7]),
        (["HardSigmoid", "Tanh", "Softplus"], [], []),  # HardSigmoid's default alpha / beta
        (["Sigmoid", "Affine", "Relu"], [0.8], [0.1]),
        (["Sigmoid", "ThresholdedRelu", "Relu"], [0.1], []),
        (["sigmoid", "tanh", "relu"], [], []),  # names match case-insensitively
    ],
    "GRU": [
        (["HardSigmoid", "Softsign"], [0.25], [0.55]),
        (["Sigmoid", "Elu"], [0.6], []),
        (["Sigmoid", "LeakyRelu"], [], []),  # LeakyRelu default alpha
        (["HardSigmoid", "ScaledTanh"], [0.2, 0.9], [0.5, 1.3]),
        (["Sigmoid", "Affine"], [0.7], [0.1]),
        (["Sigmoid", "ThresholdedRelu"], [0.05], []),
        (["Sigmoid", "Softplus"], [], []),
    ],
    "RNN": [
        (["Relu"], [], []),
        (["Sigmoid"], [], []),
        (["Softsign"], [], []),
        (["Softplus"], [], []),
        (["Elu"], [0.4], []),
        (["LeakyRelu"], [0.2], []),
        (["ThresholdedRelu"], [0.1], []),
        (["ScaledTanh"], [1.2], [0.6]),
        (["HardSigmoid"], [0.3], [0.4]),
        (["Affine"], [0.5], [0.2]),
    ],
}
ACTIVATION_CASES = [
    (op, k, direction)
    for op, sets in ACTIVATION_SETS.items()
    for k in range(len(sets))
    for direction in ("forward", "bidirectional")
]


ALPHA_USERS = {"Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu"}
BETA_USERS = {"Affine", "ScaledTanh", "HardSigmoid"}


@pytest.mark.parametrize("op,k,direction", ACTIVATION_CASES)
def test_activations(op, k, direction):
    names, alphas, betas = ACTIVATION_SETS[op][k]
    if direction == "bidirectional":
        # the backward direction takes the next set, so the two directions differ; every
        # alpha / beta is given, since both directions draw on the same two lists
        names = names + ACTIVATION_SETS[op][(k + 1) % len(ACTIVATION_SETS[op])][0]
        alphas = [0.3 + 0.1 * j for j, n in enumerate(names) if n in ALPHA_USERS]
        betas = [0.4 + 0.1 * j for j, n in enumerate(names) if n in BETA_USERS]
    attrs = {"activations": names}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    extra = {"linear_before_reset": k % 2} if op == "GRU" else {}
    lens = ("none", "varying_input")[k % 2]
    model, feeds = make_case(op, direction=direction, lens=lens, seed=k, **extra, **attrs)
    converted = check_against_ort(model, feeds)
    fast = op == "RNN" and set(names) == {"Relu"} and lens == "none"
    kind = rnn_converters.OnnxRecurrentKernel if fast else rnn_converters.OnnxRecurrentLoop
    assert isinstance(recurrent_module(converted), kind)


@pytest.mark.parametrize(
    "name,explicit_alpha,explicit_beta",
    [("Affine", 1.0, 0.0), ("ThresholdedRelu", 1.0, None), ("ScaledTanh", 1.0, 1.0)],
)
def test_spec_defaults(name, explicit_alpha, explicit_beta):
    """The spec's defaults are those of the ONNX operators of the same name; onnxruntime's RNN
    kernels use 0 instead for these three, so the reference is onnxruntime given the spec's
    values explicitly."""
    attrs = {"activations": [name], "activation_alpha": [explicit_alpha]}
    if explicit_beta is not None:
        attrs["activation_beta"] = [explicit_beta]
    explicit_model, feeds = make_case("RNN", **attrs)
    implicit_model, _ = make_case("RNN", activations=[name])
    got = node_outputs(convert(implicit_model), implicit_model, feeds)
    want = reference(explicit_model, feeds)
    for out in want:
        np.testing.assert_allclose(got[out], want[out], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_gru_linear_before_reset(lbr, direction):
    model, feeds = make_case(
        "GRU", direction=direction, initial=True, lens="varying_const", linear_before_reset=lbr
    )
    check_against_ort(model, feeds)


@pytest.mark.parametrize(
    "op,opset", [(op, v) for op, vs in rnn_converters.OPSET_VERSIONS.items() for v in vs]
)
def test_every_registered_opset(op, opset):
    extra = {"linear_before_reset": 1} if op == "GRU" and opset >= 3 else {}
    model, feeds = make_case(op, direction="bidirectional", opset=opset, initial=True, **extra)
    check_against_ort(model, feeds)


# --------------------------------------------------------------------------------------------
# Which path a node takes


FAST = [
    ("LSTM", {}),
    ("LSTM", {"direction": "bidirectional", "layout": 1, "initial": True}),
    ("LSTM", {"peepholes": "zeros"}),
    ("LSTM", {"lens": "full_const", "direction": "reverse"}),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Tanh"]}),
    ("LSTM", {"weights_as_inputs": True, "bias": False}),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional"}),
    ("RNN", {}),
    ("RNN", {"activations": ["Relu", "Relu"], "direction": "bidirectional"}),
]
SLOW = [
    ("LSTM", {"clip": 3.0}),
    ("LSTM", {"peepholes": "const"}),
    ("LSTM", {"peepholes": "input"}),
    ("LSTM", {"input_forget": 1}),
    ("LSTM", {"lens": "varying_const"}),
    ("LSTM", {"lens": "varying_input"}),
    ("LSTM", {"lens": "full_const", "seq_dynamic": True}),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"]}),
    ("GRU", {}),  # linear_before_reset=0
    ("GRU", {"linear_before_reset": 1, "clip": 5.0}),
    ("RNN", {"activations": ["Tanh", "Relu"], "direction": "bidirectional"}),
    ("RNN", {"activations": ["Sigmoid"]}),
]


@pytest.mark.parametrize("op,kwargs,fast", [(*c, True) for c in FAST] + [(*c, False) for c in SLOW])
def test_path_choice(op, kwargs, fast):
    kwargs = dict(kwargs)
    seq_dynamic = kwargs.pop("seq_dynamic", False)
    model, feeds = make_case(op, **kwargs)
    if seq_dynamic:  # X's seq_length unknown to the model: the lengths cannot be checked
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "seq"
    converted = check_against_ort(model, feeds)
    kind = rnn_converters.OnnxRecurrentKernel if fast else rnn_converters.OnnxRecurrentLoop
    assert isinstance(recurrent_module(converted), kind)
    assert uses_chrion_kernel(converted, model, feeds) == fast


KERNEL_ATTRS = {"LSTM": {}, "GRU": {"linear_before_reset": 1}, "RNN": {}}


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("fast", [True, False])
def test_float64(op, fast):
    """Double precision runs in double on both paths; onnxruntime has no double recurrent
    kernels, so the reference is onnxruntime on the same values in float32."""
    kwargs = dict(KERNEL_ATTRS[op], direction="bidirectional", initial=True)
    if not fast:
        kwargs["lens"] = "varying_input"
    model, feeds = make_case(op, dtype=np.float64, **kwargs)
    converted = convert(model)
    got = node_outputs(converted, model, feeds)
    want = reference(*make_case(op, **kwargs))
    for name in want:
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)
    kind = rnn_converters.OnnxRecurrentKernel if fast else rnn_converters.OnnxRecurrentLoop
    assert isinstance(recurrent_module(converted), kind)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("runtime", [("B",), ("R", "B"), ("W",)])
@pytest.mark.parametrize("fast", [True, False])
def test_mixed_constant_and_runtime_weights(op, runtime, fast):
    kwargs = dict(KERNEL_ATTRS[op]) if fast else {"clip": 2.0}
    model, feeds = make_case(op, runtime=runtime, direction="bidirectional", **kwargs)
    converted = check_against_ort(model, feeds)
    kind = rnn_converters.OnnxRecurrentKernel if fast else rnn_converters.OnnxRecurrentLoop
    assert isinstance(recurrent_module(converted), kind)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("lens", ["none", "full_const", "varying_const"])
def test_constant_node_inputs(op, lens):
    """Weights, peepholes and lengths from Constant nodes count as constants, as initializers do."""
    extra = {"peepholes": "zeros"} if op == "LSTM" else {}
    model, feeds = make_case(
        op, constant_nodes=True, lens=lens, initial=True, **KERNEL_ATTRS[op], **extra
    )
    converted = check_against_ort(model, feeds)
    module = recurrent_module(converted)
    fast = lens != "varying_const"
    kind = rnn_converters.OnnxRecurrentKernel if fast else rnn_converters.OnnxRecurrentLoop
    assert isinstance(module, kind)
    assert module.runtime_slots == ("x", "initial_h", "initial_c")[: 3 if op == "LSTM" else 2]


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("weights_as_inputs", [False, True])
@pytest.mark.parametrize("clip", [None, 1.5])
def test_hidden_size_attribute_omitted(op, weights_as_inputs, clip):
    """hidden_size is optional in the spec: R's shape gives it."""
    kwargs = dict(direction="bidirectional", weights_as_inputs=weights_as_inputs, initial=False)
    if clip is not None:
        kwargs["clip"] = clip
    model, feeds = make_case(op, hidden_attr=False, **kwargs)
    got = node_outputs(convert(model), model, feeds)
    want = reference(*make_case(op, **kwargs))  # onnxruntime insists on the attribute
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def test_hidden_size_contradicting_r_is_a_model_error():
    model, _ = make_case("RNN")
    model.graph.node[-1].attribute[0].i = 7  # hidden_size; R says 5
    with pytest.raises(ModelError, match="hidden_size=7"):
        convert_node(model)


def test_fast_path_is_one_chrion_call_on_constant_weights():
    model, feeds = make_case("LSTM", direction="bidirectional", initial=True)
    converted = convert(model)
    args = [torch.from_numpy(feeds[vi.name]) for vi in model.graph.input]
    traced = make_fx(converted, tracing_mode="real")(*args)
    calls = [n for n in traced.graph.nodes if n.op == "call_function"]
    chrion = [n for n in calls if str(n.target).startswith("chrion.")]
    assert len(chrion) == 1
    # the re-ordered weights are constants of the graph, not recomputed per call
    weights = chrion[0].args[3]
    assert len(weights) == 8 and all(w.op == "get_attr" for w in weights)
    assert not any("cat" in str(n.target) for n in calls)


def test_loop_path_traces_with_runtime_lengths():
    model, feeds = make_case(
        "GRU", direction="bidirectional", lens="varying_input", clip=0.5, initial=True
    )
    converted = convert(model)
    args = [torch.from_numpy(feeds[vi.name]) for vi in model.graph.input]
    want = converted(*args)
    traced = make_fx(converted, tracing_mode="real")(*args)
    assert not any(str(n.target).startswith("chrion.") for n in traced.graph.nodes)
    other = dict(feeds, sequence_lens=np.array([1, 5, 3], np.int32))  # lengths stay inputs
    other_args = [torch.from_numpy(other[vi.name]) for vi in model.graph.input]
    for got, ref in zip(traced(*other_args), converted(*other_args), strict=True):
        torch.testing.assert_close(got, ref)
    for got, ref in zip(traced(*args), want, strict=True):
        torch.testing.assert_close(got, ref)
    symbolic = torch.fx.symbolic_trace(converted)
    for got, ref in zip(symbolic(*other_args), converted(*other_args), strict=True):
        torch.testing.assert_close(got, ref)


# --------------------------------------------------------------------------------------------
# Bad attributes


@pytest.mark.parametrize(
    "attrs,text",
    [
        ({"activations": ["Sigmoid", "Swish", "Tanh"]}, "'Swish'"),
        ({"direction": "sideways"}, "'sideways'"),
        ({"layout": 2}, "layout=2"),
    ],
)
def test_unsupported_attribute_values(attrs, text):
    model, _ = make_case("LSTM", **attrs) if "layout" not in attrs else make_case("LSTM")
    if "layout" in attrs:
        model.graph.node[-1].attribute.append(helper.make_attribute("layout", 2))
    with pytest.raises(UnsupportedOperatorError) as info:
        convert_node(model)
    message = str(info.value)
    assert text in message and "LSTM" in message and "lstm_node" in message
    assert "opset 14" in message
    assert info.value.ops == ["LSTM"]


@pytest.mark.parametrize(
    "direction,activations,needed",
    [
        ("forward", ["Sigmoid", "Tanh", "Tanh"], 2),
        ("bidirectional", ["Sigmoid", "Tanh"], 4),  # the spec wants both directions' functions
    ],
)
def test_wrong_activation_count_is_a_model_error(direction, activations, needed):
    model, _ = make_case("GRU", direction=direction, activations=activations)
    with pytest.raises(ModelError, match=f"needs {needed}"):
        convert_node(model)


@pytest.mark.parametrize(
    "op,kwargs",
    [
        ("LSTM", {"direction": "bidirectional", "initial": True}),
        ("GRU", {"lens": "varying_input", "direction": "reverse", "clip": 1.0}),
    ],
)
def test_torch_export(op, kwargs):
    """torch.export keeps the chrion kernel whole on the fast path and runs the loop path."""
    model, feeds = make_case(op, **kwargs)
    converted = convert(model)
    args = tuple(torch.from_numpy(feeds[vi.name]) for vi in model.graph.input)
    exported = torch.export.export(converted, args)
    for got, want in zip(exported.module()(*args), converted(*args), strict=True):
        if want is not None:
            torch.testing.assert_close(got, want)
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert ("chrion.lstm.default" in targets) == (op == "LSTM")


# --------------------------------------------------------------------------------------------
# ONNX's own backend test cases for the recurrent operators


def _onnx_recurrent_cases():
    import onnx.backend.test.case.node as node_cases  # noqa: PLC0415
    import onnx.backend.test.case.node.gru  # noqa: F401, PLC0415
    import onnx.backend.test.case.node.lstm  # noqa: F401, PLC0415
    import onnx.backend.test.case.node.rnn  # noqa: F401, PLC0415

    return [
        case
        for case in node_cases._NodeTestCases
        if case.model.graph.node[-1].op_type in ("LSTM", "GRU", "RNN")
    ]


ONNX_CASES = _onnx_recurrent_cases()


def test_onnx_backend_cases_are_all_found():
    assert len(ONNX_CASES) == 18
    assert {"test_lstm_defaults", "test_gru_seq_length", "test_simple_rnn_batchwise"} <= {
        c.name for c in ONNX_CASES
    }


@pytest.mark.parametrize("case", ONNX_CASES, ids=[c.name for c in ONNX_CASES])
def test_onnx_backend_node_case(case):
    converted = convert(case.model)
    for inputs, expected in case.data_sets:
        feeds = {vi.name: v for vi, v in zip(case.model.graph.input, inputs, strict=True)}
        got = node_outputs(converted, case.model, feeds)
        for vi, want in zip(case.model.graph.output, expected, strict=True):
            np.testing.assert_allclose(got[vi.name], want, rtol=case.rtol, atol=case.atol)


def test_converters_live_in_a_private_registry_not_onnx2torchs():
    """torch_chrion's converters (LSTM, and its replacements such as Reshape's) are added to a
    copy of onnx2torch's registry: onnx2torch.convert elsewhere in the process is unchanged."""
    import onnx2torch
    from onnx2torch.node_converters import registry

    import torch_chrion.onnx  # noqa: F401  (registers every converter of ours)

    lstm = registry.OperationDescription("", "LSTM", 14)
    assert _onnx2torch.has_converter("", "LSTM", 14)
    assert lstm not in registry._CONVERTER_REGISTRY
    reshape = registry.OperationDescription("", "Reshape", 14)
    assert registry._CONVERTER_REGISTRY[reshape] is not _onnx2torch.get_converter("", "Reshape", 14)
    model, _ = make_case("LSTM")
    with pytest.raises(NotImplementedError, match="LSTM"):
        onnx2torch.convert(model)
