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
``handoff`` more per step. Lanes and callers poll before they park (Note [Chrion spin before
park] in csrc/executor/lane.h), so those hand-offs find the other lane polling; the alternating
chain is timed once more with the lanes parking at once, where each of its ``N - 1`` hand-offs
and the caller's own wait pay ``wake`` more: that is what a parked thread costs.

A call longer than the spin (every call of a real model) finds its threads parked for longer:
its caller parks while the steps run, and the lanes park in the time from one call's last step
to the next call's first. What that costs is measured on a call that long, of ``B`` steps of
``tanh`` on one lane, from the time its traced steps leave uncovered:
``gap_B = call + B * step + wake_long`` against ``gap_1 = call + step`` for the one-step call;
the simulator charges it to calls that outlast the spin (``caller_wake_ms``).

A plan that runs inline (Note [Chrion inline requests] in csrc/executor/executor.cpp) has
neither the hand-off to a lane nor the caller's wait: its call cost is measured on the one-step
chain on a lane with the caller's thread count, which the caller then runs itself:
``T_inline = inline_call + d + step``.

The caller runs the wide steps of a plan in its own OpenMP team (Note [Chrion caller lane] in
csrc/executor/executor.cpp), whose other threads poll for the next parallel region after each
(libgomp's spin-wait), holding cores the lanes' threads may need. How long they poll is the CPU
time the process burns while its thread sleeps right after a region, per thread of the team
(the least of a few tries: other threads only add to it); libgomp's default polled ~8 ms here.

The lanes' threads get the cores that other processes leave free, which on a shared machine
may be fewer than the lanes: two chains of ``tanh`` steps of some tens of us each, side by side
on two lanes, against one of them alone, give the cores they had between them (two chains of
work ``W`` on ``c`` cores take ``2W / c``; two or more: the lanes were not short of cores).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..schedule.simulate import ExecutorCosts
from .lanes import DEFAULT_CPU_THREADS

if TYPE_CHECKING:
    from .placed_graph import PlacedGraph

_CHAIN = 48
_WARMUP = 30
_REPEATS = 151
# the chains that find the cores: steps long enough that the executor's own costs are small
_BUSY_STEPS = 16
_BUSY_ELEMENTS = 1 << 14  # tanh of this many floats: tens of us, compute-bound, one grain
_BUSY_REPEATS = 41
# the sleep after a parallel region that shows its team's polling, the tries, and the elements of
# a tanh that ATen splits over the team
_TEAM_SLEEP_S = 0.02
_TEAM_TRIES = 5
_TEAM_ELEMENTS = 1 << 18
# fewer cores than this for two lanes is a shortage; above it, the pair's quietest round still
# varied between quiet runs (1.86-2.0 cores here), which is noise, not a shortage
_SHORT_OF_CORES = 1.75


def _chain(
    length: int, op: object = torch.ops.aten.neg.default, count: int = 1
) -> torch.fx.GraphModule:
    """``count`` independent chains of ``length`` calls of ``op`` on the input (one output per
    chain)."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    ends = []
    for _ in range(count):
        value = x
        for _ in range(length):
            value = graph.call_function(op, (value,))  # type: ignore[arg-type]
        ends.append(value)
    graph.output(ends[0] if count == 1 else tuple(ends))
    return torch.fx.GraphModule(torch.nn.Module(), graph)


def _median_call_ms(
    placed: PlacedGraph, x: torch.Tensor, spin_us: float, repeats: int, gap: bool
) -> tuple[float, float]:
    """Median ms of a call of ``placed`` with lanes and caller polling ``spin_us`` before
    they park, and with ``gap`` of the part of a call that its traced steps leave uncovered
    (else nan)."""
    from .placed_graph import spin_before_park

    with spin_before_park(spin_us):
        try:
            for _ in range(_WARMUP):
                placed(x)
            times, gaps = [], [math.nan]
            for traced in (False, True) if gap else (False,):
                placed.enable_trace(traced)
                for _ in range(repeats):
                    start = time.perf_counter()
                    placed(x)
                    took = time.perf_counter() - start
                    if traced:
                        # the raw events (ns): converting them would keep the lanes waiting
                        # longer between calls than back-to-back calls do
                        raw = placed._executor.last_trace()
                        steps = sum(end - begin for *_, begin, end in raw) / 1e9
                        gaps.append(took - steps)
                    else:
                        times.append(took)
        finally:
            placed.enable_trace(False)
    return statistics.median(times) * 1e3, statistics.median(gaps) * 1e3


def _median_span_ms(placed: PlacedGraph, x: torch.Tensor) -> float:
    placed.enable_trace(True)
    spans = []
    for _ in range(_WARMUP):
        placed(x)
        spans += [(e.end_us - e.start_us) / 1e3 for e in placed.last_trace()]
    placed.enable_trace(False)
    return statistics.median(spans)


def executor_costs(
    devices: Sequence[str] = ("cpu:0", "cpu:1"), cpu_threads: int | None = None
) -> ExecutorCosts:
    """The executor's fixed costs per step, per cross-lane hand-off and per call, in ms,
    measured once per process on the CPU lanes of ``devices`` (the first one alone for the
    chains, the first two alternating; "cpu" when there is none), for CPU lanes of
    ``cpu_threads`` threads each (None: the default): a plan on as many of them as make the
    caller's thread count runs inline.

    The chains are timed in interleaved rounds, so a load burst on a shared machine slows them
    alike. Takes about a second.
    """
    cpu = tuple(d for d in devices if d.startswith("cpu"))[:2]
    threads = cpu_threads or DEFAULT_CPU_THREADS
    caller = torch.get_num_threads()
    return dataclasses.replace(
        _measure(cpu or ("cpu",)),
        inline_lanes=caller // threads if caller % threads == 0 else 0,
        team_spin_ms=team_spin_ms(caller),
    )


@functools.cache
def team_spin_ms(threads: int) -> float:
    """How long, in ms, the other threads of the calling thread's OpenMP team of ``threads``
    poll after a parallel region (module docstring); at most the sleep that shows it."""
    if threads < 2:
        return 0.0
    x = torch.rand(_TEAM_ELEMENTS)
    burnt = math.inf
    for _ in range(_TEAM_TRIES):
        torch.tanh(x)
        start = time.process_time()
        time.sleep(_TEAM_SLEEP_S)
        burnt = min(burnt, time.process_time() - start)
    return min(burnt / (threads - 1), _TEAM_SLEEP_S) * 1e3


@functools.cache
def _measure(lanes: tuple[str, ...]) -> ExecutorCosts:
    from .placed_graph import PlacedGraph, executor_extension

    def placed_graph(gm: torch.fx.GraphModule, placement: dict[str, str]) -> PlacedGraph:
        # every neg its own step: chains of elementwise steps would fuse into one
        return PlacedGraph(gm, placement, fuse_elementwise=False)

    def calls(gm: torch.fx.GraphModule) -> list[str]:
        return [n.name for n in gm.graph.nodes if n.op == "call_function"]

    x, busy_x = torch.ones(1), torch.rand(_BUSY_ELEMENTS)
    one, chain = _chain(1), _chain(_CHAIN)
    names = calls(chain)
    spin_us = executor_extension().spin_before_park_us()
    # (module, spin before park in us, input, calls) per measurement
    inline = PlacedGraph(one, dict.fromkeys(calls(one), "cpu"), cpu_threads=torch.get_num_threads())
    placed = {
        "one": (placed_graph(one, dict.fromkeys(calls(one), lanes[0])), spin_us, x, _REPEATS),
        "one, inline": (inline, spin_us, x, _REPEATS),
        "chain": (placed_graph(chain, dict.fromkeys(names, lanes[0])), spin_us, x, _REPEATS),
    }
    if len(lanes) > 1:
        alternating = placed_graph(chain, {name: lanes[k % 2] for k, name in enumerate(names)})
        placed["alternating"] = (alternating, spin_us, x, _REPEATS)
        placed["alternating, parking"] = (alternating, 0.0, x, _REPEATS)
        tanh = torch.ops.aten.tanh.default
        busy, pair = _chain(_BUSY_STEPS, tanh), _chain(_BUSY_STEPS, tanh, count=2)
        side_by_side = {name: lanes[k // _BUSY_STEPS] for k, name in enumerate(calls(pair))}
        placed["busy"] = (
            placed_graph(busy, dict.fromkeys(calls(busy), lanes[0])),
            spin_us,
            busy_x,
            _BUSY_REPEATS,
        )
        placed["busy, side by side"] = (
            placed_graph(pair, side_by_side),
            spin_us,
            busy_x,
            _BUSY_REPEATS,
        )
    try:
        span = _median_span_ms(placed["chain"][0], x)
        rounds: dict[str, list[float]] = {}
        for _ in range(5):
            for key, (module, spin, value, repeats) in placed.items():
                gap = key in ("one", "busy")  # the two that give caller_wake_ms
                took, uncovered = _median_call_ms(module, value, spin, repeats, gap)
                rounds.setdefault(key, []).append(took)
                if gap:
                    rounds.setdefault(f"{key}, gap", []).append(uncovered)
        t = timings_from_rounds(rounds)
    finally:
        for module, *_ in placed.values():
            module.stop()
    return costs_from_timings(t, span, _CHAIN, spin_us / 1e3)


def timings_from_rounds(rounds: dict[str, list[float]]) -> dict[str, float]:
    """Each measurement's median call time over the rounds, except the busy chains'. What a
    long call's parked threads cost is the quietest round's ("busy, gap"), as a node's profile
    keeps the lowest of its chunks' medians, not that of a round a burst of other work shared
    (plans are costed from the quiet profiles: a burst's wake-ups charged on top of them made
    every prediction 14-35% too slow). The one busy chain and the pair side by side are those
    of one round: the host's speed drifts by up to 2x within minutes here, and the two chains
    timed seconds apart in one round see the same speed, where each one's quickest round (taken
    apart before) could come from a fast minute for one and a slow one for the other; the
    calibrated cores then jumped from run to run (1.68 cores in one run, no shortage in the
    next), moving predictions by 10-20%. That round is the upper quartile's by the pair's share
    of cores: a quiet round, as a profile keeps its quickest chunk, but not the single best
    one, whose lone chain a burst can slow into reading more cores than there are. The median
    round (taken before) let a burst over three of five rounds stand for the whole process:
    predict.py read 1.52 cores at its start, ran its plans on two (their replays without the
    shortage came within 3-14% of the measured medians) and predicted three of them 23-67% too
    slow. A neighbour that keeps a core busy slows every round, so the quartile still sees it."""
    t = {key: statistics.median(values) for key, values in rounds.items()}
    if "busy, gap" in rounds:
        t["busy, gap"] = min(rounds["busy, gap"])
    if "busy" in rounds and "busy, side by side" in rounds:
        one = t["one"]

        def share(k: int) -> float:  # the cores the pair had in round k: 2W / c above
            both = rounds["busy, side by side"][k] - one
            return 2.0 * (rounds["busy"][k] - one) / both if both > 0.0 else math.inf

        ranked = sorted(range(len(rounds["busy"])), key=share)
        quiet = ranked[3 * len(ranked) // 4]
        t["busy"] = rounds["busy"][quiet]
        t["busy, side by side"] = rounds["busy, side by side"][quiet]
    return t


def costs_from_timings(
    t: dict[str, float], span: float, chain: int, spin_ms: float
) -> ExecutorCosts:
    """The executor's costs from the call times ``t`` (ms, timings_from_rounds) of the chains
    of the module docstring ("one", "chain", and where there are two lanes "alternating",
    "alternating, parking", "busy" and "busy, side by side"), the first ones ``chain`` steps
    long, the busy ones ``_BUSY_STEPS``, with the parts their traced steps leave uncovered
    ("one, gap" and "busy, gap"), and ``span``, the traced span of one step."""
    per_step = (t["chain"] - t["one"]) / (chain - 1)
    step = max(per_step - span, 0.0)
    call = max(t["one"] - span - step, 0.0)
    handoff = wake = caller_wake = 0.0
    cores = math.inf
    inline_call = max(t["one, inline"] - span - step, 0.0) if "one, inline" in t else 0.0
    if "alternating" in t:
        handoff = max((t["alternating"] - t["one"]) / (chain - 1) - per_step, 0.0)
        wake = max((t["alternating, parking"] - t["alternating"]) / chain, 0.0)
    if "busy" in t:
        work = t["busy"] - t["one"]  # one busy chain, less the call around it
        both = t["busy, side by side"] - t["one"]
        if work > 0.0 and both > 0.0 and 2.0 * work / both < _SHORT_OF_CORES:
            cores = max(2.0 * work / both, 1.0)
        caller_wake = max(t["busy, gap"] - t["one, gap"] - (_BUSY_STEPS - 1) * step, 0.0)
    return ExecutorCosts(
        step_ms=step,
        handoff_ms=handoff,
        call_ms=call,
        wake_ms=wake,
        spin_ms=spin_ms,
        caller_wake_ms=caller_wake,
        cores=cores,
        inline_call_ms=inline_call,
    )
