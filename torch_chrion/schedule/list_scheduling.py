"""Insertion-based list scheduling: the engine under HEFT and every heuristic built on it.

Tasks are taken in a priority order (a topological order). Each goes to the earliest idle gap,
at or after its data-ready time, of its device: the device given, or the one with the earliest
finish time (EFT). The idle gaps of a device are its busy intervals kept sorted, searched with
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
    cost = graph.cost.tolist()
    group = graph.memory_group
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
            # earliest gap of device d at or after `ready` that holds w
            s_d, e_d = starts[d], ends[d]
            slot = bisect_right(e_d, ready)
            t = ready
            count = len(s_d)
            while slot < count:
                if t + w <= s_d[slot]:
                    break
                if e_d[slot] > t:
                    t = e_d[slot]
                slot += 1
            if t + w < best_finish:
                best_finish, best_dev, best_start, best_slot = t + w, d, t, slot
        if best_dev < 0:
            raise ValueError(f"task {graph.names[i]!r} cannot run on its assigned device")
        device[i] = best_dev
        start[i] = best_start
        finish[i] = best_finish
        starts[best_dev].insert(best_slot, best_start)
        ends[best_dev].insert(best_slot, best_finish)
        tasks[best_dev].insert(best_slot, i)
    makespan = max(finish) if n else 0.0
    return Schedule(device, start, finish, tasks, makespan, algorithm=algorithm)
