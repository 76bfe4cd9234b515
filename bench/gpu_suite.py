"""The GPU check of issue #16 in one command (under 8 minutes on one GPU): tests/gpu, then per
model GPU-only eager PyTorch, the same captured in one CUDA graph (static inputs, replayed per
call: what PyTorch offers against launch overhead), onnxruntime's CUDA provider (when
installed), and torch_chrion's latency plan (with its CUDA lane's segments replayed as CUDA
graphs, the default, and without) and memory plan (SLO 1.2x GPU-only latency) on the host
CPU + cuda:0, each with its latency, the plan's prediction and the GPU memory it holds.
Engines are timed in interleaved rounds after warm-up; warnings (a segment that could not be
captured) are listed with the results.

Models: the demo speech model, a stacked LSTM, a bidirectional GRU, a conv + bi-LSTM speech
model and a seq2seq attention decoder. Without a GPU it says so, runs what needs none
(tests/gpu, skipped; every model through torch_chrion on two CPU lanes against eager) and
writes nothing. ``--write`` saves
bench/results/gpu_<gpu>_<date>.md.

    python bench/gpu_suite.py [--repeats 30] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from models import BiGRUWithState, Seq2SeqAttention, StackedLSTM  # noqa: E402

from torch_chrion.bench_peers import Engine, time_engines  # noqa: E402
from torch_chrion.demo import DemoSpeechLSTM  # noqa: E402
from torch_chrion.demo import example_inputs as demo_inputs  # noqa: E402
from torch_chrion.module import compile_graph  # noqa: E402
from torch_chrion.settings import ChrionSettings  # noqa: E402

SLO_FACTOR = 1.2


class ConvBiLSTMSpeech(nn.Module):
    """Two conv layers over filterbank frames, a 2-layer bidirectional LSTM, per-frame logits."""

    def __init__(self, features: int = 80, channels: int = 256, hidden: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(features, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.lstm = nn.LSTM(channels, hidden, num_layers=2, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, B, F)
        y = torch.relu(self.conv2(torch.relu(self.conv1(x.permute(1, 2, 0)))))
        out, _ = self.lstm(y.permute(2, 0, 1))
        return torch.log_softmax(self.head(out), dim=-1)


def models() -> list[tuple[str, nn.Module, tuple]]:
    torch.manual_seed(0)
    lstm = StackedLSTM(features=64, hidden=512, layers=3)
    gru = BiGRUWithState(features=64, hidden=256, layers=2)
    seq2seq = Seq2SeqAttention(vocab=500, embed=128, hidden=256)
    return [
        ("demo speech (conv + 2x bi-LSTM 128), T=64", DemoSpeechLSTM(), demo_inputs()),
        ("stacked LSTM 3x512, T=32, B=1", lstm, lstm.example_inputs(32, 1)),
        ("bi-GRU 2x256 with state, T=32, B=1", gru, gru.example_inputs(32, 1)),
        ("conv + bi-LSTM 2x256 speech, T=100, B=1", ConvBiLSTMSpeech(), (torch.randn(100, 1, 80),)),
        ("seq2seq attention decoder, S=20, T=8, B=1", seq2seq, seq2seq.example_inputs(20, 8, 1)),
    ]


def run_gpu_tests() -> str:
    """The summary line of ``pytest tests/gpu``."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    lines = [
        line
        for line in result.stdout.splitlines()
        if re.search(r"\d+ (passed|skipped|failed)", line)
    ]
    return lines[-1].strip("= ") if lines else f"pytest exited {result.returncode}"


def gpu_bytes(build: Callable[[], Callable], inputs: tuple) -> tuple[Callable, int]:
    """The model ``build`` makes, and the GPU bytes it holds plus the extra peak of one call."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    model = build()
    with torch.no_grad():
        model(*inputs)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model(*inputs)
    torch.cuda.synchronize()
    return model, torch.cuda.max_memory_allocated() - before


def onnxruntime_cuda(model: nn.Module, inputs: tuple, folder: Path) -> Engine | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    path = folder / "model.onnx"
    names = [f"input{i}" for i in range(len(inputs))]
    torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17, input_names=names)
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    feed = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
    return Engine("onnxruntime CUDA", lambda: session.run(None, feed), (), cuda=False)


def graphed(model: nn.Module, inputs: tuple) -> Callable:
    """``model`` captured in one CUDA graph: copies its inputs into the captured ones, replays,
    returns the captured outputs (torch.cuda.graphs' recipe: warm-up on a side stream)."""
    static = [x.clone() for x in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            model(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        outputs = model(*static)

    def run(*values: torch.Tensor) -> object:
        for held, value in zip(static, values, strict=True):
            held.copy_(value)
        graph.replay()
        return outputs

    return run


def measure_model(name: str, model: nn.Module, inputs: tuple, repeats: int) -> list[str]:
    """One model's table rows (markdown)."""
    model = model.eval()
    cuda_inputs = tuple(x.cuda() for x in inputs)
    eager, eager_bytes = gpu_bytes(lambda: _on_gpu(model), cuda_inputs)
    eager_ms = time_engines([Engine("eager", eager, cuda_inputs, cuda=True)], repeats)["eager"]
    try:
        in_graph, graph_bytes = gpu_bytes(lambda: graphed(_on_gpu(model), cuda_inputs), cuda_inputs)
        graph_failure = None
    except Exception as exc:  # noqa: BLE001 - a model PyTorch cannot capture is a result
        in_graph, graph_bytes = None, 0
        graph_failure = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    devices = ("cpu", "cuda:0")
    latency, latency_bytes = gpu_bytes(
        lambda: compile_graph(model, inputs, ChrionSettings(devices=devices)), inputs
    )
    no_graphs, no_graphs_bytes = gpu_bytes(
        lambda: compile_graph(model, inputs, ChrionSettings(devices=devices, cuda_graphs=False)),
        inputs,
    )
    slo = SLO_FACTOR * eager_ms
    memory, memory_bytes = gpu_bytes(
        lambda: compile_graph(
            model, inputs, ChrionSettings(devices=devices, objective="memory", slo_ms=slo)
        ),
        inputs,
    )
    engines = [
        Engine("eager cuda:0", eager, cuda_inputs, cuda=True),
        Engine("chrion latency plan", latency, inputs, cuda=True),
        Engine("chrion latency plan, no CUDA graphs", no_graphs, inputs, cuda=True),
        Engine("chrion memory plan", memory, inputs, cuda=True),
    ]
    if in_graph is not None:
        engines.append(Engine("eager cuda:0 in one CUDA graph", in_graph, cuda_inputs, cuda=True))
    with tempfile.TemporaryDirectory() as folder:
        ort_engine = onnxruntime_cuda(model, inputs, Path(folder))
        if ort_engine is not None:
            engines.append(ort_engine)
        measured = time_engines(engines, repeats, warmup=5)
    rows = [
        f"## {name}",
        "",
        "| engine | latency (ms) | vs eager | predicted (ms) | GPU MiB | vs eager | nodes on GPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(engine: str, nbytes: int | None, plan) -> str:
        ms = measured[engine]
        predicted = f"{plan.predicted_ms:.3f}" if plan else "-"
        gpu = f"{nbytes / 2**20:.2f} | {nbytes / max(eager_bytes, 1):.2f}" if nbytes else "- | -"
        placed = (
            f"{sum(d.startswith('cuda') for d in plan.placement.values())}/{len(plan.placement)}"
            if plan
            else "-"
        )
        ratio = ms / measured["eager cuda:0"]
        return f"| {engine} | {ms:.3f} | {ratio:.2f} | {predicted} | {gpu} | {placed} |"

    rows.append(row("eager cuda:0", eager_bytes, None))
    if in_graph is not None:
        rows.append(row("eager cuda:0 in one CUDA graph", graph_bytes, None))
    else:
        rows.append(f"| eager cuda:0 in one CUDA graph | capture failed: {graph_failure} |")
    rows.append(row("chrion latency plan", latency_bytes, latency.plan))
    rows.append(row("chrion latency plan, no CUDA graphs", no_graphs_bytes, no_graphs.plan))
    rows.append(row("chrion memory plan", memory_bytes, memory.plan) + f" SLO {slo:.3f} ms")
    if ort_engine is not None:
        rows.append(row("onnxruntime CUDA", None, None))
    return [*rows, ""]


def _on_gpu(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).cuda()


def check_models_on_cpu() -> list[str]:
    """What runs without a GPU: each model captured, planned and run by torch_chrion on two CPU
    lanes, against its eager forward."""
    lines = []
    settings = ChrionSettings(devices=("cpu:0", "cpu:1"), profile_warmup=0, profile_repeats=2)
    for name, model, inputs in models():
        compiled = compile_graph(model.eval(), inputs, settings)
        with torch.no_grad():
            torch.testing.assert_close(compiled(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
        lines.append(
            f"{name}: chrion on cpu:0 + cpu:1 equals eager ({len(compiled.plan.order)} nodes)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--write", action="store_true", help="save bench/results/gpu_<gpu>_<date>.md"
    )
    args = parser.parse_args()
    started = time.monotonic()
    tests = run_gpu_tests()
    print(f"tests/gpu: {tests}", flush=True)
    if not torch.cuda.is_available():
        print("no CUDA device here: GPU timings and memory skipped, nothing written", flush=True)
        print("\n".join(check_models_on_cpu()))
        if args.write:
            sys.exit("--write needs a CUDA device: no GPU figure is written unmeasured")
        return
    gpu = torch.cuda.get_device_name()
    lines = [
        f"# GPU suite: {gpu} ({datetime.date.today()}, torch {torch.__version__})",
        "",
        f"Command: `python bench/gpu_suite.py {' '.join(sys.argv[1:])}`; median of {args.repeats}"
        " calls, engines interleaved. GPU MiB = held after load + peak of one call. Memory plan"
        f" SLO = {SLO_FACTOR}x GPU-only eager latency. torch_chrion's plans replay their CUDA"
        " lane's segments as CUDA graphs (cuda_graphs=True, the default) unless the row says"
        " otherwise.",
        "",
        f"tests/gpu: {tests}",
        "",
    ]
    for name, model, inputs in models():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lines += measure_model(name, model, inputs, args.repeats)
        said = sorted({str(w.message) for w in caught if "torch_chrion" in str(w.message)})
        lines += [f"- warning: {message}" for message in said] + ([""] if said else [])
        print("\n".join(lines[-12:]), flush=True)
    lines.append(f"Suite time: {time.monotonic() - started:.0f} s.")
    print(lines[-1])
    if args.write:
        tag = re.sub(r"[^0-9A-Za-z]+", "_", gpu).strip("_").lower()
        out = ROOT / "bench" / "results" / f"gpu_{tag}_{datetime.date.today()}.md"
        out.write_text("\n".join(lines) + "\n")
        print(f"-> {out}")


if __name__ == "__main__":
    main()
