"""The ``chrion`` command line."""

from __future__ import annotations

import argparse
import sys
import time

from .errors import ChrionError


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .ops import ensure_loaded

    ensure_loaded()
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(64, 128, num_layers=2, bidirectional=True).eval()
    x = torch.randn(32, 1, 64)
    h0 = torch.zeros(4, 1, 128)
    with torch.no_grad():
        start = time.perf_counter()
        ref, (ref_h, _) = lstm(x, (h0, h0))
        eager_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        out, h, _ = torch.ops.chrion.lstm(
            x, h0, h0, lstm._flat_weights, True, 2, True, False, False
        )
        chrion_ms = (time.perf_counter() - start) * 1e3
    err = max((out - ref).abs().max().item(), (h - ref_h).abs().max().item())
    print("chrion demo: 2-layer bidirectional LSTM (64 -> 128), sequence 32, batch 1")
    print(
        f"  chrion::lstm through the dispatcher: {chrion_ms:.2f} ms, eager nn.LSTM: {eager_ms:.2f} ms"
    )
    print(f"  max |difference| against eager: {err:.2e}")
    print("  (placeholder: planning and the CPU/GPU executor join this demo as they land)")
    return 0 if err < 1e-5 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chrion", description="Serve recurrent models on the host CPU and the GPU at once."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="run a bundled recurrent model end to end")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ChrionError as exc:
        print(f"chrion {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
