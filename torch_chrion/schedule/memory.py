"""Bytes a schedule keeps resident on each device: the memory objective's measure.

Definition (the simulator's, and every algorithm is scored by it):

* weights: a task's ``weight_bytes`` stay on the device it is placed on for the whole run;
* activations: task u's output (``out_bytes[u]``) is allocated on u's device when u starts and
  freed when the last of its consumers that share that memory finishes, or when the last copy
  out of it completes (u's finish plus the edge's transfer time), whichever is later (a task
  nobody consumes frees it at its own finish);
* a consumer on a device that does not share u's memory gets a copy: allocated on that memory
  when u finishes, freed when the last consumer there finishes; it is counted on the consumer's
  device (the earliest-starting consumer of that memory, where several lanes share it);
* intervals are half-open [alloc, free): a buffer freed at t makes room for one allocated at t.

resident[d] = weights placed on d + peak over time of the live activation bytes counted on d.
The accelerator bytes of a schedule are the sum of resident[d] over the accelerator devices.

``working_set_bound`` is the simplified activation term the MILP minimises: while task v runs,
its output and all of its inputs are live on its device, so its working set is a lower bound of
the peak (with positive task costs); it depends on the placement only, hence linear in a MILP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .task_graph import TaskGraph


def activation_intervals(
    graph: TaskGraph, device: Sequence[int], start: Sequence[float], finish: Sequence[float]
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Every activation buffer as (device, alloc time, free time, bytes), per the module rule.
    A wide task's activations count on its leader."""
    device = graph.runners(device)
    group = graph.memory_group
    out = graph.out_bytes.tolist()
    succs, succ_cost = graph.succs, graph.succ_cost
    devs: list[int] = []
    allocs: list[float] = []
    frees: list[float] = []
    sizes: list[float] = []
    for u in range(graph.n):
        b = out[u]
        if b <= 0:
            continue
        p = device[u]
        gp = group[p]
        end = finish[u]
        copies: dict[int, list[float]] = {}  # memory group -> [free time, first start, device]
        ss, sc = succs[u], succ_cost[u]
        for k in range(len(ss)):
            v = ss[k]
            dv = device[v]
            gv = group[dv]
            if gv == gp:
                if finish[v] > end:
                    end = finish[v]
                continue
            if finish[u] + sc[k] > end:
                end = finish[u] + sc[k]
            entry = copies.get(gv)
            if entry is None:
                copies[gv] = [finish[v], start[v], dv]
            else:
                if finish[v] > entry[0]:
                    entry[0] = finish[v]
                if start[v] < entry[1]:
                    entry[1], entry[2] = start[v], dv
        devs.append(p)
        allocs.append(start[u])
        frees.append(end)
        sizes.append(b)
        for free_at, _, dv in copies.values():
            devs.append(int(dv))
            allocs.append(finish[u])
            frees.append(free_at)
            sizes.append(b)
    return devs, allocs, frees, sizes


def _live_activation_steps(
    graph: TaskGraph, device: Sequence[int], start: Sequence[float], finish: Sequence[float]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per device with activations: event times and the live activation bytes after each."""
    devs, allocs, frees, sizes = activation_intervals(graph, device, start, finish)
    if not devs:
        return {}
    dev = np.asarray(devs)
    alloc = np.asarray(allocs)
    free = np.asarray(frees)
    size = np.asarray(sizes)
    keep = free > alloc  # a zero-length buffer is never live
    dev, alloc, free, size = dev[keep], alloc[keep], free[keep], size[keep]
    times = np.concatenate([alloc, free])
    deltas = np.concatenate([size, -size])
    where = np.concatenate([dev, dev])
    # by device, then time, frees (negative deltas) before allocs at the same time
    order = np.lexsort((deltas, times, where))
    times, deltas, where = times[order], deltas[order], where[order]
    steps = {}
    for d in np.unique(where):
        mask = where == d
        steps[int(d)] = (times[mask], np.cumsum(deltas[mask]))
    return steps


def peak_activation_bytes(
    graph: TaskGraph, device: Sequence[int], start: Sequence[float], finish: Sequence[float]
) -> np.ndarray:
    """Peak live activation bytes per device (a sweep over alloc/free events)."""
    peak = np.zeros(graph.m)
    for d, (_, live) in _live_activation_steps(graph, device, start, finish).items():
        peak[d] = max(0.0, float(live.max()))
    return peak


def resident_timeline(
    graph: TaskGraph, device: Sequence[int], start: Sequence[float], finish: Sequence[float]
) -> list[list[tuple[float, float]]]:
    """Per device, (time, resident bytes from then on) steps: its weights from time 0, plus the
    live activations counted there; the maximum of each is ``resident_bytes``."""
    weights = weight_bytes_per_device(graph, device)
    steps = _live_activation_steps(graph, device, start, finish)
    timeline = []
    for d in range(graph.m):
        points = [(0.0, float(weights[d]))]
        times, live = steps.get(d, ((), ()))
        for t, b in zip(times, live, strict=True):
            points.append((float(t), float(weights[d] + b)))
        timeline.append(points)
    return timeline


def weight_bytes_per_device(graph: TaskGraph, device: Sequence[int]) -> np.ndarray:
    """Sum of the weight bytes of the tasks placed on each device (a wide task's leader)."""
    device = graph.runners(device)
    return np.bincount(np.asarray(device, dtype=np.int64), graph.weight_bytes, minlength=graph.m)


def resident_bytes(
    graph: TaskGraph, device: Sequence[int], start: Sequence[float], finish: Sequence[float]
) -> np.ndarray:
    """Per device: weights placed there plus peak live activations counted there."""
    return weight_bytes_per_device(graph, device) + peak_activation_bytes(
        graph, device, start, finish
    )


def accelerator_bytes(
    graph: TaskGraph, device: Sequence[int], start: Sequence[float], finish: Sequence[float]
) -> float:
    """The memory objective: resident bytes summed over the accelerator devices."""
    if not graph.is_accelerator.any():
        return 0.0
    return float(resident_bytes(graph, device, start, finish)[graph.is_accelerator].sum())


def working_set_bound(graph: TaskGraph, device: Sequence[int]) -> float:
    """The MILP's memory term for a placement: per accelerator device, its weights plus the
    largest working set (output + inputs) of a task placed on it; a lower bound of
    ``accelerator_bytes`` of any schedule with this placement when task costs are positive."""
    out = graph.out_bytes
    total = 0.0
    weights = weight_bytes_per_device(graph, device)
    for d in graph.accelerators():
        ws = 0.0
        for v in range(graph.n):
            if device[v] == d:
                ws = max(ws, float(out[v] + sum(out[u] for u in graph.preds[v])))
        total += float(weights[d]) + ws
    return total
