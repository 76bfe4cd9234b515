"""Inline requests (Note [Chrion inline requests] in csrc/executor/executor.cpp): a program whose
steps all run on one CPU lane with the caller's intra-op thread count runs on the calling
thread, in plan order, while the lane is free; otherwise on the lane's thread. Either way the
lane runs one step at a time and the results equal eager PyTorch."""

import threading

import pytest
import torch
from runtime_helpers import aten_graph, random_order, schedulable

from torch_chrion.errors import ExecutionError
from torch_chrion.runtime import PlacedGraph


def graph_of(*steps) -> tuple[torch.fx.GraphModule, list[str]]:
    """x -> steps[0] -> steps[1] -> ... as Python steps (each a callable of one tensor)."""
    graph = torch.fx.Graph()
    value = graph.placeholder("x")
    names = []
    for fn in steps:
        value = graph.call_function(fn, (value,))
        names.append(value.name)
    graph.output(value)
    return torch.fx.GraphModule(torch.nn.Module(), graph), names


def on_the_callers_threads(gm: torch.fx.GraphModule, names: list[str]) -> PlacedGraph:
    """Every node on one CPU lane with as many threads as the caller has."""
    return PlacedGraph(gm, dict.fromkeys(names, "cpu"), cpu_threads=torch.get_num_threads())


def thread_of_step() -> tuple[list[int], object]:
    seen: list[int] = []

    def record_thread(t: torch.Tensor) -> torch.Tensor:
        seen.append(threading.get_ident())
        return t + 1

    return seen, record_thread


def test_a_one_lane_program_with_the_callers_thread_count_runs_on_the_caller():
    seen, record = thread_of_step()
    gm, names = graph_of(torch.sin, record)
    module = on_the_callers_threads(gm, names)
    x = torch.randn(5)
    for _ in range(3):
        torch.testing.assert_close(module(x), torch.sin(x) + 1)
    assert seen == [threading.get_ident()] * 3


@pytest.mark.parametrize("case", ["two lanes", "other thread count"])
def test_other_programs_run_on_the_lane_thread(case: str):
    seen, record = thread_of_step()
    gm, names = graph_of(torch.sin, record)
    if case == "two lanes":
        module = PlacedGraph(gm, {names[0]: "cpu:0", names[1]: "cpu:1"})
    else:
        module = PlacedGraph(
            gm, dict.fromkeys(names, "cpu"), cpu_threads=torch.get_num_threads() + 1
        )
    x = torch.randn(5)
    torch.testing.assert_close(module(x), torch.sin(x) + 1)
    assert len(seen) == 1 and seen[0] != threading.get_ident()


def test_an_aten_model_inline_equals_eager_and_traces_the_plan_order():
    def net(x, w):
        return torch.relu(x @ w).sum(1) * 2 + torch.tanh(x).mean()

    x, w = torch.randn(6, 4), torch.randn(4, 3)
    gm = aten_graph(net, x, w)
    nodes = [n.name for n in schedulable(gm)]
    order = next(o for seed in range(100) if (o := random_order(gm, seed)) != nodes)
    module = PlacedGraph(
        gm,
        dict.fromkeys(nodes, "cpu"),
        order,
        cpu_threads=torch.get_num_threads(),
        fuse_elementwise=False,
    )
    module.enable_trace(True)
    torch.testing.assert_close(module(x, w), net(x, w))
    assert [e.node for e in module.last_trace()] == order


def test_a_python_step_failure_inline_keeps_its_type_and_the_module_works():
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[7]

    gm, names = graph_of(torch.sin, pick)
    module = on_the_callers_threads(gm, names)
    with pytest.raises(ExecutionError, match="IndexError") as info:
        module(torch.randn(4))
    assert type(info.value.__cause__) is IndexError
    x = torch.randn(8)
    torch.testing.assert_close(module(x), torch.sin(x)[7])


def test_a_warning_inline_reaches_the_caller():
    def masked(x, mask):
        return x[mask]  # TORCH_WARN in ATen for a uint8 mask

    x, mask = torch.randn(4), torch.tensor([1, 0, 1, 0], dtype=torch.uint8)
    gm = aten_graph(masked, x, mask)
    module = PlacedGraph(
        gm,
        {n.name: "cpu" for n in schedulable(gm)},
        cpu_threads=torch.get_num_threads(),
    )
    with pytest.warns(UserWarning, match="indexing with dtype torch.uint8 is now deprecated"):
        out = module(x, mask)
    torch.testing.assert_close(out, x[mask.bool()])


def test_the_lane_runs_one_step_at_a_time_while_a_caller_runs_inline():
    """A caller holding the lane inline (its step blocked) makes a second request wait for
    that step: after it, never beside it, and on its own caller's thread, since the lane has
    that caller's intra-op thread count (Note [Chrion caller lane])."""
    events: list[tuple[str, int]] = []
    release = threading.Event()
    lock = threading.Lock()

    def step(t: torch.Tensor) -> torch.Tensor:
        with lock:
            events.append(("start", threading.get_ident()))
        if t[0].item() == 1.0:  # the first request's step blocks until released
            assert release.wait(10.0)
        with lock:
            events.append(("end", threading.get_ident()))
        return t * 2

    gm, names = graph_of(step)
    module = on_the_callers_threads(gm, names)
    module(torch.zeros(2))  # the lane exists and is idle
    events.clear()
    results = {}
    first = threading.Thread(target=lambda: results.update(a=module(torch.ones(2))))
    first.start()
    while not events:  # the first request's step is running, inline on its caller
        threading.Event().wait(0.001)
    second = threading.Thread(target=lambda: results.update(b=module(torch.full((2,), 3.0))))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # it waits for the lane
    assert [kind for kind, _ in events] == ["start"]
    release.set()
    first.join(10.0)
    second.join(10.0)
    assert [kind for kind, _ in events] == ["start", "end", "start", "end"]
    assert events[0][1] == first.ident and events[2][1] == second.ident
    torch.testing.assert_close(results["a"], torch.full((2,), 2.0))
    torch.testing.assert_close(results["b"], torch.full((2,), 6.0))
