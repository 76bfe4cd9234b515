"""Node costs on a CPU lane, timed by the executor itself on a traced lane."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import os
import statistics
import time
from collections.abc import Collection, Sequence
from typing import Any, Protocol

import torch
from torch import fx

from ..errors import ChrionError
from ..schedule.from_graph import WIDE_MAX_RATIO, WIDE_MIN_MS
from .budget import MIN_REPEATS, warmup_seconds
from .progress import progress

log = logging.getLogger(__name__)

# the timed runs are cut into this many chunks in time; a node costs its quietest chunk's median
CHUNKS = 3
# chunk medians further apart than this mean the load changed while measuring (noted)
_CHUNKS_AGREE = 1.5
# a cached node cost this many times its quick re-time, and above it by this share of the
# graph's total and by this many ms (timer noise alone moves a few-us node 2x under load), was
# measured under load (stale_nodes)
STALE_RATIO = 2.0
STALE_SHARE = 0.05
STALE_MIN_MS = 0.05
# between the runs of the one-lane and the wide graph: longer than the 300 us that lanes, callers
# and kernel helpers spin after their work, so neither graph's nodes share the cores with them
SETTLE_S = 4e-4
# Note [Warm runs]
# After that pause the wide graph runs twice and the second run is the one timed: the first
# wakes its nodes' parked kernel helpers. Timed straight after the pause, a wide node's helper
# was still waking while its caller did the helper's share, and a layer's wide cost came out at
# its one-lane cost in 3 of 8 profiles of a batch-1 GRU 2x256 (0.52 against 0.52 ms; 0.25-0.45
# in the others), so its plan ran it on one thread; back-to-back calls find their helpers
# polling. The one-lane and side-by-side graphs (one thread a lane, no helpers) stay timed
# straight after the pause: timed on a second run too, a bi-GRU layer's one-lane cost fell to
# 0.11 ms where the plan's own calls traced it at 0.17 (0.17 timed after the pause), and four
# of five predictions in bench/predict.py fell 16-26% short.
# the quick re-time of a cached profile: this many graph runs, within this many seconds
RETIME_REPEATS = 6
RETIME_BUDGET_S = 2.0


class Lull(Protocol):
    """When a background profile may run without sharing the cores with requests."""

    def wait(self) -> int:
        """Block until no request runs; returns a token for ``disturbed``."""
        ...

    def disturbed(self, token: int) -> bool:
        """Whether a request ran since ``wait`` returned ``token``."""
        ...


@dataclasses.dataclass
class CpuCosts:
    """What measure_on_cpu_lane found: ms of every node on one lane, ms of the nodes measured
    placed wide, notes (load average, load changes, budget cuts), and ms of every node on one
    lane while the graph also runs on another (paired; empty with fewer than two lanes)."""

    node_ms: dict[str, float]
    wide_ms: dict[str, float]
    notes: list[str]
    paired_ms: dict[str, float] = dataclasses.field(default_factory=dict)


def measure_on_cpu_lane(
    gm: fx.GraphModule,
    inputs: tuple,
    nodes: list[fx.Node],
    threads: int,
    warmup: int,
    repeats: int,
    budget_s: float,
    desc: str,
    lull: Lull | None = None,
    wide_lanes: Sequence[str] = (),
    wide_nodes: Collection[str] | None = None,
    paired: bool = True,
) -> CpuCosts:
    """Ms of each node run by the executor itself on a CPU lane with ``threads`` threads: the
    lowest median of three chunks of ``repeats`` whole-graph runs (lowest_chunk_median), after
    ``warmup`` runs (and at least a warm-up period). The notes record the load average and
    whether the load changed while measuring.

    With two or more ``wide_lanes``, the nodes ``wide_nodes`` (default: every node) are also
    measured placed wide over them (Note [Chrion wide placement] in schedule/task_graph.py), as
    the executor will run them: a second graph, the rest of its nodes on the first of those
    lanes, whose runs alternate with the one-lane runs. Every node, not only those worth a wide
    option in the search (schedule/from_graph.py): the whole graph placed wide runs on its
    caller's thread with no hand-off, and plan.make_plan costs that placement from these (a
    seq2seq decoder whose one-step GRUs took 20-45 us each ran 0.73 ms so, 1.03 on two lanes).
    Interleaved, both costs are taken under the same load (a wide cost measured seconds after
    the one-lane cost compared one burst of a shared machine's load with another), and one
    warm-up period serves both.

    Why not time the ops from Python: a lane is a worker thread with its own intra-op pool, and
    the same operator costs measurably more there than on the main thread (an LSTM layer here:
    0.5 ms on the main thread, 1.4-1.8 ms on a worker thread with the same thread count), so a
    profile taken on the main thread predicted half the latency the executor then took. As TVM's
    debug executor does, the profile times the calls the lane will make: the whole graph runs on
    one traced lane, and each node's cost comes from its steps' durations.

    With two or more ``wide_lanes`` (and ``paired``), every node is also measured paired: the
    graph on the first of those lanes while a copy of it (its own weights) runs on the second at
    once, in the same alternating runs (side_by_side: one caller, as in a plan). Side by side,
    two lanes' tasks share what the cores share (caches, memory, the host under this VM): the
    quiet run of bench/results/predict.md traced the side-by-side directions of its bi-LSTM and
    bi-GRU 18% and 26% above their one-lane profile on the critical path, while side-by-side tanh
    chains (the calibration's cores) lost under 7%. The simulator slows a task by its paired
    over its one-lane cost while another runs beside it (schedule/simulate.py).

    With ``lull`` (a background profile), each graph run waits until no request runs, and a
    run that a request overlapped is not counted: it would have slowed the request, and its
    times would include the cores it shared.
    """
    from ..runtime import PlacedGraph

    names = [n.name for n in nodes]
    narrow = PlacedGraph(gm, dict.fromkeys(names, "cpu"), cpu_threads=threads)
    narrow.enable_trace(True)
    graphs = [narrow]
    durations: dict[str, list[float]] = {name: [] for name in names}
    wide_durations: dict[str, list[float]] = {}
    notes: list[str] = []
    pair: list[Any] = []  # the graph on the first wide lane beside its copy on the second
    copies: dict[str, str] = {}  # the pair's step -> the node it measures
    both_inputs: tuple = ()  # the pair's inputs
    paired_durations: dict[str, list[float]] = {}
    try:
        with torch.no_grad(), progress(repeats, desc, " graph run") as bar:
            stop = time.monotonic() + budget_s
            deadline = time.monotonic() + warmup_seconds(budget_s)
            for run in itertools.count():
                if run >= warmup and time.monotonic() >= deadline:
                    break
                if lull is not None:
                    lull.wait()
                narrow(*inputs)
            if len(wide_lanes) > 1:
                chosen = set(names if wide_nodes is None else wide_nodes)
                wide_durations = {name: [] for name in names if name in chosen}
            if wide_durations:
                wide = PlacedGraph(
                    gm,
                    dict.fromkeys(names, wide_lanes[0]),
                    cpu_threads=threads,
                    wide={name: list(wide_lanes) for name in wide_durations},
                )
                wide.enable_trace(True)
                graphs.append(wide)
                for _ in range(max(warmup, 1)):  # the graph's kernels were warmed on one lane
                    if lull is not None:
                        lull.wait()
                    wide(*inputs)
            if paired and len(wide_lanes) > 1:
                both, copies = side_by_side(gm, names)
                lane = {step: wide_lanes[k % 2] for k, step in enumerate(copies)}
                pair = [PlacedGraph(both, lane, cpu_threads=threads)]
                pair[0].enable_trace(True)
                paired_durations = {name: [] for name in names}
                both_inputs = paired_inputs(inputs)
                for _ in range(max(warmup, 1)):
                    if lull is not None:
                        lull.wait()
                    pair[0](*both_inputs)
            kept = 0
            while kept < repeats:
                token = lull.wait() if lull is not None else 0
                for graph in graphs:
                    if len(graphs) > 1 or pair:
                        time.sleep(SETTLE_S)
                    if graph is not narrow:
                        graph(*inputs)  # untimed: wakes the kernels' helpers (Note [Warm runs])
                    graph(*inputs)
                for graph in pair:
                    time.sleep(SETTLE_S)
                    graph(*both_inputs)
                if lull is not None and lull.disturbed(token):
                    continue
                for node, ms in _step_ms(narrow, durations):
                    durations[node].append(ms)
                if len(graphs) > 1:
                    for node, ms in _step_ms(graphs[1], wide_durations):
                        wide_durations[node].append(ms)
                for graph in pair:
                    for step, ms in _step_ms(graph, copies):
                        paired_durations[copies[step]].append(ms)
                kept += 1
                bar.update()
                if time.monotonic() > stop and MIN_REPEATS <= kept < repeats:
                    notes.append(
                        f"cpu: the {budget_s:g} s profile budget cut repeats from {repeats} "
                        f"to {kept}"
                    )
                    log.warning(notes[-1])
                    break
    finally:
        for graph in graphs + pair:
            graph.stop()
    missing = [name for name, times in (durations | wide_durations).items() if not times]
    if missing:
        raise ChrionError(f"the executor's trace has no steps for nodes {missing[:5]}")
    load = os.getloadavg()[0]
    notes.append(f"cpu: load average {load:.1f} on {os.cpu_count()} CPUs while measured")
    spread = max(map(_chunk_spread, (durations, wide_durations, paired_durations)))
    if spread > _CHUNKS_AGREE:
        notes.append(
            f"cpu: the load changed while measuring (a node's chunk medians {spread:.2f}x apart);"
            " the lowest chunk's median kept"
        )
        log.warning(notes[-1])
    return CpuCosts(
        {name: lowest_chunk_median(times) for name, times in durations.items()},
        {name: lowest_chunk_median(times) for name, times in wide_durations.items()},
        notes,
        {name: lowest_chunk_median(times) for name, times in paired_durations.items() if times},
    )


def side_by_side(gm: fx.GraphModule, names: list[str]) -> tuple[fx.GraphModule, dict[str, str]]:
    """``gm`` twice in one graph, the second copy with inputs and weights of its own (as
    another layer's are; it takes ``gm``'s inputs, then theirs again: see paired_inputs), and
    which node of ``names`` each copy's step is, the first copy's and the second's alternating.
    Its two copies placed on two lanes run side by side with one caller, as a plan's two lanes
    do."""
    root = torch.nn.Module()
    root.first, root.second = gm, copy.deepcopy(gm)
    graph = fx.Graph()
    outputs = []
    steps: dict[str, list[str]] = {name: [] for name in names}
    for prefix in ("first", "second"):
        env: dict[fx.Node, fx.Node] = {}
        for node in gm.graph.nodes:
            if node.op == "output":
                outputs.append(fx.map_arg(node.args[0], env.__getitem__))
                continue
            env[node] = graph.node_copy(node, env.__getitem__)
            if node.op in ("get_attr", "call_module"):  # a path into this copy's module
                env[node].target = f"{prefix}.{node.target}"
            elif node.op == "placeholder":  # its argument's name, unique in the graph
                env[node].target = env[node].name
            if node.name in steps:
                steps[node.name].append(env[node].name)
    graph.output(tuple(outputs))
    copies = {step: name for name, pair in steps.items() for step in pair}
    return fx.GraphModule(root, graph), copies


def paired_inputs(inputs: tuple) -> tuple:
    """The inputs of side_by_side's graph: ``inputs``, then copies of them (a graph that
    writes an input must not write the other copy's)."""
    return (*inputs, *(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs))


def _step_ms(graph: Any, wanted: Collection[str]) -> list[tuple[str, float]]:
    """(node, ms) of the steps of ``graph``'s last traced run, for the nodes in ``wanted``."""
    return [
        (event.node, (event.end_us - event.start_us) / 1e3)
        for event in graph.last_trace()
        if event.node in wanted
    ]


def lowest_chunk_median(times: list[float], chunks: int = CHUNKS) -> float:
    """The lowest median of ``chunks`` consecutive runs of ``times`` (in the order measured).

    Load from other processes only ever adds time, and comes in bursts: a burst that covers a
    third of the runs moves a plain median, not the quietest chunk's median."""
    return min(statistics.median(part) for part in _chunks(times, chunks))


def _chunks(times: list[float], chunks: int = CHUNKS) -> list[list[float]]:
    """``times`` cut into ``chunks`` consecutive parts of near-equal length (fewer when there
    are fewer runs)."""
    bounds = [round(k * len(times) / chunks) for k in range(chunks + 1)]
    return [times[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _chunk_spread(durations: dict[str, list[float]]) -> float:
    """The largest ratio between a node's highest and lowest chunk medians (nodes of at least
    10 us: below that, timer noise alone spreads them)."""
    worst = 1.0
    for times in durations.values():
        medians = [statistics.median(part) for part in _chunks(times)]
        if min(medians) >= 0.01:
            worst = max(worst, max(medians) / min(medians))
    return worst


def stale_nodes(cached: dict[str, float], now: dict[str, float]) -> list[str]:
    """Nodes whose cached cost is too high to be what they cost now: more than STALE_RATIO
    times a quick re-time, and above it by more than STALE_SHARE of the graph's re-timed total
    and more than STALE_MIN_MS (a cached profile measured under load; one measured quieter than
    now is kept)."""
    margin = max(STALE_SHARE * sum(now.values()), STALE_MIN_MS)
    return [
        name
        for name, ms in cached.items()
        if ms > STALE_RATIO * now[name] and ms - now[name] > margin
    ]


def cached_profile_holds(
    cached: dict[str, float],
    gm: fx.GraphModule,
    inputs: tuple,
    nodes: list[fx.Node],
    threads: int,
    lull: Lull | None = None,
    cached_wide: dict[str, float] | None = None,
    wide_lanes: Sequence[str] = (),
) -> bool:
    """Whether the cached CPU costs ``cached`` (ms by node) still hold: a quick re-time of a few
    graph runs finds no stale node (stale_nodes). A profile is cached once and reused for every
    later plan, so one measured during a load burst would mislead them all. ``cached_wide``:
    the cached costs of the nodes measured placed wide over ``wide_lanes``, re-timed so too, in
    the same runs (a wide cost measured under load would keep a node off its fastest
    placement). ``lull``: as for measure_on_cpu_lane (in the background, between requests)."""
    wide = {node: ms for node, ms in (cached_wide or {}).items() if math.isfinite(ms)}
    now = measure_on_cpu_lane(
        gm,
        inputs,
        nodes,
        threads,
        1,
        RETIME_REPEATS,
        RETIME_BUDGET_S,
        "re-timing cached cpu",
        lull,
        wide_lanes if wide else (),
        list(wide),
        paired=False,  # kept as measured: placements do not rest on them, predictions do
    )
    stale = stale_nodes(cached, now.node_ms)
    stale_wide = stale_nodes(wide, now.wide_ms) if wide else []
    # too slow wide for the search's wide option in the cache (from_graph), fast enough now:
    # its wide runs lost a core to a load burst (the one-lane runs beside them need only one),
    # which stale_nodes misses when the burst cost it less than twice its time
    stale_wide += [
        name
        for name, ms in wide.items()
        if name not in stale_wide
        and cached[name] >= WIDE_MIN_MS
        and ms > WIDE_MAX_RATIO * cached[name]
        and now.wide_ms[name] <= WIDE_MAX_RATIO * now.node_ms[name]
    ]
    for what, nodes_stale, before, after in (
        ("", stale, cached, now.node_ms),
        (" wide", stale_wide, wide, now.wide_ms),
    ):
        if nodes_stale:
            log.warning(
                "the cached cpu profile costs %s%s far above a re-time now (%s): it was "
                "measured under load; measuring again",
                ", ".join(nodes_stale[:3]),
                what,
                ", ".join(f"{before[n]:.3f} ms vs {after[n]:.3f} ms" for n in nodes_stale[:3]),
            )
    return not stale and not stale_wide
