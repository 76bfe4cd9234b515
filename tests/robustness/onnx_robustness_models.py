"""Models for the ONNX robustness tests (issue 19): small versions of the architectures real
exported models have (CRNNs, speech front ends with BatchNorm/LayerNorm, LSTM language
models), exported by PyTorch's TorchScript exporter (``dynamo=False``), which writes no
value_info; and hand-built graphs. onnxruntime is the reference every test compares with."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import helper
from torch import nn

import torch_chrion

# one CPU lane and a short profile: these tests are about what is computed, not where
LOAD_OPTIONS = {"devices": ["cpu"], "profile_budget_s": 2.0, "profile_repeats": 2}


def export_torchscript(
    model: nn.Module, example: torch.Tensor, dynamic_axes: dict[int, str]
) -> onnx.ModelProto:
    """The model exported with ``dynamo=False`` (no value_info for intermediate values),
    input "x" with the given symbolic axes, output "y"."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            buffer,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": dynamic_axes},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    assert not proto.graph.value_info  # what the tests are about
    return proto


def onnxruntime_outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list:
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def assert_load_onnx_matches_onnxruntime(
    proto: onnx.ModelProto, example: torch.Tensor, others: list[torch.Tensor], cache_dir: str
) -> None:
    """load_onnx on the example, then the example and other inputs (other shapes included)
    give onnxruntime's outputs to 1e-5."""
    chrion = torch_chrion.load_onnx(
        proto, example_inputs=(example,), cache_dir=cache_dir, **LOAD_OPTIONS
    )
    for x in [example, *others]:
        (want,) = onnxruntime_outputs(proto, {"x": x.numpy()})
        got = chrion(x)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


def randomise_batch_norms(model: nn.Module) -> nn.Module:
    """Running statistics far from a batch's own, so batch statistics give other numbers."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) - 0.5)
    return model


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10  # what onnxruntime 1.32 reads
    return proto


class BatchNormLSTM(nn.Module):
    """BatchNorm1d over features, then an LSTM: a speech front end. Input (batch, time, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(self.norm(x.transpose(1, 2)).transpose(1, 2))[0]


class ConvBatchNormBiLSTM(nn.Module):
    """Conv1d + BatchNorm + ReLU, then a bidirectional LSTM. Input (batch, 8, time)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.norm = nn.BatchNorm1d(16)
        self.lstm = nn.LSTM(16, 12, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(torch.relu(self.norm(self.conv(x))).transpose(1, 2))[0]


class ConvMaxPoolBiGRU(nn.Module):
    """A CRNN: Conv2d + MaxPool over a (batch, 1, 16, time) image, columns into a bi-GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.gru = nn.GRU(4 * 8, 10, batch_first=True, bidirectional=True)
        self.head = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.conv(x)))
        batch, channels, height, width = y.shape
        columns = y.permute(0, 3, 1, 2).reshape(batch, width, channels * height)
        return self.head(self.gru(columns)[0])


class ConvLayerNormBiLSTM(nn.Module):
    """Conv1d, LayerNorm over channels, bidirectional LSTM. Input (batch, 8, time)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.lstm = nn.LSTM(16, 12, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(self.norm(self.conv(x).transpose(1, 2)))[0]


class LayerNormLanguageModel(nn.Module):
    """Embedding, two-layer LSTM, LayerNorm, projection to the vocabulary. Input (batch,
    time) token ids."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 50)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.lstm(self.embed(tokens))[0]))


class GroupedLayerNormLSTM(nn.Module):
    """Features split into 4 groups of a size the exporter computes (``reshape(..., 4, -1)``),
    LayerNorm over (groups, group size), then an LSTM: shape inference on the declared shapes
    cannot tell the group size (onnx2torch read it as 0: ``normalized_shape = [4, 0]``).
    Input (batch, time, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm([4, 4])
        self.lstm = nn.LSTM(16, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        grouped = self.norm(x.reshape(batch, time, 4, -1))
        return self.lstm(grouped.reshape(batch, time, -1))[0]
