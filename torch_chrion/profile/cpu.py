"""Node costs on a CPU lane, timed by the executor itself on a traced lane."""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from typing import Protocol

import torch
from torch import fx

from ..errors import ChrionError
from .budget import MIN_REPEATS, warmup_seconds
from .progress import progress

log = logging.getLogger(__name__)


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
    """Median ms of each node run by the executor itself on a CPU lane with ``threads`` threads,
    over ``repeats`` whole-graph runs after ``warmup`` runs (and at least a warm-up period).

    Why not time the ops from Python: a lane is a worker thread with its own intra-op pool, and
    the same operator costs measurably more there than on the main thread (an LSTM layer here:
    0.5 ms on the main thread, 1.4-1.8 ms on a worker thread with the same thread count), so a
    profile taken on the main thread predicted half the latency the executor then took. As TVM's
    debug executor does, the profile times the calls the lane will make: the whole graph runs on
    one traced lane, and each node's cost is the median of its steps' durations.

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
    return {name: statistics.median(times) for name, times in durations.items()}, notes
