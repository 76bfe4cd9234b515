"""Wrong inputs are refused at the call, before any capture or profile: a ModelError that names
the input, what was expected and what was given, for every input onnxruntime refuses too. The
module keeps serving good inputs afterwards. (numpy arrays are taken, as onnxruntime takes
them: see tests/api/test_session.py; they go through the same checks once converted.)"""

import io
import re

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from torch import nn

import torch_chrion
import torch_chrion.graph
from torch_chrion.errors import ModelError

FAST = {"devices": ["cpu"], "profile_warmup": 1, "profile_repeats": 2}
FEATURES = 40
WRONG_FEATURES = [41, 48, 400, 39]


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, 16, num_layers=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class GRUWithState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(FEATURES, 12, batch_first=True)

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        return self.gru(x, h0)[0]


def _export(model: nn.Module, dynamic_features: bool) -> bytes:
    axes = {0: "seq", 1: "batch", **({2: "features"} if dynamic_features else {})}
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.randn(6, 2, FEATURES),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": axes, "y": {0: "seq", 1: "batch"}},
    )
    return buffer.getvalue()


class Counts:
    """How many captures the module made (graph.capture wrapped) and profiles it ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.captures = 0
        capture = torch_chrion.graph.capture

        def counting(*args, **kwargs):
            self.captures += 1
            return capture(*args, **kwargs)

        monkeypatch.setattr(torch_chrion.graph, "capture", counting)


@pytest.fixture(scope="module", params=[False, True], ids=["static-features", "dynamic-features"])
def lstm_onnx(request):
    """The LSTM model exported with its feature dimension declared static (40) or symbolic:
    then only the LSTM's weights say it must be 40."""
    torch.manual_seed(0)
    proto = _export(LSTMNet().eval(), dynamic_features=request.param)
    example = torch.randn(6, 2, FEATURES)
    model = torch_chrion.load_onnx(proto, example_inputs=(example,), **FAST)
    return model, ort.InferenceSession(proto, providers=["CPUExecutionProvider"])


def _refused_by_onnxruntime(session, **feeds):
    with pytest.raises((ort_errors.InvalidArgument, ort_errors.Fail, ort_errors.RuntimeException)):
        session.run(None, {name: np.asarray(value) for name, value in feeds.items()})


def _still_serves(model, session, shape=(5, 3, FEATURES)):
    good = torch.randn(*shape)
    (expected,) = session.run(None, {"x": good.numpy()})
    torch.testing.assert_close(model(good), torch.from_numpy(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("features", WRONG_FEATURES)
def test_wrong_feature_size_is_refused_before_capture(lstm_onnx, features, monkeypatch):
    model, session = lstm_onnx
    counts, profiles = Counts(monkeypatch), model.profiles_made
    bad = torch.randn(6, 2, features)
    _refused_by_onnxruntime(session, x=bad)
    with pytest.raises(ModelError) as info:
        model(bad)
    message = str(info.value)
    assert "input 'x'" in message and f"size {features} in dimension 2" in message
    assert "expected 40" in message
    with pytest.raises(ModelError, match="'x'"):  # the same input as numpy (onnxruntime style)
        model(bad.numpy())
    assert counts.captures == 0 and model.profiles_made == profiles
    _still_serves(model, session)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (torch.randn(1, 6, 2, FEATURES), "rank 4 (shape (1, 6, 2, 40)), expected rank 3"),
        (torch.randint(0, 3, (6, 2, FEATURES)), "dtype torch.int64, expected torch.float32"),
        (torch.randn(6, 2, FEATURES, dtype=torch.float64), "dtype torch.float64"),
    ],
    ids=["rank", "int64", "float64"],
)
def test_wrong_rank_or_dtype_is_refused_before_capture(lstm_onnx, bad, words, monkeypatch):
    model, session = lstm_onnx
    counts, profiles = Counts(monkeypatch), model.profiles_made
    _refused_by_onnxruntime(session, x=bad)
    with pytest.raises(ModelError, match=re.escape(f"input 'x' has {words}")):
        model(bad)
    assert counts.captures == 0 and model.profiles_made == profiles
    _still_serves(model, session)


def _static_relu() -> bytes:
    """Y = Relu(X) with X declared float[2, 3]."""
    graph = oh.make_graph(
        [oh.make_node("Relu", ["X"], ["Y"])],
        "relu",
        [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()


def test_input_of_other_static_dims_is_refused(monkeypatch):
    proto = _static_relu()
    model = torch_chrion.load_onnx(proto, **FAST)
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    counts = Counts(monkeypatch)
    bad = torch.randn(5, 7, 9)
    _refused_by_onnxruntime(session, X=bad)
    with pytest.raises(
        ModelError, match=r"input 'X' has rank 3 .*expected rank 2 \(shape \[2, 3\]\)"
    ):
        model(bad)
    with pytest.raises(ModelError, match=r"size 4 in dimension 1 .*expected 3 \(declared"):
        model(torch.randn(2, 4))
    assert counts.captures == 0
    good = torch.randn(2, 3)
    torch.testing.assert_close(
        model(good), torch.from_numpy(session.run(None, {"X": good.numpy()})[0])
    )


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda x: x.tolist(), r"list, not a torch.Tensor: .*torch.tensor"),
        (lambda x: x.to("meta"), r"meta tensor .*pass a tensor with data"),
    ],
    ids=["list", "meta"],
)
def test_inputs_that_are_not_tensors_with_data_are_refused(lstm_onnx, make, words, monkeypatch):
    model, session = lstm_onnx
    counts = Counts(monkeypatch)
    with pytest.raises(ModelError, match=rf"input 'x' is a {words}"):
        model(make(torch.randn(6, 2, FEATURES)))
    assert counts.captures == 0
    _still_serves(model, session)


def test_wrong_number_of_inputs_is_refused(lstm_onnx):
    model, session = lstm_onnx
    x = torch.randn(6, 2, FEATURES)
    with pytest.raises(ModelError, match=r"takes 1 input\(s\) \(x: float32 \[seq, batch, "):
        model(x, x)
    with pytest.raises(ModelError, match="got 0"):
        model()
    _still_serves(model, session)


def test_example_inputs_are_checked_against_the_declared_signature(monkeypatch):
    counts = Counts(monkeypatch)
    proto = _export(LSTMNet().eval(), dynamic_features=False)
    with pytest.raises(ModelError, match=r"input 'x' has size 41 in dimension 2"):
        torch_chrion.load_onnx(proto, example_inputs=(torch.randn(6, 2, 41),), **FAST)
    assert counts.captures == 0


def test_module_path_takes_rank_dtype_and_recurrent_sizes_from_its_example(monkeypatch):
    torch.manual_seed(0)
    net = GRUWithState().eval()
    x, h0 = torch.randn(2, 5, FEATURES), torch.zeros(1, 2, 12)
    model = torch_chrion.compile_graph(net, (x, h0), torch_chrion.ChrionSettings(**FAST))
    counts, profiles = Counts(monkeypatch), model.profiles_made
    refused = [
        ((torch.randn(2, 5, 41), h0), r"input 'x' has size 41 in dimension 2 .*expected 40"),
        ((x, torch.zeros(1, 2, 13)), r"input 'h0' has size 13 in dimension 2 .*expected 12"),
        ((x[None], h0), r"input 'x' has rank 4"),
        ((x.double(), h0), r"input 'x' has dtype torch.float64"),
        ((x.tolist(), h0), r"input 'x' is a list, not a torch.Tensor"),
        ((x,), r"takes 2 input\(s\) \(x: float32 \[\?, \?, 40\], h0: float32 \[.*\]\), got 1"),
    ]
    for inputs, words in refused:
        with pytest.raises(ModelError, match=words):
            model(*inputs)
        with pytest.raises((RuntimeError, ValueError, TypeError, AttributeError)):  # eager too
            net(*inputs)
    assert counts.captures == 0 and model.profiles_made == profiles
    # a new good shape (longer sequence, larger batch) is still captured and right
    x2, h2 = torch.randn(3, 9, FEATURES), torch.randn(1, 3, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x2, h2), net(x2, h2), rtol=1e-5, atol=1e-5)
    assert counts.captures == 1


def test_torch_compile_wrong_feature_size_stops_in_dynamo_before_capture(monkeypatch):
    """Under torch.compile a new shape is traced by Dynamo first, where nn.LSTM's own check
    refuses it (no chrion capture, no NaN); the compiled model keeps serving."""
    import torch._dynamo

    torch.manual_seed(0)
    net = LSTMNet().eval()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="chrion", dynamic=False, options=FAST)
    good = torch.randn(6, 2, FEATURES)
    with torch.no_grad():
        compiled(good)
        counts = Counts(monkeypatch)
        with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
            compiled(torch.randn(6, 2, 41))
        assert counts.captures == 0
        torch.testing.assert_close(compiled(good), net(good), rtol=1e-5, atol=1e-5)
