"""Each lane runs its nodes in the plan's order, on every call and with calls in flight at once
(Note [Chrion plan order] in csrc/executor/program.cpp)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from runtime_helpers import aten_graph, random_order, schedulable

from torch_chrion.runtime import PlacedGraph
from torch_chrion.runtime.placed_graph import executor_extension


def fan(x, w):
    # three independent branches per lane, then a join: every lane has several ready nodes at
    # once, so a lane that ran whatever became ready first would stray from the plan
    a, b, c = torch.sin(x), torch.cos(x), torch.exp(x)
    d, e, f = x @ w, torch.tanh(x), torch.sigmoid(x)
    return (a + b) * c + d - e * f


def test_every_call_of_3000_runs_each_lane_in_plan_order():
    x, w = torch.randn(4, 4), torch.randn(4, 4)
    gm = aten_graph(fan, x, w)
    nodes = schedulable(gm)
    placement = {n.name: ("cpu:0" if i % 2 else "cpu:1") for i, n in enumerate(nodes)}
    order = random_order(gm, seed=3)
    module = PlacedGraph(gm, placement, order=order)
    expected = {lane: [n for n in order if placement[n] == lane] for lane in module.lanes}
    assert all(len(names) >= 3 for names in expected.values())
    module.enable_trace()
    for _ in range(3000):
        module(x, w)
        seen = {lane: [] for lane in module.lanes}
        for event in module.last_trace():  # by start time; one lane's steps never overlap
            seen[event.lane].append(event.node)
        assert seen == expected
    torch.testing.assert_close(module(x, w), fan(x, w))


def logging_graph(log: list, lanes: dict[str, str]):
    """x, tag -> one Python node per entry of ``lanes``; each logs (tag, its name) when it runs
    and reads x only, so all are ready at once."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    tag = graph.placeholder("tag")
    outs = []
    for name in lanes:

        def step(x, tag, name=name):
            log.append((int(tag), name))
            return x + 1

        step.__name__ = name
        outs.append(graph.call_function(step, (x, tag)))
    graph.output(tuple(outs))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    return gm, {n.name: lanes[n.target.__name__] for n in outs}


def test_each_request_keeps_plan_order_with_requests_in_flight_at_once():
    log: list[tuple[int, str]] = []
    lanes = {f"s{k}": ("cpu:0" if k % 2 else "cpu:1") for k in range(8)}
    gm, placement = logging_graph(log, lanes)
    order = sorted(placement, key=lambda n: -int(n[1:]))  # the reverse of graph order
    module = PlacedGraph(gm, placement, order=order)
    expected = {lane: [n for n in order if placement[n] == lane] for lane in module.lanes}

    def call(tag):
        module(torch.zeros(1), tag)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(call, range(400)))
    for tag in range(400):
        ran = [name for t, name in log if t == tag]
        for lane, names in expected.items():
            assert [n for n in ran if placement[n] == lane] == names, (tag, lane)


def test_an_order_against_the_data_is_refused_when_the_program_is_built():
    gm = aten_graph(lambda x: torch.sin(x).cos(), torch.randn(3))
    names = [n.name for n in schedulable(gm)]
    lanes = [{"name": "cpu", "device": "cpu", "threads": 1}]
    steps = [
        {
            "kind": "op",
            "name": names[k],
            "op": f"aten::{names[k]}",
            "overload": "",
            "lane": 0,
            "rank": rank,
            "first_output": 1 + k,
            "num_outputs": 1,
            "args": [("v", k, -1)],
        }
        for k, rank in ((0, 1), (1, 0))  # cos (reads sin) ranked before sin on one lane
    ]
    description = {"lanes": lanes, "num_inputs": 1, "num_slots": 3, "steps": steps}
    description["outputs"] = [(2, -1)]
    with pytest.raises(ValueError, match="lane's order runs a step before one it reads"):
        executor_extension().Executor(description)


def test_two_lanes_on_one_gpu_are_refused():
    lanes = [
        {"name": "cuda", "device": "cuda:0", "threads": 1},
        {"name": "cuda:0", "device": "cuda:0", "threads": 1},
    ]
    description = {"lanes": lanes, "num_inputs": 1, "num_slots": 1, "steps": []}
    description["outputs"] = [(0, -1)]
    with pytest.raises(ValueError, match="both on device cuda:0: use one lane per GPU"):
        executor_extension().Executor(description)
