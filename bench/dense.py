"""chrion::dense on CPU against the products it replaces and onnxruntime's, interleaved.

A linear layer with a constant weight (graph/passes/dense_products.py) runs as
``torch.ops.chrion.dense``, whose CPU kernel is the recurrent kernels' panel product against
the weight packed once (Note [CPU dense products] in csrc/kernels/dense.cpp). Per shape
(rows M, input features K, outputs N, with a bias), median microseconds of:

- chrion dense: ``torch.ops.chrion.dense(x, W, b)``;
- addmm: ``torch.addmm(b, x, W)``, what the graph ran before the pass (MKL);
- onednn: ``mkldnn._linear_pointwise`` against the weight reordered once
  (``mkldnn._reorder_linear_weight``), what the kernel ran for large products before;
- ort: onnxruntime running one ONNX MatMul + Add with the weight as an initializer, at its
  best of 1 and 2 intra-op threads.

Engines run in interleaved rounds of settled blocks (torch_chrion.bench_peers), at torch's
thread count (``--threads``, default 2). The rows: a decoder step's output layer (1 and 8
rows), a square 1024 layer (1 and 64 rows), a 10k-word vocabulary projection (1 and 128 rows),
a narrow 96-output layer over many rows.

    python bench/dense.py [--repeats 20] [--threads 2] [--write]

``--write`` saves the table to bench/results/dense.md; nothing is written otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cpu_rnn import cpu_name, load_average  # noqa: E402

from torch_chrion.bench_peers import Engine, time_engines  # noqa: E402
from torch_chrion.ops import ensure_loaded  # noqa: E402

# (rows, input features, outputs)
SHAPES = [
    (1, 512, 500),
    (8, 512, 500),
    (1, 1024, 1024),
    (64, 1024, 1024),
    (1, 512, 10000),
    (128, 512, 10000),
    (1024, 1024, 96),
]


def _ort(path: Path, x: torch.Tensor, threads: int) -> Engine:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Engine(f"ort {threads}t", lambda a: session.run(None, {"x": a}), (x.numpy(),))


def _export(path: Path, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> None:
    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(weight, requires_grad=False)
            self.bias = torch.nn.Parameter(bias, requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight + self.bias  # MatMul + Add against initializers

    torch.onnx.export(Layer(), (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])


def engines_for(m: int, k: int, n: int, folder: Path) -> list[Engine]:
    torch.manual_seed(0)
    x, weight, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
    reordered = torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous(), None)
    path = folder / f"dense_{m}x{k}x{n}.onnx"
    _export(path, weight, bias, x)
    ensure_loaded()
    return [
        Engine("chrion dense", torch.ops.chrion.dense, (x, weight, bias)),
        Engine("addmm", torch.addmm, (bias, x, weight)),
        Engine(
            "onednn",
            lambda a: torch.ops.mkldnn._linear_pointwise(a, reordered, bias, "none", [None], ""),
            (x,),
        ),
        _ort(path, x, 1),
        _ort(path, x, 2),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="save bench/results/dense.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = (
        "| M x K x N | chrion dense | addmm | onednn | ort best | vs addmm | vs onednn "
        "| vs ort best |"
    )
    lines = [header, "|---" + "|---:" * 7 + "|"]
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for m, k, n in SHAPES:
            us = {
                name: ms * 1e3
                for name, ms in time_engines(engines_for(m, k, n, Path(tmp)), args.repeats).items()
            }
            ort = min(us["ort 1t"], us["ort 2t"])
            chrion = us["chrion dense"]
            line = (
                f"| {m} x {k} x {n} | {chrion:.1f} | {us['addmm']:.1f} | {us['onednn']:.1f} "
                f"| {ort:.1f} | {chrion / us['addmm']:.2f}x | {chrion / us['onednn']:.2f}x "
                f"| {chrion / ort:.2f}x |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.write:
        text = [
            "# chrion::dense on CPU",
            "",
            f"CPU: {cpu_name()}, {torch.backends.cpu.get_cpu_capability()}, torch "
            f"{torch.__version__}, "
            f"{args.threads} intra-op threads (onnxruntime: its best of 1 and 2). Command: "
            f"`python bench/dense.py {' '.join(sys.argv[1:])}`; median microseconds of "
            f"{args.repeats} interleaved rounds of settled blocks; ratios are chrion dense / "
            f"peer (< 1: chrion faster). Load average {load_average()} at the end (a shared machine).",
            "",
            *lines,
            "",
        ]
        out = ROOT / "bench" / "results" / "dense.md"
        out.write_text("\n".join(text))
        print(f"-> {out}")


if __name__ == "__main__":
    main()
