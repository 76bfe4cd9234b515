"""The model behind ``chrion demo``: a small speech recogniser (conv front end, two stacked
bidirectional LSTM layers, per-frame logits), shipped as ONNX in torch_chrion/data/.

``python -m torch_chrion.demo`` re-creates the file from the seeded definition below.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

DEMO_ONNX = Path(__file__).resolve().parent / "data" / "demo_speech_lstm.onnx"
FEATURES, FRAMES = 40, 64


class DemoSpeechLSTM(nn.Module):
    def __init__(self, features: int = FEATURES, hidden: int = 128, classes: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv1d(features, hidden, kernel_size=3, padding=1)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=2, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (T, B, F)
        x = torch.relu(self.conv(features.permute(1, 2, 0))).permute(2, 0, 1)
        y, _ = self.lstm(x)
        return torch.log_softmax(self.head(y), dim=-1)


def example_inputs(frames: int = FRAMES, batch: int = 1) -> tuple[torch.Tensor]:
    return (torch.randn(frames, batch, FEATURES, generator=torch.Generator().manual_seed(1)),)


def export_demo_model(path: Path = DEMO_ONNX) -> Path:
    torch.manual_seed(0)
    model = DemoSpeechLSTM().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, example_inputs(), str(path), dynamo=False, opset_version=17,
        input_names=["features"], output_names=["log_probs"],
        dynamic_axes={"features": {0: "frames"}, "log_probs": {0: "frames"}},
    )
    return path


if __name__ == "__main__":
    print(export_demo_model())
