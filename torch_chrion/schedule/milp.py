"""Exact scheduling of small task graphs with a MILP (scipy.optimize.milp / HiGHS): the
reference the heuristics are measured against.

Disjunctive (big-M) formulation, variables:

* x[i,d] ∈ {0,1}: task i runs on device d (fixed to 0 where it cannot run); Σ_d x[i,d] = 1;
* s[i] ≥ 0: start of task i; its duration is p_i(x) = Σ_d cost[i,d]·x[i,d];
* z[u,v] ∈ [0,1]: edge (u,v) crosses memories: z ≥ x[u,d] - Σ_{d' shares memory with d} x[v,d'];
* precedence: s[v] ≥ s[u] + p_u(x) + transfer(u,v)·z[u,v];
* y[i,j] ∈ {0,1} for each pair with no path between them (pairs joined by a path are already
  ordered by precedence): on every device both could share, one precedes the other:
  s[j] ≥ s[i] + p_i(x) - M(3 - y - x[i,d] - x[j,d]) and the mirror with y and 1-y;
* C ≥ s[i] + p_i(x): the makespan; and C ≥ Σ_i cost[i,d]·x[i,d] for each device d (a valid
  cut: a device's busy time fits in the makespan).

A wide placement (Note [Chrion wide placement] in task_graph.py) is one more option o of x[i,o]:
wherever a constraint above reads "x[i,d]: task i occupies device d", it reads the sum of x[i,o]
over the options o that hold d (d itself, and the wide option for each wide lane).

M is an upper bound of the makespan (the better of HEFT's and solve()'s for the latency objective, the SLO for the memory
objective; C ≤ M is imposed, so every start lies in [0, M]).

Objectives: "latency" minimises C. "memory" minimises, over the accelerator devices d,
Σ_i weight_bytes[i]·x[i,d] + P[d] with P[d] ≥ (out_bytes[v] + Σ_{u→v} out_bytes[u])·x[v,d]:
the working set of the largest task placed there, a lower bound of the simulator's peak
activations (``memory.working_set_bound``), subject to C ≤ SLO. The optimum is thus a lower
bound of the true memory optimum under the simulator's measure; the schedule it returns is
re-timed and scored by the simulator, which gives an upper bound.
"""

from __future__ import annotations

import dataclasses
import heapq
import time

import numpy as np

from ..errors import OptionError
from .heft import heft
from .simulate import rescore
from .solve import solve
from .task_graph import Schedule, TaskGraph


@dataclasses.dataclass
class MilpResult:
    """Outcome of ``milp_schedule``.

    Attributes:
        schedule: the MILP's placement and per-device order, re-timed by the simulator
            (None when infeasible or no solution was found in time).
        value: the MILP objective of that solution (makespan, or the working-set memory term).
        bound: the solver's proven bound on the objective (equals ``value`` when optimal).
        optimal: solved to optimality.
        feasible: a solution exists (False: the SLO cannot be met).
        seconds: solver wall time.
    """

    schedule: Schedule | None
    value: float | None
    bound: float | None
    optimal: bool
    feasible: bool
    seconds: float


class _Rows:
    """Sparse constraint rows: lb ≤ Σ coef·var ≤ ub."""

    def __init__(self) -> None:
        self.r: list[int] = []
        self.c: list[int] = []
        self.v: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []

    def add(self, terms: dict[int, float], lb: float, ub: float = np.inf) -> None:
        row = len(self.lb)
        for col, coef in terms.items():
            if coef != 0.0:
                self.r.append(row)
                self.c.append(col)
                self.v.append(coef)
        self.lb.append(lb)
        self.ub.append(ub)


def _reachability(graph: TaskGraph) -> list[int]:
    """Bitset of the descendants of each task (small graphs only)."""
    reach = [0] * graph.n
    for u in reversed(graph.topo_order):
        bits = 0
        for v in graph.succs[u]:
            bits |= reach[v] | (1 << v)
        reach[u] = bits
    return reach


def milp_schedule(
    graph: TaskGraph,
    objective: str = "latency",
    slo: float | None = None,
    time_limit_s: float = 60.0,
    upper_bound: float | None = None,
) -> MilpResult:
    """Solve ``graph`` exactly (up to ``time_limit_s``); meant for about a dozen tasks.

    Args:
        graph: the task graph.
        objective: "latency" (minimise the makespan) or "memory" (minimise accelerator bytes,
            working-set activation term, subject to makespan ≤ ``slo``).
        slo: makespan bound; required by "memory".
        time_limit_s: HiGHS time limit.
        upper_bound: a makespan some schedule reaches (the big-M); default the better of HEFT
            and solve() for "latency", the SLO for "memory". A tighter M solves faster.

    Raises:
        OptionError: unknown objective, or "memory" without an SLO.
    """
    if objective not in ("latency", "memory"):
        raise OptionError(f"objective must be 'latency' or 'memory', got {objective!r}")
    if objective == "memory" and slo is None:
        raise OptionError('objective="memory" needs an slo')
    n, m = graph.n, graph.m
    cost = graph.option_cost
    group = graph.option_group
    k_opts = len(graph.option_lanes)
    holding = [[o for o in range(k_opts) if d in graph.option_lanes[o]] for d in range(m)]
    if objective == "memory":
        upper = float(slo)  # type: ignore[arg-type]
    elif upper_bound is not None:
        upper = float(upper_bound)
    else:
        upper = min(heft(graph).makespan, solve(graph, budget_s=0.1).makespan)
    big_m = float(upper)
    # column layout
    xcol = lambda i, d: i * k_opts + d  # noqa: E731
    scol = lambda i: n * k_opts + i  # noqa: E731
    ccol = n * k_opts + n
    ncols = ccol + 1
    edge_cols: dict[tuple[int, int], int] = {}
    for (u, v), c in graph.edges.items():
        if c > 0 and graph.cross_memory:
            edge_cols[(u, v)] = ncols
            ncols += 1
    reach = _reachability(graph)
    pairs: list[tuple[int, int]] = []
    for i in range(n):
        for j in range(i + 1, n):
            if not (reach[i] >> j) & 1 and not (reach[j] >> i) & 1:
                shared = [
                    d
                    for d in range(m)
                    if np.isfinite(cost[i, holding[d]]).any()
                    and np.isfinite(cost[j, holding[d]]).any()
                ]
                if shared:
                    pairs.append((i, j))
    pair_col0 = ncols
    ncols += len(pairs)
    accel = graph.accelerators() if objective == "memory" else []
    peak_col = {d: ncols + k for k, d in enumerate(accel)}
    ncols += len(accel)

    lower = np.zeros(ncols)
    upper_b = np.full(ncols, np.inf)
    integrality = np.zeros(ncols)
    finite_cost = np.where(np.isfinite(cost), cost, 0.0)
    for i in range(n):
        for d in range(k_opts):
            integrality[xcol(i, d)] = 1
            upper_b[xcol(i, d)] = 1.0 if np.isfinite(cost[i, d]) else 0.0
        upper_b[scol(i)] = big_m
    upper_b[ccol] = big_m
    for col in edge_cols.values():
        upper_b[col] = 1.0
    for k in range(len(pairs)):
        integrality[pair_col0 + k] = 1
        upper_b[pair_col0 + k] = 1.0

    def duration(i: int, sign: float) -> dict[int, float]:
        return {xcol(i, d): sign * finite_cost[i, d] for d in range(k_opts)}

    def occupies(i: int, d: int, coef: float) -> dict[int, float]:
        """coef x (task i occupies device d)."""
        return {xcol(i, o): coef for o in holding[d]}

    rows = _Rows()
    for i in range(n):
        rows.add({xcol(i, d): 1.0 for d in range(k_opts)}, 1.0, 1.0)
        rows.add({ccol: 1.0, scol(i): -1.0, **duration(i, -1.0)}, 0.0)
    # valid cut, not needed for correctness: each device's busy time is at most the makespan
    # (it makes graphs with few edges, where the disjunctions alone bound C weakly, solve fast)
    for d in range(m):
        load = {xcol(i, o): -finite_cost[i, o] for i in range(n) for o in holding[d]}
        rows.add({ccol: 1.0, **load}, 0.0)
    for (u, v), c in graph.edges.items():
        terms = {scol(v): 1.0, scol(u): -1.0, **duration(u, -1.0)}
        zc = edge_cols.get((u, v))
        if zc is not None:
            terms[zc] = -c
            for d in range(k_opts):
                same = {xcol(v, e): 1.0 for e in range(k_opts) if group[e] == group[d]}
                rows.add({zc: 1.0, xcol(u, d): -1.0, **same}, 0.0)
        rows.add(terms, 0.0)
    for k, (i, j) in enumerate(pairs):
        y = pair_col0 + k
        for d in range(m):
            if not (
                np.isfinite(cost[i, holding[d]]).any() and np.isfinite(cost[j, holding[d]]).any()
            ):
                continue
            # y = 1: i before j on d: s_j - s_i - p_i(x) >= -M(3 - y - x_id - x_jd)
            first = {scol(j): 1.0, scol(i): -1.0, **duration(i, -1.0)}
            first[y] = first.get(y, 0.0) - big_m
            for col, coef in (*occupies(i, d, -big_m).items(), *occupies(j, d, -big_m).items()):
                first[col] = first.get(col, 0.0) + coef
            rows.add(first, -3 * big_m)
            # y = 0: j before i on d: s_i - s_j - p_j(x) >= -M(2 + y - x_id - x_jd)
            second = {scol(i): 1.0, scol(j): -1.0, **duration(j, -1.0)}
            second[y] = second.get(y, 0.0) + big_m
            for col, coef in (*occupies(i, d, -big_m).items(), *occupies(j, d, -big_m).items()):
                second[col] = second.get(col, 0.0) + coef
            rows.add(second, -2 * big_m)

    objective_vec = np.zeros(ncols)
    if objective == "latency":
        objective_vec[ccol] = 1.0
    else:
        out = graph.out_bytes
        for d, pc in peak_col.items():
            objective_vec[pc] = 1.0
            for i in range(n):
                objective_vec[xcol(i, d)] = graph.weight_bytes[i]
                if np.isfinite(cost[i, d]):
                    working = float(out[i] + sum(out[u] for u in graph.preds[i]))
                    rows.add({pc: 1.0, xcol(i, d): -working}, 0.0)

    # imported here: scipy.optimize takes ~0.3 s to import, and a served package never solves
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    a = coo_matrix((rows.v, (rows.r, rows.c)), shape=(len(rows.lb), ncols)).tocsr()
    began = time.perf_counter()
    res = milp(
        objective_vec,
        integrality=integrality,
        bounds=Bounds(lower, upper_b),
        constraints=LinearConstraint(a, rows.lb, rows.ub),
        options={"time_limit": time_limit_s, "mip_rel_gap": 1e-7},
    )
    seconds = time.perf_counter() - began
    if res.x is None:
        return MilpResult(None, None, None, False, res.status != 2, seconds)
    x = res.x
    device = [int(np.argmax([x[xcol(i, d)] for d in range(k_opts)])) for i in range(n)]
    start = [float(x[scol(i)]) for i in range(n)]
    position = {t: k for k, t in enumerate(graph.topo_order)}
    # starts carry solver noise (-4e-15 for 0): round them so a zero-cost task and its
    # successor, which start together, are ordered by the graph, not by the noise;
    scale = max(1.0, abs(float(x[ccol])))
    # at one start time a zero-cost task goes first: the MILP may overlap it with the start of
    # a longer task on its device, which the replay can only match by running it first
    key = [
        (round(start[i] / scale, 7), round((start[i] + finite_cost[i, device[i]]) / scale, 7))
        for i in range(n)
    ]
    # rounding cannot remove noise that straddles a rounding boundary (all-zero costs: a successor
    # 1e-7 "before" its predecessor), so the keys only prioritise a topological order
    ranked = _topological_by_priority(graph, [(key[i], position[i]) for i in range(n)])
    order = [[i for i in ranked if d in graph.option_lanes[device[i]]] for d in range(m)]
    draft = Schedule(
        device, start, start, order, float(x[ccol]), algorithm="milp", objective=objective, slo=slo
    )
    schedule = rescore(graph, draft)
    bound = getattr(res, "mip_dual_bound", None)
    return MilpResult(
        schedule=schedule,
        value=float(res.fun),
        bound=float(bound) if bound is not None else float(res.fun),
        optimal=res.status == 0,
        feasible=True,
        seconds=seconds,
    )


def _topological_by_priority(graph: TaskGraph, priority: list) -> list[int]:
    """Every task once, predecessors first, and otherwise by increasing ``priority``."""
    waiting = [len(graph.preds[i]) for i in range(graph.n)]
    ready = [(priority[i], i) for i in range(graph.n) if not waiting[i]]
    heapq.heapify(ready)
    ranked = []
    while ready:
        _, i = heapq.heappop(ready)
        ranked.append(i)
        for j in graph.succs[i]:
            waiting[j] -= 1
            if not waiting[j]:
                heapq.heappush(ready, (priority[j], j))
    return ranked
