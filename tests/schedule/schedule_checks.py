"""Shared checks and references for the schedule tests: validity of a schedule, and brute
force over every placement and every topological order (the independent reference)."""

from __future__ import annotations

import itertools

from torch_chrion.schedule import Schedule, TaskGraph, simulate

EPS = 1e-9


def assert_valid(graph: TaskGraph, s: Schedule) -> None:
    """Dependencies and transfers respected, one task at a time per device, and the
    simulator's replay gives the schedule's own times."""
    cost = graph.option_cost
    for i in range(graph.n):
        d = s.device[i]
        assert cost[i, d] < float("inf"), f"task {i} on a device that cannot run it"
        assert abs(s.finish[i] - s.start[i] - cost[i, d]) <= EPS * (1 + s.finish[i])
    for (u, v), _ in graph.edges.items():
        need = s.finish[u] + graph.transfer(u, v, s.device[u], s.device[v])
        assert s.start[v] >= need - EPS * (1 + need), f"edge {u}->{v} violated"
    for d, tasks in enumerate(s.order):
        assert all(d in graph.option_lanes[s.device[i]] for i in tasks)
        for a, b in itertools.pairwise(tasks):
            assert s.start[b] >= s.finish[a] - EPS * (1 + s.finish[a]), f"overlap on device {d}"
    # each task once in the order of every device it holds (a wide task: several)
    held = sorted(i for i in range(graph.n) for _ in graph.option_lanes[s.device[i]])
    assert sorted(i for tasks in s.order for i in tasks) == held
    sim = simulate(graph, s)
    assert sim.makespan == s.makespan
    assert sim.start == list(s.start) and sim.finish == list(s.finish)


def topological_orders(graph: TaskGraph):
    """Every topological order of a (tiny) graph."""
    for perm in itertools.permutations(range(graph.n)):
        pos = {t: k for k, t in enumerate(perm)}
        if all(pos[u] < pos[v] for u, v in graph.edges):
            yield perm


def all_schedules(graph: TaskGraph):
    """ASAP schedules of every placement x topological order: they include an optimal schedule
    of any objective that is monotone in the times (sort an optimal schedule by start time)."""
    orders = list(topological_orders(graph))
    for placement in itertools.product(*graph.runnable_on):
        for perm in orders:
            per_device = [
                [i for i in perm if d in graph.option_lanes[placement[i]]] for d in range(graph.m)
            ]
            draft = Schedule(list(placement), [0.0] * graph.n, [0.0] * graph.n, per_device, 0.0)
            yield placement, simulate(graph, draft)
