"""Profile stability: two profiling runs of the same model agree within 20% per node (nodes above
50 µs), on every lane available here.

    .venv/bin/python bench/profile_stability.py [--hidden 256] [--seq 32] [--chunks 2]

Prints the per-node figures of both runs, and with --write saves the table to
bench/results/profile_stability.md. Exits 1 when a node above 50 µs differs by more than 20%.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from models import StackedLSTM  # noqa: E402

from torch_chrion.graph import capture  # noqa: E402
from torch_chrion.profile import profile_graph  # noqa: E402
from torch_chrion.settings import ChrionSettings  # noqa: E402

THRESHOLD_MS = 0.050
TOLERANCE = 0.20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="intra-op threads of the CPU lane (default 1, as for lanes)",
    )
    parser.add_argument(
        "--output", default=str(ROOT / "bench" / "results" / "profile_stability.md")
    )
    parser.add_argument("--write", action="store_true", help="save the table to --output")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = StackedLSTM(args.features, args.hidden, args.layers).eval()
    inputs = model.example_inputs(seq=args.seq, batch=args.batch)
    gm = capture(model, inputs, seq_chunks=args.chunks)
    lanes = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    settings = ChrionSettings(
        profile_warmup=5,
        profile_repeats=args.repeats,
        profile_budget_s=120,
        cpu_threads=args.cpu_threads,
    )
    runs = []
    for _ in range(2):  # a fresh cache each time: both runs measure
        with tempfile.TemporaryDirectory() as cache:
            runs.append(profile_graph(gm, inputs, lanes, settings=settings, cache_dir=cache))

    rows, failures, compared = [], 0, 0
    for node in runs[0].node_ms:
        for lane in lanes:
            a, b = runs[0].node_ms[node][lane], runs[1].node_ms[node][lane]
            diff = abs(a - b) / min(a, b)
            checked = max(a, b) > THRESHOLD_MS
            ok = diff <= TOLERANCE or not checked
            compared += checked
            failures += not ok
            verdict = ("ok" if ok else "**over 20%**") if checked else "below 50 µs"
            rows.append(f"| {node} | {lane} | {a:.4f} | {b:.4f} | {100 * diff:.1f}% | {verdict} |")

    names = ", ".join(f"{lane}: {runs[0].device_names[lane]}" for lane in lanes)
    transfers = [
        f"- {key}: run 1 latency {runs[0].transfer[key][0] * 1e3:.1f} µs, "
        f"{runs[0].transfer[key][1] / 1e6:.2f} GB/s; run 2 latency "
        f"{runs[1].transfer[key][0] * 1e3:.1f} µs, {runs[1].transfer[key][1] / 1e6:.2f} GB/s"
        for key in sorted(runs[0].transfer)
    ]
    table = "\n".join(
        [
            "# Profile stability",
            "",
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}; "
            f"{names}.",
            f"Model: StackedLSTM(features={args.features}, hidden={args.hidden}, "
            f"layers={args.layers}), seq {args.seq}, batch {args.batch}, seq_chunks {args.chunks}; "
            f"{settings.profile_warmup} warm-up runs, median of {args.repeats} repeats per node.",
            "",
            f"{compared} node-lane costs above 50 µs compared; {failures} differ by more than "
            f"20% between the two runs.",
            "",
            "| node | lane | run 1 ms | run 2 ms | difference | verdict |",
            "| --- | --- | ---: | ---: | ---: | --- |",
            *rows,
            "",
            *(
                ["Transfers (pinned host<->device, least-squares fit):", "", *transfers]
                if transfers
                else []
            ),
            "",
        ]
    )
    print(table)
    if args.write:
        Path(args.output).write_text(table)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
