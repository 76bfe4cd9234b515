"""CPU recurrent-layer latency: torch_chrion against the CPU engines its users would pick.

Each row is one model (LSTM, GRU or RNN; 1-3 layers; uni- or bidirectional; hidden 128-1024;
sequence 16-256; batch 1, 8, 32; 64 input features), exported to ONNX and run, in one process,
interleaved round by round (a load burst on this shared machine slows every engine alike), by:

- ``chrion onnx``: ``torch_chrion.load_onnx(path)`` with its defaults (two 1-thread CPU lanes);
- ``chrion compile``: ``torch.compile(model, backend="chrion")`` with its defaults;
- ``chrion 1x2t``: ``load_onnx(path, devices=["cpu"], cpu_threads=2)``, one CPU lane with two
  intra-op threads, over which the recurrent kernel splits each step's hidden units (or a
  bidirectional layer's two directions); the default plan gets the same threads by placing a
  layer wide over its two lanes where its profile finds that faster (the nodes it placed wide
  are listed under the table);
- ``chrion ops``: the converted ONNX module run eagerly on the calling thread
  (``torch_chrion.onnx.to_fx``): chrion's recurrent kernels with torch's threads and no
  executor, to tell the kernels' time from the executor's;
- ``chrion bf16``: ``load_onnx(path, recurrent_dtype="bfloat16")``, otherwise the defaults:
  W_hh in bfloat16 and the hidden state rounded to it for the recurrent product, so NOT the
  float32 result: outputs within ~1e-2 of it (README, ``recurrent_dtype``);
- ``ort 1t`` / ``ort 2t``: onnxruntime's CPU provider at 1 and 2 intra-op threads
  (``ort best`` is the faster of the two for that row);
- ``openvino f32``: ``openvino.compile_model(path, "CPU")`` with ``INFERENCE_PRECISION_HINT``
  f32, its float32 result, the peer of chrion's float32 columns;
- ``openvino bf16``: the same with OpenVINO's default precision where that default is not f32:
  on a CPU with AVX512-BF16 or AMX, OpenVINO runs in bfloat16 unless told otherwise, so its
  default is the peer of ``chrion bf16``, not of chrion's float32 (no column where the
  default is f32);
- ``eager``: the PyTorch module itself (torch's default threads);
- ``inductor``: ``torch.compile(model)`` of that same user module (not of chrion's graph), with
  a forward of its own (``bench_peers.own_code``).

Medians (ms) after warm-up; ratios are chrion onnx's latency over a peer's (< 1: chrion faster),
and chrion bf16's over onnxruntime's best and over chrion onnx.
The issue's targets: chrion <= 0.8x onnxruntime's best at batch 1, <= 1.0x on every row, and
<= 0.5x eager on every row.

    python bench/cpu_rnn.py [--repeats 20] [--rows 0 1 2] [--write]

``--write`` saves the table to bench/results/cpu_rnn.md; nothing is written otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torch_chrion.bench_peers import Engine, own_code, time_engines  # noqa: E402

FEATURES = 64
MODULES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}


@dataclass(frozen=True)
class Row:
    kind: str  # LSTM, GRU or RNN (tanh)
    layers: int
    hidden: int
    bidirectional: bool
    batch: int
    steps: int
    head: bool = False  # a Linear layer on the recurrent output

    @property
    def name(self) -> str:
        bi = "Bi" if self.bidirectional else ""
        head = " + Linear" if self.head else ""
        return f"{bi}{self.kind} {self.layers}x{self.hidden}{head} ({self.batch}, {self.steps})"


# the five rows first, then a spread over the rest of the grid
ROWS = [
    Row("LSTM", 2, 256, False, 1, 32),
    Row("GRU", 2, 256, False, 1, 32),
    Row("LSTM", 2, 128, True, 8, 64),
    Row("LSTM", 1, 512, False, 1, 100),
    Row("GRU", 3, 256, True, 16, 50, head=True),
    Row("RNN", 1, 1024, False, 1, 64),
    Row("GRU", 1, 1024, False, 1, 16),
    Row("RNN", 2, 256, True, 8, 256),
    Row("LSTM", 3, 128, False, 32, 128),
    Row("GRU", 1, 512, True, 32, 16),
]


class Recurrent(nn.Module):
    """One recurrent layer stack, time-major input (seq, batch, features), optional head."""

    def __init__(self, row: Row) -> None:
        super().__init__()
        self.rnn = MODULES[row.kind](
            FEATURES, row.hidden, num_layers=row.layers, bidirectional=row.bidirectional
        )
        width = row.hidden * (2 if row.bidirectional else 1)
        self.head = nn.Linear(width, 32) if row.head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rnn(x)[0]
        return self.head(out) if self.head is not None else out


def _onnx_engines(path: Path, x: torch.Tensor) -> list[tuple[str, Callable[[], Engine]]]:
    def ort(threads: int) -> Callable[[], Engine]:
        def make() -> Engine:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
            name = session.get_inputs()[0].name
            return Engine(f"ort {threads}t", lambda a: session.run(None, {name: a}), (x.numpy(),))

        return make

    def openvino(precision: str | None) -> Callable[[], Engine]:
        def make() -> Engine:
            import openvino as ov
            import openvino.properties.hint as hint

            core = ov.Core()
            if (
                precision is None
                and core.get_property("CPU", hint.inference_precision) == ov.Type.f32
            ):
                raise RuntimeError("not run: OpenVINO defaults to f32 on this CPU (the f32 column)")
            config = {} if precision is None else {hint.inference_precision: precision}
            compiled = core.compile_model(str(path), "CPU", config)
            request = compiled.create_infer_request()
            name = f"openvino {precision or 'bf16'}"
            return Engine(name, lambda a: request.infer([a]), (x.numpy(),))

        return make

    return [
        ("ort 1t", ort(1)),
        ("ort 2t", ort(2)),
        ("openvino f32", openvino("f32")),
        ("openvino bf16", openvino(None)),
    ]


def engines_for(
    row: Row, folder: Path, only: set[str] | None = None
) -> tuple[list[Engine], list[str]]:
    """The row's engines (those named in ``only``, else all) and the ones that failed."""
    import torch_chrion

    # each row compiles a new module of the same class: start dynamo afresh, or its recompile
    # limit would make later rows fall back to eager without saying so
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Recurrent(row).eval()
    x = torch.randn(row.steps, row.batch, FEATURES)
    path = folder / f"{row.kind}{row.layers}x{row.hidden}.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])

    def chrion_onnx() -> Engine:
        return Engine("chrion onnx", torch_chrion.load_onnx(str(path), example_inputs=[x]), (x,))

    def chrion_wide() -> Engine:
        module = torch_chrion.load_onnx(
            str(path), example_inputs=[x], devices=["cpu"], cpu_threads=2
        )
        return Engine("chrion 1x2t", module, (x,))

    def chrion_ops() -> Engine:
        from torch_chrion import onnx as chrion_onnx

        return Engine("chrion ops", chrion_onnx.to_fx(chrion_onnx.load_model(str(path))), (x,))

    def chrion_bf16() -> Engine:
        module = torch_chrion.load_onnx(str(path), example_inputs=[x], recurrent_dtype="bfloat16")
        return Engine("chrion bf16", module, (x,))

    def chrion_compile() -> Engine:
        return Engine("chrion compile", torch.compile(model, backend="chrion"), (x,))

    def inductor() -> Engine:
        # its own forward: inductor's graph break at the recurrent layer marks the forward it
        # compiles skipped for every backend, which left "chrion compile" eager (own_code)
        return Engine("inductor", torch.compile(own_code(model)), (x,))

    makers = [
        ("chrion onnx", chrion_onnx),
        ("chrion compile", chrion_compile),
        ("chrion 1x2t", chrion_wide),
        ("chrion ops", chrion_ops),
        ("chrion bf16", chrion_bf16),
        *_onnx_engines(path, x),
        ("eager", lambda: Engine("eager", model, (x,))),
        ("inductor", inductor),
    ]
    engines: list[Engine] = []
    failed: list[str] = []
    for name, make in makers:
        if only is not None and name not in only:
            continue
        try:
            engine = make()
            with torch.no_grad():
                engine.run(*engine.inputs)  # compile / check outside the timed rounds
            engines.append(engine)
        except Exception as exc:  # a peer that cannot run a row is a result, not a crash
            failed.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    return engines, failed


def table_line(row: Row, ms: dict[str, float]) -> str:
    """The row's markdown line: each engine's median, chrion onnx over ort best / openvino f32 /
    eager, then chrion bf16 over ort best / openvino bf16 / chrion onnx."""
    ort = [ms[k] for k in ("ort 1t", "ort 2t") if k in ms]
    if ort:
        ms = {**ms, "ort best": min(ort)}

    def cell(key: str) -> str:
        return f"{ms[key]:.2f}" if key in ms else "-"

    def ratio(key: str, of: str = "chrion onnx") -> str:
        return f"{ms[of] / ms[key]:.2f}x" if of in ms and key in ms else "-"

    engines = (
        "chrion onnx",
        "chrion compile",
        "chrion 1x2t",
        "chrion ops",
        "chrion bf16",
        "ort 1t",
        "ort 2t",
        "openvino f32",
        "openvino bf16",
        "eager",
        "inductor",
    )
    return (
        f"| {row.name} | "
        + " | ".join(
            [
                *(cell(k) for k in engines),
                ratio("ort best"),
                ratio("openvino f32"),
                ratio("eager"),
                ratio("ort best", of="chrion bf16"),
                ratio("openvino bf16", of="chrion bf16"),
                ratio("chrion onnx", of="chrion bf16"),
            ]
        )
        + " |"
    )


def placed_wide(engines: list[Engine]) -> str:
    """The nodes the default plan placed wide (on both CPU lanes at once), or "none"."""
    module = next((e.run for e in engines if e.name == "chrion onnx"), None)
    wide = sorted(getattr(getattr(module, "plan", None), "wide", None) or {})
    return ", ".join(wide) or "none"


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rows", type=int, nargs="+", help="row indices (default: all)")
    parser.add_argument("--write", action="store_true", help="save bench/results/cpu_rnn.md")
    args = parser.parse_args()
    rows = [ROWS[i] for i in args.rows] if args.rows else ROWS
    header = (
        "| model (batch, seq) | chrion onnx | chrion compile | chrion 1x2t | chrion ops "
        "| chrion bf16 | ort 1t | ort 2t | openvino f32 | openvino bf16 | eager | inductor "
        "| vs ort best | vs openvino f32 | vs eager | bf16 vs ort best | bf16 vs openvino bf16 "
        "| bf16 vs chrion onnx |"
    )
    lines = [header, "|---" + "|---:" * 17 + "|"]
    notes: list[str] = []
    wide: list[str] = []  # what the default plan placed wide, per row
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            engines, failed = engines_for(row, Path(tmp))
            ms = time_engines(engines, args.repeats)
            line = table_line(row, ms)
            lines.append(line)
            notes += [f"- {row.name}: {f}" for f in failed]
            wide.append(f"- {row.name}: {placed_wide(engines)}")
            print(line, flush=True)
    for note in ["chrion onnx placed wide:", *wide, *notes]:
        print(note)
    if args.write:
        text = [
            "# CPU recurrent latency",
            "",
            f"CPU: {cpu_name()}, {torch.backends.cpu.get_cpu_capability()} "
            f"({torch.get_num_threads()} threads for torch), torch "
            f"{torch.__version__}. Command: `python bench/cpu_rnn.py {' '.join(sys.argv[1:])}`; "
            f"median of {args.repeats} interleaved rounds after warm-up, milliseconds. "
            f"{FEATURES} input features; ratios are chrion onnx / peer (< 1: chrion faster), the "
            "last three chrion bf16 / peer (bfloat16 W_hh: within ~1e-2 of float32's outputs). "
            f"Load average when written: {load_average()} on {os.cpu_count()} CPUs (the "
            "machine is shared: compare ratios within a row, not rows across runs).",
            "",
            *lines,
            "",
            "Nodes the default plan (chrion onnx) placed wide:",
            "",
            *wide,
            "",
            *(["Engines that failed:", "", *notes, ""] if notes else []),
        ]
        out = ROOT / "bench" / "results" / "cpu_rnn.md"
        out.write_text("\n".join(text))
        print(f"-> {out}")


if __name__ == "__main__":
    main()
