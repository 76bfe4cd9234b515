"""HEFT as published: Topcuoglu, Hariri and Wu, "Performance-Effective and Low-Complexity Task
Scheduling for Heterogeneous Computing", IEEE TPDS 13(3), 2002.

    rank_u(i) = w̄_i + max_{j ∈ succ(i)} (c̄_ij + rank_u(j))

w̄_i is the mean cost of task i over the devices that can run it; c̄_ij is the edge's transfer
time (the paper's mean communication cost: its edge weight), zero when every device shares one
memory. Tasks go in decreasing rank (ties: lower index first, as the paper's example lists
n3 before n4), each to the device with the earliest finish time, with insertion into idle gaps.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from .list_scheduling import list_schedule
from .task_graph import Schedule, TaskGraph


def mean_costs(graph: TaskGraph) -> np.ndarray:
    """w̄_i: mean of task i's finite costs."""
    finite = np.isfinite(graph.cost)
    return np.where(finite, graph.cost, 0.0).sum(axis=1) / finite.sum(axis=1)


def upward_rank(graph: TaskGraph, task_cost: np.ndarray | None = None) -> list[float]:
    """rank_u of every task, computed in reverse topological order (linear time).

    Args:
        graph: the task graph.
        task_cost: per-task cost to rank with; default the mean cost w̄.
    """
    w = (mean_costs(graph) if task_cost is None else task_cost).tolist()
    comm = 1.0 if graph.cross_memory else 0.0
    rank = [0.0] * graph.n
    succs, succ_cost = graph.succs, graph.succ_cost
    for i in reversed(graph.topo_order):
        best = 0.0
        ss, sc = succs[i], succ_cost[i]
        for k in range(len(ss)):
            r = comm * sc[k] + rank[ss[k]]
            if r > best:
                best = r
        rank[i] = w[i] + best
    return rank


def downward_rank(graph: TaskGraph, task_cost: np.ndarray | None = None) -> list[float]:
    """rank_d: the longest mean-cost path from an entry task to task i, excluding i."""
    w = (mean_costs(graph) if task_cost is None else task_cost).tolist()
    comm = 1.0 if graph.cross_memory else 0.0
    rank = [0.0] * graph.n
    preds, pred_cost = graph.preds, graph.pred_cost
    for i in graph.topo_order:
        best = 0.0
        ps, pc = preds[i], pred_cost[i]
        for k in range(len(ps)):
            p = ps[k]
            r = rank[p] + w[p] + comm * pc[k]
            if r > best:
                best = r
        rank[i] = best
    return rank


def order_by(graph: TaskGraph, rank: list[float]) -> list[int]:
    """Tasks by decreasing rank, ties by lower index. Ranks are compared after rounding to
    1e-9 relative, so equal ranks summed in a different order (80.000000000001 vs 80) tie.
    Where zero costs make a task tie with its own successor and the index puts the successor
    first, ties fall back to topological position, which always gives a valid order."""
    scale = max((abs(r) for r in rank), default=1.0) or 1.0
    key = [-round(r / scale, 9) for r in rank]
    order = sorted(range(len(rank)), key=lambda i: (key[i], i))
    if is_topological(graph, order):
        return order
    position = [0] * graph.n
    for k, t in enumerate(graph.topo_order):
        position[t] = k
    return sorted(range(len(rank)), key=lambda i: (key[i], position[i]))


def ready_list_order(graph: TaskGraph, priority: list[float]) -> list[int]:
    """Topological order that always takes the ready task of highest priority (CPOP's rule,
    for priorities such as rank_u + rank_d that need not decrease along edges)."""
    indeg = [len(p) for p in graph.preds]
    ready = [(-priority[i], i) for i in range(graph.n) if indeg[i] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, u = heapq.heappop(ready)
        order.append(u)
        for v in graph.succs[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(ready, (-priority[v], v))
    return order


def is_topological(graph: TaskGraph, order: list[int]) -> bool:
    """Whether ``order`` lists every task once, each after all of its predecessors."""
    if len(order) != graph.n:
        return False
    position = [-1] * graph.n
    for k, t in enumerate(order):
        if position[t] >= 0:
            return False
        position[t] = k
    return all(position[u] < position[v] for u, v in graph.edges)


def heft(graph: TaskGraph, allowed: Sequence[Sequence[int]] | None = None) -> Schedule:
    """Schedule ``graph`` with HEFT (upward rank, insertion, earliest finish time).

    Args:
        allowed: the placement options each task may take (default: every one it runs on).

    Returns:
        A Schedule with ``algorithm="heft"``.
    """
    order = order_by(graph, upward_rank(graph))
    return list_schedule(graph, order, algorithm="heft", allowed=allowed)
