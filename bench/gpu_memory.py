"""GPU memory and latency of torch_chrion's memory-optimal plans against GPU-only eager PyTorch
and chrion's own latency-optimal plan, measured in one process on one CUDA device.

For each model: eager on cuda:0 (all weights on the GPU), chrion latency-optimal on cpu+cuda:0,
and chrion memory-optimal under SLOs of 1.1x, 1.5x and 3x the GPU-only latency. GPU memory is
what the loaded model holds on the GPU (allocated after load, profiling's temporaries freed) plus
the extra peak of one call: torch.cuda.max_memory_allocated over a call, minus the baseline.
Saves bench/results/gpu_memory.md.

    python bench/gpu_memory.py [--repeats 30] [--write]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from models import BiGRUWithState, StackedLSTM  # noqa: E402

import torch_chrion  # noqa: E402
from torch_chrion import onnx as chrion_onnx  # noqa: E402
from torch_chrion.bench_peers import time_ms  # noqa: E402
from torch_chrion.demo import DEMO_ONNX  # noqa: E402
from torch_chrion.demo import example_inputs as demo_inputs  # noqa: E402


def _settle() -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def peak_bytes(build, inputs: tuple) -> tuple[object, int]:
    """The model, and the GPU bytes it holds plus what one call adds at its peak."""
    before = _settle()
    model = build()
    with torch.no_grad():
        model(*inputs)  # first call: lazy allocations (cuDNN workspaces) happen here
    _settle()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model(*inputs)
    torch.cuda.synchronize()
    return model, torch.cuda.max_memory_allocated() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--write", action="store_true", help="save bench/results/gpu_memory.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_memory.py needs a CUDA device")
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp())
    lstm = StackedLSTM(features=64, hidden=512, layers=3).eval()
    gru = BiGRUWithState(features=64, hidden=256, layers=2).eval()
    cases = [("demo speech LSTM", DEMO_ONNX, demo_inputs())]
    for name, model in (("stacked LSTM 3x512", lstm), ("bi-GRU 2x256", gru)):
        inputs = model.example_inputs(32, 1)
        path = folder / f"{name.split()[0]}.onnx"
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17)
        cases.append((name, path, inputs))
    lines = [
        f"# GPU memory of memory-optimal plans ({torch.cuda.get_device_name()}, torch {torch.__version__})",
        "",
        "Command: `python bench/gpu_memory.py --write`; GPU bytes = held after load + peak of one call; "
        f"latency = median of {args.repeats} calls.",
        "",
    ]
    for name, path, inputs in cases:
        proto = chrion_onnx.load_model(path)
        cuda_inputs = tuple(x.cuda() for x in inputs)
        eager, eager_bytes = peak_bytes(
            lambda p=proto: chrion_onnx.to_fx(p).eval().cuda(), cuda_inputs
        )
        eager_ms = time_ms(eager, cuda_inputs, args.repeats, sync_cuda=True)
        del eager
        rows = [("eager cuda:0 (GPU only)", eager_ms, eager_bytes, "")]
        chrion, nbytes = peak_bytes(
            lambda p=proto, x=inputs: torch_chrion.load_onnx(p, example_inputs=x), inputs
        )
        rows.append(
            (
                "chrion latency-optimal",
                time_ms(chrion, inputs, args.repeats, sync_cuda=True),
                nbytes,
                f"predicted {chrion.plan.predicted_ms:.2f} ms",
            )
        )
        del chrion
        for factor in (1.1, 1.5, 3.0):
            slo = factor * eager_ms
            chrion, nbytes = peak_bytes(
                lambda p=proto, x=inputs, slo=slo: torch_chrion.load_onnx(
                    p, example_inputs=x, objective="memory", slo_ms=slo
                ),
                inputs,
            )
            plan = chrion.plan
            on_gpu = sum(1 for d in plan.placement.values() if d.startswith("cuda"))
            rows.append(
                (
                    f"chrion memory-optimal, SLO {slo:.2f} ms ({factor}x eager)",
                    time_ms(chrion, inputs, args.repeats, sync_cuda=True),
                    nbytes,
                    f"slo met (predicted): {plan.slo_met}; {on_gpu}/{len(plan.placement)} nodes on GPU",
                )
            )
            del chrion
        lines += [
            f"## {name}",
            "",
            "| engine | latency (ms) | GPU MiB | vs GPU-only | note |",
            "|---|---:|---:|---:|---|",
        ]
        for engine, ms, nbytes, note in rows:
            lines.append(
                f"| {engine} | {ms:.3f} | {nbytes / 2**20:.2f} | {nbytes / max(eager_bytes, 1):.2f} | {note} |"
            )
        lines.append("")
        print("\n".join(lines[-len(rows) - 4 :]), flush=True)
    if args.write:
        out = ROOT / "bench" / "results" / "gpu_memory.md"
        out.write_text("\n".join(lines))
        print(f"-> {out}")


if __name__ == "__main__":
    main()
