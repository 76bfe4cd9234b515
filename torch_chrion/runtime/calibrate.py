"""What the executor itself costs on this machine, measured once per process.

A profile times each operator as the lane runs it (the step's traced span), so what lies
between steps is not in it: the dependency counts and the hand-off to the lane's next step, the
wake-up of another lane's thread when a consumer lives there, and the call's own entry and exit
(Python wrapper, scheduling the first steps, waking the caller). These are measured here on
chains of tiny operators and given to the simulator (``ExecutorCosts``), so that a plan predicts
what the executor will take, not what its operators take.

Three chains of a one-element ``neg``: one step, ``N`` steps on one lane, and ``N`` steps
alternating between two lanes. With ``d`` the traced span of one step:
``T_1 = call + d + step``, ``T_N - T_1 = (N - 1)(d + step)``, and the alternating chain pays
``handoff`` more per step.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..schedule.simulate import ExecutorCosts

if TYPE_CHECKING:
    from .placed_graph import PlacedGraph

_CHAIN = 48
_WARMUP = 30
_REPEATS = 151


def _chain(length: int) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    value = graph.placeholder("x")
    for _ in range(length):
        value = graph.call_function(torch.ops.aten.neg.default, (value,))
    graph.output(value)
    return torch.fx.GraphModule(torch.nn.Module(), graph)


def _median_call_ms(placed: PlacedGraph, x: torch.Tensor) -> float:
    for _ in range(_WARMUP):
        placed(x)
    times = []
    for _ in range(_REPEATS):
        start = time.perf_counter()
        placed(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _median_span_ms(placed: PlacedGraph, x: torch.Tensor) -> float:
    placed.enable_trace(True)
    spans = []
    for _ in range(_WARMUP):
        placed(x)
        spans += [(e.end_us - e.start_us) / 1e3 for e in placed.last_trace()]
    placed.enable_trace(False)
    return statistics.median(spans)


def executor_costs(devices: Sequence[str] = ("cpu:0", "cpu:1")) -> ExecutorCosts:
    """The executor's fixed costs per step, per cross-lane hand-off and per call, in ms,
    measured once per process on the CPU lanes of ``devices`` (the first one alone for the
    chains, the first two alternating; "cpu" when there is none).

    The chains are timed in interleaved rounds, so a load burst on a shared machine slows them
    alike. Takes about a second.
    """
    cpu = tuple(d for d in devices if d.startswith("cpu"))[:2]
    return _measure(cpu or ("cpu",))


@functools.cache
def _measure(lanes: tuple[str, ...]) -> ExecutorCosts:
    from .placed_graph import PlacedGraph

    x = torch.ones(1)
    one, chain = _chain(1), _chain(_CHAIN)
    names = [n.name for n in chain.graph.nodes if n.op == "call_function"]
    first = [n.name for n in one.graph.nodes if n.op == "call_function"]
    placed = {
        "one": PlacedGraph(one, dict.fromkeys(first, lanes[0])),
        "chain": PlacedGraph(chain, dict.fromkeys(names, lanes[0])),
    }
    if len(lanes) > 1:
        alternating = {name: lanes[k % 2] for k, name in enumerate(names)}
        placed["alternating"] = PlacedGraph(chain, alternating)
    try:
        span = _median_span_ms(placed["chain"], x)
        rounds: dict[str, list[float]] = {k: [] for k in placed}
        for _ in range(5):
            for key, module in placed.items():
                rounds[key].append(_median_call_ms(module, x))
        t = {k: statistics.median(v) for k, v in rounds.items()}
    finally:
        for module in placed.values():
            module.stop()
    per_step = (t["chain"] - t["one"]) / (_CHAIN - 1)
    step = max(per_step - span, 0.0)
    call = max(t["one"] - span - step, 0.0)
    handoff = 0.0
    if "alternating" in t:
        handoff = max((t["alternating"] - t["one"]) / (_CHAIN - 1) - per_step, 0.0)
    return ExecutorCosts(step_ms=step, handoff_ms=handoff, call_ms=call)
