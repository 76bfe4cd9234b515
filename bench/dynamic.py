"""Variable-length traffic: a stream of requests whose lengths are drawn from 20-400 frames,
on a speech-like BiLSTM, against eager PyTorch, inductor (torch.compile of the user's model),
onnxruntime (dynamic axes; 1 and 2 intra-op threads), torch.compile(backend="chrion") with
default arguments and torch_chrion.load_onnx of the same ONNX file (planned at 50 frames).

Each engine first gets two warm-up calls (20 and 400 frames: Dynamo's static first graph and
its dynamic second one; one graph each for onnxruntime). Then every request of the stream runs
on every engine, in a rotating order (a load burst on a shared machine slows all engines alike).
Every timed call follows a few milliseconds of untimed calls of the same engine at 20 frames
(``_settled_ms``): engines leave threads spinning after they return, and a call right after
another engine's would be charged for them. Right after an engine's first call at a length,
that length is timed again ``--steady-repeats`` times (untimed for the stream), the same way:
the first call over the median of those is the length's first-call ratio (median and worst
over the lengths reported), and their difference its stall.

    python bench/dynamic.py [--requests 200] [--seed 0] [--settle-ms 120] [--write]
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

from torch_chrion.bench_peers import SETTLE_MS, own_code  # noqa: E402
from torch_chrion.bench_peers import settle as settle_calls  # noqa: E402 (``settle``: an input)
from torch_chrion.profile.devices import cpu_name  # noqa: E402

WARMUP_LENGTHS = (20, 400)


def engines(model: SpeechBiLSTM, folder: Path) -> dict[str, Callable[[torch.Tensor], Any]]:
    import onnxruntime

    path = model.export_onnx(str(folder / "speech_bilstm.onnx"))

    def session(threads: int) -> Callable[[torch.Tensor], Any]:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        run = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        ).run
        return lambda x: run(None, {"x": x.numpy()})

    import torch_chrion

    chrion_onnx = torch_chrion.load_onnx(path, example_inputs=model.example_inputs(seq=50))
    return {
        "chrion (torch.compile)": torch.compile(own_code(model), backend="chrion"),
        "chrion (load_onnx)": chrion_onnx,
        "eager": model,
        "inductor (torch.compile)": torch.compile(own_code(model)),
        "onnxruntime 1 thread": session(1),
        "onnxruntime 2 threads": session(2),
    }


def _ms(run: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    start = time.perf_counter()
    run(x)
    return (time.perf_counter() - start) * 1e3


def _settled_ms(
    run: Callable[[torch.Tensor], Any], x: torch.Tensor, settle: torch.Tensor, settle_ms: float
) -> float:
    """One timed call of ``run`` on ``x`` after untimed calls on ``settle`` (a length it has
    seen) for ``settle_ms``: the threads another engine left spinning (libgomp's pool spins
    ~7 ms after eager work, onnxruntime's after its runs) are parked by then, and this engine's
    own are awake, as in bench_peers.time_engines. Every timed call of the bench, first or
    steady, is taken this way."""
    settle_calls(lambda: run(settle), settle_ms)
    return _ms(run, x)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(
    runs: dict[str, Callable[[torch.Tensor], Any]],
    lengths: list[int],
    features: int,
    settle_ms: float,
    steady_repeats: int,
) -> dict[str, dict[str, Any]]:
    """Per engine: p50 and p99 of the stream, and, for each length the stream met first
    (after warm-up), its first call against the median of ``steady_repeats`` calls at that
    length right after it, every call timed the same way (``_settled_ms``)."""
    names = list(runs)
    latency: dict[str, list[float]] = {n: [] for n in names}
    first: dict[str, dict[int, float]] = {n: {} for n in names}
    steady: dict[str, dict[int, float]] = {n: {} for n in names}
    generator = torch.Generator().manual_seed(0)
    settle = torch.randn(1, WARMUP_LENGTHS[0], features, generator=generator)
    with torch.no_grad():
        for length in WARMUP_LENGTHS:
            for name in names:
                runs[name](torch.randn(1, length, features, generator=generator))
        inputs = {n: torch.randn(1, n, features, generator=generator) for n in set(lengths)}
        for k, length in enumerate(lengths):
            for name in names[k % len(names) :] + names[: k % len(names)]:
                ms = _settled_ms(runs[name], inputs[length], settle, settle_ms)
                latency[name].append(ms)
                if length in first[name] or length in WARMUP_LENGTHS:
                    continue
                # its steady calls right away: load on a shared machine drifts over a run,
                # and a baseline taken minutes later would carry another load than the first
                first[name][length] = ms
                steady[name][length] = statistics.median(
                    _settled_ms(runs[name], inputs[length], settle, settle_ms)
                    for _ in range(steady_repeats)
                )
    results = {}
    for name in names:
        new = list(first[name])
        stalls = {n: first[name][n] - steady[name][n] for n in new}
        ratios = {n: first[name][n] / steady[name][n] for n in new}
        worst_stall = max(stalls, key=stalls.get)
        worst_ratio = max(ratios, key=ratios.get)
        results[name] = {
            "p50": statistics.median(latency[name]),
            "p99": percentile(latency[name], 99),
            "stall": stalls[worst_stall],
            "stall_length": worst_stall,
            "median_ratio": statistics.median(ratios.values()),
            "worst_ratio": ratios[worst_ratio],
            "worst_ratio_length": worst_ratio,
        }
    return results


def table(results: dict[str, dict[str, Any]], lengths: list[int], settle_ms: float) -> list[str]:
    ort = min((r["p99"] for n, r in results.items() if n.startswith("onnxruntime")), default=None)
    lines = [
        "| engine | p50 ms | p99 ms | p99 / best onnxruntime p99 | worst first-call stall ms "
        "(length) | first call / steady call: median | worst (length) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        ratio = f"{r['p99'] / ort:.2f}" if ort else "-"
        lines.append(
            f"| {name} | {r['p50']:.2f} | {r['p99']:.2f} | {ratio} | "
            f"{r['stall']:.1f} ({r['stall_length']}) | {r['median_ratio']:.2f} | "
            f"{r['worst_ratio']:.2f} ({r['worst_ratio_length']}) |"
        )
    lines.append("")
    lines.append(
        f"{len(lengths)} requests, batch 1, {len(set(lengths))} distinct lengths in "
        f"[{min(lengths)}, {max(lengths)}] frames. Every timed call (stream and steady) follows "
        f"{settle_ms:g} ms of untimed calls of the same engine at {WARMUP_LENGTHS[0]} frames, "
        "so no engine pays for threads another left spinning. First call / steady call: a "
        "length's first call (after warm-up) over the median of the calls at that length "
        "right after it, over the lengths the stream met."
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
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=SETTLE_MS,
        help="untimed calls of an engine before each of its timed ones (ms)",
    )
    parser.add_argument("--steady-repeats", type=int, default=3)
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
        results = measure(runs, lengths, model.lstm.input_size, args.settle_ms, args.steady_repeats)
    import torch_chrion.dynamo as chrion_dynamo

    stats = [dict(m.stats) for m in chrion_dynamo.compiled_modules()]
    onnx_stats = dict(runs["chrion (load_onnx)"].stats)
    lines = [
        f"# Variable-length stream: BiLSTM 2x{args.hidden} (40 features), {cpu_name()}",
        "",
        f"`python bench/dynamic.py --requests {args.requests} --seed {args.seed}` "
        f"(torch {torch.__version__}, {torch.get_num_threads()} intra-op threads for eager).",
        "",
        *table(results, lengths, args.settle_ms),
        "",
        f"chrion modules' counters (one per Dynamo graph): {stats}; load_onnx's: {onnx_stats}",
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
