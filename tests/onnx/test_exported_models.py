"""The shared recurrent models, exported with both torch.onnx exporters, loaded by
torch_chrion.onnx.to_fx and compared with onnxruntime and eager PyTorch."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from models import (
    CRNN,
    BiGRUWithState,
    DataDependentIf,
    DeepSpeech2,
    LSTMLanguageModel,
    RNNoise,
    Seq2SeqAttention,
    SpeechConvBiGRU,
    StackedLSTM,
    UnrolledLSTMCell,
)
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.onnx import to_fx
from torch_chrion.onnx.opsets import default_opset

ort = pytest.importorskip("onnxruntime")

RTOL, ATOL = 1e-4, 1e-5
EXPORTERS = ["legacy-opset17", "dynamo"]  # the pair: dynamo=False at 17, the default
NEWEST = "dynamo-opset22"  # the newest opset the recurrent-model ops must reach
PLAIN_MODELS = [StackedLSTM, BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU, UnrolledLSTMCell]


class CondIf(nn.Module):
    """DataDependentIf with its branch as torch.cond, which the dynamo exporter turns into an
    ONNX If (a Python ``if`` on data cannot be exported by torch.export)."""

    def __init__(self, base: DataDependentIf) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.base.lstm(x)
        return torch.cond(
            x.mean() > 0,
            lambda y: self.base.positive(y),
            lambda y: torch.tanh(self.base.negative(y)),
            (y,),
        )


def export(model: nn.Module, inputs: tuple[Tensor, ...], exporter: str, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, inputs, str(path), dynamo=True, verbose=False)
        elif exporter == NEWEST:
            torch.onnx.export(
                model, inputs, str(path), dynamo=True, verbose=False, opset_version=22
            )
        else:
            torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17)
    return str(path)


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def run_onnxruntime(path: str, inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})


def assert_matches(path: str, model: nn.Module, inputs: tuple[Tensor, ...], gm=None) -> None:
    gm = gm if gm is not None else to_fx(path)
    with torch.no_grad():
        ours = [t.numpy() for t in as_tuple(gm(*inputs))]
        eager = [t.numpy() for t in as_tuple(model(*inputs))]
    theirs = run_onnxruntime(path, inputs)
    assert len(ours) == len(theirs) == len(eager)
    for got, want_ort, want_eager in zip(ours, theirs, eager, strict=True):
        assert got.shape == want_ort.shape == want_eager.shape
        np.testing.assert_allclose(got, want_ort, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got, want_eager, rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model class, exporter) -> (model, its example inputs, ONNX path), exported once."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("exported")
    cache: dict = {}

    def get(model_type: type[nn.Module], exporter: str):
        key = (model_type, exporter)
        if key not in cache:
            model = model_type().eval()
            inputs = model.example_inputs()
            path = export(
                model, inputs, exporter, folder / f"{model_type.__name__}_{exporter}.onnx"
            )
            cache[key] = (model, inputs, path)
        return cache[key]

    return get


@pytest.mark.parametrize("exporter", [*EXPORTERS, NEWEST])
@pytest.mark.parametrize("model_type", PLAIN_MODELS, ids=lambda t: t.__name__)
def test_exported_model_matches(exported, model_type, exporter):
    model, inputs, path = exported(model_type, exporter)
    if exporter == NEWEST:
        assert default_opset(onnx.load(path)) == 22
    assert_matches(path, model, inputs)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_data_dependent_if_reaches_our_if(tmp_path, exporter):
    torch.manual_seed(0)
    model = DataDependentIf().eval()
    # the plain Python `if` would be traced away: script it (legacy) or use torch.cond (dynamo)
    exportable = torch.jit.script(model) if exporter != "dynamo" else CondIf(model)
    path = export(exportable, model.example_inputs(), exporter, tmp_path / "if.onnx")
    assert "If" in {node.op_type for node in onnx.load(path).graph.node}
    gm = to_fx(path)
    for sign in (1.0, -1.0):  # both branches
        assert_matches(path, model, model.example_inputs(sign=sign), gm)


@pytest.mark.parametrize("fold", [False, True], ids=["as-exported", "folded"])
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("model_type", [StackedLSTM, SpeechConvBiGRU], ids=lambda t: t.__name__)
def test_make_fx_real_traces_the_converted_model(exported, model_type, exporter, fold):
    model, inputs, path = exported(model_type, exporter)
    gm = to_fx(path, fold=fold)
    traced = make_fx(gm, tracing_mode="real")(*inputs)
    with torch.no_grad():
        expected = as_tuple(gm(*inputs))
        got = as_tuple(traced(*inputs))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    # each ONNX recurrent node stays one chrion op node in the aten graph
    recurrent = sum(node.op_type in ("LSTM", "GRU", "RNN") for node in onnx.load(path).graph.node)
    chrion_nodes = [
        node
        for node in traced.graph.nodes
        if node.op == "call_function" and str(node.target).startswith("chrion.")
    ]
    assert len(chrion_nodes) == recurrent
    if fold:  # the exporter's shape arithmetic is gone: no Shape -> tensor -> list round trip
        assert not any("lift_fresh" in str(node.target) for node in traced.graph.nodes)


def test_a_weight_read_through_identity_nodes_is_one_constant(exported):
    """torch.onnx reads a weight that an unrolled decoder uses at every step through one
    Identity node per further use. Converted, every reader gets the constant itself (no copy
    per call), and the GRU nodes of the steps share one set of converted weights (one packing,
    one copy in the cache)."""
    model, inputs, path = exported(Seq2SeqAttention, "legacy-opset17")
    proto = onnx.load(path)
    inits = {i.name for i in proto.graph.initializer}
    identities = [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    assert len(identities) >= 2  # what the test is about: the exporter still emits them
    gm = to_fx(path)
    assert_matches(path, model, inputs, gm)
    grus = [m for m in gm.modules() if type(m).__name__ == "OnnxRecurrentKernel"]
    decoder_weights = {id(m.param_0) for m in grus[1:]}
    assert len(grus) > 2 and len(decoder_weights) == 1
    with torch.no_grad():
        traced = make_fx(gm, tracing_mode="real")(*inputs)
    clones = [n for n in traced.graph.nodes if n.target is torch.ops.aten.clone.default]
    assert not [n for n in clones if n.args[0].op == "get_attr"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: LSTMLanguageModel(vocab=300, width=48),
        lambda: CRNN(classes=11, hidden=24),
        lambda: DeepSpeech2(hidden=24, layers=2),
        RNNoise,
    ],
    ids=["lstm_lm", "crnn", "deepspeech2", "rnnoise"],
)
def test_production_like_architectures_match(make, tmp_path):
    """The architectures bench/end_to_end.py times (smaller here), converted exactly."""
    torch.manual_seed(0)
    model = make().eval()
    inputs = model.example_inputs()
    path = export(model, inputs, "legacy-opset17", tmp_path / "model.onnx")
    assert_matches(path, model, inputs)
