"""Per-node overhead of the executor on a 2,000-node chain of tiny adds, against
torch.fx.Interpreter, the GraphModule's generated Python and eager PyTorch, measured in the same
run. Goal: at most 2 us per node for the executor.

    python bench/executor_overhead.py [--nodes 2000] [--repeats 30] [--write]

With --write, writes bench/results/executor_overhead.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion import _extension
from torch_chrion.bench_peers import time_ms
from torch_chrion.graph.nodes import is_schedulable
from torch_chrion.runtime import PlacedGraph

RESULTS = Path(__file__).resolve().parent / "results" / "executor_overhead.md"


def chain(nodes: int):
    def f(x):
        for _ in range(nodes):
            x = x + 1
        return x

    return f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--write", action="store_true", help="write the table to --out")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where --write puts the table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = torch.ones(1)
    f = chain(args.nodes)
    with torch.no_grad():
        gm = make_fx(f, tracing_mode="real")(x)
    names = [n.name for n in gm.graph.nodes if is_schedulable(n)]
    assert len(names) == args.nodes
    one_lane = PlacedGraph(gm, dict.fromkeys(names, "cpu"), cpu_threads=1)
    two_lanes = PlacedGraph(gm, {n: f"cpu:{i % 2}" for i, n in enumerate(names)}, cpu_threads=1)
    interpreter = torch.fx.Interpreter(gm)
    expected = f(x)
    for runner in (one_lane, two_lanes, interpreter.run, gm):
        torch.testing.assert_close(runner(x), expected)

    rows = []
    with torch.no_grad():
        for label, runner in [
            ("chrion executor, 1 lane", one_lane),
            ("chrion executor, 2 lanes alternating (a lane hand-off per node)", two_lanes),
            ("eager PyTorch (Python loop)", f),
            ("GraphModule generated code", gm),
            ("torch.fx.Interpreter", interpreter.run),
        ]:
            seconds = time_ms(runner, (x,), args.repeats, warmup=3) / 1e3
            rows.append((label, seconds * 1e6 / args.nodes))
    floor_us = (
        statistics.median(
            _extension.load("executor").boxed_call_ns("aten::add", "Tensor", [x, 1, 1], 20000)
            for _ in range(5)
        )
        / 1e3
    )
    rows.append(("the same boxed dispatcher call alone, in a C++ loop (floor)", floor_us))
    base = rows[0][1]
    lines = [
        "# Executor per-node overhead",
        "",
        f"Chain of {args.nodes} `aten.add.Tensor(x, 1)` on a 1-element tensor, median of "
        f"{args.repeats} runs; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} intra-op thread(s). Goal: executor <= 2 us/node.",
        "",
        "| runner | us / node | vs executor (1 lane) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {us:.2f} | {us / base:.2f}x |" for label, us in rows]
    lines += [
        "",
        f"Executor bookkeeping above the boxed call: {(base - floor_us) * 1e3:.0f} ns per node "
        "(1 lane).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    one_lane.stop()
    two_lanes.stop()


if __name__ == "__main__":
    main()
