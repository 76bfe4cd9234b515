"""Time one ONNX model on torch_chrion and on the engines its users run today, in one process:
eager PyTorch (the onnx2torch module) on CPU and GPU, torch.compile (inductor) and onnxruntime.
Used by ``chrion bench``, ``chrion demo`` and the benchmarks in bench/.

torch.compile compiles what a user would: their own nn.Module where the caller has it (bench/
end_to_end.py exports its models from nn.Modules), else, for a model that exists only as ONNX,
the onnx2torch module of it (the row's name says which).

Engines are timed in interleaved rounds (a block of calls of each per round, see
``time_engines``), so a load burst on a shared machine slows them all alike instead of whichever
engine happened to be running.
"""

from __future__ import annotations

import functools
import statistics
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .settings import ChrionSettings

Row = tuple[str, float | None, str]


@dataclass
class Engine:
    """One way of running the model: a callable, its inputs, and whether it runs on CUDA."""

    name: str
    run: Callable[..., Any]
    inputs: tuple
    cuda: bool = False


def own_code(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (sharing its submodules and weights) with a forward of its own code object, for
    a second torch.compile backend in the same process. Dynamo keeps its caches, and its mark
    "skip this code", per code object, for every backend alike: a backend that cannot trace the
    forward (inductor stops at nn.LSTM/GRU/RNN, as Dynamo does by default) marks it skipped, and
    every other backend's compiled forward then runs eagerly as well (chrion's included)."""
    forward = type(model).forward
    clone = types.FunctionType(
        forward.__code__.replace(), forward.__globals__, "forward", forward.__defaults__
    )
    copy = type(f"{type(model).__name__}Copy", (type(model),), {"forward": clone})
    own = copy.__new__(copy)
    own.__dict__.update(model.__dict__)
    return own


def _call_ms(engine: Engine) -> float:
    start = time.perf_counter()
    engine.run(*engine.inputs)
    if engine.cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


# Note [Settled blocks]
# Engines leave threads spinning after a call returns: libgomp's OpenMP pool spins for
# milliseconds after eager PyTorch or MKL work, and onnxruntime's 2-thread pool keeps a core
# busy for ~60 ms of wall time after its last run on this 2-core machine. The next engine's
# first calls would share the cores with those spinners and be charged for another engine's
# threads, so each engine is timed only after its own untimed calls have run for twice that:
# with 60 ms, the engine timed right after onnxruntime ran 0.3-0.5 ms slower per 2-4 ms call
# than with 150 ms (the same model, interleaved).
SETTLE_MS = 120.0


def settle(call: Callable[[], Any], settle_ms: float = SETTLE_MS) -> None:
    """Untimed calls of ``call`` for at least ``settle_ms`` (and at least one), so that the
    threads another engine left spinning have parked (Note [Settled blocks])."""
    start = time.perf_counter()
    call()
    while (time.perf_counter() - start) * 1e3 < settle_ms:
        call()


def time_rounds(
    engines: list[Engine],
    repeats: int,
    warmup: int = 2,
    settle_ms: float = SETTLE_MS,
    calls: int = 3,
) -> dict[str, list[list[float]]]:
    """Wall-clock milliseconds of each engine's timed calls, one list per round, timed in
    interleaved rounds: round r of every engine ran in the same seconds.

    Each round gives every engine in turn a block: untimed calls for at least ``settle_ms``
    (and at least one), then ``calls`` timed calls. The untimed part is there because engines
    leave threads spinning after they return (Note [Settled blocks]). ``warmup`` rounds are
    untimed.
    """
    rounds: dict[str, list[list[float]]] = {e.name: [] for e in engines}
    with torch.no_grad():
        for round_index in range(warmup + repeats):
            for engine in engines:
                settle(functools.partial(_call_ms, engine), settle_ms)
                block = [_call_ms(engine) for _ in range(calls)]
                if round_index >= warmup:
                    rounds[engine.name].append(block)
    return rounds


def time_engines(
    engines: list[Engine],
    repeats: int,
    warmup: int = 2,
    settle_ms: float = SETTLE_MS,
    calls: int = 3,
) -> dict[str, float]:
    """Median wall-clock milliseconds per call of each engine, timed in interleaved rounds
    (``time_rounds``)."""
    rounds = time_rounds(engines, repeats, warmup, settle_ms, calls)
    return {
        name: statistics.median(t for block in blocks for t in block)
        for name, blocks in rounds.items()
    }


def time_ms(
    fn: Callable[..., Any], inputs: tuple, repeats: int, sync_cuda: bool = False, warmup: int = 2
) -> float:
    """Median wall-clock milliseconds of ``fn(*inputs)`` after ``warmup`` untimed calls."""
    return time_engines([Engine("fn", fn, inputs, sync_cuda)], repeats, warmup)["fn"]


def _build(name: str, make: Callable[[], Engine], engines: list[Engine], failed: list[Row]) -> None:
    try:
        engine = make()
        with torch.no_grad():
            _call_ms(engine)  # an engine that cannot run the model fails here, not mid-rounds
        engines.append(engine)
    except Exception as exc:  # a peer that cannot run this model is a result, not a crash
        failed.append(
            (name, None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
        )


def run_peers(
    model_path: str,
    shapes: dict[str, list[int]],
    settings: ChrionSettings,
    repeats: int = 20,
    module: torch.nn.Module | None = None,
) -> list[Row]:
    """Rows (engine, median ms or None, note), torch_chrion first.

    Args:
        module: the nn.Module the ONNX file was exported from, if there is one: what the
            torch.compile peer compiles (else the onnx2torch module).
    """
    from . import onnx as chrion_onnx
    from .api import compile_onnx, example_inputs_for

    proto = chrion_onnx.load_model(model_path)
    inputs = example_inputs_for(proto, shapes)
    chrion = compile_onnx(proto, inputs, settings)
    uses_cuda = any(d.startswith("cuda") for d in chrion.devices)
    engines = [Engine(f"chrion ({'+'.join(chrion.devices)})", chrion, inputs, uses_cuda)]
    failed: list[Row] = []
    eager = chrion_onnx.to_fx(proto).eval()
    _build("eager cpu", lambda: Engine("eager cpu", eager, inputs), engines, failed)
    if torch.cuda.is_available():
        _build(
            "eager cuda",
            lambda: Engine(
                "eager cuda",
                chrion_onnx.to_fx(proto).eval().cuda(),
                tuple(x.cuda() for x in inputs),
                True,
            ),
            engines,
            failed,
        )

    source = "nn.Module" if module is not None else "onnx2torch module"
    inductor_name = f"torch.compile inductor cpu ({source})"

    def inductor() -> Engine:
        user_model = (module if module is not None else chrion_onnx.to_fx(proto)).eval()
        return Engine(inductor_name, torch.compile(user_model), inputs)

    _build(inductor_name, inductor, engines, failed)

    def onnxruntime_engine(name: str, provider: str) -> Callable[[], Engine]:
        def make() -> Engine:
            import onnxruntime

            session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=[provider])
            names = [i.name for i in session.get_inputs()]
            arrays = tuple(x.numpy() for x in inputs)
            return Engine(
                name, lambda *xs: session.run(None, dict(zip(names, xs, strict=True))), arrays
            )

        return make

    _build(
        "onnxruntime cpu",
        onnxruntime_engine("onnxruntime cpu", "CPUExecutionProvider"),
        engines,
        failed,
    )
    if torch.cuda.is_available():
        _build(
            "onnxruntime cuda",
            onnxruntime_engine("onnxruntime cuda", "CUDAExecutionProvider"),
            engines,
            failed,
        )
    medians = time_engines(engines, repeats)
    return [(e.name, medians[e.name], "") for e in engines] + failed
