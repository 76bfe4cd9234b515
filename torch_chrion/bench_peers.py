"""Time one ONNX model on torch_chrion and on the engines its users run today, in one process:
eager PyTorch (the onnx2torch module) on CPU and GPU, torch.compile (inductor) and onnxruntime.
Used by ``chrion bench`` and the benchmarks in bench/."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .settings import ChrionSettings

Row = tuple[str, float | None, str]


def time_ms(fn: Callable[..., Any], inputs: tuple, repeats: int, sync_cuda: bool = False) -> float:
    """Median wall-clock milliseconds of ``fn(*inputs)`` after two warm-up calls."""
    with torch.no_grad():
        for _ in range(2):
            fn(*inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*inputs)
            if sync_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _attempt(
    name: str, make: Callable[[], tuple[Callable[..., Any], tuple, bool]], repeats: int
) -> Row:
    try:
        fn, inputs, cuda = make()
        return name, time_ms(fn, inputs, repeats, sync_cuda=cuda), ""
    except Exception as exc:  # a peer that cannot run this model is a result, not a crash
        return name, None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"


def run_peers(
    model_path: str, shapes: dict[str, list[int]], settings: ChrionSettings, repeats: int = 20
) -> list[Row]:
    from . import graph
    from . import onnx as chrion_onnx
    from .api import compile_onnx, example_inputs_for

    proto = chrion_onnx.load_model(model_path)
    inputs = example_inputs_for(proto, shapes)
    chrion = compile_onnx(proto, inputs, settings)
    uses_cuda = any(d.startswith("cuda") for d in chrion.devices)
    rows: list[Row] = [
        (
            f"chrion ({'+'.join(chrion.devices)})",
            time_ms(chrion, inputs, repeats, sync_cuda=uses_cuda),
            "",
        )
    ]
    eager = chrion_onnx.to_fx(proto).eval()
    rows.append(_attempt("eager cpu", lambda: (eager, inputs, False), repeats))
    if torch.cuda.is_available():

        def eager_gpu() -> tuple:
            return chrion_onnx.to_fx(proto).eval().cuda(), tuple(x.cuda() for x in inputs), True

        rows.append(_attempt("eager cuda", eager_gpu, repeats))

    def inductor() -> tuple:
        aten = graph.capture(eager, inputs, granularity="op")
        return torch.compile(aten), inputs, False

    rows.append(_attempt("torch.compile inductor cpu", inductor, repeats))

    def onnxruntime_session(provider: str) -> Callable[[], tuple]:
        def make() -> tuple:
            import onnxruntime

            session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=[provider])
            names = [i.name for i in session.get_inputs()]
            arrays = tuple(x.numpy() for x in inputs)
            return (lambda *xs: session.run(None, dict(zip(names, xs, strict=True)))), arrays, False

        return make

    rows.append(_attempt("onnxruntime cpu", onnxruntime_session("CPUExecutionProvider"), repeats))
    if torch.cuda.is_available():
        rows.append(
            _attempt("onnxruntime cuda", onnxruntime_session("CUDAExecutionProvider"), repeats)
        )
    return rows
