"""Recurrent models shared by the tests and benchmarks: each builds its own example inputs.

Small on purpose (the suite runs on 2 cores), but shaped like the real thing: stacked and
bidirectional layers, initial states, attention, a conv front end, a hand-written cell loop and
data-dependent control flow. Last, architectures that production models are built like (an LSTM
language model, a CRNN text recogniser, a DeepSpeech2-like acoustic model, an RNNoise-like
denoiser), whose defaults are the sizes they ship at, or a little under for a 2-core machine
(bench/end_to_end.py); tests make them smaller. Weights are random: latency does not depend on
them.
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


class LSTMLanguageModel(nn.Module):
    """Embedding, a 2-layer LSTM and a softmax projection over the vocabulary (the PyTorch
    word_language_model example's "medium" model)."""

    def __init__(self, vocab: int = 10000, width: int = 512, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, layers)
        self.decoder = nn.Linear(width, vocab)

    def forward(self, tokens: Tensor) -> Tensor:  # (T, B) token ids
        out, _ = self.lstm(self.embed(tokens))
        return torch.log_softmax(self.decoder(out), dim=-1)

    def example_inputs(self, steps: int = 35, batch: int = 4) -> tuple[Tensor, ...]:
        return (torch.randint(0, self.embed.num_embeddings, (steps, batch)),)


class CRNN(nn.Module):
    """Text-line recognition (Shi et al.): a VGG-style convolution stack over a 32-pixel-high
    image, its columns read by a 2-layer bidirectional LSTM, per-column character logits."""

    def __init__(self, classes: int = 37, hidden: int = 256) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, pool: tuple[int, int] | None, norm: bool) -> list:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
            layers += [nn.BatchNorm2d(c_out)] if norm else []
            layers += [nn.ReLU()]
            layers += [nn.MaxPool2d(pool)] if pool else []
            return layers

        self.cnn = nn.Sequential(
            *block(1, 64, (2, 2), False),
            *block(64, 128, (2, 2), False),
            *block(128, 256, None, True),
            *block(256, 256, (2, 1), False),
            *block(256, 256, None, True),
            *block(256, 256, (2, 1), False),
        )
        self.rnn = nn.LSTM(256 * 2, hidden, 2, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, image: Tensor) -> Tensor:  # (B, 1, 32, W)
        features = self.cnn(image)  # (B, 256, 2, W / 4)
        b, c, h, w = features.shape
        columns = features.reshape(b, c * h, w).permute(2, 0, 1)  # (W / 4, B, 512)
        out, _ = self.rnn(columns)
        return self.head(out)

    def example_inputs(self, width: int = 128, batch: int = 1) -> tuple[Tensor, ...]:
        return (torch.randn(batch, 1, 32, width),)


class DeepSpeech2(nn.Module):
    """Speech recognition (Amodei et al.): two strided 2-D convolutions over a spectrogram, three
    bidirectional GRUs, per-frame character logits (hidden 256 here; 800+ in the paper)."""

    def __init__(self, bins: int = 81, hidden: int = 256, layers: int = 3, classes: int = 29):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, (41, 11), stride=(2, 2), padding=(20, 5)),
            nn.BatchNorm2d(32),
            nn.Hardtanh(0, 20),
            nn.Conv2d(32, 32, (21, 11), stride=(2, 1), padding=(10, 5)),
            nn.BatchNorm2d(32),
            nn.Hardtanh(0, 20),
        )
        height = (bins + 1) // 2
        height = (height + 1) // 2
        self.rnn = nn.GRU(32 * height, hidden, layers, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, spectrogram: Tensor) -> Tensor:  # (B, 1, bins, frames)
        x = self.conv(spectrogram)
        b, c, h, t = x.shape
        out, _ = self.rnn(x.reshape(b, c * h, t).permute(2, 0, 1))
        return torch.log_softmax(self.head(out), dim=-1)

    def example_inputs(self, frames: int = 100, batch: int = 1) -> tuple[Tensor, ...]:
        return (torch.randn(batch, 1, 81, frames),)


class RNNoise(nn.Module):
    """Noise suppression (Valin): three small GRUs over 42 band features per 10 ms frame, fed
    each other's states, and per-band gains; streaming-sized (batch 1)."""

    def __init__(self, features: int = 42, bands: int = 22) -> None:
        super().__init__()
        self.input_dense = nn.Linear(features, 24)
        self.vad_gru = nn.GRU(24, 24, batch_first=True)
        self.vad = nn.Linear(24, 1)
        self.noise_gru = nn.GRU(24 + 24 + features, 48, batch_first=True)
        self.denoise_gru = nn.GRU(24 + 48 + features, 96, batch_first=True)
        self.gains = nn.Linear(96, bands)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (B, frames, features)
        dense = torch.tanh(self.input_dense(x))
        vad_state, _ = self.vad_gru(dense)
        noise_state, _ = self.noise_gru(torch.cat([dense, vad_state, x], dim=-1))
        denoise_state, _ = self.denoise_gru(torch.cat([vad_state, noise_state, x], dim=-1))
        return torch.sigmoid(self.gains(denoise_state)), torch.sigmoid(self.vad(vad_state))

    def example_inputs(self, frames: int = 100, batch: int = 1) -> tuple[Tensor, ...]:
        return (torch.randn(batch, frames, 42),)
