"""Insertion-based list scheduling: the engine under HEFT and every heuristic built on it.

Tasks are taken in a priority order (a topological order). Each goes to the earliest idle gap,
at or after its data-ready time, of its device: the device given, or the one with the earliest
finish time (EFT). A wide placement (Note [Chrion wide placement] in task_graph.py) needs a gap
that all of its lanes share, and fills it on each of them; EFT takes it only when it finishes
strictly earlier than every single device. The idle gaps of a device are its busy intervals kept sorted, searched with
``bisect``: finding and filling a gap is a binary search plus a short scan, so large graphs
schedule in near-linear time.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from .task_graph import Schedule, TaskGraph


def list_schedule(
    graph: TaskGraph,
    priority: Sequence[int],
    placement: Sequence[int] | None = None,
    algorithm: str = "list",
    allowed: Sequence[Sequence[int]] | None = None,
) -> Schedule:
    """Schedule ``graph`` taking tasks in ``priority`` order, with insertion into idle gaps.

    Args:
        graph: the task graph.
        priority: every task once, predecessors before successors.
        placement: device of each task; None picks, per task, the device with the earliest
            finish time (ties: the lowest device index), as HEFT does.
        algorithm: name recorded in the Schedule.
        allowed: instead of a placement, the devices each task may use (EFT among them).

    Returns:
        The Schedule; its times are as soon as possible for its per-device orders, so the
        simulator replays it to the same times.
    """
    n, m = graph.n, graph.m
    cost = graph.option_cost.tolist()
    group = graph.option_group
    option_lanes = graph.option_lanes
    preds, pred_cost = graph.preds, graph.pred_cost
    runnable_on = graph.runnable_on
    starts: list[list[float]] = [[] for _ in range(m)]
    ends: list[list[float]] = [[] for _ in range(m)]
    tasks: list[list[int]] = [[] for _ in range(m)]
    device = [-1] * n
    start = [0.0] * n
    finish = [0.0] * n
    inf = float("inf")
    for i in priority:
        ps, pc = preds[i], pred_cost[i]
        if placement is not None:
            choices: Sequence[int] = (placement[i],)
        else:
            choices = runnable_on[i] if allowed is None else allowed[i]
        best_finish, best_dev, best_start, best_slot = inf, -1, 0.0, 0
        row = cost[i]
        for d in choices:
            g = group[d]
            ready = 0.0
            for k in range(len(ps)):
                p = ps[k]
                dp = device[p]
                if dp < 0:
                    raise ValueError(f"priority lists task {i} before its predecessor {p}")
                t = finish[p] if group[dp] == g else finish[p] + pc[k]
                if t > ready:
                    ready = t
            w = row[d]
            if d >= m:  # a wide option: the first gap that all of its lanes share
                t, slot = _common_gap(starts, ends, option_lanes[d], ready, w), 0
            else:  # earliest gap of device d at or after `ready` that holds w
                t, slot = _gap(starts[d], ends[d], ready, w)
            if t + w < best_finish:
                best_finish, best_dev, best_start, best_slot = t + w, d, t, slot
        if best_dev < 0:
            raise ValueError(f"task {graph.names[i]!r} cannot run on its assigned device")
        device[i] = best_dev
        start[i] = best_start
        finish[i] = best_finish
        if best_dev < m:
            starts[best_dev].insert(best_slot, best_start)
            ends[best_dev].insert(best_slot, best_finish)
            tasks[best_dev].insert(best_slot, i)
            continue
        for lane in option_lanes[best_dev]:
            _, slot = _gap(starts[lane], ends[lane], best_start, best_finish - best_start)
            starts[lane].insert(slot, best_start)
            ends[lane].insert(slot, best_finish)
            tasks[lane].insert(slot, i)
    makespan = max(finish) if n else 0.0
    return Schedule(device, start, finish, tasks, makespan, algorithm=algorithm)


def _gap(s_d: list[float], e_d: list[float], ready: float, w: float) -> tuple[float, int]:
    """(start, slot): the earliest time at or after ``ready`` when a device with busy intervals
    ``[s_d[k], e_d[k])`` (sorted) is free for ``w``, and the index its interval goes in at."""
    slot = bisect_right(e_d, ready)
    t = ready
    count = len(s_d)
    while slot < count:
        if t + w <= s_d[slot]:
            break
        if e_d[slot] > t:
            t = e_d[slot]
        slot += 1
    return t, slot


def _common_gap(
    starts: list[list[float]],
    ends: list[list[float]],
    lanes: Sequence[int],
    ready: float,
    w: float,
) -> float:
    """The earliest time at or after ``ready`` when every lane of ``lanes`` is free for ``w``:
    each lane's own earliest gap pushes the candidate later until all of them agree (the
    candidate only grows, and each lane has finitely many intervals, so this ends)."""
    t = ready
    moved = True
    while moved:
        moved = False
        for lane in lanes:
            at, _ = _gap(starts[lane], ends[lane], t, w)
            if at > t:
                t, moved = at, True
    return t
