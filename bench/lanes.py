"""Two CPU lanes against one, on recurrent models with independent branches: a bidirectional
LSTM split by direction (a forward and a reverse chrion.lstm node that can run at once) and a
multi-branch GRU model (four GRUs over the same input, summed).

    python bench/lanes.py [--repeats 20] [--seq 64] [--batch 4]

"1 lane" gets every core as intra-op threads; "2 lanes" splits them (cores / 2 each) and
puts independent branches on different lanes. Writes bench/results/lanes.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.bench_peers import time_ms
from torch_chrion.ops import ensure_loaded
from torch_chrion.runtime import PlacedGraph
from torch_chrion.runtime.lowering import is_schedulable

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


def measure(name: str, f, eager, x, cores: int, repeats: int) -> list[str]:
    with torch.no_grad():
        gm = make_fx(f, tracing_mode="real")(x)
    one = PlacedGraph(gm, branch_placement(gm, ["cpu"]), cpu_threads=cores)
    two = PlacedGraph(gm, branch_placement(gm, ["cpu:0", "cpu:1"]), cpu_threads=max(1, cores // 2))
    with torch.no_grad():
        expected = eager(x)
    for m in (one, two):
        torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        eager_ms = time_ms(eager, (x,), repeats, warmup=3)
    one_ms = time_ms(one, (x,), repeats, warmup=3)
    two_ms = time_ms(two, (x,), repeats, warmup=3)
    one.stop()
    two.stop()
    return [f"| {name} | {eager_ms:.2f} | {one_ms:.2f} | {two_ms:.2f} | {one_ms / two_ms:.2f}x |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the table")
    args = parser.parse_args()
    ensure_loaded()
    torch.manual_seed(0)
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
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
        cores,
        args.repeats,
    )
    rows += measure(
        "4 GRU branches 128->192, summed", multi_branch(grus), eager_multi, x, cores, args.repeats
    )
    lines = [
        "# Two CPU lanes against one",
        "",
        f"seq {args.seq}, batch {args.batch}, median of {args.repeats} calls, {cores} cores, "
        f"torch {torch.__version__}. 1 lane: {cores} intra-op threads; 2 lanes: "
        f"{max(1, cores // 2)} each, independent recurrent nodes on different lanes.",
        "",
        "| model | eager ms | 1 lane ms | 2 lanes ms | speedup 2 vs 1 |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
