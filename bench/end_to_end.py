"""End-to-end latency of torch_chrion against the engines users run today, in one process:
eager PyTorch on CPU (and CUDA when present), torch.compile (inductor) and onnxruntime.

Models: the bundled demo speech model, the recurrent models of tests/models.py and the
architectures of bench/architectures.py (an LSTM language model, a CRNN text recogniser, a
DeepSpeech2-like acoustic model, an RNNoise-like denoiser and a seq2seq attention decoder),
exported to ONNX. Prints a table of median latency and each peer's ratio to chrion (> 1: chrion is faster),
and with ``--write`` saves it to bench/results/end_to_end_<device>.md, with the machine's load
average, since other jobs may share it.

    python bench/end_to_end.py [--repeats 30] [--devices cpu cuda:0] [--objective latency] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from models import (  # noqa: E402
    CRNN,
    BiGRUWithState,
    DeepSpeech2,
    LSTMLanguageModel,
    RNNoise,
    Seq2SeqAttention,
    SpeechConvBiGRU,
    StackedLSTM,
)

from torch_chrion.bench_peers import run_peers  # noqa: E402
from torch_chrion.demo import DEMO_ONNX  # noqa: E402
from torch_chrion.profile.devices import cpu_name  # noqa: E402
from torch_chrion.settings import ChrionSettings  # noqa: E402


def export(model: torch.nn.Module, inputs: tuple, path: Path) -> Path:
    names = [f"input{i}" for i in range(len(inputs))]
    torch.onnx.export(
        model.eval(), inputs, str(path), dynamo=False, opset_version=17, input_names=names
    )
    return path


def models(
    folder: Path,
) -> list[tuple[str, Path, dict[str, list[int]], torch.nn.Module | None]]:
    """(name, ONNX file, input shapes, the nn.Module it was exported from or None)."""
    torch.manual_seed(0)
    big_lstm = StackedLSTM(features=64, hidden=256, layers=2)
    bigru = BiGRUWithState(features=64, hidden=128, layers=2)
    speech = SpeechConvBiGRU(features=40, channels=128, hidden=128)
    architectures = [
        ("LSTM language model 2x512, vocab 10k, T=35, B=4", LSTMLanguageModel(), "lm"),
        ("CRNN text recogniser, 32x128 image", CRNN(), "crnn"),
        ("DeepSpeech2-like, 3x bi-GRU 256, 100 frames", DeepSpeech2(), "ds2"),
        ("RNNoise-like denoiser, 100 frames", RNNoise(), "rnnoise"),
        (
            "seq2seq attention decoder, S=20, T=8, B=1",
            Seq2SeqAttention(vocab=500, embed=128, hidden=256),
            "seq2seq",
        ),
    ]
    inputs = {
        "seq2seq": lambda m: m.example_inputs(20, 8, 1),
    }
    return [
        ("demo speech LSTM (2x bi-LSTM 128, T=64)", DEMO_ONNX, {"features": [64, 1, 40]}, None),
        (
            "stacked LSTM 2x256, T=32, B=1",
            export(big_lstm, big_lstm.example_inputs(32, 1), folder / "lstm.onnx"),
            {},
            big_lstm,
        ),
        (
            "bi-GRU 2x128 with state, T=32, B=1",
            export(bigru, bigru.example_inputs(32, 1), folder / "bigru.onnx"),
            {},
            bigru,
        ),
        (
            "conv + bi-GRU speech, T=100, B=1",
            export(speech, speech.example_inputs(100, 1), folder / "speech.onnx"),
            {},
            speech,
        ),
        *(
            (
                name,
                export(
                    model.eval(),
                    inputs.get(tag, lambda m: m.example_inputs())(model),
                    folder / f"{tag}.onnx",
                ),
                {},
                model,
            )
            for name, model, tag in architectures
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--devices", nargs="+")
    parser.add_argument("--objective", default="latency")
    parser.add_argument("--slo-ms", type=float)
    parser.add_argument("--write", action="store_true", help="save the table in bench/results")
    args = parser.parse_args()
    settings = ChrionSettings.from_options(
        {},
        objective=args.objective,
        slo_ms=args.slo_ms,
        devices=tuple(args.devices) if args.devices else None,
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    lines = [
        f"# End-to-end latency ({device}, {torch.get_num_threads()} threads, torch {torch.__version__})",
        "",
        f"Command: `python bench/end_to_end.py {' '.join(sys.argv[1:])}`; median of {args.repeats} runs; "
        "ratio = peer latency / chrion latency (> 1: chrion faster).",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, load "
        f"average {os.getloadavg()[0]:.1f} at the start (shared with other jobs: figures are "
        "noisy; engines are timed in interleaved rounds, so the ratios are what count).",
        "",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name, path, shapes, module in models(Path(folder)):
            rows = run_peers(str(path), shapes, settings, repeats=args.repeats, module=module)
            chrion_ms = rows[0][1]
            lines += [
                f"## {name}",
                "",
                "| engine | latency (ms) | ratio | note |",
                "|---|---:|---:|---|",
            ]
            for engine, ms, note in rows:
                ratio = f"{ms / chrion_ms:.2f}" if ms and chrion_ms else "-"
                lines.append(
                    f"| {engine} | {ms:.3f} | {ratio} | {note} |"
                    if ms
                    else f"| {engine} | - | - | {note} |"
                )
            lines.append("")
            print("\n".join(lines[-len(rows) - 4 :]), flush=True)
    if args.write:
        tag = "cuda" if torch.cuda.is_available() else "cpu"
        out = ROOT / "bench" / "results" / f"end_to_end_{tag}.md"
        out.write_text("\n".join(lines))
        print(f"-> {out}")


if __name__ == "__main__":
    main()
