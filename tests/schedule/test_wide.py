"""Wide placements (Note [Chrion wide placement]): a task that holds every CPU lane at once.

References: a timeline worked out by hand, brute force over every placement (wide included)
and every order, and the task graph and plan built from a synthetic profile."""

import math
import operator

import numpy as np
import pytest
import torch
from models import BatchFirstLSTM, BiGRUWithState
from schedule_checks import all_schedules, assert_valid
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.errors import PlanError
from torch_chrion.graph import capture
from torch_chrion.graph.nodes import schedulable_nodes
from torch_chrion.schedule import (
    Plan,
    Schedule,
    TaskGraph,
    heft,
    make_plan,
    make_plans,
    milp_schedule,
    random_task_graph,
    simulate,
    solve,
    task_graph_from,
)
from torch_chrion.schedule.plan import TRIAL_RATIO, WHOLE_WIDE_MAX_RATIO
from torch_chrion.schedule.simulate import ExecutorCosts
from torch_chrion.schedule.solve import schedule_placement, wide_everywhere
from torch_chrion.settings import ChrionSettings

LANES = ["cpu:0", "cpu:1"]
INF = math.inf


def hand_graph() -> TaskGraph:
    # a (2 ms) -> W (wide 3 ms, 8 ms on one lane) -> c (1 ms); b (5 ms) and d (1 ms) alone
    return TaskGraph(
        [[2, 2], [8, 8], [1, 1], [5, 5], [1, 1]],
        {(0, 1): 0.0, (1, 2): 0.0},
        devices=LANES,
        wide_cost=[INF, 3.0, INF, INF, INF],
        wide_lanes=LANES,
        names=["a", "W", "c", "b", "d"],
    )


def hand_schedule(graph: TaskGraph) -> Schedule:
    # cpu:0 runs a, W, d; cpu:1 runs b, holds W, then runs c
    wide = graph.wide_option
    return Schedule([0, wide, 1, 1, 0], [0.0] * 5, [0.0] * 5, [[0, 1, 4], [3, 1, 2]], 0.0)


def test_the_simulator_holds_every_lane_of_a_wide_task_as_worked_out_by_hand():
    graph = hand_graph()
    sim = simulate(graph, hand_schedule(graph))
    # W waits for b to free cpu:1 (5), holds both lanes for 3; c and d follow it
    assert sim.start == [0.0, 5.0, 8.0, 0.0, 8.0]
    assert sim.finish == [2.0, 8.0, 9.0, 5.0, 9.0]
    assert sim.makespan == 9.0
    assert sim.busy == [2.0 + 3.0 + 1.0, 5.0 + 3.0 + 1.0]


def test_the_simulator_charges_the_executor_costs_of_a_hold_as_worked_out_by_hand():
    graph = hand_graph()
    costs = ExecutorCosts(step_ms=0.1, handoff_ms=0.5, call_ms=0.25)
    sim = simulate(graph, hand_schedule(graph), costs)
    # a [0, 2.1] and b [0, 5.1]; W runs on a thread of its own: cpu:1's thread wakes it
    # (5.6), it ends at 8.7 and wakes cpu:0 for d and cpu:1 for c (9.2, when W's output
    # reaches c too)
    expected_start = [0.0, 5.6, 9.2, 0.0, 9.2]
    expected_finish = [2.1, 8.7, 10.3, 5.1, 10.3]
    assert sim.start == pytest.approx([t + 0.25 for t in expected_start])
    assert sim.finish == pytest.approx([t + 0.25 for t in expected_finish])
    assert sim.makespan == pytest.approx(10.3 + 0.25)


def test_the_callers_team_polling_after_its_wide_task_slows_the_lanes_as_worked_out_by_hand():
    # W (wide, 1 ms) feeds f on cpu:0 and r on cpu:1 (2 ms each); the caller runs W in its
    # team, whose other thread polls for 1 ms after it, holding one of the two cores
    graph = TaskGraph(
        [[4, 4], [2, 2], [2, 2]],
        {(0, 1): 0.0, (0, 2): 0.0},
        devices=LANES,
        wide_cost=[1.0, INF, INF],
        wide_lanes=LANES,
        names=["W", "f", "r"],
    )
    wide = graph.wide_option
    schedule = Schedule([wide, 0, 1], [0.0] * 3, [0.0] * 3, [[0, 1], [0, 2]], 0.0)
    polling = ExecutorCosts(inline_lanes=2, team_spin_ms=1.0)
    # from 1 to 2 f and r share the one core left (half speed each: 0.5 ms of work done),
    # then run at full speed for their last 1.5 ms
    sim = simulate(graph, schedule, polling)
    assert sim.start == [0.0, 1.0, 1.0]
    assert sim.finish == pytest.approx([1.0, 3.5, 3.5])
    # a team that sleeps at once leaves both cores to the lanes
    assert simulate(graph, schedule, ExecutorCosts(inline_lanes=2)).finish == [1.0, 3.0, 3.0]
    # nor does a wide task the caller does not run (its thread count is not the caller's)
    assert simulate(graph, schedule, ExecutorCosts(team_spin_ms=1.0)).makespan == 3.0


def test_a_wide_task_missing_from_a_lane_it_holds_is_refused():
    graph = hand_graph()
    bad = hand_schedule(graph)
    bad.order = [[0, 1, 4], [3, 2]]
    with pytest.raises(PlanError, match="'W' is in the order of only some of its lanes"):
        simulate(graph, bad)


def wide_random_graph(seed: int, n: int) -> TaskGraph:
    plain = random_task_graph(np.random.default_rng(300 + seed), n, devices=LANES, beta=0.3)
    rng = np.random.default_rng(seed)
    wide = np.where(rng.random(n) < 0.5, plain.cost.min(axis=1) * rng.uniform(0.4, 1.2, n), INF)
    return TaskGraph(plain.cost, plain.edges, devices=LANES, wide_cost=wide, wide_lanes=LANES)


@pytest.mark.parametrize("seed", range(4))
def test_schedulers_with_wide_options_against_brute_force(seed):
    graph = wide_random_graph(seed, 5)
    brute = min(sim.makespan for _, sim in all_schedules(graph))
    for schedule in (heft(graph), solve(graph, budget_s=0.5)):
        assert_valid(graph, schedule)
        assert schedule.makespan >= brute - 1e-9
    exact = milp_schedule(graph, "latency")
    assert exact.optimal
    assert exact.schedule.makespan == pytest.approx(brute, rel=1e-6)


def model(x, w1, w2):
    a = torch.mm(x, w1)  # the big one
    b = torch.relu(a)
    c = torch.mm(x, w2)
    return b.sum(dim=1) + c.sum(dim=1)


class WideProfile:
    """A profile as make_plan reads it, with wide costs for the first mm."""

    def __init__(self, gm, wide_ratio: float):
        self.devices = list(LANES)
        self.graph_hash = "wide"
        self.transfer = {}
        self.node_ms = {}
        mms = [n for n in gm.graph.nodes if n.target is torch.ops.aten.mm.default]
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is not operator.getitem:
                ms = 10.0 if node is mms[0] else 0.5
                self.node_ms[node.name] = {"cpu:0": ms, "cpu:1": ms}
        self.big = mms[0].name
        self.wide_lanes = list(LANES)
        self.wide_ms = {self.big: 10.0 * wide_ratio}


def aten_graph():
    return make_fx(model)(torch.randn(4, 8), torch.randn(8, 16), torch.randn(8, 16))


def test_heft_places_wide_a_node_whose_threads_cost_much_less_and_not_otherwise():
    gm = aten_graph()
    fast = WideProfile(gm, wide_ratio=0.55)
    graph, names = task_graph_from(gm, fast)
    schedule = heft(graph)
    assert schedule.device[names.index(fast.big)] == graph.wide_option
    assert all(
        d != graph.wide_option for k, d in enumerate(schedule.device) if names[k] != fast.big
    )
    # 0.9 of the one-lane cost is within a profile's noise and the hold's own cost: no option
    slow = WideProfile(gm, wide_ratio=0.9)
    graph, names = task_graph_from(gm, slow)
    assert math.isinf(graph.wide_cost[names.index(slow.big)])
    assert graph.wide_option not in heft(graph).device


def test_a_plan_with_a_wide_node_round_trips_through_json_and_replays():
    gm = aten_graph()
    profile = WideProfile(gm, wide_ratio=0.55)
    plan = make_plan(gm, profile, ChrionSettings(devices=tuple(LANES)))
    assert plan.wide == {profile.big: LANES}
    assert plan.placement[profile.big] == "cpu:0"
    assert profile.big in plan.lane_order("cpu:1")
    again = Plan.from_json(plan.to_json())
    assert again == plan
    graph, names = task_graph_from(gm, profile)
    replay = simulate(graph, again.schedule(graph, names))
    assert replay.makespan == pytest.approx(plan.predicted_ms)
    # while it runs, nothing else does
    big = profile.big
    for node in plan.order:
        if node != big:
            assert (
                plan.finish_ms[node] <= plan.start_ms[big]
                or plan.start_ms[node] >= plan.finish_ms[big]
            )
    assert "cpu:0+cpu:1" in plan.table()


def test_the_gantt_draws_a_wide_node_on_every_lane_it_holds(tmp_path):
    gm = aten_graph()
    profile = WideProfile(gm, wide_ratio=0.55)
    plan = make_plan(gm, profile, ChrionSettings(devices=tuple(LANES)))
    figure = plan.gantt(tmp_path / "wide.png")
    bars = figure.axes[0].patches
    start = plan.start_ms[profile.big]
    on_big = [b for b in bars if b.get_x() == start and b.get_width() > 1.0]
    # one bar per lane: cpu:0 runs it (row 0), cpu:1 holds it (row 1, hatched)
    assert sorted(round(b.get_y() + b.get_height() / 2) for b in on_big) == [0, 1]
    assert [b.get_hatch() for b in on_big if round(b.get_y() + 0.3) == 1] == ["//"]


@pytest.mark.parametrize(
    "held, message",
    [
        (["cpu:1", "cpu:0"], "its own \\('cpu:0'\\) first"),
        (["cpu:0"], "two or more distinct lanes"),
        (["cpu:0", "cpu:7"], "'cpu:7', which is not a CPU lane"),
    ],
)
def test_a_plan_file_with_a_bad_wide_entry_is_refused(held, message):
    gm = aten_graph()
    profile = WideProfile(gm, wide_ratio=0.55)
    plan = make_plan(gm, profile, ChrionSettings(devices=tuple(LANES)))
    plan.wide = {profile.big: held}
    with pytest.raises(PlanError, match=f"plan.json: wide node .*{message}"):
        Plan.from_json(plan.to_json(), "plan.json")


def test_a_plan_without_wide_nodes_stays_as_plans_were_written():
    gm = aten_graph()
    plan = make_plan(gm, WideProfile(gm, wide_ratio=0.9), ChrionSettings(devices=tuple(LANES)))
    assert plan.wide is None
    assert Plan.from_json(plan.to_json()) == plan


class RecurrentProfile:
    """A profile of a batch-1 recurrent model as make_plan reads it: each recurrent layer costs
    ``layer_ms`` on one lane and ``wide_ms`` placed wide (ratios as measured on the 2-core
    machine: 0.44 / 0.30 ms for an LSTM layer of 256 at 32 steps), the rest a few us."""

    def __init__(self, gm, layer_ms: float, wide_ms: float | None):
        self.devices = list(LANES)
        self.graph_hash = "recurrent"
        self.transfer = {}
        self.node_ms = {}
        self.layers = [n.name for n in schedulable_nodes(gm) if n.target.namespace == "chrion"]
        for node in schedulable_nodes(gm):
            ms = layer_ms if node.name in self.layers else 0.002
            self.node_ms[node.name] = {"cpu:0": ms, "cpu:1": ms}
        self.wide_lanes = list(LANES) if wide_ms is not None else []
        self.wide_ms = dict.fromkeys(self.layers, wide_ms) if wide_ms is not None else {}


# the executor's costs as calibrated on the 2-core machine (runtime.executor_costs)
CALIBRATED = ExecutorCosts(
    step_ms=2e-5, handoff_ms=0.0025, call_ms=0.0095, wake_ms=0.0013, spin_ms=0.05
)


def test_the_default_plan_places_each_layer_of_a_batch_1_recurrent_model_wide():
    torch.manual_seed(0)
    gm = capture(BatchFirstLSTM().eval(), (torch.randn(1, 32, 64),))
    settings = ChrionSettings(devices=tuple(LANES))
    profile = RecurrentProfile(gm, layer_ms=0.44, wide_ms=0.30)
    assert len(profile.layers) == 2  # one chrion::lstm node per layer, one after the other
    plan = make_plan(gm, profile, settings, costs=CALIBRATED)
    # the layers depend on each other: one lane alone would run them while the other idles;
    # the views before and after them run on their thread too (no hand-off to a parked lane)
    assert plan.wide == {name: LANES for name in ["transpose", *profile.layers, "transpose_1"]}
    graph, names = task_graph_from(gm, profile)
    replay = simulate(graph, plan.schedule(graph, names), CALIBRATED)
    assert replay.makespan == pytest.approx(plan.predicted_ms)
    narrow = make_plan(gm, RecurrentProfile(gm, 0.44, None), settings, costs=CALIBRATED)
    assert narrow.wide is None
    # the prediction counts the hold's hand-offs and still gains most of the layers' saving
    saved = 2 * (0.44 - 0.30)
    assert narrow.predicted_ms - saved <= plan.predicted_ms < narrow.predicted_ms - saved / 2
    # a wide cost within the profile's noise of the one-lane cost gives the search no wide
    # option; with the executor's costs, the whole graph placed wide is weighed against the
    # search's plan, and the plan is the faster replay of the two
    close_profile = RecurrentProfile(gm, 0.44, 0.40)
    searched = make_plan(gm, close_profile, settings)
    assert searched.wide is None
    every, _ = task_graph_from(gm, close_profile, every_wide_cost=True)
    replays = [
        simulate(every, searched.schedule(every, names), CALIBRATED).makespan,
        simulate(every, schedule_placement(every, wide_everywhere(every)), CALIBRATED).makespan,
    ]
    close = make_plan(gm, close_profile, settings, costs=CALIBRATED)
    whole = replays[1] <= WHOLE_WIDE_MAX_RATIO * replays[0]
    assert (close.wide is not None) == whole
    assert close.predicted_ms == pytest.approx(replays[1] if whole else replays[0])


def test_the_whole_graph_runs_wide_where_its_lanes_would_slow_each_other_more():
    torch.manual_seed(0)
    model = BiGRUWithState(layers=1).eval()
    gm = capture(model, model.example_inputs(seq=32, batch=1))
    profile = RecurrentProfile(gm, layer_ms=0.1, wide_ms=0.06)
    assert len(profile.layers) == 2  # the two directions, independent of each other
    settings = ChrionSettings(devices=tuple(LANES))
    # without the executor's costs, one direction per lane: 0.1 ms side by side, not 0.12 wide
    ideal = make_plan(gm, profile, settings)
    assert {ideal.placement[layer] for layer in profile.layers} == set(LANES)
    assert ideal.wide is None
    # side by side, each direction runs 1.5x its one-lane time (shared caches and memory):
    # 0.15 ms on the lanes, where the whole graph wide takes 0.12 and no hand-off
    profile.paired_ms = {name: 1.5 * ms["cpu:0"] for name, ms in profile.node_ms.items()}
    plan = make_plan(gm, profile, settings, costs=CALIBRATED)
    assert plan.wide == {name: LANES for name in plan.order}
    graph, names = task_graph_from(gm, profile, every_wide_cost=True)
    on_lanes = simulate(graph, ideal.schedule(graph, names), CALIBRATED).makespan
    assert plan.predicted_ms <= WHOLE_WIDE_MAX_RATIO * on_lanes
    assert plan.predicted_ms == pytest.approx(
        simulate(graph, plan.schedule(graph, names), CALIBRATED).makespan
    )


def test_make_plans_offers_the_other_of_two_plans_that_replay_close_for_a_trial():
    torch.manual_seed(0)
    model = BiGRUWithState(layers=1).eval()
    gm = capture(model, model.example_inputs(seq=32, batch=1))
    settings = ChrionSettings(devices=tuple(LANES))
    # one direction per lane (0.1 ms side by side) against the whole graph wide (0.12 ms)
    profile = RecurrentProfile(gm, layer_ms=0.1, wide_ms=0.06)
    plans = make_plans(gm, profile, settings, costs=CALIBRATED)
    assert len(plans) == 2
    chosen = make_plan(gm, profile, settings, costs=CALIBRATED)
    assert (plans[0].placement, plans[0].wide) == (chosen.placement, chosen.wide)
    assert [plan.wide is not None for plan in plans].count(True) == 1  # one is the whole wide
    graph, names = task_graph_from(gm, profile, every_wide_cost=True)
    for plan in plans:
        replay = simulate(graph, plan.schedule(graph, names), CALIBRATED).makespan
        assert plan.predicted_ms == pytest.approx(replay)
    assert plans[1].predicted_ms <= TRIAL_RATIO * plans[0].predicted_ms
    # the whole graph wide replaying far slower is not worth a trial
    assert len(make_plans(gm, RecurrentProfile(gm, 0.1, 0.3), settings, costs=CALIBRATED)) == 1
    # nor is anything without the executor's costs (no replay to put them close)
    assert len(make_plans(gm, profile, settings)) == 1


def test_paired_costs_give_each_task_its_slowdown_over_its_one_lane_cost():
    gm = aten_graph()
    profile = WideProfile(gm, wide_ratio=0.55)
    small = next(name for name in profile.node_ms if name != profile.big)
    # 12 ms beside the other lane against 10 alone: 1.2x; a paired cost below the one-lane
    # cost is noise, not a speed-up (1x); a node without one is not slowed
    profile.paired_ms = {profile.big: 12.0, small: 0.4}
    graph, names = task_graph_from(gm, profile)
    expected = [1.2 if name == profile.big else 1.0 for name in names]
    assert graph.paired_slowdown == pytest.approx(expected)
    # on one of the lanes alone, nothing runs beside it
    alone, _ = task_graph_from(gm, profile, ["cpu:0"])
    assert alone.paired_slowdown is None
    # the plan's prediction slows the big mm while the other lane runs beside it, only there
    costs = ExecutorCosts(spin_ms=1e9)
    plan = make_plan(gm, profile, ChrionSettings(devices=tuple(LANES)), costs=costs)
    profile.paired_ms = {}
    unslowed = make_plan(gm, profile, ChrionSettings(devices=tuple(LANES)), costs=costs)
    assert plan.placement == unslowed.placement
    assert plan.predicted_ms >= unslowed.predicted_ms


def bidirectional_layer() -> TaskGraph:
    # a layer split per direction: a view p and each direction's state slice (views, wide at
    # their one-lane cost) feed the directions f and r (1.6 ms on a lane, 1.2 / 1.15 wide),
    # whose outputs a cat c joins
    view = 0.005
    return TaskGraph(
        [[view, view], [view, view], [view, view], [1.6, 1.6], [1.6, 1.6], [0.06, 0.06]],
        {(0, 3): 0.0, (0, 4): 0.0, (1, 3): 0.0, (2, 4): 0.0, (3, 5): 0.0, (4, 5): 0.0},
        devices=LANES,
        wide_cost=[view, view, view, 1.2, 1.15, INF],
        wide_lanes=LANES,
        names=["p", "hf", "hr", "f", "r", "c"],
    )


def test_the_solver_runs_two_directions_side_by_side_where_heft_runs_both_wide():
    graph = bidirectional_layer()
    brute = min(sim.makespan for _, sim in all_schedules(graph))
    # HEFT's greed: f finishes first wide, and r then finishes first wide after it
    greedy = heft(graph)
    assert greedy.device[3] == greedy.device[4] == graph.wide_option
    assert greedy.makespan > 1.4 * brute
    found = solve(graph, budget_s=0.5)
    assert_valid(graph, found)
    assert found.makespan == pytest.approx(brute)
    assert {found.device[3], found.device[4]} == {0, 1}  # one direction per lane


class DirectionsProfile:
    """A profile as task_graph_from reads it: each recurrent node 1.6 ms on a lane and 72% of
    that wide, every other node 10 us (views wide at that cost, as from_graph gives them)."""

    def __init__(self, gm):
        self.devices, self.wide_lanes = list(LANES), list(LANES)
        self.graph_hash, self.transfer = "directions", {}
        self.node_ms, self.wide_ms = {}, {}
        for node in schedulable_nodes(gm):
            recurrent = node.target is torch.ops.chrion.lstm.default
            ms = 1.6 if recurrent else 0.01
            self.node_ms[node.name] = dict.fromkeys(LANES, ms)
            if recurrent:
                self.wide_ms[node.name] = 0.72 * ms


def test_the_directions_of_a_converted_bi_lstm_go_one_per_lane_not_both_wide(tmp_path):
    # the ONNX path's graph of a 2-layer bi-LSTM: per layer and direction, with some 30 views,
    # slices and concatenations around them. HEFT places all four directions wide, one after
    # the other; no move of one task or of its neighbours improves on it (each direction's
    # views are wide too), so the search stayed there (7.4 ms measured against onnxruntime's
    # 5.5 on the 2x128 batch-8 row of bench/cpu_rnn.py).
    from torch_chrion import onnx as chrion_onnx

    model, x = (
        torch.nn.LSTM(64, 128, num_layers=2, bidirectional=True).eval(),
        torch.randn(64, 8, 64),
    )
    path = tmp_path / "bilstm.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    gm = capture(chrion_onnx.to_fx(chrion_onnx.load_model(str(path))), (x,), granularity="layer")
    graph, names = task_graph_from(gm, DirectionsProfile(gm))
    directions = [k for k, name in enumerate(names) if graph.cost[k, 0] > 1.0]
    assert len(directions) == 4
    greedy = heft(graph)
    assert all(greedy.device[k] == graph.wide_option for k in directions)
    found = solve(graph, budget_s=0.5)
    assert_valid(graph, found)
    # two layers of two directions side by side: 2 x 1.6 ms and the views, against 4 x 1.15
    assert found.makespan < 3.5 < 4 * 0.72 * 1.6 <= greedy.makespan
    assert all(found.device[k] in (0, 1) for k in directions)


class LSTMWithState(torch.nn.Module):
    """Two LSTM layers of 256 that also return their final states: each state joins the two
    layers' (a small concatenation after the last layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(64, 256, num_layers=2)

    def forward(self, x):
        return self.lstm(x)


def test_small_ops_around_wide_layers_run_on_their_thread_not_a_parked_lane():
    torch.manual_seed(0)
    gm = capture(LSTMWithState().eval(), (torch.randn(32, 1, 64),))
    profile = RecurrentProfile(gm, layer_ms=0.44, wide_ms=0.30)
    light = [n.name for n in schedulable_nodes(gm) if n.name not in profile.layers]
    assert len(light) == 2 and all(
        n.target is torch.ops.aten.cat.default for n in schedulable_nodes(gm) if n.name in light
    )
    plan = make_plan(gm, profile, ChrionSettings(devices=tuple(LANES)), costs=CALIBRATED)
    # the states' concatenations compute (not views), but are too small for ATen to split:
    # on a lane, each would wait for that lane's thread, parked while the second layer ran
    assert plan.wide == {name: LANES for name in [*profile.layers, *light]}
