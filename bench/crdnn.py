"""A CRDNN-like speech model through torch.compile(backend="chrion") against eager PyTorch and
inductor, in one process, interleaved after warm-up.

The model (defined here): two convolution blocks over (frames x features), each two 3x3 Conv2d
with BatchNorm and LeakyReLU then a max-pool over features, a 2-layer bidirectional LSTM of 256,
and a linear head with log-softmax; batch 4, 100 frames, 40 features (SpeechBrain's CRDNN, with
fewer channels). chrion runs with its default settings (lanes, threads); eager with torch's
default threads; inductor compiles the same nn.Module. The goal of issue 15: chrion <= 0.8x
eager. Prints medians and ratios; writes bench/results/crdnn.md only with --write.

    python bench/crdnn.py [--repeats 15] [--channels 64 128] [--no-inductor] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from torch_chrion.bench_peers import Engine, own_code, time_engines
from torch_chrion.dynamo import compiled_modules

ROOT = Path(__file__).resolve().parent.parent


class CRDNN(nn.Module):
    """Conv blocks over (frames, features), a bidirectional LSTM, a per-frame linear head."""

    def __init__(
        self,
        features: int = 40,
        channels: tuple[int, ...] = (64, 128),
        hidden: int = 256,
        layers: int = 2,
        classes: int = 40,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for c in channels:
            blocks += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.LeakyReLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.LeakyReLU(),
                nn.MaxPool2d((1, 2)),  # pool over features only: every frame stays
            ]
            c_in = c
        self.cnn = nn.Sequential(*blocks)
        reduced = features // 2 ** len(channels)
        self.rnn = nn.LSTM(c_in * reduced, hidden, layers, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, features: Tensor) -> Tensor:  # (batch, frames, features)
        x = self.cnn(features.unsqueeze(1))  # (batch, channels, frames, features')
        b, c, t, f = x.shape
        x = x.permute(0, 2, 1, 3).reshape(b, t, c * f)
        y, _ = self.rnn(x)
        return torch.log_softmax(self.head(y), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--no-inductor", action="store_true", help="leave inductor out")
    parser.add_argument("--write", action="store_true", help="save bench/results/crdnn.md")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = CRDNN(channels=tuple(args.channels)).eval()
    x = torch.randn(4, 100, 40)
    with torch.no_grad():
        expected = model(x)
        chrion = torch.compile(model, backend="chrion")
        began = time.perf_counter()
        torch.testing.assert_close(chrion(x), expected, rtol=1e-4, atol=1e-5)
        chrion_build_s = time.perf_counter() - began
        wide_nodes = sorted(node for m in compiled_modules() for node in (m.plan.wide or {}))
        engines = [Engine("eager", model, (x,)), Engine("chrion", chrion, (x,))]
        if not args.no_inductor:
            inductor = torch.compile(own_code(model))  # not chrion's forward: see own_code
            torch.testing.assert_close(inductor(x), expected, rtol=1e-4, atol=1e-5)
            engines.append(Engine("inductor", inductor, (x,)))
    load_before = os.getloadavg()[0]
    medians = time_engines(engines, args.repeats, args.warmup)
    load_after = os.getloadavg()[0]

    cpu = platform.processor() or platform.machine()
    lines = [
        f"# CRDNN-like model: chrion against eager and inductor ({cpu}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{datetime.date.today()})",
        "",
        f"Command: `python bench/crdnn.py {' '.join(sys.argv[1:])}`. Batch 4, 100 frames, 40 "
        f"features; conv channels {args.channels}, 2-layer BiLSTM 256. Median of "
        f"{args.repeats} interleaved rounds of three calls (each after a settled untimed block, "
        f"torch_chrion.bench_peers.time_engines) after {args.warmup} warm-up rounds; ratio = latency / "
        f"eager latency (< 1: faster than eager; the goal is chrion <= 0.8). chrion's first "
        f"call (capture, profile, plan, build) took {chrion_build_s:.1f} s. Load average "
        f"{load_before:.1f} before the timed rounds, {load_after:.1f} after (a shared machine: "
        f"where it exceeds the core count, two threads gain nothing and no node is placed wide)."
        f" chrion nodes placed wide: {wide_nodes or 'none'}.",
        "",
        "| engine | latency (ms) | ratio to eager |",
        "|---|---:|---:|",
    ]
    for name, ms in medians.items():
        lines.append(f"| {name} | {ms:.2f} | {ms / medians['eager']:.2f} |")
    print("\n".join(lines))
    if args.write:
        out = ROOT / "bench" / "results" / "crdnn.md"
        out.write_text("\n".join(lines) + "\n")
        print(f"-> {out}")


if __name__ == "__main__":
    main()
