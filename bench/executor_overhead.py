"""Per-node cost of the executor on a 2,000-node chain of tiny adds, against onnxruntime's
executor on the same chain (graph optimizations off, one intra-op thread), torch.fx.Interpreter,
the GraphModule's generated Python and eager PyTorch, timed in interleaved rounds in one process.
Goal (issue #15): the executor at most 1.0x onnxruntime's per-node cost.

The executor runs the chain as it runs any graph: consecutive elementwise CPU nodes fuse into one
step (Note [Chrion elementwise chains] in csrc/executor/elementwise.h). The rows with fusion off
show the cost of one boxed call per node, and the two-lane rows a cross-lane hand-off per node,
with and without the lanes' spin before parking (Note [Chrion spin before park]).

    python bench/executor_overhead.py [--nodes 2000] [--repeats 30] [--write]

With --write, writes bench/results/executor_overhead.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.bench_peers import Engine, time_engines
from torch_chrion.graph.nodes import is_schedulable
from torch_chrion.runtime import PlacedGraph
from torch_chrion.runtime.placed_graph import executor_extension, spin_before_park

RESULTS = Path(__file__).resolve().parent / "results" / "executor_overhead.md"


def chain(nodes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x: torch.Tensor) -> torch.Tensor:
        for _ in range(nodes):
            x = x + 1
        return x

    return f


def onnx_chain(nodes: int) -> onnx.ModelProto:
    """The same chain as an ONNX model: ``nodes`` Add nodes, each adding a one-element 1."""
    adds = [
        helper.make_node(
            "Add", [f"v{k}" if k else "x", "one"], [f"v{k + 1}" if k + 1 < nodes else "y"]
        )
        for k in range(nodes)
    ]
    graph = helper.make_graph(
        adds,
        "add_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def onnxruntime_runner(nodes: int) -> Callable[[torch.Tensor], Any]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        onnx_chain(nodes).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {"x": x.numpy()})[0]

    return run


def without_spin(module: PlacedGraph) -> Callable[[torch.Tensor], Any]:
    """``module`` called with the lanes parking at once when idle (no spin before park)."""

    def run(x: torch.Tensor) -> Any:
        with spin_before_park(0.0):
            return module(x)

    return run


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
    one_lane = dict.fromkeys(names, "cpu")
    alternating = {n: f"cpu:{i % 2}" for i, n in enumerate(names)}
    fused = PlacedGraph(gm, one_lane, cpu_threads=1)
    unfused = PlacedGraph(gm, one_lane, cpu_threads=1, fuse_elementwise=False)
    two_lanes = PlacedGraph(gm, alternating, cpu_threads=1)
    assert fused.fused_chains() == [names] and not two_lanes.fused_chains()
    interpreter = torch.fx.Interpreter(gm)
    runners: list[tuple[str, Callable[..., Any]]] = [
        ("chrion executor, 1 lane (the chain fused into one step)", fused),
        ("chrion executor, 1 lane, fusion off (a boxed call per node)", unfused),
        ("onnxruntime, graph optimizations off, 1 intra-op thread", onnxruntime_runner(args.nodes)),
        ("chrion executor, 2 lanes alternating (a lane hand-off per node)", two_lanes),
        ("chrion executor, 2 lanes alternating, no spin before park", without_spin(two_lanes)),
        ("eager PyTorch (Python loop)", f),
        ("GraphModule generated code", gm),
        ("torch.fx.Interpreter", interpreter.run),
    ]
    expected = f(x)
    for _, runner in runners:
        torch.testing.assert_close(torch.as_tensor(runner(x)), expected)
    measured = time_engines([Engine(label, run, (x,)) for label, run in runners], args.repeats)
    rows = [(label, measured[label] * 1e3 / args.nodes) for label, _ in runners]
    floor_us = (
        statistics.median(
            executor_extension().boxed_call_ns("aten::add", "Tensor", [x, 1, 1], 20000)
            for _ in range(5)
        )
        / 1e3
    )
    rows.append(("the boxed aten::add call alone, in a C++ loop (unfused floor)", floor_us))
    ort_us = rows[2][1]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        "# Executor per-node cost",
        "",
        f"Chain of {args.nodes} `aten.add.Tensor(x, 1)` on a 1-element tensor (onnxruntime: the"
        f" same chain of ONNX Add), median of {args.repeats} interleaved rounds; torch"
        f" {torch.__version__}, onnxruntime {ort.__version__},"
        f" {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average"
        f" {load} at the end. Goal: executor <= 1.0x onnxruntime per node.",
        "",
        "| runner | us / node | vs onnxruntime |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {us:.3f} | {us / ort_us:.2f}x |" for label, us in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    for module in (fused, unfused, two_lanes):
        module.stop()


if __name__ == "__main__":
    main()
