"""Node costs on a CPU lane, timed by the executor itself on a traced lane."""

from __future__ import annotations

import itertools
import logging
import os
import statistics
import time
from typing import Protocol

import torch
from torch import fx

from ..errors import ChrionError
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
) -> tuple[dict[str, float], list[str]]:
    """Ms of each node run by the executor itself on a CPU lane with ``threads`` threads: the
    lowest median of three chunks of ``repeats`` whole-graph runs (lowest_chunk_median), after
    ``warmup`` runs (and at least a warm-up period). The notes record the load average and
    whether the load changed while measuring.

    Why not time the ops from Python: a lane is a worker thread with its own intra-op pool, and
    the same operator costs measurably more there than on the main thread (an LSTM layer here:
    0.5 ms on the main thread, 1.4-1.8 ms on a worker thread with the same thread count), so a
    profile taken on the main thread predicted half the latency the executor then took. As TVM's
    debug executor does, the profile times the calls the lane will make: the whole graph runs on
    one traced lane, and each node's cost comes from its steps' durations.

    With ``lull`` (a background profile), each graph run waits until no request runs, and a
    run that a request overlapped is not counted: it would have slowed the request, and its
    times would include the cores it shared.
    """
    from ..runtime import PlacedGraph

    placed = PlacedGraph(gm, {n.name: "cpu" for n in nodes}, cpu_threads=threads)
    durations: dict[str, list[float]] = {n.name: [] for n in nodes}
    notes: list[str] = []
    try:
        with torch.no_grad(), progress(repeats, desc, " graph run") as bar:
            stop = time.monotonic() + budget_s
            deadline = time.monotonic() + warmup_seconds(budget_s)
            for run in itertools.count():
                if run >= warmup and time.monotonic() >= deadline:
                    break
                if lull is not None:
                    lull.wait()
                placed(*inputs)
            placed.enable_trace(True)
            kept = 0
            while kept < repeats:
                token = lull.wait() if lull is not None else 0
                placed(*inputs)
                if lull is not None and lull.disturbed(token):
                    continue
                for event in placed.last_trace():
                    if event.node in durations:
                        durations[event.node].append((event.end_us - event.start_us) / 1e3)
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
        placed.stop()
    missing = [name for name, times in durations.items() if not times]
    if missing:
        raise ChrionError(f"the executor's trace has no steps for nodes {missing[:5]}")
    costs = {name: lowest_chunk_median(times) for name, times in durations.items()}
    load = os.getloadavg()[0]
    notes.append(f"cpu: load average {load:.1f} on {os.cpu_count()} CPUs while measured")
    spread = _chunk_spread(durations)
    if spread > _CHUNKS_AGREE:
        notes.append(
            f"cpu: the load changed while measuring (a node's chunk medians {spread:.2f}x apart);"
            " the lowest chunk's median kept"
        )
        log.warning(notes[-1])
    return costs, notes


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
) -> bool:
    """Whether the cached CPU costs ``cached`` (ms by node) still hold: a quick re-time of a few
    graph runs finds no stale node (stale_nodes). A profile is cached once and reused for every
    later plan, so one measured during a load burst would mislead them all. ``lull``: as for
    measure_on_cpu_lane (in the background, between requests)."""
    now, _ = measure_on_cpu_lane(
        gm,
        inputs,
        nodes,
        threads,
        1,
        RETIME_REPEATS,
        RETIME_BUDGET_S,
        "re-timing cached cpu",
        lull,
    )
    stale = stale_nodes(cached, now)
    if stale:
        log.warning(
            "the cached cpu profile costs %s far above a re-time now (%s): it was measured "
            "under load; measuring again",
            ", ".join(stale[:3]),
            ", ".join(f"{cached[n]:.3f} ms vs {now[n]:.3f} ms" for n in stale[:3]),
        )
    return not stale
