"""Variable-length traffic: a stream of requests whose lengths are drawn from 20-400 frames,
on a speech-like BiLSTM, against eager PyTorch, inductor (torch.compile of the user's model),
onnxruntime (dynamic axes; 1 and 2 intra-op threads) and torch.compile(backend="chrion") with
default arguments.

Each engine first gets two warm-up calls (20 and 400 frames: Dynamo's static first graph and
its dynamic second one; one graph each for onnxruntime). Then every request of the stream runs
on every engine, in a rotating order (a load burst on a shared machine slows all engines alike).
A stall is a first call at a length the engine has not seen, minus a later call at that length.

    python bench/dynamic.py [--requests 200] [--seed 0] [--write]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from models import SpeechBiLSTM  # noqa: E402

from torch_chrion.bench_peers import own_code  # noqa: E402
from torch_chrion.profile.devices import cpu_name  # noqa: E402

WARMUP_LENGTHS = (20, 400)


def engines(model: torch.nn.Module, folder: Path) -> dict[str, Callable[[torch.Tensor], Any]]:
    import onnxruntime

    path = folder / "speech_bilstm.onnx"
    torch.onnx.export(
        model,
        model.example_inputs(seq=50),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {1: "frames"}, "y": {1: "frames"}},
    )

    def session(threads: int) -> Callable[[torch.Tensor], Any]:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        run = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        ).run
        return lambda x: run(None, {"x": x.numpy()})

    return {
        "chrion (torch.compile)": torch.compile(own_code(model), backend="chrion"),
        "eager": model,
        "inductor (torch.compile)": torch.compile(own_code(model)),
        "onnxruntime 1 thread": session(1),
        "onnxruntime 2 threads": session(2),
    }


def _ms(run: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    start = time.perf_counter()
    run(x)
    return (time.perf_counter() - start) * 1e3


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(
    runs: dict[str, Callable[[torch.Tensor], Any]], lengths: list[int], features: int
) -> dict[str, dict[str, Any]]:
    names = list(runs)
    latency: dict[str, list[float]] = {n: [] for n in names}
    first: dict[str, dict[int, float]] = {n: {} for n in names}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for length in WARMUP_LENGTHS:
            for name in names:
                runs[name](torch.randn(1, length, features, generator=generator))
        for k, length in enumerate(lengths):
            x = torch.randn(1, length, features, generator=generator)
            for name in names[k % len(names) :] + names[: k % len(names)]:
                ms = _ms(runs[name], x)
                latency[name].append(ms)
                first[name].setdefault(length, ms)
        steady: dict[str, dict[int, float]] = {n: {} for n in names}
        for length in sorted(set(lengths)):  # each length once more, now warm everywhere
            x = torch.randn(1, length, features, generator=generator)
            for name in names:
                steady[name][length] = min(_ms(runs[name], x), _ms(runs[name], x))
    results = {}
    for name in names:
        stalls = {n: first[name][n] - steady[name][n] for n in first[name]}
        worst = max(stalls, key=stalls.get)
        results[name] = {
            "p50": statistics.median(latency[name]),
            "p99": percentile(latency[name], 99),
            "stall": stalls[worst],
            "stall_length": worst,
            "first_over_steady": max(first[name][n] / steady[name][n] for n in first[name]),
        }
    return results


def table(results: dict[str, dict[str, Any]], lengths: list[int]) -> list[str]:
    ort = min((r["p99"] for n, r in results.items() if n.startswith("onnxruntime")), default=None)
    lines = [
        "| engine | p50 ms | p99 ms | p99 / best onnxruntime p99 | worst first-call stall ms "
        "(length) | worst first call / warm call |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        ratio = f"{r['p99'] / ort:.2f}" if ort else "-"
        lines.append(
            f"| {name} | {r['p50']:.2f} | {r['p99']:.2f} | {ratio} | "
            f"{r['stall']:.1f} ({r['stall_length']}) | {r['first_over_steady']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"{len(lengths)} requests, batch 1, {len(set(lengths))} distinct lengths in "
        f"[{min(lengths)}, {max(lengths)}] frames."
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for eager and inductor (chrion's lanes set their own)",
    )
    parser.add_argument("--write", action="store_true", help="write bench/results/dynamic.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = SpeechBiLSTM(hidden=args.hidden).eval()
    draw = random.Random(args.seed)
    lengths = [draw.randint(20, 400) for _ in range(args.requests)]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        runs = engines(model, Path(folder))
        results = measure(runs, lengths, model.lstm.input_size)
    import torch_chrion.dynamo as chrion_dynamo

    stats = [dict(m.stats) for m in chrion_dynamo.compiled_modules()]
    lines = [
        f"# Variable-length stream: BiLSTM 2x{args.hidden} (40 features), {cpu_name()}",
        "",
        f"`python bench/dynamic.py --requests {args.requests} --seed {args.seed}` "
        f"(torch {torch.__version__}, {torch.get_num_threads()} intra-op threads for eager).",
        "",
        *table(results, lengths),
        "",
        f"chrion modules' counters (one per Dynamo graph): {stats}",
        "",
        f"Machine load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end ({os.cpu_count()} cores, shared with other jobs: every engine's stalls and p99 "
        "include that noise).",
    ]
    print("\n".join(lines))
    if args.write:
        out = ROOT / "bench" / "results" / "dynamic.md"
        out.write_text("\n".join(lines) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
