"""capture: the shared test models lowered to aten graphs run equal to eager PyTorch, with each
recurrent layer one portable chrion node and every value annotated."""

import subprocess
import sys

import pytest
import torch
from models import (
    BiGRUWithState,
    DataDependentIf,
    Seq2SeqAttention,
    SpeechConvBiGRU,
    StackedLSTM,
    UnrolledLSTMCell,
)
from torch import nn

from torch_chrion.errors import ModelError, UnsupportedOperatorError
from torch_chrion.graph import capture, graph_hash
from torch_chrion.graph.passes.check_portable import backend_specific

CAPTURABLE = [StackedLSTM, BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU, UnrolledLSTMCell]
CHRION_OPS = ("chrion.lstm", "chrion.gru", "chrion.rnn")


def chrion_nodes(gm):
    return [n for n in gm.graph.nodes if str(n.target).startswith(CHRION_OPS)]


def make(cls):
    torch.manual_seed(0)
    model = cls().eval()
    return model, model.example_inputs()


@pytest.mark.parametrize("cls", CAPTURABLE, ids=lambda c: c.__name__)
@pytest.mark.parametrize("granularity", ["op", "layer"])
def test_captured_model_equals_eager(cls, granularity):
    model, inputs = make(cls)
    gm = capture(model, inputs, granularity=granularity)
    with torch.no_grad():
        torch.testing.assert_close(gm(*inputs), model(*inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", CAPTURABLE, ids=lambda c: c.__name__)
def test_graph_follows_the_contract(cls):
    model, inputs = make(cls)
    gm = capture(model, inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert [tuple(p.meta["val"].shape) for p in placeholders] == [tuple(x.shape) for x in inputs]
    for node in gm.graph.nodes:
        assert node.op in ("placeholder", "get_attr", "call_function", "output"), node
        assert "chrion_out_bytes" in node.meta and "chrion_weight_bytes" in node.meta
        if node.op == "call_function":
            assert node.target.__module__ == "_operator" or isinstance(
                node.target, torch._ops.OpOverload
            ), node.format_node()
            assert not backend_specific(node.target), node.format_node()
            val = node.meta["val"]
            tensors = val if isinstance(val, (tuple, list)) else [val]
            expected = sum(t.numel() * t.element_size() for t in tensors)
            assert node.meta["chrion_out_bytes"] == expected
            assert all(not isinstance(a, torch.device) for a in node.kwargs.values())
    assert len([n for n in gm.graph.nodes if n.op == "output"]) == 1


def test_recurrent_layers_stay_single_nodes_with_their_weights():
    model, inputs = make(StackedLSTM)
    gm = capture(model, inputs, granularity="op")
    (lstm,) = chrion_nodes(gm)
    assert lstm.target is torch.ops.chrion.lstm.default
    # its weights, plus the zero initial states folded into constants (2 x (2, 2, 32) floats)
    weight_bytes = sum(p.numel() * 4 for p in model.lstm.parameters()) + 2 * 2 * 2 * 32 * 4
    assert lstm.meta["chrion_weight_bytes"] == weight_bytes
    assert lstm.meta["chrion_out_bytes"] == (8 * 2 * 32 + 2 * 2 * 2 * 32) * 4
    # make_fx on the bare module records CPU-only kernels: what capture avoids
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.no_grad():
        raw = make_fx(model)(*inputs)
    assert any(backend_specific(n.target) for n in raw.graph.nodes)


def test_speech_model_has_one_gru_node_and_conv():
    model, inputs = make(SpeechConvBiGRU)
    gm = capture(model, inputs, granularity="op")
    assert [n.target for n in chrion_nodes(gm)] == [torch.ops.chrion.gru.default]
    assert any(n.target is torch.ops.aten.convolution.default for n in gm.graph.nodes)


@pytest.mark.parametrize("cell", [nn.RNN, nn.GRU, nn.LSTM])
def test_rnn_with_relu_and_no_bias_and_batch_first(cell):
    torch.manual_seed(1)
    kwargs = {"nonlinearity": "relu"} if cell is nn.RNN else {}
    model = cell(5, 7, num_layers=2, bias=False, batch_first=True, **kwargs).eval()
    x = torch.randn(3, 4, 5)
    gm = capture(model, (x,), granularity="op")
    assert len(chrion_nodes(gm)) == 1
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)


def test_dynamo_graph_module_with_recurrent_submodule():
    model, inputs = make(StackedLSTM)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append((gm, example_inputs))
        return gm.forward

    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        torch.compile(model, backend=backend, fullgraph=True)(*inputs)
    (dynamo_gm, dynamo_inputs) = graphs[0]
    # dynamo (allow_rnn) inlines nn.LSTM to a torch.lstm call on lifted parameters
    assert any(n.target is torch.lstm for n in dynamo_gm.graph.nodes)
    gm = capture(dynamo_gm, tuple(dynamo_inputs))
    assert chrion_nodes(gm)
    with torch.no_grad():
        (out,) = gm(*dynamo_inputs)  # dynamo graphs return a tuple
        torch.testing.assert_close(out, model(*inputs), rtol=1e-5, atol=1e-6)


def test_capture_does_not_modify_the_module():
    model, inputs = make(StackedLSTM)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    capture(model, inputs)
    assert isinstance(model.lstm, nn.LSTM)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_data_dependent_control_flow_is_a_clear_error():
    model, inputs = make(DataDependentIf)
    with pytest.raises(UnsupportedOperatorError, match="data-dependent"):
        capture(model, inputs)


def test_unsupported_recurrent_variants_are_clear_errors():
    x = torch.randn(4, 2, 6)
    with pytest.raises(UnsupportedOperatorError, match="proj"):
        capture(nn.LSTM(6, 8, proj_size=4).eval(), (x,))
    with pytest.raises(UnsupportedOperatorError, match="dropout"):
        capture(nn.LSTM(6, 8, num_layers=2, dropout=0.5).train(), (x,))
    packed = nn.utils.rnn.pack_padded_sequence(x, [4, 3])

    class Packed(nn.Module):  # what nn.GRU.forward calls for a PackedSequence
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(6, 8)

        def forward(self, data, lengths):
            h0 = data.new_zeros(1, 2, 8)
            return torch.gru(data, lengths, h0, self.gru._flat_weights, True, 1, 0.0, False, False)

    with pytest.raises(UnsupportedOperatorError, match="PackedSequence"):
        capture(Packed().eval(), (packed.data, packed.batch_sizes))


def test_bad_arguments_are_model_errors():
    with pytest.raises(ModelError, match="nn.Module"):
        capture(lambda x: x, (torch.randn(2),))
    with pytest.raises(ModelError, match="example_inputs\\[1\\]"):
        capture(nn.Linear(2, 2), (torch.randn(2), 3))


def test_graph_hash_is_structural_and_stable_across_processes():
    model, inputs = make(StackedLSTM)
    h = graph_hash(capture(model, inputs))
    torch.manual_seed(5)
    other_weights = StackedLSTM().eval()
    assert graph_hash(capture(other_weights, inputs)) == h
    assert graph_hash(capture(model, model.example_inputs(seq=9))) != h
    assert graph_hash(capture(model, inputs, seq_chunks=2)) != h
    code = (
        "import sys, torch; sys.path.insert(0, 'tests'); from models import StackedLSTM;"
        "from torch_chrion.graph import capture, graph_hash; torch.manual_seed(0);"
        "m = StackedLSTM().eval(); print(graph_hash(capture(m, m.example_inputs())))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == h


@pytest.mark.parametrize("granularity,chunks", [("op", 1), ("layer", 4)])
def test_onnx_model_through_onnx2torch_equals_onnxruntime(granularity, chunks):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx2torch")  # a dependency of torch_chrion; absent on bare GPU images
    from pathlib import Path

    import torch_chrion
    from torch_chrion import onnx as chrion_onnx

    path = Path(torch_chrion.__file__).parent / "data" / "demo_speech_lstm.onnx"
    proto = chrion_onnx.load_model(path)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    x = torch.randn(*[d.dim_value or 30 for d in dims])
    gm = capture(chrion_onnx.to_fx(proto), (x,), granularity=granularity, seq_chunks=chunks)
    assert chrion_nodes(gm)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {proto.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        got = gm(x)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-5, atol=1e-5)


def test_portability_check_names_cpu_only_kernels_and_pinned_devices():
    from torch.fx.experimental.proxy_tensor import make_fx

    from torch_chrion.graph.passes import check_portable

    model, inputs = make(StackedLSTM)
    with torch.no_grad():
        raw = make_fx(model)(*inputs)  # nn.LSTM traced as is: mkldnn_rnn_layer, zeros(device=cpu)
    with pytest.raises(UnsupportedOperatorError, match="mkldnn_rnn_layer") as error:
        check_portable(raw)
    assert "pinned to device cpu" in str(error.value)
    assert any("mkldnn_rnn_layer" in op for op in error.value.ops)
