"""Recurrent models shared by the tests and benchmarks: each builds its own example inputs.

Small on purpose (the suite runs on 2 cores), but shaped like the real thing: stacked and
bidirectional layers, initial states, attention, a conv front end, a hand-written cell loop and
data-dependent control flow.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class StackedLSTM(nn.Module):
    """Two LSTM layers and a linear head, like a language model's body."""

    def __init__(
        self, features: int = 16, hidden: int = 32, layers: int = 2, classes: int = 10
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.lstm(x)
        return self.head(y)

    def example_inputs(self, seq: int = 8, batch: int = 2) -> tuple[Tensor, ...]:
        return (torch.randn(seq, batch, self.lstm.input_size),)


class BatchFirstLSTM(nn.Module):
    """Two LSTM layers of 256, read and written batch-first: a view on either side of them."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(64, 256, num_layers=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x.transpose(0, 1))[0].transpose(0, 1)


class BiGRUWithState(nn.Module):
    """A bidirectional GRU that takes its initial state and returns output and final state."""

    def __init__(self, features: int = 12, hidden: int = 20, layers: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=layers, bidirectional=True, batch_first=True)

    def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        return self.gru(x, h0)

    def example_inputs(self, seq: int = 7, batch: int = 3) -> tuple[Tensor, ...]:
        g = self.gru
        return (
            torch.randn(batch, seq, g.input_size),
            torch.randn(2 * g.num_layers, batch, g.hidden_size),
        )


class Seq2SeqAttention(nn.Module):
    """GRU encoder, GRU decoder with dot-product attention, teacher-forced over the target."""

    def __init__(self, vocab: int = 30, embed: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.encoder = nn.GRU(embed, hidden)
        self.decoder = nn.GRU(embed + hidden, hidden)
        self.out = nn.Linear(2 * hidden, vocab)

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        memory, h = self.encoder(self.embed(source))  # (S, B, H)
        context = memory.mean(0, keepdim=True)  # (1, B, H)
        steps = []
        for t in range(target.shape[0]):
            x = torch.cat([self.embed(target[t : t + 1]), context], dim=-1)
            y, h = self.decoder(x, h)  # (1, B, H)
            scores = torch.softmax((memory * y).sum(-1), dim=0)  # (S, B)
            context = (scores.unsqueeze(-1) * memory).sum(0, keepdim=True)
            steps.append(self.out(torch.cat([y, context], dim=-1)))
        return torch.cat(steps, dim=0)

    def example_inputs(
        self, source_len: int = 6, target_len: int = 4, batch: int = 2
    ) -> tuple[Tensor, ...]:
        vocab = self.embed.num_embeddings
        return (
            torch.randint(0, vocab, (source_len, batch)),
            torch.randint(0, vocab, (target_len, batch)),
        )


class SpeechConvBiGRU(nn.Module):
    """Conv1d front end over filterbank features, a bidirectional GRU, per-frame logits (CTC-style)."""

    def __init__(
        self, features: int = 20, channels: int = 32, hidden: int = 24, classes: int = 29
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(features, channels, kernel_size=3, padding=1)
        self.gru = nn.GRU(channels, hidden, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, features: Tensor) -> Tensor:  # (B, T, F)
        x = torch.relu(self.conv(features.transpose(1, 2))).transpose(1, 2)
        y, _ = self.gru(x)
        return torch.log_softmax(self.head(y), dim=-1)

    def example_inputs(self, frames: int = 16, batch: int = 2) -> tuple[Tensor, ...]:
        return (torch.randn(batch, frames, self.conv.in_channels),)


class UnrolledLSTMCell(nn.Module):
    """An LSTM written out by hand as a Python loop over time steps (no nn.LSTM)."""

    def __init__(self, features: int = 10, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = hidden
        self.x2g = nn.Linear(features, 4 * hidden)
        self.h2g = nn.Linear(hidden, 4 * hidden)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[1], self.hidden)
        c = x.new_zeros(x.shape[1], self.hidden)
        outputs = []
        for t in range(x.shape[0]):
            i, f, g, o = (self.x2g(x[t]) + self.h2g(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs)

    def example_inputs(self, seq: int = 5, batch: int = 2) -> tuple[Tensor, ...]:
        return (torch.randn(seq, batch, self.x2g.in_features),)


class DataDependentIf(nn.Module):
    """An LSTM whose head depends on the data: one branch when the input's mean is positive."""

    def __init__(self, features: int = 8, hidden: int = 12) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden)
        self.positive = nn.Linear(hidden, 4)
        self.negative = nn.Linear(hidden, 4)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.lstm(x)
        if bool(x.mean() > 0):
            return self.positive(y)
        return torch.tanh(self.negative(y))

    def example_inputs(self, seq: int = 6, batch: int = 2, sign: float = 1.0) -> tuple[Tensor, ...]:
        return (torch.randn(seq, batch, self.lstm.input_size).abs() * sign,)


ALL_MODELS = [
    StackedLSTM,
    BiGRUWithState,
    Seq2SeqAttention,
    SpeechConvBiGRU,
    UnrolledLSTMCell,
    DataDependentIf,
]


class SpeechBiLSTM(nn.Module):
    """A speech encoder's shape: 40 filterbank features per frame, two bidirectional LSTM
    layers, per-frame log-probabilities over 32 symbols (batch first)."""

    def __init__(self, features: int = 40, hidden: int = 64, classes: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.lstm(x)
        return self.head(y).log_softmax(-1)

    def example_inputs(self, seq: int = 50, batch: int = 1) -> tuple[Tensor, ...]:
        return (torch.randn(batch, seq, self.lstm.input_size),)

    def export_onnx(self, path: str) -> str:
        """Export to ONNX (TorchScript exporter, opset 17) with a dynamic "frames" axis, as
        speech models ship for onnxruntime; returns ``path``."""
        torch.onnx.export(
            self,
            self.example_inputs(seq=50),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {1: "frames"}, "y": {1: "frames"}},
        )
        return path
