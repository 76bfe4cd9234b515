"""Two CPU lanes against one, on recurrent models with independent branches: a bidirectional
LSTM split by direction (a forward and a reverse chrion.lstm node that can run at once) and a
multi-branch GRU model (four GRUs over the same input, summed).

    python bench/lanes.py [--repeats 20] [--seq 64] [--batch 4] [--write]

Both run lanes as torch_chrion does by default: one intra-op thread per lane ("1 lane" is not
given every core: a batch-1 recurrent step over many OpenMP threads is barrier-bound, which
the project measured as the slowest setup). "2 lanes" puts independent branches on different
lanes. Eager PyTorch, with torch's default threads, is the reference. Engines are timed in
interleaved rounds (torch_chrion.bench_peers.time_engines). With --write, the table goes to
bench/results/lanes.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.bench_peers import Engine, time_engines
from torch_chrion.graph.nodes import is_schedulable
from torch_chrion.ops import ensure_loaded
from torch_chrion.runtime import PlacedGraph
from torch_chrion.runtime.lanes import DEFAULT_CPU_THREADS

RESULTS = Path(__file__).resolve().parent / "results" / "lanes.md"


def split_bilstm(lstm: nn.LSTM):
    """A bidirectional one-layer LSTM as two single-direction chrion.lstm nodes."""
    forward_w, reverse_w = lstm._flat_weights[:4], lstm._flat_weights[4:]

    def f(x):
        h0 = x.new_zeros(1, x.shape[1], lstm.hidden_size)
        fwd = torch.ops.chrion.lstm(x, h0, h0, forward_w, True, 1, False, False, False)[0]
        bwd = torch.ops.chrion.lstm(x, h0, h0, reverse_w, True, 1, False, False, True)[0]
        return torch.cat([fwd, bwd], -1)

    return f


def multi_branch(grus: list[nn.GRU]):
    def f(x):
        h0 = x.new_zeros(1, x.shape[1], grus[0].hidden_size)
        outs = [
            torch.ops.chrion.gru(x, h0, g._flat_weights, True, 1, False, False, False)[0]
            for g in grus
        ]
        return torch.stack(outs).sum(0)

    return f


def branch_placement(gm: torch.fx.GraphModule, lanes: list[str]) -> dict[str, str]:
    """Recurrent nodes round-robin over the lanes, everything else on the first lane."""
    placement, k = {}, 0
    for n in gm.graph.nodes:
        if not is_schedulable(n):
            continue
        if "chrion" in str(n.target):
            placement[n.name] = lanes[k % len(lanes)]
            k += 1
        else:
            placement[n.name] = lanes[0]
    return placement


def measure(name: str, f, eager, x, repeats: int) -> list[str]:
    with torch.no_grad():
        gm = make_fx(f, tracing_mode="real")(x)
    threads = DEFAULT_CPU_THREADS
    one = PlacedGraph(gm, branch_placement(gm, ["cpu"]), cpu_threads=threads)
    two = PlacedGraph(gm, branch_placement(gm, ["cpu:0", "cpu:1"]), cpu_threads=threads)
    with torch.no_grad():
        expected = eager(x)
    for m in (one, two):
        torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)
    engines = [Engine("eager", eager, (x,)), Engine("one", one, (x,)), Engine("two", two, (x,))]
    ms = time_engines(engines, repeats, warmup=3)
    one.stop()
    two.stop()
    return [
        f"| {name} | {ms['eager']:.2f} | {ms['one']:.2f} | {ms['two']:.2f} "
        f"| {ms['one'] / ms['two']:.2f}x |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="write the table to --out")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where --write puts the table")
    args = parser.parse_args()
    ensure_loaded()
    torch.manual_seed(0)
    cores = os.cpu_count() or 1
    x = torch.randn(args.seq, args.batch, 128)

    bilstm = nn.LSTM(128, 256, bidirectional=True).eval()
    grus = [nn.GRU(128, 192).eval() for _ in range(4)]

    def eager_multi(x):
        return torch.stack([g(x)[0] for g in grus]).sum(0)

    rows = measure(
        "bidirectional LSTM 128->256, split by direction",
        split_bilstm(bilstm),
        lambda x: bilstm(x)[0],
        x,
        args.repeats,
    )
    rows += measure(
        "4 GRU branches 128->192, summed", multi_branch(grus), eager_multi, x, args.repeats
    )
    lines = [
        "# Two CPU lanes against one",
        "",
        f"Command: `python bench/lanes.py {' '.join(sys.argv[1:])}`. seq {args.seq}, batch "
        f"{args.batch}, median of {args.repeats} interleaved rounds, {cores} cores, torch "
        f"{torch.__version__}. Each lane has {DEFAULT_CPU_THREADS} intra-op thread(s) (the "
        f"default); 2 lanes put independent recurrent nodes on different lanes; eager uses "
        f"torch's {torch.get_num_threads()} threads. H100 host figures (an earlier, sequential "
        "method): [lanes_h100_2026-11-25.md](lanes_h100_2026-11-25.md).",
        "",
        "| model | eager ms | 1 lane ms | 2 lanes ms | speedup 2 vs 1 |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
