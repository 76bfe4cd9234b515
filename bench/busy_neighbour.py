"""CPU recurrent latency beside a busy neighbour: torch_chrion against onnxruntime and eager
PyTorch, first on quiet cores, then while another process keeps one core busy (a shared host, a
sidecar, a second server on the machine), in one run.

Rows: recurrent models of bench/cpu_rnn.py's grid, one-direction layers at batch 8-32 (whose
steps chrion's kernel cuts by parts of the batch on two threads, Note [Batch parts] in
csrc/kernels/recurrent.cpp), a bidirectional one and a batch-1 one. Engines, as cpu_rnn.py builds
them: ``chrion onnx`` (load_onnx's defaults, planned on the quiet cores), ``ort 1t`` and ``ort
2t`` (onnxruntime's best of the two is the ratio's peer) and ``eager``; and ``chrion 1 lane``
(``load_onnx(path, devices=["cpu"])``: one lane with one thread, which never splits a step).
Each condition times the engines in interleaved rounds (bench_peers.time_engines); the neighbour
is a Python process spinning in a loop, started after the quiet rounds and stopped after the
busy ones. Ratios are chrion onnx's latency over the peer's (< 1: chrion faster).

    python bench/busy_neighbour.py [--repeats 10] [--write]

``--write`` saves the table to bench/results/busy_neighbour.md; nothing is written otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from torch_chrion.bench_peers import Engine, time_engines

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from cpu_rnn import FEATURES, Row, cpu_name, engines_for, load_average  # noqa: E402

ROWS = [
    Row("LSTM", 3, 128, False, 32, 128),
    Row("LSTM", 2, 256, False, 8, 64),
    Row("LSTM", 1, 512, False, 16, 64),
    Row("RNN", 2, 256, False, 16, 128),
    Row("LSTM", 2, 128, True, 8, 64),
    Row("LSTM", 2, 256, False, 1, 32),
]
ENGINES = {"chrion onnx", "ort 1t", "ort 2t", "eager"}


def one_lane(row: Row, folder: Path) -> Engine:
    """load_onnx on one CPU lane with one thread (``devices=["cpu"]``): no step is split."""
    import torch_chrion

    path = folder / f"{row.kind}{row.layers}x{row.hidden}.onnx"  # engines_for exported it
    x = torch.randn(row.steps, row.batch, FEATURES)
    return Engine("chrion 1 lane", torch_chrion.load_onnx(str(path), devices=["cpu"]), (x,))


def neighbour() -> subprocess.Popen:
    """A process that keeps one core busy until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def ratios(ms: dict[str, float]) -> tuple[float, float, float]:
    """chrion's latency, and its ratio to onnxruntime's best and to eager."""
    ort = min(ms["ort 1t"], ms["ort 2t"])
    return ms["chrion onnx"], ms["chrion onnx"] / ort, ms["chrion onnx"] / ms["eager"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="save bench/results/busy_neighbour.md")
    args = parser.parse_args()
    header = (
        "| model (batch, seq) | quiet: chrion (ms) | vs ort best | vs eager | chrion 1 lane "
        "| busy: chrion (ms) | ort 1t | ort 2t | eager | chrion 1 lane | vs ort best "
        "| vs eager |"
    )
    lines = [header, "|---" + "|---:" * 11 + "|"]
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for row in ROWS:
            engines, failed = engines_for(row, Path(tmp), ENGINES)
            if failed:
                raise SystemExit(f"{row.name}: {failed}")
            engines.append(one_lane(row, Path(tmp)))
            quiet_ms = time_engines(engines, args.repeats)
            quiet = ratios(quiet_ms)
            busy_process = neighbour()
            try:
                busy = time_engines(engines, args.repeats)
            finally:
                busy_process.kill()
                busy_process.wait()
            chrion, vs_ort, vs_eager = ratios(busy)
            line = (
                f"| {row.name} | {quiet[0]:.2f} | {quiet[1]:.2f}x | {quiet[2]:.2f}x "
                f"| {quiet_ms['chrion 1 lane']:.2f} | {chrion:.2f} | {busy['ort 1t']:.2f} "
                f"| {busy['ort 2t']:.2f} | {busy['eager']:.2f} | {busy['chrion 1 lane']:.2f} "
                f"| {vs_ort:.2f}x | {vs_eager:.2f}x |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.write:
        text = [
            "# CPU recurrent latency beside a busy neighbour",
            "",
            f"CPU: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads for "
            f"torch, torch {torch.__version__}. Command: `python bench/busy_neighbour.py "
            f"{' '.join(sys.argv[1:])}`; median of {args.repeats} interleaved rounds after "
            "warm-up, quiet and then with one other process spinning on a core. Ratios are "
            f"chrion onnx over the peer (< 1: chrion faster). Load average when written: "
            f"{load_average()}.",
            "",
            *lines,
            "",
        ]
        out = ROOT / "bench" / "results" / "busy_neighbour.md"
        out.write_text("\n".join(text))
        print(f"-> {out}")


if __name__ == "__main__":
    main()
