"""solve(): the project's scheduler. HEFT is one of its candidates, so it is never worse.

Latency objective:

1. candidates: HEFT; HEFT's order with the CPOP priority (rank_u + rank_d); every task on one
   device (HEFT's greed splits independent entry tasks across devices and then pays the
   transfers back, which at high communication-to-computation ratios loses several times the
   makespan); HEFT with no task wide (one lane each); every task wide where it can be; each
   candidate's placement re-scheduled with a placement-aware priority;
2. iterated local search over placements: move one task to another device, re-run insertion
   list scheduling with the critical-path priority of the new placement, keep the move when
   the makespan drops; when no move helps, re-place a few random tasks and search again.

Memory objective (minimise accelerator-resident bytes subject to makespan <= slo): start from
the best latency schedule and from the schedule that keeps everything it can off the
accelerators (repaired, if it is too slow, by moving onto the accelerator the task that buys the
most makespan per byte), then the same local search with memory as the score and the SLO as a
constraint.

Every candidate is scored by list scheduling whose times equal the simulator's replay; the
result is replayed once more by the simulator before it is returned. The search stops at a
time budget that grows with the graph, so large graphs cost a few HEFT runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InfeasiblePlanError, OptionError, PlanError
from .heft import downward_rank, heft, order_by, ready_list_order, upward_rank
from .list_scheduling import list_schedule
from .memory import accelerator_bytes
from .simulate import rescore
from .task_graph import Schedule, TaskGraph

# local search evaluations on graphs up to this size; larger graphs get the candidates plus
# whatever moves fit in the time budget
_MAX_EVALS = 8000


def default_budget_s(graph: TaskGraph, objective: str = "latency") -> float:
    """Search time budget: 0.5 s plus 0.15 ms per task, at most 2 s; twice that for the memory
    objective, which runs a latency search and then two walks."""
    return min(2.0, 0.5 + 1.5e-4 * graph.n) * (2.0 if objective == "memory" else 1.0)


def placement_priority(graph: TaskGraph, placement: Sequence[int]) -> list[int]:
    """Tasks by decreasing upward rank computed with their placed costs and the transfers the
    placement actually pays: the critical path of this placement first."""
    w = graph.option_cost[np.arange(graph.n), np.asarray(placement)].tolist()
    return order_by(graph, _placed_rank(graph, placement, w))


def _placed_rank(graph: TaskGraph, placement: Sequence[int], w: list[float]) -> list[float]:
    """Upward rank with placed costs ``w`` and the transfers the placement pays."""
    group = graph.option_group
    rank = [0.0] * graph.n
    succs, succ_cost = graph.succs, graph.succ_cost
    for i in reversed(graph.topo_order):
        gi = group[placement[i]]
        best = 0.0
        ss, sc = succs[i], succ_cost[i]
        for k in range(len(ss)):
            j = ss[k]
            r = rank[j] + (0.0 if group[placement[j]] == gi else sc[k])
            if r > best:
                best = r
        rank[i] = w[i] + best
    return rank


def schedule_placement(graph: TaskGraph, placement: Sequence[int]) -> Schedule:
    """Insertion list scheduling of a fixed placement, in its critical-path priority."""
    return list_schedule(graph, placement_priority(graph, placement), placement, "solve")


def _single_device(graph: TaskGraph, d: int) -> list[int]:
    """Everything on device d, except tasks that cannot run there (their cheapest device)."""
    cheapest = np.argmin(graph.cost, axis=1)
    return [d if np.isfinite(graph.cost[i, d]) else int(cheapest[i]) for i in range(graph.n)]


def wide_everywhere(graph: TaskGraph) -> list[int]:
    """Every task on the wide option where it has one, the rest on the wide option's leader
    lane where they can run there (else their cheapest device): with every task wide, the
    caller runs the whole graph itself (Note [Chrion inline requests] in
    csrc/executor/executor.cpp)."""
    wide = graph.wide_option
    if wide is None:
        raise PlanError("the graph has no wide option")
    on_leader = _single_device(graph, graph.wide_lanes[0])
    return [wide if wide in graph.runnable_on[i] else on_leader[i] for i in range(graph.n)]


class _Search:
    """Iterated local search over placements.

    Descent: try every move of the neighbourhood in random order, take the first that lowers
    the penalty, until none does. Moves: re-place one task; put both ends of an edge on one
    device; move a task together with its successors or its predecessors (these remove
    transfers, which is what high-CCR graphs need). Then kick the best local optimum by
    re-placing 1-3 random tasks and descend again, keeping the new optimum when it is no worse
    (so the walk drifts across plateaus). Stops at a time and evaluation budget.

    The state is one value per task, from ``options[i]``: here the device; ``_SideSearch``
    uses the same walk over accelerator-or-not.
    """

    def __init__(self, graph: TaskGraph, budget_s: float, seed: int) -> None:
        self.graph = graph
        self.deadline = time.perf_counter() + budget_s
        self.evals = 0
        self.rng = np.random.default_rng(seed)
        self.options: list[list[int]] = graph.runnable_on
        # a second priority to try each placement with: HEFT's, which does not follow the
        # placement (the critical-path one is not always the order that fits an SLO)
        self.base_order = order_by(graph, upward_rank(graph))
        # with an SLO, a placement that misses it by a little gets a few more orders tried
        self.slo: float | None = None
        self.max_evals: int | None = None

    def reorder(self, s: Schedule, tries: int = 8) -> Schedule:
        """Near-miss placements: list-schedule again with the placement's critical-path ranks
        jittered by up to ±25% (ready-list order, so always topological); keep the fastest."""
        if self.slo is None or s.makespan <= self.slo or s.makespan > 1.15 * self.slo:
            return s
        graph = self.graph
        w = graph.option_cost[np.arange(graph.n), np.asarray(s.device)]
        rank = np.asarray(_placed_rank(graph, s.device, w.tolist()))
        for _ in range(tries):
            self.evals += 1
            noisy = (rank * self.rng.uniform(0.75, 1.25, size=graph.n)).tolist()
            cand = list_schedule(graph, ready_list_order(graph, noisy), s.device, "solve")
            if cand.makespan < s.makespan:
                s = cand
                if s.makespan <= self.slo:
                    break
        return s

    @property
    def movable(self) -> list[int]:
        return [i for i in range(self.graph.n) if len(self.options[i]) > 1]

    def out_of_budget(self) -> bool:
        if self.max_evals is None:
            # a space of few states (a 5-task graph on 3 lanes has 243) is covered well before
            # _MAX_EVALS: stop at 8 evaluation units per state
            space = math.prod(len(o) for o in self.options) if self.graph.n < 40 else _MAX_EVALS
            self.max_evals = min(_MAX_EVALS, 8 * space)
        return self.evals >= self.max_evals or time.perf_counter() >= self.deadline

    def state_of(self, s: Schedule) -> list[int]:
        return list(s.device)

    def evaluate(self, placement: Sequence[int]) -> Schedule:
        self.evals += 2
        first = schedule_placement(self.graph, placement)
        second = list_schedule(self.graph, self.base_order, placement, "solve")
        return self.reorder(second if second.makespan < first.makespan else first)

    def moves(self, state: list[int]) -> list[tuple[tuple[int, ...], int]]:
        """(tasks, value) changes: one task; both ends of an edge; a task with its
        successors, or with its predecessors (whole branches move at high CCR)."""
        graph, options = self.graph, self.options
        out: list[tuple[tuple[int, ...], int]] = []
        for i in self.movable:
            for d in options[i]:
                if d != state[i]:
                    out.append(((i,), d))
                for near in (graph.succs[i], graph.preds[i]):
                    group = [j for j in (i, *near) if d in options[j]]
                    if len(group) > 1 and any(state[j] != d for j in group):
                        out.append((tuple(group), d))
        for u, v in graph.edges:
            if state[u] != state[v]:
                for a, b in ((u, v), (v, u)):
                    if state[a] in options[b]:
                        out.append(((b,), state[a]))
        return list(dict.fromkeys(out))

    def descend(
        self,
        current: Schedule,
        penalty: Callable[[Schedule], float],
        keep: Callable[[Schedule], None],
    ) -> Schedule:
        current_f = penalty(current)
        improved = True
        while improved and not self.out_of_budget():
            improved = False
            state = self.state_of(current)
            moves = self.moves(state)
            for k in self.rng.permutation(len(moves)):
                tasks, d = moves[k]
                cand_state = list(state)
                for i in tasks:
                    cand_state[i] = d
                cand = self.evaluate(cand_state)
                keep(cand)
                f = penalty(cand)
                if f < current_f:
                    current, current_f, improved = cand, f, True
                    break
                if self.out_of_budget():
                    break
        return current

    def run(
        self,
        start: Schedule,
        penalty: Callable[[Schedule], float],
        feasible: Callable[[Schedule], bool],
        better: Callable[[Schedule, Schedule], bool],
    ) -> Schedule | None:
        """Minimise ``penalty`` from ``start``; return the best feasible schedule seen
        (``better(a, b)``: a beats b), or None when none was feasible."""
        start = self.reorder(start)
        found: list[Schedule | None] = [start if feasible(start) else None]

        def keep(s: Schedule) -> None:
            if feasible(s) and (found[0] is None or better(s, found[0])):
                found[0] = s

        movable = self.movable
        if not movable:
            return found[0]
        current = self.descend(start, penalty, keep)
        while not self.out_of_budget():
            state = self.state_of(current)
            for _ in range(int(self.rng.integers(1, 4))):
                i = movable[int(self.rng.integers(len(movable)))]
                state[i] = int(self.rng.choice(self.options[i]))
            kicked = self.evaluate(state)
            keep(kicked)
            local = self.descend(kicked, penalty, keep)
            if penalty(local) <= penalty(current):
                current = local
        return found[0]


class _SideSearch(_Search):
    """The same walk over one bit per task: on an accelerator (1) or not (0). Each task then
    goes to the earliest-finishing device of its side, so the search does not have to split
    work between CPU lanes by hand (insertion list scheduling does that well)."""

    def __init__(self, graph: TaskGraph, budget_s: float, seed: int) -> None:
        super().__init__(graph, budget_s, seed)
        accel = graph.option_is_accelerator
        self.sides = [
            {side: [d for d in graph.runnable_on[i] if int(accel[d]) == side] for side in (0, 1)}
            for i in range(graph.n)
        ]
        self.options = [[side for side in (0, 1) if self.sides[i][side]] for i in range(graph.n)]

    def state_of(self, s: Schedule) -> list[int]:
        return [int(self.graph.option_is_accelerator[d]) for d in s.device]

    def evaluate(self, state: Sequence[int]) -> Schedule:
        self.evals += 2
        allowed = [self.sides[i][state[i]] for i in range(self.graph.n)]
        first = list_schedule(self.graph, self.base_order, algorithm="solve", allowed=allowed)
        second = schedule_placement(self.graph, first.device)
        return self.reorder(second if second.makespan < first.makespan else first)


def _one_lane_each(graph: TaskGraph) -> Schedule:
    """HEFT without the wide option: EFT takes a wide placement whenever it finishes that task
    first, and the next ready task, which could have run beside it on a lane of its own, then
    waits for it. A bidirectional layer's two directions went wide one after the other (7.4 ms
    measured, 6.5 ms predicted, for a 2x128 bi-LSTM at batch 8), where one direction per lane
    predicts 4.9 ms and ran 5.9 ms; from HEFT's placement, no move of one task or of its
    neighbours reaches it, since the views around each direction are wide too."""
    lanes = [
        [d for d in options if d != graph.wide_option] or options for options in graph.runnable_on
    ]
    first = heft(graph, allowed=lanes)
    again = schedule_placement(graph, first.device)
    return again if again.makespan < first.makespan else first


def _latency_candidates(graph: TaskGraph, deadline: float) -> list[Schedule]:
    """HEFT, then the other candidates while the time budget lasts (on large graphs each one
    costs about one HEFT run)."""
    plain = heft(graph)
    cands = [plain]
    more = [
        *(lambda d=d: schedule_placement(graph, _single_device(graph, d)) for d in range(graph.m)),
        *(
            [
                lambda: _one_lane_each(graph),
                lambda: schedule_placement(graph, wide_everywhere(graph)),
            ]
            if graph.wide_option is not None
            else []
        ),
        lambda: schedule_placement(graph, plain.device),
        lambda: list_schedule(
            graph,
            ready_list_order(
                graph,
                [a + b for a, b in zip(upward_rank(graph), downward_rank(graph), strict=True)],
            ),
            algorithm="solve",
        ),
    ]
    for make in more:
        if time.perf_counter() >= deadline:
            break
        cands.append(make())
    return cands


def solve_latency(graph: TaskGraph, budget_s: float, seed: int = 0) -> Schedule:
    """Best makespan found: candidates, then local search from the best of them."""
    began = time.perf_counter()
    cands = _latency_candidates(graph, began + budget_s)
    best = min(cands, key=lambda s: s.makespan)  # min keeps the first (HEFT) on ties
    search = _Search(graph, max(0.0, budget_s - (time.perf_counter() - began)), seed)
    found = search.run(
        best, lambda s: s.makespan, lambda s: True, lambda a, b: a.makespan < b.makespan
    )
    return found if found is not None else best


def _makespan(s: Schedule) -> float:
    return s.makespan


def _accelerator_bytes(graph: TaskGraph, s: Schedule) -> float:
    if s.accelerator_bytes is None:
        s.accelerator_bytes = accelerator_bytes(graph, s.device, s.start, s.finish)
    return s.accelerator_bytes


def solve_memory(
    graph: TaskGraph, slo: float, budget_s: float, seed: int = 0
) -> tuple[Schedule, bool]:
    """Fewest accelerator bytes within ``slo``; returns (schedule, slo_met). When nothing found
    meets the SLO, the schedule is the best-makespan one.

    The walk minimises bytes / (all bytes) + 10 x (relative SLO excess) + 0.01 x makespan /
    SLO, so it may cross schedules slightly over the SLO (only schedules within it are kept),
    and among equal bytes it prefers slack, which later moves off the accelerator can spend.
    """
    began = time.perf_counter()
    fastest = solve_latency(graph, budget_s / 4, seed)
    scale = float(graph.weight_bytes.sum() + graph.out_bytes.sum()) or 1.0

    def penalty(s: Schedule) -> float:
        excess = max(0.0, s.makespan - slo) / slo
        return _accelerator_bytes(graph, s) / scale + 10.0 * excess + 0.01 * s.makespan / slo

    def feasible(s: Schedule) -> bool:
        return s.makespan <= slo

    def better(a: Schedule, b: Schedule) -> bool:
        ka = (_accelerator_bytes(graph, a), a.makespan)
        return ka < (_accelerator_bytes(graph, b), b.makespan)

    host = [d for d in range(graph.m) if not graph.is_accelerator[d]]
    starts = [fastest]
    if host:
        off = np.where(graph.is_accelerator[None, :], np.inf, graph.cost)
        runnable_off = np.isfinite(off).any(axis=1)
        masked = graph.with_cost(np.where(runnable_off[:, None], off, graph.cost))
        # the best schedule that keeps off the accelerators everything that can run elsewhere
        starts.append(solve_latency(masked, budget_s / 6, seed))
    if fastest.makespan > slo:
        # likely infeasible: spend the rest of the budget on the makespan, as "latency" would
        fastest = min(fastest, solve_latency(graph, budget_s * 0.75, seed + 2), key=_makespan)
        starts[0] = fastest
    best = min((s for s in starts if feasible(s)), key=lambda s: penalty(s), default=None)
    # walk first over which tasks sit on an accelerator (host lanes chosen by EFT), then over
    # full placements from the best found; each walk gets half of the remaining budget
    walk_from = min(starts, key=penalty)
    for kind in (_SideSearch, _Search):
        left = max(0.0, budget_s - (time.perf_counter() - began))
        search = kind(graph, left / 2 if kind is _SideSearch else left, seed + 1)
        search.slo = slo
        found = search.run(walk_from, penalty, feasible, better)
        if found is not None and (best is None or better(found, best)):
            best = found
        if best is not None:
            walk_from = best
    if best is None:
        return fastest, False
    return best, True


def solve(
    graph: TaskGraph,
    objective: str = "latency",
    slo: float | None = None,
    *,
    strict: bool = False,
    budget_s: float | None = None,
    seed: int = 0,
) -> Schedule:
    """Schedule ``graph`` for an objective; never worse than HEFT on the makespan objective.

    Args:
        graph: the task graph.
        objective: "latency" minimises the makespan; "memory" minimises the bytes resident on
            the accelerators (weights + peak activations, see memory.py) subject to
            makespan <= ``slo``.
        slo: makespan bound. Required by "memory"; with "latency" it is only checked.
        strict: raise InfeasiblePlanError when the SLO is not met, instead of returning the
            best-makespan schedule with ``slo_met=False``.
        budget_s: search time budget; default grows with the graph (at most 2 s, 4 s for
            "memory"). The search also stops after a fixed number of evaluations, which is
            what ends it on small graphs, so results do not depend on the machine's load.
        seed: seed of the local search's random moves (the result is deterministic for a seed
            when the budget is not the limit).

    Returns:
        The Schedule, replayed by the simulator, with ``slo_met`` and ``accelerator_bytes``.

    Raises:
        OptionError: an unknown objective, "memory" without an slo, or a non-positive slo.
        InfeasiblePlanError: ``strict`` and no schedule found meets ``slo``; ``best_ms`` holds
            the best makespan found.
    """
    if objective not in ("latency", "memory"):
        raise OptionError(f"objective must be 'latency' or 'memory', got {objective!r}")
    if slo is not None and not slo > 0:
        raise OptionError(f"slo must be a positive makespan, got {slo!r}")
    if objective == "memory" and slo is None:
        raise OptionError('objective="memory" needs an slo: the makespan the schedule must meet')
    budget = default_budget_s(graph, objective) if budget_s is None else budget_s
    if objective == "latency":
        best = solve_latency(graph, budget, seed)
    else:
        best, _ = solve_memory(graph, float(slo), budget, seed)  # type: ignore[arg-type]
    result = rescore(
        graph, dataclasses.replace(best, algorithm="solve", objective=objective, slo=slo)
    )
    if strict and result.slo_met is False:
        raise InfeasiblePlanError(
            f"no schedule found meets the SLO of {slo:g}: the best makespan found is"
            f" {result.makespan:g}",
            best_ms=result.makespan,
        )
    return result
