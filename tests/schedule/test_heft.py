"""HEFT against the published example (Topcuoglu, Hariri, Wu 2002, Fig. 2 and Table 1)."""

import pytest

from torch_chrion.errors import PlanError
from torch_chrion.schedule import TaskGraph, heft, simulate, upward_rank

# Table 1: computation cost of tasks n1..n10 on processors P1, P2, P3
PAPER_COST = [
    [14, 16, 9],
    [13, 19, 18],
    [11, 13, 19],
    [13, 8, 17],
    [12, 13, 10],
    [13, 16, 9],
    [7, 15, 11],
    [5, 11, 14],
    [18, 12, 20],
    [21, 7, 16],
]
# Fig. 2: edge weights (communication costs), 1-based task numbers
PAPER_EDGES = {
    (1, 2): 18, (1, 3): 12, (1, 4): 9, (1, 5): 11, (1, 6): 14,
    (2, 8): 19, (2, 9): 16, (3, 7): 23, (4, 8): 27, (4, 9): 23,
    (5, 9): 13, (6, 8): 15, (7, 10): 17, (8, 10): 11, (9, 10): 13,
}  # fmt: skip


def paper_graph() -> TaskGraph:
    return TaskGraph(PAPER_COST, {(u - 1, v - 1): c for (u, v), c in PAPER_EDGES.items()},
                     devices=["P1", "P2", "P3"])  # fmt: skip


def test_upward_ranks_are_the_published_ones():
    published = [108.000, 77.000, 80.000, 80.000, 69.000, 63.333, 42.667, 35.667, 44.333, 14.667]
    assert [round(r, 3) for r in upward_rank(paper_graph())] == published


def test_paper_example_schedules_to_makespan_80_as_published():
    g = paper_graph()
    s = heft(g)
    assert s.makespan == 80
    # Fig. 4(a): the published HEFT schedule, task -> (processor, start, finish)
    published = {
        1: ("P3", 0, 9), 3: ("P3", 9, 28), 4: ("P2", 18, 26), 2: ("P1", 27, 40),
        5: ("P3", 28, 38), 6: ("P2", 26, 42), 9: ("P2", 56, 68), 7: ("P3", 38, 49),
        8: ("P1", 57, 62), 10: ("P2", 73, 80),
    }  # fmt: skip
    got = {i + 1: (g.devices[s.device[i]], s.start[i], s.finish[i]) for i in range(10)}
    assert got == published
    assert simulate(g, s).makespan == 80


def test_insertion_fills_an_idle_gap():
    # task 0 runs on cuda; its successor, task 1, runs on cpu after the transfer, leaving cpu
    # idle before it, where the independent task 2 fits.
    cost = [[10, 1], [1, 100], [3, 100]]  # task 0 fast on d1; tasks 1, 2 only sensible on d0
    g = TaskGraph(cost, {(0, 1): 5.0}, devices=["cpu", "cuda:0"])
    s = heft(g)
    # ranks: task 0 highest, then 1, then 2. Task 1 on cpu starts at 1 + 5 = 6; task 2 is
    # inserted in cpu's idle gap [0, 6) instead of after task 1.
    assert s.device == [1, 0, 0]
    assert (s.start[1], s.start[2]) == (6.0, 0.0)
    assert s.order[0] == [2, 1]


def test_cpu_lanes_share_memory_so_their_edges_are_free():
    g = TaskGraph([[1, 1], [1, 1]], {(0, 1): 50.0}, devices=["cpu:0", "cpu:1"])
    assert g.transfer(0, 1, 0, 1) == 0.0
    g2 = TaskGraph([[1, 1], [1, 1]], {(0, 1): 50.0}, devices=["cpu", "cuda:0"])
    assert g2.transfer(0, 1, 0, 1) == 50.0
    custom = TaskGraph([[1, 1], [1, 1]], {(0, 1): 50.0}, devices=["a", "b"],
                       shares_memory=[[True, True], [True, True]])  # fmt: skip
    assert custom.transfer(0, 1, 0, 1) == 0.0


def test_cycle_is_reported_naming_a_task_on_it():
    with pytest.raises(PlanError, match="cycle through task '(b|c)'"):
        TaskGraph([[1], [1], [1]], {(0, 1): 0, (1, 2): 0, (2, 1): 0}, names=["a", "b", "c"])


@pytest.mark.parametrize(
    "cost, edges, message",
    [
        ([[1, float("inf")], [float("inf"), float("inf")]], {}, "cannot run on any device"),
        ([[1], [-1]], {}, "negative"),
        ([[1], [1]], {(0, 5): 1}, "does not join"),
        ([[1], [1]], {(0, 1): -2}, "transfer time"),
    ],
)
def test_bad_task_graphs_are_refused(cost, edges, message):
    with pytest.raises(PlanError, match=message):
        TaskGraph(cost, edges)


def test_heft_scales_linearly_enough_for_a_long_chain():
    # 20k-task chain: the cycle check and ranks are linear (an O(n^2) one would take minutes)
    n = 20000
    g = TaskGraph([[1.0, 2.0]] * n, {(i, i + 1): 1.0 for i in range(n - 1)})
    assert heft(g).makespan == n
