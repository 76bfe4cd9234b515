"""Random task graphs with the parameters of the HEFT paper's generator (Topcuoglu et al. 2002,
section 5.1): number of tasks v, shape α (height ≈ √v/α levels, widths of mean ≈ α√v),
out-degree, communication-to-computation ratio CCR, heterogeneity β (task i's cost on each
device is uniform in w̄_i·[1-β/2, 1+β/2], w̄_i uniform in [0, 2·w_dag]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .task_graph import TaskGraph


def random_task_graph(
    rng: np.random.Generator,
    n: int,
    devices: Sequence[str] = ("cpu", "cuda:0"),
    alpha: float = 1.0,
    out_degree: int = 3,
    ccr: float = 1.0,
    beta: float = 0.5,
    w_dag: float = 10.0,
    weight_bytes: float = 1 << 20,
    out_bytes: float = 1 << 18,
    p_unrunnable: float = 0.0,
    speed: Sequence[float] | None = None,
) -> TaskGraph:
    """A seeded random DAG in the style of the HEFT paper.

    Args:
        rng: numpy random generator (the seed makes the graph).
        n: number of tasks.
        devices: device names (CPU lanes share memory, see TaskGraph).
        alpha: shape: > 1 wide and short, < 1 tall and thin.
        out_degree: each task gets 1..out_degree successors in the next level.
        ccr: mean transfer time over mean computation cost.
        beta: heterogeneity of one task's cost across devices (0 = identical).
        w_dag: mean computation cost.
        weight_bytes: mean weight bytes of a task with weights (half the tasks have none).
        out_bytes: mean output bytes.
        p_unrunnable: probability that a task cannot run on a given device (it always keeps
            at least one device).
        speed: relative speed of each device (its costs are divided by it); default all 1.
    """
    m = len(devices)
    height = max(1, min(n, int(round(math.sqrt(n) / alpha))))
    level = np.concatenate([np.arange(height), rng.integers(0, height, size=n - height)])
    level.sort()
    levels = [np.flatnonzero(level == h) for h in range(height)]
    edges: dict[tuple[int, int], float] = {}
    mean_comm = ccr * w_dag
    for h in range(height - 1):
        below = levels[h + 1]
        has_parent = np.zeros(len(below), dtype=bool)
        for u in levels[h]:
            k = int(rng.integers(1, out_degree + 1))
            picks = rng.choice(len(below), size=min(k, len(below)), replace=False)
            has_parent[picks] = True
            for j in picks:
                edges[(int(u), int(below[j]))] = float(rng.uniform(0, 2 * mean_comm))
        for j in np.flatnonzero(~has_parent):
            u = int(rng.choice(levels[h]))
            edges[(u, int(below[j]))] = float(rng.uniform(0, 2 * mean_comm))
    mean_cost = rng.uniform(0.02 * w_dag, 2 * w_dag, size=n)
    spread = rng.uniform(1 - beta / 2, 1 + beta / 2, size=(n, m))
    cost = mean_cost[:, None] * spread
    if speed is not None:
        cost = cost / np.asarray(speed, dtype=np.float64)[None, :]
    if p_unrunnable > 0 and m > 1:
        blocked = rng.random((n, m)) < p_unrunnable
        keep = rng.integers(0, m, size=n)
        blocked[np.arange(n), keep] = False
        cost[blocked] = np.inf
    weights = np.where(rng.random(n) < 0.5, rng.uniform(0, 2 * weight_bytes, size=n), 0.0)
    outs = rng.uniform(0, 2 * out_bytes, size=n)
    return TaskGraph(
        cost, edges, devices=devices, weight_bytes=weights.round(), out_bytes=outs.round()
    )
