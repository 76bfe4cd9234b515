"""The simulator and the memory measure, on hand-computed cases, and as properties of every
schedule the algorithms make (hypothesis)."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schedule_checks import assert_valid

from torch_chrion.errors import PlanError
from torch_chrion.schedule import Schedule, TaskGraph, heft, milp_schedule, simulate, solve
from torch_chrion.schedule.memory import accelerator_bytes, working_set_bound
from torch_chrion.schedule.simulate import ExecutorCosts


def test_replay_of_a_hand_schedule():
    # a -> c, b -> c; a on cuda (2), b on cpu (3), c on cpu (1); a->c transfer 4
    g = TaskGraph([[5, 2], [3, 9], [1, 1]], {(0, 2): 4.0, (1, 2): 7.0}, devices=["cpu", "cuda:0"])
    s = Schedule([1, 0, 0], [0] * 3, [0] * 3, [[1, 2], [0]], 0.0)
    sim = simulate(g, s)
    assert sim.start == [0.0, 0.0, 6.0]  # c waits for a's output: 2 + 4
    assert sim.finish == [2.0, 3.0, 7.0]
    assert sim.makespan == 7.0
    assert sim.busy == [4.0, 2.0]


def test_orders_that_contradict_a_dependency_deadlock():
    g = TaskGraph([[1], [1]], {(0, 1): 0.0}, names=["first", "second"])
    s = Schedule([0, 0], [0, 0], [0, 0], [[1, 0]], 0.0)
    with pytest.raises(PlanError, match="deadlocks.*waits on task 'second'"):
        simulate(g, s)


def test_a_task_missing_from_the_orders_is_refused():
    g = TaskGraph([[1], [1]], {}, names=["x", "y"])
    with pytest.raises(PlanError, match="'y' is in no device's order"):
        simulate(g, Schedule([0, 0], [0, 0], [0, 0], [[0]], 0.0))


def test_memory_measure_by_hand():
    # chain a -> b -> c on cuda, plus d on cpu feeding c. Output bytes 100, 10, 1, 1000;
    # weights 7 on a, 70 on c. Costs 1 each; d->c transfer 0.5.
    g = TaskGraph(
        [[1, 1]] * 4,
        {(0, 1): 1.0, (1, 2): 1.0, (3, 2): 0.5},
        devices=["cpu", "cuda:0"],
        weight_bytes=[7, 0, 70, 0],
        out_bytes=[100, 10, 1, 1000],
    )
    s = Schedule([1, 1, 1, 0], [0] * 4, [0] * 4, [[3], [0, 1, 2]], 0.0)
    sim = simulate(g, s)
    assert sim.start == [0.0, 1.0, 2.0, 0.0]
    # cuda buffers: a [0, 2) 100; b [1, 3) 10; c [2, 3) 1; copy of d [1, 3) 1000.
    # live at t=1: 100 + 10 + 1000 = 1110; at t=2: 10 + 1 + 1000 = 1011 -> peak 1110
    assert sim.peak_bytes[1] == 7 + 70 + 1110
    # cpu: d's own buffer [0, 1.5): it is freed when the copy to cuda completes
    assert sim.peak_bytes[0] == 1000
    assert sim.accelerator_bytes == 1187
    # working set bound: c's inputs b, d + its output = 1011; a: 100; b: 110 -> 77 + 1011
    assert working_set_bound(g, s.device) == 77 + 1011 <= sim.accelerator_bytes


def test_no_accelerator_means_zero_accelerator_bytes():
    g = TaskGraph([[1, 1]], {}, devices=["cpu:0", "cpu:1"], weight_bytes=[5], out_bytes=[5])
    s = heft(g)
    assert accelerator_bytes(g, s.device, s.start, s.finish) == 0.0
    assert simulate(g, s).peak_bytes[s.device[0]] == 10


@st.composite
def task_graphs(draw):
    n = draw(st.integers(1, 9))
    devices = draw(st.sampled_from([["cpu"], ["cpu", "cuda:0"], ["cpu:0", "cpu:1", "cuda:0"],
                                    ["cpu:0", "cpu:1"]]))  # fmt: skip
    m = len(devices)
    value = st.one_of(st.just(0.0), st.floats(0.1, 50), st.just(math.inf))
    cost = [[draw(value) for _ in range(m)] for _ in range(n)]
    for row in cost:
        if all(math.isinf(c) for c in row):
            row[draw(st.integers(0, m - 1))] = draw(st.floats(0.0, 50))
    pairs = [(u, v) for u in range(n) for v in range(u + 1, n)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=12)) if pairs else []
    edges = {p: draw(st.one_of(st.just(0.0), st.floats(0.0, 80))) for p in chosen}
    nbytes = st.lists(st.integers(0, 1000), min_size=n, max_size=n)
    return TaskGraph(
        cost, edges, devices=devices, weight_bytes=draw(nbytes), out_bytes=draw(nbytes)
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task_graphs())
def test_heft_and_solve_schedules_are_valid_and_replay_exactly(g):
    plain = heft(g)
    assert_valid(g, plain)
    best = solve(g, budget_s=0.02)
    assert_valid(g, best)
    assert best.makespan <= plain.makespan
    lean = solve(g, "memory", slo=plain.makespan * 1.3 + 1.0, budget_s=0.02)
    assert_valid(g, lean)
    assert lean.slo_met == (lean.makespan <= lean.slo)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task_graphs())
def test_milp_schedules_are_valid_and_replay_exactly(g):
    result = milp_schedule(g, "latency", time_limit_s=20)
    assert result.schedule is not None
    assert_valid(g, result.schedule)
    assert result.schedule.makespan <= result.value * (1 + 1e-6) + 1e-6


def test_simulator_on_a_large_random_schedule_matches_heft():
    from torch_chrion.schedule import random_task_graph

    g = random_task_graph(np.random.default_rng(3), 3000, devices=("cpu:0", "cpu:1", "cuda:0"))
    assert_valid(g, heft(g))


def test_parked_lanes_and_a_parked_caller_pay_the_wake_up_as_worked_out_by_hand():
    # a (cpu:0, 2) -> b (cpu:1, 1); c (cpu:1, 1.95) runs first on cpu:1 in the third case
    g = TaskGraph([[2, 2], [1, 1], [1.95, 1.95]], {(0, 1): 0.0}, devices=["cpu:0", "cpu:1"])
    a_then_b = Schedule([0, 1, 1], [0] * 3, [0] * 3, [[0], [2, 1]], 0.0)
    only_a_b = TaskGraph([[2, 2], [1, 1]], {(0, 1): 0.0}, devices=["cpu:0", "cpu:1"])
    chain = Schedule([0, 1], [0] * 2, [0] * 2, [[0], [1]], 0.0)
    costs = ExecutorCosts(step_ms=0.1, handoff_ms=0.5, call_ms=0.25, wake_ms=3.0, spin_ms=1.0)
    # cpu:1 idle since the call began (0) when a ends (2.1): parked, so b arrives at
    # 2.1 + 0.5 + 3 and ends at 6.7; the call (6.95 > 1) outlasts the caller's spin: + 3
    sim = simulate(only_a_b, chain, costs)
    assert sim.start == pytest.approx([0.25, 5.85])
    assert sim.makespan == pytest.approx(6.95 + 3.0)
    # polling for 10 ms: nobody parks; b arrives at 2.6
    polling = simulate(only_a_b, chain, dataclasses.replace(costs, spin_ms=10.0))
    assert polling.start == pytest.approx([0.25, 2.85])
    assert polling.makespan == pytest.approx(3.95)
    # c keeps cpu:1 busy until 2.05: it still polls when a ends at 2.1, so b arrives at 2.6
    busy = simulate(g, a_then_b, costs)
    assert busy.start == pytest.approx([0.25, 2.85, 0.25])
    assert busy.makespan == pytest.approx(3.95 + 3.0)


def test_lanes_short_of_cores_share_them_as_worked_out_by_hand():
    # a (cpu:0, 2) and b (cpu:1, 1) side by side, then c (cpu:0, 1) after both
    g = TaskGraph([[2, 2], [1, 1], [1, 1]], {(0, 2): 0.0, (1, 2): 0.0}, devices=["cpu:0", "cpu:1"])
    s = Schedule([0, 1, 0], [0] * 3, [0] * 3, [[0, 2], [1]], 0.0)
    polling = dict(spin_ms=100.0)
    # one core: a and b run at half speed until b ends (1 / 0.5 = 2), a's last unit alone
    # (3), then c (4): the work one after the other
    one = simulate(g, s, ExecutorCosts(**polling, cores=1.0))
    assert one.start == pytest.approx([0.0, 0.0, 3.0])
    assert one.finish == pytest.approx([3.0, 2.0, 4.0])
    assert one.makespan == pytest.approx(4.0)
    assert one.busy == [3.0, 1.0]  # work, not wall time
    # 1.5 cores: 0.75 each until b ends (1 / 0.75), a's 2 - 1 left at full speed
    some = simulate(g, s, ExecutorCosts(**polling, cores=1.5))
    assert some.finish == pytest.approx([1 / 0.75 + 1.0, 1 / 0.75, 1 / 0.75 + 2.0])
    # the call's fixed costs on top: step 0.1 per task, 0.5 hand-off from b to c, call 0.25;
    # one core: a (2.1 of work) and b (1.1) share it until b ends at 2.2; a's 1.0 left ends
    # at 3.2; c waits for a (3.2; b's hand-off landed at 2.7) and ends at 4.3
    costs = ExecutorCosts(step_ms=0.1, handoff_ms=0.5, call_ms=0.25, cores=1.0, **polling)
    charged = simulate(g, s, costs)
    assert charged.finish == pytest.approx([t + 0.25 for t in (3.2, 2.2, 4.3)])
    # as many cores as lanes: nothing shared, the ideal replay's times
    assert simulate(g, s, ExecutorCosts(**polling, cores=2.0)).finish == [2.0, 1.0, 3.0]


def test_a_wide_task_short_of_cores_runs_at_their_share():
    # W holds both lanes (wide cost 3) on one core: its two threads run at half speed
    g = TaskGraph(
        [[8, 8]], {}, devices=["cpu:0", "cpu:1"], wide_cost=[3.0], wide_lanes=["cpu:0", "cpu:1"]
    )
    s = Schedule([g.wide_option], [0.0], [0.0], [[0], [0]], 0.0)
    assert simulate(g, s, ExecutorCosts(spin_ms=100.0, cores=1.0)).makespan == pytest.approx(6.0)


def test_a_call_that_outlasts_the_spin_pays_the_long_wake_up_where_it_is_measured():
    g = TaskGraph([[2.0]], {}, devices=["cpu:0"])
    s = Schedule([0], [0.0], [0.0], [[0]], 0.0)
    costs = ExecutorCosts(call_ms=0.25, wake_ms=3.0, spin_ms=1.0)
    assert simulate(g, s, costs).makespan == pytest.approx(2.25 + 3.0)
    long = dataclasses.replace(costs, caller_wake_ms=0.5)
    assert simulate(g, s, long).makespan == pytest.approx(2.25 + 0.5)
    # within the spin the caller never parks
    assert simulate(g, s, dataclasses.replace(long, spin_ms=5.0)).makespan == pytest.approx(2.25)


def test_a_plan_on_one_runner_with_the_callers_threads_runs_inline_as_worked_out_by_hand():
    # a -> b, both wide over cpu:0 and cpu:1 (wide costs 2 and 1), or both on cpu:0 alone
    g = TaskGraph(
        [[4, 4], [2, 2]],
        {(0, 1): 0.0},
        devices=["cpu:0", "cpu:1"],
        wide_cost=[2.0, 1.0],
        wide_lanes=["cpu:0", "cpu:1"],
    )
    wide = Schedule([g.wide_option] * 2, [0.0] * 2, [0.0] * 2, [[0, 1], [0, 1]], 0.0)
    one_lane = Schedule([0, 0], [0.0] * 2, [0.0] * 2, [[0, 1], []], 0.0)
    costs = ExecutorCosts(
        step_ms=0.1, call_ms=0.25, wake_ms=3.0, spin_ms=1.0, inline_call_ms=0.05, inline_lanes=2
    )
    # the wide runner holds 2 lanes = inline_lanes: the caller runs it, 0.05 + 2.1 + 1.1, and
    # does not park
    assert simulate(g, wide, costs).makespan == pytest.approx(0.05 + 3.2)
    # cpu:0 alone holds 1 lane: queued, 0.25 + 4.1 + 2.1, and the caller parked (+ 3)
    assert simulate(g, one_lane, costs).makespan == pytest.approx(0.25 + 6.2 + 3.0)
    # a caller with one lane's threads runs the one-lane plan, not the wide one
    one = dataclasses.replace(costs, inline_lanes=1)
    assert simulate(g, one_lane, one).makespan == pytest.approx(0.05 + 6.2)
    assert simulate(g, wide, one).makespan == pytest.approx(0.25 + 3.2 + 3.0)


def test_a_caller_that_runs_the_wide_tasks_parks_only_after_the_last_of_them():
    # a (wide, 2) -> b on cpu:0 (3): the caller runs a itself (2 lanes = its threads)
    g = TaskGraph(
        [[4, 4], [3, 3]],
        {(0, 1): 0.0},
        devices=["cpu:0", "cpu:1"],
        wide_cost=[2.0, 1.0],
        wide_lanes=["cpu:0", "cpu:1"],
    )
    s = Schedule([g.wide_option, 0], [0.0] * 2, [0.0] * 2, [[0, 1], [0]], 0.0)
    costs = ExecutorCosts(call_ms=0.25, wake_ms=3.0, spin_ms=5.0, inline_lanes=2)
    # b ends 3 after a, within the spin: the caller is still polling when the call ends
    assert simulate(g, s, costs).makespan == pytest.approx(0.25 + 5.0)
    # with a 2 spin it parked 2 after a ended, and pays the wake-up
    short = dataclasses.replace(costs, spin_ms=2.0)
    assert simulate(g, s, short).makespan == pytest.approx(0.25 + 5.0 + 3.0)
    # a caller with another thread count leaves a to the wide lane's thread: it waited 5.25
    other = dataclasses.replace(costs, inline_lanes=1)
    assert simulate(g, s, other).makespan == pytest.approx(0.25 + 5.0 + 3.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task_graphs(), st.floats(1.0, 3.0))
def test_shared_cores_bound_the_replay_by_the_work_and_the_unshared_replay(g, cores):
    s = heft(g)
    step = ExecutorCosts(step_ms=0.01, spin_ms=1e9)
    unshared = simulate(g, s, step)
    shared = simulate(g, s, dataclasses.replace(step, cores=cores))
    host = [d for d in range(g.m) if not g.is_accelerator[d]]
    work = sum(shared.busy[d] for d in host)  # one thread per task here (no wide option)
    # no faster than the host work on that many cores, nor than with a core per lane
    if host:
        assert shared.makespan >= work / min(cores, len(host)) - 1e-6
    assert shared.makespan >= unshared.makespan - 1e-6
    if cores >= len(host):
        assert shared.finish == unshared.finish


def test_an_accelerator_lane_shares_no_core_with_the_host_lanes():
    # a (cpu:0, 2) and g (cuda:0, 2) side by side on one core: the GPU's time is not the core's
    g = TaskGraph([[2, 9], [9, 2]], {}, devices=["cpu:0", "cuda:0"])
    s = Schedule([0, 1], [0.0] * 2, [0.0] * 2, [[0], [1]], 0.0)
    assert simulate(g, s, ExecutorCosts(spin_ms=100.0, cores=1.0)).finish == [2.0, 2.0]
    # two host lanes and a GPU lane on one core: the host tasks take turns, the GPU's does not
    h = TaskGraph([[2, 2, 9], [1, 1, 9], [9, 9, 2]], {}, devices=["cpu:0", "cpu:1", "cuda:0"])
    t = Schedule([0, 1, 2], [0.0] * 3, [0.0] * 3, [[0], [1], [2]], 0.0)
    assert simulate(h, t, ExecutorCosts(spin_ms=100.0, cores=1.0)).finish == pytest.approx(
        [3.0, 2.0, 2.0]
    )


def test_tasks_side_by_side_run_at_their_paired_speed_as_worked_out_by_hand():
    # a (cpu:0, 2 alone, 1.5x slower beside another) and b (cpu:1, 1 alone, 1.25x) side by side,
    # then c after both on cpu:0 (1, 2x slower beside another: alone by then)
    g = TaskGraph(
        [[2, 2], [1, 1], [1, 1]],
        {(0, 2): 0.0, (1, 2): 0.0},
        devices=["cpu:0", "cpu:1"],
        paired_slowdown=[1.5, 1.25, 2.0],
    )
    s = Schedule([0, 1, 0], [0.0] * 3, [0.0] * 3, [[0, 2], [1]], 0.0)
    polling = {"spin_ms": 100.0}
    # b at 1/1.25 ends at 1.25; a did 1.25 / 1.5 of its 2 by then, the rest alone: 1.25 + 7/6
    a_ends = 1.25 + (2 - 1.25 / 1.5)
    sim = simulate(g, s, ExecutorCosts(**polling))
    assert sim.finish == pytest.approx([a_ends, 1.25, a_ends + 1.0])
    # with one core as well: half a core each, which is slower than either slowdown (not both
    # at once), until b ends at 2; a did 1 of its 2 by then, the rest alone on the core: the
    # two one after the other
    one = simulate(g, s, ExecutorCosts(**polling, cores=1.0))
    assert one.finish == pytest.approx([3.0, 2.0, 4.0])
    # 1.8 cores: 0.9 each, but a beside b runs at 1 / 1.5 and b at 1 / 1.25 = 0.8: b ends at
    # 1.25 as with a core each
    most = simulate(g, s, ExecutorCosts(**polling, cores=1.8))
    assert most.finish == pytest.approx([a_ends, 1.25, a_ends + 1.0])
    # the ideal replay (what the schedulers assume) knows no slowdown
    assert simulate(g, s).finish == [2.0, 1.0, 3.0]


def test_a_wide_task_has_no_paired_slowdown_of_its_own():
    # W holds both lanes: nothing runs beside it, and its cost has its threads in it
    g = TaskGraph(
        [[8, 8], [1, 1]],
        {(0, 1): 0.0},
        devices=["cpu:0", "cpu:1"],
        wide_cost=[3.0, math.inf],
        wide_lanes=["cpu:0", "cpu:1"],
        paired_slowdown=[2.0, 2.0],
    )
    s = Schedule([g.wide_option, 1], [0.0] * 2, [0.0] * 2, [[0], [0, 1]], 0.0)
    assert simulate(g, s, ExecutorCosts(spin_ms=100.0)).finish == pytest.approx([3.0, 4.0])


@pytest.mark.parametrize("slowdown", [[0.5], [math.inf], [1.0, 1.0]])
def test_a_paired_slowdown_below_one_or_of_the_wrong_shape_is_refused(slowdown):
    with pytest.raises(PlanError, match="paired_slowdown"):
        TaskGraph([[1.0, 1.0]], {}, devices=["cpu:0", "cpu:1"], paired_slowdown=slowdown)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task_graphs(), st.floats(1.0, 3.0))
def test_a_paired_slowdown_lies_between_the_unslowed_replay_and_every_task_slowed(g, slowdown):
    # a core per lane: each task takes between its cost and its cost times its slowdown, and
    # with the orders fixed the replay is no faster than without slowdowns and no slower than
    # with every host task's cost (and step) times its slowdown throughout
    slowed = TaskGraph(
        g.cost,
        g.edges,
        devices=g.devices,
        shares_memory=[[a == b for b in g.memory_group] for a in g.memory_group],
        paired_slowdown=[slowdown] * g.n,
    )
    s, costs = heft(g), ExecutorCosts(step_ms=0.01, spin_ms=1e9)
    paired = simulate(slowed, s, costs)
    assert paired.makespan >= simulate(g, s, costs).makespan - 1e-6
    host = ~g.is_accelerator
    worst = g.with_cost(np.where(host[None, :], g.cost * slowdown, g.cost))
    scaled = dataclasses.replace(costs, step_ms=costs.step_ms * slowdown)
    assert paired.makespan <= simulate(worst, s, scaled).makespan + 1e-6
