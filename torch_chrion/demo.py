"""The model behind ``chrion demo``: a small speech recogniser (conv front end, two stacked
bidirectional LSTM layers, per-frame logits), shipped as ONNX in torch_chrion/data/.

``python -m torch_chrion.demo`` re-creates the file from the seeded definition below.
"""

from __future__ import annotations

import time
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
        model,
        example_inputs(),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["features"],
        output_names=["log_probs"],
        dynamic_axes={"features": {0: "frames"}, "log_probs": {0: "frames"}},
    )
    return path


if __name__ == "__main__":
    print(export_demo_model())


def run_demo(frames: int = FRAMES) -> int:
    """Load the bundled model, plan it, run it, and compare it with eager PyTorch (the same ONNX
    through onnx2torch) and onnxruntime when installed. Returns the process exit code."""
    from . import onnx as chrion_onnx
    from .api import load_onnx
    from .bench_peers import Engine, time_engines

    inputs = example_inputs(frames)
    print(
        f"chrion demo: {DEMO_ONNX.name} (conv + 2-layer bidirectional LSTM, {frames} frames, batch 1)"
    )
    start = time.perf_counter()
    model = load_onnx(DEMO_ONNX, example_inputs=inputs)
    print(f"loaded, profiled and planned in {time.perf_counter() - start:.1f} s\n")
    print(model.plan.table())
    eager = chrion_onnx.to_fx(chrion_onnx.load_model(DEMO_ONNX)).eval()
    engines = [Engine("chrion", model, inputs), Engine("eager", eager, inputs)]
    with torch.no_grad():
        out, ref = model(*inputs), eager(*inputs)
    err = (out - ref).abs().max().item()
    print(f"\nmax |chrion - eager| = {err:.2e}")
    try:
        import onnxruntime
    except ImportError:
        session = None
        print("(install onnxruntime to compare with it too)")
    else:
        session = onnxruntime.InferenceSession(str(DEMO_ONNX), providers=["CPUExecutionProvider"])
        ort_out = torch.from_numpy(session.run(None, {"features": inputs[0].numpy()})[0])
        print(f"max |chrion - onnxruntime| = {(out - ort_out).abs().max().item():.2e}")
        engines.append(
            Engine(
                "onnxruntime", lambda x: session.run(None, {"features": x}), (inputs[0].numpy(),)
            )
        )
    ms = time_engines(engines, 20)
    print(
        f"latency (median of 20, interleaved): chrion {ms['chrion']:.2f} ms, eager PyTorch "
        f"{ms['eager']:.2f} ms ({ms['eager'] / ms['chrion']:.2f}x)"
        + (f", onnxruntime {ms['onnxruntime']:.2f} ms" if session else "")
    )
    return 0 if err < 1e-4 else 1
